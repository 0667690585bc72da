"""Decentralized baselines on the v2 contract: CHOCO-SGD and gradient tracking.

Both are per-node encoders and combiners over an :class:`~murmura.algorithms.plans.Exchange`:
what a node sends, and what it does with the ``W``-weighted sum of what its neighbours sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from murmura.algorithms.base import ALGORITHMS, Algorithm, RoundContext, Tensor
from murmura.algorithms.compressors import Identity, make_compressor
from murmura.algorithms.named import _work
from murmura.algorithms.plans import Exchange, NodeState, Vectors
from murmura.algorithms.rules import SGD, Every, FullParticipation

PUBLIC = {"public": NodeState("zeros", "never")}


# ---------------------------------------------------------------------------------------------
# CHOCO-SGD (Koloskova, Stich and Jaggi, 2019)


@dataclass(frozen=True)
class ChocoEncode:
    """``q_i = Q(x_i - x̂_i)``; the node and its neighbours add ``q_i`` to their copy of
    ``x̂_i``. Every neighbour's copy equals the node's own (same updates, same order), so the
    simulation keeps one ``x̂_i`` per node and mixes it; what is counted is ``q_i``'s size."""

    compressor: Any = field(default_factory=Identity)
    node_state: dict = field(default_factory=lambda: dict(PUBLIC))

    def encode(self, params: Tensor, state: Vectors, key: Tensor) -> tuple[Vectors, Vectors]:
        public = state["public"] + self.compressor(params - state["public"], key)
        return {"public": public}, {"public": public}

    def nbytes(self, dim: int) -> int:
        return self.compressor.nbytes(dim)


@dataclass(frozen=True)
class ChocoCombine:
    """``x_i <- x_i + gamma sum_j W_ij (x̂_j - x̂_i)`` (``W`` row-stochastic)."""

    gamma: float = 1.0
    node_state: dict = field(default_factory=lambda: dict(PUBLIC))

    def combine(self, params: Tensor, state: Vectors, received: Vectors) -> Vectors:
        return {"params": params + self.gamma * (received["public"] - state["public"])}


@dataclass(frozen=True)
class ChocoGossip:
    """CHOCO-gossip on the round's topology with a compressor and consensus step ``gamma``."""

    compressor: Any = field(default_factory=Identity)
    gamma: float = 1.0
    needs_topology: bool = True

    @property
    def node_state(self) -> dict:
        return dict(PUBLIC)

    def plan(self, ctx: RoundContext, participants, topology, sizes) -> Exchange:
        return Exchange(topology.mixing_at(ctx.round, device=ctx.device),
                        ChocoEncode(self.compressor), ChocoCombine(self.gamma))


# ---------------------------------------------------------------------------------------------
# gradient tracking (GT-DSGD, Pu and Nedic 2021; with local steps K-GT, Liu et al., 2023)

TRACKING = {"anchor": NodeState("params", "round"), "correction": NodeState(),
            "drift": NodeState()}


@dataclass(frozen=True)
class TrackedSGD(SGD):
    """A local step along the tracked global direction: ``x <- x - lr (g_i(x) + c_i)``, where
    the correction ``c_i`` estimates ``mean_j g_j - g_i``."""

    node_state: dict = field(default_factory=lambda: dict(TRACKING))

    def update(self, param, grad, state, active) -> None:
        grad.add_(state["correction"])
        super().update(param, grad, state, active)

    def fused_terms(self) -> tuple[float, tuple[tuple[str, float], ...]]:
        return 0.0, (("correction", 1.0),)


@dataclass(frozen=True)
class TrackDrift:
    """After the local steps: the round's mean direction ``d_i = (x_i - x_start) / (K lr)``."""

    lr: float
    node_state: dict = field(default_factory=lambda: dict(TRACKING))

    def __call__(self, params: Tensor, state: Vectors, node: Tensor, steps: Tensor) -> Vectors:
        return {"drift": (params - state["anchor"]) / (steps.clamp_min(1) * self.lr)}


