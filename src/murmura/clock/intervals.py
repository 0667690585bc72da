"""Explicit online intervals per node, optionally repeating with a per-node period (FedScale's
behaviour traces repeat: a client's state at ``t`` is read at ``t mod finish_time``).

Each node's intervals ``[start, end)`` are sorted and merged (overlapping or touching intervals
become one run) and stored flat with per-node offsets, so a query is a vectorized binary search
over every queried node's own list at once. A repeating node's intervals are clipped to
``[0, period]``; a run that reaches the end of the period continues into the next cycle when
the first interval starts at 0. Cycle starts are ``k * period`` computed one way everywhere,
so a returned change time lands in the new state when queried back.

>>> import torch
>>> from murmura.clock import IntervalAvailability
>>> avail = IntervalAvailability([[(0.0, 10.0), (12.0, 100.0)]])
>>> node = torch.tensor([0])
>>> avail.online_at(node, 5.0).item(), avail.online_at(node, 15.0).item()  # a check at each end
(True, True)
>>> avail.online_throughout(node, 5.0, 15.0).item()  # but it left at 10: the task is lost
False
>>> avail.next_offline(node, 5.0).item(), avail.next_online(node, 10.0).item()
(10.0, 12.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from murmura.clock.availability import AVAILABILITY, Availability

__all__ = ["IntervalAvailability"]

_INF = math.inf


def _merge(raw: Sequence[Sequence[float]], node: int, period: float) -> list[tuple[float, float]]:
    spans = []
    for i, pair in enumerate(raw):
        try:
            start, end = (float(x) for x in pair)
        except (TypeError, ValueError):
            raise ValueError(f"intervals[{node}][{i}] must be a pair (start, end) of seconds, "
                             f"got {pair!r}") from None
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < start:
            raise ValueError(f"intervals[{node}][{i}] = {pair!r} must satisfy 0 <= start <= end "
                             f"< inf (seconds)")
        end = min(end, period)
        if start < end:
            spans.append((start, end))
    spans.sort()
    merged: list[tuple[float, float]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


class IntervalAvailability(Availability):
    """Node ``i`` is online during ``intervals[i]`` (pairs ``(start, end)``, half-open), repeating
    every ``periods[i]`` seconds when that is given (one period for all, or one per node,
    ``None`` for no repetition)."""

    def __init__(self, intervals: Sequence[Sequence[Sequence[float]]],
                 periods: float | Sequence[float | None] | None = None, seed: int = 0) -> None:
        n = len(intervals)
        if n == 0:
            raise ValueError("intervals must list each node's online intervals (one list per "
                             "node), got none")
        if periods is None or isinstance(periods, (int, float)):
            periods = [periods] * n
        if len(periods) != n:
            raise ValueError(f"periods must be one value or one per node ({n}), got "
                             f"{len(periods)}")
        period_list = []
        for i, p in enumerate(periods):
            if p is None:
                period_list.append(_INF)
            elif not (isinstance(p, (int, float)) and math.isfinite(p) and p > 0):
                raise ValueError(f"periods[{i}] must be > 0 seconds or None, got {p!r}")
            else:
                period_list.append(float(p))
        merged = [_merge(raw, i, period_list[i]) for i, raw in enumerate(intervals)]
        self.seed = int(seed)
        self.num_nodes = n
        self._period = torch.tensor(period_list, dtype=torch.float64)
        counts = torch.tensor([len(m) for m in merged], dtype=torch.int64)
        self._offsets = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
        flat = [span for m in merged for span in m] or [(0.0, 0.0)]
        self._starts = torch.tensor([s for s, _ in flat], dtype=torch.float64)
        self._ends = torch.tensor([e for _, e in flat], dtype=torch.float64)
        self._first = torch.tensor([m[0] if m else (_INF, _INF) for m in merged],
                                   dtype=torch.float64)
        periodic = torch.isfinite(self._period)
        self._full = periodic & (counts == 1) & (self._first[:, 0] == 0) & (
            self._first[:, 1] >= self._period)

    @classmethod
    def from_trace(cls, trace: Any, num_nodes: int) -> IntervalAvailability:
        """From a :class:`murmura.clock.traces.BehaviourTrace`: node ``i`` follows client
        ``i mod len(trace)`` (FedScale's mapping of clients onto its traces)."""
        if int(num_nodes) < 1:
            raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
        picks = [i % len(trace) for i in range(int(num_nodes))]
        return cls([trace.intervals[j] for j in picks], [trace.periods[j] for j in picks])

    def _cycle_start(self, k: torch.Tensor, period: torch.Tensor, periodic: torch.Tensor
                     ) -> torch.Tensor:
        safe = torch.where(periodic, period, 1.0)
        return torch.where(periodic, k.to(torch.float64) * safe, 0.0)

    def _runs(self, nodes: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        period = self._period[nodes]
        periodic = torch.isfinite(period)
        safe = torch.where(periodic, period, 1.0)
        k = torch.where(periodic, torch.floor(t / safe), 0.0).to(torch.int64)
        k = k - (t < self._cycle_start(k, period, periodic)).to(torch.int64)
        k = k + (periodic & (t >= self._cycle_start(k + 1, period, periodic))).to(torch.int64)
        here = self._cycle_start(k, period, periodic)
        nxt = torch.where(periodic, self._cycle_start(k + 1, period, periodic), _INF)
        lo, hi = self._offsets[nodes], self._offsets[nodes + 1]
        # Binary search: the first interval of each node's list starting after t.
        left, right = lo.clone(), hi.clone()
        last = self._starts.numel() - 1
        while True:
            active = left < right
            if not bool(active.any()):
                break
            mid = (left + right) // 2
            after = (here + self._starts[mid.clamp(0, last)]) > t
            left = torch.where(active & ~after, mid + 1, left)
            right = torch.where(active & after, mid, right)
        idx = (left - 1).clamp(0, last)
        has = left > lo
        reaches_end = self._ends[idx] >= period
        end_abs = torch.where(reaches_end, nxt, here + self._ends[idx])
        online = has & (t < end_abs)
        first_start, first_end = self._first[nodes, 0], self._first[nodes, 1]
        wraps = periodic & reaches_end & (first_start == 0)
        on_change = torch.where(wraps, nxt + first_end, end_abs)
        nxt_idx = left.clamp(0, last)
        next_here = torch.where(left < hi, here + self._starts[nxt_idx], _INF)
        next_cycle = torch.where(periodic & (hi > lo), nxt + first_start, _INF)
        off_change = torch.where(left < hi, next_here, next_cycle)
        change = torch.where(online, on_change, off_change)
        full = self._full[nodes]
        return online | full, torch.where(full, _INF, change)


@AVAILABILITY.register("trace", "explicit online intervals per node, listed or from a JSON trace")
def _trace(intervals: Sequence | None = None, periods: Any = None, path: str | None = None,
           num_nodes: int | None = None) -> IntervalAvailability:
    if (intervals is None) == (path is None):
        raise ValueError("availability 'trace' needs exactly one of intervals (one list of "
                         "(start, end) per node) or path (a behaviour-trace JSON)")
    if intervals is not None:
        return IntervalAvailability(intervals, periods)
    if num_nodes is None:
        raise ValueError("availability 'trace' from a path needs num_nodes")
    from murmura.clock.traces import load_behaviour_trace

    return IntervalAvailability.from_trace(load_behaviour_trace(path), num_nodes)
