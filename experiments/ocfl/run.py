"""OCFL (Zuziak et al., IEEE BigData 2024): FedAvg that clusters the clients once, at the first
rise of the update "temperature", then trains one model per cluster; against one FedAvg model
(specs/federated.md section 6e), through murmura's engine; 3 seeds.

Settings (15 clients in 3 true groups of 5, every client every round, 3 local epochs of SGD
lr 0.05 batch 16, 30 rounds, 30% of each client's samples held out as its local test set):

* ``digits``: label sets {0-3}, {4-6}, {7-9} (``class_disjoint``, groups = 3), MLP 64-32-10;
* ``fmnist_overlap``: Fashion-MNIST (a fixed stratified subset of the training set, the whole
  test set), overlapping label sets {0-5}, {3-8}, {0,1,2,7,8,9} (``label_groups``; a label
  held by two groups is shared among their 10 clients), MLP 784-128-10.

Arms: ``ocfl_hdbscan`` (HDBSCAN, min_cluster_size 3), ``ocfl_kmeans`` (KMeans, k = 3) and
``fedavg`` (``ocfl`` with ``clusterer = "none"``: FedAvg with uniform weights whose server
tracks the temperature every round; equal to ``fedavg`` with ``weighting = "uniform"``, see
tests/test_ocfl.py).

    .venv/bin/python experiments/ocfl/run.py
    .venv/bin/python experiments/ocfl/run.py --quick --out /tmp/ocfl      # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1].parent / "shared" / "datasets" / "fashion-mnist"
NODES, GROUP, ROUNDS = 15, 5, 30
OVERLAP = [[0, 1, 2, 3, 4, 5], [3, 4, 5, 6, 7, 8], [0, 1, 2, 7, 8, 9]]
FMNIST_PER_CLASS = 2000  # training images per class kept (of 6000): the 5-minute budget
SHARED = {"lr": 0.05, "local_epochs": 3, "batch_size": 16}
ARMS = {
    "ocfl_hdbscan": {"clusterer": "hdbscan", "min_cluster_size": 3},
    "ocfl_kmeans": {"clusterer": "kmeans", "num_clusters": 3},
    "fedavg": {"clusterer": "none"},
}
SETTINGS = {  # name: (partition, its parameters, MLP hidden widths)
    "digits": ("class_disjoint", {"groups": 3}, [32]),
    "fmnist_overlap": ("label_groups", {"groups": OVERLAP}, [128]),
}


def figure_path(out: Path, name: str) -> Path:
    """The figure sits next to the README for the default results, in ``out`` otherwise."""
    return HERE / name if out.resolve() == (HERE / "results").resolve() else out / name


def fmnist_subset(per_class: int) -> Any:
    """Fashion-MNIST with ``per_class`` training images of each class (a fixed draw)."""
    from murmura.data import Dataset, load_dataset

    root = os.environ.get("MURMURA_DATA") or str(DEFAULT_DATA)
    full = load_dataset("fashion_mnist", root=root, download=False)
    y = full.train_y.numpy()
    rng = np.random.default_rng(2024)
    keep = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False)
                                   for c in range(full.num_classes)]))
    return Dataset("fashion_mnist_subset", full.train_x[keep], full.train_y[keep],
                   full.test_x, full.test_y, full.num_classes)


def clustering_scores(labels: list[int], truth: list[int]) -> dict[str, float]:
    """ARI (what we read the paper's "RAND" as), the plain Rand index and purity."""
    from sklearn.metrics import adjusted_rand_score, rand_score

    labels_a, truth_a = np.asarray(labels), np.asarray(truth)
    purity = sum(np.bincount(truth_a[labels_a == c]).max() for c in np.unique(labels_a))
    return {"ari": float(adjusted_rand_score(truth_a, labels_a)),
            "rand": float(rand_score(truth_a, labels_a)),
            "purity": float(purity / len(labels_a)), "clusters": len(np.unique(labels_a))}


def run_one(setting: str, arm: str, seed: int, rounds: int, dataset: Any) -> dict[str, Any]:
    from murmura.data import federate
    from murmura.swarm import Evaluation, Simulation

    name, params, hidden = SETTINGS[setting]
    data = federate(dataset, NODES, name, seed=seed, local_test_fraction=0.3, **params)
    sim = Simulation(data, "mlp", "ocfl", seed=seed, model_kwargs={"hidden": hidden},
                     algorithm_kwargs={**SHARED, **ARMS[arm]}, evaluation=Evaluation(every=1))
    heat: list[float] = []
    start = time.perf_counter()
    history = sim.run(rounds, callback=lambda r: heat.append(
        float(sim.server_state["temperature"])))
    state = sim.server_state
    fired = int(state["fired_round"])
    final = history.records[-1]
    result = {
        "setting": setting, "arm": arm, "seed": seed, "fired_round": fired,
        "labels": state["labels"].tolist(),
        "personal": final["personal_accuracy_mean"],
        "personal_min": final["personal_accuracy_min"],
        "node_global": final["node_accuracy_mean"], "server_global": final["test_accuracy"],
        "bytes_per_node": final["bytes_sent_per_node_mean"],
        "temperature": heat if fired < 0 else heat[: fired + 1],
        "curve": [(r["round"], r["personal_accuracy_mean"]) for r in history.records],
        "seconds": time.perf_counter() - start,
    }
    if fired >= 0:
        result.update(clustering_scores(result["labels"], [i // GROUP for i in range(NODES)]))
    return result


def stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def first_rise(heat: list[float]) -> int | None:
    """The first round t with T_t > T_{t-1} (None if the temperature never rises)."""
    return next((t for t in range(1, len(heat)) if heat[t] > heat[t - 1]), None)


def plot(runs: list[dict[str, Any]], settings: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(settings), figsize=(5.5 * len(settings), 7), squeeze=False)
    for col, setting in enumerate(settings):
        top, bottom = axes[0][col], axes[1][col]
        for r in runs:
            if r["setting"] == setting and r["arm"] == "fedavg":
                top.plot(range(len(r["temperature"])), r["temperature"], color="C2", alpha=0.7,
                         label="temperature (FedAvg)" if r["seed"] == 0 else None)
            if r["setting"] == setting and r["fired_round"] >= 0:
                top.axvline(r["fired_round"], color="C0" if "hdbscan" in r["arm"] else "C1",
                            ls="--", alpha=0.5)
        top.set_title(f"{setting}: temperature T_t per seed (dashed: OCFL fired)")
        top.set_xlabel("round")
        top.legend()
        for i, arm in enumerate(ARMS):
            mine = [r["curve"] for r in runs if r["setting"] == setting and r["arm"] == arm]
            x = [t for t, _ in mine[0]]
            bottom.plot(x, [statistics.fmean(c[k][1] for c in mine) for k in range(len(x))],
                        color=f"C{i}", label=arm, ls="--" if arm == "ocfl_kmeans" else "-")
        bottom.set_title(f"{setting}: mean local test accuracy ({len(mine)}-seed mean)")
        bottom.set_xlabel("round")
        bottom.grid(alpha=0.3)
        bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="one seed, 3 rounds, 200 Fashion-MNIST images per class")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds, rounds = ([0], 3) if args.quick else ([0, 1, 2], ROUNDS)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    datasets: dict[str, Any] = {"digits": "digits"}
    try:
        datasets["fmnist_overlap"] = fmnist_subset(200 if args.quick else FMNIST_PER_CLASS)
    except FileNotFoundError as error:  # DataNotFoundError: a smoke run goes on with digits
        if not args.quick:
            raise
        print(f"fmnist_overlap skipped: {error}", flush=True)
    runs = []
    for setting, dataset in datasets.items():
        for arm in ARMS:
            for seed in seeds:
                r = run_one(setting, arm, seed, rounds, dataset)
                runs.append(r)
                print(f"{setting:14s} {arm:13s} seed {seed}: fired {r['fired_round']:3d} "
                      f"ARI {r.get('ari', float('nan')):.2f} personal {r['personal']:.4f} "
                      f"({r['seconds']:.0f} s)", flush=True)
    table: dict[str, dict[str, Any]] = {}
    for setting in datasets:
        table[setting] = {}
        for arm in ARMS:
            mine = [r for r in runs if r["setting"] == setting and r["arm"] == arm]
            keys = ["personal", "personal_min", "node_global", "server_global"]
            if arm != "fedavg":
                keys += ["fired_round", "ari", "rand", "purity", "clusters"]
            row = {k: stats([float(r[k]) for r in mine]) for k in keys}
            if arm == "fedavg":
                row["first_rise"] = [first_rise(r["temperature"]) for r in mine]
                row["rises"] = [sum(b > a for a, b in zip(r["temperature"], r["temperature"][1:]))
                                for r in mine]
            table[setting][arm] = row
    wall = time.perf_counter() - start
    stem = "quick" if args.quick else "results"
    (args.out / f"{stem}.json").write_text(json.dumps(
        {"seeds": seeds, "rounds": rounds, "shared": SHARED, "fmnist_per_class":
         200 if args.quick else FMNIST_PER_CLASS, "wall_seconds": wall, "table": table,
         "runs": runs}, indent=1))
    plot(runs, list(datasets), figure_path(args.out, f"ocfl_{stem}.png"))
    print(f"wall {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
