"""Curricula in federated learning (Vahidian, Kadaveru, Baek, Wang, Kungurtsev, Chen, Shah and Lin,
"When Do Curricula Work in Federated Learning?", ICCV 2023, arXiv 2212.12712), on FedAvg.

Each client orders its samples by their loss under a scoring model and a pacing function
``g(s)`` says how many of the ordered samples are available at its global step ``s``::

    at round t a client receives w^t; every local (x, y) is scored by CE(w_score; x, y)
        w_score = w^t ("global", the spec's default) | a fixed pre-trained model ("expert")
    order = argsort(score) ascending ("curriculum") | descending ("anti") | random ("random")
    local step k, global step s = t K + k:  pool = order[: g(s)];  minibatch ~ U(pool);  SGD

The pacing functions are Wu, Dyer and Neyshabur's ("When Do Curricula Work?", ICLR 2021,
``google-research/understanding-curricula``, ``utils/utils.py``), as ``specs/federated.md``
section 7 (b) writes them (N client-local samples, S total steps, n0 = b N, then ``int`` and
clipped to [1, N])::

    linear  n0 + (N - n0) / (aS) s            quad  n0 + (N - n0) / (aS)^2 s^2
    root    n0 + (N - n0) / (aS)^0.5 s^0.5    step  n0 + N floor(s / (aS))
    exp     n0 + (N - n0) / (e^10 - 1) (exp(10 s / (aS)) - 1)
    log     n0 + (N - n0) (1 + 0.1 log(s / (aS) + e^-10))

Choices where the paper gives no code (the spec marks them [mem]/[inferred]):

* the minibatch is a uniform sample of B positions of the pool *without* replacement (a fresh
  random arrangement of the pool per step); when the pool holds fewer than B samples every pool
  sample is read ``floor(B/g)`` or ``ceil(B/g)`` times (as a loader over the pool would cycle);
* ``random`` draws a fresh permutation every round from the order's key (seed, node, round),
  just as ``curriculum``/``anti`` re-rank every round under the newly received model;
* the client curriculum (:class:`EasyClientsFirst`): every client reports one scalar, the mean
  loss of its current (the received global) model on its data; the ``g(t)`` easiest clients are
  eligible at round ``t`` (a pacing function over the rounds with the same a, b; never fewer than
  the round's count) and the round's clients are a uniform sample of them. Those 4-byte reports
  are not counted in the byte ledger.

The engine offers "global" and "expert" scoring; the spec's third option ("local": the client's
current local model, re-scored during the round) is not implemented.

Specification: ``specs/federated.md`` section 7.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from murmura.algorithms.base import ALGORITHMS, Algorithm, RoundContext, Tensor
from murmura.algorithms.rules import SampledParticipation
from murmura.swarm.random import key_uniform, stream_id, uniform

# ---------------------------------------------------------------------------------------------
# pacing functions: g(s) for steps s, N samples, S total steps; tensors in, int64 out


def _f64(x: Tensor | float) -> Tensor:
    return x.to(torch.float64) if isinstance(x, Tensor) else torch.tensor(float(x),
                                                                         dtype=torch.float64)


def _clip(g: Tensor, n: Tensor) -> Tensor:
    """``int()`` (the values are >= 0, so a floor) and clipped to [1, N]."""
    return torch.minimum(torch.floor(g).clamp_min(1.0), n).to(torch.int64)


def linear(s: Tensor, n: Tensor | float, total: Tensor | float, a: float, b: float) -> Tensor:
    s, n, at = _f64(s), _f64(n), a * _f64(total)
    return _clip((n - b * n) / at * s + b * n, n)


def quad(s: Tensor, n: Tensor | float, total: Tensor | float, a: float, b: float) -> Tensor:
    s, n, at = _f64(s), _f64(n), a * _f64(total)
    return _clip((n - b * n) / at**2 * s**2 + b * n, n)


def root(s: Tensor, n: Tensor | float, total: Tensor | float, a: float, b: float) -> Tensor:
    s, n, at = _f64(s), _f64(n), a * _f64(total)
    return _clip((n - b * n) / at**0.5 * s**0.5 + b * n, n)


def step(s: Tensor, n: Tensor | float, total: Tensor | float, a: float, b: float) -> Tensor:
    s, n, at = _f64(s), _f64(n), a * _f64(total)
    return _clip(n * torch.floor(s / at) + b * n, n)


def exp(s: Tensor, n: Tensor | float, total: Tensor | float, a: float, b: float) -> Tensor:
    s, n, at = _f64(s), _f64(n), a * _f64(total)
    grow = torch.exp(s * (10.0 / at))
    g = (n - b * n) / (math.exp(10.0) - 1.0) * (grow - 1.0) + b * n
    return _clip(torch.where(torch.isinf(grow), n, g), n)  # the reference: all data past inf


def log(s: Tensor, n: Tensor | float, total: Tensor | float, a: float, b: float) -> Tensor:
    s, n, at = _f64(s), _f64(n), a * _f64(total)
    return _clip((n - b * n) * (1.0 + 0.1 * torch.log(s / at + math.exp(-10.0))) + b * n, n)


PACING: dict[str, Callable[..., Tensor]] = {
    "linear": linear, "quad": quad, "root": root, "step": step, "exp": exp, "log": log}
ORDERINGS = ("curriculum", "anti", "random")


def pace(name: str, s: Tensor, n: Tensor | float, total: Tensor | float, a: float,
         b: float) -> Tensor:
    """``g(s)`` of the named pacing function: how many of the N ordered samples are usable at
    step ``s`` of ``total`` (int64, in [1, N]; works under ``vmap``)."""
    return PACING[_check_pacing("pacing", name)](s, n, total, a, b)


def _check_pacing(what: str, name: Any) -> str:
    if not isinstance(name, str) or name not in PACING:
        raise ValueError(f"curriculum: {what} must be one of {', '.join(PACING)}, got {name!r}")
    return name


def _check_ab(a: Any, b: Any) -> None:
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not (math.isfinite(a) and a > 0):
        raise ValueError(
            f"curriculum: a (the fraction of the run at which the pool holds all the data) must "
            f"be a finite number > 0, e.g. 0.8; got {a!r}")
    if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 <= b <= 1:
        raise ValueError(
            f"curriculum: b (the fraction of the data in the first pool) must lie in [0, 1], "
            f"e.g. 0.2; got {b!r}")


# ---------------------------------------------------------------------------------------------
# the data order (a per-node rule, vmapped by the engine)


@dataclass(frozen=True)
class PacedOrder:
    """Ordered, paced local data for ONE node: its samples sorted by ``ordering`` (by the
    loss under the ``scoring`` model; ``random``: a keyed permutation), the first ``g(s)`` of
    them the pool at global step ``s`` and each minibatch a uniform sample of the pool."""

    ordering: str = "curriculum"
    pacing: str = "linear"
    a: float = 0.8
    b: float = 0.2
    scoring: str = "global"
    expert: Tensor | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.ordering not in ORDERINGS:
            raise ValueError(f"curriculum: ordering must be one of {', '.join(ORDERINGS)} "
                             f"(or 'none' for shuffled epochs), got {self.ordering!r}")
        _check_pacing("pacing", self.pacing)
        _check_ab(self.a, self.b)

    def positions(self, losses: Tensor, size: Tensor, first: Tensor, total: Tensor,
                  key: Tensor, *, steps: int, batch: int) -> Tensor:
        """int64 ``[steps, batch]`` positions (< ``size``) in the node's partition."""
        slot = torch.arange(losses.shape[-1], device=losses.device)
        if self.ordering == "random":
            score = key_uniform(key, tuple(losses.shape), salt=0).to(losses.device)
        else:
            score = losses if self.ordering == "curriculum" else -losses
        # padding sorts last; a NaN loss counts as the hardest valid sample
        score = torch.where(slot < size, torch.nan_to_num(score, nan=torch.inf), torch.inf)
        order = torch.argsort(score, stable=True)                       # easiest first
        s = first + torch.arange(steps, device=losses.device)           # global steps
        pool = pace(self.pacing, s, size, total, self.a, self.b).unsqueeze(1)   # [steps, 1]
        draw = key_uniform(key, (steps, losses.shape[-1]), salt=1).to(losses.device)
        shuffled = torch.argsort(torch.where(slot < pool, draw, 2.0), dim=1, stable=True)
        ranks = torch.gather(shuffled, 1, torch.arange(batch, device=losses.device) % pool)
        return torch.gather(order.expand(steps, -1), 1, ranks)


