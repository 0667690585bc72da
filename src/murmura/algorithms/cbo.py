"""Consensus-based optimization (CBO) and consensus hopping: a derivative-free swarm, each
particle a node (spec section 8).

Riedl, Klock, Geldhauser and Fornasier, "Gradient is All You Need?" (arXiv 2306.09778): CBO's
consensus point behaves like a stochastically perturbed gradient descent, and can jump energy
barriers that stop GD. Official code: github.com/KonstantinRiedl/CBOGlobalConvergenceAnalysis
(``CBO/compute_valpha.m``, ``CBO/CBO_update.m``, ``CBOstochasticGD/algorithms/CH.m``).

Every step, with ``f`` the objective (the node's task loss on its minibatch)::

    consensus   w_j = exp(−α (f(x_j) − min_k f(x_k))),   v_α = Σ_j w_j x_j / Σ_j w_j
    CBO move    x_i ← x_i − λ dt (x_i − v_α) + σ √dt D(x_i − v_α) ξ_i,   ξ_i ~ N(0, I)
                D(u) = ‖u‖₂ I (isotropic) or diag(|u|) (anisotropic)
    CH move     x_i ← v_α + σ ξ_i   (consensus hopping: resample around the consensus point)

How it maps onto murmura (one CBO step per round):

* **local rule** (:class:`Evaluate`): the node evaluates ``f(x_i)`` on its minibatch and stores
  it, broadcast, in the node state ``score`` (laid out like the parameters); ``x_i`` does not
  move and no gradient is taken.
* **exchange**: every node sends ``(x_i, f_i)`` to its out-neighbours, ``4 (d + 1)`` bytes per
  link (:class:`SendPointAndScore`); each receiver computes ``v_α`` over its neighbourhood,
  itself included (:class:`ConsensusPoint`, a joint aggregator, log-sum-exp stable), and moves
  (:class:`ConsensusMove`, keyed noise). On the ``complete`` graph every node computes the same
  ``v_α`` over all particles: the paper's CBO (there the consensus is an all-reduce of
  ``(Σ w_j x_j, Σ w_j)``; murmura counts the messages as sent, ``(n − 1) 4 (d + 1)`` per node
  per step). On a sparse graph it is the spec's decentralized mapping: consensus over
  neighbours, not in the paper. A graph of disjoint components runs one swarm per component.

Differences from the official code, stated: the noise uses ``D(x_i − v_α)`` before the drift
(the Euler–Maruyama step written above, as in the paper and in CBXpy); ``CBO_update.m`` applies
the drift first and scales the noise by the moved distance, i.e. by ``(1 − λ dt)`` more. The
optional gradient drift (``γ > 0``; off in the paper's illustrations), the ML script's
parameter cooling and its noise kick when ``v_α`` stalls, are not implemented.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import torch

from murmura.algorithms.base import ALGORITHMS, Algorithm, GradFn, LocalWork, LossFn, Tensor
from murmura.algorithms.plans import Exchange, NodeState, Vectors
from murmura.algorithms.rules import Every, FullParticipation
from murmura.swarm.random import key_normal

SCORE = {"score": NodeState("zeros", "never")}
NOISES = ("isotropic", "anisotropic")


def consensus_point(points: Tensor, scores: Tensor, mask: Tensor, alpha: float) -> Tensor:
    """``v_α = Σ_j w_j x_j / Σ_j w_j`` with ``w_j = exp(−α (f_j − min f))`` over the rows of
    ``points [k, d]`` where ``mask [k]`` is 1 (``scores [k]``). Shifting by the minimum first keeps
    every logit ``≤ 0`` and the best particle's at 0, so ``α = 1e15`` in float32 gives the best
    particle (the mean of tied ones) instead of ``inf − inf``."""
    present = mask > 0
    best = torch.where(present, scores, torch.inf).min()
    logits = torch.where(present, -alpha * (scores - best), -torch.inf)
    return torch.softmax(logits, dim=0) @ points


@dataclass(frozen=True)
class Evaluate:
    """The local step: ``score_i ← f(x_i)`` on the node's minibatch; the point stays put."""

    state_names: tuple[str, ...] = ()
    node_state: dict = field(default_factory=lambda: dict(SCORE))

    def gradient(self, loss: LossFn) -> GradFn:
        def score(params: dict[str, Tensor], *batch: Tensor) -> dict[str, Tensor]:
            f = loss(params, *batch).detach()
            return {name: f.expand(p.shape) for name, p in params.items()}

        return score

    def update(self, param: Tensor, grad: Tensor, state, active: Tensor | None) -> None:
        if active is None:
            state["score"].copy_(grad)
        else:  # nodes without a step this round keep their score
            state["score"].copy_(active * grad + (1.0 - active) * state["score"])


