"""DFedSAM / DFedSAM-MGS (Shi et al., ICML 2023): the spec's CPU reproduction (§3 (e)).

digits: 16 nodes on a ring (Metropolis weights: 1/3 self, 1/3 each neighbour), Dirichlet(0.3)
(at least 5 samples a node), MLP 64-64-10, K = 10 local steps of batch 16, lr 0.05, 100 rounds,
seeds 0, 1, 2; arms DFedAvg (rho = 0), DFedSAM rho in {0.01, 0.05, 0.1}, DFedAvg + MGS Q = 4,
DFedSAM(0.05) + MGS Q = 4, and FedAvg (every node every round, uniform average = gossip on the
complete graph with 1/N weights, the same local work).

fmnist: the spec's suggestion to make the SAM-only gain visible, within the time budget:
Fashion-MNIST, 16 nodes on the same ring, Dirichlet(0.1), MLP 784-128-10 (spec §0.3; the CNN is
far too slow here, see README), K = 50 local steps of batch 16, lr 0.05, 30 rounds, seeds 0-4;
arms DFedAvg, DFedSAM rho = 0.05, DFedAvg + MGS Q = 4, DFedSAM(0.05) + MGS Q = 4.

    .venv/bin/python experiments/dfedsam/run.py              # both groups, results/ here
    .venv/bin/python experiments/dfedsam/run.py --quick --out DIR   # smoke run: digits, 3 rounds
    .venv/bin/python experiments/dfedsam/run.py --plot-only  # redraw from results/
"""

from __future__ import annotations

import argparse
import csv
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
DEFAULT_DATA = HERE.parents[1].parent / "shared" / "datasets" / "fashion-mnist"

# (label, algorithm, its parameters beyond the group's common ones, topology)
DIGITS_ARMS = [
    ("dfedavg", "dfedsam", {"rho": 0.0}, "ring"),
    ("dfedsam_0.01", "dfedsam", {"rho": 0.01}, "ring"),
    ("dfedsam_0.05", "dfedsam", {"rho": 0.05}, "ring"),
    ("dfedsam_0.1", "dfedsam", {"rho": 0.1}, "ring"),
    ("dfedavg_mgs4", "dfedsam", {"rho": 0.0, "gossip_steps": 4}, "ring"),
    ("dfedsam_0.05_mgs4", "dfedsam", {"rho": 0.05, "gossip_steps": 4}, "ring"),
    ("fedavg", "fedavg", {"weighting": "uniform"}, None),
]
FMNIST_ARMS = [DIGITS_ARMS[i] for i in (0, 2, 4, 5)]
COLORS = {label: f"C{i}" for i, (label, *_) in enumerate(DIGITS_ARMS)}

GROUPS: dict[str, dict[str, Any]] = {
    "digits": dict(dataset="digits", alpha=0.3, min_size=5, hidden=[64], local_steps=10,
                   rounds=100, eval_every=1, seeds=[0, 1, 2], arms=DIGITS_ARMS),
    "fmnist": dict(dataset="fashion_mnist", alpha=0.1, min_size=10, hidden=[128], local_steps=50,
                   rounds=30, eval_every=2, seeds=[0, 1, 2, 3, 4], arms=FMNIST_ARMS),
}
COMMON = dict(nodes=16, lr=0.05, batch_size=16)
# smoke run: both groups on digits, 3 rounds, seed 0
QUICK = {"digits": dict(rounds=3, seeds=[0]),
         "fmnist": dict(dataset="digits", hidden=[16], local_steps=5, rounds=3, eval_every=1,
                        seeds=[0])}
CURVE_KEYS = ["node_accuracy_mean", "test_accuracy", "consensus_distance",
              "bytes_sent_per_node_mean"]


def figure_path(out: Path, name: str) -> Path:
    """The figure sits next to the README for the default results, in ``out`` otherwise."""
    return HERE / name if out.resolve() == (HERE / "results").resolve() else out / name


