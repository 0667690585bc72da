"""A model that is one parameter vector: the point a benchmark objective is evaluated at.

Derivative-free optimizers such as consensus-based optimization (``murmura.algorithms.cbo``)
treat every node as a particle ``x_i ∈ R^dim``. :class:`Vector` holds that point as its only
parameter, ``x``; its forward pass ignores the samples and returns the point once per sample
(``[batch, dim]``), which the objective tasks (``murmura.tasks.objectives``) read.
``reset_parameters`` draws ``x ~ N(mean, std² I)`` from torch's global generator, so with
``same_init=False`` the engine gives every particle its own draw (seeded by (seed, node)).

>>> import torch
>>> from murmura.models import build_model
>>> model = build_model("vector", input_shape=(64,), num_classes=10, dim=3, mean=[8.0, 8.0, 0.0],
...                     std=0.0)
>>> model(torch.zeros(2, 64)).tolist()
[[8.0, 8.0, 0.0], [8.0, 8.0, 0.0]]
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn

from murmura.models import MODELS


class Vector(nn.Module):
    """One point ``x ∈ R^dim`` (the parameter ``x``), drawn from ``N(mean, std² I)``."""

    def __init__(self, dim: int, mean: float | Sequence[float] = 0.0, std: float = 1.0) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1:
            raise ValueError(f"vector: dim must be a positive integer, got {dim!r}")
        if isinstance(mean, numbers.Real) and not isinstance(mean, bool):
            centre = torch.full((int(dim),), float(mean))
        else:
            try:
                centre = torch.tensor([float(m) for m in mean])
            except (TypeError, ValueError):
                raise ValueError(
                    f"vector: mean must be a number or a list of {dim} numbers, got {mean!r}"
                ) from None
            if centre.shape != (int(dim),):
                raise ValueError(
                    f"vector: mean has {centre.numel()} entries but dim={dim}; give one number "
                    f"or exactly {dim}"
                )
        if not torch.isfinite(centre).all():
            raise ValueError(f"vector: mean must be finite, got {mean!r}")
        if (isinstance(std, bool) or not isinstance(std, numbers.Real) or not math.isfinite(std)
                or std < 0):
            raise ValueError(f"vector: std must be a finite number >= 0, got {std!r}")
        self.centre = centre  # a plain tensor, not a buffer: only the initial draw reads it
        self.std = float(std)
        self.x = nn.Parameter(torch.empty(int(dim)))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        self.x.copy_(self.centre + self.std * torch.randn(self.x.shape))

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        return self.x.expand(samples.shape[0], self.x.shape[0])


@MODELS.register("vector", "one parameter vector x ~ N(mean, std²) of size dim (a particle for "
                 "benchmark objectives); ignores its input")
def vector(input_shape: Sequence[int], num_classes: int, dim: int = 2,
           mean: float | Sequence[float] = 0.0, std: float = 1.0) -> nn.Module:
    return Vector(dim, mean, std)
