"""Participation models: who is available in a round, as real federations show it.

Each client ``n`` has its own participation probability ``p_n`` (given, or drawn from a named
distribution keyed by (seed, client)), and a pattern (Wang and Ji, ICLR 2024, FedAU's
``util/util.py``: ``WorkerSampler``):

* ``bernoulli``: client ``n`` is there with probability ``p_n``, independently every round;
* ``cyclic``: a cycle of ``cycle`` rounds, active ``max(1, round(cycle p_n))`` consecutive rounds
  of it, inactive the rest, from a random phase (FedAU's ``cyclic-100``);
* ``markov``: an on/off chain entering "on" with probability ``to_active`` and leaving it with
  ``to_active (1/p_n - 1)`` (so ``p_n`` is its stationary probability; if that exceeds 1 both are
  scaled down, as in FedAU's code), started from its stationary law (FedAU's ``markov-0.05``).

Every draw is keyed by (seed, client, round) like the rest of the engine, so a round's
participants are the same whoever asks, in any order. A round may have no participant; the
server then skips it. Select one with ``participation = {name = "markov", p = ...}`` in
``fedavg``'s (or another federated algorithm's) parameters.

>>> import torch
>>> from murmura.algorithms.base import RoundContext
>>> model = make_participation({"name": "cyclic", "p": 0.25, "cycle": 4})
>>> [model.select(RoundContext(t, 8, 0, 3, torch.device("cpu"))).tolist() for t in range(4)]
[[], [0], [1, 2], []]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from murmura.algorithms.base import RoundContext, Tensor
from murmura.swarm.random import stream_id, uniform

DISTRIBUTIONS = ("uniform", "beta")


def client_probabilities(spec: float | Sequence[float] | Mapping[str, Any], num_clients: int,
                         seed: int) -> Tensor:
    """``p_n`` for every client (float64 ``[num_clients]``): one number for all, a list of one per
    client, or ``{name = "uniform", low, high}`` / ``{name = "beta", a, b}`` drawn per client
    from (seed, client). Each must lie in (0, 1]."""
    if isinstance(spec, Mapping):
        spec = dict(spec)
        name = spec.pop("name", None)
        u = uniform(seed, stream_id("participation-probability"), torch.arange(num_clients),
                    dtype=torch.float64)
        if name == "uniform":
            low, high = float(spec.pop("low", 0.0)), float(spec.pop("high", 1.0))
            p = low + (high - low) * u
        elif name == "beta":
            a, b = float(spec.pop("a")), float(spec.pop("b"))
            # the inverse CDF of u: a keyed draw (torch's Beta sampler takes no key)
            from scipy.special import betaincinv

            p = torch.from_numpy(betaincinv(a, b, u.numpy())).to(torch.float64)
        else:
            raise ValueError(
                f"participation: a probability distribution is one of {', '.join(DISTRIBUTIONS)} "
                f"(e.g. {{name = 'uniform', low = 0.05, high = 0.3}}), got {name!r}"
            )
        if spec:
            raise ValueError(f"participation: {name} takes no parameter {sorted(spec)}")
    elif isinstance(spec, (int, float)) and not isinstance(spec, bool):
        p = torch.full((num_clients,), float(spec), dtype=torch.float64)
    else:
        p = torch.as_tensor(list(spec), dtype=torch.float64)
        if p.shape != (num_clients,):
            raise ValueError(
                f"participation: {len(p)} probabilities given for {num_clients} clients; give "
                "one per client"
            )
    if not bool(((p > 0) & (p <= 1)).all()):
        raise ValueError(
            "participation: every client's probability must lie in (0, 1]; got values from "
            f"{float(p.min()):.3g} to {float(p.max()):.3g}"
        )
    return p


def _ids(active: Tensor, ctx: RoundContext) -> Tensor:
    return torch.nonzero(active).flatten().to(ctx.device)


@dataclass(frozen=True)
class BernoulliParticipation:
    """Client ``n`` takes part with probability ``p_n``, independently every round."""

    p: Any = 0.1

    def select(self, ctx: RoundContext) -> Tensor:
        p = client_probabilities(self.p, ctx.num_nodes, ctx.seed)
        u = uniform(ctx.seed, stream_id("participation-bernoulli"), torch.arange(ctx.num_nodes),
                    ctx.round, dtype=torch.float64)
        return _ids(u < p, ctx)


@dataclass(frozen=True)
class CyclicParticipation:
    """Active ``max(1, round(cycle p_n))`` consecutive rounds of every ``cycle``, from a phase
    drawn per client: inactive first for ``floor(u * inactive)`` rounds, as FedAU's code."""

    p: Any = 0.1
    cycle: int = 100

    def __post_init__(self) -> None:
        if isinstance(self.cycle, bool) or int(self.cycle) != self.cycle or self.cycle < 2:
            raise ValueError(f"participation: cycle must be an integer >= 2, got {self.cycle!r}")

    def select(self, ctx: RoundContext) -> Tensor:
        p = client_probabilities(self.p, ctx.num_nodes, ctx.seed)
        active = torch.clamp(torch.round(self.cycle * p), min=1)
        inactive = torch.clamp(self.cycle - active, min=1)
        u = uniform(ctx.seed, stream_id("participation-phase"), torch.arange(ctx.num_nodes),
                    dtype=torch.float64)
        phase = torch.floor(u * inactive)
        position = torch.remainder(ctx.round - phase, active + inactive)
        return _ids(position < active, ctx)