def run_one(group: str, settings: dict[str, Any], arm: tuple, seed: int) -> dict[str, Any]:
    """One (group, arm, seed): its curve of evaluated rounds and the wall time."""
    import torch

    from murmura.data import federate
    from murmura.swarm import Evaluation, Simulation

    torch.set_num_threads(1)
    label, algorithm, extra, topology = arm
    start, cpu = time.perf_counter(), time.process_time()
    data = federate(settings["dataset"], num_nodes=COMMON["nodes"], partition="dirichlet",
                    alpha=settings["alpha"], min_size=settings["min_size"], seed=seed)
    sim = Simulation(data, "mlp", algorithm, topology, seed=seed,
                     model_kwargs={"hidden": settings["hidden"]},
                     algorithm_kwargs=dict(lr=COMMON["lr"], batch_size=COMMON["batch_size"],
                                           local_steps=settings["local_steps"], **extra),
                     evaluation=Evaluation(every=settings["eval_every"], node_samples=500))
    history = sim.run(settings["rounds"])
    curve = [{"round": r["round"] + 1, **{k: r.get(k) for k in CURVE_KEYS}}
             for r in history if r.get("test_accuracy") is not None]
    return {"group": group, "arm": label, "seed": seed, "curve": curve,
            "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu}


# ---------------------------------------------------------------------------------------------
# summaries


def _stats(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "per_seed": values}


def by_seed(runs: dict[tuple, dict], seeds: list[int], a: str, b: str, fn: Any
            ) -> dict[str, Any] | None:
    """``fn(final of a, final of b)`` paired by seed (same split, graph, initial model)."""
    values = [fn(runs[(a, s)]["curve"][-1], runs[(b, s)]["curve"][-1]) for s in seeds
              if (a, s) in runs and (b, s) in runs]
    return _stats(values) if values else None


def summarize(results: list[dict[str, Any]], groups: dict[str, dict]) -> dict[str, Any]:
    """Final-round metrics per arm (mean, sample std over seeds) and the paired differences and
    ratios the spec's criteria are about."""
    out: dict[str, Any] = {}
    for group, settings in groups.items():
        runs = {(r["arm"], r["seed"]): r for r in results if r["group"] == group}
        arms: dict[str, Any] = {}
        for label, *_ in settings["arms"]:
            finals = [runs[(label, s)]["curve"][-1] for s in settings["seeds"]
                      if (label, s) in runs]
            if not finals:
                continue
            arms[label] = {k: _stats([f[k] for f in finals]) for k in CURVE_KEYS}
            for key in ("seconds", "cpu_seconds"):
                arms[label][key] = _stats([runs[(label, s)][key]
                                           for s in settings["seeds"] if (label, s) in runs])
        paired: dict[str, Any] = {}
        seeds = settings["seeds"]
        comparisons = [(a, "dfedavg") for a, *_ in settings["arms"] if a != "dfedavg"]
        comparisons += [("dfedsam_0.05_mgs4", "dfedsam_0.05"), ("fedavg", "dfedsam_0.05_mgs4")]
        for a, b in comparisons:
            d = by_seed(runs, seeds, a, b, lambda x, y: x["node_accuracy_mean"]
                        - y["node_accuracy_mean"])
            if d is not None:
                paired[f"{a} - {b}"] = {"node_accuracy_mean": d, "test_accuracy": by_seed(
                    runs, seeds, a, b, lambda x, y: x["test_accuracy"] - y["test_accuracy"])}
        for a, b in [("dfedavg", "dfedavg_mgs4"), ("dfedsam_0.05", "dfedsam_0.05_mgs4")]:
            r = by_seed(runs, seeds, a, b, lambda x, y: x["consensus_distance"]
                        / max(y["consensus_distance"], 1e-12))
            if r is not None:
                paired[f"consensus {a} / {b}"] = r
        out[group] = {"settings": {k: v for k, v in settings.items() if k != "arms"}
                      | COMMON, "arms": arms, "paired": paired}
    return out


def verdicts(summary: dict[str, Any]) -> dict[str, Any]:
    """The spec's 'confirms if' criteria, on the mean node accuracy (the paper's metric):
    DFedAvg <= DFedSAM < DFedSAM-MGS <= FedAvg; MGS gain >= 2 points with consensus error
    down >= 5x."""
    out: dict[str, Any] = {}
    for group, entry in summary.items():
        arms, paired = entry["arms"], entry["paired"]
        acc = {label: a["node_accuracy_mean"]["mean"] for label, a in arms.items()}.get
        checks: dict[str, Any] = {}
        base, sam, mgs, fed = (acc("dfedavg"), acc("dfedsam_0.05"), acc("dfedsam_0.05_mgs4"),
                               acc("fedavg"))
        for rho in ("0.01", "0.05", "0.1"):
            if acc(f"dfedsam_{rho}") is not None:
                checks[f"DFedAvg <= DFedSAM({rho})"] = acc(f"dfedsam_{rho}") >= base
        if sam is not None and mgs is not None:
            checks["DFedSAM(0.05) < DFedSAM(0.05)-MGS"] = mgs > sam
        if fed is not None and mgs is not None:
            checks["DFedSAM-MGS <= FedAvg"] = mgs <= fed
        for a, b in [("dfedavg_mgs4", "dfedavg"), ("dfedsam_0.05_mgs4", "dfedsam_0.05")]:
            gain = paired.get(f"{a} - {b}")
            if gain is not None:
                checks[f"{a} - {b} >= 2 points"] = gain["node_accuracy_mean"]["mean"] >= 0.02
        for a, b in [("dfedavg", "dfedavg_mgs4"), ("dfedsam_0.05", "dfedsam_0.05_mgs4")]:
            r = paired.get(f"consensus {a} / {b}")
            if r is not None:
                checks[f"consensus {a} / {b} >= 5"] = r["mean"] >= 5
        out[group] = checks
    return out


def pct(stat: dict[str, Any]) -> str:
    return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def markdown(summary: dict[str, Any], checks: dict[str, Any]) -> str:
    lines = []
    for group, entry in summary.items():
        s = entry["settings"]
        lines += [f"### {group}: {s['dataset']}, {s['nodes']} nodes, ring, Dirichlet "
                  f"{s['alpha']}, MLP {s['hidden']}, K={s['local_steps']}, B={s['batch_size']}, "
                  f"lr {s['lr']}, {s['rounds']} rounds, seeds {s['seeds']}", "",
                  "| arm | node acc mean (%) | x̄ acc (%) | consensus distance | MB sent / node "
                  "| s / run (CPU s) |", "|---|---|---|---|---|---|"]
        for label, a in entry["arms"].items():
            lines.append(
                f"| {label} | {pct(a['node_accuracy_mean'])} | {pct(a['test_accuracy'])} | "
                f"{a['consensus_distance']['mean']:.4f} ± {a['consensus_distance']['std']:.4f} | "
                f"{a['bytes_sent_per_node_mean']['mean'] / 1e6:.2f} | "
                f"{a['seconds']['mean']:.1f} ({a['cpu_seconds']['mean']:.1f}) |")
        lines += ["", "| paired by seed | node acc (points) | x̄ acc (points) |", "|---|---|---|"]
        for name, p in entry["paired"].items():
            if name.startswith("consensus"):
                lines.append(f"| {name} (ratio) | {p['mean']:.1f} ± {p['std']:.1f} | |")
            else:
                lines.append(f"| {name} | {pct(p['node_accuracy_mean'])} | "
                             f"{pct(p['test_accuracy'])} |")
        lines += ["", "| criterion | holds |", "|---|---|"]
        lines += [f"| {k} | {'yes' if v else 'no'} |" for k, v in checks[group].items()]
        lines.append("")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], groups: dict[str, dict], path: Path, note: str = ""
         ) -> Path:
    """Per group: the nodes' mean accuracy and x̄'s accuracy per round, mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(groups), 2, figsize=(11, 4 * len(groups)), squeeze=False)
    for row, (group, settings) in enumerate(groups.items()):
        for label, *_ in settings["arms"]:
            curves = [r["curve"] for r in results if r["group"] == group and r["arm"] == label]
            if not curves:
                continue
            rounds = [c["round"] for c in curves[0]]
            for ax, key in zip(axes[row], ["node_accuracy_mean", "test_accuracy"]):
                mean = [100 * statistics.fmean(c[j][key] for c in curves)
                        for j in range(len(rounds))]
                ax.plot(rounds, mean, color=COLORS[label], label=label,
                        linestyle="--" if "mgs" in label else "-")
        s = settings
        for ax, what in zip(axes[row], ["nodes' own models (mean)", "average model x̄"]):
            ax.set_title(f"{group}: {what}; α={s['alpha']}, K={s['local_steps']}, "
                         f"{len(s['seeds'])} seeds", fontsize=10)
            ax.set_xlabel("round")
            ax.set_ylabel("test accuracy (%)")
            ax.grid(alpha=0.3)
            last = [100 * r["curve"][-1]["node_accuracy_mean"] for r in results
                    if r["group"] == group]
            if last:
                ax.set_ylim(max(0.0, min(last) - 20), min(100.0, max(last) + 3))
        axes[row][0].legend(fontsize=8)
    fig.suptitle("DFedSAM / DFedSAM-MGS on a 16-node ring (mean over seeds)" + note)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write(out: Path, results: list[dict[str, Any]], groups: dict[str, dict], wall: float,
          note: str = "") -> str:
    summary = summarize(results, groups)
    checks = verdicts(summary)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(
        {"wall_seconds": wall, "groups": summary, "criteria": checks}, indent=2) + "\n")
    with (out / "curves.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["group", "arm", "seed", "round", *CURVE_KEYS])
        for r in sorted(results, key=lambda r: (r["group"], r["arm"], r["seed"])):
            for c in r["curve"]:
                writer.writerow([r["group"], r["arm"], r["seed"], c["round"],
                                 *[c[k] for k in CURVE_KEYS]])
    with (out / "runs.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["group", "arm", "seed", "seconds", "cpu_seconds", *CURVE_KEYS])
        for r in sorted(results, key=lambda r: (r["group"], r["arm"], r["seed"])):
            writer.writerow([r["group"], r["arm"], r["seed"], f"{r['seconds']:.2f}",
                             f"{r['cpu_seconds']:.2f}",
                             *[r["curve"][-1][k] for k in CURVE_KEYS]])
    table = markdown(summary, checks)
    (out / "table.md").write_text(table + f"\nwall time of the script: {wall:.0f} s\n")
    plot(results, groups, figure_path(out, "accuracy.png"), note)
    return table


def read_curves(out: Path) -> list[dict[str, Any]]:
    """The runs back from curves.csv and runs.csv (for --plot-only)."""
    runs: dict[tuple, dict[str, Any]] = {}
    with (out / "runs.csv").open() as f:
        for row in csv.DictReader(f):
            runs[(row["group"], row["arm"], int(row["seed"]))] = {
                "group": row["group"], "arm": row["arm"], "seed": int(row["seed"]),
                "seconds": float(row["seconds"]), "cpu_seconds": float(row["cpu_seconds"]),
                "curve": []}
    with (out / "curves.csv").open() as f:
        for row in csv.DictReader(f):
            runs[(row["group"], row["arm"], int(row["seed"]))]["curve"].append(
                {"round": int(row["round"]), **{k: float(row[k]) for k in CURVE_KEYS}})
    return list(runs.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: digits, 3 rounds")
    parser.add_argument("--out", default=None, help="results folder (default: results/ here)")
    parser.add_argument("--only", choices=sorted(GROUPS), default=None, help="one group")
    parser.add_argument("--workers", type=int, default=2, help="processes (1 torch thread each)")
    parser.add_argument("--plot-only", action="store_true", help="redraw from --out")
    args = parser.parse_args(argv)
    groups = {g: {**s, **(QUICK[g] if args.quick else {})} for g, s in GROUPS.items()
              if args.only in (None, g)}
    out = Path(args.out) if args.out else HERE / "results"
    note = " [QUICK SMOKE RUN: digits, 3 rounds]" if args.quick else ""
    if args.plot_only:
        wall = json.loads((out / "summary.json").read_text())["wall_seconds"]
        print(write(out, read_curves(out), groups, wall, note))
        return 0
    if not args.quick and "MURMURA_DATA" not in os.environ and DEFAULT_DATA.is_dir():
        os.environ["MURMURA_DATA"] = str(DEFAULT_DATA)  # the spawned workers inherit it
    # glibc hands every freed block over 128 KB back to the OS and faults it in again at the
    # next step; keeping them in the heap makes a vmapped SAM step about 2x cheaper (README)
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(32 * 2**20))  # glibc's largest
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", str(2**30))
    # the slow (SAM, Fashion-MNIST) runs first, so the two workers finish together
    jobs = [(g, s, arm, seed) for g, s in groups.items() for arm in s["arms"]
            for seed in s["seeds"]]
    jobs.sort(key=lambda j: (j[0] != "fmnist", j[2][2].get("rho", 0) == 0))
    start = time.perf_counter()
    results = []
    if args.workers <= 1 or args.quick:
        for job in jobs:
            results.append(run_one(*job))
    else:
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(run_one, *job) for job in jobs]
            for i, future in enumerate(as_completed(futures), 1):
                r = future.result()
                results.append(r)
                final = r["curve"][-1]
                print(f"[{i}/{len(jobs)}] {r['group']}/{r['arm']} seed {r['seed']}: node acc "
                      f"{100 * final['node_accuracy_mean']:.2f}%, x̄ "
                      f"{100 * final['test_accuracy']:.2f}%, {r['seconds']:.1f} s", flush=True)
    wall = time.perf_counter() - start
    print(write(out, results, groups, wall, note))
    print(f"wall time {wall:.0f} s ({wall / 60:.1f} min); results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
