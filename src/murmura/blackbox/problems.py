"""Federated black-box problems: client ``i`` can only query its own ``f_i(x)``, ``x ∈ R^d``.

A problem answers the queries of all clients at once (:class:`FederatedProblem`): ``query(x)``
takes one batch of points per client, ``[N, ..., d]``, and returns ``[N, ...]`` (client ``i``'s
points go to ``f_i`` only). ``global_value(x) = F(x) = Σ_i w_i f_i(x)`` is the objective the
federation minimizes; the methods never call it (it is what the driver reports, for the
trajectory only).

:class:`Quadratic` is the FZooS paper's synthetic benchmark (Shu, Lin, Dai and Low, arXiv
2308.04077, official code ``funcs/synthetics.py``)::

    f_i(x) = 0.1/d · (c1_iᵀ z² + c2_iᵀ z + 1),    z = 20 · clip(x, 0, 1) − 10 ∈ [−10, 10]^d
    c = 1 + div · (Dir(1/N · 1_N) − 1/N)          one Dirichlet draw per coordinate, for c1 and c2

so each coordinate's coefficients average to exactly 1 over the clients and ``div`` sets how far
the clients' optima spread; ``w_i = 1/N`` and ``x0 ~ U[0, 1]^d``, all drawn from ``seed``.

>>> import torch
>>> p = Quadratic(dim=3, num_clients=2, div=0.5, seed=0)
>>> tuple(p.query(p.x0.expand(2, 3)).shape), float(p.global_value(p.x0)) > p.minimum()
((2,), True)
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch

Tensor = torch.Tensor


@runtime_checkable
class FederatedProblem(Protocol):
    """What a federated black-box method sees of a problem (plus ``global_value`` for the
    report). ``weights`` ``[N]`` sum to 1; ``x0`` ``[d]`` is the default starting point."""

    dim: int
    num_clients: int
    weights: Tensor
    x0: Tensor

    def query(self, x: Tensor) -> Tensor:
        """``f_i`` at client ``i``'s points: ``x`` ``[N, ..., d]`` -> ``[N, ...]``."""
        ...

    def global_value(self, x: Tensor) -> Tensor:
        """``F(x) = Σ_i w_i f_i(x)`` for reporting: ``x`` ``[..., d]`` -> ``[...]``."""
        ...


def check_points(x: Tensor, num_clients: int, dim: int) -> Tensor:
    """``x`` as float64 ``[N, ..., d]``, or a ValueError naming the expected shape."""
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] != num_clients or x.shape[-1] != dim:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"query: x must be a tensor [num_clients={num_clients}, ..., dim={dim}]"
                         f" (one batch of points per client), got {shape}")
    return x.to(torch.float64)


class Quadratic:
    """The paper's heterogeneous quadratic (module docstring): ``dim``, ``num_clients`` (N),
    ``div`` (heterogeneity, ≥ 0) and ``seed`` (the coefficients and ``x0``)."""

    def __init__(self, dim: int = 300, num_clients: int = 5, div: float = 1.0,
                 seed: int = 0) -> None:
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"Quadratic: dim must be a positive integer, got {dim!r}")
        if not isinstance(num_clients, int) or num_clients < 1:
            raise ValueError(f"Quadratic: num_clients must be a positive integer, got "
                             f"{num_clients!r}")
        if not div >= 0:
            raise ValueError(f"Quadratic: div must be ≥ 0 (0: identical clients), got {div!r}")
        rng = np.random.default_rng([int(seed), 308_04077])
        alpha = np.full(num_clients, 1.0 / num_clients)
        c1 = 1.0 + div * (rng.dirichlet(alpha, size=dim) - 1.0 / num_clients)  # [d, N]
        c2 = 1.0 + div * (rng.dirichlet(alpha, size=dim) - 1.0 / num_clients)
        self.dim, self.num_clients, self.div = dim, num_clients, float(div)
        self.c1 = torch.as_tensor(c1.T.copy())  # [N, d]
        self.c2 = torch.as_tensor(c2.T.copy())
        self.weights = torch.full((num_clients,), 1.0 / num_clients, dtype=torch.float64)
        self.x0 = torch.as_tensor(rng.uniform(0.0, 1.0, size=dim))

    @staticmethod
    def project(x: Tensor) -> Tensor:
        """``z = 20 · clip(x, 0, 1) − 10``: the code's map of the unit box onto [−10, 10]."""
        return 20.0 * x.clamp(0.0, 1.0) - 10.0

    def _value(self, z: Tensor, c1: Tensor, c2: Tensor) -> Tensor:
        return 0.1 / self.dim * ((c1 * z * z).sum(-1) + (c2 * z).sum(-1) + 1.0)

    def query(self, x: Tensor) -> Tensor:
        x = check_points(x, self.num_clients, self.dim)
        extra = (1,) * (x.dim() - 2)
        c1 = self.c1.reshape(self.num_clients, *extra, self.dim)
        c2 = self.c2.reshape(self.num_clients, *extra, self.dim)
        return self._value(self.project(x), c1, c2)

    def global_value(self, x: Tensor) -> Tensor:
        x = torch.as_tensor(x, dtype=torch.float64)
        if x.shape[-1] != self.dim:
            raise ValueError(f"global_value: x must end in dim={self.dim}, got {tuple(x.shape)}")
        return self._value(self.project(x), self.weights @ self.c1, self.weights @ self.c2)

    def minimum(self) -> float:
        """``min F`` over the box (separable: each coordinate's parabola, clipped to [−10, 10])."""
        a, b = self.weights @ self.c1, self.weights @ self.c2
        z = (-b / (2.0 * a)).clamp(-10.0, 10.0)
        return float(self._value(z, a, b))
