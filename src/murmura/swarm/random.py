"""Counter-based randomness: every draw is a pure function of (seed, stream, node, counters).

A generator object carries hidden state that depends on the order of the draws, so the same seed
would give different numbers when nodes are chunked, reordered or sharded over processes. Here a
draw is a hash of its coordinates (SplitMix64's finalizer on 64-bit integers, vectorized in torch),
so node 17's minibatch in round 3, step 2 is the same number whichever process computes it, on
CPU or GPU.

>>> import torch
>>> from murmura.swarm.random import uniform
>>> nodes = torch.arange(4)
>>> a = uniform(0, "batch", nodes, 3, 2, size=(5,))
>>> b = uniform(0, "batch", nodes.flip(0), 3, 2, size=(5,)).flip(0)
>>> bool(torch.equal(a, b))
True
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import torch

_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    """A 64-bit pattern as the int64 torch stores."""
    value &= _MASK64
    return value - (1 << 64) if value >= (1 << 63) else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_M1 = _signed(0xBF58476D1CE4E5B9)
_M2 = _signed(0x94D049BB133111EB)


def _shr(z: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (z >> s) & ((1 << (64 - s)) - 1)


def _finalize(z: torch.Tensor) -> torch.Tensor:
    z = (z ^ _shr(z, 30)) * _M1
    z = (z ^ _shr(z, 27)) * _M2
    return z ^ _shr(z, 31)


def stream_id(name: str) -> int:
    """A stable integer for a stream name (Python's ``hash`` is salted per process)."""
    return zlib.crc32(name.encode())


def hash_keys(*keys: torch.Tensor | int, device: torch.device | str | None = None) -> torch.Tensor:
    """Hash broadcastable integer keys into one int64 tensor of 64 random bits."""
    h: torch.Tensor | None = None
    for key in keys:
        k = key if isinstance(key, torch.Tensor) else torch.tensor(_signed(int(key)), device=device)
        k = k.to(torch.int64)
        h = _finalize(k + _GOLDEN) if h is None else _finalize(h ^ (k + _GOLDEN) + _shr(h, 7))
    if h is None:
        raise ValueError("hash_keys needs at least one key")
    return h


def _coordinates(
    seed: int,
    stream: str | int,
    nodes: torch.Tensor,
    counters: Sequence[int | torch.Tensor],
    size: Sequence[int],
) -> torch.Tensor:
    nodes = torch.as_tensor(nodes, dtype=torch.int64)
    extra = (1,) * len(size)
    node_key = nodes.reshape(*nodes.shape, *extra)
    sid = stream_id(stream) if isinstance(stream, str) else int(stream)
    keys: list[torch.Tensor | int] = [seed, sid, node_key]
    for c in counters:
        if isinstance(c, torch.Tensor):
            c = c.reshape(*c.shape, *(1,) * (node_key.dim() - c.dim()))
        keys.append(c)
    count = 1
    for s in size:
        count *= int(s)
    if count > 1 or size:
        index = torch.arange(count, device=nodes.device).reshape(*size) if size else 0
        keys.append(index)
    return hash_keys(*keys, device=nodes.device)


def uniform(
    seed: int,
    stream: str | int,
    nodes: torch.Tensor,
    *counters: int | torch.Tensor,
    size: Sequence[int] = (),
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Uniform draws in [0, 1), shape ``[*nodes.shape, *size]``."""
    h = _coordinates(seed, stream, nodes, counters, size)
    if dtype == torch.float64:
        return _shr(h, 11).to(torch.float64) * (2.0**-53)
    return (_shr(h, 40).to(torch.float32) * (2.0**-24)).to(dtype)


def normal(
    seed: int,
    stream: str | int,
    nodes: torch.Tensor,
    *counters: int | torch.Tensor,
    size: Sequence[int] = (),
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal draws (Box-Muller on two independent hashed uniforms)."""
    sid = stream_id(stream) if isinstance(stream, str) else int(stream)
    u1 = uniform(seed, sid, nodes, *counters, size=size, dtype=torch.float64)
    u2 = uniform(seed, sid ^ 0x5BD1E995, nodes, *counters, size=size, dtype=torch.float64)
    z = torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos(2.0 * torch.pi * u2)
    return z.to(dtype)


def randint(
    seed: int,
    stream: str | int,
    nodes: torch.Tensor,
    *counters: int | torch.Tensor,
    high: torch.Tensor | int,
    size: Sequence[int] = (),
) -> torch.Tensor:
    """Integers uniform in [0, high) (``high`` may differ per node: shape ``nodes.shape``)."""
    u = uniform(seed, stream, nodes, *counters, size=size, dtype=torch.float64)
    if isinstance(high, torch.Tensor):
        high = high.reshape(*high.shape, *(1,) * len(size))
    return torch.floor(u * high).to(torch.int64)


def permute(position: torch.Tensor, size: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Element ``position`` of a random permutation of ``range(size)`` chosen by ``key``.

    A 4-round Feistel network on the smallest even-bit domain that holds ``size``, with cycle
    walking back into range: a bijection, evaluated at any position in O(1) without sorting, so a
    node's shuffled epoch can be read one minibatch at a time. All arguments broadcast.
    """
    position, size, key = torch.broadcast_tensors(
        position.to(torch.int64), size.to(torch.int64), key.to(torch.int64)
    )
    if bool((position >= size).any()) or bool((position < 0).any()):
        raise ValueError("permute: position must lie in [0, size)")
    bits = torch.ceil(torch.log2(size.clamp_min(2).to(torch.float64))).to(torch.int64)
    half = ((bits + 1) // 2).reshape(-1)
    flat_size, flat_key = size.reshape(-1), key.reshape(-1)
    y = _feistel(position.reshape(-1), flat_key, half)
    # Cycle walking: re-encrypt only the values still outside [0, size).
    todo = torch.nonzero(y >= flat_size).flatten()
    while todo.numel():
        walked = _feistel(y[todo], flat_key[todo], half[todo])
        y[todo] = walked
        todo = todo[walked >= flat_size[todo]]
    return y.view(position.shape)


def _feistel(x: torch.Tensor, key: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    mask = (torch.ones_like(half) << half) - 1
    left, right = x >> half, x & mask
    for r in range(4):
        left, right = right, left ^ (hash_keys(key, r, right) & mask)
    return (left << half) | right


def node_keys(seed: int, stream: str, nodes: torch.Tensor, *counters: int) -> torch.Tensor:
    """One 64-bit key per node for a rule's own draws, from (seed, stream, node, counters...):
    int64 ``[len(nodes)]``. A rule gets its node's key as a scalar tensor and draws from it with
    :func:`key_uniform` / :func:`key_normal`."""
    return _coordinates(seed, stream, nodes, counters, ())


def key_uniform(key: torch.Tensor, size: Sequence[int], salt: int = 0) -> torch.Tensor:
    """Uniform float32 draws in [0, 1) of shape ``size`` from one key (works under ``vmap``)."""
    count = math.prod(int(s) for s in size)
    index = torch.arange(count, device=key.device).reshape(*size)
    h = hash_keys(key, salt, index)
    return _shr(h, 40).to(torch.float32) * (2.0**-24)


def key_normal(key: torch.Tensor, size: Sequence[int], salt: int = 0) -> torch.Tensor:
    """Standard normal float32 draws of shape ``size`` from one key (works under ``vmap``)."""
    u1 = key_uniform(key, size, 2 * salt + 1).to(torch.float64)
    u2 = key_uniform(key, size, 2 * salt + 2).to(torch.float64)
    z = torch.sqrt(-2.0 * torch.log1p(-u1)) * torch.cos(2.0 * torch.pi * u2)
    return z.to(torch.float32)
