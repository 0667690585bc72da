"""What a server does with the client updates that arrive on the virtual clock: FedAsync,
asynchronous FedAvg, FedBuff, FedFix and synchronous FedAvg, each a short rule vectorized over
the arrivals of one window, taken in their event order.

A rule gets the server's state (``params``, the model; ``version``, how many times it changed)
and an :class:`Arrivals` batch, and returns the new state and each arrival's staleness (server
versions between the model the client started from and the one its update meets). Arrivals are
exact at window width 0: a wider window hands several over at once, which these rules still
apply one after another in event order (the closed forms below), so only the *training* of a
window's clients sees the models of the window's start.

>>> import torch
>>> arrivals = Arrivals(nodes=torch.tensor([0, 1]), models=torch.tensor([[2.0], [4.0]]),
...                     deltas=torch.tensor([[2.0], [4.0]]),
...                     start_versions=torch.tensor([0, 0]),
...                     task_seconds=torch.tensor([1.0, 1.0]), weights=torch.tensor([0.5, 0.5]))
>>> state, stale = FedAsync(alpha=0.5, staleness="constant").aggregate(
...     {"params": torch.zeros(1), "version": 0}, arrivals)
>>> state["params"].tolist(), state["version"], stale.tolist()  # 0 -> 1 -> 2.5
([2.5], 2, [0, 1])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from murmura.registry import Registry

Tensor = torch.Tensor
CLOCK_MODES: Registry = Registry("clock mode")
STALENESS = ("constant", "polynomial", "sqrt", "hinge")


@dataclass(frozen=True)
class Arrivals:
    """Client updates arriving at the server, in event order: each client's trained model, its
    update ``model - start`` against the (possibly stale) model it started from, that model's
    server version, the seconds its task took (download, compute, upload) and its weight
    ``p_i`` (its share of the data, or ``1 / n``)."""

    nodes: Tensor
    models: Tensor
    deltas: Tensor
    start_versions: Tensor
    task_seconds: Tensor
    weights: Tensor

    def __len__(self) -> int:
        return int(self.nodes.numel())

    def take(self, index: Tensor) -> Arrivals:
        return Arrivals(self.nodes[index], self.models[index], self.deltas[index],
                        self.start_versions[index], self.task_seconds[index],
                        self.weights[index])


def staleness_weight(kind: str, staleness: Tensor, a: float = 0.5, b: int = 4) -> Tensor:
    """``s(tau)``: ``constant`` 1; ``polynomial`` ``(1 + tau)^-a``; ``sqrt`` ``1 / sqrt(1 + tau)``
    (FedBuff's); ``hinge`` 1 up to ``b``, then ``1 / (a (tau - b) + 1)`` (FedAsync's)."""
    tau = staleness.to(torch.float64)
    if kind == "constant":
        return torch.ones_like(tau)
    if kind == "polynomial":
        return (1.0 + tau) ** (-a)
    if kind == "sqrt":
        return 1.0 / torch.sqrt(1.0 + tau)
    return torch.where(tau <= b, 1.0, 1.0 / (a * (tau - b) + 1.0))


def _check(name: str, value: Any, low: float, high: float = math.inf, closed: bool = False
           ) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            (low <= value if closed else low < value) and value <= high):
        raise ValueError(f"{name} must be a number in {'[' if closed else '('}{low}, {high}], "
                         f"got {value!r}")
    return float(value)


def _check_staleness(kind: str) -> None:
    if kind not in STALENESS:
        raise ValueError(f"staleness must be one of {STALENESS}, got {kind!r}")


@CLOCK_MODES.register("fedasync", "FedAsync: mix every arriving model in at once, "
                      "x <- (1 - a s(tau)) x + a s(tau) x_i")
@dataclass(frozen=True)
class FedAsync:
    """FedAsync (Xie, Koyejo and Gupta, 2019): on each arrival ``x <- (1 - a_t) x + a_t x_i``,
    ``a_t = alpha s(tau)``; every arrival is a new version. Over a window's arrivals in order,
    ``x_m = prod_k (1 - a_k) x_0 + sum_k a_k prod_{j > k} (1 - a_j) x_k``."""

    alpha: float = 0.6
    staleness: str = "polynomial"
    a: float = 0.5
    b: int = 4
    trigger: ClassVar[str] = "arrival"

    def __post_init__(self) -> None:
        _check("fedasync: alpha", self.alpha, 0.0, 1.0)
        _check_staleness(self.staleness)

    def aggregate(self, state: dict[str, Any], arrivals: Arrivals) -> tuple[dict, Tensor]:
        m = len(arrivals)
        stale = state["version"] + torch.arange(m) - arrivals.start_versions
        mix = self.alpha * staleness_weight(self.staleness, stale, self.a, self.b)
        keep = 1.0 - mix
        after = torch.cat([torch.flip(torch.cumprod(torch.flip(keep[1:], [0]), 0), [0]),
                           torch.ones(1, dtype=keep.dtype)])  # prod_{j > k} (1 - a_j)
        params = state["params"]
        new = (torch.prod(keep) * params.double()
               + (mix * after) @ arrivals.models.double()).to(params.dtype)
        return {**state, "params": new, "version": state["version"] + m}, stale


@CLOCK_MODES.register("async", "asynchronous FedAvg (Fraboni et al.): x <- x + lr d_i delta_i "
                      "on every arrival")
@dataclass(frozen=True)
class AsyncFedAvg:
    """Asynchronous FedAvg as Fraboni et al. (JMLR 2023) write it: every arrival is a server
    step ``x <- x + server_lr d_i (x_i - x_sent_i)`` against the client's own start, with
    ``d_i = 1`` (``weights="identical"``) or ``d_i = (sum_j 1 / tau_j) tau_i p_i``
    (``"weight"``: the slow clients, which return less often, weigh more). The clients'
    expected task times ``tau_j`` are bound by the runner (:meth:`bind`)."""

    server_lr: float = 1.0
    weights: str = "weight"
    inverse_time_sum: float | None = None
    trigger: ClassVar[str] = "arrival"

    def __post_init__(self) -> None:
        _check("async: server_lr", self.server_lr, 0.0)
        if self.weights not in ("weight", "identical"):
            raise ValueError(f"async: weights must be 'weight' or 'identical', got "
                             f"{self.weights!r}")

    def bind(self, expected_task_seconds: Tensor) -> AsyncFedAvg:
        from dataclasses import replace

        return replace(self, inverse_time_sum=float((1.0 / expected_task_seconds).sum()))

    def aggregate(self, state: dict[str, Any], arrivals: Arrivals) -> tuple[dict, Tensor]:
        m = len(arrivals)
        stale = state["version"] + torch.arange(m) - arrivals.start_versions
        if self.weights == "identical":
            d = torch.ones(m, dtype=torch.float64)
        else:
            if self.inverse_time_sum is None:
                raise ValueError("async with weights='weight' needs the clients' task times: "
                                 "run it through ClockedFederation, which binds them")
            d = self.inverse_time_sum * arrivals.task_seconds * arrivals.weights
        params = state["params"]
        new = (params.double() + self.server_lr * d @ arrivals.deltas.double()).to(params.dtype)
        return {**state, "params": new, "version": state["version"] + m}, stale


@CLOCK_MODES.register("fedbuff", "FedBuff: sum K staleness-weighted updates, then "
                      "x <- x + lr sum / K")
@dataclass(frozen=True)
class FedBuff:
    """FedBuff (Nguyen et al., AISTATS 2022): the server adds ``s(tau) delta_i`` to a buffer and,
    once it holds ``K`` updates, steps ``x <- x + server_lr buffer / K`` (a new version).
    Updates staler than ``max_staleness`` are dropped: they are logged with their staleness
    and change nothing."""

    K: int = 10
    server_lr: float = 1.0
    staleness: str = "sqrt"
    a: float = 0.5
    max_staleness: int | None = None
    trigger: ClassVar[str] = "arrival"

    def __post_init__(self) -> None:
        if isinstance(self.K, bool) or not isinstance(self.K, int) or self.K < 1:
            raise ValueError(f"fedbuff: K must be an integer >= 1, got {self.K!r}")
        _check("fedbuff: server_lr", self.server_lr, 0.0)
        _check_staleness(self.staleness)
        if self.max_staleness is not None and (isinstance(self.max_staleness, bool) or not
                                               isinstance(self.max_staleness, int)
                                               or self.max_staleness < 0):
            raise ValueError(f"fedbuff: max_staleness must be an integer >= 0 or none, got "
                             f"{self.max_staleness!r}")

    def aggregate(self, state: dict[str, Any], arrivals: Arrivals) -> tuple[dict, Tensor]:
        params, version = state["params"], state["version"]
        buffer = state.get("buffer", torch.zeros_like(params, dtype=torch.float64))
        count = state.get("count", 0)
        stale = torch.zeros(len(arrivals), dtype=torch.int64)
        rest = torch.arange(len(arrivals))
        while len(rest):  # one pass per buffer flush: staleness is fixed between flushes
            tau = version - arrivals.start_versions[rest]
            stale[rest] = tau
            ok = (tau <= self.max_staleness if self.max_staleness is not None
                  else torch.ones_like(tau, dtype=torch.bool))
            room = self.K - count
            position = torch.cumsum(ok.to(torch.int64), 0)  # among the accepted, from 1
            taken = ok & (position <= room)
            weights = staleness_weight(self.staleness, tau[taken], self.a)
            buffer = buffer + weights @ arrivals.deltas[rest[taken]].double()
            count += int(taken.sum())
            if count < self.K:
                break
            params = (params.double() + self.server_lr * buffer / self.K).to(params.dtype)
            buffer, count, version = torch.zeros_like(buffer), 0, version + 1
            rest = rest[position > room]  # what arrives after the flush meets the new version
        return {**state, "params": params, "version": version, "buffer": buffer,
                "count": count}, stale


@CLOCK_MODES.register("fedfix", "FedFix: every dt, x <- x + lr sum ceil(tau_i / dt) p_i delta_i "
                      "over the clients that returned")
@dataclass(frozen=True)
class FedFix:
    """FedFix (Fraboni, Vidal, Kameni and Lorenzi, JMLR 2023; spec ``federated.md`` 4): the
    server aggregates at fixed times ``n dt`` whatever returned since the last one,
    ``x <- x + server_lr sum_i d_i (x_i - x_sent_i)`` with ``d_i = ceil(tau_i / dt) p_i``
    (slow clients, which return less often, weigh more), and the returned clients restart from
    the new model at the aggregation time."""

    dt: float = 1.0
    server_lr: float = 1.0
    trigger: ClassVar[str] = "tick"

    def __post_init__(self) -> None:
        _check("fedfix: dt", self.dt, 0.0)
        _check("fedfix: server_lr", self.server_lr, 0.0)

    def aggregate(self, state: dict[str, Any], arrivals: Arrivals) -> tuple[dict, Tensor]:
        stale = state["version"] - arrivals.start_versions
        if not len(arrivals):
            return state, stale
        d = torch.ceil(arrivals.task_seconds / self.dt - 1e-9) * arrivals.weights
        params = state["params"]
        new = (params.double() + self.server_lr * d @ arrivals.deltas.double()).to(params.dtype)
        return {**state, "params": new, "version": state["version"] + 1}, stale


@CLOCK_MODES.register("sync", "synchronous FedAvg: each round selects ceil(over k) clients and "
                      "averages the first k to finish before the deadline")
@dataclass(frozen=True)
class Synchronous:
    """Synchronous FedAvg on the clock, FedScale's way: each round selects
    ``ceil(over_selection * clients)`` online clients, waits for the first ``clients`` to
    return, at most ``deadline`` seconds, and replaces the model by the weighted mean of what
    they sent, ``x <- x + server_lr sum_i p_i delta_i / sum_i p_i``. The others' work is lost.
    ``clients=None``: every online client, no over-selection."""

    clients: int | None = None
    over_selection: float = 1.0
    deadline: float = math.inf
    server_lr: float = 1.0
    trigger: ClassVar[str] = "round"

    def __post_init__(self) -> None:
        if self.clients is not None and (isinstance(self.clients, bool) or not isinstance(
                self.clients, int) or self.clients < 1):
            raise ValueError(f"sync: clients must be an integer >= 1 or none, got "
                             f"{self.clients!r}")
        _check("sync: over_selection", self.over_selection, 1.0, closed=True)
        _check("sync: deadline", self.deadline, 0.0)
        _check("sync: server_lr", self.server_lr, 0.0)

    def aggregate(self, state: dict[str, Any], arrivals: Arrivals) -> tuple[dict, Tensor]:
        stale = state["version"] - arrivals.start_versions
        if not len(arrivals):
            return state, stale
        p = arrivals.weights.double() / arrivals.weights.double().sum()
        params = state["params"]
        new = (params.double() + self.server_lr * p @ arrivals.deltas.double()).to(params.dtype)
        return {**state, "params": new, "version": state["version"] + 1}, stale


def make_mode(spec: Any) -> Any:
    """A clock mode from a name, ``{"name": ..., **params}`` or a mode itself."""
    if isinstance(spec, str):
        return CLOCK_MODES.get(spec)()
    if isinstance(spec, dict):
        params = dict(spec)
        name = params.pop("name", None)
        if name is None:
            raise ValueError(f"a clock mode needs a name ({', '.join(CLOCK_MODES.names())}), "
                             f"got {spec!r}")
        try:
            return CLOCK_MODES.get(name)(**params)
        except TypeError as error:
            raise ValueError(f"clock mode {name!r}: {error}") from None
    if hasattr(spec, "aggregate") and hasattr(spec, "trigger"):
        return spec
    raise ValueError(f"a clock mode is a name, a dict or a rule with aggregate and trigger, got "
                     f"{spec!r}")


__all__ = ["Arrivals", "AsyncFedAvg", "CLOCK_MODES", "FedAsync", "FedBuff", "FedFix", "STALENESS",
           "Synchronous", "make_mode", "staleness_weight"]
