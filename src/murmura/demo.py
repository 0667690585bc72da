"""The embedded demo: FedAvg vs ring D-SGD vs ring D-SGD with one final merge, offline.

Runs on Fashion-MNIST when its files are found offline (wherever the loader looks:
``$MURMURA_DATA``, the Debian package's folder, the download cache; or
``../shared/datasets/fashion-mnist`` next to a source checkout), else on sklearn's digits. It
never downloads.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from murmura.swarm import Evaluation, Simulation

ARMS: list[tuple[str, str, str | None]] = [
    ("FedAvg", "fedavg", None),
    ("ring D-SGD", "dsgd", "ring"),
    ("ring D-SGD + final merge", "dsgd_final_merge", "ring"),
]


def _fashion_mnist(seed: int, nodes: int) -> Any:
    """Fashion-MNIST split over ``nodes`` when its files are found offline, else None."""
    from murmura.data import federate
    from murmura.data.datasets import DataNotFoundError

    here = Path(__file__).resolve()
    roots = [None] + [str(p / "shared" / "datasets" / "fashion-mnist") for p in here.parents[2:5]]
    for root in roots:
        try:
            return federate("fashion_mnist", num_nodes=nodes, partition="dirichlet", alpha=0.1,
                            seed=seed, root=root, dataset_params={"download": False})
        except DataNotFoundError:
            continue
    return None


def run_demo(
    rounds: int | None = None, nodes: int = 32, seed: int = 0, console: Console | None = None
) -> list[dict[str, Any]]:
    """Run the three arms and print a table; returns one summary dict per arm."""
    from murmura.data import federate

    console = console or Console()
    data = _fashion_mnist(seed, nodes)
    if data is not None:
        dataset, model, kwargs = "fashion_mnist", "mlp", {"hidden": [64]}
        rounds = rounds or 20
        algo = dict(lr=0.05, local_steps=10, batch_size=32)
    else:
        dataset, model, kwargs = "digits", "mlp", {"hidden": [32]}
        rounds = rounds or 40
        algo = dict(lr=0.1, local_steps=5, batch_size=16)
        data = federate(dataset, num_nodes=nodes, partition="dirichlet", alpha=0.1, seed=seed)
    console.print(
        f"[bold]murmura demo[/]: {dataset}, {nodes} nodes, Dirichlet alpha=0.1, {model} "
        f"{kwargs['hidden']}, {rounds} rounds of {algo['local_steps']} local steps"
    )
    results = []
    for label, algorithm, topology in ARMS:
        start = time.perf_counter()
        sim = Simulation(data, model, algorithm, topology, seed=seed, model_kwargs=kwargs,
                         algorithm_kwargs=algo, evaluation=Evaluation(every=rounds))
        final = sim.run(rounds).final
        results.append(dict(arm=label, seconds=time.perf_counter() - start, **final))
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
    return results
