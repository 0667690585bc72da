"""Sweeps: the product of settings times seeds, each into its own run directory, and a summary
with mean and spread over seeds.

>>> grid = parse_grid(["algorithm.lr=0.01,0.1", "model.hidden=[16,32],[64]"])
>>> grid
{'algorithm.lr': [0.01, 0.1], 'model.hidden': [[16, 32], [64]]}
>>> [label_of(s) for s in settings_product(grid)][:2]
['algorithm.lr=0.01,model.hidden=[16,32]', 'algorithm.lr=0.01,model.hidden=[64]']
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from murmura.config import ConfigError, Experiment, parse_value

SUMMARY_METRICS = {
    "test_accuracy": "acc x̄",
    "node_accuracy_mean": "node acc",
    "mb_sent_per_node": "MB/node",
    "seconds": "seconds",
}
MAX_KIND_METRICS = 6  # a kind's own final numbers shown beside the swarm's


def summary_metrics(runs: list[SweepRun]) -> dict[str, str]:
    """The columns of a sweep's summary: a swarm's :data:`SUMMARY_METRICS`; for a sweep of
    another kind, those its runs report (and the time) and then the kind's own final numbers
    (regret, returns, ...), at most :data:`MAX_KIND_METRICS`, in the order the runs wrote them."""
    if all(r.kind == "swarm" for r in runs):
        return dict(SUMMARY_METRICS)
    done = [r for r in runs if r.status == "completed"]
    metrics = {k: t for k, t in SUMMARY_METRICS.items()
               if k == "seconds" or any(_metric(r, k) is not None for r in done)}
    own: list[str] = []
    for run in done:
        own += [k for k, v in run.final.items() if k not in own and k not in ("round", "seed")
                and k not in metrics and isinstance(v, (int, float)) and not isinstance(v, bool)]
    metrics.update({k: k for k in own[:MAX_KIND_METRICS]})
    return metrics


def split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets and quotes: ``[16,32],[64]`` -> two values."""
    parts, depth, quote, current = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        current += ch
    parts.append(current)
    return [p.strip() for p in parts]


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    problems = []
    for item in items:
        key, sep, raw = item.partition("=")
        values = [v for v in split_top_level(raw)] if sep else []
        if not sep or not key.strip() or not values or any(v == "" for v in values):
            problems.append(
                f"--grid {item!r}: expected key=value1,value2,... e.g. algorithm.lr=0.01,0.1"
            )
            continue
        if key.strip() in grid:
            problems.append(f"--grid {key.strip()!r} given twice; list all its values once")
        grid[key.strip()] = [parse_value(v) for v in values]
    if problems:
        raise ConfigError(problems)
    return grid


def parse_seeds(text: str) -> list[int]:
    if not text.strip():
        raise ConfigError(["--seeds is empty: give seeds separated by commas, e.g. --seeds 0,1,2"])
    try:
        seeds = [int(s) for s in split_top_level(text)]
    except ValueError:
        raise ConfigError([f"--seeds {text!r}: expected integers separated by commas, "
                           "e.g. --seeds 0,1,2"]) from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError([f"--seeds {text!r}: seeds must be distinct integers >= 0"])
    return seeds


def settings_product(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":")) if not isinstance(value, str) else value


def label_of(setting: dict[str, Any]) -> str:
    return ",".join(f"{k}={_compact(v)}" for k, v in setting.items()) or "base"


def _override(key: str, value: Any) -> str:
    import tomli_w

    text = tomli_w.dumps({"v": value}).strip()
    return f"{key}={text[len('v = '):]}"


@dataclass
class SweepRun:
    setting: dict[str, Any]
    seed: int
    run_dir: Path
    status: str = "pending"
    final: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    message: str = ""
    kind: str = "swarm"


