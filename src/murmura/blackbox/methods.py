"""Federated zeroth-order methods (FZooS in :mod:`.fzoos`, the RGF baselines FedZO, SCAFFOLD-ZO and
FedProx-ZO in :mod:`.rgf`): the run they work in, their registry and shared steps.

Every client starts a round from the server's ``x``, takes ``I`` local Adam steps on a gradient
estimated from queries of its own black box ``f_i``, and sends its ``x_i``; the server moves
``x <- x − η Σ_i w_i (x − x_i)`` (η = 1: the weighted average). Clients compute and query in
turn, so each method's client work is written as per-client functions (one client's arguments,
no client axis) that the round ``torch.func.vmap``\\s over the clients; between two of them the
clients' queries go to the problem in one batch (``problem.query``, counted by :class:`Oracle`).
A real peer would run the same functions with its own black box in between.

Randomness is a pure function of (seed, purpose, client, round, iteration)
(:func:`murmura.swarm.random.node_keys`), so a client's draws do not depend on which other
clients run with it. Nothing here reads the global objective ``F``: the official code reverts
the server's ``x`` whenever the true ``F`` increased (``settings.py``, ``run_server``), which
needs an oracle no federation has; it is simulation-only and is not replicated. ``F`` is
evaluated by the driver (:func:`murmura.blackbox.fed_minimize`) for the report only.

Shu, Lin, Dai and Low, "Federated Zeroth-Order Optimization using Trajectory-Informed Surrogate
Gradients", arXiv 2308.04077; official code github.com/shuyao95/FZooS (``optimizers.py``,
``settings.py``, ``run_exp.py``). Specification: ``specs/federated.md`` section 9.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from murmura.blackbox.problems import FederatedProblem, check_points
from murmura.registry import Registry
from murmura.swarm.random import key_uniform, node_keys

Tensor = torch.Tensor

BLACKBOX: Registry = Registry("federated black-box method")


# ---------------------------------------------------------------------------------------------
# the run a method works in


class Oracle:
    """The clients' black boxes: ``oracle(points [N, k, d]) -> values [N, k]`` through
    ``problem.query``, counting every point in ``counts`` (int64 ``[N]``)."""

    def __init__(self, problem: FederatedProblem) -> None:
        self.problem = problem
        self.counts = torch.zeros(problem.num_clients, dtype=torch.int64)

    def __call__(self, points: Tensor) -> Tensor:
        n, d = self.problem.num_clients, self.problem.dim
        if points.dim() != 3:
            raise ValueError(f"oracle: points must be [N, k, d], got {tuple(points.shape)}")
        values = torch.as_tensor(self.problem.query(check_points(points, n, d)))
        if tuple(values.shape) != tuple(points.shape[:2]):
            raise ValueError(f"problem.query returned shape {tuple(values.shape)} for points "
                             f"{tuple(points.shape)}; it must return one value per point [N, k]")
        self.counts += points.shape[1]
        return values.to(torch.float64)


@dataclass
class Run:
    """One optimization run as the methods see it: the problem's sizes and weights, the seed,
    the schedule, the oracle, and the method's own tensors (``state``, client axis first)."""

    problem: FederatedProblem
    oracle: Oracle
    seed: int
    rounds: int
    local_iters: int
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def clients(self) -> Tensor:
        return torch.arange(self.problem.num_clients)

    @property
    def weights(self) -> Tensor:
        return torch.as_tensor(self.problem.weights, dtype=torch.float64)

    def keys(self, purpose: str, *counters: int) -> Tensor:
        """One key per client for (seed, purpose, client, counters...)."""
        return node_keys(self.seed, purpose, self.clients, *counters)


def _positive(owner: str, **values: float) -> None:
    for name, value in values.items():
        if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
            raise ValueError(f"{owner}: {name} must be a positive number, got {value!r}")


def _count(owner: str, minimum: int = 1, **values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{owner}: {name} must be an integer ≥ {minimum}, got {value!r}")


@dataclass(frozen=True)
class Method:
    """A federated zeroth-order method: local Adam (``lr``) and the server step ``eta``."""

    lr: float = 0.01
    eta: float = 1.0

    def __post_init__(self) -> None:
        _positive(type(self).__name__, lr=self.lr, eta=self.eta)

    def start(self, run: Run, x0: Tensor) -> None:
        """Set up ``run.state`` (and make any initial queries)."""

    def local_round(self, run: Run, x: Tensor, r: int) -> Tensor:
        """Every client's ``I`` local iterations from ``x``: ``x_i`` ``[N, d]``."""
        raise NotImplementedError

    def after_server(self, run: Run, x: Tensor, x_local: Tensor, r: int) -> None:
        """What clients and server do once the new ``x`` is known (surrogates, controls)."""

    def message_values(self, dim: int) -> tuple[int, int]:
        """Numbers sent per client per round: (client -> server, server -> client)."""
        return dim, dim

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def adam(x: Tensor, g: Tensor, m: Tensor, v: Tensor, step: int, lr: float,
         b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> tuple[Tensor, Tensor, Tensor]:
    """One Adam step (optax's ``adam``; ``step`` counts from 1, the moments restart each round
    as the code re-initializes its optimizer per round)."""
    m = b1 * m + (1.0 - b1) * g
    v = b2 * v + (1.0 - b2) * g * g
    update = (m / (1.0 - b1**step)) / ((v / (1.0 - b2**step)).sqrt() + eps)
    return x - lr * update, m, v


def append(hx: Tensor, hy: Tensor, count: Tensor, points: Tensor, values: Tensor
           ) -> tuple[Tensor, Tensor, Tensor]:
    """One client's history with ``points`` ``[k, d]`` / ``values`` ``[k]`` written at
    ``count, ..., count + k − 1`` (per client; the buffer is sized by the method up front)."""
    slot = torch.arange(hx.shape[0], device=hx.device)[:, None]
    place = (slot == count + torch.arange(points.shape[0], device=hx.device)).to(hx.dtype)
    keep = 1.0 - place.sum(1)
    return keep[:, None] * hx + place @ points, keep * hy + place @ values, count + points.shape[0]


def around(center: Tensor, key: Tensor, radius: Tensor | float, num: int, salt: int = 0
           ) -> Tensor:
    """``num`` points ``center + radius · U[−1, 1]^d`` from one client's key: ``[num, d]``."""
    u = key_uniform(key, (num, center.shape[-1]), salt).to(center.dtype)
    return center + radius * (2.0 * u - 1.0)
