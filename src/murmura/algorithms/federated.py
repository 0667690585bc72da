"""Federated baselines on the v2 contract: FedProx, SCAFFOLD and the FedOpt family.

Each is a per-node local rule, an optional after-local step, what a client uploads, and a
server rule (Optax-style ``init``/``update`` on the server's own state). The server rules equal
Flower's strategies of the same name on the same inputs (``benchmarks/check_flower.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from murmura.algorithms.base import ALGORITHMS, Algorithm, LocalWork, RoundContext, Tensor
from murmura.algorithms.named import _participation, _work
from murmura.algorithms.plans import (
    NodeState,
    SendModel,
    ServerAverageRule,
    ServerStep,
    Vectors,
)
from murmura.algorithms.rules import SGD, Every, global_average_weights

ANCHOR = NodeState("params", "round")  # the model a client started its round from


# ---------------------------------------------------------------------------------------------
# local rules


@dataclass(frozen=True)
class ProxSGD(SGD):
    """FedProx's client (Li et al., 2020): SGD on ``f_i(x) + mu/2 ||x - x_start||²``, i.e.
    ``g <- g + mu (x - x_start)`` with ``x_start`` the model the round started from."""

    mu: float = 0.01
    node_state: dict = field(default_factory=lambda: {"anchor": ANCHOR})

    def update(self, param, grad, state, active) -> None:
        grad.add_(param - state["anchor"], alpha=self.mu)
        super().update(param, grad, state, active)

    def fused_terms(self) -> tuple[float, tuple[tuple[str, float], ...]]:
        return self.mu, (("anchor", -self.mu),)  # mu x - mu x_start: the fused step's form


@dataclass(frozen=True)
class ScaffoldSGD(SGD):
    """SCAFFOLD's client step (Karimireddy et al., 2020): ``y <- y - lr (g(y) - c_i + c)``."""

    node_state: dict = field(default_factory=lambda: {
        "anchor": ANCHOR, "control": NodeState(), "server_control": NodeState(),
        "control_delta": NodeState()})

    def update(self, param, grad, state, active) -> None:
        grad.add_(state["server_control"]).sub_(state["control"])
        super().update(param, grad, state, active)

    def fused_terms(self) -> tuple[float, tuple[tuple[str, float], ...]]:
        return 0.0, (("server_control", 1.0), ("control", -1.0))


@dataclass(frozen=True)
class ScaffoldControl:
    """SCAFFOLD option II, after the local steps: ``c_i+ = c_i - c + (x - y) / (K lr)``."""

    lr: float
    node_state: dict = field(default_factory=lambda: {
        "anchor": ANCHOR, "control": NodeState(), "server_control": NodeState(),
        "control_delta": NodeState()})

    def __call__(self, params: Tensor, state: Vectors, node: Tensor, steps: Tensor) -> Vectors:
        scale = 1.0 / (steps.clamp_min(1) * self.lr)
        new = state["control"] - state["server_control"] + (state["anchor"] - params) * scale
        return {"control": new, "control_delta": new - state["control"]}


@dataclass(frozen=True)
class SendModelAndControl:
    """A SCAFFOLD client uploads its model and ``Δc_i``: two dense fp32 vectors."""

    node_state: dict = field(default_factory=lambda: {"control_delta": NodeState()})

    def encode(self, params: Tensor, state: Vectors, key: Tensor) -> tuple[Vectors, Vectors]:
        return {"params": params, "control_delta": state["control_delta"]}, {}

    def nbytes(self, dim: int) -> int:
        return 8 * dim


# ---------------------------------------------------------------------------------------------
# server rules


@dataclass(frozen=True)
class ScaffoldServer:
    """``x <- x + server_lr mean_S(y_i - x)``; ``c <- c + |S|/N mean_S(Δc_i)``; broadcasts both."""

    server_lr: float = 1.0

    def init(self, params: Tensor) -> Vectors:
        return {"params": params.clone(), "control": torch.zeros_like(params)}

    def update(self, state: Vectors, aggregate: Vectors, ctx: RoundContext
               ) -> tuple[Vectors, Vectors]:
        x = state["params"] + self.server_lr * (aggregate["params"] - state["params"])
        c = state["control"] + (ctx.uploaders / ctx.num_nodes) * aggregate["control_delta"]
        return {"params": x, "server_control": c}, {"params": x, "control": c}


