"""Run an experiment into a run directory: progress, checkpoints, clean stop, resume.

>>> import tempfile
>>> from murmura.config import Experiment
>>> exp = Experiment.from_dict({"rounds": 2, "data": {"dataset": "digits", "nodes": 4},
...                             "algorithm": {"name": "fedavg", "local_steps": 2},
...                             "output": {"plots": False, "report": False}})
>>> result = run_experiment(exp, tempfile.mkdtemp() + "/run", progress=False)
>>> result.status, len(result.history)
('completed', 2)
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from murmura.config import ConfigError, Experiment
from murmura.metrics.history import History
from murmura.runner.loggers import check_loggers, make_loggers, numeric
from murmura.runner.progress import RunProgress
from murmura.runner.rundir import RunDirectory, final_metrics


class RunError(RuntimeError):
    """A run could not start or continue (bad data, nothing to resume, ...); nothing written
    is lost."""


@dataclass
class RunResult:
    run_dir: Path
    status: str  # completed | interrupted | failed
    history: History
    summary: dict[str, Any]

    @property
    def final(self) -> dict[str, Any]:
        return self.summary.get("final", {})


def build_simulation(experiment: Experiment, backend: str | None = None, *,
                     engine_class: type | None = None, **engine_kwargs: Any) -> Any:
    """The experiment's data, model, algorithm and topology as a ready Simulation (sharded
    over the process group for ``backend="dist"``; ``engine_class`` and ``engine_kwargs``:
    another Simulation subclass, such as a real peer's ``murmura.net.PeerSimulation``)."""
    from murmura.algorithms import make_algorithm
    from murmura.data import federate
    from murmura.swarm import Evaluation, Simulation

    experiment.check()
    data_cfg = experiment.data
    partition = data_cfg.partition
    data = federate(
        data_cfg.dataset.name,
        num_nodes=data_cfg.nodes,
        partition=partition.name,
        seed=experiment.seed,
        root=data_cfg.root,
        dataset_params=data_cfg.dataset.params,
        local_test_fraction=data_cfg.local_test_fraction,
        **partition.params,
    )
    algorithm = make_algorithm(experiment.algorithm.name, **experiment.algorithm_params())
    topology = None
    if experiment.topology is not None:
        topology = experiment.build_topology(require_connected=algorithm.needs_connected)
    evaluation = experiment.evaluation
    engine = experiment.engine
    if engine.threads is not None:
        torch.set_num_threads(engine.threads)
    if engine_class is None and (backend or engine.backend) == "dist":
        from murmura.dist import ShardedSimulation as engine_class
    engine_class = engine_class or Simulation
    return engine_class(
        data,
        experiment.model.name,
        algorithm,
        topology,
        seed=experiment.seed,
        device=engine.device,
        model_kwargs=experiment.model.params,
        evaluation=Evaluation(evaluation.every, evaluation.node_samples,
                              evaluation.test_batch_size, evaluation.fewshot_shots,
                              evaluation.fewshot_method),
        chunk_size=engine.chunk_size,
        same_init=engine.same_init,
        fused=engine.fused,
        adversary=None if experiment.adversary is None else experiment.adversary.build(),
        task=None if experiment.task is None else experiment.task.build(),
        **engine_kwargs,
    )


def _identity(experiment: Experiment) -> dict[str, Any]:
    """The settings a checkpoint's numbers depend on (not where or how it is written)."""
    values = experiment.to_dict()
    for key in ("provenance", "output", "description", "name"):
        values.pop(key, None)
    values.get("engine", {}).pop("backend", None)
    values.get("engine", {}).pop("device", None)
    values.get("engine", {}).pop("threads", None)
    values.get("engine", {}).pop("chunk_size", None)
    return values


def _changed_settings(saved: dict[str, Any] | None, experiment: Experiment) -> list[str]:
    if saved is None:
        return []
    from murmura.runner.loggers import flat_config

    before, now = flat_config(saved), flat_config(_identity(experiment))
    return sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))