def plan_sweep(
    experiment: Experiment, grid: dict[str, list[Any]], seeds: list[int], out: Path
) -> list[tuple[Experiment, SweepRun]]:
    """Every (setting, seed) as a validated experiment, before anything runs: a typo in the
    third value of a grid fails now, not an hour in."""
    planned = []
    problems = []
    for setting in settings_product(grid):
        label = label_of(setting)
        overrides = [_override(k, v) for k, v in setting.items()]
        for seed in seeds:
            try:
                exp = experiment.with_overrides([*overrides, f"seed={seed}"])
                exp = exp.model_copy(update={"name": f"{experiment.name}[{label}] seed {seed}"})
                exp.check()
            except ConfigError as error:
                problems += [f"{label}, seed {seed}: {p}" for p in error.problems]
                continue
            folder = out / _folder_name(label) / f"seed{seed}"
            kind = "swarm" if exp.kind is None else exp.kind.name
            planned.append((exp, SweepRun(setting, seed, folder, kind=kind)))
    if problems:
        raise ConfigError(problems)
    return planned


def _folder_name(label: str) -> str:
    """A folder name for a setting; labels that had to be changed or cut get a hash of the
    full label, so two settings never share a folder."""
    import hashlib
    import re

    name = re.sub(r"[^A-Za-z0-9.=,_-]+", "_", label)
    if name != label or len(name) > 100:
        digest = hashlib.sha1(label.encode()).hexdigest()[:8]
        name = f"{name[:100]}-{digest}"
    return name


