"""Several runs side by side: one table row per run and overlaid accuracy and loss."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from murmura.report.kind_plots import own_columns
from murmura.report.plots import plot_comparison
from murmura.report.run import ReportError, Run, load_run

__all__ = [
    "ReportError",
    "Run",
    "compare_runs",
    "load_run",
    "load_runs",
    "own_keys",
    "run_labels",
    "summary_row",
]

PathLike = str | os.PathLike[str]


def compare_runs(
    run_dirs: Sequence[PathLike | Run], out_dir: PathLike
) -> tuple[list[dict[str, Any]], list[Path]]:
    """One row per run (see :func:`summary_row`) and the overlaid figures written in
    ``out_dir`` (``compare_accuracy.png``, ``compare_node_accuracy.png``,
    ``compare_loss.png``)."""
    runs = load_runs(run_dirs)
    labels = run_labels(runs)
    rows = [summary_row(run, label) for run, label in zip(runs, labels)]
    return rows, plot_comparison(runs, labels, out_dir)


def summary_row(run: Run, label: str | None = None) -> dict[str, Any]:
    """A run's headline numbers, unformatted (fractions, bytes/1e6, seconds; None if unknown).

    Accuracies are the final evaluated values; ``mb_sent_per_node`` is the run's last recorded
    total, which is the same round for a completed run (its last round is always evaluated)."""
    sent = run.last("bytes_sent_per_node_mean")
    if sent is None:
        sent = run.final("bytes_sent_per_node_mean")
    return {
        "label": label or run.name,
        "name": run.name,
        "path": str(run.path),
        "status": run.status,
        "algorithm": run.algorithm,
        "topology": run.topology_label,
        "nodes": run.num_nodes,
        "rounds_done": run.rounds_done,
        "total_rounds": run.total_rounds,
        "test_accuracy": run.final("test_accuracy"),
        "node_accuracy_mean": run.final("node_accuracy_mean"),
        "mb_sent_per_node": None if sent is None else sent / 1e6,
        "seconds": run.seconds,
        "kind": run.kind,
        # a tool's own final numbers (regret, returns, ...): empty for a swarm
        "own": {} if run.kind == "swarm" else {c: run.final(c) for c in own_columns(run)},
    }


def own_keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The union of the rows' own columns, in order of appearance."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row.get("own", {}) if k not in keys]
    return keys


def run_labels(runs: Sequence[Run]) -> list[str]:
    """The runs' names, made unique: a name shared by several runs gets the part of each path
    that tells them apart, e.g. ``ring (seed1)`` and ``ring (seed2)``."""
    counts = Counter(run.name for run in runs)
    labels = []
    for run in runs:
        if counts[run.name] == 1:
            labels.append(run.name)
            continue
        twins = [r.path.resolve() for r in runs if r.name == run.name]
        labels.append(f"{run.name} ({_distinct_part(run.path.resolve(), twins)})")
    seen: Counter[str] = Counter()
    unique = []
    for label in labels:
        seen[label] += 1
        # The same folder passed twice still needs two legend entries.
        unique.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return unique


def _distinct_part(path: Path, twins: list[Path]) -> str:
    common = Path(os.path.commonpath([str(p) for p in twins]))
    try:
        rel = path.relative_to(common)
    except ValueError:
        rel = Path(path.name)
    return str(rel) if str(rel) not in ("", ".") else path.name


def load_runs(run_dirs: Sequence[PathLike | Run]) -> list[Run]:
    """Load each run directory (a :class:`Run` is passed through)."""
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    if not run_dirs:
        raise ReportError("no run directories given: pass at least one")
    return [r if isinstance(r, Run) else load_run(r) for r in run_dirs]
