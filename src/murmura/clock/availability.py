"""Availability: when each node is online, as a deterministic function of ``(seed, node, t)``.

Every model answers one question, vectorized over nodes: *at time t, is the node online, and
when does that state end?* (the end of the maximal run of the same state, ``inf`` if never).
Everything else follows from it:

* ``online_at(nodes, t)``;
* ``online_throughout(nodes, t0, t1)``: online on all of ``[t0, t1)``. A task needs this, not
  a check at its end: FedScale asks only whether a client is active when its round's work is
  due (``isClientActive(client, roundDuration + clock)``), which misses a device that left and
  came back mid-task. Here a node that leaves mid-task loses its work;
* ``next_online(nodes, t)`` / ``next_offline(nodes, t)``: when to schedule a node's next
  ``NODE_ONLINE`` / ``NODE_OFFLINE`` event;
* ``online_time(nodes, t0, t1)``: seconds online in ``[t0, t1)`` (for idle-time summaries).

Intervals are half-open, ``[online, offline)``: a node is online at the instant it joins and
offline at the instant it leaves. The server (node ``-1``) is always online.

Built in, by name in :data:`AVAILABILITY`: ``always``; ``bernoulli`` (online with probability
``p``, redrawn every ``period`` seconds); ``markov`` (on/off churn with exponential sojourns,
:mod:`murmura.clock.markov`); ``diurnal`` (a daily cycle); ``trace`` (explicit intervals,
:mod:`murmura.clock.intervals`). :func:`with_failures` makes a set or a fraction of nodes leave
for good at a given time (MoDeST's "80 % of the nodes become unresponsive").

>>> import torch
>>> from murmura.clock import make_availability
>>> avail = make_availability({"name": "bernoulli", "p": 0.5, "period": 10.0}, seed=0)
>>> nodes = torch.arange(6)
>>> on = avail.online_at(nodes, 3.0)
>>> bool(torch.equal(on[3:], avail.online_at(nodes[3:], 3.0)))
True
>>> bool((avail.next_online(nodes, 3.0)[on] == 3.0).all())
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from murmura.clock._checks import as_nodes, as_times, build, positive, probability
from murmura.clock.draws import NodeCache, keyed_uniform
from murmura.registry import Registry
from murmura.swarm.random import hash_keys, stream_id

__all__ = ["AVAILABILITY", "AlwaysOnline", "Availability", "Bernoulli", "Diurnal",
           "PermanentFailure", "make_availability", "with_failures"]

AVAILABILITY: Registry = Registry("availability model")

_INF = math.inf


class Availability:
    """Base class: subclasses implement ``_runs(nodes, t) -> (online, change)`` for client
    nodes (1-D int64, all >= 0) and float64 times of the same shape."""

    seed: int = 0
    num_nodes: int | None = None

    def _runs(self, nodes: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def state(self, nodes: torch.Tensor | int, t: torch.Tensor | float
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(online, change)``: whether each node is online at ``t`` and when that run of the
        same state ends (``inf``: never). ``nodes`` and ``t`` broadcast."""
        nodes_t = as_nodes(nodes, num_nodes=self.num_nodes)
        times = as_times(t)
        nodes_b, times_b = torch.broadcast_tensors(nodes_t, times)
        shape = nodes_b.shape
        flat_n, flat_t = nodes_b.reshape(-1), times_b.reshape(-1)
        client = flat_n >= 0
        if bool(client.all()):
            online, change = self._runs(flat_n, flat_t.clone())
        else:
            online = torch.ones(flat_n.shape, dtype=torch.bool)
            change = torch.full(flat_n.shape, _INF, dtype=torch.float64)
            idx = torch.nonzero(client).flatten()
            if idx.numel():
                online[idx], change[idx] = self._runs(flat_n[idx], flat_t[idx].clone())
        return online.reshape(shape), change.reshape(shape)

    def online_at(self, nodes: torch.Tensor | int, t: torch.Tensor | float) -> torch.Tensor:
        """Whether each node is online at ``t``."""
        return self.state(nodes, t)[0]

    def online_throughout(self, nodes: torch.Tensor | int, t0: torch.Tensor | float,
                          t1: torch.Tensor | float) -> torch.Tensor:
        """Whether each node is online during all of ``[t0, t1)`` (a whole task)."""
        start = as_times(t0, "t0")
        end = as_times(t1, "t1", allow_inf=True)
        if bool((end < start).any()):
            raise ValueError("online_throughout needs t1 >= t0 (the task's end after its start)")
        online, change = self.state(nodes, start)
        return online & (change >= end)

    def next_online(self, nodes: torch.Tensor | int, t: torch.Tensor | float) -> torch.Tensor:
        """The earliest time >= ``t`` at which each node is online (``inf``: never again)."""
        online, change = self.state(nodes, t)
        return torch.where(online, as_times(t).expand_as(change), change)

    def next_offline(self, nodes: torch.Tensor | int, t: torch.Tensor | float) -> torch.Tensor:
        """The earliest time >= ``t`` at which each node is offline (``inf``: never)."""
        online, change = self.state(nodes, t)
        return torch.where(online, change, as_times(t).expand_as(change))

    def online_time(self, nodes: torch.Tensor | int, t0: torch.Tensor | float,
                    t1: torch.Tensor | float) -> torch.Tensor:
        """Seconds each node is online within ``[t0, t1)`` (a loop over state changes,
        vectorized over nodes)."""
        n = as_nodes(nodes, num_nodes=self.num_nodes)
        start, end = as_times(t0, "t0"), as_times(t1, "t1")
        n, start, end = torch.broadcast_tensors(n, start, end)
        shape = n.shape
        n, t, end = n.reshape(-1), start.reshape(-1).clone(), end.reshape(-1)
        total = torch.zeros(t.shape, dtype=torch.float64)
        active = torch.nonzero(t < end).flatten()
        while active.numel():
            online, change = self.state(n[active], t[active])
            stop = torch.minimum(change, end[active])
            total[active] += torch.where(online, stop - t[active], 0.0)
            t[active] = stop
            active = active[stop < end[active]]
        return total.reshape(shape)


