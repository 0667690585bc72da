"""CBO and consensus hopping (spec section 8): GrandCanyon3noisy against gradient descent,
Rastrigin and Ackley in 20 dimensions on the complete graph and on sparse graphs, and CBO
training multinomial logistic regression on digits against SGD.

Riedl, Klock, Geldhauser, Fornasier, "Gradient is All You Need?" (arXiv 2306.09778). Every
particle is a murmura node running the ``cbo`` algorithm; independent runs are disjoint
components of one simulation's graph (each component is its own swarm: the consensus of a node
only reads its neighbourhood), which is how 50 runs of 200 particles take seconds.

    .venv/bin/python experiments/cbo/run.py            # everything (~4 min on 2 shared cores)
    .venv/bin/python experiments/cbo/run.py --quick    # smoke run (seconds)
    .venv/bin/python experiments/cbo/run.py --parts canyon  # one part: canyon, benchmarks, digits

Writes ``results.json`` to ``--out`` (default: ``experiments/cbo/results``) and ``cbo.png``
next to this file (into ``--out`` when another folder is given).
One swarm alone runs from the config: ``murmura run experiments/cbo/configs/grand_canyon.toml``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from murmura.algorithms import (
    SGD,
    Algorithm,
    Every,
    FullParticipation,
    LocalWork,
    NoCommunication,
)
from murmura.algorithms.cbo import consensus_point
from murmura.data import FederatedData, load_dataset
from murmura.swarm import Evaluation, Simulation
from murmura.tasks.objectives import grand_canyon3_noisy, placeholder_data
from murmura.topology import StaticTopology, make_topology
from murmura.topology.time_varying import TimeVaryingTopology

HERE = Path(__file__).resolve().parent

FULL = dict(
    canyon=dict(runs=50, particles=200, steps=250, gd_steps=10_000, record_every=1),
    benchmarks=dict(problems=[("rastrigin", 10), ("rastrigin", 20), ("ackley", 20)],
                    particles=100, swarms=3, steps=2000, record_every=20),
    digits=dict(particles=100, swarms=3, steps=500, group=10, batch=64, record_every=25,
                sgd_lr=0.1),
)
QUICK = dict(
    canyon=dict(runs=3, particles=20, steps=10, gd_steps=50, record_every=1),
    benchmarks=dict(problems=[("rastrigin", 4), ("ackley", 4)], particles=10, swarms=2,
                    steps=10, record_every=5),
    digits=dict(particles=20, swarms=2, steps=6, group=10, batch=16, record_every=3, sgd_lr=0.1),
)
SUCCESS = 0.25  # ‖v − x*‖∞ < 0.25, the paper's success criterion
# the spec's settings (section 8): CBO and CH on GrandCanyon3noisy, CBO on Rastrigin d=10 (run
# here in d=20, Ackley with the same), CBO for logistic regression ("typical, must be tuned")
CANYON_CBO = dict(alpha=100.0, lam=1.0, sigma=1.6, dt=0.01, noise="isotropic")
CANYON_CH = dict(alpha=100.0, sigma=0.7, hopping=True)
BENCH_CBO = dict(alpha=1e15, lam=1.0, sigma=0.8, dt=0.01, noise="anisotropic")
DIGITS_CBO = dict(alpha=50.0, lam=1.0, sigma=0.4, dt=0.1, noise="anisotropic")


def figure_path(out: Path, name: str) -> Path:
    """The figure sits next to the README for the default results, in ``out`` otherwise."""
    return HERE / name if out.resolve() == (HERE / "results").resolve() else out / name


# ---------------------------------------------------------------------------------------------
# graphs made of independent swarms


def disjoint(parts: list[StaticTopology], name: str) -> StaticTopology:
    """The union of graphs on consecutive blocks of nodes (no edge between blocks)."""
    src, dst, offset = [], [], 0
    for part in parts:
        src.append(part.src + offset)
        dst.append(part.dst + offset)
        offset += part.num_nodes
    return StaticTopology(np.concatenate(src), np.concatenate(dst), offset, name=name,
                          weights="uniform")


def swarms_of(graph: str, swarms: int, size: int, **kwargs: Any) -> StaticTopology:
    return disjoint([make_topology(graph, size, seed=s, **kwargs) for s in range(swarms)],
                    f"{swarms}x{graph}")


class RandomGroups(TimeVaryingTopology):
    """Particle mini-batches (the random batch method of the CBO machine-learning code): every
    round each swarm of ``swarm`` consecutive nodes is split uniformly at random into groups of
    ``group``, each group a clique. Each group computes its own consensus point."""

    kind = "random_groups"

    def __init__(self, n: int, *, seed: int = 0, group: int = 10, swarm: int | None = None):
        super().__init__(n, seed=seed)
        self.group, self.swarm = group, swarm or n
        if self.swarm % group or n % self.swarm:
            raise ValueError("RandomGroups: group must divide swarm and swarm must divide n")

    def coo_at(self, round: int):
        rng = self.rng_at(round)
        n, g = self.num_nodes, self.group
        order = np.concatenate([start + rng.permutation(self.swarm)
                                for start in range(0, n, self.swarm)]).reshape(-1, g)
        rows = np.repeat(order, g, axis=1).ravel()
        cols = np.tile(order, (1, g)).ravel()
        return rows, cols, np.full(len(rows), 1.0 / g)


def cbo_simulation(data, topology, model_kwargs, algorithm_kwargs, task=None, seed=0,
                   model="vector"):
    return Simulation(data, model, "cbo", topology, model_kwargs=model_kwargs,
                      algorithm_kwargs=algorithm_kwargs, task=task, same_init=False, seed=seed,
                      evaluation=Evaluation(every=0))


def swarm_consensus(points: torch.Tensor, scores: torch.Tensor, swarms: int, alpha: float):
    """Each swarm's consensus point over all its particles: ``[swarms, d]``."""
    pts = points.reshape(swarms, -1, points.shape[-1])
    fs = scores.reshape(swarms, -1)
    ones = torch.ones(fs.shape[1])
    return torch.stack([consensus_point(p, f, ones, alpha) for p, f in zip(pts, fs)])


