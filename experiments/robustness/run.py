"""Robustness grid of issue 13: every attack x every aggregator that applies, on Fashion-MNIST
with an MLP, in three settings, at Dirichlet alpha 1 and 0.3, 3 seeds.

Settings (``SETTINGS``):

* ``server``: 20 clients, 4 of them Byzantine (drawn by seed), ``fedavg`` with
  ``aggregator = {name, f = 4}`` over the uploaded models;
* ``regular``: a random 6-regular graph of 32 nodes, 20 % Byzantine (6 nodes, drawn by seed),
  ``dsgd`` with the aggregator over each node's neighbourhood, itself included, ``f = 2``;
* ``dumbbell``: two 16-cliques joined by 3 bridge edges (0-16, 1-17, 2-18); the 6 attackers
  are the bridge's endpoints (``placement = "betweenness"``), so every path between the two
  cliques' honest nodes runs through them; ``f = 3`` (each honest node has 15 neighbours,
  3 of them Byzantine).

Server rules run at the server only; the graph-only rules (``self_centered_clipping``,
``bridge``) and the per-link attacks (``dissensus``, ``equivocation``) on the graphs only.
Each cell is the honest nodes' mean accuracy at the end (the server's model at a server; on a
graph each honest node's own model on 1,000 test images, averaged), 3 seeds, mean and
std; ``none`` (no attacker) is a reference column outside the worst case. A rule the engine
refuses for a setting (too few messages for its f) is recorded as refused with the engine's
message; a run whose honest models become non-finite as diverged, counted at chance (0.10) in
the worst case.

    .venv/bin/python experiments/robustness/run.py                 # the grid, 2 processes
    .venv/bin/python experiments/robustness/run.py --budget 1200   # stop starting runs after 20 min
    .venv/bin/python experiments/robustness/run.py --quick --out /tmp/rob   # smoke run (digits)

Results stream into ``<out>/cells.jsonl`` (one line per run; ``--resume`` skips the runs it
already holds), then ``<out>/robustness.json`` (every cell, the worst cases, the headline) and
the figure ``robustness_worst_case.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1].parent / "shared" / "datasets" / "fashion-mnist"
CHANCE = 0.10

HIDDEN, ROUNDS, TRAIN_SAMPLES, NODE_SAMPLES = 16, 10, 8000, 1000
TRAINING = {"lr": 0.1, "local_steps": 3, "batch_size": 32}
SEEDS, ALPHAS = (0, 1, 2), (1.0, 0.3)

SETTINGS: dict[str, dict[str, Any]] = {
    "server": {"nodes": 20, "algorithm": "fedavg", "f": 4, "adversary": {"count": 4}},
    "regular": {"nodes": 32, "algorithm": "dsgd", "f": 2, "topology": "random_regular",
                "topology_kwargs": {"k": 6}, "adversary": {"fraction": 0.2}},
    "dumbbell": {"nodes": 32, "algorithm": "dsgd", "f": 3, "topology": "dumbbell",
                 "adversary": {"count": 6, "placement": "betweenness"}},
}
# aggregator -> parameters; "f" is filled in per setting where the rule takes it
AGGREGATORS: dict[str, dict[str, Any]] = {
    "average": {}, "median": {}, "trimmed_mean": {"f": None}, "geometric_median": {},
    "krum": {"f": None}, "multi_krum": {"f": None}, "centered_clipping": {}, "mda": {"f": None},
    "monna": {"f": None}, "meamed": {"f": None}, "caf": {"f": None},
    "smea": {"f": None, "power_iterations": None},  # exact top eigenvalue: the paper's rule
    "bulyan": {"f": None}, "flag": {}, "self_centered_clipping": {"f": None},
    "bridge": {"f": None},
}
GRAPH_ONLY_RULES = ("self_centered_clipping", "bridge")
ATTACKS = ("none", "sign_flip", "gaussian", "ipm", "alie", "inf", "mimic", "label_flip",
           "optimal_ipm", "optimal_alie", "min_max", "min_sum", "dissensus", "equivocation")
GRAPH_ONLY_ATTACKS = ("dissensus", "equivocation")
QUICK = {"aggregators": ("average", "trimmed_mean", "self_centered_clipping"),
         "attacks": ("none", "sign_flip", "dissensus"), "seeds": (0,), "alphas": (1.0,),
         "rounds": 2, "train_samples": 1000, "dataset": "digits"}  # digits: runs anywhere
EXPENSIVE = ("smea", "mda", "caf", "bulyan", "flag")  # run last, so a budget cuts these


def dumbbell(n: int = 32, bridges: int = 3) -> Any:
    """Two cliques of ``n / 2`` nodes joined by ``bridges`` edges ``(i, n/2 + i)``."""
    import networkx as nx

    half = n // 2
    graph = nx.disjoint_union(nx.complete_graph(half), nx.complete_graph(half))
    graph.add_edges_from((i, half + i) for i in range(bridges))
    return graph


def cells(aggregators: tuple[str, ...], attacks: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(setting, aggregator, attack) triples that apply, cheap ones first."""
    out = []
    for setting in SETTINGS:
        for agg in aggregators:
            if setting == "server" and agg in GRAPH_ONLY_RULES:
                continue
            for attack in attacks:
                if setting == "server" and attack in GRAPH_ONLY_ATTACKS:
                    continue
                out.append((setting, agg, attack))
    return sorted(out, key=lambda c: (c[1] in EXPENSIVE, c[1] == "smea",
                                      c[2].startswith("optimal")))


