"""The baseline algorithms side by side on Fashion-MNIST, from the TOML files in configs/.

Federated (100 clients, 10 per round, Dirichlet 0.1, MLP 784-200-10, 200 rounds of 10 local
steps): fedavg, fedprox, scaffold, fedavgm, fedadam, fedyogi, fedadagrad. Decentralized (32
nodes, same split, 100 rounds of 5 local steps) on a ring and on a random 4-regular graph: dsgd,
gradient_tracking, choco with top-1% and top-10% compression. Every arm runs over seeds 0, 1, 2
through ``murmura.runner.run_experiment``; the run directories go to ``--runs`` (outside the
repository by default), the compact results (per-run table, curves, summary, figures) next to
this file.

    .venv/bin/python experiments/baselines/run.py                 # all 45 runs (12.7 min here)
    .venv/bin/python experiments/baselines/run.py --quick         # smoke run: digits, 3 rounds
    .venv/bin/python experiments/baselines/run.py --plot-only     # redraw from results/
    .venv/bin/python experiments/baselines/run.py --only choco    # a subset of the arms

Each config also runs alone: ``murmura run experiments/baselines/configs/federated/scaffold.toml``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
DEFAULT_DATA = HERE.parents[1].parent / "shared" / "datasets" / "fashion-mnist"

FEDERATED = ["fedavg", "fedprox", "scaffold", "fedavgm", "fedadam", "fedyogi", "fedadagrad"]
DECENTRALIZED = ["dsgd", "gradient_tracking", "choco_top1", "choco_top10"]
TOPOLOGIES = ["ring", "random_regular"]

# (group, arm, config file): the group is the panel an arm is drawn in
ARMS: list[tuple[str, str, Path]] = (
    [("federated", a, CONFIGS / "federated" / f"{a}.toml") for a in FEDERATED]
    + [(t, a, CONFIGS / "decentralized" / t / f"{a}.toml") for t in TOPOLOGIES
       for a in DECENTRALIZED]
)

# The smoke run: the same configs on scikit-learn's digits (offline, seconds), 3 rounds; its
# 1,257 training images cannot give 100 Dirichlet(0.1) clients 6 samples each, so 20 clients.
QUICK_OVERRIDES = ['data.dataset="digits"', "rounds=3", "evaluation.every=1"]
QUICK_FEDERATED = ["data.nodes=20"]

CURVE_KEYS = ["test_accuracy", "node_accuracy_mean", "bytes_sent_per_node_mean",
              "bytes_sent_total", "consensus_distance"]


def label(group: str, arm: str) -> str:
    return arm if group == "federated" else f"{group}/{arm}"


# ---------------------------------------------------------------------------------------------
# one run (in a worker process)


def run_one(group: str, arm: str, config: str, seed: int, overrides: list[str],
            run_dir: str) -> dict[str, Any]:
    """One (arm, seed) through murmura's runner; never raises: a failure is a result."""
    import traceback

    from rich.console import Console

    from murmura.config import Experiment
    from murmura.runner import run_experiment

    row: dict[str, Any] = dict(group=group, arm=arm, seed=seed, status="failed", message="",
                               seconds=0.0, rounds_done=0)
    curve: list[dict[str, Any]] = []
    start = time.perf_counter()
    try:
        exp = Experiment.from_toml(config, overrides=[*overrides, f"seed={seed}"])
        result = run_experiment(exp, run_dir, progress=False, console=Console(quiet=True))
        row["status"] = result.status
        row["message"] = result.summary.get("message") or ""
        for record in result.history:
            if record.get("test_accuracy") is None:
                continue
            curve.append({"round": record["round"] + 1,
                          **{k: record.get(k) for k in CURVE_KEYS}})
        row["rounds_done"] = len(result.history)
    except Exception as error:  # a crash is reported, never fatal to the other arms
        row["message"] = f"{type(error).__name__}: {error}\n{traceback.format_exc()}"
    row["seconds"] = time.perf_counter() - start
    # the checkpoints (tens of MB per run) are not needed: metrics.csv and summary.json stay
    shutil.rmtree(Path(run_dir) / "checkpoints", ignore_errors=True)
    return {"row": row, "curve": curve}


# ---------------------------------------------------------------------------------------------
# summaries


