"""MoDeST (de Vos et al., 2023) against D-PSGD and FedAvg with s clients, and under churn,
through murmura's engine (configs/*.toml; 3 seeds each).

Arms: ``modest`` (s = 8, a = 1), ``fedavg_s`` (FedAvg with 8 clients a round, unweighted mean),
``dpsgd`` (D-PSGD on the one-peer exponential graph), ``modest_churn80`` (80 % of the nodes
stop answering at round 100), and two liveness arms: ``modest_churn94`` (60 of 64 nodes gone
at round 100: 4 trainers remain, fewer than s but at least 3, so aggregators proceed at their
timeout) and ``modest_churn97`` (62 gone: 2 remain, rounds are dropped).

The target is 85 % test accuracy of the federation's model: MoDeST's aggregate (every row
holds it), FedAvg's server model, and the mean of D-PSGD's local models (the pilot's choice).

    .venv/bin/python experiments/modest/run.py
    .venv/bin/python experiments/modest/run.py --quick --out /tmp/modest    # smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TARGET = 0.85
CHURN_AT = 100

ARMS: dict[str, tuple[str, list[str]]] = {
    "modest": ("modest", []),
    "fedavg_s": ("fedavg", []),
    "dpsgd": ("dpsgd", []),
    "modest_churn80": ("modest", ["algorithm.offline_fraction=0.8",
                                  f"algorithm.offline_from={CHURN_AT}"]),
    "modest_churn94": ("modest", ["algorithm.offline_fraction=0.94",
                                  f"algorithm.offline_from={CHURN_AT}"]),
    "modest_churn97": ("modest", ["algorithm.offline_fraction=0.97",
                                  f"algorithm.offline_from={CHURN_AT}"]),
}


def figure_path(out: Path, name: str) -> Path:
    """The figure sits next to the README for the default results, in ``out`` otherwise."""
    return HERE / name if out.resolve() == (HERE / "results").resolve() else out / name


def accuracy(arm: str, record: dict[str, Any]) -> float:
    """The federation's model: D-PSGD has none, so the mean of its nodes' models."""
    return record["node_accuracy_mean"] if arm == "dpsgd" else record["test_accuracy"]


def run_one(arm: str, seed: int, quick: bool) -> dict[str, Any]:
    from murmura.config import Experiment
    from murmura.runner.run import build_simulation

    config, overrides = ARMS[arm]
    overrides = [*overrides, f"seed={seed}"]
    if quick:  # 6 rounds, the churn at round 3
        overrides = [o.replace(f"offline_from={CHURN_AT}", "offline_from=3") for o in overrides]
        overrides += ["rounds=6", "evaluation.every=2"]
    exp = Experiment.from_toml(HERE / "configs" / f"{config}.toml", overrides=overrides)
    sim = build_simulation(exp)
    start = time.perf_counter()
    history = sim.run(exp.rounds)
    curve = [{"round": r["round"] + 1, "accuracy": accuracy(arm, r),
              "mb_sent_total": r["bytes_sent_total"] / 1e6,
              "communicated": r["communicated"]}
             for r in history.records if "test_accuracy" in r]
    reach = next((c for c in curve if c["accuracy"] >= TARGET), None)
    before = [c["accuracy"] for c in curve if c["round"] <= CHURN_AT]
    # liveness: a round whose aggregators averaged moved models, not only pings
    churn_at = 3 if quick else CHURN_AT
    aggregated = sum(r["bytes_sent"] >= sim.message_bytes
                     for r in history.records[churn_at:])
    return {"arm": arm, "seed": seed, "seconds": time.perf_counter() - start,
            "final_accuracy": curve[-1]["accuracy"],
            "accuracy_at_churn": before[-1] if before else None,
            "aggregated_rounds_after_churn": aggregated,
            "rounds_after_churn": len(history.records[churn_at:]),
            "rounds_to_target": reach["round"] if reach else None,
            "mb_to_target": reach["mb_sent_total"] if reach else None,
            "mb_total": curve[-1]["mb_sent_total"], "curve": curve}


def stats(values: list[Any]) -> dict[str, Any] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for arm in dict.fromkeys(r["arm"] for r in runs):
        mine = [r["curve"] for r in runs if r["arm"] == arm]
        rounds = [c["round"] for c in mine[0]]
        acc = [statistics.fmean(c[i]["accuracy"] for c in mine) for i in range(len(rounds))]
        mb = [statistics.fmean(c[i]["mb_sent_total"] for c in mine) for i in range(len(rounds))]
        axes[0].plot(rounds, acc, label=arm)
        if "churn" not in arm:
            axes[1].plot(mb, acc, label=arm)
    axes[0].axvline(CHURN_AT, color="grey", lw=0.8, ls=":")
    axes[0].set_xlabel("round")
    axes[1].set_xlabel("MB sent, all nodes")
    axes[1].set_xscale("log")
    for ax in axes:
        ax.axhline(TARGET, color="grey", lw=0.8, ls="--")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("MoDeST vs D-PSGD and FedAvg (digits, 64 nodes, s = 8; mean of 3 seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="6 rounds, one seed: a smoke run")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    seeds = args.seeds[:1] if args.quick else args.seeds
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs = []
    for arm in args.arms:
        for seed in seeds:
            r = run_one(arm, seed, args.quick)
            runs.append(r)
            print(f"{arm:15s} seed {seed}: final {r['final_accuracy']:.3f}  to 85%: round "
                  f"{r['rounds_to_target']} / {r['mb_to_target']} MB  ({r['seconds']:.0f} s)",
                  flush=True)
    keys = ("final_accuracy", "accuracy_at_churn", "aggregated_rounds_after_churn",
            "rounds_to_target", "mb_to_target", "mb_total", "seconds")
    table = {arm: {key: stats([r[key] for r in runs if r["arm"] == arm]) for key in keys}
             for arm in dict.fromkeys(r["arm"] for r in runs)}
    wall = time.perf_counter() - start
    stem = "quick" if args.quick else "results"
    (args.out / f"{stem}.json").write_text(json.dumps(
        {"seeds": seeds, "target": TARGET, "wall_seconds": wall, "table": table, "runs": runs},
        indent=1))
    plot(runs, figure_path(args.out, f"modest_{stem}.png"))
    print(f"wall {wall:.0f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
