"""KAFAL (Cao et al., ICCV 2023): federated active learning with KSAS acquisition and the KCFU
client loss, against random and entropy acquisition with FedAvg, through murmura's engine and
``murmura.active.run_active_learning`` (the spec's CPU reproduction, specs/federated.md
section 8 (e)); 3 seeds.

Protocol: 10 clients, Dirichlet alpha = 0.1 (the split drawn per seed); each client's initial
labelled set is ceil(10%) of its samples (5% in ``digits_5pct``), each cycle adds ceil(5%) by
the arm's acquisition; 4 cycles, each from a fresh global model, of 10 rounds x 2 local epochs
of SGD (lr 0.05, batch 16, every client), MLP 64-64-10 (784-128-10 on Fashion-MNIST). The
score is the global model's test accuracy at the end of each cycle.

Arms (acquisition + client loss): ``random+fedavg``, ``entropy+fedavg``, ``ksas+fedavg`` and
``kafal`` (KSAS + KCFU), the spec's four; ``random+kcfu`` is an extra, to separate the loss
from the acquisition.

Settings (decided before any result was seen: the spec's digits run and both of its fallbacks):
``digits`` and ``digits_5pct`` by default (under a minute); ``fmnist`` (Fashion-MNIST, about 15
minutes on this machine's 2 shared cores) with ``--settings fmnist``.

    .venv/bin/python experiments/kafal/run.py                      # digits, digits_5pct
    .venv/bin/python experiments/kafal/run.py --settings fmnist    # Fashion-MNIST
    .venv/bin/python experiments/kafal/run.py --quick --out /tmp/kafal   # smoke run
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

import torch

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1].parent / "shared" / "datasets" / "fashion-mnist"
ARMS: dict[str, tuple[str, str]] = {  # arm: (acquisition, task)
    "random+fedavg": ("random", "classification"),
    "entropy+fedavg": ("entropy", "classification"),
    "ksas+fedavg": ("ksas", "classification"),
    "kafal": ("ksas", "kcfu"),
    "random+kcfu": ("random", "kcfu"),
}
SPEC_ARMS = ["random+fedavg", "entropy+fedavg", "ksas+fedavg", "kafal"]
SETTINGS: dict[str, dict[str, Any]] = {
    "digits": {"dataset": "digits", "hidden": [64], "initial": 0.10, "arms": list(ARMS)},
    "digits_5pct": {"dataset": "digits", "hidden": [64], "initial": 0.05, "arms": list(ARMS)},
    "fmnist": {"dataset": "fashion_mnist", "hidden": [128], "initial": 0.10, "arms": list(ARMS)},
}
PROTOCOL = {"clients": 10, "alpha": 0.1, "budget": 0.05, "cycles": 4, "rounds": 10,
            "local_epochs": 2.0, "batch_size": 16, "lr": 0.05}


def figure_path(out: Path, name: str) -> Path:
    """The figure sits next to the README for the default results, in ``out`` otherwise."""
    return HERE / name if out.resolve() == (HERE / "results").resolve() else out / name


def run_one(setting: dict[str, Any], arm: str, seed: int, protocol: dict[str, Any]
            ) -> dict[str, Any]:
    from murmura.active import run_active_learning
    from murmura.data import federate

    data = federate(setting["dataset"], protocol["clients"], "dirichlet",
                    alpha=protocol["alpha"], seed=seed)
    acquisition, task = ARMS[arm]
    start = time.perf_counter()
    result = run_active_learning(
        data, acquisition=acquisition, task=task, algorithm="kafal",
        algorithm_kwargs={"lr": protocol["lr"], "local_epochs": protocol["local_epochs"],
                          "batch_size": protocol["batch_size"]},
        model="mlp", model_kwargs={"hidden": setting["hidden"]}, cycles=protocol["cycles"],
        rounds=protocol["rounds"], initial_fraction=setting["initial"],
        budget_fraction=protocol["budget"], seed=seed)
    labels, classes = data.dataset.train_y, data.dataset.num_classes
    counts = [torch.bincount(labels[torch.as_tensor(p)], minlength=classes).double()
              for p in result.labelled]
    return {"arm": arm, "seed": seed, "seconds": time.perf_counter() - start,
            # what the acquisitions did to the labelled sets' balance, at the end
            "majority_share": statistics.fmean(float(c.max() / c.sum()) for c in counts),
            "classes_per_client": statistics.fmean(float((c > 0).sum()) for c in counts),
            "accuracy": [r["test_accuracy"] for r in result.records],
            "labelled_fraction": [r["labelled_fraction"] for r in result.records],
            "labelled_per_client": [r["labelled_per_client"] for r in result.records]}


def stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per arm: each cycle's accuracy (mean, std, range over seeds); the spec's criteria on
    the final cycle, and the paired (same seed) gaps behind them."""
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    table = {arm: [stats([r["accuracy"][c] for r in runs if r["arm"] == arm])
                   for c in range(len(runs[0]["accuracy"]))] for arm in arms}

    def gap(a: str, b: str) -> dict[str, Any] | None:
        if a not in table or b not in table:
            return None
        final = {arm: {r["seed"]: r["accuracy"][-1] for r in runs if r["arm"] == arm}
                 for arm in (a, b)}
        paired = [final[a][s] - final[b][s] for s in sorted(final[a])]
        return {"mean": table[a][-1]["mean"] - table[b][-1]["mean"], "per_seed": paired}

    kafal_random, ksas_entropy = gap("kafal", "random+fedavg"), gap("ksas+fedavg",
                                                                     "entropy+fedavg")
    criteria = {
        "kafal_minus_random": kafal_random,
        "ksas_minus_entropy": ksas_entropy,
        "kafal_beats_random_by_2_points": (None if kafal_random is None
                                           else kafal_random["mean"] >= 0.02),
        "ksas_at_least_entropy": None if ksas_entropy is None else ksas_entropy["mean"] >= 0.0,
        "ksas_kcfu_minus_random_kcfu": gap("kafal", "random+kcfu"),
        "kcfu_minus_fedavg_with_ksas": gap("kafal", "ksas+fedavg"),
    }
    labelled = [statistics.fmean(r["labelled_fraction"][c] for r in runs)
                for c in range(len(runs[0]["accuracy"]))]
    balance = {arm: {m: stats([r[m] for r in runs if r["arm"] == arm])
                     for m in ("majority_share", "classes_per_client")} for arm in arms}
    return {"accuracy": table, "criteria": criteria, "labelled_fraction": labelled,
            "balance": balance}


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, len(names), figsize=(5.2 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        summary = results[name]["summary"]
        x = [100 * f for f in summary["labelled_fraction"]]
        for arm, cycles in summary["accuracy"].items():
            mean = [100 * c["mean"] for c in cycles]
            std = [100 * c["std"] for c in cycles]
            ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=arm,
                        linestyle="--" if arm not in SPEC_ARMS else "-")
        ax.set_title(name)
        ax.set_xlabel("labelled samples (% of the training set)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("global test accuracy (%), mean ± std over seeds")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="digits, one seed, 2 cycles of 2 rounds, the spec's arms")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS),
                        default=["digits", "digits_5pct"])
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if "MURMURA_DATA" not in os.environ and DEFAULT_DATA.is_dir():
        os.environ["MURMURA_DATA"] = str(DEFAULT_DATA)
    protocol = dict(PROTOCOL)
    seeds = [0, 1, 2]
    settings = args.settings
    if args.quick:
        protocol.update(cycles=2, rounds=2)
        seeds, settings = [0], ["digits"]
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results: dict[str, Any] = {}
    for name in settings:
        setting = SETTINGS[name]
        arms = SPEC_ARMS if args.quick else setting["arms"]
        began = time.perf_counter()
        runs = []
        for arm in arms:
            for seed in seeds:
                r = run_one(setting, arm, seed, protocol)
                runs.append(r)
                print(f"{name} {arm:15s} seed {seed}: "
                      + " ".join(f"{100 * a:5.1f}" for a in r["accuracy"])
                      + f" ({r['seconds']:.0f} s)", flush=True)
        results[name] = {"setting": setting, "summary": summarize(runs), "runs": runs,
                         "wall_seconds": time.perf_counter() - began}
        c = results[name]["summary"]["criteria"]
        print(f"{name}: KAFAL - random {100 * c['kafal_minus_random']['mean']:+.2f} points, "
              f"KSAS - entropy {100 * c['ksas_minus_entropy']['mean']:+.2f} points", flush=True)
    wall = time.perf_counter() - start
    stem = "quick" if args.quick else "_".join(settings)
    (args.out / f"{stem}.json").write_text(json.dumps(
        {"seeds": seeds, "protocol": protocol, "wall_seconds": wall, "threads": args.threads,
         "results": results}, indent=1))
    plot(results, figure_path(args.out, f"kafal_{stem}.png"))
    print(f"wall {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
