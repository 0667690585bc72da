"""Just One Byte (spec section 7): shared-seed SPSA on digits, M in {1, 4, 16} machines.

Arms, each over seeds 0, 1, 2 (the seed sets the split, the initial model, every minibatch and
every perturbation, and is shared by the arms, so they are compared paired by seed):

* (i)   ``single``: one machine holding all the training data, M·G samples per iteration
        (fp32 scalars; the reference the distributed arms should match; for M = 1 it is (ii));
* (ii)  ``fp32``: M machines on Dirichlet(1) shards, G samples each, fp32 scalars;
* (ii') ``fp32_iid``: (ii) on IID shards, at M = 4 only: a control that separates "the same
        maths" from the non-IID split (machines weigh equally, whatever their shard);
* (iii) ``int8``: the same as (ii) with the one-byte code;
* (iv)  ``dsgd``: first-order D-SGD on the complete graph (Metropolis weights 1/M: the exact
        all-reduce mean), one local step of batch 32 per round.

Learning rates come from one short pilot on seed 0 only, at M = 4: SPSA's from the spec's grid
{1e-3, 3e-3, 1e-2} (arm (ii)), D-SGD's from {0.01, 0.03, 0.1, 0.3} (the spec gives none for
backprop; half-decade steps around murmura's default 0.05, so the baseline is not handicapped
by an untuned step); the best mean accuracy over the pilot's last 3 evaluations wins and is then
fixed for every arm, M and seed. Nothing else is tuned: G = 4, eps = 1e-3, batch 32 per sample,
MLP 64-32-10 (2,410 parameters).

    .venv/bin/python experiments/spsa_shared/run.py            # the full design (see README)
    .venv/bin/python experiments/spsa_shared/run.py --quick --out /tmp/spsa   # smoke run

Writes ``results.json`` (every run's curve and the summary), ``summary.csv`` and
``accuracy.png`` into ``--out`` (default: this folder).
"""

from __future__ import annotations

import argparse
import csv
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
GRID = (1e-3, 3e-3, 1e-2)
DSGD_GRID = (0.01, 0.03, 0.1, 0.3)
G, EPS, BATCH, HIDDEN, ALPHA = 4, 1e-3, 32, 32, 1.0
TARGET = 0.80
ARMS = ("single", "fp32", "fp32_iid", "int8", "dsgd")
LABELS = {"single": "(i) 1 machine, M·G samples", "fp32": "(ii) shared seed, fp32",
          "fp32_iid": "(ii) on IID shards (control)", "int8": "(iii) shared seed, 1 byte",
          "dsgd": "(iv) D-SGD (backprop)"}
IID_CONTROL = (4,)  # the machine counts at which (ii) also runs on IID shards
FULL = dict(iterations=600, pilot=200, every=25, machines=(1, 4, 16), seeds=(0, 1, 2))
QUICK = dict(iterations=30, pilot=10, every=10, machines=(1, 4), seeds=(0,))


