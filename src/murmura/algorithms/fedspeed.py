"""FedSpeed (Sun, Shen, Huang, Ding and Tao, "FedSpeed: Larger Local Interval, Less
Communication Round, and Higher Generalization Accuracy", ICLR 2023, arXiv 2302.10429).

Each client keeps a prox-correction ``ĝ_i`` (zero at first) and takes K local steps from the
round's global model ``x`` with a SAM-style perturbed gradient (``specs/federated.md`` §3)::

    g1 = ∇f_i(y; B);  g2 = ∇f_i(y + ρ g1/||g1||; B);  g̃ = (1 - α) g1 + α g2
    y <- y - η (g̃ - ĝ_i + (1/λ)(y - x) + wd y)
    after the K steps:  ĝ_i <- ĝ_i - (1/λ)(y_K - x);   upload  x̂_i = y_K - λ ĝ_i
    server:  x <- mean over the round's clients of x̂_i

``lamb`` is the code's name for ``1/λ``. ``form="paper"`` (default) is the paper's Algorithm 1
above. ``form="code"`` is the official FL-Simulator code (``server/FedSpeed.py``): the server
keeps ``h_n = -λ ĝ_n = Σ_past (y_K - x)`` of every client and sets ``x <- mean_S y_K +
mean_{all N} h_n``, so stale corrections of absent clients count (FedDyn-style). The local step
is the same in both forms. Here the server need not store N vectors: it keeps ``H = Σ_n h_n``,
which only the round's clients change, by ``y_K - x`` each (``ServerDual``). The code's client
downloads ``h_i - x`` (2 vectors); here the client keeps ``ĝ_i`` itself, so each form downloads
and uploads one vector. The code's gradient-norm clip (10) and relaxed initialization are not
implemented; ``α = 1`` (g2 only) is the code's choice and the default.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.func import grad

from murmura.algorithms.base import ALGORITHMS, Algorithm, GradFn, LossFn, RoundContext, Tensor
from murmura.algorithms.dfedsam import ascent_point
from murmura.algorithms.federated import ANCHOR, _federated
from murmura.algorithms.plans import NodeState, SendModel, Vectors
from murmura.algorithms.rules import SGD

CORRECTION = NodeState()  # ĝ_i: persistent, zero at first


def _state() -> dict[str, NodeState]:
    return {"anchor": ANCHOR, "correction": CORRECTION}


@dataclass(frozen=True)
class CorrectedSGD(SGD):
    """FedSpeed's step with the plain gradient (``rho = 0``):
    ``y <- y - lr (g - ĝ_i + lamb (y - x) + wd y)``; linear in y and the state, so it fuses."""

    lamb: float = 0.1
    node_state: dict = field(default_factory=_state)

    def update(self, param, grad, state, active) -> None:
        grad.sub_(state["correction"]).add_(param - state["anchor"], alpha=self.lamb)
        super().update(param, grad, state, active)

    def fused_terms(self) -> tuple[float, tuple[tuple[str, float], ...]]:
        return self.lamb, (("anchor", -self.lamb), ("correction", -1.0))


@dataclass(frozen=True)
class PerturbedCorrectedSGD(SGD):
    """FedSpeed's step (``rho > 0``): :class:`CorrectedSGD` on ``g̃ = (1-α) g1 + α g2``, with
    ``g2`` the gradient at ``y + ρ g1/||g1||`` (norm over all the node's parameters, same
    minibatch; a zero gradient gives no ascent). Not a fused step: two passes per step."""

    lamb: float = 0.1
    rho: float = 0.1
    alpha: float = 1.0
    node_state: dict = field(default_factory=_state)

    def gradient(self, loss: LossFn) -> GradFn:
        node_grad = grad(loss)

        def perturbed(params: dict[str, Tensor], *batch: Any) -> dict[str, Tensor]:
            g1 = node_grad(params, *batch)
            g2 = node_grad(ascent_point(params, g1, self.rho), *batch)
            if self.alpha == 1.0:
                return g2
            return {k: torch.lerp(g1[k], g2[k], self.alpha) for k in g1}

        return perturbed

    def update(self, param, grad, state, active) -> None:
        grad.sub_(state["correction"]).add_(param - state["anchor"], alpha=self.lamb)
        super().update(param, grad, state, active)


@dataclass(frozen=True)
class CorrectionUpdate:
    """After the local steps: ``ĝ_i <- ĝ_i - lamb (y_K - x)``."""

    lamb: float
    node_state: dict = field(default_factory=_state)

    def __call__(self, params: Tensor, state: Vectors, node: Tensor, steps: Tensor) -> Vectors:
        return {"correction": state["correction"] - self.lamb * (params - state["anchor"])}


@dataclass(frozen=True)
class SendCorrected:
    """The paper's upload ``x̂_i = y_K - λ ĝ_i = y_K - ĝ_i / lamb``: one dense fp32 vector. The
    client's own ``y_K`` and ``ĝ_i`` are left as they are."""

    lamb: float
    node_state: dict = field(default_factory=lambda: {"correction": CORRECTION})

    def encode(self, params: Tensor, state: Vectors, key: Tensor) -> tuple[Vectors, Vectors]:
        return {"params": params - state["correction"] / self.lamb}, {}

    def nbytes(self, dim: int) -> int:
        return 4 * dim