def _run_one(exp_dict: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """Worker body (also used in-process): never raises, reports failure in the result."""
    from murmura.runner.run import RunError, run_experiment

    exp = Experiment.from_dict(exp_dict)
    try:
        result = run_experiment(exp, run_dir, progress=False, console=Console(quiet=True))
    except KeyboardInterrupt:
        return {"status": "interrupted", "final": {}, "seconds": 0.0, "message": "Ctrl-C"}
    except (ConfigError, RunError) as error:
        return {"status": "failed", "final": {}, "seconds": 0.0, "message": str(error)}
    except Exception as error:  # one broken run must not lose the sweep's finished ones
        return {"status": "failed", "final": {}, "seconds": 0.0,
                "message": f"{type(error).__name__}: {error}"}
    return {
        "status": result.status,
        "final": result.final,
        "seconds": float(result.summary.get("seconds", 0.0)),
        "message": result.summary.get("message", ""),
    }


def run_sweep(
    experiment: Experiment,
    grid: dict[str, list[Any]],
    seeds: list[int],
    out: str | Path,
    *,
    workers: int = 1,
    console: Console | None = None,
) -> list[SweepRun]:
    """Run every (setting, seed); write ``out/sweep.csv`` (one row per run) and
    ``out/sweep_summary.json`` (mean and standard deviation over seeds per setting)."""
    console = console or Console(stderr=True)
    out = Path(out)
    planned = plan_sweep(experiment, grid, seeds, out)
    from murmura.runner.run import RunError

    existing = [run.run_dir for _, run in planned if run.run_dir.exists()]
    if (out / "sweep.csv").exists():
        existing.insert(0, out / "sweep.csv")
    if existing:
        raise RunError(f"{existing[0]} already exists: sweep into a new --out folder (or "
                       "delete it)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunError(f"cannot create the sweep folder {out}: {error.strerror}") from None
    runs = [run for _, run in planned]
    console.print(f"sweep: {len(runs)} runs ({len(runs) // len(seeds)} settings x "
                  f"{len(seeds)} seeds) into {out}")
    try:
        if workers <= 1:
            for index, (exp, run) in enumerate(planned, 1):
                _finish(run, _run_one(exp.to_dict(), str(run.run_dir)), console, index,
                        len(runs))
                if run.status == "interrupted":
                    raise KeyboardInterrupt
        else:
            # spawn: a forked child would inherit torch's thread pools in an undefined state
            pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
            try:
                futures = {
                    pool.submit(_run_one, exp.to_dict(), str(run.run_dir)): run
                    for exp, run in planned
                }
                for index, future in enumerate(as_completed(futures), 1):
                    _finish(futures[future], future.result(), console, index, len(runs))
                    if futures[future].status == "interrupted":
                        raise KeyboardInterrupt
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    except KeyboardInterrupt:
        write_sweep_files(runs, out)
        console.print(summary_table(runs))
        console.print(f"sweep stopped by Ctrl-C: finished runs are summarized in {out}; an "
                      "interrupted run continues with murmura run --resume RUN_DIR")
        raise
    write_sweep_files(runs, out)
    console.print(summary_table(runs))
    return runs


def _finish(run: SweepRun, result: dict[str, Any], console: Console, i: int, n: int) -> None:
    run.status = result["status"]
    run.final = result["final"]
    run.seconds = result["seconds"]
    run.message = result.get("message", "")
    acc = run.final.get("test_accuracy")
    shown = f"{acc:.2%}" if isinstance(acc, float) else "-"
    note = f" ({run.message})" if run.status == "failed" else ""
    console.print(f"[{i}/{n}] {label_of(run.setting)} seed {run.seed}: {run.status}, "
                  f"acc {shown}, {run.seconds:.1f} s{note}")


def _metric(run: SweepRun, key: str) -> float | None:
    if key == "seconds":
        return run.seconds
    if key == "mb_sent_per_node":
        value = run.final.get("bytes_sent_per_node_mean")
        return None if value is None else value / 1e6
    value = run.final.get(key)
    return float(value) if isinstance(value, (int, float)) else None


def summarize(runs: list[SweepRun]) -> list[dict[str, Any]]:
    """Per setting: runs, completed runs, and mean/std over seeds of each summary metric."""
    groups: dict[str, list[SweepRun]] = {}
    for run in runs:
        groups.setdefault(label_of(run.setting), []).append(run)
    rows = []
    for label, members in groups.items():
        row: dict[str, Any] = {"setting": label, **members[0].setting, "runs": len(members),
                               "completed": sum(r.status == "completed" for r in members)}
        for key in summary_metrics(runs):
            values = [v for r in members if r.status == "completed"
                      for v in [_metric(r, key)] if v is not None]
            row[f"{key}_mean"] = statistics.fmean(values) if values else None
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else (
                0.0 if values else None)
        rows.append(row)
    return rows


def write_sweep_files(runs: list[SweepRun], out: Path) -> None:
    import csv

    keys = sorted({k for r in runs for k in r.setting})
    metrics = summary_metrics(runs)
    with (out / "sweep.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([*keys, "seed", "status", *metrics, "run_dir"])
        for r in runs:
            writer.writerow([_compact(r.setting.get(k)) for k in keys] + [r.seed, r.status]
                            + [_metric(r, m) for m in metrics] + [str(r.run_dir)])
    (out / "sweep_summary.json").write_text(
        json.dumps({"settings": summarize(runs)}, indent=2, default=str) + "\n"
    )


def _mean_std(row: dict[str, Any], key: str, percent: bool) -> str:
    mean, std = row[f"{key}_mean"], row[f"{key}_std"]
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    scale = 100 if percent else 1
    unit = "%" if percent else ""
    return f"{scale * mean:.2f} ± {scale * std:.2f}{unit}"


def summary_table(runs: list[SweepRun]) -> Table:
    table = Table(title="sweep summary (mean ± std over seeds)")
    table.add_column("setting")
    table.add_column("runs", justify="right")
    metrics = summary_metrics(runs)
    for title in metrics.values():
        table.add_column(title, justify="right")
    for row in summarize(runs):
        table.add_row(
            row["setting"], f"{row['completed']}/{row['runs']}",
            *(_mean_std(row, k, percent=k.endswith("accuracy") or k.endswith("accuracy_mean"))
              for k in metrics),
        )
    return table


__all__ = ["SweepRun", "parse_grid", "parse_seeds", "plan_sweep", "run_sweep", "summarize",
           "summary_metrics"]
