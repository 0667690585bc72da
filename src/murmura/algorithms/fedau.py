"""FedAU: FedAvg weighted by online estimates of each client's participation interval (Wang and
Ji, "A Lightweight Method for Tackling Unknown Participation Statistics in Federated
Averaging", ICLR 2024; code github.com/IBM/fedau, ``main.py``).

Clients take part with unknown, heterogeneous probabilities ``p_n`` (possibly correlated with
their data), so FedAvg's mean over the round's participants optimizes a ``p``-weighted
objective. FedAU weighs each participant's update by ``ω_n``, the mean of the intervals between
its past participations (an estimate of ``1/p_n``; intervals are cut at ``K``), and divides by
the number of clients ``N``, not by the round's participants::

    x <- x + η (1/N) Σ_{n ∈ S_t} ω_n Δ_n,    Δ_n = y_n - x   (y_n: n's model after local steps)
    then, for every client: participated -> interval cnt_n + 1 recorded, cnt_n = 0;
                            absent       -> cnt_n += 1, and at cnt_n = K the interval K is
                                            recorded and cnt_n = 0
    ω_n = mean of the recorded intervals (1 before the first one): only past rounds count

The intervals are O(N) scalars at the server. They follow from who participated in past rounds,
which the participation model gives as a function of (seed, client, round), so the rule
replays them (:class:`ParticipationIntervals`, cached so each round is replayed once) instead of
carrying them as hidden state; every replica of the server computes the same. ``known_prob``
uses the true ``ω_n = 1 / p_n`` instead (the paper's oracle baseline).

Specification: ``specs/federated.md`` section 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from murmura.algorithms.base import ALGORITHMS, Algorithm, RoundContext, Tensor
from murmura.algorithms.named import _work
from murmura.algorithms.participation import client_probabilities, make_participation
from murmura.algorithms.plans import ServerStep, Vectors
from murmura.algorithms.rules import SGD, Every


@dataclass(frozen=True)
class ParticipationIntervals:
    """``ω_n`` at round ``t`` from the participation of rounds ``0 .. t-1`` (cutoff ``K``;
    ``None``: no cutoff). The cache only saves replaying history; results depend on nothing
    else."""

    participation: Any
    cutoff: int | None = None
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def weights(self, seed: int, round: int, n: int) -> Tensor:
        """float64 ``[n]``: the mean recorded interval per client, 1 where none is yet."""
        done, count, total, number = self._cache.get((seed, n), (0, None, None, None))
        if count is None or done > round:
            done = 0
            count = torch.zeros(n, dtype=torch.float64)
            total, number = torch.zeros_like(count), torch.zeros_like(count)
        cutoff = math.inf if self.cutoff is None else self.cutoff
        for t in range(done, round):
            came = torch.zeros(n, dtype=torch.bool)
            came[self.participation.select(RoundContext(t, 0, seed, n, torch.device("cpu")))
                 .cpu()] = True
            count = count + 1
            closes = came | (count >= cutoff)
            # a participation closes the interval cnt + 1; a cutoff closes K (= cnt + 1 here too)
            total = total + torch.where(closes, count, 0.0)
            number = number + closes.to(torch.float64)
            count = torch.where(closes, 0.0, count)
        self._cache[(seed, n)] = (max(done, round), count, total, number)
        return torch.where(number > 0, total / number.clamp_min(1), 1.0)


@dataclass(frozen=True)
class FedAUAggregation:
    """The server step: participants upload their models; the aggregate is weighted by ``ω``."""

    intervals: ParticipationIntervals
    known_prob: bool = False
    needs_topology: bool = False
    uses_server: bool = True

    def omega(self, ctx: RoundContext) -> Tensor:
        if self.known_prob:
            return 1.0 / client_probabilities(self.intervals.participation.p, ctx.num_nodes,
                                              ctx.seed)
        return self.intervals.weights(ctx.seed, ctx.round, ctx.num_nodes)

    def round_weights(self, ctx: RoundContext, participants: Tensor | None) -> Tensor:
        """``ω_n`` on the round's participants, 0 elsewhere."""
        weights = torch.zeros(ctx.num_nodes, dtype=torch.float64)
        ids = (torch.arange(ctx.num_nodes) if participants is None else participants.cpu())
        weights[ids] = self.omega(ctx)[ids]
        return weights

    def plan(self, ctx: RoundContext, participants: Tensor | None, topology: Any,
             sizes: Tensor) -> ServerStep | None:
        if participants is not None and len(participants) == 0:
            return None
        return ServerStep(self.round_weights(ctx, participants).to(ctx.device))


@dataclass(frozen=True)
class FedAUServer:
    """``x <- x + η (Σ_S ω_n / N) (a - x)``: the engine's aggregate ``a`` is the ω-weighted mean
    of the uploads, so this is ``x + (η/N) Σ_S ω_n Δ_n``."""

    aggregation: FedAUAggregation
    server_lr: float = 1.0

    def init(self, params: Tensor) -> Vectors:
        return {"params": params.clone()}

    def update(self, state: Vectors, aggregate: Vectors, ctx: RoundContext
               ) -> tuple[Vectors, Vectors]:
        participants = self.aggregation.intervals.participation.select(ctx)
        scale = float(self.aggregation.round_weights(ctx, participants).sum()) / ctx.num_nodes
        x = state["params"] + self.server_lr * scale * (aggregate["params"] - state["params"])
        return {"params": x}, {"params": x}


@ALGORITHMS.register(
    "fedau", "FedAU: FedAvg weighted by each client's estimated participation interval, / N"
)
def fedau(
    lr: float = 0.05,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    local_steps: int | None = 5,
    local_epochs: float | None = None,
    batch_size: int = 16,
    participation: str | dict[str, Any] | None = None,
    cutoff: int | None = None,
    server_lr: float = 1.0,
    known_prob: bool = False,
) -> Algorithm:
    """FedAU (Wang and Ji, 2024) over a participation model (``{name = "bernoulli" | "cyclic" |
    "markov", p = ...}``; default Bernoulli with p = 0.1 for every client). ``cutoff``: K, the
    longest interval recorded (``None``: the paper's K = ∞); ``server_lr``: η; ``known_prob``:
    weigh by the true ``1/p_n`` (the oracle baseline). Defaults: the code's (5 local steps of
    batch 16, η = 1)."""
    params = dict(locals())
    if cutoff is not None and (isinstance(cutoff, bool) or int(cutoff) != cutoff or cutoff < 1):
        raise ValueError(f"fedau: cutoff must be a positive integer or None, got {cutoff!r}")
    if not (isinstance(server_lr, (int, float)) and math.isfinite(server_lr) and server_lr > 0):
        raise ValueError(f"fedau: server_lr must be a positive number, got {server_lr!r}")
    model = make_participation(participation or {"name": "bernoulli", "p": 0.1})
    aggregation = FedAUAggregation(ParticipationIntervals(model, cutoff), bool(known_prob))
    if local_epochs is not None:
        local_steps = None
    return Algorithm(
        name="fedau",
        local_rule=SGD(lr, momentum, weight_decay),
        local_work=replace(_work(local_steps, local_epochs, batch_size),
                           reset_state_each_round=True),
        communication=aggregation,
        schedule=Every(1),
        participation=model,
        params=params,
        server=FedAUServer(aggregation, float(server_lr)),
    )


__all__ = ["FedAUAggregation", "FedAUServer", "ParticipationIntervals", "fedau"]
