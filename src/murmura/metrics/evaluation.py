"""Vectorized evaluation: the average model, every node's own model, consensus distance."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from murmura.swarm.params import ParamSpec
from murmura.tasks import Classification


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    spec: ParamSpec,
    flat: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    buffers: dict[str, torch.Tensor] | None = None,
    batch_size: int = 4096,
    task: Any = None,
) -> tuple[float, float]:
    """Accuracy and mean loss of one flat parameter vector on ``(x, y)``, by the task's scores
    (``murmura.tasks``; cross-entropy of class scores by default)."""
    params = spec.views(flat)
    buffers = buffers or {}
    task = task or Classification()

    def forward(p: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        return functional_call(model, (p, buffers), (xb,))

    sums = {"correct": 0.0, "loss": 0.0, "count": 0.0}
    for start in range(0, len(y), batch_size):
        part = task.metrics(forward, params, {"x": x[start : start + batch_size],
                                              "y": y[start : start + batch_size]})
        for key in sums:
            sums[key] += float(part[key])
    return sums["correct"] / sums["count"], sums["loss"] / sums["count"]


@torch.no_grad()
def evaluate_nodes(
    model: nn.Module,
    spec: ParamSpec,
    X: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    buffers: dict[str, torch.Tensor] | None = None,
    chunk_size: int = 64,
    task: Any = None,
) -> torch.Tensor:
    """Accuracy of every node's own model (rows of ``X``) on the same samples: ``[n]``."""
    buffers = buffers or {}

    def forward(p: dict[str, torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
        return functional_call(model, (p, buffers), (xb,))

    def accuracy(params: dict[str, torch.Tensor]) -> torch.Tensor:
        # classification scores accuracy alone here: a node's loss is not reported, and
        # computing it for every node would cost as much again
        if task is not None and type(task) is not Classification:
            sums = task.metrics(forward, params, {"x": x, "y": y})
            return (sums["correct"] / sums["count"]).to(torch.float32)
        out = forward(params, x)
        return (out.argmax(1) == y).to(torch.float32).mean()

    batched = vmap(accuracy)
    parts = [
        batched(spec.views(X[start : start + chunk_size]))
        for start in range(0, X.shape[0], chunk_size)
    ]
    return torch.cat(parts)


@torch.no_grad()
def consensus_distance(X: torch.Tensor, chunk_size: int = 1024) -> float:
    """Mean squared distance of the nodes' models to their average: (1/n) sum_i ||x_i - x̄||²."""
    mean = X.mean(dim=0, dtype=torch.float64).to(X.dtype)
    total = 0.0
    for start in range(0, X.shape[0], chunk_size):
        block = X[start : start + chunk_size] - mean
        total += float(torch.linalg.vector_norm(block, dim=1, dtype=torch.float64).square().sum())
    return total / X.shape[0]