# ---------------------------------------------------------------------------------------------
# the client curriculum (a participation rule)


@dataclass(frozen=True)
class EasyClientsFirst:
    """Curriculum client selection: clients ranked by their mean loss under their current model
    (the received global one); the ``g(t)`` easiest are eligible at round ``t`` (``pacing`` over
    the run's rounds, at least the round's count) and ``count`` (or ``fraction``) of them are
    drawn uniformly, keyed by (seed, client, round)."""

    pacing: str = "linear"
    a: float = 0.8
    b: float = 0.2
    fraction: float | None = None
    count: int | None = None
    needs_losses: bool = True

    def __post_init__(self) -> None:
        _check_pacing("client_selection", self.pacing)
        _check_ab(self.a, self.b)
        SampledParticipation(self.fraction, self.count)  # validates fraction / count

    def select(self, ctx: RoundContext, losses: Tensor) -> Tensor | None:
        n = ctx.num_nodes
        m = SampledParticipation(self.fraction, self.count).how_many(n)
        if m == n:
            return None
        eligible = pace(self.pacing, torch.tensor(ctx.round), n, max(ctx.total_rounds, 1),
                        self.a, self.b).clamp_min(m)
        easiest = torch.argsort(torch.nan_to_num(losses.cpu(), nan=torch.inf), stable=True)
        draw = uniform(ctx.seed, stream_id("curriculum-clients"), torch.arange(n), ctx.round,
                       dtype=torch.float64)[easiest]
        draw = torch.where(torch.arange(n) < eligible, draw, torch.inf)
        chosen = easiest[torch.topk(draw, m, largest=False).indices]
        return torch.sort(chosen).values.to(ctx.device)


