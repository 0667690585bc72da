"""Tasks: what a node's loss is, and how a model is scored.

A task is a rule like the others, written for ONE node: ``loss(forward, params, batch) ->
(loss, aux)`` over a minibatch of named tensors (``"x"``, ``"y"`` and, when some samples are
padding, ``"weight"``), where ``forward(params, x)`` runs the swarm's model with one node's
parameters. The engine ``vmap``s it, so local rules never see what the task is: they get
``grad`` of it. ``metrics(forward, params, batch)`` gives sums (``correct``, ``loss``,
``count``) from which evaluation derives accuracy and mean loss, for the average model and for
every node's own. A task with ``needs_key = True`` finds the node's key for the step in
``batch["key"]`` (from (seed, node, round, step), as every draw) for losses that draw noise; one
with ``state_names`` finds those node states in ``batch["state"]`` as named tensors laid out
like ``params`` (a teacher's model to distil from, the model the round started from), declared
by its ``node_state`` like any rule's.

Classification with cross-entropy is the default (and the only task the fused linear-SGD step
covers); ``next_token`` trains character- or token-level sequence models whose targets are the
next symbol at every position (a dataset declares its task by name: ``Dataset.task``).

>>> import torch
>>> task = NextToken()
>>> logits = torch.zeros(1, 3, 4)              # batch 1, 3 positions, 4 symbols: uniform
>>> batch = {"x": torch.zeros(1, 3, dtype=torch.long), "y": torch.tensor([[0, 1, 2]])}
>>> loss, aux = task.loss(lambda p, x: logits, {}, batch)
>>> round(float(loss), 4) == round(float(torch.log(torch.tensor(4.0))), 4)
True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from murmura.registry import Registry

Tensor = torch.Tensor
Forward = Callable[[Mapping[str, Tensor], Tensor], Tensor]

TASKS: Registry = Registry("task")


@runtime_checkable
class Task(Protocol):
    name: str

    def loss(self, forward: Forward, params: Mapping[str, Tensor], batch: Mapping[str, Tensor]
             ) -> tuple[Tensor, dict[str, Tensor]]: ...

    def metrics(self, forward: Forward, params: Mapping[str, Tensor],
                batch: Mapping[str, Tensor]) -> dict[str, Tensor]: ...

    def check_output(self, out: Any, dataset: Any, batch: int) -> None: ...


def _sums(out: Tensor, y: Tensor) -> dict[str, Tensor]:
    """Correct predictions, summed cross-entropy and the count, of scores ``[N, C]``."""
    return {"correct": (out.argmax(-1) == y).sum().to(torch.float64),
            "loss": F.cross_entropy(out, y, reduction="sum").to(torch.float64),
            "count": torch.tensor(float(y.numel()), dtype=torch.float64)}


def _check_shape(out: Any, expected: tuple, message: str) -> None:
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{message}; it returned {shape}")


def _weighted_mean(losses: Tensor, weight: Tensor | None) -> Tensor:
    if weight is None:
        return losses.mean()
    return (losses * weight).sum() / weight.sum().clamp_min(1.0)


@TASKS.register("classification", "one class per sample, cross-entropy (the default)")
@dataclass(frozen=True)
class Classification:
    """``out [B, C]`` scored against ``y [B]`` by cross-entropy; accuracy is argmax = y."""

    name: ClassVar[str] = "classification"

    def loss(self, forward, params, batch):
        losses = F.cross_entropy(forward(params, batch["x"]), batch["y"], reduction="none")
        return _weighted_mean(losses, batch.get("weight")), {}

    def metrics(self, forward, params, batch):
        return _sums(forward(params, batch["x"]), batch["y"])

    def check_output(self, out, dataset, batch):
        _check_shape(out, (batch, dataset.num_classes),
                     f"the model must map a batch of samples to class scores of shape [batch, "
                     f"{dataset.num_classes}] ({dataset.num_classes} classes in "
                     f"{dataset.name!r}) for a batch of {batch}")


@TASKS.register("next_token", "a symbol at every position: per-position cross-entropy")
@dataclass(frozen=True)
class NextToken:
    """``out [B, T, V]`` scored against ``y [B, T]`` (the next symbol at each position):
    cross-entropy averaged over positions, then over samples; accuracy is per symbol."""

    name: ClassVar[str] = "next_token"

    def loss(self, forward, params, batch):
        out = forward(params, batch["x"])
        per_position = F.cross_entropy(out.transpose(1, 2), batch["y"], reduction="none")
        return _weighted_mean(per_position.mean(dim=1), batch.get("weight")), {}

    def metrics(self, forward, params, batch):
        out = forward(params, batch["x"])
        return _sums(out.reshape(-1, out.shape[-1]), batch["y"].reshape(-1))

    def check_output(self, out, dataset, batch):
        if dataset.train_y.ndim != 2:
            raise ValueError(
                f"the next_token task needs targets at every position, [samples, positions] "
                f"(a dataset such as python_docs); {dataset.name!r} has one label per sample"
            )
        positions = dataset.train_y.shape[1]
        _check_shape(out, (batch, positions, dataset.num_classes),
                     f"a next_token model must map [batch, {positions}] symbols to scores of "
                     f"shape [batch, {positions}, {dataset.num_classes}] for a batch of {batch}")


def make_task(spec: str | Task | None, dataset: Any) -> Task:
    """The task by name, the given task, or (``None``) the dataset's own."""
    if spec is None:
        spec = getattr(dataset, "task", "classification")
    if isinstance(spec, str):
        return TASKS.get(spec)()
    return spec


__all__ = ["TASKS", "Classification", "NextToken", "Task", "make_task"]

from murmura.tasks import objectives as _objectives  # noqa: E402, F401  (registers benchmarks)
