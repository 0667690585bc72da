"""A clocked run's outputs in a run directory: the replayable event log, the metrics against
simulated time, a summary with the staleness distribution and each node's busy and idle time,
and the curves against simulated seconds and bytes.

``write_run(run, run_dir)`` works for :class:`~murmura.clock.federated.ClockedFederation` and
:class:`~murmura.clock.gossip.ClockedGossip` after ``run.run(...)``:

* ``events.csv``: the event log (``EventLog.read`` gives it back bit for bit);
* ``metrics.csv``: one row per evaluation (``time`` first);
* ``summary.json``: the final record, ``staleness`` (updates per staleness, at the server),
  ``busy_seconds`` and ``idle_seconds`` per node (online and neither computing nor
  transferring; for gossip, a wake-up's work takes no simulated time, so busy is 0);
* ``curves.png``: test accuracy against simulated seconds and against bytes sent.

Its pieces (:func:`write_metrics`, :func:`clock_summary`, :func:`plot_curves`) also write a
clocked ``murmura run``'s directory (:mod:`murmura.runner.clocked`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


def write_run(run: Any, run_dir: str | Path) -> Path:
    """Write ``run``'s outputs into ``run_dir`` (created if needed); returns it."""
    records = getattr(run, "records", None)
    if not records:
        raise ValueError("nothing to write: call run.run(until=..., eval_every=...) first")
    out = Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    run.log.write(out)
    write_metrics(records, out / "metrics.csv")
    summary = {"final": records[-1], **clock_summary(run, records)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot_curves(records, out / "curves.png")
    return out


def metric_columns(records: list[dict[str, Any]]) -> list[str]:
    """``time`` first, then the names a round-based ``metrics.csv`` has too, in its order
    (:data:`murmura.metrics.COLUMNS`), then the clock's own, sorted."""
    from murmura.metrics.history import COLUMNS

    present = {k for r in records for k in r} - {"time"}
    known = [k for k in COLUMNS if k in present]
    return ["time", *known, *sorted(present - set(known))]


def write_metrics(records: list[dict[str, Any]], path: str | Path) -> Path:
    """One row per evaluation (:func:`metric_columns`); non-finite values are left empty."""
    from murmura.metrics.history import plain

    path = Path(path)
    with path.open("w", newline="") as sink:
        writer = csv.DictWriter(sink, fieldnames=metric_columns(records) if records
                                else ["time"])
        writer.writeheader()
        writer.writerows({k: plain(v) for k, v in r.items()} for r in records)
    return path


def clock_summary(run: Any, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The clock's part of a summary: the simulated seconds evaluated (the last record's
    time), the events logged, the staleness distribution and each node's busy and idle
    seconds up to that time."""
    n, horizon = run.sim.num_nodes, float(records[-1]["time"]) if records else 0.0
    busy = run.log.busy_time(n)
    idle = run.log.idle_time(run.availability, n, horizon)
    return {"simulated_seconds": horizon, "events": len(run.log),
            "staleness": {str(k): v for k, v in run.log.staleness_counts().items()},
            "busy_seconds": busy.tolist(), "idle_seconds": idle.tolist()}


def plot_curves(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Test accuracy against simulated seconds and against MB sent (all nodes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    accuracy = [100 * r.get("test_accuracy", float("nan")) for r in records]
    axes[0].plot([r["time"] for r in records], accuracy, marker=".")
    axes[0].set_xlabel("simulated seconds")
    axes[1].plot([r.get("bytes_sent_total", 0.0) / 1e6 for r in records], accuracy, marker=".")
    axes[1].set_xlabel("MB sent (all nodes)")
    for ax in axes:
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


__all__ = ["clock_summary", "metric_columns", "plot_curves", "write_metrics", "write_run"]
