"""FedAMD: anchor sampling for federated learning with partial participation (Wu, Guo, Qu, He,
Liu and Gao, "Anchor Sampling for Federated Learning with Partial Client Participation", ICML
2023, arXiv 2206.05891; code github.com/HarliWu/FedAMD, ``algo/fedamd.py``,
``main_fmnist.py``). Specification: ``specs/federated.md`` section 1.

Each round S clients are sampled and each is given a role. **Anchors** compute a large-batch
gradient at the global model ``x`` (the "bullseye") and the server keeps every client's
latest one, ``G[n]``. **Miners** take K SARAH/PAGE-style steps that start from
``g = (1/N) Σ_n G[n]``, the table's mean *before* this round's anchors refresh it::

    y_0 = y_prev = x;  v = g
    for k = 0..K-1:   v <- v - ∇f_i(y_prev; B_k) + ∇f_i(y_k; B_k);  y_prev <- y_k;
                      y_{k+1} = y_k - η_l v
    Δ_i = x - y_K;    x <- x - η_g mean_{miners} Δ_i   (a round of anchors only: x unchanged)

Roles (:class:`Roles`): ``p < 1``: each participant is an anchor with probability ``p``,
drawn from (seed, client, round); ``p = P >= 2`` an integer: the "sequential" mode, every
participant is an anchor when ``t mod P == 0`` and a miner otherwise. The server assigns the
roles (the spec's ``ClientSampler``): it sends each client its role with the model, a 4-byte
flag. The engine sets every row to a broadcast and counts it for the round's receivers, so the
flag for round t+1 rides on round t's download, as the model does.

Choices within the engine, where the paper leaves room or the engine forces one:

* **The large batch.** The spec's default is the whole local set. Here an anchor's bullseye is
  the mean of its gradients on the round's K minibatches of size b, all at the unmoved ``x``:
  ``K b`` samples from the node's stream of shuffled epochs (on digits with N = 20, about 2.4
  passes over its ~67 samples, so every sample counts two or three times). Its cost is those
  ``K b`` per-sample gradients; a miner's step costs 2 b (two gradients on one minibatch).
* **The initial table** ``G[n] = ∇f_n(x0)``: engine round 0 is an initialization round in which
  every client is an anchor (the participation is everyone, then the sample of S); FedAMD's
  round t is engine round t + 1, so ``sequential`` anchors at engine rounds 1, P+1, ...
* **The table** is kept as its running mean: each client keeps its own last ``G[i]`` and an
  anchor uploads the change, ``g <- g + (1/N) Σ_anchors (G_new - G_old)`` (the spec's (c)
  allows this); server memory d instead of N d.
* Means over miners and over the table are uniform, as the official code's.
* Two server steps a round (:class:`MinersThenAnchors`): the miners' uploads first, since a
  broadcast sets every row and would overwrite a miner's model before it uploads.
* Bytes per participant and round: up one dense d-vector (bullseye change or Δ); down ``x``
  (+ ``g`` for miners) and the 4-byte role: ``4d + 4`` for an anchor, ``8d + 4`` for a miner.

The code's ``lr_global_divided`` (Δ / K) is missing from ``main_fmnist.py``'s argparse (the
spec's defect): no division, as the spec says. The code's ``pr = 1`` makes every client a miner
forever; the paper's sequential rule would make every round an anchor round: both degenerate,
so ``p = 1`` is refused. The deprecated time-varying ``p_t`` is not implemented.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.func import grad

from murmura.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    GradFn,
    LocalWork,
    LossFn,
    Participation,
    RoundContext,
    Tensor,
)
from murmura.algorithms.named import _participation
from murmura.algorithms.plans import NodeState, ServerStep, Vectors
from murmura.algorithms.rules import Every
from murmura.swarm.random import uniform

# per-node vectors laid out like params; rules that share one declare it alike
STATE = {
    "miner": NodeState(),                 # 1 in every entry for a miner, 0 for an anchor
    "g": NodeState(),                     # the table's mean, as the server last sent it
    "v": NodeState(),                     # the miner's recursive estimate
    "prev": NodeState("params", "round"),  # y_prev
    "start": NodeState("params", "round"),  # x, the model the round started from
    "fresh": NodeState("zeros", "round"),  # the anchor's new bullseye (a sum, then a mean)
    "bullseye": NodeState(),              # the client's own last bullseye G[i]
}


def _declare(*names: str) -> dict[str, NodeState]:
    return {name: STATE[name] for name in names}


@dataclass(frozen=True)
class Roles:
    """Who is a miner: ``miners(seed, clients, round) -> bool``. Round 0 initializes the table
    (everyone an anchor); FedAMD's round ``t`` is round ``t + 1``. ``p < 1``: a miner with
    probability ``1 - p``, from (seed, client, round); ``p = P >= 2``: miners unless
    ``t mod P == 0``."""

    p: float = 0.2

    def miners(self, seed: int, clients: Tensor, round: int) -> Tensor:
        if round == 0:
            return torch.zeros(clients.shape, dtype=torch.bool, device=clients.device)
        if self.p >= 1:
            return torch.full(clients.shape, (round - 1) % int(self.p) != 0, dtype=torch.bool,
                              device=clients.device)
        return uniform(seed, "fedamd-role", clients, round) >= self.p


@dataclass(frozen=True)
class AnchorOrMinerStep:
    """One local step of either role, on the round's minibatch ``B``. The gradient is
    ``∇f_i(y; B) - miner ∇f_i(y_prev; B)``; then

    * anchor (``y = x`` throughout): ``fresh += ∇f_i(x; B)``;
    * miner: ``v <- v - ∇f_i(y_prev; B) + ∇f_i(y; B)``, ``y_prev <- y``, ``y <- y - lr v``."""

    lr: float
    state_names: tuple = ()
    gradient_state: tuple = ("prev", "miner")
    node_state: dict = field(default_factory=lambda: _declare("miner", "v", "prev", "fresh"))

    def gradient(self, loss: LossFn) -> GradFn:
        # ∇f_i(y; B) and ∇f_i(y_prev; B) in one backward pass (a sixth faster than two)
        both = grad(lambda y, y_prev, *batch: loss(y, *batch) + loss(y_prev, *batch),
                    argnums=(0, 1))

        def recursive(params: dict[str, Tensor], *batch_and_state: Any) -> dict[str, Tensor]:
            *batch, state = batch_and_state
            now, then = both(params, state["prev"], *batch)
            return {k: now[k] - state["miner"][k] * then[k] for k in now}

        return recursive

    def update(self, param, grad, state, active) -> None:
        miner = state["miner"] if active is None else state["miner"] * active
        anchor = (1 - state["miner"]) if active is None else (1 - state["miner"]) * active
        state["fresh"].add_(anchor * grad)
        state["v"].add_(miner * grad)
        state["prev"].add_(miner * (param - state["prev"]))
        param.sub_(self.lr * miner * state["v"])


@dataclass(frozen=True)
class StartFromTableMean:
    """Before the local steps: ``v = g``."""

    node_state: dict = field(default_factory=lambda: _declare("g", "v"))

    def __call__(self, params: Tensor, state: Vectors, node: Tensor, key: Tensor) -> Vectors:
        return {"v": state["g"]}


@dataclass(frozen=True)
class BullseyeMean:
    """After the local steps: the anchor's bullseye is the mean of its step gradients at ``x``
    (a miner's ``fresh`` is zero and stays so)."""

    node_state: dict = field(default_factory=lambda: _declare("fresh"))

    def __call__(self, params: Tensor, state: Vectors, node: Tensor, steps: Tensor) -> Vectors:
        return {"fresh": state["fresh"] / steps.clamp_min(1)}


@dataclass(frozen=True)
class SendBullseyeChange:
    """An anchor uploads ``G_new - G_old`` (one dense fp32 vector) and keeps ``G_new``."""

    node_state: dict = field(default_factory=lambda: _declare("fresh", "bullseye"))

    def encode(self, params: Tensor, state: Vectors, key: Tensor) -> tuple[Vectors, Vectors]:
        return {"bullseye": state["fresh"] - state["bullseye"]}, {"bullseye": state["fresh"]}

    def nbytes(self, dim: int) -> int:
        return 4 * dim


@dataclass(frozen=True)
class SendMinerStep:
    """A miner uploads ``Δ_i = x - y_K`` (one dense fp32 vector)."""

    node_state: dict = field(default_factory=lambda: _declare("start"))

    def encode(self, params: Tensor, state: Vectors, key: Tensor) -> tuple[Vectors, Vectors]:
        return {"delta": state["start"] - params}, {}

    def nbytes(self, dim: int) -> int:
        return 4 * dim


@dataclass(frozen=True)
class MinersThenAnchors:
    """Two server steps a round. The miners upload ``Δ_i``, the server moves ``x`` and the
    anchors download it; then the anchors upload their bullseye changes, the server moves
    ``g`` and the miners download ``x`` and ``g``. Each participant uploads once and downloads
    once; this order keeps a broadcast (which sets every row) from overwriting a miner's model
    before it uploads. Both steps run every round, with nobody uploading if need be (the
    server's ``x``, ``g`` and next roles are then set in every row at no cost)."""

    roles: Roles
    needs_topology: bool = False
    uses_server: bool = True
    node_state: dict = field(default_factory=lambda: _declare(
        "miner", "g", "start", "fresh", "bullseye"))

    def plan(self, ctx: RoundContext, participants: Tensor | None, topology: Any,
             sizes: Tensor) -> list[ServerStep]:
        ids = torch.arange(ctx.num_nodes, device=ctx.device) if participants is None \
            else participants
        miner = self.roles.miners(ctx.seed, ids, ctx.round)
        anchors = torch.zeros(ctx.num_nodes, dtype=torch.float64, device=ctx.device)
        miners = torch.zeros_like(anchors)
        anchors[ids[~miner]] = 1.0
        miners[ids[miner]] = 1.0
        return [ServerStep(miners, SendMinerStep(), receivers=anchors > 0),
                ServerStep(anchors, SendBullseyeChange(), receivers=miners > 0)]


@dataclass(frozen=True)
class BullseyeServer:
    """The server keeps ``x`` and ``g = (1/N) Σ_n G[n]``. The miners' step:
    ``x <- x - η_g mean_M Δ_i`` (unchanged without miners), broadcast ``x``; the anchors':
    ``g <- g + (|A|/N) mean_A (G_new - G_old)``, broadcast ``x`` and ``g``. Both broadcast
    each client's role for the next round (one float per client)."""

    roles: Roles
    server_lr: float = 1.0

    def init(self, params: Tensor) -> Vectors:
        return {"params": params.clone(), "g": torch.zeros_like(params)}

    def update(self, state: Vectors, aggregate: Vectors, ctx: RoundContext
               ) -> tuple[Vectors, Vectors]:
        x, g = state["params"], state["g"]
        clients = torch.arange(ctx.num_nodes, device=x.device)
        roles = self.roles.miners(ctx.seed, clients, ctx.round + 1).to(x.dtype).unsqueeze(1)
        if "delta" in aggregate:
            if ctx.uploaders:
                x = x - self.server_lr * aggregate["delta"]
            return {"params": x, "miner": roles}, {"params": x, "g": g}
        g = g + (ctx.uploaders / ctx.num_nodes) * aggregate["bullseye"]
        return {"params": x, "g": g, "miner": roles}, {"params": x, "g": g}


@dataclass(frozen=True)
class EveryoneFirst:
    """Round 0 is the table's initialization: every client takes part (and is an anchor);
    later rounds are ``inner``'s."""

    inner: Participation

    def how_many(self, num_nodes: int) -> int:
        how_many = getattr(self.inner, "how_many", None)
        return num_nodes if how_many is None else how_many(num_nodes)

    def select(self, ctx: RoundContext) -> Tensor | None:
        return None if ctx.round == 0 else self.inner.select(ctx)


def _positive(name: str, value: Any, *, integer: bool = False) -> float:
    bad = (isinstance(value, bool) or not isinstance(value, numbers.Real)
           or not math.isfinite(value) or value <= 0 or (integer and int(value) != value))
    if bad:
        kind = "a positive integer" if integer else "a positive finite number"
        raise ValueError(f"fedamd: {name} must be {kind}, got {value!r}")
    return int(value) if integer else float(value)


def _anchor_probability(p: Any) -> float:
    p = _positive("p", p)
    if p >= 1 and (p != int(p) or p == 1):
        raise ValueError(
            f"fedamd: p must lie in (0, 1) (the constant anchor probability) or be an integer "
            f"P >= 2 (sequential mode: all anchors when t mod P == 0), got {p!r}"
            + (" (P = 1 would make every round an anchor round: x would never move)"
               if p == 1 else ""))
    return p


@ALGORITHMS.register(
    "fedamd", "FedAMD: anchors refresh a table of large-batch gradients, miners take "
    "variance-reduced steps from its mean")
def fedamd(lr: float = 0.01, server_lr: float = 1.0, p: float = 0.2, local_steps: int = 10,
           batch_size: int = 64, fraction: float | None = None,
           clients_per_round: int | None = None) -> Algorithm:
    """FedAMD (Wu et al., ICML 2023); defaults the official code's (η_l 0.01, η_g 1, p 0.2,
    K = 10 steps of batch 64). ``p``: the anchor probability in (0, 1), or an integer P >= 2
    for the sequential mode; ``fraction`` / ``clients_per_round``: S, a uniform sample each
    round (everyone by default). Round 0 initializes the bullseye table (every client an
    anchor); see the module's docstring for the rest."""
    params = dict(locals())
    roles = Roles(_anchor_probability(p))
    return Algorithm(
        name="fedamd",
        local_rule=AnchorOrMinerStep(_positive("lr", lr)),
        local_work=LocalWork(_positive("batch_size", batch_size, integer=True),
                             steps=_positive("local_steps", local_steps, integer=True)),
        communication=MinersThenAnchors(roles),
        schedule=Every(1),
        participation=EveryoneFirst(_participation(fraction, clients_per_round)),
        server=BullseyeServer(roles, _positive("server_lr", server_lr)),
        before_local=StartFromTableMean(),
        after_local=BullseyeMean(),
        params=params,
    )


__all__ = ["AnchorOrMinerStep", "BullseyeServer", "EveryoneFirst", "MinersThenAnchors",
           "Roles", "fedamd"]
