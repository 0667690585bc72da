"""The event log: what happened, to whom, when, in processing order; written to a run
directory as CSV, read back, replayed, and summarized.

Columns (one row per processed event): ``time`` (simulated seconds), ``kind`` (an
:class:`~murmura.clock.EventKind` name), ``node`` (-1 for the server), ``version`` (the model
version the event concerns, -1 if none), ``staleness`` (server versions between a client's
start and its update's arrival), ``nbytes`` (bytes sent), ``duration`` (seconds of busy work
that ended with this event: a task's compute, a transfer; 0 otherwise) and ``sequence`` (the
event's queue sequence number). Times are written with 17 significant digits, so a log read
back is bit-identical.

>>> import torch
>>> from murmura.clock import EventKind, EventLog
>>> log = EventLog()
>>> log.record(torch.tensor([1.5, 2.0]), EventKind.UPLOAD_ARRIVAL, torch.tensor([0, 1]),
...            version=torch.tensor([0, 0]), staleness=torch.tensor([0, 1]), nbytes=400,
...            sequence=torch.tensor([4, 5]))
>>> log.staleness_counts()
{0: 1, 1: 1}
>>> [(e.time, e.node) for e in log.replay()]
[(1.5, 0), (2.0, 1)]
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from murmura.clock.availability import Availability
from murmura.clock.events import Event, EventKind, event_kind

__all__ = ["COLUMNS", "EventLog"]

COLUMNS = ("time", "kind", "node", "version", "staleness", "nbytes", "duration", "sequence")
_FLOAT = {"time", "duration"}


def _as_list(value: Any, count: int, name: str, kind: type = int) -> list:
    """One Python number per event (``kind``: int or float) from a tensor or a scalar."""
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        if value.numel() != count:
            raise ValueError(f"{name} must be one value or one per event ({count}), got "
                             f"{value.numel()}")
        if value.dtype.is_floating_point != (kind is float):
            value = value.to(torch.float64 if kind is float else torch.int64)
        return value.reshape(-1).tolist()
    scalar = value.item() if isinstance(value, torch.Tensor) else value
    return [kind(scalar)] * count


class EventLog:
    """An append-only table of processed events (see the module docstring for the columns)."""

    def __init__(self) -> None:
        self._cols: dict[str, list] = {c: [] for c in COLUMNS}

    def __len__(self) -> int:
        return len(self._cols["time"])

    def record(
        self,
        time: torch.Tensor | float,
        kind: torch.Tensor | EventKind | int,
        node: torch.Tensor | int,
        *,
        version: torch.Tensor | int = -1,
        staleness: torch.Tensor | int = 0,
        nbytes: torch.Tensor | int = 0,
        duration: torch.Tensor | float = 0.0,
        sequence: torch.Tensor | int = -1,
    ) -> None:
        """Append one row per event; every argument is one value or one per event."""
        times = torch.as_tensor(time, dtype=torch.float64).reshape(-1).tolist()
        count = len(times)
        if isinstance(kind, torch.Tensor) and kind.dim() > 0:
            kinds = _as_list(kind, count, "kind")
            if kinds and (min(kinds) < 0 or max(kinds) >= len(EventKind)):
                raise ValueError(f"kind must hold EventKind values 0..{len(EventKind) - 1}")
        else:
            kinds = [int(event_kind(kind))] * count
        cols = self._cols
        cols["time"].extend(times)
        cols["kind"].extend(kinds)
        for name, value in (("node", node), ("version", version), ("staleness", staleness),
                            ("nbytes", nbytes), ("sequence", sequence)):
            cols[name].extend(_as_list(value, count, name))
        cols["duration"].extend(_as_list(duration, count, "duration", float))

    def columns(self) -> dict[str, torch.Tensor]:
        """The log as tensors (``kind`` as EventKind values)."""
        out = {}
        for name in COLUMNS:
            values = self._cols[name]
            if name == "kind":
                out[name] = torch.tensor(values, dtype=torch.int64)
            else:
                dtype = torch.float64 if name in _FLOAT else torch.int64
                out[name] = torch.tensor(values, dtype=dtype)
        return out

    def rows(self) -> list[tuple]:
        """Every row as a tuple in :data:`COLUMNS` order (``kind`` as its lower-case name),
        for exact comparisons."""
        names = [k.name.lower() for k in EventKind]
        cols = [self._cols[c] if c != "kind" else [names[k] for k in self._cols[c]]
                for c in COLUMNS]
        return list(zip(*cols))

    def replay(self) -> Iterator[Event]:
        """The logged events, in the order they were processed."""
        for t, k, n, v, s, b, d, q in self.rows():
            yield Event(t, EventKind[k.upper()], n, q,
                        {"version": v, "staleness": s, "nbytes": b, "duration": d})

    def write(self, run_dir: str | Path, name: str = "events.csv") -> Path:
        """Write the log as CSV into ``run_dir`` (created if needed); returns the file."""
        path = Path(run_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            f.write(",".join(COLUMNS) + "\n")
            f.writelines(f"{t!r},{k},{n},{v},{s},{b},{d!r},{q}\n"
                         for t, k, n, v, s, b, d, q in self.rows())
        return path

    @classmethod
    def read(cls, path: str | Path) -> EventLog:
        """Read a log written by :meth:`write` (columns checked)."""
        p = Path(path)
        if not p.exists():
            raise ValueError(f"event log {p} does not exist")
        log = cls()
        with open(p, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or tuple(header) != COLUMNS:
                raise ValueError(f"{p}: expected the header {','.join(COLUMNS)}, got {header}")
            for line, row in enumerate(reader, start=2):
                if len(row) != len(COLUMNS):
                    raise ValueError(f"{p}:{line}: expected {len(COLUMNS)} fields, got {len(row)}")
                try:
                    for name, value in zip(COLUMNS, row):
                        if name == "kind":
                            log._cols[name].append(int(event_kind(value)))
                        elif name in _FLOAT:
                            log._cols[name].append(float(value))
                        else:
                            log._cols[name].append(int(value))
                except ValueError as e:
                    raise ValueError(f"{p}:{line}: {e}") from None
        return log

    def staleness_counts(self, kind: EventKind | int | str = EventKind.UPLOAD_ARRIVAL
                         ) -> dict[int, int]:
        """How many updates arrived with each staleness (rows of ``kind``), sorted."""
        wanted = int(event_kind(kind))
        counts: dict[int, int] = {}
        for k, s in zip(self._cols["kind"], self._cols["staleness"]):
            if k == wanted:
                counts[s] = counts.get(s, 0) + 1
        return dict(sorted(counts.items()))

    def busy_time(self, num_nodes: int) -> torch.Tensor:
        """Seconds each client spent computing or transferring (the ``duration`` column)."""
        cols = self.columns()
        keep = cols["node"] >= 0
        out = torch.zeros(int(num_nodes), dtype=torch.float64)
        nodes = cols["node"][keep]
        if nodes.numel() and int(nodes.max()) >= num_nodes:
            raise ValueError(f"the log has node {int(nodes.max())}; num_nodes must exceed it")
        return out.index_add_(0, nodes, cols["duration"][keep])

    def idle_time(self, availability: Availability, num_nodes: int, horizon: float,
                  start: float = 0.0) -> torch.Tensor:
        """Seconds each client was online but neither computing nor transferring within
        ``[start, horizon)``: online time minus busy time (work still in flight at the
        horizon is not in the log, so it counts as idle)."""
        online = availability.online_time(torch.arange(int(num_nodes)), start, horizon)
        return (online - self.busy_time(num_nodes)).clamp_min(0.0)
