"""A run directory: everything one run wrote, enough to resume it, plot it and compare it.

::

    RUN_DIR/
      config.toml          the resolved experiment, with [provenance] (murmura version, git commit)
      metrics.csv          one row per round (columns: murmura.metrics.COLUMNS)
      metrics.jsonl        the same rows, appended as each round ends (survives a kill)
      summary.json         status, rounds done, final metrics, what was simulated
      topology.json        the communication graph (for the topology plot)
      checkpoints/round_000010.safetensors   the swarm state after 10 rounds
      plots/*.png, report.html
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from murmura.config import ConfigError, Experiment
from murmura.metrics.history import COLUMNS, History, plain
from murmura.metrics.history import EVALUATED_COLUMNS as EVALUATED

CHECKPOINT = re.compile(r"round_(\d+)\.safetensors$")
MAX_DRAWN_EDGES = 20000


def git_commit() -> str | None:
    """The commit of the murmura source tree, when it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        result = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    commit = result.stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True, text=True, timeout=5, check=False,
    ).stdout.strip()
    return commit + ("-dirty" if dirty else "")


def provenance(command: list[str] | None = None) -> dict[str, Any]:
    from murmura import __version__

    info: dict[str, Any] = {
        "murmura_version": __version__,
        "torch_version": torch.__version__,
        "python": sys.version.split()[0],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    commit = git_commit()
    if commit:
        info["git_commit"] = commit
    if command:
        info["command"] = " ".join(command)
    return info


class RunDirectory:
    """Reads and writes one run's folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # ------------------------------------------------------------------ creation

    @classmethod
    def create(
        cls, experiment: Experiment, path: str | Path | None = None,
        command: list[str] | None = None,
    ) -> RunDirectory:
        """A new run directory: ``path`` itself (must be empty or absent), or a fresh
        ``<output.dir>/<name>-<timestamp>`` folder."""
        if path is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            base = Path(experiment.output.dir) / f"{_slug(experiment.name)}-{stamp}"
            target, k = base, 1
            while target.exists():
                k += 1
                target = base.with_name(f"{base.name}-{k}")
        else:
            target = Path(path)
            cls.check_free(target)
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise FileExistsError(
                f"cannot create the run directory {target}: {error.strerror}"
            ) from None
        run = cls(target)
        resolved = experiment.model_copy(update={"provenance": provenance(command)})
        again = (f"`murmura run --resume {target}` continues it" if experiment.clock is None
                 else f"a clocked run: `murmura run {target / 'config.toml'} --out NEW_DIR` "
                 "runs it again (it cannot be resumed)")
        (target / "config.toml").write_text(
            f"# resolved configuration of run {target.name}; {again}\n" + resolved.to_toml()
        )
        (target / "metrics.jsonl").write_text("")
        return run

    @staticmethod
    def check_free(path: str | Path) -> None:
        """A run may be written at ``path``: absent, or an empty folder."""
        target = Path(path)
        if target.exists() and not target.is_dir():
            raise FileExistsError(f"{target} is a file: give a folder for the run directory")
        if target.exists() and any(target.iterdir()):
            raise FileExistsError(
                f"{target} already exists and is not empty: choose another --out, or "
                f"continue that run with: murmura run --resume {target}"
            )

    @classmethod
    def open(cls, path: str | Path) -> RunDirectory:
        path = Path(path)
        if not (path / "config.toml").is_file():
            raise FileNotFoundError(
                f"{path} is not a run directory (no config.toml); pass a folder written by "
                "`murmura run`"
            )
        return cls(path)

    def experiment(self) -> Experiment:
        exp = Experiment.from_toml(self.path / "config.toml")
        return exp

    # ------------------------------------------------------------------ per round

    def append_record(self, record: dict[str, Any]) -> None:
        with (self.path / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps({k: plain(v) for k, v in record.items()}) + "\n")
            fh.flush()

    def rewrite_records(self, history: History) -> None:
        with (self.path / "metrics.jsonl").open("w") as fh:
            for record in history:
                fh.write(json.dumps({k: plain(v) for k, v in record.items()}) + "\n")

    def records(self) -> list[dict[str, Any]]:
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return []
        rows = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill
                break
        return rows

    def write_metrics_csv(self, history: History) -> Path:
        keys = [k for k in COLUMNS if any(k in r for r in history)]
        keys += sorted({k for r in history for k in r} - set(keys))
        ordered = History([{k: r.get(k) for k in keys} for r in history])
        return ordered.to_csv(self.path / "metrics.csv") if len(history) else self._empty_csv()

    def _empty_csv(self) -> Path:
        path = self.path / "metrics.csv"
        path.write_text("round\n")
        return path

    # ------------------------------------------------------------------ summary and graph

    def write_summary(
        self, status: str, history: History, total_rounds: int, simulation: dict[str, Any],
        seconds: float, message: str | None = None,
    ) -> dict[str, Any]:
        summary = {
            "name": self.experiment_name(),
            "status": status,
            "rounds_done": len(history),
            "total_rounds": total_rounds,
            "final": final_metrics(history),
            "simulation": simulation,
            "seconds": seconds,
        }
        if message:
            summary["message"] = message
        return self.save_summary(summary)

    def save_summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Write ``summary.json`` as :meth:`write_summary` does (a clocked run builds its own
        summary, with the same keys and the clock's)."""
        (self.path / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        return summary

    def summary(self) -> dict[str, Any]:
        path = self.path / "summary.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def experiment_name(self) -> str:
        try:
            import tomllib
        except ImportError:  # pragma: no cover
            import tomli as tomllib
        try:
            return str(tomllib.loads((self.path / "config.toml").read_text()).get("name", ""))
        except (OSError, ValueError):
            return self.path.name

    def write_topology(self, topology: Any, algorithm: Any, num_nodes: int) -> None:
        info: dict[str, Any] = {"num_nodes": num_nodes, "time_varying": False, "edges": None}
        if topology is None:
            server = algorithm.communication.__class__.__name__ == "ServerAverage"
            info.update(kind="server" if server else "none",
                        label="server (star)" if server else "no communication")
        else:
            mixing = topology.mixing_at(0)
            matrix = mixing.to_scipy().tocoo()
            keep = matrix.row < matrix.col
            rows, cols = matrix.row[keep], matrix.col[keep]
            info.update(kind="graph", label=topology.label, time_varying=topology.time_varying)
            if len(rows) <= MAX_DRAWN_EDGES:
                info["edges"] = [[int(i), int(j)] for i, j in zip(rows, cols)]
            info["num_edges"] = int(len(rows))
        (self.path / "topology.json").write_text(json.dumps(info) + "\n")

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    def checkpoints(self) -> list[tuple[int, Path]]:
        if not self.checkpoint_dir.is_dir():
            return []
        found = []
        for p in self.checkpoint_dir.iterdir():
            m = CHECKPOINT.search(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    def save_checkpoint(self, simulation: Any, keep: int) -> Path:
        """Save ``simulation.state_dict()`` as ``checkpoints/round_<rounds done>``."""
        return self.save_state(simulation.round, *simulation.state_dict(), keep=keep)

    def save_state(
        self, rounds_done: int, tensors: dict[str, torch.Tensor], values: dict[str, Any],
        keep: int,
    ) -> Path:
        self.checkpoint_dir.mkdir(exist_ok=True)
        path = self.checkpoint_dir / f"round_{rounds_done:06d}.safetensors"
        partial = path.with_suffix(".partial")
        cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        values = {**values, "history": [{k: plain(v) for k, v in r.items()}
                                        for r in values["history"]]}
        save_file(cpu, str(partial), metadata={"murmura": json.dumps(values)})
        os.replace(partial, path)  # a kill mid-write never leaves a half checkpoint behind
        for _, old in self.checkpoints()[:-keep]:
            old.unlink(missing_ok=True)
        return path

    def load_checkpoint(self, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        from safetensors import safe_open

        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
        if "murmura" not in metadata:
            raise ValueError(f"{path} is not a murmura checkpoint (no murmura metadata)")
        return tensors, json.loads(metadata["murmura"])


def final_metrics(history: History) -> dict[str, Any]:
    """The last round's record, with the evaluation columns of the last evaluated round."""
    if not len(history):
        return {}
    final = {k: v for k, v in history.final.items() if k not in EVALUATED}
    for record in reversed(history.records):
        if any(record.get(k) is not None for k in EVALUATED):
            final.update({k: record[k] for k in EVALUATED if k in record})
            final["evaluated_round"] = record["round"]
            break
    return {k: plain(v) for k, v in final.items()}


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "run"


def elapsed(start: float) -> float:
    return time.perf_counter() - start


__all__ = ["ConfigError", "RunDirectory", "final_metrics", "git_commit", "provenance"]
