"""Measurement: evaluation of the average and the nodes' models, consensus distance, byte totals,
and the reductions over nodes that a sharded simulation replaces with all-reduces."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.func import vmap

from murmura.learners.fewshot import METHODS as FEWSHOT_METHODS
from murmura.metrics.evaluation import evaluate_model, evaluate_nodes
from murmura.swarm.fused import node_accuracy_shared_input
from murmura.swarm.random import uniform


@dataclass(frozen=True)
class Evaluation:
    """What to measure and how often. ``every=0`` turns evaluation off (benchmarks).
    ``fewshot_shots > 0`` adds each node's few-shot accuracy on its own held-out samples
    (:mod:`murmura.swarm.fewshot_eval`; needs ``data.holdout``), inferred by
    ``fewshot_method`` (``simpleshot``, ``kmeans`` or ``slk``)."""

    every: int = 1
    node_samples: int = 500
    test_batch_size: int = 4096
    fewshot_shots: int = 0
    fewshot_method: str = "slk"

    def __post_init__(self) -> None:
        if int(self.every) != self.every or self.every < 0:
            raise ValueError(f"evaluation every must be an integer >= 0, got {self.every!r}")
        if int(self.node_samples) != self.node_samples or self.node_samples < 0:
            raise ValueError(
                f"evaluation node_samples must be an integer >= 0, got {self.node_samples!r}"
            )
        if int(self.test_batch_size) != self.test_batch_size or self.test_batch_size < 1:
            raise ValueError(
                f"evaluation test_batch_size must be a positive integer, got "
                f"{self.test_batch_size!r}"
            )
        if int(self.fewshot_shots) != self.fewshot_shots or self.fewshot_shots < 0:
            raise ValueError(f"evaluation fewshot_shots must be an integer >= 0 (0: off), got "
                             f"{self.fewshot_shots!r}")
        if self.fewshot_method not in FEWSHOT_METHODS:
            raise ValueError(f"evaluation fewshot_method {self.fewshot_method!r}: choose one of "
                             f"{', '.join(FEWSHOT_METHODS)}")


_ROWS_PER_SUM = 256  # rows per float32 partial sum in evaluation reductions


class NonFiniteError(FloatingPointError):
    """A node's parameters became NaN or Inf."""


