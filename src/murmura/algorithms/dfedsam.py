"""DFedSAM and DFedSAM-MGS (Shi, Shen, Wei, Sun, Yuan, Wang and Tao, "Improving the Model
Consistency of Decentralized Federated Learning", ICML 2023, arXiv 2302.04083).

Every node runs K local steps of sharpness-aware minimization (SAM, Foret et al., 2021), then
the nodes gossip ``Q`` times on the round's graph::

    repeat K times:  g = ∇F_i(z; ξ);  ε = ρ g / ||g||₂;  z <- z - η ∇F_i(z + ε; ξ)
    v⁰ = z;  vᵠ_i = Σ_j W_ij vᵠ⁻¹_j  (q = 1..Q);  x_i <- v^Q_i

``Q = 1`` is DFedSAM, ``Q > 1`` DFedSAM-MGS (multiple gossip steps: Q messages per link per round,
no extra computation), and ``ρ = 0`` is DFedAvg (local SGD steps, then one gossip). As the spec
(``specs/decentralized.md`` §3) says, the ascent ``ε`` is normalized by the norm of the node's
gradient over *all* its parameters, both gradients use the same minibatch, and the descent is
plain SGD as in the paper's algorithm (the third-party SAM code's momentum 0.9 is available as
``momentum``, weight decay as ``weight_decay``; neither enters the ascent step).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch
from torch.func import grad

from murmura.algorithms.base import ALGORITHMS, Algorithm, GradFn, LossFn
from murmura.algorithms.named import _work
from murmura.algorithms.rules import SGD, Every, FullParticipation, Gossip


@dataclass(frozen=True)
class SAM(SGD):
    """SGD on the gradient at the worst nearby point, ``g̃ = ∇F(z + ρ g/||g||₂)`` with
    ``g = ∇F(z)``, on the same minibatch (two forward-backward passes per step). A node whose
    gradient is zero takes the plain gradient (ε = 0); ``rho = 0`` is exactly SGD."""

    rho: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        check_rho(self.rho)

    def gradient(self, loss: LossFn) -> GradFn:
        node_grad = grad(loss)
        if self.rho == 0:
            return node_grad

        def sharpness_aware(params: dict[str, torch.Tensor], *batch: Any) -> dict:
            g = node_grad(params, *batch)  # batch: (x, y) or (x, y, w), any extras after
            # written into g's own memory: no fresh [n, d] buffers
            return node_grad(ascent_point(params, g, self.rho, reuse=True), *batch)

        return sharpness_aware


def ascent_point(params: dict[str, torch.Tensor], g: dict[str, torch.Tensor], rho: float,
                 reuse: bool = False) -> dict[str, torch.Tensor]:
    """SAM's perturbed point ``z + ρ g / ||g||₂``, the norm over all of one node's parameters
    (a zero gradient gives no ascent). ``reuse`` writes it into ``g``'s memory."""
    norm = torch.sqrt(sum(v.square().sum() for v in g.values()))
    scale = rho / norm.clamp_min(1e-12)
    if reuse:
        return {k: g[k].mul_(scale).add_(p) for k, p in params.items()}
    return {k: p + scale * g[k] for k, p in params.items()}


def check_rho(rho: Any) -> float:
    if isinstance(rho, bool) or not isinstance(rho, numbers.Real) or not math.isfinite(rho):
        raise ValueError(f"dfedsam: rho must be a finite number >= 0, got {rho!r}")
    if rho < 0:
        raise ValueError(
            f"dfedsam: rho must be >= 0 (the SAM radius; 0 gives DFedAvg), got {rho!r}"
        )
    return float(rho)


@ALGORITHMS.register(
    "dfedsam", "DFedSAM / DFedSAM-MGS: local SAM steps, then Q gossip steps x <- W^Q x"
)
def dfedsam(
    lr: float = 0.05,
    rho: float = 0.01,
    gossip_steps: int = 1,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    local_steps: int | None = None,
    local_epochs: float | None = None,
    batch_size: int = 32,
) -> Algorithm:
    """DFedSAM (``gossip_steps=1``) and DFedSAM-MGS (``gossip_steps=Q > 1``), Shi et al., 2023.

    ``rho``: the SAM radius (the paper's 0.01; 0 gives DFedAvg, whose local rule is then plain
    SGD, so the fused linear step applies); ``gossip_steps``: Q, each one a full message per link
    on the round's graph (Q x the bytes of DFedSAM). Needs a topology: the paper samples 10
    random neighbours per round; murmura's ``ring`` with its default Metropolis weights is the
    spec's ring with 1/3 weights."""
    params = dict(locals())
    rho = check_rho(rho)
    if isinstance(gossip_steps, bool) or not isinstance(gossip_steps, numbers.Integral) or (
        gossip_steps < 1
    ):
        raise ValueError(
            f"dfedsam: gossip_steps must be an integer >= 1 (Q, the gossip steps per round; "
            f"1 is DFedSAM, e.g. 4 for DFedSAM-MGS), got {gossip_steps!r}"
        )
    local_rule = (SAM(lr, momentum, weight_decay, rho=rho) if rho > 0
                  else SGD(lr, momentum, weight_decay))
    return Algorithm(
        name="dfedsam",
        local_rule=local_rule,
        local_work=_work(local_steps, local_epochs, batch_size),
        communication=Gossip(steps=int(gossip_steps)),
        schedule=Every(1),
        participation=FullParticipation(),
        needs_connected=True,
        params=params,
    )
