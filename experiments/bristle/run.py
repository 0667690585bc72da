"""Bristle (Verbraeken, de Vos and Pouwelse, arXiv 2110.11006) on murmura's engine: the spec's
CPU pilot (specs/robust.md section 3 (e)), 3 seeds.

Protocol (fixed before any result was seen, from the spec): sklearn digits through a frozen
backbone that is the identity on the 64 pixels (``frozen_features``), a linear head
(``logreg``: 64 weights and a bias per class, the only part trained and exchanged); 15 honest
nodes, 10 non-IID ones holding 4 consecutive classes (``i .. i + 3 mod 10``, 20 samples each,
80 in all) and 5 IID ones (8 samples of each class, 80); 0 / 5 / 10 attackers (80 IID samples
each, drawn from the whole training set) that train on ``(y + 1) mod 10`` (``label_flip`` with
``shift=1``) and send that model; 10 local SGD steps (lr 0.3, batch 16) per round, 40 rounds;
every honest node receives every model (complete graph), and Bristle's default prioritizer
(50 closest + 5 explored) then evaluates them all. The attackers receive nothing: they train on
their flipped labels alone and send the result every round (a consistent flipped-label model,
the spec's "attackers train on labels (y + 1) mod 10"; in murmura a malicious node otherwise
runs the defence like an honest one, with the engine's unflipped samples). Columns: local
training only, D-SGD with the plain average, with the coordinate-wise median, with Bristle,
each over the node's own model and all it receives. The caveat row: the 10 non-IID nodes alone
(no IID peers), no attackers. Measured: each honest node's accuracy on the digits test set
(540 samples), averaged over the non-IID and over the IID nodes. ``--attackers-aggregate``
runs the variant where the attackers also receive every model and run the arm's rule before
their flipped-label training (murmura's default for malicious nodes).

    .venv/bin/python experiments/bristle/run.py                        # the full grid, 3 seeds
    .venv/bin/python experiments/bristle/run.py --attackers-aggregate  # the variant
    .venv/bin/python experiments/bristle/run.py --quick --out /tmp/bq  # smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
PROTOCOL: dict[str, Any] = {
    "noniid_nodes": 10, "classes_per_node": 4, "iid_nodes": 5, "samples": 80,
    "rounds": 40, "local_steps": 10, "lr": 0.3, "batch_size": 16, "label_shift": 1,
    "per_class": 10, "evaluate_every": 5,
}
ARMS: dict[str, Any] = {  # arm -> the D-SGD aggregator (None: local training only)
    "local": None, "average": "average", "median": "median", "bristle": "bristle",
}
SETTINGS: dict[str, dict[str, Any]] = {  # row -> (attackers, IID peers present)
    "0 attackers": {"attackers": 0, "iid": True},
    "5 attackers": {"attackers": 5, "iid": True},
    "10 attackers (40%)": {"attackers": 10, "iid": True},
    "no IID peers (caveat)": {"attackers": 0, "iid": False},
}


def partition(labels: np.ndarray, setting: dict[str, Any], seed: int) -> list[np.ndarray]:
    """Per-node training indices: the non-IID nodes, then the IID ones (disjoint from them
    and each other), then the attackers (IID draws from the whole training set)."""
    rng = np.random.default_rng([seed, 0xB215])
    p, classes = PROTOCOL, int(labels.max()) + 1
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in range(classes)]
    per_class = p["samples"] // p["classes_per_node"]
    parts = []
    for node in range(p["noniid_nodes"]):
        mine = [(node + j) % classes for j in range(p["classes_per_node"])]
        parts.append(np.array([pools[c].pop() for c in mine for _ in range(per_class)]))
    if setting["iid"]:
        parts += [np.array([pools[c].pop() for c in range(classes)
                            for _ in range(p["samples"] // classes)])
                  for _ in range(p["iid_nodes"])]
    parts += [rng.choice(len(labels), p["samples"], replace=False)
              for _ in range(setting["attackers"])]
    return parts


def send_only(n: int, senders: list[int]) -> Any:
    """The complete graph on ``n`` nodes, except that the ``senders`` receive from nobody:
    every other node receives every model (uniform weights), a sender keeps its own."""
    import networkx as nx

    from murmura.topology.base import Topology
    from murmura.topology.mixing import MixingMatrix

    class SendOnly(Topology):
        name, time_varying = "complete_send_only", False

        def __init__(self) -> None:
            self.num_nodes, self.seed, self.params = n, 0, {"senders": len(senders)}
            bad = set(senders)
            pairs = [(i, j) for i in range(n) for j in range(n)
                     if (i == j if i in bad else True)]
            rows, cols = (np.array(a) for a in zip(*pairs))
            counts = np.bincount(rows, minlength=n)
            self._matrix = MixingMatrix.from_coo(rows, cols, 1.0 / counts[rows], n)
            self._graph = nx.DiGraph([(j, i) for i, j in pairs if i != j])

        def mixing_at(self, round: int = 0, device: Any = None) -> MixingMatrix:
            return self._matrix if device is None else self._matrix.to(device)

        def graph_at(self, round: int = 0) -> Any:
            return self._graph

    return SendOnly()


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One (setting, arm, seed) run: the honest groups' mean test accuracy over the rounds."""
    import torch
    from torch import nn

    torch.set_num_threads(1)
    from murmura.algorithms import make_algorithm
    from murmura.data import FederatedData, load_dataset
    from murmura.robust import Adversary
    from murmura.robust.bristle import frozen_features
    from murmura.swarm import Evaluation, Simulation

    p, setting, arm, seed = PROTOCOL, SETTINGS[job["setting"]], job["arm"], job["seed"]
    rounds = job["rounds"]
    dataset = frozen_features(nn.Identity(), load_dataset("digits"))
    parts = partition(dataset.train_y.numpy(), setting, seed)
    data = FederatedData.from_parts(dataset, parts)
    honest = p["noniid_nodes"] + (p["iid_nodes"] if setting["iid"] else 0)
    bad = list(range(honest, len(parts)))
    kwargs = {"lr": p["lr"], "local_steps": p["local_steps"], "batch_size": p["batch_size"]}
    if ARMS[arm] is None:
        algorithm, topology = make_algorithm("local_sgd", **kwargs), None
    else:
        aggregator = ARMS[arm]
        if arm == "bristle":
            aggregator = {"name": "bristle", "per_class": p["per_class"]}
        # a graph whose attackers receive nothing is not strongly connected: allow it
        algorithm = replace(make_algorithm("dsgd", aggregator=aggregator, **kwargs),
                            needs_connected=False)
        topology = (send_only(len(parts), bad) if bad and not job["attackers_aggregate"]
                    else "complete")
    adversary = (Adversary({"name": "label_flip", "shift": p["label_shift"]}, nodes=tuple(bad))
                 if bad else None)
    sim = Simulation(data, "logreg", algorithm, topology, seed=seed, adversary=adversary,
                     evaluation=Evaluation(every=0))
    test_x, test_y = dataset.test_x, dataset.test_y
    groups = {"noniid": slice(0, p["noniid_nodes"]), "iid": slice(p["noniid_nodes"], honest)}
    curves: dict[str, list[float]] = {"round": [], "noniid": [], "iid": []}

    def measure(record: dict[str, Any]) -> None:
        done = sim.round
        if done % p["evaluate_every"] and done != rounds:
            return
        views = sim.spec.views(sim.params)
        weight, bias = (views[name] for name in sim.spec.names)
        logits = torch.einsum("mh,nch->nmc", test_x, weight) + bias[:, None, :]
        accuracy = (logits.argmax(-1) == test_y).double().mean(1)
        curves["round"].append(done)
        for group, rows in groups.items():
            chosen = accuracy[rows]
            curves[group].append(float(chosen.mean()) if len(chosen) else float("nan"))

    start = time.perf_counter()
    sim.run(rounds, callback=measure)
    return {**{k: job[k] for k in ("setting", "arm", "seed")},
            "seconds": time.perf_counter() - start, **curves}


