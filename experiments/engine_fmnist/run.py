"""FedAvg vs ring D-SGD vs ring D-SGD with one final global merge on Fashion-MNIST.

100 nodes, Dirichlet alpha=0.1, MLP 784-200-10, SGD lr 0.05, batch 32, one local epoch per round,
100 rounds, from the Python API. Writes one metrics CSV per arm and a summary JSON next to this
file.

    python experiments/engine_fmnist/run.py [--rounds 100] [--seeds 0] [--root DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from murmura.data import federate
from murmura.swarm import Evaluation, Simulation

ARMS = [
    ("fedavg", "fedavg", None),
    ("ring_dsgd", "dsgd", "ring"),
    ("ring_dsgd_final_merge", "dsgd_final_merge", "ring"),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--root", default=None, help="Fashion-MNIST folder")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--plot-only", action="store_true", help="redraw from existing CSVs")
    args = parser.parse_args()
    out = Path(args.out)
    if args.plot_only:
        print(plot(out))
        return
    out.mkdir(parents=True, exist_ok=True)
    summary = []
    for seed in args.seeds:
        data = federate("fashion_mnist", num_nodes=args.nodes, partition="dirichlet", alpha=0.1,
                        seed=seed, root=args.root)
        for label, algorithm, topology in ARMS:
            start = time.perf_counter()
            sim = Simulation(data, "mlp", algorithm, topology, seed=seed,
                             model_kwargs={"hidden": [200]},
                             algorithm_kwargs=dict(lr=0.05, local_epochs=1.0, batch_size=32),
                             evaluation=Evaluation(every=args.eval_every))
            history = sim.run(args.rounds)
            history.to_csv(out / f"{label}_seed{seed}.csv")
            final = history.final
            # The merge arm's last-round record is after the merge; before it, the D-SGD arm's
            # final record is the same training without the merge.
            row = dict(arm=label, seed=seed, rounds=args.rounds,
                       test_accuracy=final["test_accuracy"],
                       node_accuracy_mean=final["node_accuracy_mean"],
                       mb_sent_per_node=final["bytes_sent_per_node_mean"] / 1e6,
                       seconds=time.perf_counter() - start)
            summary.append(row)
            print(json.dumps(row), flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    plot(out)


def plot(out: Path) -> Path:
    """Accuracy of the average model and mean accuracy of the nodes' own models, per arm."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for (label, _, _), color in zip(ARMS, ["C0", "C1", "C2"]):
        for path in sorted(out.glob(f"{label}_seed*.csv")):
            rows = [r for r in csv.DictReader(path.open()) if r.get("test_accuracy")]
            rounds = [int(r["round"]) + 1 for r in rows]
            first = path.name.endswith("seed0.csv")
            for ax, key in zip(axes, ["test_accuracy", "node_accuracy_mean"]):
                ax.plot(rounds, [100 * float(r[key]) for r in rows], color=color, alpha=0.8,
                        label=label if first else None)
    axes[0].set_title("average model x̄")
    axes[1].set_title("nodes' own models (mean)")
    for ax in axes:
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend()
    fig.suptitle("Fashion-MNIST, 100 nodes, Dirichlet 0.1, MLP 784-200-10 (each line one seed)")
    fig.tight_layout()
    target = out.parent / "accuracy.png"
    fig.savefig(target, dpi=110)
    return target


if __name__ == "__main__":
    main()