@dataclass(frozen=True)
class SendModelAndDrift:
    """A node sends its model and its drift: two dense fp32 vectors."""

    node_state: dict = field(default_factory=lambda: dict(TRACKING))

    def encode(self, params: Tensor, state: Vectors, key: Tensor) -> tuple[Vectors, Vectors]:
        return {"params": params, "drift": state["drift"]}, {}

    def nbytes(self, dim: int) -> int:
        return 8 * dim


@dataclass(frozen=True)
class TrackCombine:
    """``x_i <- sum_j W_ij x_j``; ``c_i <- c_i + d_i - sum_j W_ij d_j``. With one local step,
    ``y_i = g_i + c_i`` is the tracker ``y <- W y + g(x_new) - g(x_old)`` and the model update
    is ``x <- W (x - lr y)``: GT-DSGD, the adapt-then-combine form of DIGing (whose model update
    is ``W x - lr y``)."""

    node_state: dict = field(default_factory=lambda: dict(TRACKING))

    def combine(self, params: Tensor, state: Vectors, received: Vectors) -> Vectors:
        correction = state["correction"] + state["drift"] - received["drift"]
        return {"params": received["params"], "correction": correction}


@dataclass(frozen=True)
class TrackingGossip:
    """Gradient tracking's exchange on the round's topology."""

    needs_topology: bool = True

    @property
    def node_state(self) -> dict:
        return dict(TRACKING)

    def plan(self, ctx: RoundContext, participants, topology, sizes) -> Exchange:
        return Exchange(topology.mixing_at(ctx.round, device=ctx.device),
                        SendModelAndDrift(), TrackCombine())


# ---------------------------------------------------------------------------------------------
# the named algorithms


@ALGORITHMS.register("choco", "CHOCO-SGD: gossip of compressed differences to public copies")
def choco(lr: float = 0.05, gamma: float = 1.0, compressor: str | dict[str, Any] | None = None,
          local_steps: int | None = None, local_epochs: float | None = None,
          batch_size: int = 32, communicate_every: int = 1) -> Algorithm:
    """CHOCO-SGD (Koloskova et al., 2019): local SGD, then every node sends
    ``Q(x_i - x̂_i)`` and steps ``gamma`` towards its neighbours' public copies. ``compressor``:
    ``identity`` (default), ``top_k``, ``random_k``, ``qsgd`` or ``int8`` (see
    ``murmura.algorithms.compressors``); bytes are counted at the compressed size."""
    if not 0 < gamma <= 1:
        raise ValueError(f"choco: gamma (the consensus step) must lie in (0, 1], got {gamma!r}")
    return Algorithm(
        name="choco",
        local_rule=SGD(lr),
        local_work=_work(local_steps, local_epochs, batch_size),
        communication=ChocoGossip(make_compressor(compressor), gamma),
        schedule=Every(communicate_every),
        participation=FullParticipation(),
        needs_connected=True,
        params=dict(locals()),
    )


@ALGORITHMS.register("gradient_tracking", "gradient tracking (GT-DSGD; K-GT with local steps): "
                     "local steps corrected towards the global gradient")
def gradient_tracking(lr: float = 0.05, local_steps: int | None = None,
                      local_epochs: float | None = None, batch_size: int = 32) -> Algorithm:
    """Gradient tracking: each node's steps follow ``g_i + c_i``, where ``c_i`` tracks the gap
    between the network's mean gradient and its own; with one local step this is GT-DSGD
    (Pu and Nedić, 2021: ``x <- W (x - lr y)``, ``y <- W y + g_new - g_old``, the
    adapt-then-combine form of DIGing), with several it is K-GT (Liu et al., 2023). Each link
    carries the model and the drift (2 vectors)."""
    return Algorithm(
        name="gradient_tracking",
        local_rule=TrackedSGD(lr),
        local_work=_work(local_steps, local_epochs, batch_size),
        communication=TrackingGossip(),
        schedule=Every(1),
        participation=FullParticipation(),
        after_local=TrackDrift(lr),
        needs_connected=True,
        params=dict(locals()),
    )
