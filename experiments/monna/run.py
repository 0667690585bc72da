"""MoNNA (Farhadkhani et al., ICML 2023) on murmura's engine: the spec's CPU reproduction
(specs/robust.md section 4 (e)) and its momentum ablation; 3 seeds.

Protocol (section 4 (b), the reference code's): n_h = 13 honest nodes and f = 3 Byzantine ones
(appended after them) on a complete graph; each round every honest node takes one step of
Polyak momentum (beta = 0.9, dampening beta; lr 0.5 constant, batch 25), then waits for the
first n - f = 13 messages, its own half-step, the 3 Byzantine vectors (a worst-case network
delivers them first) and 9 of the 12 other honest half-steps (a keyed uniform draw each
round), and replaces its model by a rule over them. Training data: Dirichlet alpha = 1 over
the 13 honest nodes (the attackers hold copies of honest parts; what they train is never sent).
The attacks rewrite the Byzantine messages from every honest half-step (an omniscient
adversary). No attack: the 13 honest nodes alone, f = 0, where every rule is the mean.

Rules: ``average`` (D-SGD), ``monna`` (NNA: the 13 - 3 received half-steps nearest one's own),
``trimmed_mean`` (f = 3 per coordinate, BRIDGE-like); ``monna_b0`` is MoNNA with beta = 0.

Settings (fixed before any result was seen):

* ``digits`` (default, the spec's acceptance test): sklearn digits, softmax regression, 200
  steps; attacks none, sign flip (-mean), ALIE (mean + 1.5 std, ByzFL's sign), Gaussian N(0, 1);
* ``fmnist`` (``--settings fmnist``, the spec's ablation, about 10 minutes on 2 cores): Fashion-
  MNIST, MLP 784-64-10, 200 steps, MoNNA with beta 0.9 and 0; ALIE and FOE (``(1 - tau) mean``,
  the code's "empire") with ``tau`` line-searched each step against NNA (16 probes from 0 by
  steps of 1, the code's ``line_maximize`` constants; ByzFL's search, which probes above the
  best point only).

    .venv/bin/python experiments/monna/run.py                       # digits, ~2 minutes
    .venv/bin/python experiments/monna/run.py --settings fmnist     # the momentum ablation
    .venv/bin/python experiments/monna/run.py --quick --out /tmp/mq # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1].parent / "shared" / "datasets" / "fashion-mnist"
PROTOCOL = {"honest": 13, "f": 3, "alpha": 1.0, "batch_size": 25, "lr": 0.5}
RULES: dict[str, tuple[Any, float]] = {  # arm: (aggregator, momentum beta)
    "average": ("average", 0.9),
    "monna": (None, 0.9),  # monna_dl's own: MoNNA(f)
    "trimmed_mean": ({"name": "trimmed_mean", "f": PROTOCOL["f"]}, 0.9),
    "monna_b0": (None, 0.0),
}
LINE_SEARCH = {"evals": 16, "delta": 1.0, "ratio": 0.8}  # tools/misc.py::line_maximize
ATTACKS: dict[str, Any] = {
    "none": None,
    "sign_flip": "sign_flip",
    "alie": {"name": "alie", "tau": 1.5},
    "gaussian": {"name": "gaussian", "mu": 0.0, "std": 1.0},
    "alie_ls": {"name": "optimal_alie", "start": 0.0, **LINE_SEARCH},
    # (1 - tau) mean = -(tau - 1) mean: IPM's line from tau_ipm = -1, i.e. tau = 0
    "foe_ls": {"name": "optimal_ipm", "start": -1.0, **LINE_SEARCH},
}
SETTINGS: dict[str, dict[str, Any]] = {
    "digits": {"dataset": "digits", "model": "logreg", "model_kwargs": {}, "rounds": 200,
               "every": 25, "rules": list(RULES),
               "attacks": ["none", "sign_flip", "alie", "gaussian"]},
    "fmnist": {"dataset": "fashion_mnist", "model": "mlp", "model_kwargs": {"hidden": [64]},
               "rounds": 200, "every": 25, "rules": ["monna", "monna_b0"],
               "attacks": ["none", "alie_ls", "foe_ls"]},
}


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One (setting, attack, rule, seed) run; the honest nodes' accuracies per evaluation."""
    import torch

    torch.set_num_threads(1)
    from murmura.data import FederatedData, federate
    from murmura.robust import Adversary
    from murmura.swarm import Evaluation, Simulation

    setting, attack, rule, seed = job["setting"], job["attack"], job["rule"], job["seed"]
    n_h, f = PROTOCOL["honest"], 0 if attack == "none" else PROTOCOL["f"]
    honest = federate(setting["dataset"], n_h, "dirichlet", alpha=PROTOCOL["alpha"], seed=seed)
    data = FederatedData.from_parts(honest.dataset, list(honest.parts) + list(honest.parts[:f]))
    bad = tuple(range(n_h, n_h + f))
    aggregator, beta = RULES[rule]
    kwargs = {"f": f, "lr": PROTOCOL["lr"], "momentum": beta, "wait": n_h,
              "batch_size": PROTOCOL["batch_size"], "delivered_first": list(bad)}
    if aggregator is not None and f:
        kwargs["aggregator"] = aggregator
    start = time.perf_counter()
    sim = Simulation(data, setting["model"], "monna_dl", "complete", seed=seed,
                     model_kwargs=setting["model_kwargs"], algorithm_kwargs=kwargs,
                     adversary=Adversary(ATTACKS[attack], nodes=bad) if f else None,
                     evaluation=Evaluation(every=setting["every"]))
    records = sim.run(rounds=setting["rounds"]).records
    prefix = "honest_" if f else ""  # without an adversary every node is honest
    evaluated = [r for r in records if f"{prefix}node_accuracy_mean" in r]
    return {**{k: job[k] for k in ("name", "attack", "rule", "seed")},
            "seconds": time.perf_counter() - start,
            "rounds": [r["round"] + 1 for r in evaluated],
            "node_mean": [r[f"{prefix}node_accuracy_mean"] for r in evaluated],
            "node_min": [r[f"{prefix}node_accuracy_min"] for r in evaluated],
            "average_model": [r[f"{prefix}test_accuracy"] for r in evaluated]}


def stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def summarize(runs: list[dict[str, Any]], setting: dict[str, Any]) -> dict[str, Any]:
    """Per (attack, rule): the final honest accuracies over seeds; the spec's criteria."""
    table: dict[str, dict[str, Any]] = {}
    for attack in setting["attacks"]:
        table[attack] = {}
        for rule in setting["rules"]:
            # no attack: one run per beta (every rule is the mean), reported under each rule
            wanted = rule if attack != "none" else ("monna_b0" if RULES[rule][1] == 0 else
                                                    "monna")
            mine = [r for r in runs if r["attack"] == attack and r["rule"] == wanted]
            if mine:
                table[attack][rule] = {key: stats([r[key][-1] for r in mine])
                                       for key in ("node_mean", "node_min", "average_model")}
    criteria: dict[str, Any] = {}
    base = table.get("none", {}).get("monna")
    for attack in ("sign_flip", "gaussian"):
        cell = table.get(attack, {})
        if base is None or "monna" not in cell or "average" not in cell:
            continue
        clean = base["node_mean"]["mean"]
        criteria[attack] = {
            "monna_drop": clean - cell["monna"]["node_mean"]["mean"],
            "average_drop": clean - cell["average"]["node_mean"]["mean"],
            "monna_within_2_points": clean - cell["monna"]["node_mean"]["mean"] <= 0.02,
            "average_30_points_worse": clean - cell["average"]["node_mean"]["mean"] >= 0.30,
        }
    if criteria:
        criteria["confirms"] = all(c["monna_within_2_points"] and c["average_30_points_worse"]
                                   for c in criteria.values())
    return {"table": table, "criteria": criteria}