# ---------------------------------------------------------------------------------------------
# the named algorithm


def _expert(expert: Tensor | str | None, scoring: str) -> Tensor | None:
    if scoring not in ("global", "expert"):
        raise ValueError(f"curriculum: scoring must be 'global' (the received model) or 'expert' "
                         f"(a pre-trained model given as expert=...), got {scoring!r}")
    if scoring == "global":
        if expert is not None:
            raise ValueError("curriculum: expert is only used with scoring = 'expert'")
        return None
    if expert is None:
        raise ValueError("curriculum: scoring = 'expert' needs expert = the pre-trained model's "
                         "flat parameters (a tensor, or the path of one saved by torch.save)")
    if isinstance(expert, (str, Path)):
        expert = torch.load(expert, map_location="cpu", weights_only=True)
    return torch.as_tensor(expert, dtype=torch.float32).reshape(-1)


@ALGORITHMS.register(
    "curriculum", "Curricula in FL: FedAvg whose clients read their data easy-to-hard (paced)")
def curriculum(
    ordering: str = "curriculum",
    pacing: str = "linear",
    a: float = 0.8,
    b: float = 0.2,
    scoring: str = "global",
    expert: Any = None,
    client_selection: bool | str = False,
    lr: float = 0.05,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    local_epochs: float | None = 5.0,
    local_steps: int | None = None,
    batch_size: int = 10,
    fraction: float | None = None,
    clients_per_round: int | None = None,
    weighting: str = "samples",
    participation: str | dict[str, Any] | None = None,
) -> Algorithm:
    """FedAvg with ordered local data (Vahidian et al., ICCV 2023). ``ordering``:
    ``"curriculum"`` (easy to hard), ``"anti"`` (hard to easy), ``"random"`` (a random order,
    same pacing) or ``"none"`` (FedAvg's shuffled epochs); ``pacing`` one of linear, quad, root,
    step, exp, log with ``a`` (fraction of the run's steps at which all data is in the pool) and
    ``b`` (the first pool's fraction); ``scoring``: ``"global"`` (the received model) or
    ``"expert"`` (``expert``: flat parameters, a tensor or a ``torch.save`` path).
    ``client_selection``: ``True`` (the ``pacing`` function) or a pacing name turns on the
    client curriculum over rounds (needs ``clients_per_round`` or ``fraction``). Defaults: the
    spec's CPU setup (5 local epochs, batch 10, lr 0.05, linear a = 0.8, b = 0.2); a given
    ``local_steps`` replaces the epochs. Plain FedAvg is ``fedavg``."""
    params = dict(locals())
    from murmura.algorithms.named import fedavg

    if ordering not in (*ORDERINGS, "none"):
        raise ValueError(f"curriculum: ordering must be one of {', '.join(ORDERINGS)} or 'none' "
                         f"(shuffled epochs), got {ordering!r}")
    _check_pacing("pacing", pacing)
    _check_ab(a, b)
    weights = _expert(expert, scoring)
    if local_steps is not None:
        local_epochs = None
    base = fedavg(lr=lr, momentum=momentum, weight_decay=weight_decay, local_epochs=local_epochs,
                  local_steps=local_steps, batch_size=batch_size, fraction=fraction,
                  clients_per_round=clients_per_round, weighting=weighting,
                  participation=participation)
    chooser = base.participation
    if client_selection is not False:
        if not isinstance(client_selection, str) and client_selection is not True:
            raise ValueError("curriculum: client_selection must be true, false or a pacing name "
                             f"({', '.join(PACING)}), got {client_selection!r}")
        if participation is not None or (fraction is None and clients_per_round is None):
            raise ValueError("curriculum: client_selection picks clients_per_round (or fraction) "
                             "of the clients: set one of those, and no participation model")
        chooser = EasyClientsFirst(pacing if client_selection is True else client_selection,
                                   a, b, fraction, clients_per_round)
    order = None if ordering == "none" else PacedOrder(
        ordering, pacing, a, b, "none" if ordering == "random" else scoring, weights)
    return replace(base, name="curriculum", local_work=replace(base.local_work, order=order),
                   participation=chooser, params=params)


__all__ = ["ORDERINGS", "PACING", "EasyClientsFirst", "PacedOrder", "curriculum", "exp", "linear",
           "log", "pace", "quad", "root", "step"]
