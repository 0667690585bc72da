"""Federated learning on the virtual clock (issue 14): FedFix against synchronous and
asynchronous FedAvg and FedBuff, the spec's CPU pilot (specs/federated.md section 4 (e)); and
synchronous FedAvg with a deadline against FedAsync, FedBuff and FedFix with lognormal client
speeds on Fashion-MNIST. 3 seeds.

``fedfix`` (the pilot, fixed before any result was seen): sklearn digits, M = 10 clients with a
Dirichlet(0.1) split, MLP 64-64-10; the time model F-80 (client i needs tau_i = 1 - 0.8 i / 9
time units per task, 5 SGD steps of batch 32, momentum 0.9, fresh each task); p_i = 1/M;
server lr 1; simulated time T = 300. Arms: ``FL`` (every client each round, a round lasts
max tau = 1), ``Async_weight`` / ``Async_identical`` (a server step on every return, d_i =
(sum_j 1/tau_j) tau_i p_i or 1), ``FedFix-0.5`` (aggregate every 0.5 units, d_i = ceil(tau_i /
0.5) p_i), ``FedBuff-5`` (every 5 returns, d_i = 1/5). The local lr is chosen per arm from
{0.005, 0.02, 0.05} by the lowest final training loss on seed 0 (the spec's "tuned per
scheme"), then all 3 seeds run at it.

``fmnist``: Fashion-MNIST, 20 clients (Dirichlet 0.5), MLP 784-64-10, 5 SGD steps of batch 32
(lr 0.05) per task; each client's seconds per step lognormal (mu 0, sigma 1, fixed per
client, jitter 0.2 per task); 200 simulated seconds. Arms: ``sync`` (10 clients a round,
13 selected, deadline 15 s: FedScale's over-selection), ``fedasync`` (alpha 0.6, (1 + s)^-0.5),
``fedbuff`` (K = 5, 1/sqrt(1 + s), at most 10 training at once), ``fedfix`` (dt = 5 s).

    .venv/bin/python experiments/async/run.py                    # both settings
    .venv/bin/python experiments/async/run.py --settings fedfix
    .venv/bin/python experiments/async/run.py --quick --out /tmp/aq   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1].parent / "shared" / "datasets" / "fashion-mnist"
M = 10
F80 = [1.0 - 0.8 * i / (M - 1) for i in range(M)]
SETTINGS: dict[str, dict[str, Any]] = {
    "fedfix": {
        "dataset": "digits", "clients": M, "alpha": 0.1, "hidden": [64, 64], "steps": 5,
        "batch": 32, "momentum": 0.9, "until": 300.0, "every": 5.0, "lrs": [0.005, 0.02, 0.05],
        "compute": {"name": "trace", "step_seconds": [t / 5 for t in F80]},
        "weighting": "uniform",
        "arms": {"FL": {"name": "sync"},
                 "Async_weight": {"name": "async", "weights": "weight"},
                 "Async_identical": {"name": "async", "weights": "identical"},
                 "FedFix-0.5": {"name": "fedfix", "dt": 0.5},
                 "FedBuff-5": {"name": "fedbuff", "K": 5, "staleness": "constant"}},
    },
    "fmnist": {
        "dataset": "fashion_mnist", "clients": 20, "alpha": 0.5, "hidden": [64], "steps": 5,
        "batch": 32, "momentum": 0.0, "until": 200.0, "every": 10.0, "lrs": [0.05],
        "compute": {"name": "lognormal", "mu": 0.0, "sigma": 1.0, "jitter": 0.2},
        "weighting": "samples",
        "arms": {"sync": {"name": "sync", "clients": 10, "over_selection": 1.3,
                          "deadline": 15.0},
                 "fedasync": {"name": "fedasync", "alpha": 0.6, "staleness": "polynomial"},
                 "fedbuff": {"name": "fedbuff", "K": 5, "staleness": "sqrt",
                             "concurrency": 10},
                 "fedfix": {"name": "fedfix", "dt": 5.0}},
    },
}


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One (setting, arm, lr, seed) run: the server model's curves against simulated time."""
    import dataclasses

    import torch

    torch.set_num_threads(1)
    from murmura.algorithms import make_algorithm
    from murmura.clock.federated import ClockedFederation
    from murmura.data import federate
    from murmura.swarm import Evaluation, Simulation

    s, seed = job["setting"], job["seed"]
    data = federate(s["dataset"], s["clients"], "dirichlet", alpha=s["alpha"], seed=seed)
    algorithm = make_algorithm("fedavg", lr=job["lr"], momentum=s["momentum"],
                               local_steps=s["steps"], batch_size=s["batch"])
    work = dataclasses.replace(algorithm.local_work, reset_state_each_round=True)
    sim = Simulation(data, "mlp", dataclasses.replace(algorithm, local_work=work), seed=seed,
                     model_kwargs={"hidden": s["hidden"]}, evaluation=Evaluation(every=0))
    mode = dict(s["arms"][job["arm"]])
    concurrency = mode.pop("concurrency", None)
    run = ClockedFederation(sim, mode, compute=s["compute"], weighting=s["weighting"],
                            concurrency=concurrency, train_loss=True)
    start = time.perf_counter()
    records = run.run(until=s["until"], eval_every=s["every"])
    stale = run.log.staleness_counts()
    return {"arm": job["arm"], "lr": job["lr"], "seed": seed,
            "seconds": time.perf_counter() - start,
            "time": [r["time"] for r in records],
            "train_loss": [r["train_loss"] for r in records],
            "test_accuracy": [r["test_accuracy"] for r in records],
            "updates": run.updates_applied, "versions": run.state["version"],
            "staleness": {str(k): v for k, v in stale.items()},
            "class_accuracy": class_accuracy(sim, run.state["params"]),
            "bytes_per_client": float(sim.bytes_sent.mean() + sim.bytes_received.mean())}


