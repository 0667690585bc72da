"""Curricula in FL (Vahidian et al., ICCV 2023): FedAvg against curriculum, anti-curriculum and
random-curriculum local training, and curriculum + curriculum client selection, under a
pathological (2 classes per client) and an IID split of digits; the spec's CPU reproduction
(specs/federated.md section 7e), through murmura's engine; 3 seeds.

Setup: 50 clients, 10 per round, 5 local epochs of SGD (lr 0.05, batch 10), 100 rounds, MLP
64-64-10; samples scored by the received global model; linear pacing a = 0.8, b = 0.2 over each
client's global step.

    .venv/bin/python experiments/curriculum/run.py
    .venv/bin/python experiments/curriculum/run.py --quick --out /tmp/curriculum   # smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
NODES, PER_ROUND, ROUNDS, EVERY = 50, 10, 100, 5
SHARED = dict(lr=0.05, local_epochs=5, batch_size=10, clients_per_round=PER_ROUND)
PACED = dict(pacing="linear", a=0.8, b=0.2, scoring="global")
ARMS = {  # arm: (algorithm, parameters beyond the shared ones)
    "vanilla": ("fedavg", {}),
    "curriculum": ("curriculum", {**PACED, "ordering": "curriculum"}),
    "anti": ("curriculum", {**PACED, "ordering": "anti"}),
    "random": ("curriculum", {**PACED, "ordering": "random"}),
    "curriculum+selection": ("curriculum", {**PACED, "ordering": "curriculum",
                                            "client_selection": True}),
}
SPLITS = {"pathological": {"partition": "pathological", "classes_per_node": 2},
          "iid": {"partition": "iid"}}


def figure_path(out: Path, name: str) -> Path:
    """The figure sits next to the README for the default results, in ``out`` otherwise."""
    return HERE / name if out.resolve() == (HERE / "results").resolve() else out / name


def run_one(split: str, arm: str, seed: int, rounds: int) -> dict[str, Any]:
    from murmura.data import federate
    from murmura.swarm import Evaluation, Simulation

    data = federate("digits", num_nodes=NODES, seed=seed, **SPLITS[split])
    name, extra = ARMS[arm]
    sim = Simulation(data, "mlp", name, seed=seed, model_kwargs={"hidden": [64]},
                     algorithm_kwargs={**SHARED, **extra},
                     evaluation=Evaluation(every=min(EVERY, rounds)))
    start = time.perf_counter()
    history = sim.run(rounds)
    curve = [(r["round"] + 1, r["test_accuracy"]) for r in history.records
             if "test_accuracy" in r]
    return {"split": split, "arm": arm, "seed": seed,
            "final": statistics.fmean(acc for _, acc in curve[-3:]),  # last 3 evaluations
            "mean_over_run": statistics.fmean(acc for _, acc in curve),
            "at_round_20": next((acc for t, acc in curve if t >= 20), curve[-1][1]),
            "seconds": time.perf_counter() - start, "curve": curve}


def stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def verdict(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The spec's criteria, computed from the runs (paired by seed)."""
    def final(split: str, arm: str) -> dict[int, float]:
        return {r["seed"]: r["final"] for r in runs if r["split"] == split and r["arm"] == arm}

    def gap(split: str, arm: str, base: str = "vanilla") -> float:
        x, y = final(split, arm), final(split, base)
        return statistics.fmean(x[s] - y[s] for s in x)

    path_gap, iid_gap = gap("pathological", "curriculum"), gap("iid", "curriculum")
    return {
        "curriculum_minus_vanilla": {"pathological": path_gap, "iid": iid_gap},
        "anti_minus_curriculum": gap("pathological", "anti", "curriculum"),
        "random_minus_curriculum": gap("pathological", "random", "curriculum"),
        "selection_minus_curriculum": gap("pathological", "curriculum+selection", "curriculum"),
        "gain_at_least_1_point": path_gap >= 0.01,
        "gain_larger_than_iid": path_gap > iid_gap,
        "anti_and_random_not_better": (gap("pathological", "anti", "curriculum") <= 0
                                       and gap("pathological", "random", "curriculum") <= 0),
    }


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, split in zip(axes, SPLITS):
        for arm in ARMS:
            mine = [r["curve"] for r in runs if r["arm"] == arm and r["split"] == split]
            if not mine:
                continue
            x = [t for t, _ in mine[0]]
            ax.plot(x, [statistics.fmean(c[i][1] for c in mine) for i in range(len(x))],
                    label=arm)
        ax.set_title(f"{split} split")
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (server model)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, 4 rounds")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small models: one thread per run (the machine is shared)
    seeds, rounds = ([0], 4) if args.quick else ([0, 1, 2], ROUNDS)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs = []
    for split in SPLITS:
        for arm in ARMS:
            for seed in seeds:
                r = run_one(split, arm, seed, rounds)
                runs.append(r)
                print(f"{split:12s} {arm:20s} seed {seed}: final {r['final']:.4f} "
                      f"mean {r['mean_over_run']:.4f} ({r['seconds']:.1f} s)", flush=True)
    table = {}
    for r in runs:
        table.setdefault(f"{r['split']}/{r['arm']}", []).append(r)
    summary = {key: {m: stats([r[m] for r in rs]) for m in ("final", "mean_over_run",
                                                            "at_round_20")}
               for key, rs in table.items()}
    wall = time.perf_counter() - start
    stem = "quick" if args.quick else "results"
    (args.out / f"{stem}.json").write_text(json.dumps(
        {"seeds": seeds, "rounds": rounds, "wall_seconds": wall, "table": summary,
         "verdict": verdict(runs), "runs": runs}, indent=1))
    plot(runs, figure_path(args.out, f"curriculum_{stem}.png"))
    print(json.dumps(verdict(runs), indent=1))
    print(f"wall {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