# ---------------------------------------------------------------------------------------------
# part 1: GrandCanyon3noisy


def finite_difference_gd(start: torch.Tensor, lrs: list[float], steps: int, h: float = 1e-3):
    """Gradient descent ``x <- x - lr ∇f`` with central differences of step ``h`` (float64),
    for every learning rate at once: the final points ``[len(lrs), 2]`` and the paths."""
    x = start.to(torch.float64).repeat(len(lrs), 1)
    lr = torch.tensor(lrs, dtype=torch.float64).unsqueeze(1)
    e = torch.eye(2, dtype=torch.float64) * h
    path = [x.clone()]
    for _ in range(steps):
        probe = torch.stack([x + e[0], x - e[0], x + e[1], x - e[1]], dim=1)
        f = grand_canyon3_noisy(probe)
        grad = torch.stack([f[:, 0] - f[:, 1], f[:, 2] - f[:, 3]], dim=1) / (2 * h)
        x = x - lr * grad
        path.append(x.clone())
    return x, torch.stack(path, dim=1)


def run_swarms(sim: Simulation, steps: int, swarms: int, alpha: float, objective, every: int):
    """Run, recording every swarm's consensus point and its value every ``every`` steps."""
    record = []
    for k in range(steps + 1):
        if k % every == 0 or k == steps:
            with torch.no_grad():
                v = swarm_consensus(sim.params, objective(sim.params), swarms, alpha)
            record.append((k, v.clone(), objective(v).clone()))
        if k < steps:
            sim.step(steps)
    return record


