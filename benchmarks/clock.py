"""Simulated events per second of the virtual clock's queue + window path against the plain
one-event-at-a-time loop, on a FedBuff-like schedule without training (a benchmark, never a
test).

    python benchmarks/clock.py                       # 1,000 and 100,000 clients
    python benchmarks/clock.py --quick               # small sizes, a smoke run
    python benchmarks/clock.py --nodes 5000 --json out.json

**Schedule.** Every client computes a task of 10 local steps (lognormal speed per client, median
50 ms a step, sigma 0.5, per-task jitter 0.2), uploads 400 kB (per-link lognormal latency,
median 50 ms, sigma 0.5, jitter 0.2; uplink 1 MB/s, downlink 5 MB/s, the server unlimited),
and downloads the server's model once its update has arrived; the server aggregates every
K arrivals (K = 10 at 1,000 clients, n / 100 beyond, so that staleness stays comparable).
Clients churn (Markov on/off, mean 600 s on and 300 s off; ``--availability always`` turns it
off) and a task that overlaps an offline interval is lost. No training: only the clock's
bookkeeping (draws, availability checks, staleness, the queue, the event log).

**Method.** Both paths continue from the same warm state (the vectorized path runs the schedule
for ``--warm`` simulated seconds first, so every kind of event is in the mix, not only the
initial starts), in the same process, one after the other: the reference loop
(:mod:`murmura.clock.reference`, the same keyed models called for one node at a time) for
``--reference-events``, then the window path for ``--events`` events at each of ``--widths``
(simulated seconds per window; default 5 ms and 50 ms, 1 % and 10 % of a median task). Rates
are events processed over wall seconds. Also reported: whether the window path with
``width=0`` reproduces the reference's log exactly over the first ``--check`` events (it must),
whether each width's log still equals the reference's over the reference's events (a window no
wider than the shortest delay between an event and the one it schedules changes nothing), and
the mean staleness of those updates under both.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from murmura.clock import (  # noqa: E402
    AlwaysOnline,
    BufferedSchedule,
    Links,
    LognormalCompute,
    MarkovChurn,
    simulate_buffered,
)
from murmura.clock.links import LognormalDraw  # noqa: E402
from murmura.clock.reference import reference_buffered  # noqa: E402


def schedule(nodes: int, availability: str, seed: int = 0, **limits: float) -> BufferedSchedule:
    """The benchmark's FedBuff-like schedule (see the module docstring)."""
    links = Links(latency=LognormalDraw(math.log(0.05), 0.5, per="link", jitter=0.2),
                  up=1e6, down=5e6, seed=seed)
    churn = MarkovChurn(600.0, 300.0, seed=seed) if availability == "markov" else AlwaysOnline()
    return BufferedSchedule(nodes, LognormalCompute(math.log(0.05), 0.5, jitter=0.2, seed=seed),
                            links, churn, steps=10, buffer=max(10, nodes // 100), nbytes=400_000,
                            **limits)


def mean_staleness(log, first: int) -> float:
    cols = log.columns()
    ups = cols["kind"][:first] == 1  # UPLOAD_ARRIVAL
    return float(cols["staleness"][:first][ups].double().mean()) if bool(ups.any()) else 0.0


def measure(nodes: int, args: argparse.Namespace) -> list[dict]:
    """One row per window width, all against the same reference run from the same state."""
    warm_s = schedule(nodes, args.availability, until=args.warm)
    t0 = time.perf_counter()
    warm = simulate_buffered(warm_s, width=min(args.widths))
    warm_wall = time.perf_counter() - t0
    state = warm.state
    events = args.events or max(50_000, 5 * nodes)

    ref_s = schedule(nodes, args.availability, max_events=args.reference_events)
    t0 = time.perf_counter()
    ref = reference_buffered(ref_s, state=state)
    ref_wall = time.perf_counter() - t0
    ref_rows = ref.log.rows()
    ref_rate = ref.events / ref_wall

    check_s = schedule(nodes, args.availability, max_events=args.check)
    exact = simulate_buffered(check_s, width=0.0, state=state).log.rows()
    width0_match = exact == ref_rows[: len(exact)]

    rows = []
    for width in args.widths:
        vector_s = schedule(nodes, args.availability, max_events=events)
        t0 = time.perf_counter()
        vec = simulate_buffered(vector_s, width=width, state=state)
        vec_wall = time.perf_counter() - t0
        vec_rate = vec.events / vec_wall
        rows.append({
            "nodes": nodes,
            "availability": args.availability,
            "width_s": width,
            "warm_simulated_s": args.warm,
            "warm_events": warm.events,
            "warm_wall_s": warm_wall,
            "window_events": vec.events,
            "window_windows": vec.windows,
            "events_per_window": vec.events / vec.windows,
            "window_wall_s": vec_wall,
            "window_events_per_s": vec_rate,
            "window_simulated_s": vec.time - state.queue.now,
            "reference_events": ref.events,
            "reference_wall_s": ref_wall,
            "reference_events_per_s": ref_rate,
            "speedup": vec_rate / ref_rate,
            "width0_matches_reference": width0_match,
            "width0_checked_events": len(exact),
            "window_log_equals_reference": vec.log.rows()[: len(ref_rows)] == ref_rows,
            "staleness_mean_window": mean_staleness(vec.log, ref.events),
            "staleness_mean_reference": mean_staleness(ref.log, ref.events),
        })
    return rows


def print_row(r: dict) -> None:
    print(f"{r['nodes']:>7} clients ({r['availability']}), {r['width_s'] * 1e3:g} ms windows: "
          f"window path {r['window_events_per_s']:,.0f} events/s ({r['events_per_window']:.0f} "
          f"events per window), reference loop {r['reference_events_per_s']:,.0f} events/s: "
          f"{r['speedup']:.0f}x; log equals the reference's: {r['window_log_equals_reference']} "
          f"(width 0: {r['width0_matches_reference']}); mean staleness "
          f"{r['staleness_mean_window']:.2f} vs {r['staleness_mean_reference']:.2f}")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, nargs="*", help="client counts (default 1000 100000)")
    parser.add_argument("--availability", choices=["markov", "always"], default="markov")
    parser.add_argument("--widths", type=float, nargs="+", default=[0.005, 0.05],
                        help="window widths, simulated seconds")
    parser.add_argument("--warm", type=float, default=1.5, help="warm-up, simulated seconds")
    parser.add_argument("--events", type=int, default=None,
                        help="events for the window path (default max(50000, 5 n))")
    parser.add_argument("--reference-events", type=int, default=3000)
    parser.add_argument("--check", type=int, default=300, help="events of the width-0 check")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.nodes = args.nodes or [50]
        args.events = args.events or 600
        args.reference_events = min(args.reference_events, 200)
        args.check = min(args.check, 100)
        args.warm = min(args.warm, 0.5)
    sizes = args.nodes or [1000, 100_000]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} "
          f"torch thread(s), torch {torch.__version__}")
    results = []
    for n in sizes:
        for row in measure(n, args):
            results.append(row)
            print_row(row)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "results": results}, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