def class_accuracy(sim: Any, params: Any) -> list[float]:
    """The server model's test accuracy on each class."""
    import torch
    from torch.func import functional_call

    x, y = sim.data.dataset.test_x, sim.data.dataset.test_y
    with torch.no_grad():
        predicted = functional_call(sim.model, sim.spec.views(params), (x,)).argmax(1)
    return [float((predicted[y == c] == c).float().mean()) for c in range(int(y.max()) + 1)]


def smoothness(curve: list[float]) -> float:
    """Standard deviation of the step-to-step changes of a curve (the spec's "smoother")."""
    steps = [b - a for a, b in zip(curve, curve[1:])]
    return statistics.pstdev(steps) if len(steps) > 1 else 0.0


def stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def slow_classes(setting: dict[str, Any], seed: int) -> tuple[list[int], list[int]]:
    """The classes held mostly by the slowest half of the clients, and by the fastest half."""
    import numpy as np

    from murmura.data import federate

    data = federate(setting["dataset"], setting["clients"], "dirichlet",
                    alpha=setting["alpha"], seed=seed)
    y = data.dataset.train_y.numpy()
    counts = np.stack([np.bincount(y[p], minlength=10) for p in data.parts])
    half = setting["clients"] // 2  # client 0 is the slowest under F-80
    slow = counts[:half].sum(0) > counts[half:].sum(0)
    return [c for c in range(10) if slow[c]], [c for c in range(10) if not slow[c]]


def summarize(name: str, setting: dict[str, Any], runs: list[dict[str, Any]]) -> dict:
    chosen = {}
    for arm in setting["arms"]:
        tried = {lr: [r for r in runs if r["arm"] == arm and r["lr"] == lr and r["seed"] == 0]
                 for lr in setting["lrs"]}
        final = {lr: rs[0]["train_loss"][-1] for lr, rs in tried.items() if rs}
        finite = {lr: v for lr, v in final.items() if v == v and v < float("inf")}
        chosen[arm] = min(finite, key=finite.get) if finite else setting["lrs"][0]
    table: dict[str, Any] = {}
    for arm, lr in chosen.items():
        mine = [r for r in runs if r["arm"] == arm and r["lr"] == lr]
        times = mine[0]["time"]
        middle = min(range(len(times)), key=lambda i: abs(times[i] - 100.0))
        table[arm] = {
            "lr": lr, "seeds": len(mine),
            "final_train_loss": stats([r["train_loss"][-1] for r in mine]),
            "final_accuracy": stats([r["test_accuracy"][-1] for r in mine]),
            "loss_at_100": stats([r["train_loss"][middle] for r in mine]),
            "smoothness": stats([smoothness(r["train_loss"]) for r in mine]),
            "updates": stats([r["updates"] for r in mine]),
            "seconds": stats([r["seconds"] for r in mine]),
            "mean_staleness": stats([
                sum(int(k) * v for k, v in r["staleness"].items())
                / max(1, sum(r["staleness"].values())) for r in mine]),
        }
        if name == "fedfix":
            gaps = []
            for r in mine:
                slow, fast = slow_classes(setting, r["seed"])
                acc = r["class_accuracy"]
                if slow and fast:
                    gaps.append(statistics.fmean(acc[c] for c in slow)
                                - statistics.fmean(acc[c] for c in fast))
            table[arm]["slow_minus_fast_class_accuracy"] = stats(gaps) if gaps else None
    criteria: dict[str, Any] = {}
    if name == "fedfix" and {"FL", "FedFix-0.5", "Async_weight"} <= set(table):
        fix, fl, asy = table["FedFix-0.5"], table["FL"], table["Async_weight"]
        def gap(arm: str) -> float:
            return (table[arm]["slow_minus_fast_class_accuracy"] or {"mean": 0.0})["mean"]

        criteria = {
            "fedfix_below_fl_at_t100": fix["loss_at_100"]["mean"] < fl["loss_at_100"]["mean"],
            "fedfix_final_at_most_async": (fix["final_train_loss"]["mean"]
                                           <= asy["final_train_loss"]["mean"]),
            "fedfix_smoother_than_async": (fix["smoothness"]["mean"]
                                           < asy["smoothness"]["mean"]),
            "async_identical_slow_classes_lag": (
                "Async_identical" in table and gap("Async_identical") <= gap("FL") - 0.05),
        }
        criteria["confirms"] = all(criteria.values())
    return {"chosen_lr": chosen, "table": table, "criteria": criteria}


