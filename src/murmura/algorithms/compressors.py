"""Compressors: ``compress(v[d], key) -> v̂[d]`` for ONE node's vector, given back densely (the
receiver's decoded view), and ``nbytes(d)``, the size of what is actually sent.

>>> import torch
>>> v = torch.tensor([0.5, -3.0, 0.1, 2.0])
>>> TopK(ratio=0.5)(v, torch.tensor(0)).tolist(), TopK(ratio=0.5).nbytes(4)
([0.0, -3.0, 0.0, 2.0], 16)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from murmura.registry import Registry, build_component
from murmura.swarm.random import key_uniform

Tensor = torch.Tensor

COMPRESSORS: Registry = Registry("compressor")


def _check_ratio(name: str, ratio: float) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ValueError(f"{name}: ratio must lie in (0, 1] (the fraction kept), got {ratio!r}")


@COMPRESSORS.register("identity", "no compression: the dense fp32 vector")
@dataclass(frozen=True)
class Identity:
    def __call__(self, v: Tensor, key: Tensor) -> Tensor:
        return v

    def nbytes(self, dim: int) -> int:
        return 4 * dim


@COMPRESSORS.register("top_k", "the largest ratio x d entries: fp32 values, int32 indices")
@dataclass(frozen=True)
class TopK:
    ratio: float = 0.01

    def __post_init__(self) -> None:
        _check_ratio("top_k", self.ratio)

    def kept(self, dim: int) -> int:
        return max(1, math.ceil(self.ratio * dim))

    def __call__(self, v: Tensor, key: Tensor) -> Tensor:
        index = torch.topk(v.abs(), self.kept(v.shape[-1])).indices
        return torch.zeros_like(v).scatter(0, index, v.gather(0, index))

    def nbytes(self, dim: int) -> int:
        # past half the entries, the dense vector (zeros included) is the cheaper message
        return min(8 * self.kept(dim), 4 * dim)


@COMPRESSORS.register("random_k", "ratio x d entries drawn from a key: fp32 values and the seed")
@dataclass(frozen=True)
class RandomK:
    ratio: float = 0.01

    def __post_init__(self) -> None:
        _check_ratio("random_k", self.ratio)

    def kept(self, dim: int) -> int:
        return max(1, math.ceil(self.ratio * dim))

    def __call__(self, v: Tensor, key: Tensor) -> Tensor:
        index = torch.topk(key_uniform(key, v.shape), self.kept(v.shape[-1])).indices
        return torch.zeros_like(v).scatter(0, index, v.gather(0, index))

    def nbytes(self, dim: int) -> int:
        # values and the seed the receiver regenerates the indices from; dense when cheaper
        return min(4 * self.kept(dim) + 8, 4 * dim)


@COMPRESSORS.register("qsgd", "QSGD with s levels, stochastic rounding, rescaled by 1/tau (CHOCO)")
@dataclass(frozen=True)
class QSGD:
    """``Q(v) = ||v|| sign(v) floor(s |v| / ||v|| + u) / (s tau)``, ``u ~ U[0, 1)``, with
    ``tau = 1 + min(d / s², sqrt(d) / s)``: Koloskova et al.'s (2019) scaled QSGD, a contraction.
    Sent: the norm (fp32) and a sign bit plus ``ceil(log2(s + 1))`` bits per entry."""

    levels: int = 16

    def __post_init__(self) -> None:
        if int(self.levels) != self.levels or self.levels < 1:
            raise ValueError(f"qsgd: levels must be a positive integer, got {self.levels!r}")

    def __call__(self, v: Tensor, key: Tensor) -> Tensor:
        s, d = float(self.levels), v.shape[-1]
        tau = 1.0 + min(d / s**2, math.sqrt(d) / s)
        norm = torch.linalg.vector_norm(v)
        scaled = s * v.abs() / norm.clamp_min(1e-30)
        rounded = torch.floor(scaled + key_uniform(key, v.shape))
        return torch.where(norm > 0, norm * torch.sign(v) * rounded / (s * tau),
                           torch.zeros_like(v))

    def nbytes(self, dim: int) -> int:
        bits = 1 + math.ceil(math.log2(self.levels + 1))
        return math.ceil(dim * bits / 8) + 4


@COMPRESSORS.register("int8", "8-bit linear quantization with one fp32 scale per message")
@dataclass(frozen=True)
class Int8:
    def __call__(self, v: Tensor, key: Tensor) -> Tensor:
        scale = v.abs().max().clamp_min(1e-30) / 127.0
        return torch.round(v / scale).clamp(-127, 127) * scale

    def nbytes(self, dim: int) -> int:
        return dim + 4


def make_compressor(spec: str | dict | object | None) -> object:
    """A compressor from a name, ``{"name": ..., **params}``, or a compressor itself."""
    return build_component(COMPRESSORS, spec) or Identity()
