"""Links: latency and bandwidth, and how long a message of ``nbytes`` takes to arrive.

``transfer_time(src, dst, nbytes) = latency(src, dst) + nbytes / min(up(src), down(dst))``: the
message crosses the sender's uplink and the receiver's downlink, and the slower of the two sets
the rate. There is no congestion model: concurrent transfers do not share bandwidth (as in
FedScale, whose communication time is size / bandwidth). The server is node ``-1``
(:data:`murmura.clock.SERVER`), with infinite bandwidth and zero access latency unless
``server_up``, ``server_down`` and ``server_latency`` say otherwise.

Each of ``latency``, ``up`` and ``down`` is a :class:`LinkDraw`, by name in :data:`LINK_MODELS`:

* ``constant``: one value (``per="link"``: every link; ``per="node"``: every node's access);
* ``lognormal``: ``exp(mu + sigma z)`` fixed per node (default) or per link (an unordered pair,
  so both directions agree), times an optional mean-one per-transfer jitter;
* ``trace``: one value per node (bandwidth from a converted FedScale device trace).

A per-node latency is an access latency: a link's latency is the sum of both ends' (the
server's is ``server_latency``; a per-link model draws the server's links like any other).
A per-node bandwidth is that node's own uplink (``up``) or downlink (``down``). Units: seconds
and bytes per second.

>>> import torch
>>> from murmura.clock import SERVER, Links
>>> links = Links(latency=0.05, up=1e6, down=4e6)
>>> links.transfer_time(torch.tensor([0, 1]), SERVER, nbytes=1e6).tolist()  # 0.05 + 1 MB / 1 MB/s
[1.05, 1.05]
>>> links.transfer_time(SERVER, torch.tensor([0]), nbytes=1e6).tolist()  # downlink: 4 MB/s
[0.3]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from murmura.clock._checks import SERVER, as_nodes, build, positive
from murmura.clock.draws import NodeCache, keyed_normal, pair_key
from murmura.registry import Registry

__all__ = ["LINK_MODELS", "ConstantDraw", "LinkDraw", "Links", "LognormalDraw", "TraceDraw",
           "make_links"]

LINK_MODELS: Registry = Registry("link model")

_PER = ("node", "link")


def _check_per(per: str) -> str:
    if per not in _PER:
        raise ValueError(f"per must be 'node' (one value per node's access link) or 'link' "
                         f"(one per pair of nodes), got {per!r}")
    return per


class LinkDraw:
    """One link quantity (a latency or a bandwidth); ``per`` says what a value belongs to."""

    per: str = "node"

    def node_values(self, seed: int, stream: str, nodes: torch.Tensor) -> torch.Tensor:
        """The fixed value of each node (``per="node"``)."""
        raise NotImplementedError

    def link_values(self, seed: int, stream: str, a: torch.Tensor, b: torch.Tensor
                    ) -> torch.Tensor:
        """The fixed value of each unordered pair ``(a, b)`` (``per="link"``)."""
        raise NotImplementedError

    def transfer_factor(self, seed: int, stream: str, src: torch.Tensor, dst: torch.Tensor,
                        counter: torch.Tensor) -> torch.Tensor | None:
        """A mean-one factor per transfer, or ``None`` (no jitter)."""
        return None

    def check(self, name: str, *, allow_zero: bool, allow_inf: bool) -> None:
        """Raise a ValueError when this draw cannot produce valid values for ``name``."""


@dataclass(frozen=True)
class ConstantDraw(LinkDraw):
    """The same value for every node or link."""

    value: float
    per: str = "link"

    def __post_init__(self) -> None:
        _check_per(self.per)

    def node_values(self, seed: int, stream: str, nodes: torch.Tensor) -> torch.Tensor:
        return torch.full(nodes.shape, float(self.value), dtype=torch.float64)

    def link_values(self, seed: int, stream: str, a: torch.Tensor, b: torch.Tensor
                    ) -> torch.Tensor:
        return torch.full(torch.broadcast_shapes(a.shape, b.shape), float(self.value),
                          dtype=torch.float64)

    def check(self, name: str, *, allow_zero: bool, allow_inf: bool) -> None:
        positive(self.value, name, allow_zero=allow_zero, allow_inf=allow_inf)


@dataclass(frozen=True, eq=False)
class LognormalDraw(LinkDraw):
    """``exp(mu + sigma z)`` fixed per node or per link, times ``exp(jitter w - jitter^2/2)``
    drawn per transfer when ``jitter > 0``."""

    mu: float
    sigma: float = 0.5
    per: str = "node"
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if not math.isfinite(float(self.mu)):
            raise ValueError(f"mu must be finite (log of the quantity), got {self.mu!r}")
        positive(self.sigma, "sigma", allow_zero=True)
        positive(self.jitter, "jitter", allow_zero=True)
        _check_per(self.per)
        object.__setattr__(self, "_caches", {})

    def _cached(self, seed: int, stream: str, nodes: torch.Tensor, server: bool = False
                ) -> torch.Tensor:
        """Values fixed per node id (``server``: of the link between the server and that
        node), computed once per (seed, stream) for all ids seen and gathered after."""
        key = (seed, stream, server)
        cache = self._caches.get(key)
        if cache is None:
            def values(ids: torch.Tensor) -> torch.Tensor:
                if server:
                    return self._pair_values(seed, stream, torch.full_like(ids, SERVER), ids)
                return torch.exp(self.mu + self.sigma * keyed_normal(seed, stream, ids))

            cache = self._caches[key] = NodeCache(values)
        return cache(nodes)

    def node_values(self, seed: int, stream: str, nodes: torch.Tensor) -> torch.Tensor:
        return self._cached(seed, stream, nodes)

    def link_values(self, seed: int, stream: str, a: torch.Tensor, b: torch.Tensor
                    ) -> torch.Tensor:
        a, b = torch.broadcast_tensors(a, b)
        lo, hi = torch.minimum(a, b), torch.maximum(a, b)
        if lo.numel() and bool((lo == SERVER).all()) and bool((hi >= 0).all()):
            return self._cached(seed, stream, hi, server=True)  # client-server links: cached
        return self._pair_values(seed, stream, lo, hi)

    def _pair_values(self, seed: int, stream: str, lo: torch.Tensor, hi: torch.Tensor
                     ) -> torch.Tensor:
        z = keyed_normal(seed, stream + ".link", pair_key(lo, hi))
        return torch.exp(self.mu + self.sigma * z)

    def transfer_factor(self, seed: int, stream: str, src: torch.Tensor, dst: torch.Tensor,
                        counter: torch.Tensor) -> torch.Tensor | None:
        if self.jitter == 0:
            return None
        w = keyed_normal(seed, stream + ".jitter", pair_key(src, dst), counter)
        return torch.exp(self.jitter * w - 0.5 * self.jitter**2)


@dataclass(frozen=True, eq=False)
class TraceDraw(LinkDraw):
    """One value per node, listed (node ``i`` takes ``values[i]``)."""

    values: torch.Tensor
    per: str = "node"

    def __post_init__(self) -> None:
        v = torch.as_tensor(self.values, dtype=torch.float64).reshape(-1)
        if v.numel() == 0 or bool(torch.isnan(v).any()):
            raise ValueError("a trace link model needs one number per node (no NaN)")
        if self.per != "node":
            raise ValueError("a trace link model lists values per node; use per='node'")
        object.__setattr__(self, "values", v)

    def node_values(self, seed: int, stream: str, nodes: torch.Tensor) -> torch.Tensor:
        if nodes.numel() and int(nodes.max()) >= self.values.numel():
            raise ValueError(f"node {int(nodes.max())} has no entry in the link trace (length "
                             f"{self.values.numel()}); give one value per node")
        return self.values[nodes]

    def check(self, name: str, *, allow_zero: bool, allow_inf: bool) -> None:
        v = self.values
        bad = (v < 0) | ((v == 0) & (not allow_zero)) | (torch.isinf(v) & (not allow_inf))
        if bool(bad.any()):
            raise ValueError(f"{name} trace values must be {'>= 0' if allow_zero else '> 0'}, "
                             f"got {float(v[bad][0])}")


@LINK_MODELS.register("constant", "one value for every link (or every node's access link)")
def _constant(value: float, per: str = "link") -> ConstantDraw:
    return ConstantDraw(value, per)


@LINK_MODELS.register("lognormal", "lognormal, fixed per node or per link, optional jitter")
def _lognormal(mu: float, sigma: float = 0.5, per: str = "node",
               jitter: float = 0.0) -> LognormalDraw:
    return LognormalDraw(mu, sigma, per, jitter)


@LINK_MODELS.register("trace", "one value per node: listed, or bandwidth from a device trace")
def _trace(values: Sequence[float] | None = None, path: str | None = None,
           num_nodes: int | None = None) -> TraceDraw:
    if (values is None) == (path is None):
        raise ValueError("link model 'trace' needs exactly one of values (one per node) or path "
                         "(a device-trace JSON from convert_fedscale, for bandwidth)")
    if values is not None:
        return TraceDraw(torch.as_tensor(values, dtype=torch.float64))
    if num_nodes is None:
        raise ValueError("link model 'trace' from a path needs num_nodes")
    from murmura.clock.traces import load_device_trace

    trace = load_device_trace(path)
    return TraceDraw(trace.bandwidth_bytes_per_s[torch.arange(int(num_nodes)) % len(trace)])


def make_draw(spec: Any, name: str, num_nodes: int | None = None) -> LinkDraw:
    """A :class:`LinkDraw` from a number (a constant), a name, a dict or a draw."""
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return ConstantDraw(float(spec))
    try:
        return build(LINK_MODELS, spec, LinkDraw, num_nodes=num_nodes)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


@dataclass(frozen=True, eq=False)
class Links:
    """Latency and up/down bandwidth of every link; see the module docstring."""

    latency: LinkDraw | float | Mapping | str = 0.0
    up: LinkDraw | float | Mapping | str = math.inf
    down: LinkDraw | float | Mapping | str = math.inf
    server_latency: float = 0.0
    server_up: float = math.inf
    server_down: float = math.inf
    seed: int = 0

    def __post_init__(self) -> None:
        for name, allow_zero, allow_inf in (("latency", True, False), ("up", False, True),
                                            ("down", False, True)):
            draw = make_draw(getattr(self, name), name)
            draw.check(name, allow_zero=allow_zero, allow_inf=allow_inf)
            object.__setattr__(self, name, draw)
        positive(self.server_latency, "server_latency", allow_zero=True)
        positive(self.server_up, "server_up", allow_inf=True)
        positive(self.server_down, "server_down", allow_inf=True)

    @classmethod
    def from_trace(cls, trace: Any, num_nodes: int, latency: Any = 0.0, seed: int = 0,
                   **server: float) -> Links:
        """Bandwidth from a :class:`murmura.clock.traces.DeviceTrace` (FedScale gives one
        ``communication`` rate per client, used for both directions, as FedScale does); node
        ``i`` takes client ``i mod len(trace)``."""
        if int(num_nodes) < 1:
            raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
        bw = TraceDraw(trace.bandwidth_bytes_per_s[torch.arange(int(num_nodes)) % len(trace)])
        return cls(latency=latency, up=bw, down=bw, seed=seed, **server)

    def _end_values(self, draw: LinkDraw, stream: str, nodes: torch.Tensor,
                    server_value: float) -> torch.Tensor:
        clients = nodes.clamp_min(0)
        values = draw.node_values(self.seed, stream, clients)
        return torch.where(nodes == SERVER, torch.tensor(server_value, dtype=torch.float64),
                           values)

    def latency_between(self, src: torch.Tensor | int, dst: torch.Tensor | int,
                        counter: torch.Tensor | int = 0) -> torch.Tensor:
        """One-way latency in seconds of each ``src -> dst`` transfer (broadcast)."""
        return self._latency(*_broadcast(src, dst, counter))

    def bandwidth(self, src: torch.Tensor | int, dst: torch.Tensor | int,
                  counter: torch.Tensor | int = 0) -> torch.Tensor:
        """Bytes per second of each ``src -> dst`` transfer: ``min(up(src), down(dst))``."""
        return self._bandwidth(*_broadcast(src, dst, counter))

    def transfer_time(self, src: torch.Tensor | int, dst: torch.Tensor | int,
                      nbytes: torch.Tensor | float, counter: torch.Tensor | int = 0
                      ) -> torch.Tensor:
        """Seconds for ``nbytes`` to go from ``src`` to ``dst``: latency + bytes / bottleneck.
        ``counter`` is the sender's transfer index (keys any per-transfer jitter)."""
        size = torch.as_tensor(nbytes, dtype=torch.float64)
        if size.numel() and (bool(torch.isnan(size).any()) or bool((size < 0).any())
                             or bool(torch.isinf(size).any())):
            raise ValueError("nbytes must be finite and >= 0 (the bytes actually sent)")
        src, dst, counter = _broadcast(src, dst, counter)
        latency = self._latency(src, dst, counter)
        if size.dim() == 0 and float(size) == 0.0:
            return latency
        rate = self._bandwidth(src, dst, counter)
        # 0 bytes take no time even on a zero-rate link; x / inf is 0.
        return latency + torch.where(size > 0, size / rate, torch.zeros((), dtype=torch.float64))

    def _latency(self, src: torch.Tensor, dst: torch.Tensor, counter: torch.Tensor
                 ) -> torch.Tensor:
        draw = self.latency
        assert isinstance(draw, LinkDraw)
        if draw.per == "link":
            value = draw.link_values(self.seed, "clock.latency", src, dst)
        else:
            value = (self._end_values(draw, "clock.latency", src, self.server_latency)
                     + self._end_values(draw, "clock.latency", dst, self.server_latency))
        jitter = draw.transfer_factor(self.seed, "clock.latency", src, dst, counter)
        return value if jitter is None else value * jitter

    def _bandwidth(self, src: torch.Tensor, dst: torch.Tensor, counter: torch.Tensor
                   ) -> torch.Tensor:
        rates = []
        for draw, owner, stream, server_value in (
            (self.up, src, "clock.up", self.server_up),
            (self.down, dst, "clock.down", self.server_down),
        ):
            assert isinstance(draw, LinkDraw)
            if draw.per == "link":
                v = draw.link_values(self.seed, stream, src, dst)
                v = torch.where(owner == SERVER, torch.tensor(server_value, dtype=v.dtype), v)
            else:
                v = self._end_values(draw, stream, owner, server_value)
            jitter = draw.transfer_factor(self.seed, stream, src, dst, counter)
            rates.append(v if jitter is None else v * jitter)
        return torch.minimum(rates[0], rates[1])