@dataclass(frozen=True)
class AlwaysOnline(Availability):
    """Every node is online all the time."""

    seed: int = 0

    def _runs(self, nodes: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.ones(nodes.shape, dtype=torch.bool),
                torch.full(nodes.shape, _INF, dtype=torch.float64))


class _PeriodWindows(Availability):
    """Time cut into periods ``[S_k, S_{k+1})`` (per node), each holding at most one online
    window ``[a_k, b_k)``; a run continues into the next period when the next window starts
    exactly where this one ends. Period starts are computed by one formula (``_start``) and
    the period of ``t`` is found by comparing with them, so a returned change time lands in
    the new state when queried back, with no rounding gap."""

    period: float

    def _always(self) -> bool:
        return False

    def _never(self) -> bool:
        return False

    def _start(self, nodes: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _window(self, nodes: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _offset(self, nodes: torch.Tensor) -> torch.Tensor:
        return torch.zeros(nodes.shape, dtype=torch.float64)

    def _index(self, nodes: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        k = torch.floor((t - self._offset(nodes)) / self.period).to(torch.int64)
        k = k - (t < self._start(nodes, k)).to(torch.int64)
        return k + (t >= self._start(nodes, k + 1)).to(torch.int64)

    def _runs(self, nodes: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._always():
            return AlwaysOnline()._runs(nodes, t)
        if self._never():
            return (torch.zeros(nodes.shape, dtype=torch.bool),
                    torch.full(nodes.shape, _INF, dtype=torch.float64))
        k = self._index(nodes, t)
        a, b = self._window(nodes, k)
        online = (a <= t) & (t < b)
        change = torch.where(online, b, torch.where((t < a) & (a < b), a, _INF))
        # Online: extend the run while the next period's window starts where this one ends.
        todo = torch.nonzero(online).flatten()
        kk = k.clone()
        while todo.numel():
            kk[todo] += 1
            na, nb = self._window(nodes[todo], kk[todo])
            more = (na == change[todo]) & (nb > na)
            todo = todo[more]
            change[todo] = nb[more]
        # Offline after this period's window (or an empty one): find the next non-empty window.
        todo = torch.nonzero(~online & torch.isinf(change)).flatten()
        kk = k.clone()
        while todo.numel():
            kk[todo] += 1
            na, nb = self._window(nodes[todo], kk[todo])
            found = nb > na
            change[todo[found]] = na[found]
            todo = todo[~found]
        return online, change


@dataclass(frozen=True)
class Bernoulli(_PeriodWindows):
    """Online with probability ``p`` during each period ``[k period, (k+1) period)``, drawn
    independently per node and period (keyed by ``(seed, node, k)``)."""

    p: float = 0.9
    period: float = 60.0
    seed: int = 0

    def __post_init__(self) -> None:
        probability(self.p, "p")
        positive(self.period, "period")

    def _always(self) -> bool:
        return self.p >= 1.0

    def _never(self) -> bool:
        return self.p <= 0.0

    def _start(self, nodes: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return k.to(torch.float64) * self.period

    def _window(self, nodes: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        on = keyed_uniform(self.seed, "clock.bernoulli", nodes, k) < self.p
        start = self._start(nodes, k)
        return start, torch.where(on, self._start(nodes, k + 1), start)


@dataclass(frozen=True, eq=False)
class Diurnal(_PeriodWindows):
    """A daily cycle: node ``i`` is online with probability ``mean + amplitude cos(...)``,
    peaking at ``phase_i + period / 2`` of each of its days (``phase_i`` uniform in
    ``[0, phase_spread * period)``, fixed per node: time zones).

    Realized as one contiguous online window per node-day, centred on the peak, with a half
    width set by a uniform ``u`` drawn per (node, day): online at offset ``x`` from the centre
    iff ``u < mean + amplitude cos(2 pi x / period)``, so the probability of being online at
    any instant is exactly that curve, and devices stay on for a stretch (a phone charging
    overnight) rather than flickering."""

    mean: float = 0.5
    amplitude: float = 0.4
    period: float = 86400.0
    phase_spread: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        probability(self.mean, "mean")
        positive(self.amplitude, "amplitude", allow_zero=True)
        positive(self.period, "period")
        probability(self.phase_spread, "phase_spread")
        object.__setattr__(self, "_phase", NodeCache(self._phases))

    def _phases(self, nodes: torch.Tensor) -> torch.Tensor:
        u = keyed_uniform(self.seed, "clock.diurnal.phase", nodes)
        return self.phase_spread * self.period * u

    def _always(self) -> bool:
        return self.mean - self.amplitude >= 1.0

    def _never(self) -> bool:
        return self.mean + self.amplitude <= 0.0

    def _offset(self, nodes: torch.Tensor) -> torch.Tensor:
        return self._phase(nodes)

    def _start(self, nodes: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return self._offset(nodes) + k.to(torch.float64) * self.period

    def _window(self, nodes: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = keyed_uniform(self.seed, "clock.diurnal", nodes, k)
        if self.amplitude > 0:
            c = ((u - self.mean) / self.amplitude).clamp(-1.0, 1.0)
        else:
            c = torch.where(u < self.mean, -1.0, 1.0).to(torch.float64)
        half = self.period / (2 * math.pi) * torch.arccos(c)
        s0, s1 = self._start(nodes, k), self._start(nodes, k + 1)
        centre = s0 + 0.5 * self.period
        full, empty = c <= -1.0, c >= 1.0
        a = torch.where(full, s0, torch.maximum(s0, centre - half))
        b = torch.where(full, s1, torch.minimum(s1, centre + half))
        return torch.where(empty, centre, a), torch.where(empty, centre, b)


@dataclass(frozen=True, eq=False)
class PermanentFailure(Availability):
    """``base``, except that the nodes in ``nodes`` go offline for good at time ``at``."""

    base: Availability
    at: float
    nodes: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.base, Availability):
            raise ValueError(f"base must be an Availability, got {type(self.base).__name__}")
        positive(self.at, "at", allow_zero=True)
        failed = torch.unique(as_nodes(self.nodes, "nodes", allow_server=False).reshape(-1))
        object.__setattr__(self, "nodes", failed)
        object.__setattr__(self, "num_nodes", self.base.num_nodes)
        object.__setattr__(self, "seed", self.base.seed)

    def _runs(self, nodes: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        online, change = self.base._runs(nodes, t)
        failing = torch.isin(nodes, self.nodes)
        gone = failing & (t >= self.at)
        at = torch.tensor(float(self.at), dtype=torch.float64)
        before = failing & ~gone
        change = torch.where(before & online, torch.minimum(change, at), change)
        change = torch.where(before & ~online & (change >= at), _INF, change)
        return online & ~gone, torch.where(gone, _INF, change)


def with_failures(
    base: Availability,
    at: float,
    nodes: torch.Tensor | list[int] | None = None,
    fraction: float | None = None,
    num_nodes: int | None = None,
    seed: int | None = None,
) -> PermanentFailure:
    """``base`` with a set of nodes leaving for good at ``at``: the given ``nodes``, or exactly
    ``round(fraction * num_nodes)`` of them chosen by a keyed hash of ``(seed, node)`` (the
    same nodes for the same seed, whatever else changes).

    >>> import torch
    >>> from murmura.clock import AlwaysOnline, with_failures
    >>> avail = with_failures(AlwaysOnline(), at=100.0, fraction=0.8, num_nodes=10, seed=0)
    >>> nodes = torch.arange(10)
    >>> int(avail.online_at(nodes, 99.0).sum()), int(avail.online_at(nodes, 100.0).sum())
    (10, 2)
    """
    if (nodes is None) == (fraction is None):
        raise ValueError("with_failures needs exactly one of nodes (the ids that fail) or "
                         "fraction (with num_nodes)")
    if nodes is None:
        frac = probability(fraction, "fraction")
        if num_nodes is None or int(num_nodes) < 1:
            raise ValueError("with_failures(fraction=...) needs num_nodes >= 1")
        key = base.seed if seed is None else seed
        rank = hash_keys(key, stream_id("clock.failures"), torch.arange(int(num_nodes)))
        nodes = torch.argsort(rank)[: int(round(frac * int(num_nodes)))]
    return PermanentFailure(base, float(at), torch.as_tensor(nodes))


@AVAILABILITY.register("always", "every node online all the time")
def _always(seed: int = 0) -> AlwaysOnline:
    return AlwaysOnline(seed)


@AVAILABILITY.register("bernoulli", "online with probability p, redrawn every period seconds")
def _bernoulli(p: float = 0.9, period: float = 60.0, seed: int = 0) -> Bernoulli:
    return Bernoulli(p, period, seed)


@AVAILABILITY.register("diurnal", "a daily online cycle with a per-node phase")
def _diurnal(mean: float = 0.5, amplitude: float = 0.4, period: float = 86400.0,
             phase_spread: float = 1.0, seed: int = 0) -> Diurnal:
    return Diurnal(mean, amplitude, period, phase_spread, seed)


def make_availability(spec: Any = None, seed: int = 0, num_nodes: int | None = None
                      ) -> Availability:
    """An availability model from ``None`` (always online), a name, ``{"name": ..., ...}`` or
    an :class:`Availability`. A dict may also carry ``fail_at`` with ``fail_fraction`` or
    ``fail_nodes``: those nodes leave for good at ``fail_at`` (:func:`with_failures`)."""
    if spec is None:
        return AlwaysOnline(seed)
    fail: dict[str, Any] = {}
    if isinstance(spec, dict):
        spec = dict(spec)
        fail = {k: spec.pop(k) for k in ("fail_at", "fail_fraction", "fail_nodes") if k in spec}
    model = build(AVAILABILITY, spec, Availability, seed=seed, num_nodes=num_nodes)
    if not fail:
        return model
    if "fail_at" not in fail:
        raise ValueError("availability: fail_fraction / fail_nodes need fail_at (the time at "
                         "which those nodes leave)")
    return with_failures(model, fail["fail_at"], nodes=fail.get("fail_nodes"),
                         fraction=fail.get("fail_fraction"), num_nodes=num_nodes, seed=seed)
