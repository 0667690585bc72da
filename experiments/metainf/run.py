"""MetaInf against its baselines on real decoder timings (spec federated.md section 15): which
inference-acceleration method to use for a held-out task. 3 seeds of the task split.

A PROXY: the timings are a small random-weight GPT-style decoder on this machine's CPU
(``murmura.select.timings``, committed as ``src/murmura/select/data/decoder_timings.csv``), not
LLMs on GPUs, and the tasks are numeric features, not the paper's LLM text embeddings.

Protocol, fixed before any result was seen: the committed table (400 tasks x 5 methods, log
tokens/s); per seed 0-2, a random 75/25 split of the tasks; every selector of
``murmura.select.SELECTORS`` with its defaults, seeded by the split's seed; scored on the test
tasks by selection accuracy (the chosen method is the measured best; ties count), mean regret
(log throughput of the best minus the chosen's), the share within 5% of the best and the
geometric-mean speed-up over ``none``.

Criterion (the spec's): MetaInf's selection accuracy and mean regret beat global-best, which
beats random, and match or beat the RF/GB classifiers, "match" fixed beforehand as an accuracy
at most 0.02 below and a regret at most 0.01 above the classifier's (means over seeds).

    .venv/bin/python experiments/metainf/run.py            # about a minute on 2 cores
    .venv/bin/python experiments/metainf/run.py --quick --out /tmp/mq
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

HERE = Path(__file__).resolve().parent
METRICS = ("selection_accuracy", "mean_regret", "near_best_accuracy", "speedup_over_none")
MATCH_ACCURACY, MATCH_REGRET = 0.02, 0.01
PAPER = {"metainf": 0.898, "gradient_boosting": 0.815, "random_forest": 0.742,
         "alors": 0.725, "isac": 0.578}
PREFIX = ("kv_cache+prefix_cache", "all")


def win_counts(table: Any) -> dict[str, Any]:
    """Which method is measured best, overall and per batch size (and for shared prefixes)."""
    best = table.log_tps.argmax(1)
    overall = {m: int(np.sum(best == i)) for i, m in enumerate(table.methods)}
    by_batch: dict[str, Any] = {}
    for b in sorted(set(table.raw["batch"].tolist())):
        rows = table.raw["batch"] == b
        shared = rows & (table.raw["shared"] > 0)
        i_kv, i_pre = table.methods.index("kv_cache"), table.methods.index(PREFIX[0])
        by_batch[str(b)] = {
            "tasks": int(rows.sum()),
            "wins": {m: int(np.sum(best[rows] == i)) for i, m in enumerate(table.methods)},
            "prefix_method_wins_share_of_shared_tasks": float(np.mean(
                np.isin(best[shared], [table.methods.index(m) for m in PREFIX]))),
            "all_wins_share": float(np.mean(best[rows] == table.methods.index("all"))),
            "prefix_over_kv_speedup_shared_tasks": float(np.exp(np.mean(
                table.log_tps[shared, i_pre] - table.log_tps[shared, i_kv])))}
    return {"overall": overall, "by_batch": by_batch}


def run_seed(table: Any, seed: int, selectors: list[str]) -> dict[str, dict[str, float]]:
    from murmura.select import evaluate, make_selector, split_tasks

    train_index, test_index = split_tasks(len(table), 0.25, seed)
    train, test = table.subset(train_index), table.subset(test_index)
    return {name: evaluate(make_selector(name, seed), train, test) for name in selectors}


def summarise(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    out = {}
    for name in runs[0]:
        row = {}
        for metric in (*METRICS, "oracle_speedup_over_none", "seconds"):
            values = [r[name][metric] for r in runs]
            row[f"{metric}_mean"] = statistics.mean(values)
            row[f"{metric}_std"] = statistics.pstdev(values)
        out[name] = row
    return out


def criterion(table: dict[str, dict[str, float]]) -> dict[str, bool]:
    acc = {k: v["selection_accuracy_mean"] for k, v in table.items()}
    reg = {k: v["mean_regret_mean"] for k, v in table.items()}
    checks = {
        "metainf_beats_global_best": acc["metainf"] > acc["global_best"]
        and reg["metainf"] < reg["global_best"],
        "global_best_beats_random": acc["global_best"] > acc["random"]
        and reg["global_best"] < reg["random"]}
    for clf in ("random_forest", "gradient_boosting"):
        if clf in acc:
            checks[f"metainf_matches_{clf}"] = (acc["metainf"] >= acc[clf] - MATCH_ACCURACY
                                                and reg["metainf"] <= reg[clf] + MATCH_REGRET)
    checks["all"] = all(checks.values())
    return checks


def plot(table: dict[str, Any], wins: dict[str, Any], methods: tuple, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    names = list(table)
    for ax, metric, label in ((axes[0], "selection_accuracy", "selection accuracy"),
                              (axes[1], "mean_regret", "mean regret (log tokens/s)")):
        ax.bar(names, [table[n][f"{metric}_mean"] for n in names],
               yerr=[table[n][f"{metric}_std"] for n in names], capsize=3,
               color=["C3" if n == "metainf" else "C0" for n in names])
        ax.set(title=f"{label}, held-out tasks (3 seeds)", ylabel=label)
        ax.tick_params(axis="x", rotation=45)
        ax.grid(axis="y", alpha=0.3)
    batches = list(wins["by_batch"])
    bottom = np.zeros(len(batches))
    for m in methods:
        share = np.array([wins["by_batch"][b]["wins"][m] / wins["by_batch"][b]["tasks"]
                          for b in batches])
        axes[2].bar(batches, share, bottom=bottom, label=m)
        bottom += share
    axes[2].set(title="measured best method by batch size (all tasks)", xlabel="batch",
                ylabel="share of tasks")
    axes[2].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import torch

    from murmura.select import SELECTORS, load_timings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 seed, 120 tasks, global-best / random / RF / MetaInf")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = args.out or (HERE if not args.quick else HERE / "quick")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    table = load_timings()
    if args.quick:
        table = table.subset(np.sort(np.random.default_rng(0).permutation(len(table))[:120]))
    seeds = [0] if args.quick else [0, 1, 2]
    selectors = (["metainf", "global_best", "random", "random_forest"] if args.quick
                 else list(SELECTORS))
    runs = [run_seed(table, s, selectors) for s in seeds]
    summary = summarise(runs)
    checks = criterion(summary)
    wins = win_counts(table)
    stem = "metainf_quick" if args.quick else "metainf"
    (out / "results").mkdir(exist_ok=True)
    (out / "results" / f"{stem}.json").write_text(json.dumps(
        {"seeds": seeds, "tasks": len(table), "methods": list(table.methods),
         "table": summary, "criterion": checks, "win_counts": wins, "runs": runs,
         "paper_selection_accuracy": PAPER, "seconds": time.perf_counter() - start}, indent=1))
    plot(summary, wins, table.methods, out / f"{stem}.png")
    for name, row in summary.items():
        print(f"{name:18s} acc {row['selection_accuracy_mean']:.3f} ± "
              f"{row['selection_accuracy_std']:.3f}  regret {row['mean_regret_mean']:.4f} ± "
              f"{row['mean_regret_std']:.4f}  near {row['near_best_accuracy_mean']:.3f}  "
              f"speed-up {row['speedup_over_none_mean']:.2f}  {row['seconds_mean']:.1f}s")
    print("win counts:", wins["overall"])
    print("criterion:", checks)
    print(f"total {time.perf_counter() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