# ---------------------------------------------------------------------------------------------
# one run (in a worker process)


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One (arm, M, seed, lr): the accuracy curve, the bytes, and whether every replica held
    the same bits after every iteration."""
    import torch

    torch.set_num_threads(1)
    import murmura.algorithms.spsa  # noqa: F401  (registers spsa_shared)
    from murmura.data import federate
    from murmura.swarm import Evaluation, Simulation

    arm, m, seed = job["arm"], job["machines"], job["seed"]
    nodes = 1 if arm == "single" else m
    if nodes == 1 or arm == "fp32_iid":
        data = federate("digits", num_nodes=nodes, partition="iid", seed=seed)
    else:
        data = federate("digits", num_nodes=nodes, partition="dirichlet", alpha=ALPHA, seed=seed)
    if arm == "dsgd":
        algorithm, topology = "dsgd", "complete"
        kwargs: dict[str, Any] = {"lr": job["lr"], "local_steps": 1, "batch_size": BATCH}
    else:
        algorithm, topology = "spsa_shared", None
        kwargs = {"lr": job["lr"], "eps": EPS, "batch_size": BATCH,
                  "samples": G * (m if arm == "single" else 1),
                  "codec": "int8" if arm == "int8" else "fp32"}  # (i), (ii), its control
    sim = Simulation(data, "mlp", algorithm, topology, model_kwargs={"hidden": [HIDDEN]},
                     algorithm_kwargs=kwargs, seed=seed, evaluation=Evaluation(every=job["every"]))
    differing = []
    initial = sim.evaluate()["test_accuracy"]  # iteration 0: the shared initial model

    def check(record: dict[str, Any]) -> None:
        if not bool((sim.params == sim.params[0]).all()):
            differing.append(record["round"])

    start = time.perf_counter()
    history = sim.run(rounds=job["iterations"], callback=check)
    seconds = time.perf_counter() - start
    curve = [{"iteration": 0, "accuracy": initial, "bytes_per_node": 0.0}]
    curve += [{"iteration": r["round"] + 1, "accuracy": r["test_accuracy"],
               "bytes_per_node": r["bytes_sent_per_node_mean"]}
              for r in history.records if r.get("test_accuracy") is not None]
    reach = next((c for c in curve if c["accuracy"] >= TARGET), None)
    return {**job, "nodes": nodes, "seconds": seconds, "curve": curve,
            "final_accuracy": curve[-1]["accuracy"],
            "last3_accuracy": statistics.fmean(c["accuracy"] for c in curve[-3:]),
            "identical_every_round": not differing, "rounds_differing": len(differing),
            "bytes_per_node_per_iteration": history.final["bytes_sent_per_node_mean"]
            / job["iterations"],
            "bytes_total_per_iteration": history.final["bytes_sent_total"] / job["iterations"],
            "iterations_to_target": reach["iteration"] if reach else None,
            "bytes_per_node_to_target": reach["bytes_per_node"] if reach else None}


def run_all(jobs: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    if workers <= 1:
        return [run_one(j) for j in jobs]
    # the longest runs first, so the pool does not end on one straggler
    order = sorted(range(len(jobs)), key=lambda i: -jobs[i]["machines"] * (
        2 if jobs[i]["arm"] == "single" else 1))
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        done = dict(zip(order, pool.map(run_one, [jobs[i] for i in order])))
    return [done[i] for i in range(len(jobs))]


# ---------------------------------------------------------------------------------------------
# summaries


def _stats(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else (0.0 if values else None),
            "n": len(values)}


def summarize(runs: list[dict[str, Any]], machines: tuple[int, ...]) -> list[dict[str, Any]]:
    rows = []
    for m in machines:
        for arm in ARMS:
            group = [r for r in runs if r["arm"] == arm and r["machines"] == m]
            if not group:
                continue
            reached = [r for r in group if r["iterations_to_target"] is not None]
            rows.append({
                "machines": m, "arm": arm, "lr": group[0]["lr"], "seeds": len(group),
                "final_accuracy": _stats([r["final_accuracy"] for r in group]),
                "last3_accuracy": _stats([r["last3_accuracy"] for r in group]),
                "reached_target": len(reached),
                "iterations_to_target": _stats([r["iterations_to_target"] for r in reached]),
                "bytes_per_node_to_target": _stats([r["bytes_per_node_to_target"]
                                                    for r in reached]),
                "bytes_per_node_per_iteration": _stats([r["bytes_per_node_per_iteration"]
                                                        for r in group]),
                "identical_every_round": all(r["identical_every_round"] for r in group),
                "seconds": _stats([r["seconds"] for r in group]),
            })
    return rows


def _mean_curve(runs: list[dict[str, Any]], key: str = "accuracy") -> list[float]:
    return [statistics.fmean(vals) for vals in zip(*[[c[key] for c in r["curve"]]
                                                      for r in runs])]


def checks(runs: list[dict[str, Any]], machines: tuple[int, ...]) -> dict[str, Any]:
    """The spec's "confirms if" list, paired by seed."""
    out: dict[str, Any] = {}

    def of(arm: str, m: int) -> dict[int, dict[str, Any]]:
        return {r["seed"]: r for r in runs if r["arm"] == arm and r["machines"] == m}

    spsa = [r for r in runs if r["arm"] != "dsgd"]
    out["spsa_replicas_identical_every_round"] = all(r["identical_every_round"] for r in spsa)
    for m in machines:
        ref = of("single", m) if m > 1 else of("fp32", m)
        fp32, int8, dsgd = of("fp32", m), of("int8", m), of("dsgd", m)
        entry: dict[str, Any] = {}
        if m > 1 and ref and fp32:
            seeds = sorted(set(ref) & set(fp32))
            gaps = [fp32[s]["last3_accuracy"] - ref[s]["last3_accuracy"] for s in seeds]
            curve_gap = [abs(a - b) for a, b in zip(_mean_curve([fp32[s] for s in seeds]),
                                                    _mean_curve([ref[s] for s in seeds]))]
            entry["ii_minus_i_last3_points"] = _stats([100 * g for g in gaps])
            entry["ii_vs_i_mean_curve_gap_points"] = 100 * statistics.fmean(curve_gap)
            iid = of("fp32_iid", m)
            if iid:
                seeds = sorted(set(ref) & set(iid))
                entry["ii_iid_minus_i_last3_points"] = _stats(
                    [100 * (iid[s]["last3_accuracy"] - ref[s]["last3_accuracy"]) for s in seeds])
                entry["ii_iid_vs_i_mean_curve_gap_points"] = 100 * statistics.fmean(
                    abs(a - b) for a, b in zip(_mean_curve([iid[s] for s in seeds]),
                                               _mean_curve([ref[s] for s in seeds])))
        if fp32 and int8:
            seeds = sorted(set(fp32) & set(int8))
            entry["iii_minus_ii_last3_points"] = _stats(
                [100 * (int8[s]["last3_accuracy"] - fp32[s]["last3_accuracy"]) for s in seeds])
        if int8 and dsgd:
            entry["bytes_per_node_per_iteration"] = {
                "int8": statistics.fmean(r["bytes_per_node_per_iteration"]
                                         for r in int8.values()),
                "fp32": statistics.fmean(r["bytes_per_node_per_iteration"]
                                         for r in fp32.values()) if fp32 else None,
                "dsgd": statistics.fmean(r["bytes_per_node_per_iteration"]
                                         for r in dsgd.values())}
            seeds = sorted(set(int8) & set(dsgd))
            it8 = [int8[s]["iterations_to_target"] for s in seeds]
            itd = [dsgd[s]["iterations_to_target"] for s in seeds]
            entry["iterations_to_target"] = {"seeds": seeds, "int8": it8, "dsgd": itd}
            entry["iii_needs_more_iterations_than_iv"] = all(
                d is not None and (i is None or i > d) for i, d in zip(it8, itd))
            # what D-SGD reaches within the bytes (iii) spent on its whole run (paired)
            at_budget = []
            for s in seeds if m > 1 else ():
                budget = int8[s]["curve"][-1]["bytes_per_node"]
                within = [c["accuracy"] for c in dsgd[s]["curve"]
                          if c["bytes_per_node"] <= budget]
                at_budget.append({"seed": s, "budget_bytes_per_node": budget,
                                  "int8_accuracy": int8[s]["final_accuracy"],
                                  "dsgd_accuracy_within_budget": within[-1],
                                  "dsgd_iterations_within_budget": int(
                                      budget // dsgd[s]["bytes_per_node_per_iteration"])})
            entry["equal_bytes"] = at_budget
        out[f"M={m}"] = entry
    return out


# ---------------------------------------------------------------------------------------------
# the figure


def plot(runs: list[dict[str, Any]], machines: tuple[int, ...], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"single": "tab:gray", "fp32": "tab:blue", "fp32_iid": "tab:purple",
              "int8": "tab:orange", "dsgd": "tab:green"}
    styles = {"single": ":", "fp32": "-", "fp32_iid": "-.", "int8": "--", "dsgd": "-"}
    fig, axes = plt.subplots(2, len(machines), figsize=(4.6 * len(machines), 7.4), squeeze=False)
    for col, m in enumerate(machines):
        top, bottom = axes[0][col], axes[1][col]
        for arm in ARMS:
            group = [r for r in runs if r["arm"] == arm and r["machines"] == m]
            if not group:
                continue
            its = [c["iteration"] for c in group[0]["curve"]]
            acc = _mean_curve(group)
            lo = [min(v) for v in zip(*[[c["accuracy"] for c in r["curve"]] for r in group])]
            hi = [max(v) for v in zip(*[[c["accuracy"] for c in r["curve"]] for r in group])]
            top.plot(its, acc, styles[arm], color=colors[arm], label=LABELS[arm])
            top.fill_between(its, lo, hi, color=colors[arm], alpha=0.15)
            sent = _mean_curve(group, "bytes_per_node")
            if m > 1 and arm not in ("single", "fp32_iid"):  # iteration 0 sent nothing: off
                bottom.plot(sent[1:], acc[1:], styles[arm], color=colors[arm], marker=".",
                            label=LABELS[arm])
        top.axhline(TARGET, color="k", lw=0.6, alpha=0.5)
        top.set(title=f"M = {m} machines", xlabel="iteration", ylabel="test accuracy",
                ylim=(0, 1))
        if m > 1:
            bottom.set(xscale="log", xlabel="bytes sent per node (per-link count; first point: "
                       "first evaluation)", ylabel="test accuracy", ylim=(0, 1))
            bottom.axhline(TARGET, color="k", lw=0.6, alpha=0.5)
        else:
            bottom.axis("off")
            bottom.text(0.5, 0.5, "one machine: nothing is sent", ha="center", va="center")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.suptitle("Just One Byte on digits (MLP 64-32-10, G = 4, ε = 1e-3; mean and range of "
                 "3 seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 30 iterations, seed 0")
    parser.add_argument("--out", type=Path, default=HERE, help="where the results go")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=None, help="override the design")
    args = parser.parse_args(argv)
    design = dict(QUICK if args.quick else FULL)
    if args.iterations:
        design["iterations"] = args.iterations
    machines, seeds = design["machines"], design["seeds"]
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    # the pilot: arms (ii) and (iv) at M = 4 (the middle size), seed 0, every lr of the grids
    pilot_jobs = [dict(arm=arm, machines=4, seed=0, lr=lr, iterations=design["pilot"],
                       every=max(1, design["pilot"] // 10))
                  for arm, grid in (("fp32", GRID), ("dsgd", DSGD_GRID)) for lr in grid]
    pilot = run_all(pilot_jobs, args.workers)
    chosen = {arm: max((r for r in pilot if r["arm"] == arm),
                       key=lambda r: r["last3_accuracy"])["lr"] for arm in ("fp32", "dsgd")}
    lr, dsgd_lr = chosen["fp32"], chosen["dsgd"]
    print("pilot (M=4, seed 0):", {(r["arm"], r["lr"]): round(r["last3_accuracy"], 4)
                                   for r in pilot}, "-> lr", chosen, flush=True)

    jobs = []
    for m in machines:
        for arm in ARMS:
            if arm == "single" and m == 1:
                continue  # one machine with 1·G samples is arm (ii) at M = 1
            if arm == "fp32_iid" and m not in IID_CONTROL:
                continue
            for seed in seeds:
                jobs.append(dict(arm=arm, machines=m, seed=seed,
                                 lr=dsgd_lr if arm == "dsgd" else lr,
                                 iterations=design["iterations"], every=design["every"]))
    runs = run_all(jobs, args.workers)
    wall = time.perf_counter() - start
    summary = summarize(runs, machines)
    verdicts = checks(runs, machines)
    results = {"design": {**design, "G": G, "eps": EPS, "batch_per_sample": BATCH,
                          "model": f"mlp 64-{HIDDEN}-10", "dirichlet_alpha": ALPHA,
                          "lr_grid": GRID, "dsgd_lr_grid": DSGD_GRID, "target": TARGET},
               "pilot": [{k: r[k] for k in ("arm", "lr", "last3_accuracy", "final_accuracy")}
                         for r in pilot],
               "spsa_lr": lr, "dsgd_lr": dsgd_lr, "wall_seconds": wall, "workers": args.workers,
               "summary": summary, "checks": verdicts, "runs": runs}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    with open(args.out / "summary.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["machines", "arm", "lr", "seeds", "final_acc_mean", "final_acc_std",
                         "last3_acc_mean", "last3_acc_std", "reached_80", "iters_to_80_mean",
                         "bytes_per_node_to_80_mean", "bytes_per_node_per_iter",
                         "identical_every_round", "seconds_mean"])
        for row in summary:
            writer.writerow([row["machines"], row["arm"], row["lr"], row["seeds"],
                             row["final_accuracy"]["mean"], row["final_accuracy"]["std"],
                             row["last3_accuracy"]["mean"], row["last3_accuracy"]["std"],
                             row["reached_target"], row["iterations_to_target"]["mean"],
                             row["bytes_per_node_to_target"]["mean"],
                             row["bytes_per_node_per_iteration"]["mean"],
                             row["identical_every_round"], row["seconds"]["mean"]])
    plot(runs, machines, args.out / "accuracy.png")
    for row in summary:
        acc = row["last3_accuracy"]
        print(f"M={row['machines']:>2} {row['arm']:>6}: acc {100 * acc['mean']:.1f} ± "
              f"{100 * acc['std']:.1f}, reached 80% {row['reached_target']}/{row['seeds']} "
              f"at {row['iterations_to_target']['mean']}, "
              f"B/node/iter {row['bytes_per_node_per_iteration']['mean']:.0f}, "
              f"identical {row['identical_every_round']}")
    print(json.dumps(verdicts, indent=1, default=str)[:4000])
    print(f"wall time {wall:.0f} s ({args.workers} workers, {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