@dataclass(frozen=True)
class ServerMomentum:
    """FedAvgM (Hsu et al., 2019; Flower's ``FedAvgM``): pseudo-gradient ``g = x - mean``,
    ``m <- beta m + g``, ``x <- x - server_lr m``."""

    server_lr: float = 1.0
    server_momentum: float = 0.9

    def init(self, params: Tensor) -> Vectors:
        return {"params": params.clone(), "momentum": torch.zeros_like(params)}

    def update(self, state: Vectors, aggregate: Vectors, ctx: RoundContext
               ) -> tuple[Vectors, Vectors]:
        m = self.server_momentum * state["momentum"] + (state["params"] - aggregate["params"])
        x = state["params"] - self.server_lr * m
        return {"params": x}, {"params": x, "momentum": m}


@dataclass(frozen=True)
class AdaptiveServer:
    """FedAdam / FedYogi / FedAdagrad (Reddi et al., 2021), as Flower computes them: with
    ``Δ = mean - x``: ``m <- b1 m + (1 - b1) Δ``; ``v`` by Adam, Yogi or Adagrad's rule from zero;
    ``x <- x + lr_t m / (sqrt(v) + tau)``. Flower's FedAdam bias-corrects ``lr_t = server_lr
    sqrt(1 - b2^(t+1)) / (1 - b1^(t+1))`` at its t-th update (t from 1; Kingma and Ba's exponent
    is t); ``bias_correction=False`` is Reddi et al.'s Algorithm 2."""

    kind: str = "adam"
    server_lr: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-9
    bias_correction: bool = True

    def init(self, params: Tensor) -> Vectors:
        zeros = torch.zeros_like(params)
        return {"params": params.clone(), "m": zeros, "v": zeros.clone(),
                "updates": torch.zeros((), dtype=torch.float64)}

    def update(self, state: Vectors, aggregate: Vectors, ctx: RoundContext
               ) -> tuple[Vectors, Vectors]:
        delta = aggregate["params"] - state["params"]
        m = self.beta1 * state["m"] + (1 - self.beta1) * delta
        square = delta * delta
        if self.kind == "adam":
            v = self.beta2 * state["v"] + (1 - self.beta2) * square
        elif self.kind == "yogi":
            v = state["v"] - (1 - self.beta2) * square * torch.sign(state["v"] - square)
        else:
            v = state["v"] + square
        t = float(state["updates"]) + 1
        lr = self.server_lr
        if self.kind == "adam" and self.bias_correction:
            lr *= math.sqrt(1 - self.beta2 ** (t + 1)) / (1 - self.beta1 ** (t + 1))
        x = state["params"] + lr * m / (torch.sqrt(v) + self.tau)
        return {"params": x}, {"params": x, "m": m, "v": v, "updates": state["updates"] + 1}


# ---------------------------------------------------------------------------------------------
# the communication rule: clients upload, the algorithm's server rule decides


@dataclass(frozen=True)
class ServerOptimize:
    """The round's participants upload ``encoder``'s payload to the server, weighted by samples
    or uniformly; ``aggregator`` replaces the weighted mean by a robust rule."""

    weighting: str = "samples"
    encoder: Any = field(default_factory=SendModel)
    aggregator: Any = None
    needs_topology: bool = False
    uses_server: bool = True

    def plan(self, ctx: RoundContext, participants, topology, sizes) -> ServerStep | None:
        if participants is not None and len(participants) == 0:
            return None  # nobody was available: the server keeps its state
        weights = global_average_weights(sizes, participants, self.weighting)
        return ServerStep(weights, self.encoder, self.aggregator)


# ---------------------------------------------------------------------------------------------
# the named algorithms


def _federated(name: str, local_rule: SGD, server: Any, params: dict, *, encoder: Any = None,
               after_local: Any = None, weighting: str = "samples") -> Algorithm:
    from murmura.robust import make_aggregator

    work = _work(params["local_steps"], params["local_epochs"], params["batch_size"])
    return Algorithm(
        name=name,
        local_rule=local_rule,
        local_work=LocalWork(work.batch_size, work.steps, work.epochs, reset_state_each_round=True),
        communication=ServerOptimize(weighting, encoder or SendModel(),
                                     make_aggregator(params.get("aggregator"))),
        schedule=Every(1),
        participation=_participation(params["fraction"], params["clients_per_round"],
                                     params.get("participation")),
        server=server,
        after_local=after_local,
        params=params,
    )