def _finite(values: list[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def run_metrics(curve: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures one run contributes to the table (from its evaluated rounds)."""
    if not curve:
        return {}
    acc = [c["test_accuracy"] for c in curve]
    last = curve[-1]
    out = {
        "final_round": last["round"],
        "test_accuracy": last["test_accuracy"],
        "test_accuracy_last5": statistics.fmean(acc[-5:]),
        # round-to-round wobble of the server/average model late in training (FedProx's claim)
        "oscillation_last10": statistics.pstdev(acc[-10:]) if len(acc) > 1 else 0.0,
        "node_accuracy_mean": last.get("node_accuracy_mean"),
        "mb_sent_per_node": (last.get("bytes_sent_per_node_mean") or 0.0) / 1e6,
        "mb_sent_total": (last.get("bytes_sent_total") or 0.0) / 1e6,
    }
    return out


def mb_to_reach(curve: list[dict[str, Any]], target: float) -> float | None:
    """MB sent per node at the first evaluated round whose x̄ accuracy is >= target."""
    for c in curve:
        if c["test_accuracy"] is not None and c["test_accuracy"] >= target:
            return c["bytes_sent_per_node_mean"] / 1e6
    return None


def summarize(rows: list[dict[str, Any]], curves: dict[tuple[str, str, int], list]
              ) -> list[dict[str, Any]]:
    """Mean, sample std and min/max over seeds per arm; failed runs counted, not averaged."""
    out = []
    for group, arm, _ in ARMS:
        members = [r for r in rows if r["group"] == group and r["arm"] == arm]
        if not members:
            continue
        done = [r for r in members if r["status"] == "completed"]
        entry: dict[str, Any] = {"group": group, "arm": arm, "label": label(group, arm),
                                 "runs": len(members), "completed": len(done),
                                 "failed": [r["seed"] for r in members
                                            if r["status"] != "completed"]}
        for key in ["test_accuracy", "test_accuracy_last5", "oscillation_last10",
                    "node_accuracy_mean", "mb_sent_per_node", "seconds"]:
            values = _finite([r.get(key) for r in done])
            entry[key] = {
                "mean": statistics.fmean(values) if values else None,
                "std": statistics.stdev(values) if len(values) > 1 else (0.0 if values else None),
                "min": min(values) if values else None,
                "max": max(values) if values else None,
            }
        if group != "federated" and arm != "dsgd":
            # paired by seed (same split, same graph): bytes to reach D-SGD's final accuracy - 1
            reached, mb, mb_dsgd = [], [], []
            for r in done:
                ref = curves.get((group, "dsgd", r["seed"]))
                own = curves.get((group, arm, r["seed"]))
                if not ref or not own:
                    continue
                target = ref[-1]["test_accuracy"] - 0.01
                hit, hit_ref = mb_to_reach(own, target), mb_to_reach(ref, target)
                reached.append(hit is not None)
                if hit is not None:
                    mb.append(hit)
                    mb_dsgd.append(hit_ref)
            entry["reach_dsgd_minus_1pt"] = {
                "seeds_reached": sum(reached), "seeds": len(reached),
                "mb_per_node_mean": statistics.fmean(mb) if mb else None,
                "dsgd_mb_per_node_mean": statistics.fmean(mb_dsgd) if mb_dsgd else None,
            }
        out.append(entry)
    return out


def acc_at_bytes(curve: list[dict[str, Any]], budget_mb: float, window: int = 1
                 ) -> float | None:
    """Mean x̄ accuracy over the last ``window`` evaluations that had sent at most
    ``budget_mb`` MB per node (None: no evaluation that early)."""
    within = [c["test_accuracy"] for c in curve
              if c["bytes_sent_per_node_mean"] / 1e6 <= budget_mb * (1 + 1e-9)]
    return statistics.fmean(within[-window:]) if within else None


def _stats(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else (0.0 if values else None),
            "per_seed": values}


def claims(curves: dict[tuple[str, str, int], list]) -> dict[str, Any]:
    """The comparisons the README's verdicts rest on, paired by seed (same split, same client
    sample / graph, same initial model): the arm minus its reference, at the same round and at
    the same bytes sent per node."""
    out: dict[str, Any] = {}
    pairs = [("federated", a, "fedavg", 5) for a in FEDERATED if a != "fedavg"] + [
        (t, a, "dsgd", 1) for t in TOPOLOGIES for a in DECENTRALIZED if a != "dsgd"]
    for group, arm, ref, window in pairs:
        final, last5, nodes, same_bytes, wins = [], [], [], [], 0
        seeds = sorted(s for (g, a, s) in curves if g == group and a == arm)
        for seed in seeds:
            own, base = curves.get((group, arm, seed)), curves.get((group, ref, seed))
            if not own or not base or len(own) != len(base):
                continue  # a failed run has a shorter curve: no pair
            d = own[-1]["test_accuracy"] - base[-1]["test_accuracy"]
            final.append(d)
            wins += d > 0
            last5.append(statistics.fmean(c["test_accuracy"] for c in own[-5:])
                         - statistics.fmean(c["test_accuracy"] for c in base[-5:]))
            if own[-1].get("node_accuracy_mean") is not None:
                nodes.append(own[-1]["node_accuracy_mean"] - base[-1]["node_accuracy_mean"])
            # at the bytes the cheaper of the two had sent by the end
            budget = min(own[-1]["bytes_sent_per_node_mean"],
                         base[-1]["bytes_sent_per_node_mean"]) / 1e6
            a_own, a_base = (acc_at_bytes(own, budget, window),
                             acc_at_bytes(base, budget, window))
            same_bytes.append(None if a_own is None or a_base is None else a_own - a_base)
        out[f"{label(group, arm)} - {ref}"] = {
            "final_diff": _stats(final), "last5_diff": _stats(last5),
            "node_accuracy_diff": _stats(nodes), "seeds_arm_better_final": wins,
            "same_bytes_window": window,
            "same_bytes_diff": _stats([v for v in same_bytes if v is not None]),
            "same_bytes_unavailable_seeds": sum(v is None for v in same_bytes),
        }
    return out


def claims_table(found: dict[str, Any]) -> str:
    lines = ["| comparison (paired by seed) | final x̄ acc diff (pts) | last-5-evals diff (pts) |"
             " node acc diff (pts) | seeds better (final) | x̄ acc diff at equal MB/node (pts) |",
             "|---|---|---|---|---|---|"]
    for name, c in found.items():
        def pm(stat):
            return "-" if stat["mean"] is None else (
                f"{100 * stat['mean']:+.2f} ± {100 * stat['std']:.2f}")
        same = pm(c["same_bytes_diff"])
        if c["same_bytes_unavailable_seeds"]:
            same = "no evaluation that early"
        lines.append(f"| {name} | {pm(c['final_diff'])} | {pm(c['last5_diff'])} | "
                     f"{pm(c['node_accuracy_diff'])} | {c['seeds_arm_better_final']}/"
                     f"{len(c['final_diff']['per_seed'])} | {same} |")
    return "\n".join(lines)


def _pm(stat: dict[str, Any], scale: float = 100.0, digits: int = 2) -> str:
    if stat["mean"] is None:
        return "-"
    return f"{scale * stat['mean']:.{digits}f} ± {scale * stat['std']:.{digits}f}"


def markdown_table(summary: list[dict[str, Any]]) -> str:
    lines = ["| arm | runs ok | x̄ acc, final (%) | x̄ acc, mean of last 5 evals (%) | "
             "late oscillation (std of last 10 evals, pts) | node acc mean (%) | MB sent / node |"
             " s / run |", "|---|---|---|---|---|---|---|---|"]
    for s in summary:
        failed = f" (failed: seeds {s['failed']})" if s["failed"] else ""
        lines.append(
            f"| {s['label']} | {s['completed']}/{s['runs']}{failed} | {_pm(s['test_accuracy'])} | "
            f"{_pm(s['test_accuracy_last5'])} | {_pm(s['oscillation_last10'])} | "
            f"{_pm(s['node_accuracy_mean'])} | {_pm(s['mb_sent_per_node'], 1.0, 2)} | "
            f"{_pm(s['seconds'], 1.0, 1)} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# results files


def write_results(out: Path, rows: list[dict[str, Any]], curves: dict, wall: float,
                  args: argparse.Namespace) -> list[dict[str, Any]]:
    out.mkdir(parents=True, exist_ok=True)
    for r in rows:
        r.update(run_metrics(curves.get((r["group"], r["arm"], r["seed"]), [])))
    columns = ["group", "arm", "seed", "status", "rounds_done", "final_round", "test_accuracy",
               "test_accuracy_last5", "oscillation_last10", "node_accuracy_mean",
               "mb_sent_per_node", "mb_sent_total", "seconds", "message"]
    with (out / "runs.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, columns, extrasaction="ignore")
        writer.writeheader()
        for r in sorted(rows, key=lambda r: ([a[:2] for a in ARMS].index((r["group"], r["arm"])),
                                             r["seed"])):
            writer.writerow({**r, "message": r["message"].splitlines()[0] if r["message"]
                             else ""})
    with (out / "curves.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["group", "arm", "seed", "round", *CURVE_KEYS])
        for (group, arm, seed), curve in sorted(curves.items()):
            for c in curve:
                writer.writerow([group, arm, seed, c["round"], *(c[k] for k in CURVE_KEYS)])
    summary = summarize(rows, curves)
    found = claims(curves)
    (out / "summary.json").write_text(json.dumps({
        "wall_seconds": wall,
        "workers": args.workers,
        "seeds": args.seeds,
        "overrides": args.overrides,
        "arms": summary,
        "claims": found,
    }, indent=2, default=str) + "\n")
    (out / "table.md").write_text(markdown_table(summary) + "\n\n" + claims_table(found) + "\n")
    return summary


def read_results(out: Path) -> tuple[list[dict[str, Any]], dict]:
    curves: dict[tuple[str, str, int], list] = {}
    for r in csv.DictReader((out / "curves.csv").open()):
        key = (r["group"], r["arm"], int(r["seed"]))
        curves.setdefault(key, []).append(
            {"round": int(r["round"]),
             **{k: float(r[k]) if r[k] not in ("", "None") else None for k in CURVE_KEYS}})
    return list(csv.DictReader((out / "runs.csv").open())), curves


# ---------------------------------------------------------------------------------------------
# figures

COLORS = {
    "fedavg": "black", "fedprox": "C0", "scaffold": "C3", "fedavgm": "C2", "fedadam": "C1",
    "fedyogi": "C4", "fedadagrad": "C5",
    "dsgd": "black", "gradient_tracking": "C3", "choco_top1": "C0", "choco_top10": "C2",
}


STYLES = {"fedavg": dict(lw=2.6), "fedprox": dict(ls="--", lw=1.6)}


def _band(ax, curves: list[list[dict]], xkey: str, ykey: str, color: str, name: str,
          xscale: float = 1.0) -> None:
    """Mean over seeds (line) and min..max over seeds (band), at the evaluated rounds."""
    import numpy as np

    length = min(len(c) for c in curves)
    if length == 0:
        return
    xs = np.array([[(p[xkey] or 0.0) * xscale for p in c[:length]] for c in curves])
    ys = np.array([[100 * (p[ykey] if p[ykey] is not None else np.nan) for p in c[:length]]
                   for c in curves])
    x = xs.mean(axis=0)
    ax.plot(x, ys.mean(axis=0), color=color, label=name, **(STYLES.get(name) or dict(lw=1.6)))
    if len(curves) > 1:
        ax.fill_between(x, ys.min(axis=0), ys.max(axis=0), color=color, alpha=0.15, lw=0)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot(out: Path, curves: dict, figure_dir: Path, title_note: str = "") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def runs_of(group: str, arm: str) -> list[list[dict]]:
        return [c for (g, a, _), c in sorted(curves.items()) if g == group and a == arm and c]

    paths = []
    # federated: x̄ accuracy vs round and vs MB uploaded per client
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    for arm in FEDERATED:
        runs = runs_of("federated", arm)
        if not runs:
            continue
        _band(axes[0], runs, "round", "test_accuracy", COLORS[arm], arm)
        _band(axes[1], runs, "bytes_sent_per_node_mean", "test_accuracy", COLORS[arm], arm,
              1e-6)
    axes[0].set_xlabel("round")
    axes[1].set_xlabel("MB sent per client (mean over the 100 clients; uploads only)")
    axes[0].set_ylabel("test accuracy of the server model (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].set_ylim(55, 87)  # the first evaluations (round 10) of some arms lie lower
    axes[0].legend(loc="lower right", fontsize=9, ncol=2)
    fig.suptitle("Federated: Fashion-MNIST, 100 clients (10 per round), Dirichlet 0.1, "
                 f"MLP 784-200-10; mean over seeds, band = min..max{title_note}")
    paths.append(_save(fig, figure_dir / "federated.png"))

    # decentralized: rows = topology; columns = x̄ vs round, nodes vs round, x̄ vs MB (log)
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.2), sharey=True)
    for row, topo in enumerate(TOPOLOGIES):
        for arm in DECENTRALIZED:
            runs = runs_of(topo, arm)
            if not runs:
                continue
            _band(axes[row, 0], runs, "round", "test_accuracy", COLORS[arm], arm)
            _band(axes[row, 1], runs, "round", "node_accuracy_mean", COLORS[arm], arm)
            _band(axes[row, 2], runs, "bytes_sent_per_node_mean", "test_accuracy",
                  COLORS[arm], arm, 1e-6)
        name = "ring" if topo == "ring" else "random 4-regular"
        axes[row, 0].set_title(f"{name}: average model x̄")
        axes[row, 1].set_title(f"{name}: nodes' own models (mean)")
        axes[row, 2].set_title(f"{name}: x̄ vs bytes (log scale)")
        axes[row, 2].set_xscale("log")
        axes[row, 0].set_ylabel("test accuracy (%)")
        for col in range(3):
            axes[row, col].grid(alpha=0.3, which="both")
            axes[row, col].set_xlabel("round" if col < 2 else "MB sent per node")
    axes[0, 0].legend(loc="lower right", fontsize=9)
    fig.suptitle("Decentralized: Fashion-MNIST, 32 nodes, Dirichlet 0.1, MLP 784-200-10, "
                 f"5 local steps per round; mean over seeds, band = min..max{title_note}")
    paths.append(_save(fig, figure_dir / "decentralized.png"))
    return paths


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2,
                        help="runs in parallel processes (each one torch thread)")
    parser.add_argument("--only", nargs="+", default=None,
                        help="run only arms whose label contains one of these strings")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="override a key in every config (as murmura run --set)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: digits, 3 rounds, seed 0, results under --runs")
    parser.add_argument("--runs", default=None,
                        help="parent folder of the run directories "
                             "(default /tmp/murmura-baselines[-quick])")
    parser.add_argument("--results", default=None,
                        help="folder for runs.csv, curves.csv, summary.json, table.md and the "
                             "figures (default: next to this file; with --quick: under --runs)")
    parser.add_argument("--plot-only", action="store_true",
                        help="redraw the figures and tables from --results (runs nothing)")
    args = parser.parse_args(argv)

    if args.quick:
        args.overrides = QUICK_OVERRIDES + args.overrides
        if args.seeds == [0, 1, 2]:
            args.seeds = [0]
    runs_root = Path(args.runs or ("/tmp/murmura-baselines" + ("-quick" if args.quick else "")))
    results = Path(args.results) if args.results else (
        runs_root / "results" if args.quick else HERE / "results")
    figure_dir = results if (args.quick or args.results) else HERE

    if args.plot_only:
        # the figures, the paired comparisons and table.md again from runs.csv and curves.csv
        _, curves = read_results(results)
        for path in plot(results, curves, figure_dir):
            print(path)
        saved = json.loads((results / "summary.json").read_text())
        saved["claims"] = claims(curves)
        (results / "summary.json").write_text(json.dumps(saved, indent=2, default=str) + "\n")
        (results / "table.md").write_text(markdown_table(saved["arms"]) + "\n\n"
                                          + claims_table(saved["claims"]) + "\n")
        print((results / "table.md").read_text())
        return 0

    if "MURMURA_DATA" not in os.environ and DEFAULT_DATA.is_dir():
        os.environ["MURMURA_DATA"] = str(DEFAULT_DATA)  # the spawned workers inherit it
    arms = [(g, a, c) for g, a, c in ARMS
            if args.only is None or any(s in label(g, a) for s in args.only)]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    jobs = [(g, a, str(c), seed,
             [*args.overrides, *(QUICK_FEDERATED if args.quick and g == "federated" else [])],
             str(runs_root / stamp / g / a / f"seed{seed}"))
            for g, a, c in arms for seed in args.seeds]
    print(f"{len(jobs)} runs ({len(arms)} arms x {len(args.seeds)} seeds), {args.workers} "
          f"workers, run directories under {runs_root / stamp}", flush=True)

    rows, curves = [], {}
    start = time.perf_counter()

    def finish(result: dict[str, Any], index: int) -> None:
        row = result["row"]
        rows.append(row)
        curves[(row["group"], row["arm"], row["seed"])] = result["curve"]
        acc = result["curve"][-1]["test_accuracy"] if result["curve"] else None
        shown = f"{100 * acc:.2f}%" if acc is not None else "-"
        note = f"  [{row['message'].splitlines()[0]}]" if row["status"] != "completed" else ""
        print(f"[{index}/{len(jobs)}] {label(row['group'], row['arm'])} seed {row['seed']}: "
              f"{row['status']}, acc {shown}, {row['seconds']:.1f} s{note}", flush=True)
        if row["status"] != "completed" and "Traceback" in row["message"]:
            print(row["message"], file=sys.stderr)

    if args.workers <= 1:
        for i, job in enumerate(jobs, 1):
            finish(run_one(*job), i)
    else:
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(run_one, *job) for job in jobs]
            for i, future in enumerate(as_completed(futures), 1):
                finish(future.result(), i)
    wall = time.perf_counter() - start

    summary = write_results(results, rows, curves, wall, args)
    note = " [QUICK SMOKE RUN: digits, 3 rounds]" if args.quick else ""
    paths = plot(results, curves, figure_dir, note)
    print(markdown_table(summary))
    print(claims_table(claims(curves)))
    print(f"wall time {wall:.0f} s ({wall / 60:.1f} min) for {len(jobs)} runs; results in "
          f"{results}; figures {', '.join(str(p) for p in paths)}")
    failed = [r for r in rows if r["status"] != "completed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
