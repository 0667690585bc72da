"""DADAO on the virtual clock (issue 14; spec specs/decentralized.md section 6): accelerated,
decoupled gradient and communication Poisson processes, against gossip-DGD on the same streams
and synchronous DGD, on ℓ2-logistic regression. 3 seeds.

Protocol, fixed before any result was seen (the spec's CPU design): sklearn digits, binary
(even / odd), 64 pixels + a constant feature (d = 65), 16 nodes (Dirichlet alpha = 0.5 over
the ten digits, so the local optima differ), ``mu = 0.1`` and ``L`` as in DADAO's code
(``max_i mean ‖a‖² / 4``); ``x*`` by Newton's method. Graphs: a ring of 16, a 4 x 4 grid and the
complete graph. Every node's gradient clock ticks at rate 1; the communication rate is the
theory's ``√(2 χ₁ χ₂)`` of the graph. 800 simulated seconds, measured every 10.

* ``dadao``: the method (``murmura.clock.dadao.DADAO``), every node starting at the same keyed
  standard normal point (all other variables 0, as in the code).
* ``dgd``: the spec's asynchronous gossip-DGD on the same events: ``x_i -= ∇f_i(x_i) / L`` at a
  gradient event, ``x_i, x_j <- (x_i + x_j) / 2`` at a communication.
* ``dgd_quarter``: the same at DADAO's own step ``1 / (4 L)``: criterion 4's "only the x update,
  without the ỹ / z machinery" read as DADAO's gradient step with plain averaging (the spec
  does not define the ablation further).
* ``sync_dgd``: synchronous DGD, ``x <- W (x − ∇f(x) / L)`` with Metropolis weights, ``n``
  gradients and ``|E|`` pairwise exchanges a round, 800 rounds (a baseline loop written here:
  murmura's ``dsgd`` trains models on minibatches, not full gradients of this problem).
* ``dadao_slow`` (ring only): DADAO on the ring at the complete graph's communication rate
  (10.6 per second instead of 39.7), to see whether the √(χ₁χ₂) rate is needed.
* acceleration: on the complete graph, ``dadao`` and ``sync_dgd`` (there exact gradient
  descent at step 1 / L: Metropolis weights on K_n are 1 / n) also at ``mu = 0.01`` (2,400
  seconds / rounds): an accelerated method's gradients to a target grow as √(L/μ), plain
  gradient descent's as L/μ.

Measured: ``mean_i ‖x_i − x*‖²`` against gradients and communications (each communication is
one edge exchange: two messages of d floats).

Criteria (the spec's): (1) DADAO decays linearly to <= 1e-8; (2) DGD plateaus >= 1e-4;
(3) DADAO's communications to reach 1e-6 are ordered ring > grid > complete, roughly as
√(χ₁χ₂); (4) the ablation does not reach the optimum.

    .venv/bin/python experiments/dadao/run.py                 # about 2 minutes on 2 cores
    .venv/bin/python experiments/dadao/run.py --quick --out /tmp/dq
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROTOCOL = {"nodes": 16, "alpha": 0.5, "mu": 0.1, "until": 800.0, "every": 10.0,
            "targets": [1e-6, 1e-8]}
GRAPHS = ("ring", "grid", "complete")


def make_graph(name: str, n: int) -> Any:
    import networkx as nx

    if name == "ring":
        return nx.cycle_graph(n)
    if name == "grid":
        side = math.isqrt(n)
        return nx.convert_node_labels_to_integers(nx.grid_2d_graph(side, side), ordering="sorted")
    return nx.complete_graph(n)


def sync_dgd(problem: Any, graph: Any, step: float, rounds: int, x0: Any, x_star: Any,
             every: int) -> list[dict[str, Any]]:
    """Synchronous DGD with Metropolis-Hastings weights, recorded every ``every`` rounds."""
    import networkx as nx
    import torch

    n = problem.num_nodes
    w = torch.zeros(n, n, dtype=torch.float64)
    degree = dict(graph.degree)
    for i, j in graph.edges:
        w[i, j] = w[j, i] = 1.0 / (1 + max(degree[i], degree[j]))
    w += torch.diag(1.0 - w.sum(1))
    x, nodes, records = x0.clone(), torch.arange(n), []
    for k in range(1, rounds + 1):
        x = w @ (x - step * problem.gradient(nodes, x))
        if k % every == 0:
            gap = x - x_star
            records.append({"time": float(k), "gradients": n * k,
                            "communications": graph.number_of_edges() * k,
                            "distance": float((gap * gap).sum(1).mean())})
    assert nx.is_connected(graph)
    return records


def run_one(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from murmura.clock.dadao import DADAO, ClockedDecoupled, GossipDGD, GraphConstants
    from murmura.clock.draws import keyed_normal
    from murmura.data import federate
    from murmura.tasks.convex import LogisticProblem

    p, seed, method = {**job["protocol"], **job.get("override", {})}, job["seed"], job["method"]
    data = federate("digits", p["nodes"], "dirichlet", alpha=p["alpha"], seed=seed)
    problem = LogisticProblem.from_federated(data, mu=p["mu"])
    graph = make_graph(job["graph"], p["nodes"])
    L = problem.smoothness()
    start = time.perf_counter()
    if method == "sync_dgd":
        x0 = keyed_normal(seed, "clock.dadao.init", torch.arange(problem.dim)).expand(
            p["nodes"], -1)
        records = sync_dgd(problem, graph, 1.0 / L, int(p["until"]), x0, problem.optimum(),
                           int(p["every"]))
    else:
        comm_rate = None
        if method == "dadao_slow":
            comm_rate = GraphConstants.of(make_graph("complete", p["nodes"])).comm_rate
        rule = {"dadao": lambda: DADAO.for_graph(problem, graph, comm_rate),
                "dadao_slow": lambda: DADAO.for_graph(problem, graph, comm_rate),
                "dgd": lambda: GossipDGD(1.0 / L),
                "dgd_quarter": lambda: GossipDGD(1.0 / (4 * L))}[method]()
        run = ClockedDecoupled(problem, graph, rule, seed=seed, comm_rate=comm_rate,
                               window=5.0, log=False)
        records = run.run(until=p["until"], eval_every=p["every"])
    constants = GraphConstants.of(graph)
    return {**{k: job[k] for k in ("graph", "method", "seed")}, "mu": p["mu"],
            "records": records,
            "L": L, "chi1": constants.chi1, "chi2": constants.chi2,
            "comm_rate": constants.comm_rate, "wall_s": time.perf_counter() - start}


def first_reaching(records: list[dict[str, Any]], target: float, key: str) -> float | None:
    for r in records:
        if r["distance"] <= target:
            return r[key]
    return None


def summarize(results: list[dict[str, Any]], targets: list[float]) -> dict[str, Any]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        tag = "" if r["mu"] == PROTOCOL["mu"] else f"/mu={r['mu']:g}"
        groups.setdefault(f"{r['graph']}/{r['method']}{tag}", []).append(r)
    table = {}
    for name, runs in sorted(groups.items()):
        finals = [r["records"][-1]["distance"] for r in runs]
        floor = [min(x["distance"] for x in r["records"][len(r["records"]) // 2:]) for r in runs]
        row = {"final_distance": statistics.mean(finals), "final_max": max(finals),
               "late_min_distance": statistics.mean(floor), "seeds": len(runs),
               "sqrt_chi1_chi2": math.sqrt(runs[0]["chi1"] * runs[0]["chi2"])}
        for t in targets:
            for key in ("gradients", "communications"):
                hits = [first_reaching(r["records"], t, key) for r in runs]
                row[f"{key}_to_{t:g}"] = (statistics.mean(hits) if None not in hits else None)
        table[name] = row
    return table


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colors = {"dadao": "C0", "dgd": "C1", "dgd_quarter": "C2", "sync_dgd": "C3",
              "dadao_slow": "C4"}
    styles = {"ring": "-", "grid": "--", "complete": ":"}
    seen = set()
    for r in results:
        if r["seed"] != 0 or r["mu"] != PROTOCOL["mu"]:
            continue
        recs = r["records"]
        label = f"{r['method']} ({r['graph']})"
        finite = [x for x in recs if math.isfinite(x["distance"]) and x["distance"] < 1e6]
        for ax, key in zip(axes, ("gradients", "communications", "time")):
            ax.semilogy([x[key] for x in finite], [x["distance"] for x in finite],
                        styles[r["graph"]], color=colors[r["method"]],
                        label=label if label not in seen else None)
        seen.add(label)
    for ax, key in zip(axes, ("gradients", "communications", "simulated seconds (rounds)")):
        ax.set_xlabel(key)
        ax.set_ylabel("mean ‖x_i − x*‖²")
        ax.grid(alpha=0.3)
    axes[1].set_xlim(0, 40000)
    axes[0].legend(fontsize=7)
    fig.suptitle("DADAO vs gossip-DGD, ℓ2-logistic regression on digits, 16 nodes (seed 0)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one seed, 100 seconds")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    protocol = dict(PROTOCOL)
    seeds = [0, 1, 2]
    slow = {"mu": 0.01, "until": 2400.0}
    if args.quick:
        protocol["until"], seeds, slow["until"] = 100.0, [0], 100.0
    jobs = [{"protocol": protocol, "seed": s, "graph": g, "method": m}
            for s in seeds for g in GRAPHS
            for m in ("dadao", "dgd", "dgd_quarter", "sync_dgd")
            + (("dadao_slow",) if g == "ring" else ())]
    jobs = [{"protocol": protocol, "seed": s, "graph": "complete", "method": m,
             "override": slow} for s in seeds for m in ("dadao", "sync_dgd")] + jobs
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        results = list(pool.map(run_one, jobs))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = summarize(results, protocol["targets"])
    wall = time.perf_counter() - start
    (out / "results.json").write_text(json.dumps(
        {"protocol": protocol, "seeds": seeds, "summary": table, "wall_s": wall,
         "runs": results}, indent=1))
    plot(results, (out.parent if out == HERE / "results" else out) / "dadao.png")
    for name, row in table.items():
        print(f"{name:30s} final {row['final_distance']:.2e} (max {row['final_max']:.1e}) "
              f"late-min {row['late_min_distance']:.1e} comms->1e-6 "
              f"{row['communications_to_1e-06']} grads->1e-6 {row['gradients_to_1e-06']} "
              f"comms->1e-8 {row['communications_to_1e-08']}")
    print(f"{wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