def _broadcast(src: Any, dst: Any, counter: Any) -> tuple[torch.Tensor, ...]:
    s = as_nodes(src, "src")
    d = as_nodes(dst, "dst")
    c = torch.as_tensor(counter)
    if c.dtype.is_floating_point or (c.numel() and int(c.min()) < 0):
        raise ValueError("counter must be non-negative integers (the transfer's index)")
    return torch.broadcast_tensors(s, d, c.to(torch.int64))


def make_links(spec: Any = None, seed: int = 0, num_nodes: int | None = None) -> Links:
    """Links from ``None`` (instant links), a :class:`Links`, or a dict with keys ``latency``,
    ``up``, ``down`` (or ``bandwidth`` for both), ``server_latency``, ``server_up``,
    ``server_down``; each link value is a number, a name or ``{"name": ..., ...}``."""
    if spec is None:
        return Links(seed=seed)
    if isinstance(spec, Links):
        return spec
    if not isinstance(spec, Mapping):
        raise ValueError(f"links must be a dict of latency/up/down/bandwidth or a Links, got "
                         f"{spec!r}")
    params = dict(spec)
    allowed = {"latency", "up", "down", "bandwidth", "server_latency", "server_up",
               "server_down", "seed"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(f"links has no parameter(s) {', '.join(unknown)}; accepted: "
                         f"{', '.join(sorted(allowed))}")
    if "bandwidth" in params:
        if "up" in params or "down" in params:
            raise ValueError("links: give bandwidth (both directions) or up/down, not both")
        params["up"] = params["down"] = params.pop("bandwidth")
    for key in ("latency", "up", "down"):
        if key in params:
            params[key] = make_draw(params[key], key, num_nodes)
    params.setdefault("seed", seed)
    return Links(**params)