@dataclass(frozen=True)
class SendPointAndScore:
    """A particle sends its point and its score: ``d + 1`` fp32 numbers."""

    node_state: dict = field(default_factory=lambda: dict(SCORE))

    def encode(self, params: Tensor, state: Vectors, key: Tensor) -> tuple[Vectors, Vectors]:
        return {"params": params, "score": state["score"][:1]}, {}

    def nbytes(self, dim: int) -> int:
        return 4 * (dim + 1)


@dataclass(frozen=True)
class ConsensusPoint:
    """Joint aggregator: the neighbourhood's (oneself included) Gibbs-weighted consensus point."""

    alpha: float
    joint: bool = True

    def __call__(self, own: Vectors, received: Vectors, mask: Tensor) -> Vectors:
        v = consensus_point(received["params"], received["score"][:, 0], mask, self.alpha)
        return {"params": v, "score": own["score"]}


@dataclass(frozen=True)
class ConsensusMove:
    """The particle's move towards the consensus point ``v`` it received (CBO), or its
    resampling around it (consensus hopping); the noise is drawn from the node's key."""

    lam: float
    sigma: float
    dt: float
    noise: str = "isotropic"
    hopping: bool = False
    needs_key: bool = True
    node_state: dict = field(default_factory=dict)

    def combine(self, params: Tensor, state: Vectors, received: Vectors, key: Tensor) -> Vectors:
        v = received["params"]
        xi = key_normal(key, params.shape)
        if self.hopping:
            return {"params": v + self.sigma * xi}
        gap = params - v
        spread = gap.abs() if self.noise == "anisotropic" else torch.linalg.vector_norm(gap)
        step = -self.lam * self.dt * gap + self.sigma * math.sqrt(self.dt) * spread * xi
        return {"params": params + step}


@dataclass(frozen=True)
class ConsensusExchange:
    """One CBO step's communication on the round's graph."""

    alpha: float
    move: ConsensusMove
    needs_topology: bool = True
    node_state: dict = field(default_factory=lambda: dict(SCORE))

    def plan(self, ctx, participants, topology, sizes) -> Exchange:
        return Exchange(topology.mixing_at(ctx.round, device=ctx.device), SendPointAndScore(),
                        self.move, ConsensusPoint(self.alpha))


def _number(name: str, value: object, low: float, strict: bool) -> float:
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value) and (value > low if strict else value >= low))
    if not ok:
        bound = f"> {low}" if strict else f">= {low}"
        raise ValueError(f"cbo: {name} must be a finite number {bound}, got {value!r}")
    return float(value)


@ALGORITHMS.register("cbo", "consensus-based optimization: derivative-free particles (nodes) "
                     "drift to the Gibbs-weighted consensus of their neighbourhood, with noise")
def cbo(alpha: float = 100.0, lam: float = 1.0, sigma: float = 1.6, dt: float = 0.01,
        noise: str = "isotropic", hopping: bool = False, batch_size: int = 64) -> Algorithm:
    """CBO (Riedl, Klock, Geldhauser, Fornasier, arXiv 2306.09778; spec section 8): one step per
    round, ``x_i ← x_i − λ dt (x_i − v_α) + σ √dt D(x_i − v_α) ξ_i`` with ``v_α`` the consensus
    point of the node's neighbourhood (all particles on the ``complete`` graph), weights
    ``exp(−α f)``. ``noise``: ``isotropic`` (``D = ‖x − v‖ I``) or ``anisotropic``
    (``diag|x − v|``). ``hopping=True`` is consensus hopping, ``x_i ← v_α + σ ξ_i`` (``lam`` and
    ``dt`` unused). ``batch_size``: the minibatch each particle evaluates ``f`` on (benchmark
    objectives ignore it). Defaults: the paper's GrandCanyon3noisy setting. Use
    ``same_init=False`` so that every particle starts from its own draw."""
    alpha = _number("alpha", alpha, 0.0, strict=True)
    lam = _number("lam", lam, 0.0, strict=False)
    sigma = _number("sigma", sigma, 0.0, strict=False)
    dt = _number("dt", dt, 0.0, strict=True)
    if noise not in NOISES:
        raise ValueError(f"cbo: noise must be 'isotropic' or 'anisotropic', got {noise!r}")
    if not isinstance(hopping, bool):
        raise ValueError(f"cbo: hopping must be true or false, got {hopping!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
            or batch_size < 1:
        raise ValueError(f"cbo: batch_size must be a positive integer, got {batch_size!r}")
    move = ConsensusMove(lam, sigma, dt, noise, hopping)
    return Algorithm(
        name="cbo",
        local_rule=Evaluate(),
        local_work=LocalWork(batch_size=int(batch_size), steps=1),
        communication=ConsensusExchange(alpha, move),
        schedule=Every(1),
        participation=FullParticipation(),
        params=dict(alpha=alpha, lam=lam, sigma=sigma, dt=dt, noise=noise, hopping=hopping,
                    batch_size=int(batch_size)),
    )


__all__ = ["ConsensusExchange", "ConsensusMove", "ConsensusPoint", "Evaluate",
           "SendPointAndScore", "cbo", "consensus_point"]
