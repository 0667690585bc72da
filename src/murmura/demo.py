"""The embedded demo: FedAvg vs ring D-SGD vs ring D-SGD with one final merge, offline.

Runs on Fashion-MNIST when its files are found offline (wherever the loader looks:
``$MURMURA_DATA``, the Debian package's folder, the download cache; or
``../shared/datasets/fashion-mnist`` next to a source checkout), else on sklearn's digits. It
never downloads. Each arm is an ordinary experiment written into its own run directory, and a
comparison report ties them together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from murmura.config import Experiment

ARMS: list[tuple[str, str, str, dict[str, Any]]] = [
    ("FedAvg", "fedavg", "", {}),
    ("ring D-SGD", "ring-dsgd", "ring", {}),
    ("ring D-SGD + final merge", "ring-dsgd-merge", "ring", {"final_merge": True}),
]


def fashion_mnist_root() -> str | None | bool:
    """Where Fashion-MNIST's files are found offline: None (the loader's own places), a folder,
    or False when nowhere."""
    from murmura.data import load_dataset
    from murmura.data.datasets import DataNotFoundError

    here = Path(__file__).resolve()
    roots: list[str | None] = [None]
    roots += [str(p / "shared" / "datasets" / "fashion-mnist") for p in here.parents[2:5]]
    for root in roots:
        try:
            load_dataset("fashion_mnist", root=root, download=False)
            return root
        except DataNotFoundError:
            continue
    return False


def demo_experiments(rounds: int | None = None, nodes: int = 32, seed: int = 0
                     ) -> list[tuple[str, Experiment]]:
    """The demo's three arms as experiments (what `murmura demo` runs)."""
    root = fashion_mnist_root()
    if root is not False:
        data = {"dataset": {"name": "fashion_mnist", "download": False}, "root": root}
        model = {"name": "mlp", "hidden": [64]}
        rounds = rounds or 20
        algo = {"lr": 0.05, "local_steps": 10, "batch_size": 32}
    else:
        data = {"dataset": "digits"}
        model = {"name": "mlp", "hidden": [32]}
        rounds = rounds or 40
        algo = {"lr": 0.1, "local_steps": 5, "batch_size": 16}
    experiments = []
    for label, slug, topology, extra in ARMS:
        values: dict[str, Any] = {
            "name": f"demo {label}",
            "description": "murmura demo: does one global merge close D-SGD's gap to FedAvg?",
            "seed": seed,
            "rounds": rounds,
            "data": {**data, "nodes": nodes, "partition": {"name": "dirichlet", "alpha": 0.1}},
            "model": model,
            "algorithm": {"name": "fedavg" if not topology else "dsgd", **algo, **extra},
            "evaluation": {"every": max(1, rounds // 10)},
            "output": {"checkpoint_every": 0},
        }
        if topology:
            values["topology"] = {"name": topology}
        experiments.append((slug, Experiment.from_dict(values)))
    return experiments


MARKER = ".murmura-demo"


def _claim(out: Path, arms: list[str]) -> None:
    """Make ``out`` the demo's folder, replacing an earlier demo's runs: only a folder the demo
    created (it holds a marker file) is ever emptied, so no user run can be deleted."""
    import shutil

    from murmura.runner import RunError

    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file: give a folder for the demo's runs")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise RunError(
            f"{out} already holds files the demo did not write: give the demo its own folder "
            "(--out runs/demo)"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by murmura demo; rerunning the demo replaces this folder\n")
    for slug in arms:
        if (out / slug).is_dir():
            shutil.rmtree(out / slug)


def run_demo(
    rounds: int | None = None,
    nodes: int = 32,
    seed: int = 0,
    console: Console | None = None,
    out: str | Path = "runs/demo",
) -> list[dict[str, Any]]:
    """Run the three arms into ``out/<arm>``, print a table, write ``out/comparison.html``;
    returns one summary dict per arm."""
    from murmura.runner import run_experiment

    console = console or Console()
    out = Path(out)
    experiments = demo_experiments(rounds, nodes, seed)
    first = experiments[0][1]
    console.print(
        f"[bold]murmura demo[/]: {first.data.dataset.name}, {nodes} nodes, Dirichlet alpha=0.1, "
        f"mlp {first.model.params['hidden']}, {first.rounds} rounds of "
        f"{first.algorithm.params['local_steps']} local steps"
    )
    _claim(out, [slug for slug, _ in experiments])
    results, run_dirs = [], []
    for (slug, exp), (label, *_rest) in zip(experiments, ARMS):
        result = run_experiment(exp, out / slug, console=console)
        run_dirs.append(result.run_dir)
        results.append(dict(arm=label, seconds=result.summary["seconds"], status=result.status,
                            run_dir=str(result.run_dir), **result.final))
        if result.status != "completed":
            console.print(f"demo stopped: {label} is {result.status}")
            return results
    table = Table(title="final round")
    for column in ("algorithm", "avg-model acc", "mean node acc", "MB sent / node", "seconds"):
        table.add_column(column, justify="left" if column == "algorithm" else "right")
    for r in results:
        table.add_row(
            r["arm"],
            f"{100 * r['test_accuracy']:.1f}%",
            f"{100 * r['node_accuracy_mean']:.1f}%",
            f"{r['bytes_sent_per_node_mean'] / 1e6:.2f}",
            f"{r['seconds']:.1f}",
        )
    console.print(table)
    try:
        from murmura.report import build_comparison_report

        report = build_comparison_report(run_dirs, out)
        console.print(f"report: {report}")
    except ImportError:  # pragma: no cover
        pass
    return results
