"""FedGELA (Fan et al., NeurIPS 2023) against FedAvg with a learnable linear head on partially
class-disjoint data: the spec's CPU reproduction (specs/federated.md section 5e), through
murmura's engine, 3 seeds.

Digits, 20 clients holding 3 classes each (the code's ``partition_class_per``: the first pass
gives every class to one client, the other slots draw distinct classes at random, and each
class's samples are split evenly among its holders), 30% of each client's samples held out as
its personal test set, 5 clients per round, 5 local epochs of SGD (lr 0.05, batch 16), 100
rounds. Both arms use the same backbone (64→64→32 + LayerNorm, model ``etf_mlp``):

* ``fedavg``: a learnable ``Linear(32, 10)`` head; global = its model on the test set,
  personal = the same model on each client's held-out samples;
* ``fedgela``: the fixed simplex ETF ``M`` (τ = 0.2, the code's default, fixed before any run);
  global = argmax h·M, personal = argmax h·(M ⊙ E_k). τ = 0.1 and 0.05 are a sensitivity row;
  ``fixed_etf_only`` (the same client on the fixed ETF with ``E_k = 1``: no local adaptation)
  is an ablation row.

The same two arms on a Fashion-MNIST subset (300 training images per class, MLP 784→128→32)
form a second table (``--skip-fmnist`` leaves it out).

    .venv/bin/python experiments/fedgela/run.py
    .venv/bin/python experiments/fedgela/run.py --quick --out /tmp/fedgela   # smoke run
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
DEFAULT_FMNIST = HERE.parents[1].parent / "shared" / "datasets" / "fashion-mnist"
NODES, CLASSES_PER_CLIENT, CLIENTS_PER_ROUND, ROUNDS, EVERY = 20, 3, 5, 100, 5
TRAIN = {"lr": 0.05, "batch_size": 16, "local_epochs": 5,
         "clients_per_round": CLIENTS_PER_ROUND}
TAU = 0.2  # the code's default temperature, chosen before any run (the spec's range's top)
SENSITIVITY = (0.1, 0.05)
BACKBONE = {"digits": {"hidden": [64], "feature_dim": 32},
            "fashion_mnist": {"hidden": [128], "feature_dim": 32}}
FMNIST_PER_CLASS = 300


def class_per(labels: np.ndarray, num_nodes: int, k: int, seed: int) -> list[np.ndarray]:
    """The code's ``partition_class_per``: client i's k distinct classes (the first pass covers
    classes 0..C-1 in order, later slots draw at random), each class split evenly among the
    clients holding it (``np.array_split`` of its shuffled samples)."""
    rng = np.random.default_rng([seed, 5])
    classes = int(labels.max()) + 1
    contain: list[list[int]] = []
    count = 0
    for _ in range(num_nodes):
        mine: list[int] = []
        for _ in range(k):
            if count < classes:
                label, count = count, count + 1
            else:
                label = int(rng.integers(classes))
                while label in mine:
                    label = int(rng.integers(classes))
            mine.append(label)
        contain.append(mine)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_nodes)]
    for c in range(classes):
        holders = [i for i in range(num_nodes) if c in contain[i]]
        if not holders:  # with fewer slots than classes a class goes unused
            continue
        idx = rng.permutation(np.flatnonzero(labels == c))
        for i, chunk in zip(holders, np.array_split(idx, len(holders))):
            parts[i].append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def federation(dataset: str, seed: int) -> Any:
    from murmura.data import FederatedData, load_dataset

    if dataset == "digits":
        ds = load_dataset("digits")
        subset = np.arange(len(ds.train_y))
    else:
        root = os.environ.get("MURMURA_DATA", str(DEFAULT_FMNIST))
        ds = load_dataset("fashion_mnist", root=root, download=False)
        y = ds.train_y.numpy()
        rng = np.random.default_rng([seed, 600])
        subset = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), FMNIST_PER_CLASS,
                                                    replace=False) for c in range(10)]))
    labels = ds.train_y.numpy()[subset]
    parts = [subset[p] for p in class_per(labels, NODES, CLASSES_PER_CLIENT, seed)]
    return FederatedData.from_parts(ds, parts).holdout(0.3, seed)


def arms(dataset: str, quick: bool) -> list[tuple[str, float | None, bool]]:
    """(arm, τ, local adaptation): τ None is FedAvg's learnable head."""
    main = [("fedavg", None, False), ("fedgela", TAU, True)]
    if dataset != "digits":
        return main
    extra = [(f"fedgela_tau{t}", t, True) for t in (SENSITIVITY[:1] if quick else SENSITIVITY)]
    return main + extra + ([] if quick else [("fixed_etf_only", TAU, False)])


