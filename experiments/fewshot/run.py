"""Transductive few-shot (spec federated.md section 11): SimpleShot vs K-means vs SLK on
sklearn's digits, novel classes 5-9, through `murmura run`'s `fewshot` kind.

    .venv/bin/python experiments/fewshot/run.py            # about 1 minute on 2 cores
    .venv/bin/python experiments/fewshot/run.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))

FEATURES = ("raw", "pca", "mlp")
SHOTS = (1, 5)
SEEDS = (0, 1, 2)
METHODS = ("simpleshot", "kmeans", "slk")


def run(tasks: int, out: Path) -> dict:
    import murmura.learners.fewshot  # noqa: F401  (registers the kind)
    from murmura.config import Experiment
    from murmura.runner import run_experiment

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for features in FEATURES:
            for shot in SHOTS:
                rows = []
                for seed in SEEDS:
                    exp = Experiment.from_dict({
                        "name": f"fewshot-{features}-{shot}shot", "seed": seed,
                        "rounds": -(-tasks // 50),
                        "kind": {"name": "fewshot", "features": features, "shot": shot,
                                 "tasks": tasks, "batch": 50, "lam": 0.7, "knn": 3},
                        "output": {"plots": False, "report": False}})
                    result = run_experiment(exp, Path(tmp) / f"{features}-{shot}-{seed}",
                                            progress=False)
                    rows.append(result.history.records[-1])
                results[f"{features}/{shot}"] = {
                    m: {"mean": statistics.mean(r[f"{m}_accuracy"] for r in rows),
                        "std": statistics.stdev(r[f"{m}_accuracy"] for r in rows),
                        "seeds": [r[f"{m}_accuracy"] for r in rows]} for m in METHODS}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SHOTS), figsize=(10, 3.6), sharey=True)
    for ax, shot in zip(axes, SHOTS):
        for i, method in enumerate(METHODS):
            means = [results[f"{f}/{shot}"][method]["mean"] for f in FEATURES]
            stds = [results[f"{f}/{shot}"][method]["std"] for f in FEATURES]
            ax.bar([j + 0.27 * (i - 1) for j in range(len(FEATURES))], means, 0.27, yerr=stds,
                   label=method)
        ax.set_xticks(range(len(FEATURES)), FEATURES)
        ax.set_title(f"5-way {shot}-shot, 15 queries a class")
        ax.set_ylim(0.3, 1.0)
    axes[0].set_ylabel("query accuracy (novel digits 5-9)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 tasks a setting")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    results = run(20 if args.quick else 300, args.out)
    # the figure sits beside the README, as in every experiment folder (elsewhere with --out)
    default = args.out == HERE / "results"
    figure(results, (HERE if default else args.out) / "fewshot.png")
    for key, row in results.items():
        print(key, "  ".join(f"{m} {row[m]['mean']:.3f}±{row[m]['std']:.3f}" for m in METHODS))


if __name__ == "__main__":
    main()
