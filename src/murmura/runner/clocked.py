"""A ``[clock]`` experiment run into a run directory: simulated seconds instead of rounds.

The simulation is built exactly as for a round-based run (:func:`build_simulation`: data,
model, algorithm, topology), then driven by the virtual clock (docs/clock.md): a
:class:`~murmura.clock.federated.ClockedFederation` when ``clock.mode`` is set (the algorithm
trains the clients, the mode is the server), a :class:`~murmura.clock.gossip.ClockedGossip`
when ``clock.protocol`` is (the algorithm trains the nodes, the protocol exchanges models over
the topology), a :class:`~murmura.clock.modest.ClockedModest` when ``clock.modest`` is (the
modest algorithm's samples, pinged, trained and aggregated in simulated time). It is
evaluated every ``clock.eval_every`` simulated seconds up to
``clock.until``; the top-level ``rounds`` is ignored. The run directory is laid out like a
round-based run's::

    RUN_DIR/
      config.toml     the resolved experiment, with [provenance]
      metrics.csv     one row per evaluation: time (simulated seconds) first, then the columns
                      a round-based run has (test_accuracy, bytes_sent_total, ...), then the
                      clock's (version, staleness_mean, exchanges, ...)
      metrics.jsonl   the same rows, appended as each evaluation ends (survives a kill)
      summary.json    status, rounds_done and total_rounds (here: evaluations done and
                      planned), final, simulation, seconds; and the clock's simulated_seconds,
                      events, staleness, busy_seconds, idle_seconds
      events.csv      the event log (murmura.clock.EventLog.read gives it back bit for bit)
      topology.json   the communication graph
      plots/curves.png  test accuracy against simulated seconds and against MB sent

There is no report.html (the report's figures are drawn against rounds) and no checkpoint: the
clock's event queue is not saved, so a clocked run cannot continue from the middle and
``--resume`` refuses it. Ctrl-C stops at the next evaluation (a second one at once) and writes
what was recorded so far, with status ``interrupted``.

>>> import tempfile
>>> from murmura.config import Experiment
>>> exp = Experiment.from_dict({
...     "data": {"dataset": "digits", "nodes": 4}, "model": "logreg",
...     "algorithm": {"name": "fedavg", "local_steps": 1},
...     "clock": {"until": 2.0, "eval_every": 1.0, "mode": {"name": "fedbuff", "K": 2}},
...     "output": {"plots": False}})
>>> result = run_clocked(exp, tempfile.mkdtemp() + "/run", progress=False)
>>> result.status, [r["time"] for r in result.history], result.summary["rounds_done"]
('completed', [1.0, 2.0], 2)
>>> sorted(p.name for p in result.run_dir.iterdir())  # doctest: +NORMALIZE_WHITESPACE
['config.toml', 'events.csv', 'metrics.csv', 'metrics.jsonl', 'summary.json',
 'topology.json']
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console

from murmura.clock.output import clock_summary, plot_curves, write_metrics
from murmura.config import ConfigError, Experiment
from murmura.config.schema import ClockConfig
from murmura.metrics.history import History, plain
from murmura.runner.loggers import check_loggers, make_loggers, numeric
from murmura.runner.progress import RunProgress, describe
from murmura.runner.run import RunError, RunResult, _StopFlag, build_simulation
from murmura.runner.rundir import RunDirectory


class _Stopped(Exception):
    """Ctrl-C was pressed: leave the clock's loop at this evaluation."""


class ClockProgress(RunProgress):
    """The run's progress bar counting evaluations; on a pipe, a plain line about every
    tenth of the run, with the simulated time."""

    def __init__(self, console: Console, name: str, until: float, total: int,
                 enabled: bool = True) -> None:
        super().__init__(console, name, total, 0, enabled)
        self.until = until

    def show(self, record: dict[str, Any], done: int) -> None:
        for key in ("test_accuracy", "test_loss", "consensus_distance"):
            if record.get(key) is not None:
                self.latest[key] = record[key]
        self.latest["mb_sent"] = record.get("bytes_sent_per_node_mean", 0.0) / 1e6
        self.progress.update(self.task, completed=done,
                             metrics=describe(self.latest, compact=True))
        if self.enabled and not self.live and (done % self.every == 0 or done == self.total):
            self.console.print(f"t {record['time']:g}/{self.until:g} s  {describe(self.latest)}")


def make_clock_runner(simulation: Any, clock: ClockConfig) -> Any:
    """``clock``'s runner around a built simulation: federated (a mode), gossip (a protocol)
    or MoDeST's protocol (``modest``)."""
    kwargs = clock.runner_kwargs()
    if clock.modest is not None:
        from murmura.clock.modest import ClockedModest

        rule = simulation.algorithm.communication  # the modest algorithm's (checked)
        return ClockedModest(simulation, rule.sample_size, rule.aggregators,
                             rule.success_fraction, min_models=rule.min_models, **kwargs)
    if clock.federated:
        from murmura.clock.federated import ClockedFederation

        return ClockedFederation(simulation, **kwargs)
    from murmura.clock.gossip import ClockedGossip

    return ClockedGossip(simulation, **kwargs)


