"""FZooS (Shu et al., arXiv 2308.04077) against FedZO and SCAFFOLD-ZO (type II) on the paper's
heterogeneous quadratic, the spec's CPU reproduction (specs/federated.md section 9 (e)):
d = 20, N = 5 clients, div = 0.5, R = 15 rounds of I = 5 local iterations, FZooS with M = 2000
random features, FedZO / SCAFFOLD-ZO with RGF q = 20, mu = 0.01; seeds 0, 1, 2 (each seed draws
its own functions and x0, and the methods' randomness). F(x) of the server's x after every round
against the cumulative number of queries of all clients.

    .venv/bin/python experiments/fzoos/run.py
    .venv/bin/python experiments/fzoos/run.py --quick --out /tmp/fzoos      # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
SETUP = {"dim": 20, "num_clients": 5, "div": 0.5, "rounds": 15, "local_iters": 5}
QUICK = {"dim": 20, "num_clients": 5, "div": 0.5, "rounds": 2, "local_iters": 2}
ARMS = {  # arm: (registered method, parameters; the rest are the code's defaults)
    "fzoos": ("fzoos", {"features": 2000}),
    "fedzo": ("fedzo", {"q": 20, "mu": 0.01}),
    "scaffold_zo": ("scaffold_zo", {"q": 20, "mu": 0.01, "control": "scaf"}),
    # extras, outside the spec's criterion (a few seconds): the code's other baselines
    "scaffold_zo_diff": ("scaffold_zo", {"q": 20, "mu": 0.01, "control": "diff"}),
    "fedprox_zo": ("fedprox_zo", {"q": 20, "mu": 0.01, "prox": 1.0}),
}
CRITERION_ARMS = ("fzoos", "fedzo", "scaffold_zo")
BUDGETS = (1000, 2000, 4000)  # queries of all clients; the spec's equal budget is 1,000


def figure_path(out: Path, name: str) -> Path:
    """The figure sits next to the README for the default results, in ``out`` otherwise."""
    return HERE / name if out.resolve() == (HERE / "results").resolve() else out / name


def run_one(arm: str, seed: int, setup: dict[str, Any], quick: bool) -> dict[str, Any]:
    from murmura.blackbox import Quadratic, fed_minimize

    problem = Quadratic(dim=setup["dim"], num_clients=setup["num_clients"], div=setup["div"],
                        seed=seed)
    method, params = ARMS[arm]
    params = dict(params, **({"features": 200} if quick and method == "fzoos" else {}))
    start = time.perf_counter()
    res = fed_minimize(problem, method, rounds=setup["rounds"], local_iters=setup["local_iters"],
                       seed=seed, **params)
    f_min = problem.minimum()
    gap0 = res.values[0] - f_min
    to_1pct = next((r for r, v in enumerate(res.values) if v - f_min <= 0.01 * gap0), None)
    return {"arm": arm, "seed": seed, "params": params, "f_min": f_min,
            "values": res.values, "queries": res.queries,
            "at_budget": {str(b): res.value_at(b) for b in BUDGETS},
            "final": res.values[-1], "queries_total": res.queries[-1],
            "queries_per_client": res.queries_per_client[-1],
            "rounds_to_1pct_gap": to_1pct,
            "queries_to_1pct_gap": None if to_1pct is None else res.queries[to_1pct],
            "bytes_to_1pct_gap": None if to_1pct is None else sum(res.bytes_up[:to_1pct + 1])
            + sum(res.bytes_down[:to_1pct + 1]),
            "bytes_up_per_round": res.bytes_up[1], "bytes_down_per_round": res.bytes_down[1],
            "seconds": time.perf_counter() - start}


def stats(values: list[float]) -> dict[str, float]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": statistics.fmean(finite),
            "std": statistics.stdev(finite) if len(finite) > 1 else 0.0, "n": len(finite)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    table: dict[str, Any] = {}
    for arm in ARMS:
        mine = [r for r in runs if r["arm"] == arm]
        if not mine:
            continue
        row = {f"F@{b}": stats([r["at_budget"][str(b)] for r in mine]) for b in BUDGETS}
        row["F_final"] = stats([r["final"] for r in mine])
        row["queries_total"] = mine[0]["queries_total"]
        for key in ("rounds_to_1pct_gap", "queries_to_1pct_gap", "bytes_to_1pct_gap"):
            row[key] = stats([r[key] for r in mine])
        row["bytes_up_per_round"] = mine[0]["bytes_up_per_round"]
        row["bytes_down_per_round"] = mine[0]["bytes_down_per_round"]
        table[arm] = row
    return table


def verdict(table: dict[str, Any], budget: int = 1000) -> dict[str, Any]:
    """The spec's criterion: at ``budget`` queries, FZooS's 3-seed mean F below both baselines'."""
    key = f"F@{budget}"
    if not set(CRITERION_ARMS) <= set(table):
        return {"criterion": key, "confirmed": None}
    mean = {arm: table[arm][key]["mean"] for arm in CRITERION_ARMS}
    return {"criterion": key, "means": mean,
            "confirmed": mean["fzoos"] < mean["fedzo"] and mean["fzoos"] < mean["scaffold_zo"]}


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arm in ARMS:
        mine = [r for r in runs if r["arm"] == arm]
        if not mine:
            continue
        gaps = torch.tensor([[v - r["f_min"] for v in r["values"]] for r in mine])
        mean, low, high = gaps.mean(0), gaps.min(0).values, gaps.max(0).values
        for ax, x in ((axes[0], mine[0]["queries"]), (axes[1], list(range(len(mean))))):
            ax.plot(x, mean, marker=".", label=arm, ls="-" if arm in CRITERION_ARMS else "--")
            ax.fill_between(x, low, high, alpha=0.2)
    for b in BUDGETS:
        axes[0].axvline(b, color="grey", lw=0.6, ls=":")
    axes[0].set_xlabel("cumulative queries (all clients)")
    axes[1].set_xlabel("round")
    for ax in axes:
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("F(x) − min F  (mean, band: min–max over seeds)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="one seed, 2 rounds of 2 iterations, M = 200")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small dense algebra; the machine is shared
    seeds, setup = ([0], QUICK) if args.quick else ([0, 1, 2], SETUP)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs = []
    for arm in ARMS:
        for seed in seeds:
            r = run_one(arm, seed, setup, args.quick)
            runs.append(r)
            print(f"{arm:12s} seed {seed}: F@1000 {r['at_budget']['1000']:.5f} final "
                  f"{r['final']:.5f} (min {r['f_min']:.4f}), {r['queries_total']} queries "
                  f"({r['seconds']:.1f} s)", flush=True)
    table = summarize(runs)
    check = verdict(table)
    wall = time.perf_counter() - start
    stem = "quick" if args.quick else "results"
    (args.out / f"{stem}.json").write_text(json.dumps(
        {"setup": setup, "seeds": seeds, "arms": {a: list(v) for a, v in ARMS.items()},
         "budgets": list(BUDGETS), "wall_seconds": wall, "table": table, "verdict": check,
         "runs": runs}, indent=1))
    columns = [f"F@{b}" for b in BUDGETS] + ["F_final", "rounds_to_1pct_gap",
                                              "queries_to_1pct_gap"]
    lines = ["arm," + ",".join(f"{c}_mean,{c}_std" for c in columns)
             + ",queries_total,bytes_up_per_round,bytes_down_per_round"]
    for arm, row in table.items():
        lines.append(arm + "," + ",".join(f"{row[c]['mean']:.6g},{row[c]['std']:.3g}"
                                          for c in columns)
                     + f",{row['queries_total']},{row['bytes_up_per_round']},"
                       f"{row['bytes_down_per_round']}")
    (args.out / f"{stem}.csv").write_text("\n".join(lines) + "\n")
    plot(runs, figure_path(args.out, f"fzoos_{stem}.png"))
    for arm, row in table.items():
        print(f"{arm:12s} " + "  ".join(f"F@{b} {row[f'F@{b}']['mean']:.4f}±"
                                        f"{row[f'F@{b}']['std']:.4f}" for b in BUDGETS)
              + f"  final {row['F_final']['mean']:.5f}±{row['F_final']['std']:.5f}")
    print(f"criterion {check['criterion']}: confirmed = {check['confirmed']}; wall {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
