"""Input checks shared by the clock's models: one clear ValueError at the boundary, naming the
parameter and the fix, instead of a traceback from deep inside a tensor expression."""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

import torch

from murmura.registry import Registry

SERVER = -1
"""The server's node id: every client is ``0..n-1``; the server is ``-1`` (infinite bandwidth and
always online unless a model says otherwise)."""


def as_nodes(
    nodes: torch.Tensor | int | list[int],
    name: str = "nodes",
    *,
    allow_server: bool = True,
    num_nodes: int | None = None,
) -> torch.Tensor:
    """Node ids as an int64 tensor, checked: integers, >= 0 (or the server, -1), < num_nodes."""
    t = torch.as_tensor(nodes)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"{name} must be integer node ids, got a {t.dtype} tensor; pass "
                         f"torch.arange(n) or a LongTensor")
    t = t.to(torch.int64)
    if t.numel():
        low = SERVER if allow_server else 0
        if int(t.min()) < low:
            who = "0..n-1 or the server (-1)" if allow_server else "0..n-1 (no server here)"
            raise ValueError(f"{name} must be node ids in {who}, got {int(t.min())}")
        if num_nodes is not None and int(t.max()) >= num_nodes:
            raise ValueError(f"{name} has id {int(t.max())} but this model covers {num_nodes} "
                             f"nodes (ids 0..{num_nodes - 1}); build it with more nodes")
    return t


def as_times(t: torch.Tensor | float, name: str = "t", *, allow_inf: bool = False) -> torch.Tensor:
    """Simulated seconds as float64, checked: not NaN, >= 0, finite unless ``allow_inf``."""
    out = torch.as_tensor(t, dtype=torch.float64)
    if out.numel():
        if bool(torch.isnan(out).any()):
            raise ValueError(f"{name} contains NaN; times are simulated seconds >= 0")
        if bool((out < 0).any()):
            raise ValueError(f"{name} must be >= 0 (simulated seconds since the start), "
                             f"got {float(out.min())}")
        if not allow_inf and bool(torch.isinf(out).any()):
            raise ValueError(f"{name} must be finite simulated seconds")
    return out


def positive(
    value: float, name: str, *, allow_zero: bool = False, allow_inf: bool = False
) -> float:
    """A scalar parameter > 0 (or >= 0), finite unless ``allow_inf``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(v) or (math.isinf(v) and not allow_inf) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        finite = "" if allow_inf else " and finite"
        raise ValueError(f"{name} must be {bound}{finite}, got {value!r}")
    return v


def probability(value: float, name: str) -> float:
    """A scalar in [0, 1]."""
    v = positive(value, name, allow_zero=True)
    if v > 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return v


def build(registry: Registry, spec: Any, base: type, **context: Any) -> Any:
    """A model from a config value: an instance of ``base`` (returned as is), a name, or
    ``{"name": ..., **params}``. ``context`` (``seed``, ``num_nodes``) fills the factory's
    parameters of those names that the spec leaves out, so a config need not repeat the seed."""
    if isinstance(spec, base):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ValueError(f"a {registry.kind} must be a name, {{'name': ..., ...}} or a "
                         f"{base.__name__}, got {spec!r}")
    factory = registry.get(spec["name"])
    params = {k: v for k, v in spec.items() if k != "name"}
    accepted = inspect.signature(factory).parameters
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"{registry.kind} {spec['name']!r} has no parameter(s) "
                         f"{', '.join(unknown)}; accepted: {', '.join(accepted) or 'none'}")
    for key, value in context.items():
        if key in accepted and key not in params:
            params[key] = value
    return factory(**params)