def plot(settings: dict[str, dict[str, Any]], runs: dict[str, list[dict[str, Any]]],
         path: Path) -> None:
    """One panel per (setting, attack): the honest nodes' mean accuracy over the steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(name, attack) for name, s in settings.items() for attack in s["attacks"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.3), squeeze=False)
    for ax, (name, attack) in zip(axes[0], panels):
        for rule in settings[name]["rules"]:
            if attack == "none" and rule not in ("monna", "monna_b0"):
                continue  # without an attack every rule is the mean: one run per beta
            mine = [r for r in runs[name] if r["attack"] == attack and r["rule"] == rule]
            curves = list(zip(*[r["node_mean"] for r in mine]))
            mean = [100 * statistics.fmean(c) for c in curves]
            line, = ax.plot(mine[0]["rounds"], mean, marker=".", label=(
                f"beta = {RULES[rule][1]}" if attack == "none" else rule))
            ax.fill_between(mine[0]["rounds"], [100 * min(c) for c in curves],
                            [100 * max(c) for c in curves], alpha=0.2, color=line.get_color())
        ax.set_title(f"{name}: {attack}", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("honest nodes' accuracy (%)")
    fig.suptitle("MoNNA, n_h = 13, f = 3: mean over 3 seeds (band: min to max)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


SETTINGS_USED: dict[str, dict[str, Any]] = {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="digits",
                        help=f"comma-separated, of {', '.join(SETTINGS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: one seed, 10 steps, every arm")
    parser.add_argument("--out", type=Path, default=None,
                        help="results directory (default: results/ next to this script)")
    args = parser.parse_args(argv)
    names = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in names if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    out = args.out or HERE / "results"
    out.mkdir(parents=True, exist_ok=True)
    if "MURMURA_DATA" not in os.environ and DEFAULT_DATA.is_dir():
        os.environ["MURMURA_DATA"] = str(DEFAULT_DATA)  # the spawned workers inherit it
    SETTINGS_USED.clear()
    jobs = []
    for name in names:
        setting = dict(SETTINGS[name])
        if args.quick:
            setting.update(rounds=10, every=5)
        SETTINGS_USED[name] = setting
        for attack in setting["attacks"]:
            rules = setting["rules"] if attack != "none" else sorted(
                {"monna_b0" if RULES[r][1] == 0 else "monna" for r in setting["rules"]})
            jobs += [{"name": name, "setting": setting, "attack": attack, "rule": rule,
                      "seed": seed} for rule in rules for seed in seeds]
    start = time.perf_counter()
    print(f"{len(jobs)} runs on {args.workers} workers", flush=True)
    if args.workers <= 1:
        done = [run_one(job) for job in jobs]
    else:
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            done = list(pool.map(run_one, jobs))
    wall = time.perf_counter() - start
    runs = {name: [r for r in done if r["name"] == name] for name in names}
    results = {name: {**summarize(runs[name], SETTINGS_USED[name]),
                      "setting": {k: v for k, v in SETTINGS_USED[name].items()},
                      "protocol": PROTOCOL, "seeds": seeds, "runs": runs[name]}
               for name in names}
    tag = "" if set(names) == {"digits"} else "_" + "_".join(names)
    results["wall_seconds"] = wall
    (out / f"results{tag}.json").write_text(json.dumps(results, indent=1))
    figure = (HERE if out.resolve() == (HERE / "results").resolve() else out) / f"monna{tag}.png"
    plot(SETTINGS_USED, runs, figure)
    for name in names:
        print(f"\n{name} (final honest node accuracy, mean ± std over seeds {seeds}):")
        table = results[name]["table"]
        rules = SETTINGS_USED[name]["rules"]
        print(f"{'attack':>10} " + " ".join(f"{r:>16}" for r in rules))
        for attack, row in table.items():
            cells = [f"{100 * row[r]['node_mean']['mean']:6.2f} ± "
                     f"{100 * row[r]['node_mean']['std']:4.2f}" if r in row else " " * 15
                     for r in rules]
            print(f"{attack:>10} " + " ".join(f"{c:>16}" for c in cells))
        if results[name]["criteria"]:
            print("criteria:", json.dumps(results[name]["criteria"]))
    print(f"\nwall time {wall:.0f} s; results in {out}, figure {figure}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