def run_one(dataset: str, arm: str, tau: float | None, seed: int, rounds: int,
            adapt: bool = True) -> dict[str, Any]:
    from murmura.algorithms.fedgela import ClientAdaptedLoss
    from murmura.swarm import Evaluation, Simulation

    data = federation(dataset, seed)
    model = dict(BACKBONE[dataset])
    if tau is None:
        model["head"] = "linear"
        algorithm, task, params = "fedavg", None, dict(TRAIN)
    else:
        model["temperature"] = tau
        # the spec's settings for both arms: plain SGD; FedGELA keeps the code's clip at 20
        algorithm, task = "fedgela", ClientAdaptedLoss(adapt=adapt)
        params = dict(TRAIN, momentum=0.0, weight_decay=0.0)
    sim = Simulation(data, "etf_mlp", algorithm, seed=seed, task=task, model_kwargs=model,
                     algorithm_kwargs=params, evaluation=Evaluation(every=min(EVERY, rounds)))
    start = time.perf_counter()
    history = sim.run(rounds)
    seconds = time.perf_counter() - start
    evals = [r for r in history.records if "test_accuracy" in r]
    last = evals[-3:]
    return {"dataset": dataset, "arm": arm, "tau": tau, "seed": seed, "seconds": seconds,
            "global": statistics.fmean(r["test_accuracy"] for r in last),
            "personal": statistics.fmean(r["personal_accuracy_mean"] for r in last),
            "personal_min": statistics.fmean(r["personal_accuracy_min"] for r in last),
            "curve": [(r["round"] + 1, r["test_accuracy"], r["personal_accuracy_mean"])
                      for r in evals]}


def stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    table: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        table.setdefault(f"{r['dataset']}/{r['arm']}", []).append(r)
    return {key: {m: stats([r[m] for r in rs]) for m in ("global", "personal", "personal_min")}
            for key, rs in table.items()}


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in runs))
    fig, axes = plt.subplots(len(datasets), 2, figsize=(11, 3.8 * len(datasets)), squeeze=False)
    for row, dataset in zip(axes, datasets):
        for arm in dict.fromkeys(r["arm"] for r in runs if r["dataset"] == dataset):
            mine = [r["curve"] for r in runs if r["dataset"] == dataset and r["arm"] == arm]
            x = [c[0] for c in mine[0]]
            for col, ax in enumerate(row):
                ax.plot(x, [statistics.fmean(c[i][col + 1] for c in mine)
                            for i in range(len(x))], label=arm,
                        linestyle="--" if "tau" in arm else "-")
        for ax, what in zip(row, ("global: server model on the test set",
                                  "personal: each client's own held-out split")):
            ax.set_title(f"{dataset}, {what}", fontsize=10)
            ax.set_xlabel("round")
            ax.set_ylabel("accuracy (mean of 3 seeds)")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, 6 rounds, digits only")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--skip-fmnist", action="store_true", help="digits only")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds, rounds = ([0], 6) if args.quick else ([0, 1, 2], ROUNDS)
    datasets = ["digits"] if args.quick or args.skip_fmnist else ["digits", "fashion_mnist"]
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs = []
    for dataset in datasets:
        for arm, tau, adapt in arms(dataset, args.quick):
            for seed in seeds:
                r = run_one(dataset, arm, tau, seed, rounds, adapt)
                runs.append(r)
                print(f"{dataset:13s} {arm:16s} seed {seed}: global {r['global']:.4f} personal "
                      f"{r['personal']:.4f} ({r['seconds']:.0f} s)", flush=True)
    wall = time.perf_counter() - start
    summary = summarize(runs)
    stem = "quick" if args.quick else "results"
    (args.out / f"{stem}.json").write_text(json.dumps(
        {"seeds": seeds, "rounds": rounds, "tau": TAU, "wall_seconds": wall,
         "settings": {"nodes": NODES, "classes_per_client": CLASSES_PER_CLIENT,
                      "local_test_fraction": 0.3, **TRAIN, "backbones": BACKBONE,
                      "final": "mean of the last 3 evaluations (every 5 rounds)"},
         "table": summary, "runs": runs}, indent=1))
    figure = HERE / "fedgela_results.png" if (
        args.out.resolve() == (HERE / "results").resolve()) else args.out / f"fedgela_{stem}.png"
    plot(runs, figure)
    for key, row in summary.items():
        print(f"{key:30s} global {100 * row['global']['mean']:.2f} ± "
              f"{100 * row['global']['std']:.2f}  personal {100 * row['personal']['mean']:.2f} ± "
              f"{100 * row['personal']['std']:.2f}")
    print(f"wall {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