def aggregator_spec(name: str, f: int) -> dict[str, Any]:
    params = {k: (f if v is None else v) for k, v in AGGREGATORS[name].items()}
    return {"name": name, **params}


_DATA: dict[tuple[int, int], Any] = {}


def dataset(seed: int, samples: int, name: str = "fashion_mnist") -> Any:
    """A seeded subset of the dataset's training set (the full test set), cached."""
    if (seed, samples, name) not in _DATA:
        import dataclasses

        import torch

        from murmura.data import load_dataset

        full = load_dataset(name, **({"download": False} if name == "fashion_mnist" else {}))
        keep = torch.randperm(len(full.train_y), generator=torch.Generator().manual_seed(seed))
        keep = keep[:samples]
        _DATA[(seed, samples, name)] = dataclasses.replace(
            full, train_x=full.train_x[keep], train_y=full.train_y[keep])
    return _DATA[(seed, samples, name)]


def run_one(job: tuple) -> dict[str, Any]:
    setting, agg, attack, alpha, seed, rounds, samples, data_name = job
    import warnings

    import torch

    torch.set_num_threads(1)
    from murmura.data import federate
    from murmura.robust import Adversary
    from murmura.swarm import Evaluation, Simulation
    from murmura.swarm.measure import NonFiniteError
    from murmura.topology import StaticTopology

    conf = SETTINGS[setting]
    out = {"setting": setting, "aggregator": agg, "attack": attack, "alpha": alpha,
           "seed": seed, "status": "ok", "accuracy": None, "note": ""}
    start = time.perf_counter()
    data = federate(dataset(seed, samples, data_name), num_nodes=conf["nodes"],
                    partition="dirichlet", alpha=alpha, seed=seed)
    topology = conf.get("topology")
    if topology == "dumbbell":
        topology = StaticTopology.from_graph(dumbbell(conf["nodes"]), name="dumbbell")
    adversary = None if attack == "none" else Adversary(attack, **conf["adversary"])
    kwargs = dict(TRAINING, aggregator=aggregator_spec(agg, conf["f"]))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sim = Simulation(data, "mlp", conf["algorithm"], topology,
                             topology_kwargs=conf.get("topology_kwargs"),
                             model_kwargs={"hidden": [HIDDEN]}, algorithm_kwargs=kwargs,
                             adversary=adversary, seed=seed,
                             evaluation=Evaluation(every=rounds, node_samples=NODE_SAMPLES))
        out["warnings"] = sorted({str(w.message).split(":")[0] for w in caught})
        final = sim.run(rounds).final
        key = "test_accuracy" if setting == "server" else "node_accuracy_mean"
        out["accuracy"] = final[("honest_" + key) if adversary else key]
    except NonFiniteError as error:
        out.update(status="diverged", accuracy=CHANCE, note=str(error).split(";")[0])
    except ValueError as error:
        out.update(status="refused", note=str(error))
    except Exception as error:  # noqa: BLE001 - a rule that fails is a result of the grid
        out.update(status="failed", note=f"{type(error).__name__}: {str(error)[:200]}")
    out["seconds"] = time.perf_counter() - start
    return out


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _key(r: dict[str, Any]) -> tuple:
    return (r["setting"], r["aggregator"], r["attack"], float(r["alpha"]), int(r["seed"]))


