"""Decentralized learning on the virtual clock: randomized gossip on Poisson clocks.

Every node has its own Poisson clock (``rate`` wake-ups per simulated second, gaps keyed by
(seed, node, wake number)). When it wakes and is online, it takes its local steps (the
simulation's own local stage, keyed by its wake number) and exchanges models with one
neighbour drawn uniformly from the topology (keyed likewise):

* ``pairwise`` (push-pull): both replace their models by the average;
* ``push``: the neighbour averages in the waker's model;
* ``pull``: the waker averages in the neighbour's model.

Each message is lost with probability ``drop`` (a pairwise exchange is two messages), and an
offline neighbour receives nothing and answers nothing. Wake-ups within ``window`` seconds are
trained as one vectorized step; their exchanges (the per-pair rule :func:`exchange`) are
vmapped over waves of node-disjoint pairs in event order, which gives the one-after-another
result exactly, so at ``window = 0`` the run is exact and a wider window only changes which
models the window's wakers train from.

Like :class:`~murmura.clock.federated.ClockedFederation`, the runner is the engine's stage for
time (it writes the simulation's rows and byte ledgers); the exchange itself is the pure
per-pair rule :func:`exchange`, the one a real peer would run.

>>> from murmura.data import federate
>>> from murmura.swarm import Simulation
>>> sim = Simulation(federate("digits", num_nodes=8, seed=0), "logreg", "dsgd", "ring",
...                  seed=0, algorithm_kwargs={"local_steps": 1})
>>> run = ClockedGossip(sim, "pairwise", rate=1.0)
>>> records = run.run(until=4.0, eval_every=2.0)
>>> [r["time"] for r in records], records[-1]["exchanges"] > 0
([2.0, 4.0], True)
"""

from __future__ import annotations

from typing import Any

import torch
from torch.func import vmap

from murmura.clock.availability import make_availability
from murmura.clock.draws import keyed_exponential, keyed_uniform
from murmura.clock.events import EventKind, EventQueue
from murmura.clock.log import EventLog

Tensor = torch.Tensor
PROTOCOLS = ("pairwise", "push_pull", "push", "pull")


