"""Non-linear communication through the engine against a per-node Python loop, same run, same
inputs (a benchmark, never a test).

    MURMURA_DATA=/path/to/fashion-mnist python benchmarks/robust_choco.py
    python benchmarks/robust_choco.py --quick               # 100 and 1,000 nodes: a smoke run
    python benchmarks/robust_choco.py --case median --repeats 5 --json out.json
    python benchmarks/robust_choco.py --quick --profile prof.txt   # torch.profiler tables

Two cases, each one communication stage of a round, on Fashion-MNIST (``federate(...,
"iid")``; no training happens in the timed part, the data only sizes the model):

**median**: D-SGD with ``aggregator="median"`` (``murmura.robust.Median``), 1,000 nodes of an MLP
784-200-10 (d = 159,010) on a random 6-regular graph: every node's model becomes the
coordinate-wise median of its neighbourhood, itself included (7 models). Nodes start from their
own random initialization (``same_init=False``), so the medians are not trivial.
**choco**: CHOCO-SGD with top-1% compression (``{"name": "top_k", "ratio": 0.01}``, 79 of 7,850
entries) and consensus step gamma = 0.5, 10,000 logistic-regression nodes (784 -> 10, d = 7,850)
on a random 4-regular graph: ``q_i = top_k(x_i - x̂_i)``, ``x̂_i += q_i``, then
``x_i += gamma sum_j W_ij (x̂_j - x̂_i)``. Nodes start from their own random initialization and
x̂ = 0 (the first round's state).

**murmura** times the stage as ``Simulation.step`` runs it: the communication rule's plan
(``sim.algorithm.communication.plan(...)``, an ``Exchange``) and ``sim.communicate(plan)``,
i.e. the engine's vmapped encoders, aggregator and combiner over blocks of nodes, the sparse
product for CHOCO, writing the results back, and byte counting. **loop** is what a plain PyTorch
user writes for the same arithmetic, one node at a time: for the median, stack the node's and
its neighbours' rows and take ``torch.median(stack, dim=0)`` (and a second variant calling the
same ``murmura.robust.Median`` on the stack); for CHOCO, for each node ``topk`` of
``|x_i - x̂_i|`` and ``x̂_i[idx] += (x_i - x̂_i)[idx]``, then for each node
``x_i += gamma * W_i,N(i) @ (x̂_N(i) - x̂_i)``. The neighbour lists (and CHOCO's weights) are
read once from the same mixing matrix before timing, as the engine caches its neighbourhoods;
results go into a new tensor for the median (every node must read its neighbours' old rows) and
in place for CHOCO (its two passes need no copy).

**Timing.** Both sides run in one process on the same inputs (restored before every run). Each
side first runs once cold (its peak memory is taken then, and its result checked); then
``--repeats`` timed passes alternate the sides' order, with nothing freed back to the kernel in
between, as consecutive rounds would run. The figure is the median of the timed runs; the best
and the cold run (for the engine, with its neighbourhood cache built) are recorded too.
**Equality.** Each loop's result is compared with the engine's cold result (and the engine's
first timed run with it, as a determinism check): the median exactly (both pick the same
element), CHOCO's public copies x̂ exactly and its models to float32 rounding (a sparse product
and per-node dot products sum in different orders). **Memory.** For the cold run, the
resident-set high-water mark (``VmHWM``), reset through ``/proc/self/clear_refs`` just before
it, minus the resident set just before it, after ``gc.collect()`` and glibc's ``malloc_trim(0)``
so pages freed earlier do not hide new ones: the stage's peak extra memory, with the model
state's size (n x d x 4 bytes) for scale, and the process's peak RSS. Both sides run under
murmura's allocator tuning (``murmura.swarm.memory``), since the inputs come from a
``Simulation``. Peak RSS counts pages touched, not tensors live.

What this does not show: a real round (local training is not timed), other aggregators (Krum's
pairwise distances cost differently), other devices; nor how the numbers move with other work on
the machine: timings on a shared machine are noisy, and the ratio is the figure to read.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

ENGINE = "murmura engine"
CASES = {
    "median": dict(nodes=1_000, quick_nodes=100, model="mlp", model_kwargs={"hidden": [200]},
                   algorithm="dsgd", algorithm_kwargs={"aggregator": "median", "local_steps": 1},
                   k=6, repeats=5),
    "choco": dict(nodes=10_000, quick_nodes=1_000, model="logreg", model_kwargs=None,
                  algorithm="choco",
                  algorithm_kwargs={"compressor": {"name": "top_k", "ratio": 0.01},
                                    "gamma": 0.5, "local_steps": 1, "batch_size": 4},
                  k=4, repeats=15),
}


# ------------------------------------------------------------------------------- memory probes


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def settle() -> int:
    """Free what can be freed and give it back to the kernel; the resident set (bytes)."""
    gc.collect()
    _LIBC.malloc_trim(0)
    return _status_kb("VmRSS") * 1024


def reset_peak() -> None:
    """Reset the resident-set high-water mark to the current resident set (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak() -> int:
    return _status_kb("VmHWM") * 1024


# ------------------------------------------------------------------------------- the inputs


def build(case: dict, nodes: int, root: str | None):
    from murmura.data import federate
    from murmura.swarm import Evaluation, Simulation

    data = federate("fashion_mnist", num_nodes=nodes, partition="iid", seed=0, root=root)
    return Simulation(data, case["model"], case["algorithm"], "random_regular",
                      model_kwargs=case["model_kwargs"], algorithm_kwargs=case["algorithm_kwargs"],
                      topology_kwargs={"k": case["k"]}, evaluation=Evaluation(every=0),
                      same_init=False, seed=0)


def neighbourhoods(sim) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each node's neighbourhood, itself first, and its row of W on it (the loop's set-up)."""
    csr = sim.topology.mixing_at(0).matrix.to_sparse_csr()
    crow, col, val = csr.crow_indices(), csr.col_indices(), csr.values()
    ids, weights = [], []
    for i in range(sim.num_nodes):
        js, ws = col[crow[i]:crow[i + 1]], val[crow[i]:crow[i + 1]]
        own = js == i
        ids.append(torch.cat([js[own], js[~own]]))
        weights.append(torch.cat([ws[own], ws[~own]]))
    return ids, weights


# ------------------------------------------------------------------------------- the two sides


def engine_stage(sim) -> None:
    """The round's communication stage as ``Simulation.step`` runs it."""
    ctx = sim.context(10**9)
    plan = sim.algorithm.communication.plan(ctx, None, sim.topology, sim.data.sizes)
    sim.communicate(plan)


