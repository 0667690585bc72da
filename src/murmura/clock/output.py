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
    columns = ["time"] + sorted({k for r in records for k in r} - {"time"})
    with (out / "metrics.csv").open("w", newline="") as sink:
        writer = csv.DictWriter(sink, fieldnames=columns)
        writer.writeheader()
        writer.writerows(records)
    n, horizon = run.sim.num_nodes, float(records[-1]["time"])
    busy = run.log.busy_time(n)
    idle = run.log.idle_time(run.availability, n, horizon)
    summary = {"final": records[-1], "simulated_seconds": horizon, "events": len(run.log),
               "staleness": {str(k): v for k, v in run.log.staleness_counts().items()},
               "busy_seconds": busy.tolist(), "idle_seconds": idle.tolist()}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    _plot(records, out / "curves.png")
    return out


def _plot(records: list[dict[str, Any]], path: Path) -> None:
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


__all__ = ["write_run"]