def run_all(jobs: list[tuple], out: Path, workers: int, budget: float | None) -> list[dict]:
    """Runs ``jobs`` (2 in flight), appending each result to ``cells.jsonl``; once ``budget``
    seconds have passed no new run starts (the rest are recorded as not run)."""
    log = out / "cells.jsonl"
    done = {}
    if log.exists():
        for line in log.read_text().splitlines():
            r = json.loads(line)
            if r["status"] != "failed":  # a failed run (a bug since fixed) runs again
                done[_key(r)] = r
    todo = [j for j in jobs if (j[0], j[1], j[2], float(j[3]), int(j[4])) not in done]
    start = time.perf_counter()
    results = [done[k] for k in done]
    with log.open("a") as sink:
        def keep(r: dict[str, Any]) -> None:
            results.append(r)
            sink.write(json.dumps(r) + "\n")
            sink.flush()

        if workers <= 1:
            for job in todo:
                if budget is not None and time.perf_counter() - start > budget:
                    break
                keep(run_one(job))
        else:
            with ProcessPoolExecutor(workers, initializer=_worker_init) as pool:
                pending, queue = set(), list(todo)
                while queue or pending:
                    while queue and len(pending) < workers and (
                            budget is None or time.perf_counter() - start < budget):
                        pending.add(pool.submit(run_one, queue.pop(0)))
                    if not pending:
                        break
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        keep(fut.result())
                        print(f"[{time.perf_counter() - start:7.1f}s] {len(results)}/"
                              f"{len(jobs)}", flush=True)
    have = {_key(r) for r in results}
    for job in jobs:
        if (job[0], job[1], job[2], float(job[3]), int(job[4])) not in have:
            results.append({"setting": job[0], "aggregator": job[1], "attack": job[2],
                            "alpha": job[3], "seed": job[4], "status": "not run",
                            "accuracy": None, "note": "time budget", "seconds": 0.0})
    wanted = {(j[0], j[1], j[2], float(j[3]), int(j[4])) for j in jobs}
    return [r for r in results if _key(r) in wanted]


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Cells (mean, std over seeds), then per (setting, alpha, aggregator) the worst case over
    the attacks (the 'none' column excluded)."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["setting"], float(r["alpha"]), r["aggregator"], r["attack"]),
                          []).append(r)
    table = []
    for (setting, alpha, agg, attack), rows in sorted(groups.items()):
        accs = [r["accuracy"] for r in rows if r["accuracy"] is not None]
        statuses = sorted({r["status"] for r in rows})
        cell = {"setting": setting, "alpha": alpha, "aggregator": agg, "attack": attack,
                "seeds": len(accs), "status": "/".join(statuses),
                "note": next((r["note"] for r in rows if r["note"]), "")}
        if accs and "not run" not in statuses:
            cell["mean"] = statistics.fmean(accs)
            cell["std"] = statistics.stdev(accs) if len(accs) > 1 else 0.0
            cell["diverged"] = sum(r["status"] == "diverged" for r in rows)
        table.append(cell)
    worst = []
    by: dict[tuple, list[dict]] = {}
    for c in table:
        by.setdefault((c["setting"], c["alpha"], c["aggregator"]), []).append(c)
    for (setting, alpha, agg), row in sorted(by.items()):
        attacked = [c for c in row if c["attack"] != "none"]
        clean = next((c for c in row if c["attack"] == "none"), None)
        entry = {"setting": setting, "alpha": alpha, "aggregator": agg,
                 "clean": None if clean is None else clean.get("mean")}
        stopped = [c for c in row if {"refused", "failed"} & set(c["status"].split("/"))]
        if stopped:
            entry["status"] = "refused" if "refused" in stopped[0]["status"] else "failed"
            entry["note"] = f"{stopped[0]['attack']}: {stopped[0]['note']}"
        elif attacked and all("mean" in c for c in attacked):
            low = min(attacked, key=lambda c: c["mean"])
            entry.update(status="ok", worst=low["mean"], worst_std=low["std"],
                         worst_attack=low["attack"])
        else:
            missing = [c["attack"] for c in attacked if "mean" not in c]
            done = [c for c in attacked if "mean" in c]
            entry.update(status="incomplete", missing=missing)
            if done:
                low = min(done, key=lambda c: c["mean"])
                entry.update(worst_of_run=low["mean"], worst_std=low["std"],
                             worst_attack=low["attack"])
        worst.append(entry)
    return {"cells": table, "worst_case": worst}