def ledgers(simulation: Any) -> dict[str, float]:
    """The byte columns of a round-based record that a clock's record lacks (it has
    ``bytes_sent_total``), from the simulation's per-node ledgers."""
    sent, received, n = simulation.bytes_sent, simulation.bytes_received, simulation.num_nodes
    return {"bytes_sent_per_node_mean": float(sent.sum()) / n,
            "bytes_sent_per_node_max": float(sent.max()),
            "bytes_received_total": float(received.sum()),
            "bytes_received_per_node_mean": float(received.sum()) / n,
            "bytes_received_per_node_max": float(received.max())}


def run_clocked(
    experiment: Experiment,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    console: Console | None = None,
    command: list[str] | None = None,
    backend: str | None = None,
) -> RunResult:
    """Run a ``[clock]`` experiment into ``run_dir`` (default: a new folder under
    ``output.dir``); :func:`murmura.runner.run_experiment` calls this for such experiments."""
    console = console or Console(stderr=True)
    clock = experiment.clock
    if clock is None:
        raise ValueError("run_clocked needs an experiment with a [clock] section")
    if resume:
        where = Path(run_dir) if run_dir is not None else Path("RUN_DIR")
        raise RunError(
            f"{where} is a clocked run ([clock] in its config.toml) and cannot be resumed: the "
            "clock's event queue is not checkpointed, so a clocked run cannot continue from "
            f"the middle; run it again into a new directory: murmura run {where / 'config.toml'} "
            "--out NEW_DIR"
        )
    if (backend or experiment.engine.backend) != "local":
        raise RunError("a clocked run runs in one process: use the local backend (no "
                       "--backend dist)")
    check_loggers(experiment)
    if run_dir is not None:
        try:
            RunDirectory.check_free(run_dir)
        except FileExistsError as error:
            raise RunError(str(error)) from None
    # Built before the run directory exists, so a missing dataset leaves no empty run behind.
    try:
        simulation = build_simulation(experiment, "local")
        runner = make_clock_runner(simulation, clock)
    except ConfigError:
        raise
    except (ValueError, TypeError, OSError, ImportError, RuntimeError) as error:
        raise RunError(f"cannot build the simulation: {error}") from None
    try:
        directory = RunDirectory.create(experiment, run_dir, command)
    except FileExistsError as error:
        raise RunError(str(error)) from None
    out = directory.path
    directory.write_topology(simulation.topology, simulation.algorithm, simulation.num_nodes)
    loggers = make_loggers(experiment, out)
    total = clock.evaluations()

    def summary(status: str, records: list[dict[str, Any]], seconds: float,
                message: str | None = None) -> dict[str, Any]:
        values: dict[str, Any] = {
            "name": directory.experiment_name(), "status": status,
            "rounds_done": len(records), "total_rounds": total,
            "final": {k: plain(v) for k, v in records[-1].items()} if records else {},
            "simulation": simulation.summary(), "seconds": seconds,
        }
        if message:
            values["message"] = message
        return directory.save_summary({**values, **clock_summary(runner, records)})

    summary("running", [], 0.0)
    display = ClockProgress(console, experiment.name, clock.until, total, enabled=progress)
    stop = _StopFlag()
    shown = 0

    def record_done(records: list[dict[str, Any]]) -> None:
        """Append the evaluations not yet written (the clock calls back before it appends a
        record, so the newest is written at the next evaluation, or at the end)."""
        nonlocal shown
        for record in records[shown:]:
            shown += 1
            directory.append_record(record)
            display.show(record, shown)
            for logger in loggers:
                logger.log(numeric(record), shown - 1)

    def callback(run: Any) -> dict[str, float]:
        record_done(run.records)
        if stop.requested:
            raise _Stopped
        return ledgers(simulation)

    status, message = "running", None
    start = time.perf_counter()
    try:
        with stop, display:
            runner.run(clock.until, clock.eval_every, callback=callback)
            record_done(runner.records)
            simulation.check_finite()
        status = "completed"
    except (_Stopped, KeyboardInterrupt):
        status = "interrupted"
    except FloatingPointError as error:  # NonFiniteError: the records so far are kept
        status, message = "failed", str(error)
    except RuntimeError as error:  # e.g. an overflow inside torch: keep what was computed
        status, message = "failed", f"{type(error).__name__}: {error}"
    finally:
        for logger in loggers:
            logger.close()
    seconds = time.perf_counter() - start
    records = list(getattr(runner, "records", None) or [])
    if status != "completed":
        record_done(records)  # a second Ctrl-C may stop the clock between two evaluations
    runner.log.write(out)
    write_metrics(records, out / "metrics.csv")
    result = summary(status, records, seconds, message)
    if status == "interrupted":
        reached = f"simulated second {records[-1]['time']:g}" if records else "the start"
        console.print(f"stopped at {reached} of {clock.until:g}; a clocked run cannot be "
                      f"resumed: run it again with murmura run {out / 'config.toml'} --out "
                      "NEW_DIR")
    if experiment.output.plots and records:
        try:
            (out / "plots").mkdir(exist_ok=True)
            plot_curves(records, out / "plots" / "curves.png")
        except KeyboardInterrupt:  # the run itself is complete and written
            console.print("plots/curves.png not drawn (Ctrl-C)")
        except Exception as error:  # the metrics are written; a plot must not lose them
            console.print(f"[yellow]warning[/]: could not draw plots/curves.png: {error}")
    if status == "failed":
        console.print(f"[red]run failed[/]: {message}")
    return RunResult(out, status, History(records), result)


__all__ = ["ClockProgress", "ledgers", "make_clock_runner", "run_clocked"]
