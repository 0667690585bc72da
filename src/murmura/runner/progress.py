"""The live view of a run: round, accuracy, loss, consensus distance, MB sent, ETA."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)


def _fmt(value: Any, pattern: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return pattern.format(value)


def describe(latest: dict[str, Any], compact: bool = False) -> str:
    """One line of the latest metrics (``compact`` for the live bar, which shares its line)."""
    if compact:
        return (
            f"acc {_fmt(latest.get('test_accuracy'), '{:.1%}')} "
            f"loss {_fmt(latest.get('test_loss'), '{:.3f}')} "
            f"cons {_fmt(latest.get('consensus_distance'), '{:.1e}')} "
            f"{_fmt(latest.get('mb_sent'), '{:.1f}')} MB"
        )
    return (
        f"acc {_fmt(latest.get('test_accuracy'), '{:.2%}')}  "
        f"loss {_fmt(latest.get('test_loss'), '{:.3f}')}  "
        f"consensus {_fmt(latest.get('consensus_distance'), '{:.2e}')}  "
        f"sent {_fmt(latest.get('mb_sent'), '{:.1f}')} MB/node"
    )


class RunProgress:
    """A rich progress bar on a terminal; on a pipe or a log file, a plain line about every
    tenth of the run (a live display would fill a log with escape codes)."""

    def __init__(
        self, console: Console, name: str, total: int, done: int, enabled: bool = True
    ) -> None:
        self.console = console
        self.total = total
        self.enabled = enabled
        self.live = enabled and console.is_terminal
        self.latest: dict[str, Any] = {}
        self.every = max(1, total // 10)
        # the round counter and ETA first, so a narrow terminal cuts the metrics, not them
        self.progress = Progress(
            MofNCompleteColumn(),
            BarColumn(bar_width=12),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[metrics]}"),
            console=console,
            disable=not self.live,
        )
        self.task = self.progress.add_task(name, total=total, completed=done, metrics="")

    def __enter__(self) -> RunProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def update(self, record: dict[str, Any]) -> None:
        for key in ("test_accuracy", "test_loss", "consensus_distance"):
            if record.get(key) is not None:
                self.latest[key] = record[key]
        self.latest["mb_sent"] = record.get("bytes_sent_per_node_mean", 0.0) / 1e6
        line = describe(self.latest)
        self.progress.update(self.task, completed=record["round"] + 1,
                             metrics=describe(self.latest, compact=True))
        done = record["round"] + 1
        if self.enabled and not self.live and (done % self.every == 0 or done == self.total):
            self.console.print(f"round {done}/{self.total}  {line}")