class Measurement:
    """The bookkeeping stage of :class:`~murmura.swarm.engine.Simulation`."""

    def _eval_chunk_size(self, samples: int) -> int:
        per_node = 4 * (self.spec.dim + 2 * samples * self._activations_per_sample)
        return max(1, min(self.num_nodes, self._memory_budget() // per_node))

    def _pick_node_eval_subset(self) -> torch.Tensor | None:
        k = min(self.evaluation.node_samples, len(self.data.dataset.test_y))
        if k == 0:
            return None
        keys = uniform(self.seed, "node-eval", torch.arange(len(self.data.dataset.test_y)))
        return torch.sort(torch.topk(keys, k, largest=False).indices).values.to(self.device)

    def _ledger_totals(self) -> tuple[float, float, float, float]:
        """Bytes sent and received by all nodes, and by the busiest node, so far."""
        sums = self._all_sum(torch.stack([self.bytes_sent.sum(), self.bytes_received.sum()]))
        maxes = self._all_max(torch.stack([self.bytes_sent.max(), self.bytes_received.max()]))
        return float(sums[0]), float(sums[1]), float(maxes[0]), float(maxes[1])

    def _should_evaluate(self, total_rounds: int) -> bool:
        every = self.evaluation.every
        if every == 0:
            return False
        return (self.round + 1) % every == 0 or self.round == total_rounds - 1

    def average_params(self) -> torch.Tensor:
        """x̄ = (1/n) sum_i x_i: float32 sums over blocks of rows, accumulated in float64 (a
        float64 copy of the whole state, what ``sum(dtype=float64)`` makes, cost more than all
        the rest of an evaluation)."""
        total = torch.zeros(self.spec.dim, dtype=torch.float64, device=self.device)
        for start in range(0, self.local_nodes, _ROWS_PER_SUM):
            total += self.params[start : start + _ROWS_PER_SUM].sum(dim=0)
        return (self._all_sum(total) / self.num_nodes).to(self.params.dtype)

    def evaluate(self) -> dict[str, float]:
        dataset = self.data.dataset
        identical = self._rows_identical()
        mean = self.params[0].clone() if identical else self.average_params()
        # where a server holds the model, that is the model the federation has
        served = self.server_state.get("params") if self.server_state else None
        acc, loss = evaluate_model(
            self.model,
            self.spec,
            mean if served is None else served,
            dataset.test_x,
            dataset.test_y,
            self.buffers,
            self.evaluation.test_batch_size,
            self.task,
        )
        result = {"test_accuracy": acc, "test_loss": loss}
        distance = 0.0 if identical else self._consensus_distance(mean)
        if not math.isfinite(distance):
            self._check_finite(last_round=self.round)
        result["consensus_distance"] = distance
        subset = self._node_eval_subset
        if subset is not None:
            x, y = dataset.test_x[subset], dataset.test_y[subset]
            if distance == 0.0:  # all nodes hold the same model: evaluate it once
                node_acc = evaluate_nodes(
                    self.model, self.spec, self.params[:1], x, y, self.buffers, task=self.task
                ).expand(self.local_nodes)
            else:
                node_acc = self._node_accuracies(x, y)
            total = self._all_sum(node_acc.sum(dtype=torch.float64).reshape(1))
            result.update(
                node_accuracy_mean=float(total) / self.num_nodes,
                node_accuracy_min=float(self._all_min(node_acc.min().reshape(1))),
                node_accuracy_max=float(self._all_max(node_acc.max().reshape(1))),
            )
        if self.data.test_parts is not None:
            personal = self._personal_accuracies()
            total = self._all_sum(personal.sum(dtype=torch.float64).reshape(1))
            result.update(
                personal_accuracy_mean=float(total) / self.num_nodes,
                personal_accuracy_min=float(self._all_min(personal.min().reshape(1))),
                personal_accuracy_max=float(self._all_max(personal.max().reshape(1))),
            )
        if self.evaluation.fewshot_shots:
            result.update(self._fewshot_metrics())
        if self.malicious is not None:
            result.update(self._honest_metrics(served, node_acc if subset is not None else None))
        return result

    def _honest_metrics(self, served: torch.Tensor | None, node_acc: torch.Tensor | None
                        ) -> dict[str, float]:
        """The same measures over honest nodes only (an attacker's own model is not the
        federation's): the honest average's accuracy (the server's model at a server),
        their consensus distance, their own models' mean and worst accuracy."""
        dataset = self.data.dataset
        honest = ~self.malicious[self.first_node : self.last_node]
        rows = self.params[honest]
        count = int(honest.sum())
        mean = rows.sum(dim=0, dtype=torch.float64).div(count).to(self.params.dtype)
        acc, _ = evaluate_model(self.model, self.spec, mean if served is None else served,
                                dataset.test_x, dataset.test_y, self.buffers,
                                self.evaluation.test_batch_size, self.task)
        spread = (rows - mean).square().sum(dim=1).sum(dtype=torch.float64) / count
        result = {"honest_test_accuracy": acc, "honest_consensus_distance": float(spread)}
        if node_acc is not None:
            mine = node_acc[honest]
            result.update(honest_node_accuracy_mean=float(mine.mean()),
                          honest_node_accuracy_min=float(mine.min()))
        return result

    def _fewshot_metrics(self) -> dict[str, float]:
        """Mean, worst and best of the nodes' few-shot accuracies, over the nodes that have a
        task (``fewshot_nodes`` of them)."""
        from murmura.swarm.fewshot_eval import feature_function, fewshot_accuracies, node_task

        if self._fewshot_tasks is None:
            labels = self.data.dataset.train_y.cpu()
            self._fewshot_tasks = [
                node_task(part, labels, self.evaluation.fewshot_shots, self.seed, node)
                for node, part in enumerate(self.data.test_parts[self.first_node:self.last_node],
                                            start=self.first_node)]
        rows = self.params.cpu()
        views = [self.spec.views(rows[i : i + 1]) for i in range(self.local_nodes)]
        views = [{k: v[0] for k, v in view.items()} for view in views]
        acc = fewshot_accuracies(feature_function(self.model), views, self._fewshot_tasks,
                                 self.data.dataset.train_x.cpu(), self.evaluation.fewshot_method)
        scored = acc[~acc.isnan()]
        count = self._all_sum(torch.tensor([float(len(scored))], dtype=torch.float64))
        if float(count) == 0:
            return {"fewshot_nodes": 0.0}
        total = self._all_sum(scored.sum().reshape(1).to(torch.float64))
        low = scored.min() if len(scored) else torch.tensor(float("inf"))
        high = scored.max() if len(scored) else torch.tensor(float("-inf"))
        return {"fewshot_accuracy_mean": float(total) / float(count),
                "fewshot_accuracy_min": float(self._all_min(low.reshape(1))),
                "fewshot_accuracy_max": float(self._all_max(high.reshape(1))),
                "fewshot_nodes": float(count)}

    def _rows_identical(self) -> bool:
        """Whether every row is known to hold the same model: true after a server average, void
        as soon as the state is written in place or replaced (torch counts in-place writes in
        ``_version``), so a caller editing ``sim.params`` between rounds cannot mislead it."""
        return (self._identical is not None and self._identical[0] is self.params
                and self._identical[1] == self.params._version)

    def _node_accuracies(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Every local node's accuracy on the samples ``(x, y)``: ``[local_nodes]``."""
        shapes = dict(zip(self.spec.names, self.spec.shapes))
        if self._stack is None or shapes[self._stack[0].weight][0] > 64:
            # per-node products with a wide first layer already run near the GEMM rate
            chunk = self._eval_chunk_size(len(y))
            return evaluate_nodes(self.model, self.spec, self.params, x, y, self.buffers, chunk,
                                  self.task)
        # per node: a copy of its first layer, and each layer's outputs about three times over;
        # the shared input is not per node
        outputs = sum(shapes[layer.weight][0] for layer in self._stack)
        per_node = 4 * (self.spec.dim + 3 * len(y) * outputs)
        chunk = max(1, min(self.local_nodes, self._memory_budget() // per_node))
        first = shapes[self._stack[0].weight][0]
        if self._eval_scratch is None or self._eval_scratch.numel() < len(y) * chunk * first:
            self._eval_scratch = torch.empty(len(y) * chunk * first, device=self.device)
        blocks = (self.spec.views(self.params[start : start + chunk])
                  for start in range(0, self.local_nodes, chunk))
        return torch.cat([node_accuracy_shared_input(self._stack, views, x, y, self._eval_scratch)
                          for views in blocks])

    @torch.no_grad()
    def _personal_accuracies(self) -> torch.Tensor:
        """Every local node's own model on its own held-out samples (``data.test_parts``):
        ``[local_nodes]``. A task with ``personal_scores(forward, params, batch)`` scores them
        its own way (FedGELA's classifier adjusted by the node's class counts, which the batch
        carries as ``label_counts``); otherwise the model's outputs are the class scores."""
        if self._personal_table is None:
            parts = self.data.test_parts[self.first_node : self.last_node]
            sizes = torch.tensor([len(p) for p in parts])
            table = torch.zeros(len(parts), int(sizes.max()), dtype=torch.int64)
            for i, part in enumerate(parts):
                table[i, : len(part)] = torch.as_tensor(part)
                table[i, len(part):] = int(part[0])  # padding reads a real sample, never counted
            counts = (self.label_counts if self.label_counts is not None
                      else self.data.label_counts().to(self.device))
            self._personal_table = (table.to(self.device), sizes.to(self.device),
                                    counts[self.first_node : self.last_node])
        table, sizes, counts = self._personal_table
        dataset = self.data.dataset
        scores_of = getattr(self.task, "personal_scores", None)

        def accuracy(params, index, size, label_counts):
            x, y = dataset.train_x[index], dataset.train_y[index]
            if scores_of is None:
                scores = self._forward(params, x)
            else:
                scores = scores_of(self._forward, params,
                                   {"x": x, "y": y, "label_counts": label_counts})
            valid = torch.arange(index.shape[0], device=index.device) < size
            return ((scores.argmax(-1) == y) & valid).sum() / size

        chunk = self._eval_chunk_size(table.shape[1])
        out = [vmap(accuracy)(self.spec.views(self.params[start : start + chunk]),
                              table[start : start + chunk], sizes[start : start + chunk],
                              counts[start : start + chunk])
               for start in range(0, self.local_nodes, chunk)]
        return torch.cat(out).to(torch.float32)

    # Reductions over every node's row. One process holds them all, so these are identities;
    # a sharded simulation (murmura.dist) reduces across processes.

    def _all_sum(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def _all_min(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def _all_max(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def any_process(self, flag: bool) -> bool:
        """Whether ``flag`` holds in any process of the simulation (this one, unsharded)."""
        return bool(self._all_max(torch.tensor([float(flag)], device=self.device)) > 0)

    def _consensus_distance(self, mean: torch.Tensor) -> float:
        """(1/n) sum_i ||x_i - x̄||²: each row's squared distance in float32 (the differences
        come first, so nothing cancels), summed over rows in float64."""
        total = torch.zeros(1, dtype=torch.float64, device=self.device)
        for start in range(0, self.local_nodes, _ROWS_PER_SUM):
            block = (self.params[start : start + _ROWS_PER_SUM] - mean).square_()
            total += block.sum(dim=1).sum(dtype=torch.float64)
        return float(self._all_sum(total)) / self.num_nodes

    def check_finite(self) -> None:
        """Raise NonFiniteError naming the nodes whose parameters are NaN or Inf."""
        self._check_finite()

    def _check_finite(self, last_round: int | None = None) -> None:
        # Checked on evaluation rounds and at the end of a run, not every round: it reads the
        # whole state, and a NaN, once there, spreads to every model it is averaged into.
        finite = torch.isfinite(self.params).all(dim=1)
        if self.malicious is not None:  # an attacker's own model may be anything (Inf attacks)
            finite |= self.malicious[self.first_node : self.last_node]
        bad_count = self._all_sum((~finite).sum(dtype=torch.float64).reshape(1))
        if float(bad_count) > 0:
            bad = (torch.nonzero(~finite).flatten()[:5] + self.first_node).tolist()
            when = self.round - 1 if last_round is None else last_round
            raise NonFiniteError(
                f"after round {when}: the parameters of nodes {bad} are NaN or Inf "
                "(checked on evaluation rounds and at the end of run); lower the learning rate "
                f"or check the data. Simulation.history keeps the {len(self.history)} rounds "
                "recorded before this check."
            )
