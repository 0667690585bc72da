"""FedAU (Wang and Ji, ICLR 2024) against FedAvg's mean over participants and the known-
probability oracle, under participation correlated with the clients' labels (the spec's CPU
pilot, specs/federated.md section 2e), through murmura's engine; 3 seeds.

Participation: FedAU's generator, computed here from the split: one global draw
pi ~ Dir(0.1 * 1_C), p_n = max(0.02, C * 0.1 * sum_c frac_{n,c} pi_c), so the holders of some
classes rarely show up; Bernoulli(p_n) every round (murmura's ``bernoulli`` participation with
those p_n given). Control: every p_n = 0.1.

    .venv/bin/python experiments/fedau/run.py
    .venv/bin/python experiments/fedau/run.py --quick --out /tmp/fedau      # smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
NODES, ROUNDS = 100, 600
ARMS = {  # arm: (algorithm, parameters beyond the shared ones)
    "average_participating": ("fedavg", {"weighting": "uniform"}),
    "fedau": ("fedau", {}),
    "known_prob": ("fedau", {"known_prob": True}),
}


def figure_path(out: Path, name: str) -> Path:
    """The figure sits next to the README for the default results, in ``out`` otherwise."""
    return HERE / name if out.resolve() == (HERE / "results").resolve() else out / name


def label_correlated(data: Any, seed: int, mean: float = 0.1, floor: float = 0.02) -> list:
    """FedAU's ``data_participation_each_node``: p_n from the client's label fractions."""
    y = data.dataset.train_y
    classes = data.dataset.num_classes
    frac = np.zeros((data.num_nodes, classes))
    for n in range(data.num_nodes):
        labels = y[data.index_table[n, : int(data.sizes[n])]].numpy()
        frac[n] = np.bincount(labels, minlength=classes) / len(labels)
    pi = np.random.default_rng([seed, 2024]).dirichlet(0.1 * np.ones(classes))
    return np.maximum(floor, classes * mean * frac @ pi).tolist()


def worst_class(sim: Any) -> float:
    from torch.func import functional_call

    row = sim.server_state.get("params", sim.params[0]) if sim.server_state else sim.params[0]
    data = sim.data.dataset
    with torch.no_grad():
        out = functional_call(sim.model, (sim.spec.views(row), sim.buffers), (data.test_x,))
    hit = out.argmax(-1) == data.test_y
    return min(float(hit[data.test_y == c].float().mean()) for c in range(data.num_classes))


def run_one(arm: str, seed: int, homogeneous: bool, rounds: int) -> dict[str, Any]:
    from murmura.data import federate
    from murmura.swarm import Evaluation, Simulation

    data = federate("digits", num_nodes=NODES, partition="dirichlet", alpha=0.1,
                   min_size=1, seed=seed)
    p = 0.1 if homogeneous else label_correlated(data, seed)
    name, extra = ARMS[arm]
    params = dict(lr=0.05, local_steps=5, batch_size=16,
                  participation={"name": "bernoulli", "p": p}, **extra)
    sim = Simulation(data, "mlp", name, seed=seed, model_kwargs={"hidden": [32]},
                     algorithm_kwargs=params, evaluation=Evaluation(every=max(1, rounds // 12)))
    start = time.perf_counter()
    history = sim.run(rounds)
    curve = [(r["round"] + 1, r["test_accuracy"]) for r in history.records
             if "test_accuracy" in r]
    return {"arm": arm, "seed": seed, "homogeneous": homogeneous,
            "final": statistics.fmean(a for _, a in curve[-3:]), "worst_class": worst_class(sim),
            "p_mean": float(np.mean(p)), "seconds": time.perf_counter() - start, "curve": curve}


def stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, homogeneous in zip(axes, (False, True)):
        for arm in ARMS:
            mine = [r["curve"] for r in runs if r["arm"] == arm and r["homogeneous"] == homogeneous]
            if not mine:
                continue
            x = [t for t, _ in mine[0]]
            ax.plot(x, [statistics.fmean(c[i][1] for c in mine) for i in range(len(x))],
                    label=arm)
        ax.set_title("homogeneous p = 0.1" if homogeneous else "label-correlated p_n")
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (server model)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, 12 rounds")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    seeds, rounds = ([0], 12) if args.quick else ([0, 1, 2], ROUNDS)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs = []
    for homogeneous, arms in ((False, list(ARMS)), (True, ["average_participating", "fedau"])):
        for arm in arms:
            for seed in seeds:
                r = run_one(arm, seed, homogeneous, rounds)
                runs.append(r)
                print(f"{'homog.' if homogeneous else 'skewed'} {arm:22s} seed {seed}: "
                      f"{r['final']:.4f} worst class {r['worst_class']:.3f} ({r['seconds']:.0f} s)",
                      flush=True)
    table = {}
    for r in runs:
        key = f"{'homogeneous' if r['homogeneous'] else 'correlated'}/{r['arm']}"
        table.setdefault(key, []).append(r)
    summary = {key: {m: stats([r[m] for r in rs]) for m in ("final", "worst_class")}
               for key, rs in table.items()}
    wall = time.perf_counter() - start
    stem = "quick" if args.quick else "results"
    (args.out / f"{stem}.json").write_text(json.dumps(
        {"seeds": seeds, "rounds": rounds, "wall_seconds": wall, "table": summary, "runs": runs},
        indent=1))
    plot(runs, figure_path(args.out, f"fedau_{stem}.png"))
    print(f"wall {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
