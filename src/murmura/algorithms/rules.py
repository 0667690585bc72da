"""Built-in rules: local SGD, gossip and server averaging, participation, schedules."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch.func import grad

from murmura.algorithms.base import Action, GradFn, LossFn, RoundContext, Tensor
from murmura.algorithms.plans import Average, Exchange, Mix, Plan
from murmura.swarm.random import stream_id, uniform

# ---------------------------------------------------------------------------------------------
# local rules


@dataclass(frozen=True)
class SGD:
    """SGD with momentum and weight decay, per node, as in ``torch.optim.SGD``:

    g <- g + wd * x;  b <- mu * b + g;  x <- x - lr * (g + mu * b if nesterov else b)
    """

    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False

    def __post_init__(self) -> None:
        for name in ("lr", "momentum", "weight_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"sgd: {name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"sgd: {name} must be finite, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"sgd: lr must be a positive finite number, got {self.lr!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"sgd: momentum must lie in [0, 1), got {self.momentum!r}")
        if self.weight_decay < 0:
            raise ValueError(f"sgd: weight_decay must be >= 0, got {self.weight_decay!r}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("sgd: nesterov needs momentum > 0")

    @property
    def state_names(self) -> tuple[str, ...]:
        return ("momentum",) if self.momentum else ()

    def gradient(self, loss: LossFn) -> GradFn:
        return grad(loss)

    def update(
        self, param: Tensor, grad: Tensor, state: Mapping[str, Tensor], active: Tensor | None
    ) -> None:
        g = grad
        if self.weight_decay:
            g.add_(param, alpha=self.weight_decay)
        if active is not None:
            g.mul_(active)
        if self.momentum:
            buf = state["momentum"]
            if active is None:
                buf.mul_(self.momentum).add_(g)
            else:  # idle nodes keep their momentum: b <- b * (1 - a (1 - mu)) + g
                buf.mul_(1.0 - active * (1.0 - self.momentum)).add_(g)
            if self.nesterov:
                g.add_(buf, alpha=self.momentum)
                if active is not None:
                    g.mul_(active)
                step = g
            else:
                step = buf if active is None else buf * active
        else:
            step = g
        param.add_(step, alpha=-self.lr)


@dataclass(frozen=True)
class Adam:
    """Adam (Kingma and Ba, 2015) per node, as ``torch.optim.Adam`` without weight decay:
    ``m <- b1 m + (1-b1) g;  v <- b2 v + (1-b2) g²;  t <- t+1;
    x <- x - lr (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)``. The step count ``t`` is kept as a
    state vector laid out like the parameters (every entry the same), since per-node state is."""

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    state_names: ClassVar[tuple[str, ...]] = ("exp_avg", "exp_avg_sq", "step")

    def __post_init__(self) -> None:
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"adam: lr must be a positive finite number, got {self.lr!r}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"adam: {name} must lie in [0, 1), got {getattr(self, name)!r}")
        if not self.eps > 0:
            raise ValueError(f"adam: eps must be > 0, got {self.eps!r}")

    def gradient(self, loss: LossFn) -> GradFn:
        return grad(loss)

    def update(self, param: Tensor, grad: Tensor, state: Mapping[str, Tensor],
               active: Tensor | None) -> None:
        m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
        if active is None:
            m.lerp_(grad, 1 - self.beta1)
            v.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
            t.add_(1.0)
        else:  # idle nodes (a = 0): nothing moves, state included
            m.lerp_(grad, active * (1 - self.beta1))
            v.lerp_(grad * grad, active * (1 - self.beta2))
            t.add_(active)
        # one step count per node (t = 0 only where m = v = 0, hence the clamp)
        steps = t.reshape(len(t), -1)[:, :1].clamp_min(1.0).view(-1, *(1,) * (t.dim() - 1))
        m_hat = m / (1 - self.beta1 ** steps)
        v_hat = v / (1 - self.beta2 ** steps)
        update = m_hat.div_(v_hat.sqrt_().add_(self.eps)).mul_(self.lr)
        param.sub_(update if active is None else update.mul_(active))


# ---------------------------------------------------------------------------------------------
# communication rules


@dataclass(frozen=True)
class Gossip:
    """``x_i <- sum_j W[i, j] x_j`` on the round's topology (D-SGD / D-PSGD's gossip step).

    Every node gossips: participation decides who trains, not who mixes (sampled gossip with
    renormalized weights belongs to rules such as MoDeST's). With an ``aggregator`` the weighted
    sum becomes a robust rule over the neighbourhood, the node's own model included. ``steps``
    gossip steps follow each other in a communicating round (DFedSAM-MGS's Q; each one a
    message per link, all on the round's graph); ``final_steps`` (when > 0) is how many the last
    round takes instead, a cheap stand-in for an exact final merge. On a time-varying topology
    those final steps use fresh graphs, of rounds ``T, T+1, ...`` (``T`` the total), which the
    run itself never draws."""

    needs_topology: bool = True
    aggregator: Any = None
    steps: int = 1
    final_steps: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "final_steps"):
            value = getattr(self, name)
            low = 1 if name == "steps" else 0
            if isinstance(value, bool) or int(value) != value or value < low:
                raise ValueError(f"gossip: {name} must be an integer >= {low}, got {value!r}")

    @property
    def node_state(self) -> dict:
        """What a stateful aggregator keeps per node (SybilWall's records)."""
        return dict(getattr(self.aggregator, "node_state", None) or {})

    def plan(self, ctx: RoundContext, participants, topology, sizes) -> Plan | list[Plan]:
        if topology is None:
            raise ValueError("gossip needs a topology: pass topology='ring' (or another graph)")
        final = ctx.round == ctx.total_rounds - 1 and self.final_steps > 0
        steps = self.final_steps if final else self.steps
        plans = []
        for step in range(steps):
            at = ctx.round if step == 0 or not final else ctx.total_rounds + step - 1
            mixing = topology.mixing_at(at, device=ctx.device)
            plans.append(Mix(mixing) if self.aggregator is None
                         else Exchange(mixing, aggregator=self.aggregator))
        return plans[0] if steps == 1 else plans


@dataclass(frozen=True)
class ServerAverage:
    """A server (a star's hub) averages the participants' models, weighted by their number of
    samples (``weighting='samples'``, FedAvg) or equally (``'uniform'``), and sends it back."""

    weighting: str = "samples"
    needs_topology: bool = False
    uses_server: bool = True

    def __post_init__(self) -> None:
        if self.weighting not in ("samples", "uniform"):
            raise ValueError(
                f"server average: weighting must be 'samples' or 'uniform', got {self.weighting!r}"
            )

    def plan(self, ctx: RoundContext, participants, topology, sizes) -> Plan:
        if participants is not None and len(participants) == 0:
            return None  # nobody was available: the server keeps its model
        return Average(global_average_weights(sizes, participants, self.weighting))


def global_average_weights(
    sizes: Tensor, participants: Tensor | None, weighting: str = "samples"
) -> Tensor:
    if weighting == "samples":
        base = sizes.to(torch.float64)
    else:
        base = torch.ones_like(sizes, dtype=torch.float64)
    if participants is not None:
        mask = torch.zeros_like(base)
        mask[participants] = 1.0
        base = base * mask
    return base / base.sum()


@dataclass(frozen=True)
class NoCommunication:
    """Nodes never exchange anything (local training only)."""

    needs_topology: bool = False

    def plan(self, ctx, participants, topology, sizes) -> Plan:
        return None


# ---------------------------------------------------------------------------------------------
# participation


@dataclass(frozen=True)
class FullParticipation:
    """Every node takes part in every round."""

    def select(self, ctx: RoundContext) -> Tensor | None:
        return None


@dataclass(frozen=True)
class SampledParticipation:
    """A uniform sample of ``count`` nodes (or ``fraction`` of them) each round, without
    replacement, keyed by (seed, round): the same nodes whatever the process layout."""

    fraction: float | None = None
    count: int | None = None

    def __post_init__(self) -> None:
        if (self.fraction is None) == (self.count is None):
            raise ValueError("participation: give exactly one of fraction or count")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ValueError(f"participation fraction must lie in (0, 1], got {self.fraction!r}")
        if self.count is not None and (int(self.count) != self.count or self.count < 1):
            raise ValueError(f"participation count must be a positive integer, got {self.count!r}")

    def how_many(self, num_nodes: int) -> int:
        if self.count is not None:
            if self.count > num_nodes:
                raise ValueError(
                    f"participation count {self.count} exceeds the number of nodes {num_nodes}"
                )
            return int(self.count)
        return max(1, round(self.fraction * num_nodes))

    def select(self, ctx: RoundContext) -> Tensor | None:
        m = self.how_many(ctx.num_nodes)
        if m == ctx.num_nodes:
            return None
        nodes = torch.arange(ctx.num_nodes, device=ctx.device)
        keys = uniform(ctx.seed, stream_id("participation"), nodes, ctx.round, dtype=torch.float64)
        chosen = torch.topk(keys, m, largest=False).indices
        return torch.sort(chosen).values


# ---------------------------------------------------------------------------------------------
# schedules


@dataclass(frozen=True)
class Every:
    """Communicate every ``k`` rounds (after rounds k-1, 2k-1, ...); with ``merge_at_end`` the
    last round ends in one exact global average instead (see ``Algorithm.merge_weighting``)."""

    k: int = 1
    merge_at_end: bool = False

    def __post_init__(self) -> None:
        if int(self.k) != self.k or self.k < 1:
            raise ValueError(f"schedule: k must be a positive integer, got {self.k!r}")

    def action(self, round: int, total_rounds: int) -> Action:
        if self.merge_at_end and round == total_rounds - 1:
            return "merge"
        return "communicate" if (round + 1) % self.k == 0 else "skip"


@dataclass(frozen=True)
class Late:
    """Communicate only in the last ``fraction`` of the rounds (the single-merge paper's finding
    that late communication is worth more than early)."""

    fraction: float = 0.1
    merge_at_end: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.fraction <= 1:
            raise ValueError(f"schedule: fraction must lie in [0, 1], got {self.fraction!r}")

    def action(self, round: int, total_rounds: int) -> Action:
        if self.merge_at_end and round == total_rounds - 1:
            return "merge"
        start = total_rounds - math.ceil(self.fraction * total_rounds)
        return "communicate" if round >= start else "skip"


@dataclass(frozen=True)
class Never:
    """No communication during training; with ``merge_at_end``, one global merge at the end."""

    merge_at_end: bool = False

    def action(self, round: int, total_rounds: int) -> Action:
        if self.merge_at_end and round == total_rounds - 1:
            return "merge"
        return "skip"


@dataclass(frozen=True)
class MergeBudget:
    """Gossip every round, and spend a budget of exact global merges (all-reduces) on a
    ``fraction`` of the rounds, placed ``"early"`` (the first rounds), ``"late"`` (the last),
    ``"window"`` (a block starting at ``start``, a fraction of training) or ``"increasing"``
    (spread out with a density that grows linearly over training): the single-merge paper's
    communication schedules at an equal budget (Zhu et al., 2025, its ``truncate`` and
    ``truncate_v2`` r-schedules with ``r_end = n - 1``). ``merge_at_end`` closes training with one
    more merge.

    >>> [MergeBudget(0.2, "late").action(t, 10) for t in (0, 7, 8, 9)]
    ['communicate', 'communicate', 'merge', 'merge']
    >>> sorted(MergeBudget(0.3, "increasing").merge_rounds(20))
    [8, 11, 14, 16, 18, 19]
    """

    fraction: float = 0.1
    placement: str = "late"
    start: float = 0.9
    merge_at_end: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.fraction <= 1:
            raise ValueError(f"merge budget: fraction must lie in [0, 1], got {self.fraction!r}")
        if self.placement not in ("early", "late", "window", "increasing"):
            raise ValueError(
                f"merge budget: placement must be 'early', 'late', 'window' or 'increasing', "
                f"got {self.placement!r}"
            )
        if not 0 <= self.start < 1:
            raise ValueError(f"merge budget: start must lie in [0, 1), got {self.start!r}")

    def merge_rounds(self, total_rounds: int) -> set[int]:
        count = math.ceil(self.fraction * total_rounds)
        if count == 0:
            return set()
        if self.placement == "early":
            return set(range(count))
        if self.placement == "late":
            return set(range(total_rounds - count, total_rounds))
        if self.placement == "window":
            first = min(math.floor(self.start * total_rounds), total_rounds - count)
            return set(range(first, first + count))
        # the j-th of `count` merges at T sqrt(j / count): merges per round grow linearly in t
        return {max(0, math.ceil(total_rounds * math.sqrt(j / count)) - 1)
                for j in range(1, count + 1)}

    def action(self, round: int, total_rounds: int) -> Action:
        if self.merge_at_end and round == total_rounds - 1:
            return "merge"
        return "merge" if round in self.merge_rounds(total_rounds) else "communicate"
