"""The ``murmura`` command: run, sweep, demo, list, compare, report; keygen, node and launch
(murmura.net.commands)."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="murmura",
    help="Decentralized and federated learning experiments: one TOML file, one command.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

out_console = Console()
err_console = Console(stderr=True)

KINDS = {
    "algorithms": "ALGORITHMS",
    "topologies": "TOPOLOGIES",
    "datasets": "DATASETS",
    "partitions": "PARTITIONERS",
    "models": "MODELS",
    "weights": "MIXING",
    "aggregators": "AGGREGATORS",
    "pre-aggregators": "PREAGGREGATORS",
    "attacks": "ATTACKS",
    "compressors": "COMPRESSORS",
    "tasks": "TASKS",
    "blackbox": "BLACKBOX",
    "kinds": "KINDS",
}


class UserError(Exception):
    """Bad input: printed as one clear message, exit status 2."""


def _fail(message: str) -> None:
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(2)


def _guard(fn: Any) -> Any:
    """Turn the errors bad input can cause into a message and exit status 2, no traceback."""
    import functools

    from murmura.config import ConfigError
    from murmura.data.datasets import DataNotFoundError
    from murmura.registry import RegistryError
    from murmura.runner import RunError

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, RunError, DataNotFoundError, RegistryError, UserError) as error:
            _fail(str(error))
        except OSError as error:  # a path that is a file, unwritable, missing, ...
            where = f": {error.filename}" if error.filename else ""
            _fail(f"{error.strerror or error}{where}")

    return wrapper


def _load(config: Path, overrides: list[str] | None) -> Any:
    from murmura.config import Experiment

    return Experiment.from_toml(config, overrides or [])


@app.command()
@_guard
def run(
    config: Annotated[Path | None, typer.Argument(help="experiment TOML file")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="override a key: --set algorithm.lr=0.1 (repeatable; values are TOML)")
    ] = None,
    out: Annotated[Path | None, typer.Option(
        help="the run directory (default: a new folder under output.dir)")] = None,
    resume: Annotated[Path | None, typer.Option(
        help="continue the run in this directory from its last checkpoint")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress display")] = False,
    backend: Annotated[str | None, typer.Option(
        help="local (one process) or dist (shard the nodes over a torchrun launch's "
        "processes); default: engine.backend")] = None,
) -> None:
    """Run one experiment into a run directory, with a live progress display.

    Sharded over processes: torchrun --nproc-per-node 2 -m murmura run CONFIG --backend dist

    Ctrl-C stops after the current round and keeps everything (resume with --resume).
    """
    from murmura.runner import RunDirectory, run_experiment

    if backend is not None and backend not in ("local", "dist"):
        raise UserError(f"--backend {backend!r}: choose local or dist")
    if resume is not None:
        if config is not None or set_ or out is not None:
            raise UserError("--resume continues a run as it was configured: pass only the run "
                            "directory (no CONFIG, --set or --out)")
        experiment = RunDirectory.open(resume).experiment()
        result = run_experiment(experiment, resume, resume=True, progress=not quiet,
                                console=err_console, command=sys.argv, backend=backend)
    else:
        if config is None:
            raise UserError("give an experiment file (murmura run CONFIG.toml; examples/ has "
                            "some) or --resume RUN_DIR")
        experiment = _load(config, set_)
        result = run_experiment(experiment, out, progress=not quiet, console=err_console,
                                command=sys.argv, backend=backend)
    if "final" in result.summary:
        _print_final(result)  # rank 0 of a sharded run, or the one process
    code = {"failed": 1, "interrupted": 130}.get(result.status, 0)
    if (backend or experiment.engine.backend) == "dist":
        _leave_process(code)
    if code:
        raise typer.Exit(code)


def _leave_process(code: int) -> None:
    """End a torchrun worker without running C++ static destructors: gloo's threads can abort
    the interpreter's exit ("terminate called without an active exception") after the run has
    finished and written everything."""
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _print_final(result: Any) -> None:
    final = result.final
    done = f"{result.summary.get('rounds_done', 0)} rounds"
    if "simulated_seconds" in result.summary:  # a clocked run: its rows are evaluations
        done = f"{result.summary['simulated_seconds']:g} simulated seconds"
    table = Table(title=f"{result.status}: {done}", show_header=False)

    def pct(key: str) -> str:
        value = final.get(key)
        return f"{100 * value:.2f}%" if isinstance(value, (int, float)) else "-"

    table.add_row("accuracy of the average model", pct("test_accuracy"))
    table.add_row("mean node accuracy", pct("node_accuracy_mean"))
    mb = final.get("bytes_sent_per_node_mean")
    table.add_row("MB sent per node", "-" if mb is None else f"{mb / 1e6:.2f}")
    table.add_row("seconds", f"{result.summary.get('seconds', 0.0):.1f}")
    table.add_row("run directory", str(result.run_dir))
    out_console.print(table)


@app.command()
@_guard
def sweep(
    config: Annotated[Path, typer.Argument(help="experiment TOML file")],
    grid: Annotated[list[str] | None, typer.Option(
        help="a setting to vary: --grid algorithm.lr=0.01,0.1 (repeatable; the product runs)")
    ] = None,
    seeds: Annotated[str | None, typer.Option(
        help="seeds to repeat each setting with: --seeds 0,1,2 (default: the config's)")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="override a key for every run")] = None,
    out: Annotated[Path | None, typer.Option(
        help="folder for the sweep (default: <output.dir>/<name>-sweep)")] = None,
    workers: Annotated[int, typer.Option(min=1, help="runs in parallel processes")] = 1,
) -> None:
    """Run the product of settings x seeds, each in its own run directory, and summarize."""
    from murmura.runner.sweep import parse_grid, parse_seeds, run_sweep

    experiment = _load(config, set_)
    parsed_grid = parse_grid(grid or [])
    seed_list = parse_seeds(seeds) if seeds is not None else [experiment.seed]
    target = out or Path(experiment.output.dir) / f"{experiment.name}-sweep"
    try:
        runs = run_sweep(experiment, parsed_grid, seed_list, target, workers=workers,
                         console=err_console)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    out_console.print(f"sweep written to {target} (sweep.csv, sweep_summary.json)")
    try:
        from murmura.report import build_comparison_report

        done = [r.run_dir for r in runs if r.status != "failed"]
        if done:
            out_console.print(f"report: {build_comparison_report(done, target)}")
    except ImportError:  # pragma: no cover
        pass
    if any(r.status == "failed" for r in runs):
        raise typer.Exit(1)


@app.command()
@_guard
def demo(
    out: Annotated[Path, typer.Option(help="folder for the demo's runs and report")] = Path(
        "runs/demo"),
    rounds: Annotated[int | None, typer.Option(min=1, help="rounds per arm")] = None,
    nodes: Annotated[int, typer.Option(min=2, help="number of nodes")] = 32,
    seed: Annotated[int, typer.Option(min=0)] = 0,
) -> None:
    """The embedded comparison, offline: FedAvg vs ring D-SGD vs ring D-SGD + final merge."""
    from murmura.demo import run_demo

    results = run_demo(rounds=rounds, nodes=nodes, seed=seed, console=out_console, out=out)
    if any(r.get("status") == "interrupted" for r in results):
        raise typer.Exit(130)


def _signature_text(obj: Any, supplied: tuple[str, ...]) -> str:
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return ""
    parts = []
    for p in signature.parameters.values():
        if p.name in supplied or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        parts.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return ", ".join(parts)


def _supplied() -> dict[str, tuple[str, ...]]:
    """Per kind, the arguments murmura passes itself (the config schema's list), which
    `list` therefore leaves out of a component's parameters."""
    from murmura.config import (
        AlgorithmChoice,
        DatasetChoice,
        ModelChoice,
        PartitionChoice,
        TopologyChoice,
    )

    return {
        "algorithms": AlgorithmChoice.supplied,
        "topologies": TopologyChoice.supplied,
        "datasets": DatasetChoice.supplied,
        "partitions": PartitionChoice.supplied,
        "models": ModelChoice.supplied,
        "weights": (),  # mixing rules' parameters are not listed
        "aggregators": (),
        "pre-aggregators": (),
        "attacks": (),
        "compressors": (),
        "tasks": (),
        "blackbox": ("problem", "rounds", "local_iters", "seed"),
        "kinds": ("context",),
    }


SUPPLIED = _supplied()


def registry_of(kind: str) -> Any:
    import murmura
    from murmura.topology import MIXING

    return MIXING if kind == "weights" else getattr(murmura, KINDS[kind])


@app.command("list")
@_guard
def list_(
    kind: Annotated[str | None, typer.Argument(
        help="algorithms, topologies, datasets, partitions, models, weights, aggregators, "
        "pre-aggregators, attacks, compressors, tasks, blackbox (federated black-box optimizers, "
        "murmura.fed_minimize) or kinds (what an experiment runs; default: all)")
    ] = None,
    import_: Annotated[list[str] | None, typer.Option(
        "--import", help="a module that registers components (repeatable), as a config's "
        "imports")] = None,
) -> None:
    """What can be named in a config, with one-line descriptions and parameters."""
    from murmura.config.schema import import_modules

    import_modules(import_ or [], [Path.cwd()])
    if kind is not None and kind not in KINDS:
        import difflib

        close = difflib.get_close_matches(kind, list(KINDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"unknown kind {kind!r}{hint}; choose one of: {', '.join(KINDS)}")
    for name in [kind] if kind else list(KINDS):
        registry = registry_of(name)
        table = Table(title=name, title_justify="left")
        table.add_column("name", style="bold")
        table.add_column("description")
        table.add_column("parameters (defaults)")
        for entry, description in registry.describe().items():
            params = "" if name == "weights" else _signature_text(
                registry.get(entry), SUPPLIED[name])
            table.add_row(entry, description, params)
        if name == "partitions":
            table.add_row("natural", "the dataset's own per-node split (synthetic)", "")
        out_console.print(table)


@app.command()
@_guard
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="run directories to compare")],
    out: Annotated[Path, typer.Option(help="folder for the plots and comparison.html")] = Path(
        "comparison"),
) -> None:
    """A table of the runs' final metrics and overlaid plots (accuracy vs round and vs MB)."""
    from murmura.report import ReportError, build_comparison_report, compare_runs
    from murmura.report.compare import own_keys

    try:
        rows, plots = compare_runs(run_dirs, out)
        report = build_comparison_report(run_dirs, out)
    except ReportError as error:
        raise UserError(str(error)) from None
    table = Table(title="comparison")
    shown = ["label", "status", "algorithm", "topology", "nodes", "rounds_done",
             "test_accuracy", "node_accuracy_mean", "mb_sent_per_node", "seconds"]
    columns = [c for c in shown if rows and c in rows[0]]
    own = own_keys(rows)  # a tool's own final numbers (regret, returns, ...)
    for column in columns + own:
        table.add_column(column.replace("_", " "), justify="left" if column == "name" else "right")
    for row in rows:
        table.add_row(*(_cell(row[c], c) for c in columns),
                      *(_cell(row["own"].get(c), c) for c in own))
    out_console.print(table)
    for path in plots:
        out_console.print(f"plot: {path}")
    out_console.print(f"report: {report}")


def _cell(value: Any, column: str) -> str:
    if isinstance(value, float):
        if "accuracy" in column:
            return f"{100 * value:.2f}%"
        return f"{value:.2f}"
    return "-" if value is None else str(value)


@app.command()
@_guard
def report(
    run_dir: Annotated[Path, typer.Argument(help="a run directory")],
) -> None:
    """(Re)build a run's plots and its self-contained report.html."""
    from murmura.report import ReportError, build_report

    try:
        path = build_report(run_dir)
    except ReportError as error:
        raise UserError(str(error)) from None
    out_console.print(f"report: {path}")


from murmura.net.commands import register as _register_network  # noqa: E402

_register_network(app, _guard, UserError)


def _version(value: bool) -> None:
    if value:
        from murmura import __version__

        out_console.print(f"murmura {__version__}")
        raise typer.Exit(0)


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """Decentralized and federated learning experiments: one TOML file, one command."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script and of ``python -m murmura``; returns the exit code."""
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="murmura", standalone_mode=True)
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0
