"""SybilWall (Werthenbach and Pouwelse, 2023) on murmura's engine: the spec's CPU reproduction
(specs/robust.md section 2 (e)); 3 seeds.

Protocol, the spec's: sklearn digits, softmax regression; 20 honest nodes (Dirichlet alpha = 1)
on a random graph where each node adds 2 random undirected edges (about 4 neighbours; ``--graph
random_regular``: a random 4-regular graph instead, the first run made); one attacker with S
Sybils, S + 1 identities, each wired to 2 random honest nodes (topology ``attached``), all
sending the attacker's model (``Adversary(sybils=True)``); the attacker trains on its own split
plus every class-0/1 training sample with 0 and 1 swapped (``label_flip`` with ``pairs``).
Every round: 10 SGD steps (batch 16, lr 0.3), then the exchange; 30 rounds. Metrics over the
honest nodes: mean test accuracy, and the attack rate, the share of test 0/1 images classified
as the flipped class.

Arms: ``average`` (D-SGD with uniform weights 1 / (1 + degree), the reference's averaging),
``sybilwall`` (with gossip), ``sybilwall_no_gossip``, and ``sybilwall_latest`` (history =
the latest model sent, as the reference code computes it). ``S = none``: no attacker (the 20
honest nodes alone), the accuracy reference.

    .venv/bin/python experiments/sybilwall/run.py                        # about a minute
    .venv/bin/python experiments/sybilwall/run.py --quick --out /tmp/swq  # smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROTOCOL = {"honest": 20, "graph": "add_edges", "degree": 4, "edges": 2, "alpha": 1.0,
            "rounds": 30,
            "lr": 0.3, "batch_size": 16, "local_steps": 10, "flip": [[0, 1], [1, 0]]}
SYBILS = ["none", 0, 4, 10, 20]
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "average": ("dsgd", {}),
    "sybilwall": ("sybilwall_dl", {}),
    "sybilwall_no_gossip": ("sybilwall_dl", {"gossip": False}),
    "sybilwall_latest": ("sybilwall_dl", {"history": "latest_model"}),
}


def add_edges(n: int, *, seed: int = 0, per_node: int = 2) -> Any:
    """The spec's honest graph: each node adds ``per_node`` undirected edges to distinct random
    other nodes (so about ``2 per_node`` neighbours, irregular)."""
    import networkx as nx
    import numpy as np

    rng = np.random.default_rng([seed, 0x5B11])
    graph = nx.empty_graph(n)
    for node in range(n):
        others = np.delete(np.arange(n), node)
        graph.add_edges_from((node, int(j)) for j in rng.choice(others, per_node, replace=False))
    return graph


def honest_graph() -> dict[str, Any]:
    """The base topology's name and parameters, registering the spec's generator."""
    from murmura.topology import TOPOLOGIES

    if PROTOCOL["graph"] == "random_regular":
        return {"base": "random_regular", "base_params": {"k": PROTOCOL["degree"]}}
    TOPOLOGIES.add("add_edges", add_edges, "each node adds 2 random undirected edges",
                   overwrite=True)
    return {"base": "add_edges", "base_params": {"per_node": PROTOCOL["degree"] // 2}}


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    """One (S, arm, seed) run: the honest nodes' final accuracy and attack rate."""
    import numpy as np
    import torch
    from torch.func import functional_call

    torch.set_num_threads(1)
    from murmura.data import FederatedData, federate
    from murmura.robust import Adversary
    from murmura.swarm import Simulation
    from murmura.topology import make_topology

    p, sybils, seed = PROTOCOL, job["sybils"], job["seed"]
    honest = federate("digits", p["honest"], "dirichlet", alpha=p["alpha"], seed=seed)
    dataset = honest.dataset
    parts, adversary, n = list(honest.parts), None, p["honest"]
    PROTOCOL.update(job["protocol"])
    base = honest_graph()
    if sybils == "none":
        topology = make_topology(base["base"], n, seed=seed, weights="uniform",
                                 **base["base_params"])
    else:
        labels = dataset.train_y.numpy()
        poisoned = np.union1d(parts[0], np.nonzero((labels == 0) | (labels == 1))[0])
        parts += [poisoned] + [parts[0]] * sybils  # the clones' own data is never sent
        n += sybils + 1
        topology = make_topology("attached", n, seed=seed, weights="uniform", **base,
                                 count=sybils + 1, edges=p["edges"])
        adversary = Adversary({"name": "label_flip", "pairs": p["flip"]}, count=sybils + 1,
                              placement="attached", sybils=True)
    algorithm, extra = ARMS[job["arm"]]
    kwargs = {"lr": p["lr"], "batch_size": p["batch_size"], "local_steps": p["local_steps"],
              **extra}
    start = time.perf_counter()
    sim = Simulation(FederatedData.from_parts(dataset, parts), "logreg", algorithm, topology,
                     seed=seed, algorithm_kwargs=kwargs, adversary=adversary)
    sim.run(rounds=p["rounds"])
    seconds = time.perf_counter() - start
    x, y = dataset.test_x, dataset.test_y
    zero_one = (y == 0) | (y == 1)
    accuracy, attack_rate = [], []
    with torch.no_grad():
        for i in range(p["honest"]):
            predicted = functional_call(sim.model, sim.spec.views(sim.params[i]), (x,)).argmax(1)
            accuracy.append(float((predicted == y).float().mean()))
            attack_rate.append(float((predicted[zero_one] == 1 - y[zero_one]).float().mean()))
    return {**job, "seconds": seconds, "accuracy": statistics.fmean(accuracy),
            "attack_rate": statistics.fmean(attack_rate),
            "bytes_per_node": float(sim.bytes_sent[: p["honest"]].mean())}


def stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {}
    for sybils in SYBILS:
        row = {}
        for arm in ARMS:
            mine = [r for r in runs if r["sybils"] == sybils and r["arm"] == arm]
            if mine:
                row[arm] = {k: stats([r[k] for r in mine])
                            for k in ("accuracy", "attack_rate", "bytes_per_node")}
        table[str(sybils)] = row
    criteria: dict[str, Any] = {}
    clean = table.get("none", {}).get("sybilwall")
    attacked = [str(s) for s in (4, 10, 20) if "sybilwall" in table.get(str(s), {})]
    if clean and attacked:
        rates = {s: table[s]["sybilwall"]["attack_rate"]["mean"] for s in attacked}
        drops = {s: clean["accuracy"]["mean"] - table[s]["sybilwall"]["accuracy"]["mean"]
                 for s in attacked}
        average_10 = table.get("10", {}).get("average", {}).get("attack_rate", {}).get("mean")
        criteria = {
            "sybilwall_attack_rate": rates,
            "sybilwall_attack_rate_at_most_0.1": all(r <= 0.1 for r in rates.values()),
            "average_attack_rate_at_S10": average_10,
            "average_at_least_0.3_at_S10": average_10 is not None and average_10 >= 0.3,
            "sybilwall_accuracy_drop_vs_no_attack": drops,
            "sybilwall_within_3_points": all(d <= 0.03 for d in drops.values()),
        }
        criteria["confirms"] = bool(criteria["sybilwall_attack_rate_at_most_0.1"]
                                    and criteria["average_at_least_0.3_at_S10"]
                                    and criteria["sybilwall_within_3_points"])
    return {"table": table, "criteria": criteria}


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = [s for s in SYBILS if s != "none"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key, label in ((axes[0], "attack_rate", "attack rate (0/1 flipped)"),
                           (axes[1], "accuracy", "honest test accuracy")):
        for arm in ARMS:
            cells = [summary["table"][str(s)].get(arm) for s in counts]
            if not all(cells):
                continue
            means = [100 * c[key]["mean"] for c in cells]
            stds = [100 * c[key]["std"] for c in cells]
            ax.errorbar(counts, means, yerr=stds, marker="o", capsize=3, label=arm)
        if key == "accuracy" and summary["table"]["none"].get("sybilwall"):
            ax.axhline(100 * summary["table"]["none"]["sybilwall"]["accuracy"]["mean"],
                       color="grey", ls=":", label="sybilwall, no attacker")
        ax.set_xlabel("Sybils S (S + 1 identities)")
        ax.set_ylabel(f"{label} (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("SybilWall on digits, 20 honest nodes: mean ± std over 3 seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: one seed, 2 rounds")
    parser.add_argument("--graph", choices=("add_edges", "random_regular"), default="add_edges",
                        help="honest graph: the spec's (each node adds 2 random edges) or "
                             "random 4-regular")
    parser.add_argument("--out", type=Path, default=None,
                        help="results directory (default: results/ next to this script)")
    args = parser.parse_args(argv)
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    if args.quick:
        PROTOCOL["rounds"] = 2
    out = args.out or HERE / ("results" if args.graph == "add_edges" else "results_regular")
    out.mkdir(parents=True, exist_ok=True)
    PROTOCOL["graph"] = args.graph
    jobs = [{"sybils": s, "arm": arm, "seed": seed, "protocol": dict(PROTOCOL)}
            for s in SYBILS for arm in ARMS for seed in seeds]
    start = time.perf_counter()
    if args.workers > 1:
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
            runs = list(pool.map(run_one, jobs))
    else:
        runs = [run_one(job) for job in jobs]
    wall = time.perf_counter() - start
    summary = {"protocol": PROTOCOL, "seeds": seeds, "wall_seconds": wall, **summarize(runs),
               "runs": [{k: v for k, v in r.items() if k != "protocol"} for r in runs]}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    plot(summary, (HERE if args.out is None else out) / (
        "sybilwall.png" if args.graph == "add_edges" else "sybilwall_regular.png"))
    for sybils, row in summary["table"].items():
        print(f"S={sybils:>4}: " + "  ".join(
            f"{arm} {100 * c['accuracy']['mean']:.1f}% / {100 * c['attack_rate']['mean']:.1f}%"
            for arm, c in row.items()))
    print(json.dumps(summary["criteria"], indent=1))
    print(f"wall time {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