def canyon(cfg: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    runs, n = cfg["runs"], cfg["particles"]
    start = torch.tensor([8.0, 8.0])
    out: dict[str, Any] = {"settings": dict(cfg, cbo=CANYON_CBO, ch=CANYON_CH)}
    t0 = time.perf_counter()
    lrs = [1e-3, 1e-2]
    final, paths = finite_difference_gd(start, lrs, cfg["gd_steps"])
    # GD from (8, 8) is deterministic: one run stands for all 50 identical runs
    for lr, x in zip(lrs, final):
        ok = bool(x.abs().max() < SUCCESS)
        out[f"gd_lr{lr:g}"] = dict(success_rate=float(ok), runs=runs, final_point=x.tolist(),
                                   final_f=float(grand_canyon3_noisy(x)))
    out["gd_path"] = paths[1, :: max(1, cfg["gd_steps"] // 500)].tolist()  # lr = 1e-2
    out["gd_seconds"] = time.perf_counter() - t0
    topology = swarms_of("complete", runs, n)
    data = placeholder_data(runs * n)
    for arm, kwargs, std in (("cbo", CANYON_CBO, 0.5), ("ch", CANYON_CH, 0.7)):
        t0 = time.perf_counter()
        sim = cbo_simulation(data, topology, dict(dim=2, mean=[8.0, 8.0], std=std),
                             dict(kwargs, batch_size=1), "grand_canyon3_noisy", seed)
        record = run_swarms(sim, cfg["steps"], runs, kwargs["alpha"], grand_canyon3_noisy,
                            cfg["record_every"])
        v_final = record[-1][1]
        hits = (v_final.abs().max(dim=1).values < SUCCESS).to(torch.float64)
        trajectory = torch.stack([v for _, v, _ in record])  # [steps, runs, 2]
        gd = paths[1]
        mean_v = trajectory.mean(1).to(torch.float64)
        gap = torch.cdist(mean_v, gd).min(dim=1).values
        # "close to the GD path early, departing where GD stalls": the gap up to the step at
        # which the mean consensus point passes nearest to GD's stall point
        passing = int(torch.linalg.vector_norm(mean_v - gd[-1], dim=1).argmin())
        out[arm] = dict(
            success_rate=float(hits.mean()), successes=int(hits.sum()), runs=runs,
            final_f_mean=float(record[-1][2].mean()),
            mean_trajectory=trajectory.mean(1).tolist(),
            distance_to_gd_path=gap.tolist(),
            passes_gd_stall_at_step=passing * cfg["record_every"],
            gap_before_stall_median=float(gap[: passing + 1].median()),
            gap_before_stall_max=float(gap[: passing + 1].max()),
            seconds=time.perf_counter() - t0,
            bytes_per_node_per_step=float(sim.bytes_sent[0]) / cfg["steps"],
        )
    return out


# ---------------------------------------------------------------------------------------------
# part 2: Rastrigin and Ackley in 20 dimensions, complete vs sparse graphs


def benchmarks(cfg: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """Every graph's swarms are components of one simulation per (function, dimension)."""
    from murmura.tasks.objectives import Objective

    n, swarms = cfg["particles"], cfg["swarms"]
    graphs = {"complete": ("complete", {}), "random_regular_4": ("random_regular", {"k": 4}),
              "ring": ("ring", {})}
    topology = disjoint([make_topology(graph, n, seed=s, **kwargs)
                         for graph, kwargs in graphs.values() for s in range(swarms)], "swarms")
    data = placeholder_data(len(graphs) * swarms * n)
    out: dict[str, Any] = {"settings": dict(cfg, cbo=BENCH_CBO, init="N(1, I) per coordinate",
                                            rastrigin_amplitude=10.0)}
    for function, d in cfg["problems"]:
        objective = Objective(function).value
        t0 = time.perf_counter()
        sim = cbo_simulation(data, topology, dict(dim=d, mean=1.0, std=1.0),
                             dict(BENCH_CBO, batch_size=1), function, seed)
        record = run_swarms(sim, cfg["steps"], len(graphs) * swarms, BENCH_CBO["alpha"],
                            objective, cfg["record_every"])
        seconds = time.perf_counter() - t0
        for g, label in enumerate(graphs):
            part = slice(g * swarms, (g + 1) * swarms)
            v = record[-1][1][part]
            out[f"{function}_d{d}/{label}"] = dict(
                final_f=record[-1][2][part].tolist(),
                success=(v.abs().max(dim=1).values < SUCCESS).tolist(),
                curve_steps=[k for k, _, _ in record],
                curve_f=[fv[part].tolist() for _, _, fv in record],
                bytes_per_node_per_step=float(sim.bytes_sent[g * swarms * n]) / cfg["steps"],
                seconds=seconds)
    return out


# ---------------------------------------------------------------------------------------------
# part 3: CBO training logistic regression on digits, against SGD


def replicated(dataset, nodes: int) -> FederatedData:
    """Every node (particle) holds the whole training set, as in centralized CBO."""
    return FederatedData.from_parts(dataset, [np.arange(dataset.num_train)] * nodes)


def losses_and_accuracy(sim: Simulation, rows: torch.Tensor, x, y
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean cross-entropy and accuracy on ``(x, y)`` of every flat parameter row of
    ``rows`` (the simulation's model)."""
    def one(params):
        out = functional_call(sim.model, params, (x,))
        return F.cross_entropy(out, y), (out.argmax(1) == y).float().mean()

    with torch.no_grad():
        return vmap(one)(sim.spec.views(rows))


def digits(cfg: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    dataset = load_dataset("digits")
    n, swarms = cfg["particles"], cfg["swarms"]
    data = replicated(dataset, n * swarms)
    out: dict[str, Any] = {"settings": dict(cfg, cbo=DIGITS_CBO)}
    t0 = time.perf_counter()
    sim = cbo_simulation(data, RandomGroups(n * swarms, seed=seed, group=cfg["group"], swarm=n),
                         None, dict(DIGITS_CBO, batch_size=cfg["batch"]), seed=seed,
                         model="logreg")
    curve = []
    for k in range(cfg["steps"] + 1):
        if k % cfg["record_every"] == 0 or k == cfg["steps"]:
            train_loss, _ = losses_and_accuracy(sim, sim.params, dataset.train_x,
                                                dataset.train_y)
            v = swarm_consensus(sim.params, train_loss, swarms, DIGITS_CBO["alpha"])
            v_loss, v_acc = losses_and_accuracy(sim, v, dataset.test_x, dataset.test_y)
            x = sim.params.reshape(swarms, n, -1)
            spread = (x - x.mean(1, keepdim=True)).square().sum(-1).mean(1)
            curve.append(dict(step=k, test_accuracy=v_acc.tolist(), test_loss=v_loss.tolist(),
                              train_loss_best=train_loss.reshape(swarms, -1).min(1).values
                              .tolist(), spread=spread.tolist()))
        if k < cfg["steps"]:
            sim.step(cfg["steps"])
    out["cbo"] = dict(curve=curve, final_test_accuracy=curve[-1]["test_accuracy"],
                      seconds=time.perf_counter() - t0,
                      bytes_per_node_per_step=float(sim.bytes_sent[0]) / cfg["steps"])
    # the reference: SGD on the same model, one independent run per swarm, same steps and batch
    t0 = time.perf_counter()
    alone = Algorithm(name="sgd", local_rule=SGD(cfg["sgd_lr"]),
                      local_work=LocalWork(batch_size=cfg["batch"], steps=1),
                      communication=NoCommunication(), schedule=Every(1),
                      participation=FullParticipation())
    sgd = Simulation(replicated(dataset, swarms), "logreg", alone, seed=seed, same_init=False,
                     evaluation=Evaluation(every=0))
    curve = []
    for k in range(cfg["steps"] + 1):
        if k % cfg["record_every"] == 0 or k == cfg["steps"]:
            loss, acc = losses_and_accuracy(sgd, sgd.params, dataset.test_x, dataset.test_y)
            curve.append(dict(step=k, test_accuracy=acc.tolist(), test_loss=loss.tolist()))
        if k < cfg["steps"]:
            sgd.step(cfg["steps"])
    out["sgd"] = dict(curve=curve, final_test_accuracy=curve[-1]["test_accuracy"],
                      seconds=time.perf_counter() - t0)
    return out


# ---------------------------------------------------------------------------------------------
# verdicts, table and figure


def mean_spread(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values))


def verdicts(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "canyon" in results:
        c = results["canyon"]
        gd = max(c["gd_lr0.001"]["success_rate"], c["gd_lr0.01"]["success_rate"])
        out["canyon_success_confirms"] = bool(c["cbo"]["success_rate"] >= 0.8
                                      and c["ch"]["success_rate"] >= 0.8 and gd <= 0.05)
    if "digits" in results:
        acc = results["digits"]["cbo"]["final_test_accuracy"]
        out["digits_cbo_over_85"] = bool(np.mean(acc) > 0.85)
    return out


def summary_lines(results: dict[str, Any]) -> list[str]:
    lines = []
    if "canyon" in results:
        c = results["canyon"]
        for key in ("gd_lr0.001", "gd_lr0.01", "cbo", "ch"):
            r = c[key]
            line = f"canyon {key:11s} success {r['success_rate']:.2f} over {r['runs']} runs"
            if "passes_gd_stall_at_step" in r:
                line += (f"; passes GD's stall point at step {r['passes_gd_stall_at_step']}, gap "
                         f"to the GD path before it: median {r['gap_before_stall_median']:.2f}, "
                         f"max {r['gap_before_stall_max']:.2f}")
            lines.append(line)
    if "benchmarks" in results:
        for key, r in results["benchmarks"].items():
            if key == "settings":
                continue
            m, s = mean_spread(r["final_f"])
            lines.append(f"{key:28s} f(v) {m:.3g} ± {s:.2g}  success {np.mean(r['success']):.2f}"
                         f"  ({r['seconds']:.0f} s)")
    if "digits" in results:
        for arm in ("cbo", "sgd"):
            m, s = mean_spread(results["digits"][arm]["final_test_accuracy"])
            lines.append(f"digits {arm}: test accuracy {m:.3f} ± {s:.3f}")
    return lines


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.6))
    if "canyon" in results:
        c, ax = results["canyon"], axes[0]
        g = torch.linspace(-2, 9, 300)
        xx, yy = torch.meshgrid(g, g, indexing="xy")
        zz = grand_canyon3_noisy(torch.stack([xx, yy], -1))
        ax.contour(xx, yy, zz, levels=25, linewidths=0.5, cmap="Greys")
        gd = np.array(c["gd_path"])
        ax.plot(gd[:, 0], gd[:, 1], "k-", lw=2, label="GD (lr 1e-2), stalls")
        for arm, colour in (("cbo", "tab:blue"), ("ch", "tab:orange")):
            t = np.array(c[arm]["mean_trajectory"])
            ax.plot(t[:, 0], t[:, 1], "-", color=colour, lw=2,
                    label=f"{arm.upper()} mean consensus ({c[arm]['success_rate']:.0%} success)")
        ax.plot([0], [0], "r*", ms=12, label="global minimizer")
        ax.set_title("GrandCanyon3noisy, d=2")
        ax.legend(fontsize=7, loc="lower right")
        ax = axes[1]
        for arm, colour in (("cbo", "tab:blue"), ("ch", "tab:orange")):
            ax.plot(c[arm]["distance_to_gd_path"], color=colour, label=arm.upper())
        ax.set_xlabel("step")
        ax.set_ylabel("distance of mean consensus point to the GD path")
        ax.set_title("GrandCanyon: mean consensus point vs the GD path")
        ax.legend()
    if "benchmarks" in results:
        ax = axes[2]
        styles = {"complete": "-", "random_regular_4": "--", "ring": ":"}
        for key, r in results["benchmarks"].items():
            if key == "settings":
                continue
            function, graph = key.split("/")
            f = np.array(r["curve_f"])  # [records, swarms]
            colour = {"rastrigin_d10": "tab:orange", "rastrigin_d20": "tab:red"}.get(
                function, "tab:green")
            ax.semilogy(r["curve_steps"], np.maximum(f.mean(1), 1e-8), styles[graph],
                        color=colour, label=f"{function}, {graph}")
        ax.set_xlabel("step")
        ax.set_ylabel("f(consensus point), mean over swarms")
        ax.set_title(f"Rastrigin / Ackley, N={results['benchmarks']['settings']['particles']} "
                     "(anisotropic, alpha 1e15)")
        ax.legend(fontsize=6, ncol=2)
    if "digits" in results:
        ax = axes[3]
        for arm, colour in (("cbo", "tab:blue"), ("sgd", "k")):
            curve = results["digits"][arm]["curve"]
            steps = [p["step"] for p in curve]
            acc = np.array([p["test_accuracy"] for p in curve])
            ax.plot(steps, acc.mean(1), color=colour, label=arm.upper())
            ax.fill_between(steps, acc.min(1), acc.max(1), color=colour, alpha=0.2)
        ax.axhline(0.85, color="grey", ls=":", label="target 85%")
        ax.set_xlabel("step")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1)
        ax.set_title("digits, logistic regression (d=650)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run in seconds")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--parts", nargs="+", default=["canyon", "benchmarks", "digits"],
                        choices=["canyon", "benchmarks", "digits"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: robust on a shared 2-core machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = QUICK if args.quick else FULL
    start = time.perf_counter()
    results: dict[str, Any] = {}
    for part in args.parts:
        t0 = time.perf_counter()
        results[part] = globals()[part](cfg[part])
        print(f"{part}: {time.perf_counter() - t0:.1f} s", flush=True)
    results["verdicts"] = verdicts(results)
    results["wall_seconds"] = time.perf_counter() - start
    results["quick"] = args.quick
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, figure_path(args.out, "cbo.png"))
    for line in summary_lines(results):
        print(line)
    print(f"verdicts: {results['verdicts']}  wall {results['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