@dataclass(frozen=True)
class ServerDual:
    """The official code's server: ``H <- H + Σ_S (y_K - x)`` (``H = Σ_n h_n`` over all N
    clients), ``x <- mean_S y_K + H / N``."""

    def init(self, params: Tensor) -> Vectors:
        return {"params": params.clone(), "dual_sum": torch.zeros_like(params)}

    def update(self, state: Vectors, aggregate: Vectors, ctx: RoundContext
               ) -> tuple[Vectors, Vectors]:
        mean = aggregate["params"]
        dual = state["dual_sum"] + ctx.uploaders * (mean - state["params"])
        x = mean + dual / ctx.num_nodes
        return {"params": x}, {"params": x, "dual_sum": dual}


def _number(name: str, value: Any, low: float, *, strict: bool, fix: str) -> float:
    bad = isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(
        value) or (value <= low if strict else value < low)
    if bad:
        sign = ">" if strict else ">="
        raise ValueError(f"fedspeed: {name} must be a finite number {sign} {low}, got "
                         f"{value!r} ({fix})")
    return float(value)


@ALGORITHMS.register(
    "fedspeed", "FedSpeed: prox-corrected local SAM steps; the server averages y_K - λ ĝ_i")
def fedspeed(lr: float = 0.1, rho: float = 0.1, lamb: float = 0.1, alpha: float = 1.0,
             weight_decay: float = 1e-3, form: str = "paper", local_epochs: float | None = None,
             local_steps: int | None = None, batch_size: int = 50, fraction: float | None = None,
             clients_per_round: int | None = None,
             participation: str | dict | None = None) -> Algorithm:
    """FedSpeed (Sun et al., ICLR 2023); defaults as FL-Simulator's FedSpeed row (lr 0.1,
    ``rho`` 0.1, ``lamb`` = 1/λ = 0.1, weight decay 1e-3, batch 50; its lr decay is not here).

    ``rho``: the ascent radius (0: plain gradient, a fused step); ``alpha``: the weight of the
    perturbed gradient in ``g̃`` (1, the code's, uses it alone); ``form``: ``"paper"`` (upload
    ``x̂_i``, the server averages the round's clients) or ``"code"`` (upload ``y_K``; the
    server adds the mean of every client's stale ``h_n``). Clients are averaged uniformly."""
    from murmura.algorithms.plans import ServerAverageRule

    params = dict(locals())
    lamb = _number("lamb", lamb, 0.0, strict=True, fix="lamb = 1/λ weighs the prox term, e.g. 0.1")
    rho = _number("rho", rho, 0.0, strict=False, fix="the ascent radius; 0 turns SAM off")
    alpha = _number("alpha", alpha, 0.0, strict=False, fix="a weight in [0, 1]; 1 is the code's")
    if alpha > 1:
        raise ValueError(f"fedspeed: alpha must lie in [0, 1] (1 uses the perturbed gradient "
                         f"alone, as the official code), got {alpha!r}")
    if form not in ("paper", "code"):
        raise ValueError(f"fedspeed: form must be 'paper' (the paper's Algorithm 1) or 'code' "
                         f"(the official code's server), got {form!r}")
    rule = (PerturbedCorrectedSGD(lr, 0.0, weight_decay, lamb=lamb, rho=rho, alpha=alpha)
            if rho > 0 else CorrectedSGD(lr, 0.0, weight_decay, lamb=lamb))
    paper = form == "paper"
    return _federated("fedspeed", rule, ServerAverageRule() if paper else ServerDual(), params,
                      encoder=SendCorrected(lamb) if paper else SendModel(),
                      after_local=CorrectionUpdate(lamb), weighting="uniform")
