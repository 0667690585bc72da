"""A FedBuff-like schedule on the clock, without training: the queue + window path, with every
draw and every bookkeeping step vectorized over a window's events.

Each client computes a task (``steps`` local steps), uploads ``nbytes`` to the server and, once
its update has arrived, downloads the server's current model and starts again from it. The
server aggregates every ``buffer`` arrivals (``K``), which bumps the model version. A client
must stay online for its whole task and upload: one that leaves mid-task loses the work
(``NODE_OFFLINE``) and starts over when it is back. Staleness is the number of versions the
server moved between the version a client started from and its update's arrival.

This is what the engine's asynchronous modes do around the training itself, and the
benchmark's subject (``benchmarks/clock.py``); :mod:`murmura.clock.reference` runs the same
schedule one event at a time. With ``width=0`` and positive delays the two give the same log,
row for row.

>>> from murmura.clock import ConstantCompute, Links, BufferedSchedule, simulate_buffered
>>> s = BufferedSchedule(3, ConstantCompute(1.0), Links(latency=0.25), steps=1, buffer=1,
...                      until=3.0)
>>> run = simulate_buffered(s)
>>> run.log.staleness_counts(), run.version
({0: 1, 1: 1, 2: 4}, 6)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from murmura.clock._checks import SERVER, positive
from murmura.clock.availability import AlwaysOnline, Availability
from murmura.clock.devices import ComputeModel
from murmura.clock.events import EventKind, EventQueue
from murmura.clock.links import Links
from murmura.clock.log import EventLog

__all__ = ["BufferedRun", "BufferedSchedule", "BufferedState", "simulate_buffered"]

K = EventKind


@dataclass(frozen=True, eq=False)
class BufferedSchedule:
    """What to simulate: ``num_nodes`` clients, their compute, links and availability, the
    task length, the server's buffer size ``K``, the message size, and when to stop (the
    first of ``until`` simulated seconds and ``max_events`` processed events)."""

    num_nodes: int
    compute: ComputeModel
    links: Links
    availability: Availability = field(default_factory=AlwaysOnline)
    steps: int = 10
    buffer: int = 10
    nbytes: int = 400_000
    until: float = math.inf
    max_events: int | None = None

    def __post_init__(self) -> None:
        if int(self.num_nodes) < 1:
            raise ValueError(f"num_nodes must be >= 1, got {self.num_nodes}")
        if int(self.buffer) < 1:
            raise ValueError(f"buffer (K, arrivals per aggregation) must be >= 1, got "
                             f"{self.buffer}")
        if int(self.steps) < 0 or int(self.nbytes) < 0:
            raise ValueError("steps and nbytes must be >= 0")
        positive(self.until, "until", allow_inf=True)
        if math.isinf(self.until) and self.max_events is None:
            raise ValueError("give until (simulated seconds) or max_events, or the run never "
                             "ends")
        if self.max_events is not None and int(self.max_events) < 1:
            raise ValueError(f"max_events must be >= 1, got {self.max_events}")
        for name, kind in (("compute", ComputeModel), ("links", Links),
                           ("availability", Availability)):
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"{name} must be a {kind.__name__}, got "
                                 f"{type(getattr(self, name)).__name__}")


@dataclass
class BufferedState:
    """Where a buffered schedule stands: per-client tensors, the server's version and buffer,
    and the pending events. A run returns its final state, and another run (vectorized or the
    reference loop) can continue from a copy of it."""

    held: torch.Tensor  # the version each client trains from
    incoming: torch.Tensor  # the version on its way down to each client
    count: torch.Tensor  # tasks begun per client (the draws' counter)
    last: torch.Tensor  # time of each client's previous event
    upload: torch.Tensor  # upload time of each client's current task
    version: int
    buffered: int
    queue: EventQueue

    @classmethod
    def start(cls, num_nodes: int) -> BufferedState:
        """Every client starts a task at time 0 from version 0."""
        queue = EventQueue()
        queue.push_many(torch.zeros(num_nodes, dtype=torch.float64), K.TASK_START,
                        torch.arange(num_nodes))
        zeros = torch.zeros(num_nodes, dtype=torch.int64)
        times = torch.zeros(num_nodes, dtype=torch.float64)
        return cls(zeros, zeros.clone(), zeros.clone(), times, times.clone(), 0, 0, queue)

    def copy(self) -> BufferedState:
        return BufferedState(self.held.clone(), self.incoming.clone(), self.count.clone(),
                             self.last.clone(), self.upload.clone(), self.version, self.buffered,
                             self.queue.copy())


@dataclass
class BufferedRun:
    """The outcome: the event log, events processed, the server's final version, the time of
    the last event, the number of windows (vectorized steps) it took, and the final state."""

    log: EventLog
    events: int
    version: int
    time: float
    windows: int
    state: BufferedState


class _Vectorized:
    def __init__(self, s: BufferedSchedule, state: BufferedState) -> None:
        self.s = s
        self.held, self.incoming, self.count = state.held, state.incoming, state.count
        self.last, self.upload = state.last, state.upload
        self.version = state.version
        self.buffered = state.buffered

    def begin(self, v: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Start a task at ``t`` on nodes ``v``: its finish, its loss or a deferred start."""
        s = self.s
        c = self.count[v]
        compute = s.compute.task_time(v, s.steps, c)
        upload = s.links.transfer_time(v, SERVER, s.nbytes, c)
        online, change = s.availability.state(v, t)
        finish = t + compute
        ok = online & (change >= finish + upload)
        self.count[v] += online.to(torch.int64)
        self.upload[v] = torch.where(online, upload, self.upload[v])
        kinds = torch.where(~online, int(K.TASK_START),
                            torch.where(ok, int(K.TASK_FINISH), int(K.NODE_OFFLINE)))
        return torch.where(ok, finish, change), kinds

    def step(self, times: torch.Tensor, kinds: torch.Tensor, nodes: torch.Tensor
             ) -> tuple[dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
        s = self.s
        m = times.numel()
        version = torch.full((m,), -1, dtype=torch.int64)
        stale = torch.zeros(m, dtype=torch.int64)
        sent = torch.zeros(m, dtype=torch.int64)
        duration = torch.zeros(m, dtype=torch.float64)
        f_time = torch.full((m,), math.inf, dtype=torch.float64)
        f_kind = torch.zeros(m, dtype=torch.int64)
        for kind in torch.unique(kinds).tolist():  # kinds in priority order
            idx = torch.nonzero(kinds == kind).flatten()
            v, t = nodes[idx], times[idx]
            if kind in (K.TASK_FINISH, K.UPLOAD_ARRIVAL, K.DOWNLOAD_ARRIVAL, K.NODE_OFFLINE):
                duration[idx] = t - self.last[v]
            if kind == K.TASK_FINISH:
                f_time[idx], f_kind[idx] = t + self.upload[v], int(K.UPLOAD_ARRIVAL)
            elif kind == K.UPLOAD_ARRIVAL:
                position = self.buffered + torch.arange(idx.numel())
                before = self.version + position // s.buffer
                after = self.version + (position + 1) // s.buffer
                version[idx], stale[idx], sent[idx] = self.held[v], before - self.held[v], s.nbytes
                self.incoming[v] = after
                total = self.buffered + idx.numel()
                self.version += total // s.buffer
                self.buffered = total % s.buffer
                down = s.links.transfer_time(SERVER, v, s.nbytes, self.count[v] - 1)
                f_time[idx], f_kind[idx] = t + down, int(K.DOWNLOAD_ARRIVAL)
            elif kind == K.NODE_OFFLINE:
                f_time[idx] = s.availability.next_online(v, t)
                f_kind[idx] = int(K.TASK_START)
            elif kind in (K.DOWNLOAD_ARRIVAL, K.TASK_START):
                if kind == K.DOWNLOAD_ARRIVAL:
                    self.held[v] = self.incoming[v]
                    sent[idx] = s.nbytes
                version[idx] = self.held[v]
                f_time[idx], f_kind[idx] = self.begin(v, t)
            else:
                raise ValueError(f"the buffered schedule has no {EventKind(kind).name} events")
        self.last[nodes] = times
        keep = torch.isfinite(f_time)
        columns = {"version": version, "staleness": stale, "nbytes": sent, "duration": duration}
        return columns, (f_time[keep], f_kind[keep], nodes[keep])


def simulate_buffered(schedule: BufferedSchedule, width: float = 0.0,
                      state: BufferedState | None = None) -> BufferedRun:
    """Run the schedule (from its start, or on from ``state``, which is left untouched), one
    vectorized step per window of ``width`` simulated seconds."""
    s = schedule
    if state is not None and state.held.numel() != s.num_nodes:
        raise ValueError(f"state has {state.held.numel()} clients but the schedule "
                         f"{s.num_nodes}")
    state = BufferedState.start(s.num_nodes) if state is None else state.copy()
    queue = state.queue
    log = EventLog()
    step = _Vectorized(s, state)
    limit = math.inf if s.max_events is None else int(s.max_events)
    events = windows = 0
    time = queue.now
    while queue and queue.peek_time() < s.until and events < limit:
        w = queue.pop_window(width, s.until)
        columns, follow = step.step(w.times, w.kinds, w.nodes)
        log.record(w.times, w.kinds, w.nodes, sequence=w.sequences, **columns)
        queue.push_many(*follow)
        events += len(w)
        windows += 1
        time = float(w.times[-1])
    state.version, state.buffered = step.version, step.buffered
    return BufferedRun(log, events, step.version, time, windows, state)