def median_loop(sim, ids) -> None:
    out = torch.empty_like(sim.params)
    x = sim.params
    for i, nb in enumerate(ids):
        out[i] = torch.median(x[nb], dim=0).values
    sim.params.copy_(out)


def median_loop_murmura(sim, ids) -> None:
    from murmura.robust import Median

    median = Median()
    out = torch.empty_like(sim.params)
    x = sim.params
    for i, nb in enumerate(ids):
        out[i] = median(x[i], x[nb], torch.ones(len(nb)))
    sim.params.copy_(out)


def choco_loop(sim, ids, weights) -> None:
    x, public = sim.params, sim.node_state["public"]
    kept = sim.algorithm.communication.compressor.kept(x.shape[1])
    gamma = sim.algorithm.communication.gamma
    for i in range(len(ids)):  # q_i = top_k(x_i - x̂_i); x̂_i += q_i
        diff = x[i] - public[i]
        idx = torch.topk(diff.abs(), kept).indices
        public[i, idx] += diff[idx]
    for i, (nb, w) in enumerate(zip(ids, weights)):  # x_i += gamma sum_j W_ij (x̂_j - x̂_i)
        x[i] += gamma * (w @ (public[nb] - public[i]))


# ------------------------------------------------------------------------------- one case


def state_of(sim) -> dict[str, torch.Tensor]:
    return {"params": sim.params, **sim.node_state}


def snapshot(sim) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in state_of(sim).items()}


def restore(sim, saved: dict[str, torch.Tensor]) -> None:
    for k, v in state_of(sim).items():
        v.copy_(saved[k])


def run_case(name: str, nodes: int, repeats: int, root: str | None,
             profile: Path | None) -> dict:
    case = CASES[name]
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    sim = build(case, nodes, root)
    ids, weights = neighbourhoods(sim)
    setup = time.perf_counter() - t0
    n, d = sim.params.shape
    saved = snapshot(sim)
    if name == "median":
        sides = {ENGINE: lambda: engine_stage(sim),
                 "loop torch.median": lambda: median_loop(sim, ids),
                 "loop murmura Median": lambda: median_loop_murmura(sim, ids)}
    else:
        sides = {ENGINE: lambda: engine_stage(sim),
                 "loop": lambda: choco_loop(sim, ids, weights)}

    reference = None
    checks: dict[str, dict] = {}
    times: dict[str, list[float]] = {s: [] for s in sides}
    extra: dict[str, int] = {}
    setup_peak = highest = peak()
    # pass 0, per side: a cold run with its peak memory and its result; then timed passes
    for side, fn in sides.items():
        restore(sim, saved)
        before = settle()
        highest = max(highest, peak())
        reset_peak()
        start = time.perf_counter()
        fn()
        times[side].append(time.perf_counter() - start)
        extra[side] = peak() - before
        if reference is None:  # the engine runs first: its result is the reference
            reference = snapshot(sim)
        else:
            checks[side] = compare(name, reference, sim)
    order = list(sides)
    for index in range(repeats):
        order.reverse()
        for side in order:
            restore(sim, saved)
            start = time.perf_counter()
            sides[side]()
            times[side].append(time.perf_counter() - start)
            if index == 0 and side == ENGINE:  # the same inputs, the same result
                checks[ENGINE + " (rerun)"] = compare(name, reference, sim)
    if profile is not None:
        write_profile(profile, name, sides, sim, saved)

    state_bytes = n * d * 4
    sides_out = {}
    for side in sides:
        timed = times[side][1:]  # without the cold first run
        sides_out[side] = {
            "median_s": statistics.median(timed), "best_s": min(timed), "runs_s": timed,
            "cold_first_run_s": times[side][0],
            "peak_extra_mb": extra[side] / 1e6,
            "peak_extra_over_state": extra[side] / state_bytes,
        }
    engine = sides_out[ENGINE]["median_s"]
    for out in sides_out.values():
        out["loop_over_engine"] = out["median_s"] / engine
    return {
        "case": name, "label": label(name, n, d, case), "nodes": n, "parameters": d,
        "neighbourhood": case["k"] + 1, "state_mb": state_bytes / 1e6,
        "setup_s": setup, "setup_peak_rss_gb": setup_peak / 1e9,
        "process_peak_rss_gb": max(peak(), highest) / 1e9,
        "repeats": repeats, "sides": sides_out, "checks": checks,
        "ok": all(c["ok"] for c in checks.values()),
        "threads": torch.get_num_threads(),
        # 1-minute load averages: other work on the machine slows both sides
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
    }


