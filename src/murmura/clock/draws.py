"""The clock's keyed draws: every number is a hash of ``(seed, purpose, node, counter, ...)``
through :func:`murmura.swarm.random.hash_keys`, so it never depends on the batch, the order of
the calls or the process that computes it.

Two economies keep the per-event cost down, since a window of a few events is dominated by the
number of tensor operations, not their size: ``(seed, purpose)`` is hashed once, in Python,
into one key (:func:`purpose_key`); and a normal draw takes both Box-Muller uniforms from the
two 32-bit halves of one hash (so ``|z| < 6.67``: tails past that are cut, irrelevant for
device speeds and latencies). Values fixed per node (a device's speed factor) are computed
once for every node id up to the largest seen and gathered afterwards (:class:`NodeCache`).

>>> import torch
>>> from murmura.clock.draws import keyed_normal
>>> nodes = torch.arange(6)
>>> a = keyed_normal(0, "speed", nodes, 3)
>>> bool(torch.equal(a[4:], keyed_normal(0, "speed", nodes[4:], 3)))
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

import torch

from murmura.swarm.random import hash_keys, stream_id

__all__ = ["NodeCache", "keyed_bits", "keyed_exponential", "keyed_normal", "keyed_uniform",
           "pair_key", "purpose_key"]

_LOW32 = (1 << 32) - 1
_LOW53 = (1 << 53) - 1


@lru_cache(maxsize=4096)
def purpose_key(seed: int, purpose: str) -> int:
    """One 64-bit key for ``(seed, purpose)``, computed once per pair."""
    return int(hash_keys(int(seed), stream_id(purpose)).item())


def keyed_bits(seed: int, purpose: str, *keys: torch.Tensor | int) -> torch.Tensor:
    """64 random bits per element of the broadcast ``keys`` (int64)."""
    return hash_keys(purpose_key(seed, purpose), *keys)


def keyed_uniform(seed: int, purpose: str, *keys: torch.Tensor | int) -> torch.Tensor:
    """Uniform float64 in [0, 1) with 53 random bits."""
    h = keyed_bits(seed, purpose, *keys)
    return ((h >> 11) & _LOW53).to(torch.float64) * 2.0**-53


def keyed_normal(seed: int, purpose: str, *keys: torch.Tensor | int) -> torch.Tensor:
    """Standard normal float64 (Box-Muller on the two 32-bit halves of one hash)."""
    h = keyed_bits(seed, purpose, *keys)
    u1 = ((h >> 32) & _LOW32).to(torch.float64) * 2.0**-32
    u2 = (h & _LOW32).to(torch.float64) * 2.0**-32
    return torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos((2.0 * math.pi) * u2)


def keyed_exponential(seed: int, purpose: str, *keys: torch.Tensor | int,
                      rate: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Exponential float64 with the given rate: the gap to a Poisson clock's next tick (a
    gossip wake-up, DADAO's gradient and communication processes), keyed by the node (or
    edge) and its tick counter."""
    rate_t = torch.as_tensor(rate, dtype=torch.float64)
    if rate_t.numel() and bool((rate_t <= 0).any() | torch.isnan(rate_t).any()):
        raise ValueError("rate must be > 0 (ticks per simulated second)")
    return -torch.log1p(-keyed_uniform(seed, purpose, *keys)) / rate_t


def pair_key(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """One int64 key per ordered pair of node ids (``-1`` included; ids below ``2**30``)."""
    return (a + 1) * (1 << 32) + (b + 1)


class NodeCache:
    """``fn(nodes)`` for values fixed per node, computed once for ids ``0..max`` seen so far
    (in one batch, which gives the same numbers as any other batch) and gathered after."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.fn = fn
        self.values: torch.Tensor | None = None

    def __call__(self, nodes: torch.Tensor) -> torch.Tensor:
        have = 0 if self.values is None else self.values.numel()
        need = int(nodes.max()) + 1 if nodes.numel() else 0
        if need > have:
            size = max(need, 2 * have, 64)
            fresh = self.fn(torch.arange(have, size))
            self.values = fresh if self.values is None else torch.cat([self.values, fresh])
        if self.values is None:
            return self.fn(nodes)
        return self.values[nodes]