class ClockedGossip:
    """Runs ``sim``'s nodes as asynchronous gossipers on its topology (module docstring)."""

    def __init__(self, sim: Any, protocol: str = "pairwise", rate: float = 1.0,
                 drop: float = 0.0, availability: Any = None, window: float = 0.0) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        for name, value, ok in (("rate", rate, rate > 0 if isinstance(rate, (int, float))
                                 else False),
                                ("drop", drop, 0 <= drop < 1 if isinstance(drop, (int, float))
                                 else False),
                                ("window", window, window >= 0 if isinstance(window, (int, float))
                                 else False)):
            if isinstance(value, bool) or not ok:
                raise ValueError(f"{name} must be a number ({'> 0' if name == 'rate' else '>= 0'}"
                                 f"{', < 1' if name == 'drop' else ''}), got {value!r}")
        if sim.topology is None:
            raise ValueError("gossip on the clock needs a simulation with a topology (the "
                             "neighbours a node may wake up to talk to)")
        self.sim, self.protocol = sim, "pairwise" if protocol == "push_pull" else protocol
        self.rate, self.drop, self.window = float(rate), float(drop), float(window)
        n = sim.num_nodes
        self.availability = make_availability(availability, seed=sim.seed, num_nodes=n)
        index, mask = sim._neighbourhoods(sim.topology.mixing_at(0))
        self.neighbours, self.degree = index.cpu(), mask.sum(1).to(torch.int64).cpu()
        self.wakes = torch.zeros(n, dtype=torch.int64)
        self.queue, self.log = EventQueue(), EventLog()
        self.exchanges = self.dropped = 0
        self._schedule(torch.arange(n), torch.zeros(n, dtype=torch.float64))

    def _schedule(self, nodes: Tensor, after: Tensor) -> None:
        gaps = keyed_exponential(self.sim.seed, "clock.gossip", nodes, self.wakes[nodes],
                                 rate=self.rate)
        self.queue.push_many(after + gaps, EventKind.GOSSIP_WAKE, nodes)

    def _wake(self, nodes: Tensor, times: Tensor) -> None:
        sim, counter = self.sim, self.wakes[nodes].clone()
        self.wakes[nodes] += 1
        self._schedule(nodes, times)
        awake = self.availability.online_at(nodes, times)
        nodes, times, counter = nodes[awake], times[awake], counter[awake]
        if not len(nodes):
            return
        round_of = torch.zeros(sim.num_nodes, dtype=torch.int64, device=sim.device)
        round_of[nodes.to(sim.device)] = counter.to(sim.device)
        sim.train(nodes.to(sim.device), round_of)
        has = self.degree[nodes] > 0
        slot = (keyed_uniform(sim.seed, "clock.gossip-peer", nodes, counter)
                * self.degree[nodes]).to(torch.int64).clamp(max=self.neighbours.shape[1] - 1)
        peers = torch.where(has, self.neighbours[nodes, slot], -1)
        there = torch.zeros_like(has)
        there[has] = self.availability.online_at(peers[has], times[has])
        lost = keyed_uniform(sim.seed, "clock.gossip-drop", nodes, counter,
                             torch.arange(2).unsqueeze(1)) < self.drop  # [2, m]: there, back
        size = float(sim.message_bytes)
        self._exchanges(nodes[has], peers[has], there[has], lost[0][has], lost[1][has], size)
        self.log.record(times, EventKind.GOSSIP_WAKE, nodes, nbytes=size)

    def _exchange(self, i: int, j: int, ok: bool, lost_there: bool, lost_back: bool,
                  size: float) -> None:
        """One exchange between waker ``i`` and neighbour ``j`` (``ok``: ``j`` is online)."""
        flag = torch.tensor
        self._exchanges(flag([i]), flag([j]), flag([ok]), flag([lost_there]), flag([lost_back]),
                        size)

    def _exchanges(self, wakers: Tensor, peers: Tensor, online: Tensor, lost_there: Tensor,
                   lost_back: Tensor, size: float) -> None:
        """A window's exchanges, in event order: :func:`exchange` vmapped over each wave of
        node-disjoint pairs (a pair's wave follows every earlier pair sharing a node with it, so
        the waves in order give exactly the one-by-one result), and their bytes counted."""
        if not len(wakers):
            return
        push = self.protocol in ("pairwise", "push")
        pull = self.protocol in ("pairwise", "pull")
        heard_there = online & ~lost_there & push
        heard_back = online & ~lost_back & pull
        sim, x = self.sim, self.sim.params
        for pairs in _waves(wakers.tolist(), peers.tolist()):
            i, j = wakers[pairs], peers[pairs]
            rows_i, rows_j = i.to(sim.device), j.to(sim.device)
            x[rows_i], x[rows_j] = vmap(exchange)(x[rows_i], x[rows_j], heard_back[pairs],
                                                  heard_there[pairs])
        def count(ledger: Tensor, nodes: Tensor, flags: Tensor) -> None:
            ledger.index_add_(0, nodes.to(ledger.device),
                              flags.to(ledger.device, torch.float64) * size)

        count(sim.bytes_sent, wakers, torch.full_like(online, push))
        count(sim.bytes_received, peers, heard_there)
        count(sim.bytes_sent, peers, online & pull)  # an answer; the request costs nothing
        count(sim.bytes_received, wakers, heard_back)
        self.dropped += int((push & ~heard_there).sum()) + int((online & pull & lost_back).sum())
        self.exchanges += len(wakers)

    def advance(self, until: float) -> int:
        """Process every wake-up up to simulated time ``until`` (no evaluation); returns how
        many wake-ups that was."""
        before = int(self.wakes.sum())
        while True:
            w = self.queue.pop_window(self.window, until=until + 1e-12)
            if not len(w):
                return int(self.wakes.sum()) - before
            self._wake(w.nodes, w.times)

    def run(self, until: float, eval_every: float, callback: Any = None
            ) -> list[dict[str, Any]]:
        """Run until simulated time ``until``, evaluating every ``eval_every`` seconds;
        ``callback(run) -> dict`` adds to each record (a metric of one's own)."""
        if not (until > 0 and eval_every > 0):
            raise ValueError(f"until and eval_every must be positive seconds, got {until!r}, "
                             f"{eval_every!r}")
        self.records: list[dict[str, Any]] = []
        next_eval = eval_every
        while next_eval <= until + 1e-12:
            self.advance(next_eval)
            sim = self.sim
            record = {"time": next_eval, "exchanges": self.exchanges,
                      "dropped": self.dropped, "wakes": int(self.wakes.sum()),
                      "bytes_sent_total": float(sim.bytes_sent.sum()), **sim.evaluate()}
            if callback is not None:
                record.update(callback(self) or {})
            self.records.append(record)
            next_eval += eval_every
        return self.records


def exchange(mine: Tensor, theirs: Tensor, i_hears: Tensor, j_hears: Tensor
             ) -> tuple[Tensor, Tensor]:
    """The gossip rule for ONE pair: a side that heard the other's model replaces its own by the
    average, ``x <- (x_i + x_j) / 2``; one that heard nothing keeps it. The protocol only decides
    who may hear (push: the neighbour, pull: the waker, pairwise: both)."""
    average = (mine + theirs) / 2
    return torch.where(i_hears, average, mine), torch.where(j_hears, average, theirs)


def _waves(wakers: list[int], peers: list[int]) -> list[Tensor]:
    """Positions of the pairs grouped into waves of node-disjoint pairs, in order: a pair goes
    one wave after the latest earlier pair that shares a node with it."""
    last: dict[int, int] = {}
    waves: list[list[int]] = []
    for k, (i, j) in enumerate(zip(wakers, peers)):
        wave = max(last.get(i, -1), last.get(j, -1)) + 1
        if wave == len(waves):
            waves.append([])
        waves[wave].append(k)
        last[i] = last[j] = wave
    return [torch.tensor(w) for w in waves]


__all__ = ["ClockedGossip", "PROTOCOLS", "exchange"]
