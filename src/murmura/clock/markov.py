"""Markov on/off churn: each node alternates online and offline sojourns of exponential length
(means ``mean_on`` and ``mean_off``), started in the stationary distribution.

The process is a pure function of ``(seed, node)``: sojourn ``j`` of node ``i`` lasts
``-mean * log(1 - u)`` with ``u`` keyed by ``(seed, i, j)``, and its state alternates from a
keyed first state (online with probability ``mean_on / (mean_on + mean_off)``). Because an
exponential sojourn is memoryless, the first sojourn needs no special residual law: the
process is stationary from ``t = 0``.

Sojourn boundaries are running sums, generated lazily ``chunk`` sojourns at a time and summed
strictly in order, so a boundary is the same float whichever queries came first; the cache
keeps one chunk per node (a node queried before its cached chunk is regenerated from the
start), so memory stays ``O(nodes * chunk)`` however long the run.

>>> import torch
>>> from murmura.clock import MarkovChurn
>>> churn = MarkovChurn(mean_on=60.0, mean_off=30.0, seed=0)
>>> nodes = torch.arange(5)
>>> late = churn.online_at(nodes, 5000.0)
>>> early = churn.online_at(nodes, 10.0)  # asking about the past afterwards changes nothing
>>> bool(torch.equal(late, MarkovChurn(60.0, 30.0, seed=0).online_at(nodes, 5000.0)))
True
"""

from __future__ import annotations

import torch

from murmura.clock._checks import positive
from murmura.clock.availability import AVAILABILITY, Availability
from murmura.clock.draws import NodeCache, keyed_uniform

__all__ = ["MarkovChurn"]


class MarkovChurn(Availability):
    """Alternating exponential on/off sojourns per node; see the module docstring."""

    def __init__(self, mean_on: float, mean_off: float, seed: int = 0, chunk: int = 32,
                 num_nodes: int | None = None) -> None:
        self.mean_on = positive(mean_on, "mean_on")
        self.mean_off = positive(mean_off, "mean_off")
        if int(chunk) < 1:
            raise ValueError(f"chunk must be >= 1 sojourns, got {chunk}")
        self.seed = int(seed)
        self.chunk = int(chunk)
        self.num_nodes = num_nodes
        self._chunk = torch.empty(0, dtype=torch.int64)  # cached chunk index per node (-1: none)
        self._base = torch.empty(0, dtype=torch.float64)  # start time of that chunk
        self._ends = torch.empty(0, self.chunk, dtype=torch.float64)  # its sojourns' end times
        self._first = NodeCache(self._first_state)

    def __repr__(self) -> str:
        return (f"MarkovChurn(mean_on={self.mean_on}, mean_off={self.mean_off}, "
                f"seed={self.seed})")

    @property
    def stationary_online(self) -> float:
        """The long-run fraction of time a node is online."""
        return self.mean_on / (self.mean_on + self.mean_off)

    def _first_state(self, nodes: torch.Tensor) -> torch.Tensor:
        return keyed_uniform(self.seed, "clock.markov.start", nodes) < self.stationary_online

    def _starts_online(self, nodes: torch.Tensor) -> torch.Tensor:
        return self._first(nodes)

    def _grow(self, size: int) -> None:
        have = self._chunk.numel()
        if size <= have:
            return
        size = max(size, 2 * have)
        extra = size - have
        self._chunk = torch.cat([self._chunk, torch.full((extra,), -1, dtype=torch.int64)])
        self._base = torch.cat([self._base, torch.zeros(extra, dtype=torch.float64)])
        self._ends = torch.cat([self._ends, torch.zeros(extra, self.chunk, dtype=torch.float64)])

    def _generate(self, nodes: torch.Tensor, chunk: torch.Tensor, base: torch.Tensor
                  ) -> torch.Tensor:
        """End times of sojourns ``chunk*C .. chunk*C + C-1`` of each node, from ``base``."""
        j = chunk[:, None] * self.chunk + torch.arange(self.chunk)
        u = keyed_uniform(self.seed, "clock.markov", nodes[:, None], j)
        on = self._starts_online(nodes)[:, None] ^ (j % 2 == 1)
        length = -torch.where(on, self.mean_on, self.mean_off) * torch.log1p(-u)
        ends = torch.empty_like(length)
        total = base.clone()
        for i in range(self.chunk):  # strictly sequential sums: the same floats in any batch
            total = total + length[:, i]
            ends[:, i] = total
        return ends

    def _runs(self, nodes: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if nodes.numel() == 0:
            return torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.float64)
        self._grow(int(nodes.max()) + 1)
        chunk, base, ends = self._chunk[nodes], self._base[nodes], self._ends[nodes]
        reset = torch.nonzero((chunk < 0) | (t < base)).flatten()
        if reset.numel():
            chunk[reset] = 0
            base[reset] = 0.0
            ends[reset] = self._generate(nodes[reset], chunk[reset], base[reset])
        todo = torch.nonzero(t >= ends[:, -1]).flatten()
        while todo.numel():
            chunk[todo] += 1
            base[todo] = ends[todo, -1]
            ends[todo] = self._generate(nodes[todo], chunk[todo], base[todo])
            todo = todo[t[todo] >= ends[todo, -1]]
        # Any copy of a repeated node is a valid cache entry: the values never depend on it.
        self._chunk[nodes], self._base[nodes], self._ends[nodes] = chunk, base, ends
        local = (ends <= t[:, None]).sum(1)
        sojourn = chunk * self.chunk + local
        online = self._starts_online(nodes) ^ (sojourn % 2 == 1)
        return online, ends.gather(1, local[:, None]).squeeze(1)


@AVAILABILITY.register("markov", "on/off churn with exponential sojourns, stationary start")
def _markov(mean_on: float, mean_off: float, seed: int = 0,
            num_nodes: int | None = None) -> MarkovChurn:
    return MarkovChurn(mean_on, mean_off, seed, num_nodes=num_nodes)