def stats(values: list[float]) -> dict[str, float] | None:
    values = [v for v in values if v == v]  # no IID group: NaN
    if not values:
        return None
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def criteria(table: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The spec's direction ("non-IID nodes learn foreign classes, Byzantine-robust beyond the
    median's breakdown", with no cost without attackers), as thresholds fixed before the runs;
    and the caveat it records."""
    def m(row: str, arm: str, group: str = "noniid") -> float | None:
        cell = table.get(row, {}).get(arm, {}).get(group)
        return None if cell is None else cell["mean"]

    out: dict[str, Any] = {}
    attacked = [r for r in table if SETTINGS[r]["iid"] and SETTINGS[r]["attackers"]]
    rows = [r for r in table if SETTINGS[r]["iid"]]
    clean = "0 attackers"
    if clean in table and all(m(r, a) is not None for r in rows for a in ("local", "bristle")):
        out["learns_foreign_classes"] = all(m(r, "bristle") >= m(r, "local") + 0.30
                                            for r in rows)
        out["no_cost_without_attack"] = all(
            abs(m(clean, "bristle", g) - m(clean, "average", g)) <= 0.03 for g in ("noniid", "iid"))
        out["robust_to_attackers"] = all(abs(m(r, "bristle", g) - m(clean, "bristle", g)) <= 0.05
                                         for r in attacked for g in ("noniid", "iid"))
        out["attack_breaks_average"] = all(m(clean, "average") - m(r, "average") >= 0.30
                                           for r in attacked)
        worst = max(attacked, key=lambda r: SETTINGS[r]["attackers"], default=None)
        if worst is not None:
            out["beyond_median"] = m(worst, "bristle") >= m(worst, "median") + 0.10
        out["confirms"] = all(out.values())
    caveat = "no IID peers (caveat)"
    if m(caveat, "bristle") is not None and m(caveat, "local") is not None:
        out["caveat_reproduces"] = abs(m(caveat, "bristle") - m(caveat, "local")) <= 0.05
    return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {}
    for row in SETTINGS:
        for arm in ARMS:
            mine = [r for r in runs if r["setting"] == row and r["arm"] == arm]
            if mine:
                table.setdefault(row, {})[arm] = {g: stats([r[g][-1] for r in mine])
                                                  for g in ("noniid", "iid")}
    return {"table": table, "criteria": criteria(table)}


def plot(runs: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """One panel per row: each arm's non-IID (solid) and IID (dashed) accuracy over rounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in SETTINGS if any(x["setting"] == r for x in runs)]
    fig, axes = plt.subplots(1, len(rows), figsize=(3.5 * len(rows), 3.3), squeeze=False)
    for ax, row in zip(axes[0], rows):
        for k, arm in enumerate(ARMS):
            mine = [r for r in runs if r["setting"] == row and r["arm"] == arm]
            for group, style in (("noniid", "-"), ("iid", "--")):
                curves = np.array([r[group] for r in mine], dtype=float)
                if not np.isfinite(curves).any():
                    continue
                ax.plot(mine[0]["round"], 100 * curves.mean(0), style, color=f"C{k}",
                        label=arm if group == "noniid" else None)
        ax.set_title(row, fontsize=9)
        ax.set_xlabel("round")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("honest nodes' test accuracy (%)")
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Bristle pilot (digits){title}: non-IID nodes solid, IID nodes dashed; "
                 "mean over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: one seed, 3 rounds, 0 and 5 attackers and the caveat")
    parser.add_argument("--attackers-aggregate", action="store_true",
                        help="a variant: the attackers also receive every model and run the "
                             "arm's rule (on their unflipped samples) before training on "
                             "flipped labels; results and figure get the suffix "
                             "_attackers_aggregate")
    parser.add_argument("--out", type=Path, default=None,
                        help="results directory (default: results/ next to this script; the "
                             "figure goes next to the script)")
    args = parser.parse_args(argv)
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    rounds = 3 if args.quick else PROTOCOL["rounds"]
    rows = ([r for r in SETTINGS if SETTINGS[r]["attackers"] in (0, 5)] if args.quick
            else list(SETTINGS))
    out = args.out or HERE / "results"
    out.mkdir(parents=True, exist_ok=True)
    variant = args.attackers_aggregate
    tag = "_attackers_aggregate" if variant else ""
    jobs = [{"setting": row, "arm": arm, "seed": seed, "rounds": rounds,
             "attackers_aggregate": variant}
            for row in rows for arm in ARMS for seed in seeds]
    start = time.perf_counter()
    print(f"{len(jobs)} runs on {args.workers} workers", flush=True)
    if args.workers <= 1:
        runs = [run_one(job) for job in jobs]
    else:
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            runs = list(pool.map(run_one, jobs))
    wall = time.perf_counter() - start
    results = {**summarize(runs), "protocol": PROTOCOL, "rounds": rounds, "seeds": seeds,
               "attackers_aggregate": variant, "wall_seconds": wall, "runs": runs}
    (out / f"results{tag}.json").write_text(json.dumps(results, indent=1))
    figure = ((HERE if out.resolve() == (HERE / "results").resolve() else out)
              / f"bristle{tag}.png")
    plot(runs, figure, ", attackers aggregate too" if variant else "")
    print(f"\nfinal test accuracy, non-IID / IID honest nodes (%, mean ± std over seeds "
          f"{seeds}):")
    print(f"{'':>22} " + " ".join(f"{arm:>27}" for arm in ARMS))
    for row, cells in results["table"].items():
        text = []
        for arm in ARMS:
            parts = [f"{100 * c['mean']:5.1f} ± {100 * c['std']:4.1f}" if c else "    -     "
                     for c in (cells[arm]["noniid"], cells[arm]["iid"])]
            text.append(" / ".join(parts))
        print(f"{row:>22} " + " ".join(f"{t:>27}" for t in text))
    print("criteria:", json.dumps(results["criteria"]))
    print(f"\nwall time {wall:.0f} s; results in {out}, figure {figure}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
