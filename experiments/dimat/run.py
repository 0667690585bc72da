"""DIMAT (spec §4 of decentralized.md) on scikit-learn digits: activation-matching merges of
differently initialized agents against the plain average (WA) and local training.

The spec's CPU design: 8 agents on a ring (pi = 1/3: self, left, right), Dirichlet(0.5) label
skew, MLP 64-128-128-10 with a different random init per agent, Adam lr 1e-3 (fresh each round),
20 rounds of one local epoch alone (pretraining), then 10 merge-train iterations of one local
epoch. Murmura trains before it communicates, so the first merge closes round 20 and each later
round trains then merges; the last round (30) trains only: the record of round 20 is "after the
first merge", round 30 "after 10 iterations". Arms: DIMAT (statistics on the agent's own
samples), DIMAT-global (a fixed 512-sample subset of the whole training set, the official
code's choice), WA, local-only, and DIMAT and WA from the SAME init (criterion 3). Seeds 0, 1, 2.

Every draw in murmura is keyed by (seed, node, round, step), so the arms of one seed that share
an init train identically until the first merge: the first 19 rounds are run once and the
state loaded into each arm (``--quick`` checks that this equals a run from scratch).

Also measured (``--timing``, on by default): one merge round of 100 agents on a ring with the
MLP (Fashion-MNIST 784-128-128-10 when the files are there, else digits), seconds per round and
per neighbour pair. Also murmura's CNN (two conv + GroupNorm blocks) on digits as 1x8x8 images:
DIMAT, WA and local-only from different inits (``--no-cnn`` skips it).

    .venv/bin/python experiments/dimat/run.py            # the full run, results next to this file
    .venv/bin/python experiments/dimat/run.py --quick --out /tmp/dimat-quick   # smoke run
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
DEFAULT_FMNIST = HERE.parents[1].parent / "shared" / "datasets" / "fashion-mnist"

# arm: (merge, act_data, same_init)
ARMS: dict[str, tuple[str, str, bool]] = {
    "dimat": ("activations", "local", False),
    "dimat_global": ("activations", "global", False),
    "wa": ("average", "local", False),
    "local_only": ("none", "local", False),
    "dimat_same_init": ("activations", "local", True),
    "wa_same_init": ("average", "local", True),
}
FULL = dict(nodes=8, alpha=0.5, hidden=[128, 128], lr=1e-3, batch_size=16, act_samples=512,
            pretrain=20, iterations=10, seeds=[0, 1, 2])
QUICK = dict(FULL, hidden=[32, 32], pretrain=2, iterations=2, seeds=[0])
KEYS = ["test_accuracy", "node_accuracy_mean", "node_accuracy_min", "consensus_distance",
        "bytes_sent_per_node_mean"]


def figure_path(out: Path, name: str) -> Path:
    """The figure sits next to the README for the default results, in ``out`` otherwise."""
    return HERE / name if out.resolve() == (HERE / "results").resolve() else out / name


# ---------------------------------------------------------------------------------------------
# runs


def digits_images():
    """Digits as 1x8x8 images (the CNN's input), the same split as the flat dataset."""
    from murmura.data import Dataset, load_dataset

    flat = load_dataset("digits")
    return Dataset("digits_images", flat.train_x.view(-1, 1, 8, 8), flat.train_y,
                   flat.test_x.view(-1, 1, 8, 8), flat.test_y, num_classes=10)


def simulation(cfg: dict, arm: str, seed: int, model: str = "mlp"):
    from murmura.data import federate
    from murmura.swarm import Evaluation, Simulation

    merge, act_data, same_init = ARMS[arm]
    dataset = digits_images() if model == "cnn" else "digits"
    data = federate(dataset, num_nodes=cfg["nodes"], partition="dirichlet", alpha=cfg["alpha"],
                    seed=seed)
    kwargs = dict(lr=cfg["lr"], local_epochs=1, batch_size=cfg["batch_size"],
                  act_samples=cfg["act_samples"], pretrain_rounds=cfg["pretrain"], merge=merge,
                  act_data=act_data, act_dataset="digits" if act_data == "global" else None)
    return Simulation(data, model, "dimat", "ring", seed=seed, same_init=same_init,
                      model_kwargs={"hidden": cfg["hidden"]} if model == "mlp" else {},
                      algorithm_kwargs=kwargs, evaluation=Evaluation(every=1))


def run_seed(cfg: dict, seed: int, arms: list[str], model: str = "mlp",
             check: bool = False) -> dict[str, Any]:
    """Every arm of one seed; arms sharing an init share their first ``pretrain - 1`` rounds."""
    import torch

    torch.set_num_threads(1)
    total = cfg["pretrain"] + cfg["iterations"]
    out: dict[str, Any] = {}
    for same_init in (False, True):
        group = [a for a in arms if ARMS[a][2] == same_init]
        if not group:
            continue
        start = time.perf_counter()
        pre = simulation(cfg, "local_only" if not same_init else group[0], seed, model)
        pre.total_rounds = total
        for _ in range(cfg["pretrain"] - 1):
            pre.step(total)
        tensors, values = pre.state_dict()
        shared = ({k: v.clone() for k, v in tensors.items()}, values)
        shared_seconds = time.perf_counter() - start
        if model == "mlp":  # what the assignment does to the models of the first merge
            pre.train(None, cfg["pretrain"] - 1)
            out[f"diagnostics_{'same' if same_init else 'different'}_init"] = diagnostics(
                pre, cfg["act_samples"])
        for arm in group:
            start = time.perf_counter()
            sim = simulation(cfg, arm, seed, model)
            sim.load_state_dict(*shared)
            history = sim.run(total)
            out[arm] = {"seconds": time.perf_counter() - start + shared_seconds,
                        "curve": [{"round": r["round"] + 1, **{k: r.get(k) for k in KEYS}}
                                  for r in history.records]}
        if check:  # the shared pretraining is exactly what each arm would have done alone
            arm = group[-1]
            alone = simulation(cfg, arm, seed, model)
            alone.run(total)
            assert [r["node_accuracy_mean"] for r in alone.history.records] == [
                c["node_accuracy_mean"] for c in out[arm]["curve"]], arm
    return {"seed": seed, "arms": out}


def diagnostics(sim, act_samples: int) -> dict[str, list[float]]:
    """Right before the first merge, for every agent and ring neighbour, per hidden layer, on
    the agent's own samples: the fraction of units the assignment leaves in place (``kept``),
    the mean correlation of unit u with the neighbour's unit u (``corr_identity``) and with its
    match (``corr_matched``), and the fraction of the agent's units that are constant on its
    samples (``dead``: they correlate 0 with everything, so their match is arbitrary)."""
    import copy

    import torch

    from murmura.algorithms.base import ModelLayout
    from murmura.algorithms.dimat import ActivationMerge, correlation

    merge = ActivationMerge().bind(ModelLayout(sim.spec, copy.deepcopy(sim.model).cpu()))
    table, sizes, train_x, n = (sim.data.index_table, sim.data.sizes, sim.data.dataset.train_x,
                                sim.num_nodes)
    rows: dict[str, list[list[float]]] = {k: [] for k in ("kept", "corr_identity",
                                                          "corr_matched", "dead")}
    with torch.no_grad():
        for i in range(n):
            x = train_x[table[i, : sizes[i]]][:act_samples]
            own = merge.activations(sim.params[i], x)
            for j in ((i - 1) % n, (i + 1) % n):
                # a layer's activations do not change when the layers below are permuted
                theirs = merge.activations(sim.params[j], x)
                perms = merge.align(own, sim.params[j], x)[1]
                cells = {k: [] for k in rows}
                for a, b, perm in zip(own, theirs, perms):
                    corr = correlation(a, b)
                    units = torch.arange(len(perm))
                    cells["kept"].append(float((perm == units).float().mean()))
                    cells["corr_identity"].append(float(corr.diagonal().mean()))
                    cells["corr_matched"].append(float(corr[units, perm].mean()))
                    cells["dead"].append(float((a.std(0) == 0).float().mean()))
                for k, v in cells.items():
                    rows[k].append(v)
    return {k: [statistics.fmean(layer) for layer in zip(*v)] for k, v in rows.items()}


def timing(nodes: int = 100) -> dict[str, Any]:
    """One merge round of ``nodes`` agents on a ring: DIMAT, WA (same per-node code path) and
    D-SGD's sparse gossip; and the assignment alone on 128 x 128."""
    import numpy as np
    import torch
    from scipy.optimize import linear_sum_assignment

    from murmura.data import federate
    from murmura.swarm import Evaluation, Simulation

    torch.set_num_threads(1)
    root = Path(os.environ.get("MURMURA_DATA", DEFAULT_FMNIST))
    try:
        data = federate("fashion_mnist", nodes, "iid", seed=0, root=root,
                        dataset_params={"download": False})
        name = "fashion_mnist, MLP 784-128-128-10, 600 samples per agent, 512 used"
    except Exception:  # no Fashion-MNIST files: digits (12 samples per agent)
        data = federate("digits", nodes, "iid", seed=0)
        name = "digits, MLP 64-128-128-10, 12 samples per agent"
    out: dict[str, Any] = {"setting": name, "nodes": nodes, "pairs": 2 * nodes}
    for label, kwargs in (("dimat", {}), ("wa", {"merge": "average"})):
        sim = Simulation(data, "mlp", "dimat", "ring", model_kwargs={"hidden": [128, 128]},
                         algorithm_kwargs={"act_samples": 512, **kwargs}, same_init=False,
                         evaluation=Evaluation(every=0))
        plan = sim.algorithm.communication.plan(sim.context(2), None, sim.topology, None)
        start = time.perf_counter()
        sim.communicate(plan)
        out[f"{label}_seconds_per_round"] = time.perf_counter() - start
    sim = Simulation(data, "mlp", "dsgd", "ring", model_kwargs={"hidden": [128, 128]},
                     same_init=False, evaluation=Evaluation(every=0))
    plan = sim.algorithm.communication.plan(sim.context(2), None, sim.topology, None)
    start = time.perf_counter()
    sim.communicate(plan)
    out["dsgd_gossip_seconds_per_round"] = time.perf_counter() - start
    out["dimat_seconds_per_pair"] = (out["dimat_seconds_per_round"]
                                     - out["wa_seconds_per_round"]) / out["pairs"]
    corr = np.random.default_rng(0).normal(size=(128, 128))
    start = time.perf_counter()
    for _ in range(20):
        linear_sum_assignment(corr, maximize=True)
    out["hungarian_128_ms"] = (time.perf_counter() - start) / 20 * 1e3
    return out


# ---------------------------------------------------------------------------------------------
# summaries


def stats(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "per_seed": values}


def summarize(results: list[dict], cfg: dict) -> dict[str, Any]:
    """Per arm: x̄ and node-mean accuracy after the first merge (round P), after the last
    merge (round P + I - 1) and after the last round's training (round P + I: 10 full
    merge-train iterations); paired differences (same seed) for the criteria."""
    places = {"first_merge": cfg["pretrain"] - 1,
              "last_merge": cfg["pretrain"] + cfg["iterations"] - 2,
              "final": cfg["pretrain"] + cfg["iterations"] - 1}
    arms = [a for a in results[0]["arms"] if not a.startswith("diagnostics")]
    table: dict[str, Any] = {}
    for arm in arms:
        curves = [r["arms"][arm]["curve"] for r in results]
        table[arm] = {f"{key}_{where}": stats([c[at][key] for c in curves])
                      for key in ("node_accuracy_mean", "test_accuracy")
                      for where, at in places.items()}
        table[arm]["seconds"] = stats([r["arms"][arm]["seconds"] for r in results])

    def gap(a: str, b: str, key: str) -> dict[str, Any] | None:
        if a not in arms or b not in arms:
            return None
        return stats([table[a][key]["per_seed"][i] - table[b][key]["per_seed"][i]
                      for i in range(len(results))])

    claims = {
        "1_first_merge_dimat_minus_wa": gap("dimat", "wa", "node_accuracy_mean_first_merge"),
        **{f"2{c}_{where}_{a}_minus_{b}": gap(a, b, f"node_accuracy_mean_{where}")
           for where in ("last_merge", "final")
           for c, (a, b) in zip("abc", (("dimat", "wa"), ("dimat", "local_only"),
                                        ("wa", "local_only")))},
        **{f"3_same_init_{where}_dimat_minus_wa": gap(
            "dimat_same_init", "wa_same_init", f"node_accuracy_mean_{where}")
           for where in places},
        "local_vs_global_first_merge": gap("dimat", "dimat_global",
                                           "node_accuracy_mean_first_merge"),
    }
    diag = {name: {k: [statistics.fmean(v) for v in zip(*(r["arms"][name][k] for r in results))]
                   for k in results[0]["arms"][name]}
            for name in results[0]["arms"] if name.startswith("diagnostics")}
    return {"table": table, "claims": {k: v for k, v in claims.items() if v is not None},
            "matching_per_hidden_layer": diag}


def write(out: Path, results: list[dict], summary: dict, cfg: dict, tag: str) -> None:
    with open(out / f"runs{tag}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["arm", "seed", "round", *KEYS])
        for r in results:
            for arm, run in r["arms"].items():
                for c in run.get("curve", []):
                    writer.writerow([arm, r["seed"], c["round"], *(c[k] for k in KEYS)])
    plot(figure_path(out, f"dimat{tag}.png"), results, cfg)


def plot(path: Path, results: list[dict], cfg: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key, title in ((axes[0], "node_accuracy_mean", "agents' own models (mean)"),
                           (axes[1], "test_accuracy", "average model x̄")):
        for arm in [a for a in results[0]["arms"] if not a.startswith("diagnostics")]:
            curves = [[c[key] for c in r["arms"][arm]["curve"]] for r in results]
            rounds = [c["round"] for c in results[0]["arms"][arm]["curve"]]
            mean = [statistics.fmean(v) for v in zip(*curves)]
            ax.plot(rounds, mean, label=arm, ls="--" if "same" in arm else "-")
            ax.fill_between(rounds, [min(v) for v in zip(*curves)],
                            [max(v) for v in zip(*curves)], alpha=0.15)
        ax.axvline(cfg["pretrain"], color="grey", lw=0.8, ls=":")
        ax.set_xlabel("round (1 local epoch each; merges after rounds "
                      f"{cfg['pretrain']}..{cfg['pretrain'] + cfg['iterations'] - 1})")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (mean over 3 seeds, band: min-max)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 2+2 rounds")
    parser.add_argument("--out", type=Path, default=None, help="where results go")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-timing", action="store_true", help="skip the 100-agent timing")
    parser.add_argument("--no-cnn", action="store_true",
                        help="skip murmura's CNN on digits as 1x8x8 images")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    out = args.out or (Path("/tmp/murmura-dimat-quick") if args.quick else HERE / "results")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    jobs = [("", "mlp", list(ARMS), s) for s in cfg["seeds"]]
    if not args.no_cnn:
        jobs += [("_cnn", "cnn", ["dimat", "wa", "local_only"], s) for s in cfg["seeds"]]
    results: dict[str, list] = {}
    want_timing = not (args.no_timing or args.quick)
    if args.workers <= 1:
        for tag, model, arms, seed in jobs:
            results.setdefault(tag, []).append(run_seed(cfg, seed, arms, model, args.quick))
        timed = timing() if want_timing else None
    else:
        with ProcessPoolExecutor(min(args.workers, len(jobs) + want_timing),
                                 mp_context=get_context("spawn")) as pool:
            futures = [(tag, pool.submit(run_seed, cfg, seed, arms, model, args.quick))
                       for tag, model, arms, seed in jobs]
            timed = pool.submit(timing) if want_timing else None
            for tag, future in futures:
                results.setdefault(tag, []).append(future.result())
            timed = timed.result() if timed is not None else None
    report: dict[str, Any] = {"config": cfg, "wall_seconds": None, "timing_100_nodes": timed}
    for tag, runs in results.items():
        runs.sort(key=lambda r: r["seed"])
        report["mlp" if not tag else tag.strip("_")] = summarize(runs, cfg)
        write(out, runs, report["mlp" if not tag else tag.strip("_")], cfg, tag)
    report["wall_seconds"] = time.perf_counter() - start
    (out / "results.json").write_text(json.dumps(report, indent=1))
    for name, summary in report.items():
        if not isinstance(summary, dict) or "table" not in summary:
            continue
        print(f"{name}: node-mean / x̄ test accuracy, mean ± std over seeds")
        for arm, row in summary["table"].items():
            cells = [f"{row[f'{k}_{w}']['mean']:.3f}±{row[f'{k}_{w}']['std']:.3f}"
                     for w in ("first_merge", "last_merge", "final")
                     for k in ("node_accuracy_mean", "test_accuracy")]
            print(f"  {arm:16s} first merge {cells[0]} / {cells[1]}   last merge {cells[2]} / "
                  f"{cells[3]}   final {cells[4]} / {cells[5]}")
        for claim, value in summary["claims"].items():
            print(f"  {claim:44s} {value['mean']:+.3f} ± {value['std']:.3f}  "
                  f"per seed {[round(v, 3) for v in value['per_seed']]}")
        for group, values in summary["matching_per_hidden_layer"].items():
            print(f"  {group}: " + ", ".join(f"{k} {[round(v, 3) for v in vs]}"
                                             for k, vs in values.items()))
    if timed:
        print("timing:", json.dumps(timed))
    print(f"wall {report['wall_seconds']:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
