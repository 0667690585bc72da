"""Events in a total order and the queue that hands them out one time window at a time.

Two events never compare equal: they are ordered by ``(time, kind, node, sequence)``, where the
kind's integer value is its priority when times tie and ``sequence`` is the order in which the
queue received them. So a run's event order is a function of its inputs alone.

:meth:`EventQueue.pop_window` returns every event whose time lies in ``[t, t + width)`` of the
earliest one ``t`` as tensors, so a caller processes the window as one vectorized step instead
of one Python iteration per event. ``width=0`` pops exactly the events at the earliest time
(an exact simulation); a wider window treats events a little apart as simultaneous, which is
the price of batching (each event keeps its own time; only the order of effects inside the
window is coarsened, and a follow-up scheduled inside the window is processed in the next one).

>>> from murmura.clock import EventKind, EventQueue
>>> q = EventQueue()
>>> q.push_many(torch.tensor([2.0, 1.0, 1.0]), EventKind.TASK_FINISH, torch.tensor([0, 2, 1]))
tensor([0, 1, 2])
>>> w = q.pop_window(0.0)
>>> w.nodes.tolist(), w.times.tolist()
([1, 2], [1.0, 1.0])
>>> q.pop()
Event(time=2.0, kind=<EventKind.TASK_FINISH: 0>, node=0, sequence=0, payload={})
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import torch

from murmura.clock._checks import SERVER, as_nodes, as_times

__all__ = ["SERVER", "Event", "EventKind", "EventQueue", "NodeCounters", "Window"]


class EventKind(IntEnum):
    """What happens at an event; the value is the priority when times tie (lower first).

    The order follows one rule: *what finished by ``t`` is settled before anything decides at
    ``t``*. Availability intervals are half-open, ``[online, offline)``, so:

    * ``TASK_FINISH``, ``UPLOAD_ARRIVAL``, ``DOWNLOAD_ARRIVAL`` (0-2): work and transfers that
      ended at ``t`` were checked over ``[start, t)`` and count, even if the node leaves at ``t``.
      Uploads before downloads, so a server that aggregates on an arrival does so before a
      model it sent at the same instant lands.
    * ``NODE_OFFLINE`` then ``NODE_ONLINE`` (3-4): a node leaving and rejoining at the same
      instant (touching trace intervals) ends up online.
    * ``SERVER_TICK`` (5): a server's timer (FedFix's aggregation every ``dt``, a synchronous
      round's deadline) sees every upload that arrived at ``t`` or before, as FedFix's rule
      "return time <= (n+1) dt" requires, and nodes that joined at ``t``.
    * ``GOSSIP_WAKE``, ``GRADIENT_WAKE`` (6-7): a node's Poisson clocks (gossip; DADAO's separate
      gradient process) fire after the arrivals and ticks of the same instant.
    * ``TASK_START`` (8): last, so a task starting at ``t`` starts from the newest model of ``t``.
    """

    TASK_FINISH = 0
    UPLOAD_ARRIVAL = 1
    DOWNLOAD_ARRIVAL = 2
    NODE_OFFLINE = 3
    NODE_ONLINE = 4
    SERVER_TICK = 5
    GOSSIP_WAKE = 6
    GRADIENT_WAKE = 7
    TASK_START = 8


_KINDS = len(EventKind)


def event_kind(kind: EventKind | int | str, name: str = "kind") -> EventKind:
    """An :class:`EventKind` from itself, its value or its name (``"task_start"``)."""
    if isinstance(kind, str):
        try:
            return EventKind[kind.upper()]
        except KeyError:
            names = ", ".join(k.name.lower() for k in EventKind)
            raise ValueError(f"{name} {kind!r} is not an event kind; use one of {names}") from None
    try:
        return EventKind(int(kind))
    except (ValueError, TypeError):
        raise ValueError(f"{name} must be an EventKind (0..{_KINDS - 1}), got {kind!r}") from None


@dataclass(frozen=True, order=True)
class Event:
    """One event. Compared by ``(time, kind, node, sequence)``; the payload never takes part."""

    time: float
    kind: EventKind
    node: int
    sequence: int = 0
    payload: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Window:
    """The events of one window, in total order, as tensors (one entry per event).

    ``payloads`` is ``None`` when no event of the window carries one; :meth:`column` reads one
    payload field as a tensor.
    """

    start: float
    times: torch.Tensor
    kinds: torch.Tensor
    nodes: torch.Tensor
    sequences: torch.Tensor
    payloads: tuple[Mapping[str, Any] | None, ...] | None = None

    def __len__(self) -> int:
        return int(self.times.numel())

    def select(self, kind: EventKind | int | str) -> Window:
        """The sub-window of one kind, still in order."""
        index = torch.nonzero(self.kinds == int(event_kind(kind))).flatten()
        return self.take(index)

    def take(self, index: torch.Tensor) -> Window:
        """The events at these positions (a tensor of indices into the window)."""
        payloads = None
        if self.payloads is not None:
            payloads = tuple(self.payloads[i] for i in index.tolist())
        return Window(self.start, self.times[index], self.kinds[index], self.nodes[index],
                      self.sequences[index], payloads)

    def column(self, name: str, default: float = 0.0, dtype: torch.dtype = torch.float64
               ) -> torch.Tensor:
        """Payload field ``name`` of every event (``default`` where an event lacks it)."""
        if self.payloads is None:
            return torch.full((len(self),), default, dtype=dtype)
        values = [default if p is None else p.get(name, default) for p in self.payloads]
        return torch.tensor(values, dtype=dtype)

    def events(self) -> list[Event]:
        """The window as :class:`Event` objects (for logs and debugging, not the hot path)."""
        payloads = self.payloads or (None,) * len(self)
        return [Event(t, EventKind(k), n, s, dict(p or {})) for t, k, n, s, p in zip(
            self.times.tolist(), self.kinds.tolist(), self.nodes.tolist(),
            self.sequences.tolist(), payloads)]


class EventQueue:
    """A priority queue of events (a binary heap, :mod:`heapq`) in the total order of
    :class:`Event`; ``now`` is the start of the last window or event popped, and nothing may be
    scheduled before it.

    >>> q = EventQueue()
    >>> _ = q.push(0.5, EventKind.TASK_START, 3, {"version": 2})
    >>> _ = q.push(0.5, EventKind.UPLOAD_ARRIVAL, 7)
    >>> [(e.kind.name, e.node) for e in (q.pop(), q.pop())]
    [('UPLOAD_ARRIVAL', 7), ('TASK_START', 3)]
    """

    def __init__(self) -> None:
        self._heap: list[tuple] = []
        self._sequence = 0
        self.now = 0.0

    def __len__(self) -> int:
        return len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)

    def copy(self) -> EventQueue:
        """An independent queue with the same pending events, sequence counter and ``now``."""
        other = EventQueue()
        other._heap = list(self._heap)
        other._sequence = self._sequence
        other.now = self.now
        return other

    def state_dict(self) -> dict[str, Any]:
        """The pending events (in heap order), the sequence counter and ``now``, for a
        checkpoint; :meth:`load_state_dict` restores a queue that pops the same events."""
        heap = self._heap
        t, k, n, s, p = zip(*heap) if heap else ((), (), (), (), ())
        return {"times": torch.tensor(t, dtype=torch.float64),
                "kinds": torch.tensor(k, dtype=torch.int64),
                "nodes": torch.tensor(n, dtype=torch.int64),
                "sequences": torch.tensor(s, dtype=torch.int64),
                "payloads": [dict(x) if x else None for x in p],
                "next_sequence": self._sequence, "now": self.now}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        missing = {"times", "kinds", "nodes", "sequences", "payloads", "next_sequence",
                   "now"} - set(state)
        if missing:
            raise ValueError(f"an EventQueue state needs {sorted(missing)}; pass what "
                             f"state_dict() returned")
        cols = [state[c].tolist() for c in ("times", "kinds", "nodes", "sequences")]
        if len({len(c) for c in cols} | {len(state["payloads"])}) != 1:
            raise ValueError("an EventQueue state needs one time, kind, node, sequence and "
                             "payload per event")
        heap = [(t, k, n, q, p or None) for t, k, n, q, p in zip(*cols, state["payloads"])]
        heapq.heapify(heap)
        self._heap = heap
        self._sequence = int(state["next_sequence"])
        self.now = float(state["now"])

    @property
    def pushed(self) -> int:
        """How many events were ever pushed (the next event's sequence number)."""
        return self._sequence

    def peek_time(self) -> float:
        """The earliest pending time (``inf`` when empty)."""
        return self._heap[0][0] if self._heap else math.inf

    def _check_time(self, time: float, name: str = "time") -> float:
        if not math.isfinite(time) or time < self.now:
            raise ValueError(f"{name} must be finite and >= the queue's now ({self.now}); an event "
                             f"cannot be scheduled in the past, got {time}")
        return time

    def push(self, time: float, kind: EventKind | int | str, node: int,
             payload: Mapping[str, Any] | None = None) -> Event:
        """Schedule one event; returns it with its sequence number."""
        time = self._check_time(float(time))
        kind = event_kind(kind)
        node = int(node)
        if node < SERVER:
            raise ValueError(f"node must be a node id >= 0 or the server ({SERVER}), got {node}")
        seq = self._sequence
        self._sequence += 1
        heapq.heappush(self._heap, (time, int(kind), node, seq, payload or None))
        return Event(time, kind, node, seq, dict(payload or {}))

    def push_many(
        self,
        times: torch.Tensor,
        kinds: torch.Tensor | EventKind | int,
        nodes: torch.Tensor,
        payload: Mapping[str, torch.Tensor | Iterable] | None = None,
    ) -> torch.Tensor:
        """Schedule one event per entry (``kinds`` may be one kind for all); sequence numbers are
        given in the order of the entries. ``payload`` maps a field name to one value per event.
        Returns the sequence numbers."""
        times_t = as_times(times, "times").reshape(-1)
        nodes_t = as_nodes(nodes, "nodes").reshape(-1)
        count = times_t.numel()
        if nodes_t.numel() != count:
            raise ValueError(f"times and nodes must have one entry per event, got {count} times "
                             f"and {nodes_t.numel()} nodes")
        if isinstance(kinds, torch.Tensor) and kinds.dim() > 0:
            kinds_t = kinds.to(torch.int64).reshape(-1)
            if kinds_t.numel() != count:
                raise ValueError(f"kinds must be one kind or one per event, got {kinds_t.numel()} "
                                 f"for {count} events")
            if count and (int(kinds_t.min()) < 0 or int(kinds_t.max()) >= _KINDS):
                raise ValueError(f"kinds must be EventKind values 0..{_KINDS - 1}")
            kind_list = kinds_t.tolist()
        else:
            kind_list = [int(event_kind(kinds))] * count
        first = self._sequence
        seqs = range(first, first + count)
        if count:
            self._check_time(float(times_t.min()), "times")
        if payload:
            cols = {k: (v.tolist() if isinstance(v, torch.Tensor) else list(v))
                    for k, v in payload.items()}
            bad = [k for k, v in cols.items() if len(v) != count]
            if bad:
                raise ValueError(f"payload field(s) {bad} must have one value per event ({count})")
            names = tuple(cols)
            pays = [dict(zip(names, vals)) for vals in zip(*cols.values())]
        else:
            pays = [None] * count
        entries = list(zip(times_t.tolist(), kind_list, nodes_t.tolist(), seqs, pays))
        self._sequence += count
        heap = self._heap
        if count > len(heap):
            heap.extend(entries)
            heapq.heapify(heap)
        else:
            push = heapq.heappush
            for e in entries:
                push(heap, e)
        return torch.arange(first, first + count, dtype=torch.int64)

    def pop(self) -> Event:
        """The earliest event."""
        if not self._heap:
            raise IndexError("pop from an empty EventQueue")
        t, k, n, s, p = heapq.heappop(self._heap)
        self.now = t
        return Event(t, EventKind(k), n, s, dict(p or {}))

    def pop_window(self, width: float = 0.0, until: float = math.inf) -> Window:
        """Every event with time in ``[t, t + width)`` of the earliest time ``t`` (``width=0``:
        exactly the events at ``t``), and before ``until``; in total order, as tensors. Empty
        when the queue is empty or its earliest event is at or after ``until``."""
        width = float(width)
        if math.isnan(width) or width < 0:
            raise ValueError(f"width must be >= 0 simulated seconds, got {width}")
        heap = self._heap
        if not heap or heap[0][0] >= until:
            empty = torch.empty(0, dtype=torch.int64)
            return Window(self.now, torch.empty(0, dtype=torch.float64), empty, empty, empty)
        start = heap[0][0]
        bound = min(start + width, until)
        pop = heapq.heappop
        out = [pop(heap)]
        while heap and (heap[0][0] < bound or heap[0][0] == start):
            out.append(pop(heap))
        self.now = start
        t, k, n, s, p = zip(*out)
        payloads = p if any(x is not None for x in p) else None
        return Window(start, torch.tensor(t, dtype=torch.float64), torch.tensor(k),
                      torch.tensor(n), torch.tensor(s), payloads)


class NodeCounters:
    """Per-node, per-purpose event counters: the ``counter`` a keyed draw is indexed by.

    A draw keyed by a global sequence number would change when events are batched differently;
    keyed by "this node's k-th task" it cannot. ``take`` hands out the current counts and
    advances them; a node listed twice gets consecutive counts in the order given. The server
    (-1) has its own counters.

    >>> c = NodeCounters(3)
    >>> c.take("task", torch.tensor([2, 0, 2])).tolist(), c.take("task", torch.tensor([2])).tolist()
    ([0, 0, 1], [2])
    """

    def __init__(self, num_nodes: int) -> None:
        if int(num_nodes) < 1:
            raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
        self.num_nodes = int(num_nodes)
        self._counts: dict[str, torch.Tensor] = {}

    def _row(self, purpose: str) -> torch.Tensor:
        if purpose not in self._counts:
            self._counts[purpose] = torch.zeros(self.num_nodes + 1, dtype=torch.int64)
        return self._counts[purpose]

    def peek(self, purpose: str, nodes: torch.Tensor) -> torch.Tensor:
        """The counts the next ``take`` would return (without duplicates' offsets)."""
        nodes = as_nodes(nodes, num_nodes=self.num_nodes)
        return self._row(purpose)[nodes + 1]

    def take(self, purpose: str, nodes: torch.Tensor) -> torch.Tensor:
        """Current counts of ``nodes`` (consecutive for repeated nodes), then advance them."""
        nodes = as_nodes(nodes, num_nodes=self.num_nodes).reshape(-1)
        row = self._row(purpose)
        slot = nodes + 1
        out = row[slot]
        if slot.numel() > 1:
            order = torch.sort(slot, stable=True)
            sorted_slot = order.values
            position = torch.arange(slot.numel())
            new_group = torch.ones_like(sorted_slot, dtype=torch.bool)
            new_group[1:] = sorted_slot[1:] != sorted_slot[:-1]
            group_start = torch.cummax(torch.where(new_group, position, 0), 0).values
            rank = torch.empty_like(position)
            rank[order.indices] = position - group_start
            out = out + rank
        row.index_add_(0, slot, torch.ones_like(slot))
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Counters for a checkpoint (a resumed run draws the same numbers)."""
        return {k: v.clone() for k, v in self._counts.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        for k, v in state.items():
            if v.shape != (self.num_nodes + 1,):
                raise ValueError(f"counter {k!r} has shape {tuple(v.shape)}, expected "
                                 f"({self.num_nodes + 1},) for {self.num_nodes} nodes")
        self._counts = {k: v.clone().to(torch.int64) for k, v in state.items()}
