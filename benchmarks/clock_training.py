"""Simulated events per second of asynchronous gossip WITH training on the virtual clock, at
1,000 and 100,000 nodes, against a straightforward event loop that trains one node per event
(a benchmark, never a test).

    python benchmarks/clock_training.py                    # 1,000 and 100,000 nodes
    python benchmarks/clock_training.py --nodes 1000 --json out.json
    python benchmarks/clock_training.py --quick            # a smoke run

**Workload** (benchmarks/scale.py's): logistic regression 784 -> 10 on Fashion-MNIST, 16
images per node drawn at random (nodes overlap past 60,000), a random 4-regular graph. Every
node wakes on its own Poisson clock (rate 1 per simulated second), takes one SGD step of
minibatch 8 (lr 0.05) and averages its model with one neighbour drawn uniformly (pairwise
gossip). An event is one wake-up.

**Three paths, in one process, one after the other**:

* ``window``: ``murmura.clock.gossip.ClockedGossip`` with a window of ``--window-events``
  expected wake-ups (``width = events / (n * rate)`` simulated seconds): a window's wakers are
  trained as one vmapped local step and their exchanges applied as waves of node-disjoint
  pairs. A wider window changes which models the window's wakers train from (each trains from
  the model it had at the window's start), not the event order.
* ``exact``: the same runner at ``window = 0``: one event per step, murmura's exact mode.
* ``loop``: what one writes without murmura: a ``heapq`` of (time, node), and for each event
  a minibatch drawn from the node's images, an autograd step on its row of the ``[n, d]``
  parameter table and the average with a random neighbour (``torch.Generator`` draws).

Rates are events processed over wall seconds after a warm-up; setup (data, graph, tables) is
reported apart. The loop and ``exact`` are run for fewer events (their rate does not depend on
how many). Single-threaded torch unless ``--threads``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def build(num_nodes: int):
    from scale import overlapping_split

    from murmura.swarm import Evaluation, Simulation

    data = overlapping_split(num_nodes, 16)
    return Simulation(data, "logreg", "dsgd", "random_regular", topology_kwargs={"k": 4},
                      algorithm_kwargs={"lr": 0.05, "local_steps": 1, "batch_size": 8},
                      evaluation=Evaluation(every=0), seed=0)


def clocked_rate(sim, window: float, events: int, warm: int) -> dict:
    from murmura.clock.gossip import ClockedGossip

    n = sim.num_nodes
    run = ClockedGossip(sim, "pairwise", rate=1.0, window=window)
    horizon = warm / n
    run.advance(horizon)
    done, start = 0, time.perf_counter()
    while done < events:
        horizon += max(window, 1.0 / n) * 8
        done += run.advance(horizon)
    wall = time.perf_counter() - start
    return {"window_s": window, "events": done, "wall_s": wall, "events_per_s": done / wall,
            "exchanges": run.exchanges}


def loop_rate(sim, events: int, warm: int, seed: int = 0) -> dict:
    """The straightforward loop (module docstring) on the simulation's own tables."""
    import torch
    import torch.nn.functional as F

    n = sim.num_nodes
    x_all, y_all = sim.data.dataset.train_x, sim.data.dataset.train_y
    x_all = x_all.reshape(len(x_all), -1)
    index = sim.data.index_table
    params = sim.params  # [n, 7850]: W (10 x 784) then b (10), as the logreg model lays out
    neighbours = [list(sim.topology.graph_at(0).neighbors(i)) for i in range(n)]
    g = torch.Generator().manual_seed(seed)
    heap = [(float(t), i) for i, t in enumerate(torch.empty(n).exponential_(generator=g))]
    heapq.heapify(heap)

    def event() -> None:
        t, i = heapq.heappop(heap)
        rows = index[i, torch.randint(0, 16, (8,), generator=g)]
        w = params[i].clone().requires_grad_(True)
        logits = x_all[rows] @ w[:7840].view(10, 784).T + w[7840:]
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, y_all[rows]), w)
        with torch.no_grad():
            params[i] -= 0.05 * grad
            j = neighbours[i][int(torch.randint(0, len(neighbours[i]), (1,), generator=g))]
            average = (params[i] + params[j]) / 2
            params[i] = average
            params[j] = average
        gap = float(torch.empty(1).exponential_(generator=g))
        heapq.heappush(heap, (t + gap, i))

    for _ in range(warm):
        event()
    start = time.perf_counter()
    for _ in range(events):
        event()
    wall = time.perf_counter() - start
    return {"events": events, "wall_s": wall, "events_per_s": events / wall}


def case(num_nodes: int, window_events: int, events: int, slow_events: int) -> dict:
    import torch

    start = time.perf_counter()
    sim = build(num_nodes)
    setup = time.perf_counter() - start
    assert sim.params.shape[1] == 7850, sim.params.shape
    width = window_events / num_nodes
    window = clocked_rate(sim, width, events, warm=window_events * 2)
    exact = clocked_rate(sim, 0.0, slow_events, warm=20)
    loop = loop_rate(sim, slow_events, warm=20)
    return {"nodes": num_nodes, "setup_s": setup, "window_expected_events": window_events,
            "window": window, "exact": exact, "loop": loop,
            "speedup_vs_loop": window["events_per_s"] / loop["events_per_s"],
            "speedup_vs_exact": window["events_per_s"] / exact["events_per_s"],
            "torch_threads": torch.get_num_threads()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="*", default=[1000, 100_000])
    parser.add_argument("--window-events", type=int, nargs="*", default=None,
                        help="expected wake-ups per window, one per --nodes (default n / 10, "
                             "at most 2,000)")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--slow-events", type=int, default=1_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.quick:
        args.nodes, args.events, args.slow_events = [500], 1_000, 100
    widths = args.window_events or [min(2000, max(10, n // 10)) for n in args.nodes]
    results = []
    for n, w in zip(args.nodes, widths):
        r = case(n, w, args.events, args.slow_events)
        results.append(r)
        print(f"{n:>7,} nodes: window ({w} events) {r['window']['events_per_s']:,.0f} ev/s, "
              f"exact {r['exact']['events_per_s']:,.0f} ev/s, loop "
              f"{r['loop']['events_per_s']:,.0f} ev/s: {r['speedup_vs_loop']:.1f}x the loop, "
              f"{r['speedup_vs_exact']:.1f}x exact (setup {r['setup_s']:.1f} s)", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"machine": platform.machine(),
                                         "torch": torch.__version__, "results": results},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
