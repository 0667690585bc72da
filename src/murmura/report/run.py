"""One run directory (what ``murmura run`` writes) read into a :class:`Run`."""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["ReportError", "Run", "load_run"]


class ReportError(ValueError):
    """A folder is not a run directory, or one of its files cannot be read."""


@dataclass
class Run:
    """A run directory's contents.

    ``metrics`` maps each column of ``metrics.csv`` to one value per row: a float, ``None`` where
    the cell is empty or not finite (evaluation columns on rounds that were not evaluated), or the
    text itself for non-numeric columns such as ``communicated``. Missing files give empty dicts.
    """

    name: str
    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    metrics: dict[str, list[Any]]
    topology: dict[str, Any]

    @property
    def num_rows(self) -> int:
        return max((len(v) for v in self.metrics.values()), default=0)

    @property
    def status(self) -> str:
        return str(self.summary.get("status") or "unknown")

    @property
    def simulation(self) -> dict[str, Any]:
        sim = self.summary.get("simulation")
        return sim if isinstance(sim, dict) else {}

    @property
    def final_metrics(self) -> dict[str, Any]:
        final = self.summary.get("final")
        return final if isinstance(final, dict) else {}

    def column(self, name: str) -> list[Any]:
        """The column's values, all ``None`` when the file has no such column."""
        if name == "round" and "round" not in self.metrics:
            return [float(i) for i in range(self.num_rows)]
        values = self.metrics.get(name)
        return list(values) if values is not None else [None] * self.num_rows

    def series(self, y: str, x: str = "round") -> tuple[list[float], list[float]]:
        """``(xs, ys)`` over the rows where both columns hold a finite number."""
        pairs = [
            (a, b)
            for a, b in zip(self.column(x), self.column(y))
            if _is_number(a) and _is_number(b)
        ]
        return [a for a, _ in pairs], [b for _, b in pairs]

    def has(self, name: str) -> bool:
        """True when the column holds at least one number."""
        return any(_is_number(v) for v in self.metrics.get(name, ()))

    def last(self, name: str) -> float | None:
        """The column's last number (its value at the last evaluated round, for evaluation
        columns)."""
        for value in reversed(self.metrics.get(name, ())):
            if _is_number(value):
                return value
        return None

    def final(self, name: str) -> float | None:
        """``summary.json``'s final value of a metric, else the column's last number."""
        value = self.final_metrics.get(name)
        if _is_number(value):
            return float(value)
        return self.last(name)

    @property
    def kind(self) -> str:
        """The experiment's kind (``swarm`` unless ``config.toml`` names another)."""
        kind = self.config.get("kind")
        return _first_str(kind.get("name") if isinstance(kind, dict) else kind) or "swarm"

    @property
    def algorithm(self) -> str | None:
        return _first_str(self.simulation.get("algorithm"), _table(self.config, "algorithm"))

    @property
    def topology_label(self) -> str | None:
        kind = self.topology.get("kind")
        if kind in ("server", "none") and not self.simulation.get("topology"):
            return str(kind)
        return _first_str(
            self.simulation.get("topology"),
            self.topology.get("label"),
            _table(self.config, "topology"),
        )

    @property
    def num_nodes(self) -> int | None:
        data = self.config.get("data")
        for value in (
            self.simulation.get("num_nodes"),
            self.topology.get("num_nodes"),
            data.get("nodes") if isinstance(data, dict) else None,
        ):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return int(value)
        return None

    @property
    def rounds_done(self) -> int:
        value = self.summary.get("rounds_done")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        return self.num_rows

    @property
    def total_rounds(self) -> int | None:
        for value in (self.summary.get("total_rounds"), self.config.get("rounds")):
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return None

    @property
    def seconds(self) -> float | None:
        value = self.summary.get("seconds")
        return float(value) if _is_number(value) else self.last("wall_seconds")


def load_run(run_dir: str | os.PathLike[str]) -> Run:
    """Read a run directory; :class:`ReportError` names the folder and what it lacks."""
    path = Path(run_dir)
    if not path.exists():
        raise ReportError(f"{path} does not exist (expected a run directory from `murmura run`)")
    if not path.is_dir():
        raise ReportError(
            f"{path} is not a directory: pass the run directory that holds metrics.csv"
        )
    metrics_file, summary_file = path / "metrics.csv", path / "summary.json"
    # A run that failed before its first round has a summary but no metrics: still reportable.
    if not metrics_file.is_file() and not summary_file.is_file():
        message = (
            f"{path} is not a run directory: no metrics.csv (expected what `murmura run` writes: "
            "config.toml, metrics.csv, summary.json, topology.json)"
        )
        inside = sorted(
            p.name for p in path.iterdir() if p.is_dir() and (p / "metrics.csv").is_file()
        )
        if inside:
            shown = ", ".join(inside[:5]) + (", ..." if len(inside) > 5 else "")
            message += f"; it holds run directories ({shown}): pass one of them"
        raise ReportError(message)

    config = _read_toml(path / "config.toml")
    summary = _read_json(summary_file)
    topology = _read_json(path / "topology.json")
    metrics = _read_metrics(metrics_file)
    # metrics.jsonl gains a line every round; metrics.csv is rewritten at checkpoints and at the
    # end, so a killed run's jsonl is the longer, truer record
    appended = _read_jsonl(path / "metrics.jsonl")
    if len(appended.get("round", [])) > len(metrics.get("round", [])):
        metrics = appended
    name = _first_str(config.get("name"), summary.get("name")) or path.resolve().name
    return Run(name, path, config, summary, metrics, topology)


def _read_toml(file: Path) -> dict[str, Any]:
    if not file.is_file():
        return {}
    try:
        with file.open("rb") as fh:
            return tomllib.load(fh)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ReportError(f"{file}: not valid TOML ({err})") from err


def _read_json(file: Path) -> dict[str, Any]:
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReportError(f"{file}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise ReportError(f"{file}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_metrics(file: Path) -> dict[str, list[Any]]:
    if not file.is_file():
        return {}
    try:
        with file.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                return {}
            columns: dict[str, list[Any]] = {name: [] for name in header if name}
            for row in reader:
                if not row:
                    continue
                for i, name in enumerate(header):
                    if name:
                        columns[name].append(_cell(row[i] if i < len(row) else ""))
    except (csv.Error, UnicodeDecodeError) as err:
        raise ReportError(f"{file}: not a readable CSV file ({err})") from err
    return columns


def _read_jsonl(file: Path) -> dict[str, list[Any]]:
    if not file.is_file():
        return {}
    rows = []
    for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the last line of a killed run may be cut short
            break
    rows = [r for r in rows if isinstance(r, dict)]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return {k: [_cell(str(r[k])) if r.get(k) is not None else None for r in rows] for k in keys}


def _cell(text: str) -> Any:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else None


def _is_number(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _table(config: dict[str, Any], key: str) -> Any:
    table = config.get(key)
    return table.get("name") if isinstance(table, dict) else None


def _first_str(*values: Any) -> str | None:
    for value in values:
        if isinstance(value, str) and value:
            return value
    return None