def plot(results: dict[str, Any], runs: dict[str, list], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(len(names), 2, figsize=(9, 3.2 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        for col, key in enumerate(("train_loss", "test_accuracy")):
            ax = axes[row][col]
            for arm, lr in results[name]["chosen_lr"].items():
                mine = [r for r in runs[name] if r["arm"] == arm and r["lr"] == lr]
                curve = [statistics.fmean(v) for v in zip(*[r[key] for r in mine])]
                ax.plot(mine[0]["time"], curve, label=f"{arm} (lr {lr})")
            ax.set_title(f"{name}: {key.replace('_', ' ')}", fontsize=9)
            ax.set_xlabel("simulated time")
            if key == "train_loss":
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("the server's model on the virtual clock, mean of 3 seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="fedfix,fmnist")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: digits only, one seed, 20 time units")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.quick:
        names, seeds = ["fedfix"], [0]
        SETTINGS["fedfix"].update(until=20.0, lrs=[0.02])
    if "MURMURA_DATA" not in os.environ and DEFAULT_DATA.is_dir():
        os.environ["MURMURA_DATA"] = str(DEFAULT_DATA)
    out = args.out or HERE / "results"
    out.mkdir(parents=True, exist_ok=True)
    results, all_runs, start = {}, {}, time.perf_counter()
    pool = ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) \
        if args.workers > 1 else None
    mapper = pool.map if pool else map
    for name in names:
        setting = SETTINGS[name]
        sweep = [{"setting": setting, "arm": arm, "lr": lr, "seed": seeds[0]}
                 for arm in setting["arms"] for lr in setting["lrs"]]
        runs = list(mapper(run_one, sweep))
        chosen = summarize(name, setting, runs)["chosen_lr"]
        rest = [{"setting": setting, "arm": arm, "lr": chosen[arm], "seed": seed}
                for arm in setting["arms"] for seed in seeds[1:]]
        runs += list(mapper(run_one, rest))
        results[name] = summarize(name, setting, runs)
        all_runs[name] = runs
    if pool:
        pool.shutdown()
    wall = time.perf_counter() - start
    report = {"settings": {n: {k: v for k, v in SETTINGS[n].items()} for n in names},
              "seeds": seeds, "wall_seconds": wall, "results": results,
              "runs": {n: [{k: v for k, v in r.items() if k != "setting"} for r in rs]
                       for n, rs in all_runs.items()}}
    (out / "results.json").write_text(json.dumps(report, indent=1))
    plot(results, all_runs, (HERE if args.out is None else out) / "async.png")
    for name, result in results.items():
        print(f"== {name}")
        for arm, row in result["table"].items():
            print(f"{arm:16s} lr {row['lr']:<6} final loss {row['final_train_loss']['mean']:.4f}"
                  f" ± {row['final_train_loss']['std']:.4f}  acc "
                  f"{100 * row['final_accuracy']['mean']:.1f} ± "
                  f"{100 * row['final_accuracy']['std']:.1f}  loss@100 "
                  f"{row['loss_at_100']['mean']:.4f}  smooth {row['smoothness']['mean']:.4f}  "
                  f"updates {row['updates']['mean']:.0f}  stale "
                  f"{row['mean_staleness']['mean']:.2f}  {row['seconds']['mean']:.0f}s")
        print(json.dumps(result["criteria"]))
    print(f"wall time {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