class _StopFlag:
    """First Ctrl-C: finish the round, checkpoint, write everything, stop. Second: stop now
    (the last checkpoint and every finished round are already on disk)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def run_experiment(
    experiment: Experiment,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    console: Console | None = None,
    command: list[str] | None = None,
    backend: str | None = None,
) -> RunResult:
    """Run ``experiment`` into ``run_dir`` (default: a new folder under ``output.dir``).

    With ``resume=True``, ``run_dir`` is an existing run: its config is used, its latest
    checkpoint restored, and the run continues to the same final metrics as an uninterrupted
    run (every random draw is keyed by seed, node, round and step).

    ``backend="dist"`` (default: ``engine.backend``) shards the nodes over the processes of a
    ``torchrun`` launch; every rank calls this function, rank 0 writes the run directory."""
    console = console or Console(stderr=True)
    experiment.check()
    if experiment.kind is not None and experiment.kind.name != "swarm":
        from murmura.runner.kinds import run_kind

        return run_kind(experiment, run_dir, resume=resume, progress=progress,
                        console=console, command=command)
    if experiment.clock is not None:  # simulated seconds, not rounds: murmura.runner.clocked
        from murmura.runner.clocked import run_clocked

        return run_clocked(experiment, run_dir, resume=resume, progress=progress,
                           console=console, command=command, backend=backend)
    backend = backend or experiment.engine.backend
    created_group = False
    if backend == "dist":
        from murmura.dist import init_from_environment

        try:
            created_group, device = init_from_environment(experiment.engine.device)
        except RuntimeError as error:
            raise RunError(str(error)) from None
        experiment = experiment.model_copy(
            update={"engine": experiment.engine.model_copy(update={"device": device})}
        )
    try:
        return _run(experiment, run_dir, resume, progress, console, command, backend)
    finally:
        if created_group:
            import torch.distributed as dist

            # every rank leaves together: a rank tearing its connections down while a peer
            # still finishes the last collective aborts the peer (gloo)
            dist.barrier()
            dist.destroy_process_group()


def _is_writer(backend: str) -> bool:
    if backend != "dist":
        return True
    import torch.distributed as dist

    return dist.get_rank() == 0


def _run(
    experiment: Experiment,
    run_dir: str | Path | None,
    resume: bool,
    progress: bool,
    console: Console,
    command: list[str] | None,
    backend: str,
) -> RunResult:
    writer = _is_writer(backend)  # in a sharded run only rank 0 writes and prints
    if not writer:
        console = Console(quiet=True)
        progress = False
    else:
        check_loggers(experiment)
    directory: RunDirectory | None = None
    if resume:
        if run_dir is None:
            raise RunError("resume needs the run directory to continue")
        directory = RunDirectory.open(run_dir)
    elif run_dir is not None and writer:
        try:
            RunDirectory.check_free(run_dir)
        except FileExistsError as error:
            raise RunError(str(error)) from None
    # Built before the run directory exists, so a missing dataset leaves no empty run behind.
    try:
        simulation = build_simulation(experiment, backend)
    except ConfigError:
        raise
    except (ValueError, TypeError, OSError, ImportError, RuntimeError) as error:
        raise RunError(f"cannot build the simulation: {error}") from None
    if not resume and writer:
        try:
            directory = RunDirectory.create(experiment, run_dir, command)
        except FileExistsError as error:
            raise RunError(str(error)) from None
    out = directory if writer else None  # where this process writes (None: nowhere)
    loggers = make_loggers(experiment, out.path) if out is not None else []

    total = experiment.rounds
    if resume:
        assert directory is not None
        checkpoints = directory.checkpoints()
        loaded, done, path = None, 0, None
        for candidate_round, candidate in reversed(checkpoints):
            try:
                loaded = directory.load_checkpoint(candidate)
                done, path = candidate_round, candidate
                break
            except Exception as error:  # a checkpoint cut short by a crash: try the one before
                console.print(
                    f"[yellow]warning[/]: skipping unreadable checkpoint {candidate}: {error}"
                )
        if loaded is not None:
            tensors, values = loaded
            changed = _changed_settings(values.get("experiment"), experiment)
            if changed:
                raise RunError(
                    f"{directory.path}/config.toml differs from the configuration its checkpoints "
                    f"were computed with ({', '.join(changed)}); resuming would mix two "
                    "experiments: restore those keys, or start a new run"
                )
            try:
                simulation.load_state_dict(tensors, values)
            except (ValueError, OSError) as error:
                raise RunError(f"cannot resume from {path}: {error}") from None
            console.print(f"resuming {directory.path} from round {done} of {total}")
        elif checkpoints:
            raise RunError(f"no readable checkpoint in {directory.checkpoint_dir}")
        else:
            console.print(f"{directory.path} has no checkpoint yet: starting it from round 0")
        if out is not None:
            out.rewrite_records(simulation.history)
        if simulation.round >= total:
            console.print(f"{directory.path} is already complete ({total} rounds)")
    if out is not None:
        out.write_topology(simulation.topology, simulation.algorithm, simulation.num_nodes)
    simulation.total_rounds = total
    every = experiment.output.checkpoint_every
    keep = experiment.output.keep_checkpoints
    status, message, mid_round = "running", None, False
    if out is not None:
        out.write_summary(status, simulation.history, total, simulation.summary(),
                          simulation.wall_seconds)

    def checkpoint() -> None:
        tensors, values = simulation.state_dict()  # collective in a sharded run
        values["experiment"] = _identity(experiment)
        if out is not None:
            out.save_state(simulation.round, tensors, values, keep=keep)
            # a killed run still shows its progress to `murmura report` and `compare`
            out.write_metrics_csv(simulation.history)
            out.write_summary("running", simulation.history, total, simulation.summary(),
                              simulation.wall_seconds)

    display = RunProgress(console, experiment.name, total, simulation.round, enabled=progress)
    try:
        with _StopFlag() as stop, display:
            while simulation.round < total:
                record = simulation.step(total)
                if out is not None:
                    out.append_record(record)
                display.update(record)
                metrics = numeric(record)
                for logger in loggers:
                    logger.log(metrics, record["round"])
                if every and simulation.round % every == 0 and simulation.round < total:
                    simulation.check_finite()  # never save a diverged state
                    checkpoint()
                if simulation.any_process(stop.requested):  # every rank stops at one round
                    break
            simulation.check_finite()
        status = "completed" if simulation.round >= total else "interrupted"
    except KeyboardInterrupt:
        # A second Ctrl-C may land mid-round: the state is half-updated, so it is not saved;
        # the last periodic checkpoint and every finished round's metrics remain.
        status, mid_round = "interrupted", True
    except FloatingPointError as error:  # NonFiniteError: the history so far is kept
        status, message = "failed", str(error)
    except RuntimeError as error:  # e.g. an overflow inside torch: keep what was computed
        status, message = "failed", f"{type(error).__name__}: {error}"
    finally:
        for logger in loggers:
            logger.close()
    # Written after the loop so that every path out (done, Ctrl-C, NaN) leaves a complete,
    # resumable folder.
    if status != "failed" and not mid_round:
        checkpoint()
    # the rounds' wall time, cumulative over the sessions of a resumed run
    seconds = simulation.wall_seconds
    summary: dict[str, Any] = {"status": status, "seconds": seconds}
    if out is not None:
        out.write_metrics_csv(simulation.history)
        summary = out.write_summary(
            status, simulation.history, total, simulation.summary(), seconds, message
        )
        if status == "interrupted":
            saved = out.checkpoints()[-1][0] if out.checkpoints() else 0
            console.print(
                f"stopped after round {simulation.round} of {total}; continue from round "
                f"{saved} with: murmura run --resume {out.path}"
            )
        if experiment.output.plots or experiment.output.report:
            write_figures(out.path, report=experiment.output.report, console=console)
        if status == "failed":
            console.print(f"[red]run failed[/]: {message}")
    path = directory.path if directory is not None else Path(run_dir or ".")
    return RunResult(path, status, simulation.history, summary)


def write_figures(run_dir: Path, *, report: bool = True, console: Console | None = None) -> None:
    """plots/*.png and report.html; a figure that fails is reported, never fatal to the run."""
    try:
        from murmura.report import build_report, make_plots
    except ImportError:  # pragma: no cover
        return
    try:
        if report:
            build_report(run_dir)
        else:
            make_plots(run_dir)
    except KeyboardInterrupt:  # the run itself is complete and written
        if console is not None:
            console.print(f"figures not drawn (Ctrl-C); draw them with: murmura report {run_dir}")
    except Exception as error:  # the metrics are written; a plotting problem must not lose them
        if console is not None:
            console.print(f"[yellow]warning[/]: could not draw the figures: {error}")


__all__ = ["RunError", "RunResult", "build_simulation", "final_metrics", "run_experiment"]
