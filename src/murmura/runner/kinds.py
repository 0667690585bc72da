"""Experiment kinds: what ``murmura run`` runs, found by name like every other component.

An experiment's top-level ``kind`` (default ``"swarm"``: a simulated swarm, the rounds of an
algorithm over nodes) picks an entry of :data:`KINDS`. Every other kind is a tool a
practitioner uses around federated training (an online optimizer, a boosted learner, ...),
and runs into the same run directory: ``config.toml``, ``metrics.jsonl``, ``metrics.csv``,
``summary.json``, plots and ``report.html``, so ``murmura compare``, ``sweep`` and
``report`` work on it.

A kind is a function ``fn(context, **params)`` that yields one record (a dict with a
``"round"`` key: a step, a stage, an episode) at a time, and may ``return`` a dict that joins
the run's ``summary.json`` under ``"simulation"``. ``params`` are the ``[kind]`` table's other
keys, checked against the function's signature like an algorithm's; ``context`` is a
:class:`KindContext`. The runner owns the folder, the progress display (the experiment's
``rounds`` is the display's length), Ctrl-C and failures: what was yielded stays written.

    kind = "my_tool"                   # or: [kind]  name = "my_tool"  steps = 50

>>> from murmura.runner.kinds import KINDS
>>> @KINDS.register("count_up", "a toy kind: one record per step", overwrite=True)
... def count_up(context, steps: int = 3):
...     for step in range(steps):
...         yield {"round": step, "value": float(step)}
...     return {"steps": steps}
>>> [r["value"] for r in count_up(None)]
[0.0, 1.0, 2.0]
>>> "count_up" in KINDS.names()
True
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from murmura.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from rich.console import Console

    from murmura.config import Experiment

KINDS: Registry = Registry("kind")


@dataclass(frozen=True)
class KindContext:
    """What a kind may know: the experiment (its ``seed``, ``rounds``, ``data``, ``model``,
    ``output``...), the run directory it writes into (extra files of its own go there) and the
    console."""

    experiment: Experiment
    run_dir: Path
    console: Console

    @property
    def seed(self) -> int:
        return int(self.experiment.seed)


@KINDS.register("swarm", "a simulated swarm: an algorithm's rounds over nodes (the default)")
def swarm(context: KindContext) -> None:
    """The runner's own path (murmura.runner.run): it never calls this entry."""
    raise AssertionError("the swarm kind is run by murmura.runner.run itself")


def run_kind(experiment: Experiment, run_dir: str | Path | None, *, resume: bool,
             progress: bool, console: Console, command: list[str] | None) -> Any:
    """Run a kind other than ``swarm`` into a run directory; returns a ``RunResult``."""
    from murmura.metrics.history import History
    from murmura.runner.progress import RunProgress
    from murmura.runner.run import RunError, RunResult, write_figures
    from murmura.runner.rundir import RunDirectory

    choice = experiment.kind
    assert choice is not None
    name = choice.name
    if resume:
        raise RunError(f"a {name!r} run cannot be resumed (only swarm runs checkpoint): run it "
                       f"again with: murmura run {run_dir}/config.toml --out NEW_DIR")
    factory = KINDS.get(name)
    try:
        directory = RunDirectory.create(experiment, run_dir, command)
    except FileExistsError as error:
        raise RunError(str(error)) from None
    history, extras = History(), {}
    status, message = "running", None
    total = experiment.rounds
    display = RunProgress(console, experiment.name, total, 0, enabled=progress)
    start = time.perf_counter()
    try:
        with display:
            records = factory(KindContext(experiment, directory.path, console), **choice.params)
            while True:
                try:
                    record = next(records)
                except StopIteration as stop:
                    extras = dict(stop.value or {})
                    break
                if not isinstance(record, dict) or "round" not in record:
                    raise RunError(f"kind {name!r} yielded {record!r}: each record must be a "
                                   "dict with a 'round' key")
                history.append(record)
                directory.append_record(record)
                if record["round"] < total:
                    display.update(record)
        status = "completed"
    except KeyboardInterrupt:
        status = "interrupted"
    except RunError:
        raise
    except (ValueError, TypeError, RuntimeError, FloatingPointError, OSError) as error:
        status, message = "failed", f"{type(error).__name__}: {error}"
    seconds = time.perf_counter() - start
    directory.write_metrics_csv(history)
    info = {"kind": name, "kind_params": choice.params, **extras}
    summary = directory.write_summary(status, history, total, info, seconds, message)
    if experiment.output.plots or experiment.output.report:
        write_figures(directory.path, report=experiment.output.report, console=console)
    if status == "failed":
        console.print(f"[red]run failed[/]: {message}")
    return RunResult(directory.path, status, history, summary)


__all__ = ["KINDS", "KindContext", "run_kind"]
