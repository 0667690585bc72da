"""FedSpeed (Sun et al., ICLR 2023): the spec's CPU reproduction (specs/federated.md §3 (e)).

digits, 50 clients, Dirichlet(0.1) (at least 2 samples a client: 5 is unreachable with 1,257
training images), 5 clients a round (murmura's ``fraction = 0.1`` samples exactly 10 % per round,
not each client with probability 0.1), MLP 64-64-10, batch 10, local lr 0.05 (no per-round
decay: murmura's federated rules have none), weight decay 1e-3 (FedAvg, FedSpeed; murmura's
FedProx has none), T = 200 rounds, local epochs E in {1, 5, 20}, seeds 0, 1, 2. Arms: FedAvg
(uniform average, as FedSpeed), FedProx (mu = 0.1, sample-weighted as murmura's fedprox),
FedSpeed (paper form, rho = 0.05, lamb = 0.1, alpha = 1); ``--arms fedspeed_code`` adds the
official code's server. Reported: the server model's test accuracy, final and mean of the last 5
evaluations (every 10 rounds).

    .venv/bin/python experiments/fedspeed/run.py                   # 27 runs, results/ here
    .venv/bin/python experiments/fedspeed/run.py --quick --out DIR # smoke run: 3 rounds
    .venv/bin/python experiments/fedspeed/run.py --plot-only       # redraw from results/
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))

ARMS: list[tuple[str, str, dict[str, Any]]] = [
    ("fedavg", "fedavg", {"weighting": "uniform", "weight_decay": 1e-3}),
    ("fedprox", "fedprox", {"mu": 0.1}),
    ("fedspeed", "fedspeed", {"rho": 0.05, "lamb": 0.1, "weight_decay": 1e-3}),
]
# not in the default run (time budget): the official code's server, ``--arms fedspeed_code``
EXTRA = [("fedspeed_code", "fedspeed",
          {"rho": 0.05, "lamb": 0.1, "weight_decay": 1e-3, "form": "code"})]
COLORS = {"fedavg": "C0", "fedprox": "C1", "fedspeed": "C2", "fedspeed_code": "C3"}
FULL = dict(epochs=[1, 5, 20], rounds=200, every=10, seeds=[0, 1, 2])
QUICK = dict(epochs=[1], rounds=3, every=1, seeds=[0])
COMMON = dict(nodes=50, alpha=0.1, min_size=2, hidden=[64], lr=0.05, batch_size=10,
              fraction=0.1)


def figure_path(out: Path, name: str) -> Path:
    """The figure sits next to the README for the default results, in ``out`` otherwise."""
    return HERE / name if out.resolve() == (HERE / "results").resolve() else out / name


def run_one(arm: tuple, epochs: int, seed: int, rounds: int, every: int) -> dict[str, Any]:
    import torch

    import murmura.algorithms.fedspeed  # noqa: F401  (registers "fedspeed")
    from murmura.data import federate
    from murmura.swarm import Evaluation, Simulation

    torch.set_num_threads(1)
    label, algorithm, extra = arm
    start = time.perf_counter()
    data = federate("digits", num_nodes=COMMON["nodes"], partition="dirichlet",
                    alpha=COMMON["alpha"], min_size=COMMON["min_size"], seed=seed)
    sim = Simulation(data, "mlp", algorithm, seed=seed, model_kwargs={"hidden": COMMON["hidden"]},
                     algorithm_kwargs=dict(lr=COMMON["lr"], batch_size=COMMON["batch_size"],
                                           local_epochs=epochs, fraction=COMMON["fraction"],
                                           **extra),
                     evaluation=Evaluation(every=every, node_samples=0))
    history = sim.run(rounds)
    curve = [(r["round"], r["test_accuracy"]) for r in history.records
             if r.get("test_accuracy") is not None]
    return dict(arm=label, epochs=epochs, seed=seed, curve=curve, final=curve[-1][1],
                last5=statistics.fmean(a for _, a in curve[-5:]),
                seconds=time.perf_counter() - start)


def summarize(runs: list[dict]) -> list[dict]:
    rows = []
    for label, *_ in ARMS + EXTRA:
        for e in sorted({r["epochs"] for r in runs}):
            group = [r for r in runs if r["arm"] == label and r["epochs"] == e]
            if not group:
                continue
            row = dict(arm=label, epochs=e, seeds=len(group))
            for key in ("final", "last5"):
                values = [r[key] for r in group]
                row[key] = statistics.fmean(values)
                row[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            rows.append(row)
    return rows


def plot(runs: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = sorted({r["epochs"] for r in runs})
    fig, axes = plt.subplots(1, len(epochs), figsize=(4.2 * len(epochs), 3.4), sharey=True)
    for ax, e in zip(axes if len(epochs) > 1 else [axes], epochs):
        for label, *_ in ARMS + EXTRA:
            group = [r for r in runs if r["arm"] == label and r["epochs"] == e]
            if not group:
                continue
            xs = [x for x, _ in group[0]["curve"]]
            ys = [statistics.fmean(r["curve"][i][1] for r in group) for i in range(len(xs))]
            ax.plot(xs, ys, color=COLORS[label], label=label)
        ax.set_title(f"E = {e} local epochs")
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    (axes[0] if len(epochs) > 1 else axes).set_ylabel("test accuracy (server model)")
    (axes[0] if len(epochs) > 1 else axes).legend()
    fig.suptitle("digits, 50 clients Dir(0.1), 5 per round (mean of seeds)")
    fig.tight_layout()
    fig.savefig(figure_path(out, "fedspeed.png"), dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 rounds, seed 0")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument("--arms", help="comma-separated arms to run (default: fedavg, fedprox, "
                        "fedspeed); their runs replace those in an existing results.json")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.plot_only:
        runs = json.loads((args.out / "results.json").read_text())["runs"]
        plot(runs, args.out)
        return
    cfg = QUICK if args.quick else FULL
    arms = ARMS
    if args.arms:
        known = {a[0]: a for a in ARMS + EXTRA}
        wanted = args.arms.split(",")
        if not set(wanted) <= set(known):
            parser.error(f"--arms: unknown arm(s) {sorted(set(wanted) - set(known))}; "
                         f"known: {sorted(known)}")
        arms = [known[a] for a in wanted]
    jobs = [(arm, e, s, cfg["rounds"], cfg["every"]) for e in cfg["epochs"][::-1] for arm in arms
            for s in cfg["seeds"]]
    start = time.perf_counter()
    runs = []
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        for fut in as_completed([pool.submit(run_one, *job) for job in jobs]):
            r = fut.result()
            runs.append(r)
            print(f"{r['arm']:9s} E={r['epochs']:<3d} seed {r['seed']}: final {r['final']:.4f} "
                  f"last5 {r['last5']:.4f} ({r['seconds']:.1f} s)", flush=True)
    wall = time.perf_counter() - start
    walls = {"+".join(a[0] for a in arms): wall}  # this invocation's arms: its wall time
    previous = args.out / "results.json"
    if args.arms and previous.exists():  # keep the other arms' runs
        old = json.loads(previous.read_text())
        runs += [r for r in old["runs"] if r["arm"] not in {a[0] for a in arms}]
        walls = old.get("wall_seconds_by_arms") or {"default": old.get("wall_seconds")}
        walls |= {"+".join(a[0] for a in arms): wall}
    runs.sort(key=lambda r: (r["arm"], r["epochs"], r["seed"]))
    summary = summarize(runs)
    (args.out / "results.json").write_text(json.dumps(
        dict(settings=dict(COMMON, **cfg), arms=ARMS + EXTRA, wall_seconds_by_arms=walls,
             summary=summary,
             runs=runs), indent=1))
    plot(runs, args.out)
    print(f"\nwall time {wall:.1f} s\n| arm | E | final acc | last-5 acc |\n|---|---|---|---|")
    for row in summary:
        print(f"| {row['arm']} | {row['epochs']} | {row['final']:.4f} ± {row['final_std']:.4f} "
              f"| {row['last5']:.4f} ± {row['last5_std']:.4f} |")


if __name__ == "__main__":
    main()