@ALGORITHMS.register("fedprox", "FedProx: FedAvg whose clients add mu/2 ||x - x_global||²")
def fedprox(mu: float = 0.01, lr: float = 0.05, local_epochs: float | None = None,
            local_steps: int | None = None, batch_size: int = 32, fraction: float | None = None,
            clients_per_round: int | None = None,
            participation: str | dict | None = None) -> Algorithm:
    """FedProx (Li et al., 2020): the proximal term keeps heterogeneous clients near the model
    they started from; the server averages by samples, as FedAvg."""
    if not mu >= 0:
        raise ValueError(f"fedprox: mu must be >= 0, got {mu!r}")
    return _federated("fedprox", ProxSGD(lr, mu=mu), ServerAverageRule(), dict(locals()))


@ALGORITHMS.register("scaffold", "SCAFFOLD (option II): client and server control variates")
def scaffold(lr: float = 0.05, server_lr: float = 1.0, local_epochs: float | None = None,
             local_steps: int | None = None, batch_size: int = 32, fraction: float | None = None,
             clients_per_round: int | None = None,
             participation: str | dict | None = None) -> Algorithm:
    """SCAFFOLD (Karimireddy et al., 2020), option II: each client corrects its steps by
    ``c - c_i``; clients upload model and control deltas (2 vectors) and download the model and
    ``c`` (2 vectors). The server averages uniformly over the round's clients, as the paper."""
    return _federated("scaffold", ScaffoldSGD(lr), ScaffoldServer(server_lr), dict(locals()),
                      encoder=SendModelAndControl(), after_local=ScaffoldControl(lr),
                      weighting="uniform")


@ALGORITHMS.register("fedavgm", "FedAvgM: server momentum on the clients' averaged update")
def fedavgm(lr: float = 0.05, server_lr: float = 1.0, server_momentum: float = 0.9,
            local_epochs: float | None = None, local_steps: int | None = None,
            batch_size: int = 32, fraction: float | None = None,
            clients_per_round: int | None = None,
            participation: str | dict | None = None) -> Algorithm:
    """FedAvgM (Hsu et al., 2019), as Flower's ``FedAvgM``."""
    return _federated("fedavgm", SGD(lr), ServerMomentum(server_lr, server_momentum),
                      dict(locals()))


def _fedopt(kind: str, defaults: dict) -> Any:
    def factory(lr: float = 0.05, server_lr: float = defaults["server_lr"],
                beta1: float = defaults["beta1"],
                beta2: float = 0.99, tau: float = defaults["tau"],
                local_epochs: float | None = None, local_steps: int | None = None,
                batch_size: int = 32, fraction: float | None = None,
                clients_per_round: int | None = None,
                participation: str | dict | None = None) -> Algorithm:
        server = AdaptiveServer(kind, server_lr, beta1, beta2, tau)
        return _federated(f"fed{kind}", SGD(lr), server, dict(locals()) | {"kind": kind})

    factory.__doc__ = (f"Fed{kind.capitalize()} (Reddi et al., 2021): the clients' mean update "
                       f"is a pseudo-gradient for a server {kind.capitalize()}, as Flower's "
                       f"``Fed{kind.capitalize()}`` (see AdaptiveServer).")
    return factory


fedadam = ALGORITHMS.register("fedadam", "FedAdam: server Adam on the averaged client update")(
    _fedopt("adam", {"server_lr": 0.1, "beta1": 0.9, "tau": 1e-9}))
fedyogi = ALGORITHMS.register("fedyogi", "FedYogi: server Yogi on the averaged client update")(
    _fedopt("yogi", {"server_lr": 0.01, "beta1": 0.9, "tau": 1e-3}))
fedadagrad = ALGORITHMS.register(
    "fedadagrad", "FedAdagrad: server Adagrad on the averaged client update")(
    # Flower's FedAdagrad has no momentum: it fixes beta_1 = 0 (m_t = delta_t)
    _fedopt("adagrad", {"server_lr": 0.1, "beta1": 0.0, "tau": 1e-9}))