def compare(name: str, reference: dict[str, torch.Tensor], sim) -> dict:
    if name == "median":
        diff = float((sim.params - reference["params"]).abs().max())
        return {"params_max_abs_diff": diff, "exact": diff == 0.0, "ok": diff == 0.0}
    public = float((sim.node_state["public"] - reference["public"]).abs().max())
    diff = float((sim.params - reference["params"]).abs().max())
    scale = float(reference["params"].abs().max())
    ok = public == 0.0 and diff <= 1e-6 * max(1.0, scale)
    return {"public_max_abs_diff": public, "params_max_abs_diff": diff, "params_scale": scale,
            "ok": ok}


def label(name: str, n: int, d: int, case: dict) -> str:
    if name == "median":
        return (f"coordinate-wise median over the 7-node neighbourhood, {n:,} nodes, MLP "
                f"784-200-10 (d = {d:,}), random {case['k']}-regular")
    return (f"CHOCO top-1% + gossip, {n:,} nodes, logistic regression (d = {d:,}), random "
            f"{case['k']}-regular")


def write_profile(path: Path, name: str, sides: dict, sim, saved) -> None:
    from torch.profiler import ProfilerActivity, profile

    with path.open("a") as out:
        for side, fn in sides.items():
            restore(sim, saved)
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                fn()
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
            out.write(f"=== {name}: {side} ({sim.num_nodes} nodes)\n{table}\n")


# ------------------------------------------------------------------------------- main


def print_case(result: dict) -> None:
    print(result["label"])
    load = result["load_average_1min"]
    print(f"  state {result['state_mb']:.0f} MB, set-up {result['setup_s']:.1f} s, process peak "
          f"RSS {result['process_peak_rss_gb']:.2f} GB, {result['threads']} torch threads, "
          f"load average {load['before']:.1f} before, {load['after']:.1f} after")
    print(f"  {'side':<22} {'median s':>9} {'best s':>8} {'vs engine':>10} "
          f"{'peak extra MB':>14} {'x state':>8}")
    for side, out in result["sides"].items():
        print(f"  {side:<22} {out['median_s']:>9.3f} {out['best_s']:>8.3f} "
              f"{out['loop_over_engine']:>9.1f}x {out['peak_extra_mb']:>14.0f} "
              f"{out['peak_extra_over_state']:>8.2f}")
    for side, check in result["checks"].items():
        detail = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                           for k, v in check.items() if k != "ok")
        print(f"  {side} vs the engine's first run: {'OK' if check['ok'] else 'MISMATCH'} "
              f"({detail})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 and 1,000 nodes")
    parser.add_argument("--case", choices=sorted(CASES), action="append",
                        help="run only this case (repeatable)")
    parser.add_argument("--nodes", type=int, help="override the number of nodes")
    parser.add_argument("--repeats", type=int,
                        help="timed runs per side (default: 5 for median, 15 for choco)")
    parser.add_argument("--root", help="Fashion-MNIST folder (default: $MURMURA_DATA)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", type=Path,
                        help="append a torch.profiler table of one run of each side here")
    args = parser.parse_args()
    results = []
    for name in args.case or ["median", "choco"]:
        case = CASES[name]
        nodes = args.nodes or (case["quick_nodes"] if args.quick else case["nodes"])
        repeats = args.repeats or case["repeats"]
        result = run_case(name, nodes, repeats, args.root, args.profile)
        results.append(result)
        print_case(result)
    if args.json:
        args.json.write_text(json.dumps({
            "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "results": results}, indent=2) + "\n")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
