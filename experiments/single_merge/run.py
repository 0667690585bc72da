"""A single merging suffices (Zhu et al., 2025): sparse gossip, communication schedules at an
equal budget, the mergeability of the nodes' models along training, and final gossip in place
of an exact merge, through murmura's engine.

Arms (each a set of overrides of configs/<dataset>.toml, 3 seeds each):

* ``all_reduce``: an exact global merge every round (FedAvg with every client, uniform weights);
* ``gossip_merge``: each node averages with one random peer with probability 0.2 (``random_pull``
  with r = 0.2), one exact merge at the end (the paper's main arm);
* ``late_10``, ``early_10``, ``window_50``, ``increasing_10``: the same gossip, plus exact merges
  in 10 % of the rounds placed late, early, from the middle, or with a linearly increasing
  density: an equal budget spent at different times (and the final merge);
* ``no_comm_merge``: no communication at all (r = 0), one exact merge at the end;
* ``gossip_final_1``, ``gossip_final_5``: the gossip arm whose training ends with 1 or 5 more
  gossip steps instead of the exact merge.

The mergeability metric is ``test_accuracy`` of a decentralized run: the accuracy of the
nodes' average x̄, which is what a global merge would give, measured at every evaluation
without changing the run; ``node_accuracy_mean`` is the nodes' own models.

    .venv/bin/python experiments/single_merge/run.py                 # digits, all arms
    .venv/bin/python experiments/single_merge/run.py --dataset fashion_mnist --arms all_reduce \
        gossip_merge late_10 early_10 no_comm_merge
    .venv/bin/python experiments/single_merge/run.py --quick --out /tmp/sm   # smoke run
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

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1].parent / "shared" / "datasets" / "fashion-mnist"

GOSSIP = ["algorithm.name=dsgd"]
ARMS: dict[str, list[str]] = {
    "all_reduce": [*GOSSIP, "algorithm.merge_fraction=1.0"],
    "gossip_merge": [],
    "late_10": [*GOSSIP, "algorithm.merge_fraction=0.1", "algorithm.merge_placement=late",
                "algorithm.final_merge=true"],
    "early_10": [*GOSSIP, "algorithm.merge_fraction=0.1", "algorithm.merge_placement=early",
                 "algorithm.final_merge=true"],
    "window_50": [*GOSSIP, "algorithm.merge_fraction=0.1", "algorithm.merge_placement=window",
                  "algorithm.merge_window_start=0.5", "algorithm.final_merge=true"],
    "increasing_10": [*GOSSIP, "algorithm.merge_fraction=0.1",
                      "algorithm.merge_placement=increasing", "algorithm.final_merge=true"],
    "no_comm_merge": ["topology.r=0"],
    "gossip_final_1": [*GOSSIP, "algorithm.final_gossip_steps=1"],
    "gossip_final_5": [*GOSSIP, "algorithm.final_gossip_steps=5"],
}
SEEDS = (0, 1, 2)


def figure_path(out: Path, name: str) -> Path:
    """The figure sits next to the README for the default results, in ``out`` otherwise."""
    return HERE / name if out.resolve() == (HERE / "results").resolve() else out / name


def run_one(dataset: str, arm: str, seed: int, quick: bool) -> dict[str, Any]:
    from murmura.config import Experiment
    from murmura.runner.run import build_simulation

    overrides = [*ARMS[arm], f"seed={seed}"]
    if quick:
        overrides += ["rounds=6", "evaluation.every=2"]
    exp = Experiment.from_toml(HERE / "configs" / f"{dataset}.toml", overrides=overrides)
    sim = build_simulation(exp)
    total = exp.rounds
    curve, before_end = [], None
    start = time.perf_counter()
    for t in range(total):
        record = sim.step(total)
        if "test_accuracy" in record:
            curve.append({k: record.get(k) for k in (
                "round", "test_accuracy", "node_accuracy_mean", "consensus_distance",
                "bytes_sent_total", "bytes_sent_per_node_mean", "server_bytes_sent_total")})
        if t == total - 2:  # the last round before the final merge: read-only evaluation
            before_end = sim.evaluate()
    last = curve[-1]
    return {
        "arm": arm, "seed": seed, "seconds": time.perf_counter() - start,
        "merged_accuracy": last["test_accuracy"],
        "node_accuracy_before_end": before_end["node_accuracy_mean"],
        "mergeability_before_end": before_end["test_accuracy"],
        "node_accuracy_final": last["node_accuracy_mean"],
        # an exact merge is an all-reduce: n models up, the average back down (2n, as the
        # paper counts it); the engine's ledger has the way down as a server's bytes
        "mb_moved_total": (last["bytes_sent_total"] + last["server_bytes_sent_total"]) / 1e6,
        "curve": curve,
    }


def stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    table = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        mine = [r for r in runs if r["arm"] == arm]
        table[arm] = {key: stats([r[key] for r in mine]) for key in (
            "merged_accuracy", "node_accuracy_before_end", "mergeability_before_end",
            "node_accuracy_final", "mb_moved_total", "seconds")}
    return table


def plot(runs: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    for arm in arms:
        mine = [r["curve"] for r in runs if r["arm"] == arm]
        rounds = [c["round"] + 1 for c in mine[0]]
        for ax, key in zip(axes, ("test_accuracy", "node_accuracy_mean")):
            mean = [statistics.fmean(c[i][key] for c in mine) for i in range(len(rounds))]
            ax.plot(rounds, mean, label=arm)
    axes[0].set_title("mergeability: accuracy of the average x̄")
    axes[1].set_title("the nodes' own models (mean)")
    for ax in axes:
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits", choices=["digits", "fashion_mnist"])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--quick", action="store_true", help="6 rounds, one seed: a smoke run")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    if args.dataset == "fashion_mnist":
        os.environ.setdefault("MURMURA_DATA", str(DEFAULT_DATA))
    seeds = args.seeds[:1] if args.quick else args.seeds
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs = []
    for arm in args.arms:
        for seed in seeds:
            result = run_one(args.dataset, arm, seed, args.quick)
            runs.append(result)
            print(f"{arm:16s} seed {seed}: merged {result['merged_accuracy']:.3f}  local "
                  f"{result['node_accuracy_before_end']:.3f}  {result['mb_moved_total']:.1f} MB  "
                  f"{result['seconds']:.0f} s", flush=True)
    wall = time.perf_counter() - start
    summary = {"dataset": args.dataset, "seeds": seeds, "wall_seconds": wall,
               "table": summarize(runs)}
    stem = args.dataset + ("_quick" if args.quick else "")
    (args.out / f"{stem}.json").write_text(json.dumps({**summary, "runs": runs}, indent=1))
    plot(runs, figure_path(args.out, f"{stem}.png"),
         f"single merge, {args.dataset}, {len(seeds)} seed(s)")
    print(f"wall {wall:.0f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