def fmt(entry: dict[str, Any]) -> str:
    if entry["status"] in ("refused", "failed"):
        return entry["status"]
    if entry["status"] == "ok":
        return f"{entry['worst']:.3f} ± {entry['worst_std']:.3f} ({entry['worst_attack']})"
    if "worst_of_run" in entry:
        return (f"≤{entry['worst_of_run']:.3f} ({entry['worst_attack']}; "
                f"{len(entry['missing'])} attacks not run)")
    return "not run"


def headline(summary: dict[str, Any], alphas: tuple[float, ...]) -> str:
    """Markdown: aggregators x (setting, alpha), worst case over attacks."""
    columns = [(s, a) for s in SETTINGS for a in alphas]
    index = {(w["setting"], w["alpha"], w["aggregator"]): w for w in summary["worst_case"]}
    aggs = list(dict.fromkeys(w["aggregator"] for w in summary["worst_case"]))
    lines = ["| aggregator | " + " | ".join(f"{s} α={a:g}" for s, a in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for agg in aggs:
        row = [fmt(index[(s, a, agg)]) if (s, a, agg) in index else "n/a" for s, a in columns]
        lines.append(f"| {agg} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def cell_tables(summary: dict[str, Any], alphas: tuple[float, ...]) -> str:
    """Markdown: per (setting, alpha) a table of aggregators x attacks, mean ± std of seeds."""
    out = []
    index = {(c["setting"], c["alpha"], c["aggregator"], c["attack"]): c
             for c in summary["cells"]}
    for setting in SETTINGS:
        for alpha in alphas:
            here = [c for c in summary["cells"] if c["setting"] == setting
                    and c["alpha"] == alpha]
            if not here:
                continue
            aggs = list(dict.fromkeys(c["aggregator"] for c in here))
            attacks = [a for a in ATTACKS if any(c["attack"] == a for c in here)]
            out += [f"### {setting}, alpha = {alpha:g}", "",
                    "| aggregator | " + " | ".join(attacks) + " |",
                    "|---" * (len(attacks) + 1) + "|"]
            for agg in aggs:
                row = []
                for attack in attacks:
                    c = index.get((setting, alpha, agg, attack))
                    if c is None:
                        row.append("")
                    elif "mean" in c and "failed" not in c["status"]:
                        mark = "†" if c.get("diverged") else ""
                        row.append(f"{c['mean']:.2f}±{c['std']:.2f}{mark}")
                    else:
                        row.append(c["status"])
                out.append(f"| {agg} | " + " | ".join(row) + " |")
            out.append("")
    out.append("† some seed diverged (non-finite honest model), counted at chance (0.10).")
    return "\n".join(out) + "\n"


def plot(summary: dict[str, Any], alphas: tuple[float, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    columns = [(s, a) for s in SETTINGS for a in alphas]
    index = {(w["setting"], w["alpha"], w["aggregator"]): w for w in summary["worst_case"]}
    aggs = list(dict.fromkeys(w["aggregator"] for w in summary["worst_case"]))
    grid = np.full((len(aggs), len(columns)), np.nan)
    for i, agg in enumerate(aggs):
        for j, (s, a) in enumerate(columns):
            w = index.get((s, a, agg))
            if w is not None and w["status"] == "ok":
                grid[i, j] = w["worst"]
    fig, ax = plt.subplots(figsize=(1.6 * len(columns) + 2, 0.4 * len(aggs) + 1.5))
    im = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    for i in range(len(aggs)):
        for j, (s, a) in enumerate(columns):
            w = index.get((s, a, aggs[i]))
            text = ("n/a" if w is None else w["status"] if w["status"] in ("refused", "failed")
                    else "" if math.isnan(grid[i, j]) else f"{grid[i, j]:.2f}")
            ax.text(j, i, text or "—", ha="center", va="center", fontsize=7,
                    color="black" if math.isnan(grid[i, j]) or grid[i, j] >= 0.5 else "white")
    ax.set_xticks(range(len(columns)), [f"{s}\nα={a:g}" for s, a in columns], fontsize=8)
    ax.set_yticks(range(len(aggs)), aggs, fontsize=8)
    ax.set_title("honest accuracy, worst case over attacks (mean of seeds)", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few cells, 2 rounds (smoke)")
    parser.add_argument("--out", "--runs", dest="out", type=Path, default=HERE / "results")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds after which no new run starts (the rest: 'not run')")
    parser.add_argument("--resume", action="store_true",
                        help="keep <out>/cells.jsonl's runs (those that failed run again)")
    parser.add_argument("--only", default=None,
                        help="comma-separated aggregators to run now (with --resume: the "
                             "summary still covers every run in cells.jsonl)")
    args = parser.parse_args(argv)
    if "MURMURA_DATA" not in os.environ and DEFAULT_DATA.is_dir():
        os.environ["MURMURA_DATA"] = str(DEFAULT_DATA)  # the workers inherit it
    args.out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        aggs, attacks = QUICK["aggregators"], QUICK["attacks"]
        seeds, alphas = QUICK["seeds"], QUICK["alphas"]
        rounds, samples, name = QUICK["rounds"], QUICK["train_samples"], "quick"
        data_name = QUICK["dataset"]
    else:
        aggs, attacks, seeds, alphas = tuple(AGGREGATORS), ATTACKS, SEEDS, ALPHAS
        rounds, samples, name = ROUNDS, TRAIN_SAMPLES, "robustness"
        data_name = "fashion_mnist"
    if not args.resume and (args.out / "cells.jsonl").exists():
        (args.out / "cells.jsonl").unlink()
    every_job = [(s, g, a, alpha, seed, rounds, samples, data_name)
                 for s, g, a in cells(aggs, attacks) for alpha in alphas for seed in seeds]
    if args.only:
        wanted = [a.strip() for a in args.only.split(",") if a.strip()]
        unknown = sorted(set(wanted) - set(aggs))
        if unknown:
            parser.error(f"--only: unknown aggregators {unknown}; choose from {list(aggs)}")
        if not args.resume:
            parser.error("--only runs part of the grid: give --resume too, so the other runs "
                         "stay in cells.jsonl")
        aggs = tuple(a for a in aggs if a in wanted)
    jobs = [(s, g, a, alpha, seed, rounds, samples, data_name) for s, g, a in cells(aggs, attacks)
            for alpha in alphas for seed in seeds]
    start = time.perf_counter()
    results = run_all(jobs, args.out, args.workers, args.budget)
    wall = time.perf_counter() - start
    if args.only:  # the summary covers the whole grid: nothing more starts (budget 0)
        results = run_all(every_job, args.out, args.workers, 0.0)
        jobs, aggs = every_job, tuple(AGGREGATORS)
    summary = summarize(results)
    ran = [r for r in results if r["status"] != "not run"]
    report = {
        "config": {"hidden": HIDDEN, "rounds": rounds, "train_samples": samples,
                   "node_samples": NODE_SAMPLES, "training": TRAINING, "seeds": list(seeds),
                   "alphas": list(alphas), "settings": SETTINGS, "aggregators": list(aggs),
                   "attacks": list(attacks)},
        "runs": len(jobs), "ran": len(ran), "wall_seconds": wall,
        "run_seconds": sum(r["seconds"] for r in ran),
        "refused": sum(r["status"] == "refused" for r in ran),
        "failed": sum(r["status"] == "failed" for r in ran),
        "diverged": sum(r["status"] == "diverged" for r in ran),
        "not_run": len(jobs) - len(ran),
        **summary,
        "headline": headline(summary, alphas),
    }
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=1))
    (args.out / f"{name}_cells.md").write_text(cell_tables(summary, alphas))
    figure = (HERE if args.out.resolve() == (HERE / "results").resolve() else args.out)
    plot(summary, alphas, figure / f"{name}_worst_case.png")
    print(report["headline"])
    print(f"{len(ran)}/{len(jobs)} runs in {wall:.0f} s wall ({report['run_seconds']:.0f} s "
          f"of runs); refused {report['refused']}, diverged {report['diverged']}, not run "
          f"{report['not_run']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
