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
trained as one vectorized step; their exchanges are then applied one after another in event
order (a few ``[d]`` vector operations each), so at ``window = 0`` the run is exact.

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
        for i, j, ok, lost_there, lost_back in zip(nodes.tolist(), peers.tolist(),
                                                   there.tolist(), lost[0].tolist(),
                                                   lost[1].tolist()):
            if j < 0:
                continue
            self._exchange(i, j, ok, lost_there, lost_back, size)
        self.log.record(times, EventKind.GOSSIP_WAKE, nodes, nbytes=size)

    def _exchange(self, i: int, j: int, ok: bool, lost_there: bool, lost_back: bool,
                  size: float) -> None:
        """One exchange between waker ``i`` and neighbour ``j`` (``ok``: ``j`` is online)."""
        sim = self.sim
        x = sim.params
        mine, theirs = x[i].clone(), x[j].clone()
        if self.protocol in ("pairwise", "push"):  # i -> j
            sim.bytes_sent[i] += size
            if ok and not lost_there:
                sim.bytes_received[j] += size
                x[j] = (theirs + mine) / 2
            else:
                self.dropped += 1
        if self.protocol in ("pairwise", "pull") and ok:  # j -> i (a request costs nothing)
            sim.bytes_sent[j] += size
            if not lost_back:
                sim.bytes_received[i] += size
                x[i] = (mine + theirs) / 2
            else:
                self.dropped += 1
        self.exchanges += 1

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
            w = self.queue.pop_window(self.window, until=next_eval + 1e-12)
            if len(w):
                self._wake(w.nodes, w.times)
                continue
            sim = self.sim
            record = {"time": next_eval, "exchanges": self.exchanges,
                      "dropped": self.dropped, "wakes": int(self.wakes.sum()),
                      "bytes_sent_total": float(sim.bytes_sent.sum()), **sim.evaluate()}
            if callback is not None:
                record.update(callback(self) or {})
            self.records.append(record)
            next_eval += eval_every
        return self.records


__all__ = ["ClockedGossip", "PROTOCOLS"]
