"""Per-node few-shot evaluation: each node labels ``shots`` of its own held-out samples per class
and infers the labels of the rest transductively (spec ``federated.md`` section 11, the
personalized evaluation SLK enables), on its own model's features.

A node's held-out samples are its ``test_parts`` (``data.local_test_fraction``). Its support
set is the first ``shots`` samples of each class in an order keyed by (seed, node), fixed for
the whole run so the metric follows the model, not the draw; its queries are the rest of those
classes. Only classes with at least ``shots + 1`` held-out samples count, and a node with fewer
than two such classes is left out (with one class, every labelling is right): ``fewshot_nodes``
says how many were scored. Features are the model's penultimate activations when it is an
``nn.Sequential`` ending in a ``Linear`` (mlp, logreg's input, cnn's body), its outputs
otherwise; they are centred on the node's own held-out mean and scaled to unit length (CL2N
with the node's data as the base: a node has no base classes of its own), then
:func:`murmura.learners.fewshot.infer` labels the queries. Nodes differ in classes and sizes,
so this runs node by node: it is an evaluation option, off by default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from murmura.learners.fewshot import cl2n, infer
from murmura.swarm.random import uniform

Tensor = torch.Tensor


@dataclass(frozen=True)
class NodeTask:
    """One node's few-shot task: indices into the training set and labels ``0..k-1``."""

    support: Tensor
    support_labels: Tensor
    query: Tensor
    query_labels: Tensor
    k: int


def node_task(held_out: np.ndarray, labels: Tensor, shots: int, seed: int,
              node: int) -> NodeTask | None:
    """The node's support and query sets, or ``None`` when fewer than two of its classes have
    ``shots + 1`` held-out samples.

    >>> labels = torch.tensor([0, 0, 1, 1, 1, 2])
    >>> task = node_task(np.arange(6), labels, shots=1, seed=0, node=0)
    >>> task.k, len(task.support), len(task.query)   # class 2 has one sample: left out
    (2, 2, 3)
    """
    held_out = torch.as_tensor(held_out, dtype=torch.int64)
    keys = uniform(seed, "fewshot-eval", held_out, node)
    ordered = held_out[torch.argsort(keys)]
    mine = labels[ordered]
    classes = [int(c) for c in torch.unique(mine) if int((mine == c).sum()) > shots]
    if len(classes) < 2:
        return None
    support, support_labels, query, query_labels = [], [], [], []
    for local, c in enumerate(classes):
        idx = ordered[mine == c]
        support.append(idx[:shots])
        query.append(idx[shots:])
        support_labels.append(torch.full((shots,), local))
        query_labels.append(torch.full((len(idx) - shots,), local))
    return NodeTask(torch.cat(support), torch.cat(support_labels), torch.cat(query),
                    torch.cat(query_labels), len(classes))


def feature_function(model: nn.Module) -> Callable[[dict[str, Tensor], Tensor], Tensor]:
    """``features(params, x)``: the penultimate activations of an ``nn.Sequential`` ending in a
    ``Linear``, else the model's outputs."""
    if isinstance(model, nn.Sequential) and len(model) > 1 and isinstance(model[-1], nn.Linear):
        body = model[:-1]  # keeps the children's names, so the node's views address it
        names = {name for name, _ in body.named_parameters()}

        def features(params: dict[str, Tensor], x: Tensor) -> Tensor:
            return functional_call(body, {k: v for k, v in params.items() if k in names}, (x,))
        return features

    def outputs(params: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(model, params, (x,))
    return outputs


@torch.no_grad()
def fewshot_accuracies(features: Callable[[dict[str, Tensor], Tensor], Tensor],
                       node_params: Sequence[dict[str, Tensor]], tasks: Sequence[NodeTask | None],
                       train_x: Tensor, method: str) -> Tensor:
    """Each node's query accuracy (NaN for a node without a task): ``[len(tasks)]``."""
    out = torch.full((len(tasks),), float("nan"))
    for i, (params, task) in enumerate(zip(node_params, tasks)):
        if task is None:
            continue
        points = features(params, train_x[torch.cat([task.support, task.query])])
        points = cl2n(points.flatten(1).double(), points.flatten(1).double().mean(0))
        s = len(task.support)
        options = {"knn": min(3, len(points) - 1)} if method == "slk" else {}
        guess = infer(method, points[None, :s], task.support_labels[None], points[None, s:],
                      task.k, **options)[0]
        out[i] = (guess == task.query_labels).double().mean()
    return out


__all__ = ["NodeTask", "feature_function", "fewshot_accuracies", "node_task"]
