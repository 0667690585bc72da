"""A strongly convex finite sum for optimizers that need one: ℓ2-regularized logistic regression
split over nodes, with its constants and its exact optimum.

Node ``i`` holds ``m_i`` samples ``(a, y)``, ``y ∈ {−1, +1}``, and the objective is
``F(x) = Σ_i f_i(x)`` with

    f_i(x) = (1/m_i) Σ_s log(1 + exp(−y_s ⟨a_s, x⟩)) + (μ/2) ‖x‖²

as in DADAO's code (``cvx_functions.logistic_regression``; spec ``decentralized.md`` section 6).
Its constants are the code's (``utils.compute_regularity_constants``): ``μ`` is the
regularizer's and ``L = max(max_i mean_s ‖a_s‖² / 4, μ)``, which bounds the logistic part's
curvature (``mean ‖a‖² / 4 ≥ λ_max(AᵀA / m) / 4``). The optimum ``x*`` is found by Newton's
method in float64 to a gradient norm of ``1e-13``, far below the ``1e-8`` squared distances an
accelerated method is measured at.

Everything is float64 and batched over nodes: ``gradient(nodes, x)`` takes ``[m]`` node ids and
their ``[m, d]`` points.

>>> import torch
>>> problem = LogisticProblem([torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])],
...                           [torch.tensor([1.0]), torch.tensor([-1.0])], mu=0.5)
>>> x_star = problem.optimum()
>>> float(problem.gradient(torch.arange(2), x_star.expand(2, 2)).sum(0).abs().max()) < 1e-12
True
>>> problem.smoothness()
0.5
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

Tensor = torch.Tensor


class LogisticProblem:
    """ℓ2-regularized logistic regression over nodes (module docstring): ``features[i]`` is
    node i's ``[m_i, d]`` sample matrix, ``labels[i]`` its ``[m_i]`` labels in {−1, +1}."""

    def __init__(self, features: Sequence[Tensor], labels: Sequence[Tensor], mu: float) -> None:
        if not features or len(features) != len(labels):
            raise ValueError(f"features and labels must be one tensor per node, got "
                             f"{len(features)} and {len(labels)}")
        if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not mu > 0:
            raise ValueError(f"mu (the ℓ2 strength, the strong convexity) must be > 0, got "
                             f"{mu!r}")
        dims = {int(a.shape[-1]) for a in features}
        if len(dims) != 1 or any(a.ndim != 2 for a in features):
            raise ValueError("every node's features must be a [samples, d] matrix with the same d")
        sizes = [int(a.shape[0]) for a in features]
        if min(sizes) < 1 or any(int(y.numel()) != m for y, m in zip(labels, sizes)):
            raise ValueError("every node needs at least one sample and one label per sample")
        for y in labels:
            if not bool(((y == 1) | (y == -1)).all()):
                raise ValueError("labels must be -1 or +1")
        n, width, d = len(features), max(sizes), dims.pop()
        self.num_nodes, self.dim, self.mu = n, d, float(mu)
        self.sizes = torch.tensor(sizes, dtype=torch.float64)
        self.a = torch.zeros(n, width, d, dtype=torch.float64)
        self.y = torch.zeros(n, width, dtype=torch.float64)  # 0 on padding: it adds nothing
        for i, (a, y) in enumerate(zip(features, labels)):
            self.a[i, : sizes[i]] = a.to(torch.float64)
            self.y[i, : sizes[i]] = y.to(torch.float64).reshape(-1)

    @classmethod
    def from_federated(cls, data: object, mu: float, bias: bool = True) -> LogisticProblem:
        """A murmura ``FederatedData`` as a binary task: label parity (even −1, odd +1),
        features flattened, and a constant feature 1 appended when ``bias``."""
        x = data.dataset.train_x.reshape(len(data.dataset.train_x), -1).to(torch.float64)
        if bias:
            x = torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], 1)
        y = (data.dataset.train_y.to(torch.int64) % 2) * 2.0 - 1.0
        parts = [torch.as_tensor(p, dtype=torch.int64) for p in data.parts]
        return cls([x[p] for p in parts], [y[p] for p in parts], mu)

    def smoothness(self) -> float:
        """``L = max(max_i mean_s ‖a_s‖² / 4, μ)`` (DADAO's code)."""
        mean_sq = (self.a * self.a).sum((1, 2)) / self.sizes
        return max(float(mean_sq.max()) / 4.0, self.mu)

    def gradient(self, nodes: Tensor, x: Tensor) -> Tensor:
        """``∇f_i(x_i)`` for each node id in ``nodes`` at its row of ``x`` (``[m, d]``)."""
        a, y = self.a[nodes], self.y[nodes]
        margin = y * torch.einsum("msd,md->ms", a, x)
        weight = -y * torch.sigmoid(-margin) / self.sizes[nodes].unsqueeze(1)
        return torch.einsum("ms,msd->md", weight, a) + self.mu * x

    def loss(self, x: Tensor) -> Tensor:
        """``F(x) = Σ_i f_i(x)`` at one point ``x`` (``[d]``)."""
        margin = self.y * torch.einsum("nsd,d->ns", self.a, x)
        data = (torch.nn.functional.softplus(-margin) * (self.y != 0)).sum(1) / self.sizes
        return data.sum() + self.num_nodes * self.mu / 2 * (x @ x)

    def optimum(self, tolerance: float = 1e-13, max_steps: int = 100) -> Tensor:
        """``x* = argmin F`` by Newton's method (float64)."""
        n, x = self.num_nodes, torch.zeros(self.dim, dtype=torch.float64)
        for _ in range(max_steps):
            g = self.gradient(torch.arange(n), x.expand(n, -1)).sum(0)
            if float(g.norm()) <= tolerance:
                return x
            margin = self.y * torch.einsum("nsd,d->ns", self.a, x)
            s = torch.sigmoid(margin)
            curvature = s * (1 - s) * (self.y != 0) / self.sizes.unsqueeze(1)
            hessian = (torch.einsum("ns,nsd,nse->de", curvature, self.a, self.a)
                       + n * self.mu * torch.eye(self.dim, dtype=torch.float64))
            x = x - torch.linalg.solve(hessian, g)
        raise RuntimeError(f"Newton's method did not reach a gradient norm of {tolerance} in "
                           f"{max_steps} steps")


__all__ = ["LogisticProblem"]
