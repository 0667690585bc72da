"""ParamSpec: the map between a node's flat parameter row and the model's named tensors."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ParamSpec:
    """Names, shapes and offsets of a model's parameters inside one flat vector of length ``dim``.

    ``views`` turns a row ``[d]`` or a stack ``[n, d]`` into named views (no copy), so per-node
    state lives in one ``[n, d]`` tensor while ``functional_call`` sees ordinary named tensors.

    >>> from torch import nn
    >>> spec = ParamSpec.from_module(nn.Linear(3, 2))
    >>> spec.dim, spec.names
    (8, ('weight', 'bias'))
    >>> X = torch.zeros(5, spec.dim)
    >>> spec.views(X)["weight"].shape
    torch.Size([5, 2, 3])
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    dim: int

    @classmethod
    def from_module(cls, module: nn.Module) -> ParamSpec:
        names, shapes, offsets = [], [], []
        offset = 0
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            names.append(name)
            shapes.append(tuple(p.shape))
            offsets.append(offset)
            offset += p.numel()
        if not names:
            raise ValueError("the model has no trainable parameters")
        return cls(tuple(names), tuple(shapes), tuple(offsets), offset)

    @property
    def numels(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    def slices(self) -> dict[str, slice]:
        return {n: slice(o, o + k) for n, o, k in zip(self.names, self.offsets, self.numels)}

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named views of ``flat`` (``[..., d]``); writing to a view writes to ``flat``."""
        if flat.shape[-1] != self.dim:
            raise ValueError(
                f"expected a tensor whose last dimension is the model size {self.dim}, "
                f"got shape {tuple(flat.shape)}"
            )
        lead = flat.shape[:-1]
        return {
            name: flat[..., o : o + k].view(*lead, *shape)
            for name, shape, o, k in zip(self.names, self.shapes, self.offsets, self.numels)
        }

    def flatten(self, tensors: dict[str, torch.Tensor] | nn.Module) -> torch.Tensor:
        """Concatenate named tensors (or a module's parameters) into one ``[..., d]`` tensor."""
        if isinstance(tensors, nn.Module):
            tensors = dict(tensors.named_parameters())
        missing = [n for n in self.names if n not in tensors]
        if missing:
            raise ValueError(f"missing parameters {missing} for this ParamSpec")
        first = tensors[self.names[0]]
        lead = first.shape[: first.dim() - len(self.shapes[0])]
        return torch.cat(
            [tensors[n].detach().reshape(*lead, -1) for n in self.names], dim=-1
        ).contiguous()