@dataclass(frozen=True)
class MarkovParticipation:
    """An on/off chain per client with stationary probability ``p_n``, started from it; the
    round's state follows from the previous one (kept in a cache that only saves the work of
    replaying the chain from round 0: the result is a function of (seed, client, round))."""

    p: Any = 0.1
    to_active: float = 0.05
    _states: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.to_active <= 1:
            raise ValueError(
                f"participation: to_active must lie in (0, 1], got {self.to_active!r}")

    def _transitions(self, p: Tensor) -> tuple[Tensor, Tensor]:
        on = torch.full_like(p, float(self.to_active))
        off = on * (1.0 / p - 1.0)
        scale = torch.clamp(off, min=1.0)
        return on / scale, off / scale

    def state(self, seed: int, round: int, n: int) -> Tensor:
        key = (seed, n)
        last, current = self._states.get(key, (-1, None))
        if last > round or current is None:
            p = client_probabilities(self.p, n, seed)
            nodes = torch.arange(n)
            start = uniform(seed, stream_id("participation-markov-start"), nodes,
                            dtype=torch.float64)
            last, current = -1, start < p
        p = client_probabilities(self.p, n, seed)
        on, off = self._transitions(p)
        nodes = torch.arange(n)
        for t in range(last + 1, round + 1):
            u = uniform(seed, stream_id("participation-markov"), nodes, t, dtype=torch.float64)
            current = torch.where(current, u >= off, u < on)
        self._states[key] = (round, current)
        return current

    def select(self, ctx: RoundContext) -> Tensor:
        return _ids(self.state(ctx.seed, ctx.round, ctx.num_nodes), ctx)


PATTERNS = {"bernoulli": BernoulliParticipation, "cyclic": CyclicParticipation,
            "markov": MarkovParticipation}


def make_participation(spec: Mapping[str, Any] | str) -> Any:
    """A participation model from ``{name = "bernoulli" | "cyclic" | "markov", p = ..., ...}``
    (``p``: one probability, a list of one per client, or a distribution table)."""
    if isinstance(spec, str):
        spec = {"name": spec}
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in PATTERNS:
        raise ValueError(
            f"participation: name must be one of {', '.join(PATTERNS)}, got {name!r} (e.g. "
            "{name = 'bernoulli', p = 0.1})"
        )
    try:
        return PATTERNS[name](**spec)
    except TypeError as error:
        raise ValueError(f"participation {name!r}: {error}") from None


__all__ = ["BernoulliParticipation", "CyclicParticipation", "MarkovParticipation",
           "client_probabilities", "make_participation"]
