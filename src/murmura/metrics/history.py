"""Per-round records, returned by the Python API and written as CSV or JSONL."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

COLUMNS: dict[str, str] = {
    "round": "round index, from 0",
    "communicated": "what the round's communication stage did: communicate, merge or skip",
    "test_accuracy": "accuracy of the average model x̄ = mean_i x_i (a server's model at a "
    "server) on the whole test set (per symbol for a next_token task)",
    "test_loss": "mean loss of that model on the test set (the task's: cross-entropy)",
    "node_accuracy_mean": "mean over nodes of each node's own model's accuracy (test subset)",
    "node_accuracy_min": "worst node's accuracy on the test subset",
    "node_accuracy_max": "best node's accuracy on the test subset",
    "consensus_distance": "(1/n) sum_i ||x_i - x̄||², after communication",
    "personal_accuracy_mean": "with [data] local_test_fraction: mean over nodes of each node's "
    "own model's accuracy on its own held-out samples",
    "personal_accuracy_min": "with local_test_fraction: the worst node's personal accuracy",
    "personal_accuracy_max": "with local_test_fraction: the best node's personal accuracy",
    "fewshot_accuracy_mean": "with [evaluation] fewshot_shots: mean over nodes of each node's "
    "transductive few-shot accuracy on its own held-out samples, its model's features",
    "fewshot_accuracy_min": "with fewshot_shots: the worst node's few-shot accuracy",
    "fewshot_accuracy_max": "with fewshot_shots: the best node's few-shot accuracy",
    "fewshot_nodes": "with fewshot_shots: nodes scored (two classes with shots + 1 held-out "
    "samples each, at least)",
    "honest_test_accuracy": "with an adversary: accuracy of the honest nodes' average model (the "
    "server's model at a server)",
    "honest_node_accuracy_mean": "with an adversary: mean of the honest nodes' own accuracies",
    "honest_node_accuracy_min": "with an adversary: the worst honest node's accuracy",
    "honest_consensus_distance": "with an adversary: consensus distance among honest nodes",
    "bytes_sent": "bytes all nodes sent this round (uploads to a server included)",
    "bytes_received": "bytes all nodes received this round",
    "bytes_sent_total": "cumulative bytes sent by all nodes",
    "bytes_sent_per_node_mean": "cumulative bytes sent, mean over nodes",
    "bytes_sent_per_node_max": "cumulative bytes sent by the busiest node",
    "bytes_received_total": "cumulative bytes received by all nodes",
    "bytes_received_per_node_mean": "cumulative bytes received, mean over nodes",
    "bytes_received_per_node_max": "cumulative bytes received by the busiest node",
    "server_bytes_sent_total": "cumulative bytes a server sent (star algorithms; 0 otherwise)",
    "inter_rank_bytes": "bytes sent between processes this round (sharded runs only): halo rows "
    "and all-reduces, not counted in the algorithm's bytes",
    "train_seconds": "wall time of the round's local training",
    "comm_seconds": "wall time of the round's communication",
    "round_seconds": "wall time of the whole round, evaluation included",
    "wall_seconds": "cumulative wall time since the simulation started",
}


# the columns only evaluation rounds fill (empty on the others)
EVALUATED_COLUMNS: tuple[str, ...] = (
    "test_accuracy", "test_loss", "node_accuracy_mean", "node_accuracy_min", "node_accuracy_max",
    "consensus_distance", "personal_accuracy_mean", "personal_accuracy_min",
    "personal_accuracy_max", "fewshot_accuracy_mean", "fewshot_accuracy_min",
    "fewshot_accuracy_max", "fewshot_nodes", "honest_test_accuracy", "honest_node_accuracy_mean",
    "honest_node_accuracy_min", "honest_consensus_distance",
)


class History:
    """A list of per-round records (dicts) with writers.

    >>> h = History([{"round": 0, "test_accuracy": 0.5}])
    >>> h.final["test_accuracy"]
    0.5
    """

    def __init__(self, records: list[dict[str, Any]] | None = None) -> None:
        self.records: list[dict[str, Any]] = list(records or [])

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.records[i]

    @property
    def final(self) -> dict[str, Any]:
        if not self.records:
            raise ValueError("the history is empty: no round has run")
        return self.records[-1]

    def column(self, name: str) -> list[Any]:
        return [r.get(name) for r in self.records]

    def to_csv(self, path: str | Path) -> Path:
        path = Path(path)
        keys: list[str] = []
        for r in self.records:
            keys += [k for k in r if k not in keys]
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            for r in self.records:
                writer.writerow({k: plain(r.get(k)) for k in keys})
        return path

    def to_jsonl(self, path: str | Path) -> Path:
        path = Path(path)
        with path.open("w") as fh:
            for r in self.records:
                fh.write(json.dumps({k: plain(v) for k, v in r.items()}) + "\n")
        return path


def plain(value: Any) -> Any:
    """A value as CSV and JSON can hold it: NaN and Inf become empty, 0-d tensors numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return plain(value.item())
    return value
