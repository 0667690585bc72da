"""Topologies that change every round, built vectorized and deterministic in ``(seed, round)``.

Every round's matrix is drawn from its own random stream seeded by ``(seed, round, kind)``, so
round 17 is the same graph whether it is asked for first, last, twice, or by another process,
and no state carries from one round to the next.

They are connected only *over time* (a single round of ``random_matching`` is a set of disjoint
pairs), so ``make_topology(..., require_connected=True)`` does not check them.

>>> from murmura.topology import make_topology
>>> topo = make_topology("one_peer_exponential", 8)
>>> [int(topo.mixing_at(t).matrix.col_indices()[1]) for t in range(4)]  # node 0 hears from
[7, 6, 4, 7]
"""

from __future__ import annotations

import zlib
from abc import abstractmethod
from collections import OrderedDict
from typing import Any

import networkx as nx
import numpy as np
import torch

from murmura.topology.base import Topology, check_round
from murmura.topology.graphs import TOPOLOGIES, check_int, check_seed
from murmura.topology.mixing import MixingMatrix, Triplet, _check_n

__all__ = ["OnePeerExponential", "RandomKOut", "RandomMatching", "RandomPull",
           "TimeVaryingTopology"]


class TimeVaryingTopology(Topology):
    """Base class: implement :meth:`coo_at` (the round's ``W`` as a COO triplet).

    Construction must be ``cls(n, *, seed=0, **params)``; draw randomness only from
    :meth:`rng_at`. Register the class in ``TOPOLOGIES`` to make it available by name.

    >>> import numpy as np
    >>> class Alternate(TimeVaryingTopology):
    ...     kind = "alternate"  # even rounds: average with the neighbour pair, odd: stay put
    ...     def coo_at(self, round):
    ...         n = self.num_nodes
    ...         i = np.arange(n)
    ...         if round % 2:
    ...             return i, i, np.ones(n)
    ...         j = i ^ 1
    ...         return np.r_[i, i], np.r_[i, j], np.full(2 * n, 0.5)
    >>> Alternate(4).mixing_at(0).in_degree.tolist(), Alternate(4).mixing_at(1).num_messages
    ([1, 1, 1, 1], 0)
    """

    time_varying = True
    kind: str = "time_varying"
    _CACHE_SIZE = 4

    def __init__(self, n: int, *, seed: int = 0) -> None:
        self.num_nodes = _check_n(n)
        self.seed = check_seed(seed)
        self.name = self.kind
        self.params: dict[str, Any] = {}
        self._cache: OrderedDict[tuple[int, torch.device], MixingMatrix] = OrderedDict()

    def rng_at(self, round: int) -> np.random.Generator:
        """The round's own random stream, a function of ``(seed, round, kind)`` only."""
        tag = zlib.crc32(self.kind.encode())
        return np.random.default_rng(np.random.SeedSequence([self.seed, check_round(round), tag]))

    @abstractmethod
    def coo_at(self, round: int) -> Triplet:
        """``(rows, cols, values)`` of the round's mixing matrix, diagonal included."""

    def mixing_at(self, round: int, device: torch.device | str | None = None) -> MixingMatrix:
        """The round's matrix; the last few rounds are cached (the engine may ask twice)."""
        r = check_round(round)
        dev = torch.device("cpu") if device is None else torch.device(device)
        key = (r, dev)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        cpu_key = (r, torch.device("cpu"))
        if cpu_key in self._cache:
            w = self._cache[cpu_key].to(dev)
        else:
            rows, cols, vals = self.coo_at(r)
            w = MixingMatrix.from_coo(rows, cols, vals, self.num_nodes, dev)
        self._cache[key] = w
        while len(self._cache) > self._CACHE_SIZE:
            self._cache.popitem(last=False)
        return w

    def graph_at(self, round: int) -> nx.DiGraph:
        """Directed graph of the round: an edge ``j -> i`` with ``weight=W[i, j]`` when ``j``
        sends to ``i``."""
        a = self.mixing_at(round).to_scipy().tocoo()
        off = a.row != a.col
        g = nx.DiGraph()
        g.add_nodes_from(range(self.num_nodes))
        g.add_weighted_edges_from(
            zip(a.col[off].tolist(), a.row[off].tolist(), a.data[off].tolist(), strict=True)
        )
        return g


@TOPOLOGIES.register(
    "one_peer_exponential",
    "round t: node i sends to i + 2^(t mod ceil(log2 n)); W = (I + P_t)/2, doubly stochastic",
)
class OnePeerExponential(TimeVaryingTopology):
    """One-peer exponential graph (Ying et al., 2021): in round ``t`` node ``i`` sends to
    ``(i + 2^(t mod tau)) mod n`` with ``tau = ceil(log2 n)``, and ``W = (I + P_t) / 2``.

    Each node sends and receives exactly one model per round, ``W`` is doubly stochastic, and for
    ``n`` a power of two ``tau`` consecutive rounds average exactly. ``seed`` has no effect.

    >>> W = OnePeerExponential(4).mixing_at(1)
    >>> W.dense()[0].tolist(), W.is_doubly_stochastic
    ([0.5, 0.0, 0.5, 0.0], True)
    """

    kind = "one_peer_exponential"

    def __init__(self, n: int, *, seed: int = 0) -> None:
        super().__init__(n, seed=seed)
        self.period = (self.num_nodes - 1).bit_length()  # ceil(log2 n); 0 for one node

    def coo_at(self, round: int) -> Triplet:
        n = self.num_nodes
        nodes = np.arange(n, dtype=np.int64)
        if n == 1:
            return nodes, nodes, np.ones(1)
        hop = 2 ** (check_round(round) % self.period)
        # Receiver i hears from the node whose hop lands on it.
        return (
            np.concatenate([nodes, nodes]),
            np.concatenate([nodes, (nodes - hop) % n]),
            np.full(2 * n, 0.5),
        )


@TOPOLOGIES.register(
    "random_matching",
    "each round a uniformly random maximal matching; pairs average 1/2-1/2",
)
class RandomMatching(TimeVaryingTopology):
    """Random matching gossip: each round the nodes are paired uniformly at random (a perfect
    matching for even ``n``; for odd ``n`` one random node sits out), and each pair averages.

    ``W`` is symmetric and doubly stochastic; each matched node sends one model per round.

    >>> W = RandomMatching(6, seed=0).mixing_at(3)
    >>> W.in_degree.tolist(), W.is_symmetric
    ([1, 1, 1, 1, 1, 1], True)
    """

    kind = "random_matching"

    def coo_at(self, round: int) -> Triplet:
        n = self.num_nodes
        perm = self.rng_at(round).permutation(n).astype(np.int64)
        a, b = perm[0 : n - n % 2 : 2], perm[1 : n - n % 2 : 2]
        nodes = np.arange(n, dtype=np.int64)
        self_w = np.ones(n)
        self_w[a] = self_w[b] = 0.5
        half = np.full(a.shape[0], 0.5)
        return (
            np.concatenate([nodes, a, b]),
            np.concatenate([nodes, b, a]),
            np.concatenate([self_w, half, half]),
        )


def _distinct_offsets(n_rows: int, m: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_rows, k]`` with ``k`` distinct values from ``range(m)`` per row, each row a uniform
    ``k``-subset.

    Draw with replacement and redraw only the repeated entries. Every step treats all labels
    alike, so the final set is uniform over k-subsets; repeats are rare when ``2k <= m``, and
    above that we draw the complement instead.
    """
    if 2 * k > m:
        excluded = _distinct_offsets(n_rows, m, m - k, rng)
        keep = np.ones((n_rows, m), dtype=bool)
        keep[np.arange(n_rows)[:, None], excluded] = False
        return np.nonzero(keep)[1].reshape(n_rows, k).astype(np.int64)
    x = rng.integers(0, m, size=(n_rows, k), dtype=np.int64)
    while k > 1:
        x.sort(axis=1)
        rep = np.zeros_like(x, dtype=bool)
        rep[:, 1:] = x[:, 1:] == x[:, :-1]
        n_rep = int(rep.sum())
        if n_rep == 0:
            break
        x[rep] = rng.integers(0, m, size=n_rep, dtype=np.int64)
    return x


@TOPOLOGIES.register(
    "random_k_out",
    "each round every node pulls from k distinct random others; row-stochastic only",
)
class RandomKOut(TimeVaryingTopology):
    """Random k-out (pull) gossip: each round every node pulls the models of ``k`` distinct nodes
    chosen uniformly among the others, and averages them with its own:
    ``W[i, j] = 1/(k+1)`` for ``j`` in ``{i} U pulled(i)``.

    Every node receives exactly ``k`` models (``in_degree == k``) while the number each sends is
    random (``k`` on average). ``W`` is row-stochastic but *not* doubly stochastic: gossip with it
    keeps models in the convex hull, but the swarm average drifts (in expectation it is preserved,
    since the expected ``W`` is doubly stochastic).

    >>> W = RandomKOut(10, seed=0, k=3).mixing_at(0)
    >>> W.in_degree.tolist() == [3] * 10, int(W.out_degree.sum())
    (True, 30)
    """

    kind = "random_k_out"

    def __init__(self, n: int, *, seed: int = 0, k: int) -> None:
        super().__init__(n, seed=seed)
        if self.num_nodes < 2:
            raise ValueError(
                f"random_k_out needs n >= 2 nodes to have someone to pull from, got n={n}"
            )
        self.k = check_int(
            "random_k_out",
            "k",
            k,
            1,
            self.num_nodes - 1,
            "each node pulls from k distinct other nodes, so 1 <= k <= n - 1",
        )
        self.params = {"k": self.k}

    def coo_at(self, round: int) -> Triplet:
        n, k = self.num_nodes, self.k
        nodes = np.arange(n, dtype=np.int64)
        offsets = _distinct_offsets(n, n - 1, k, self.rng_at(round))
        # Values in [0, n-1) skip the node itself: those at or above i shift up by one.
        pulled = offsets + (offsets >= nodes[:, None])
        rows = np.concatenate([nodes, np.repeat(nodes, k)])
        cols = np.concatenate([nodes, pulled.ravel()])
        return rows, cols, np.full(rows.shape[0], 1.0 / (k + 1))


@TOPOLOGIES.register(
    "random_pull",
    "each round every node averages with r random others (r may be fractional); row-stochastic",
)
class RandomPull(TimeVaryingTopology):
    """Sparse pull gossip (Zhu et al., 2025, "A single merging suffices"): each round node ``i``
    pulls ``floor(r + 1) - 1`` distinct random others, plus one more with probability
    ``frac(r + 1)``, and averages uniformly over itself and them: ``W[i, j] = 1/|N_i|``.

    So ``r = 0.2`` means: with probability 0.2 a node averages with one random peer, otherwise
    it keeps its model; ``r = n - 1`` is exact averaging. Each pull is one model received, so a
    round costs ``n r`` models in expectation. ``W`` is row-stochastic, not symmetric (as in the
    paper's code, ``core/gossip_matrix.py``): the swarm's average is preserved only in
    expectation.

    >>> W = RandomPull(1000, seed=0, r=0.2).mixing_at(0)
    >>> 150 < W.num_messages < 250, W.in_degree.max().item()
    (True, 1)
    """

    kind = "random_pull"

    def __init__(self, n: int, *, seed: int = 0, r: float) -> None:
        super().__init__(n, seed=seed)
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r <= n - 1:
            raise ValueError(
                f"random_pull: r is the expected number of peers a node pulls from each round, "
                f"a number in [0, n - 1] = [0, {n - 1}]; got {r!r}"
            )
        self.r = float(r)
        self.params = {"r": self.r}

    def coo_at(self, round: int) -> Triplet:
        n = self.num_nodes
        nodes = np.arange(n, dtype=np.int64)
        rng = self.rng_at(round)
        whole = int(np.floor(self.r))
        extra = rng.random(n) < self.r - whole
        k = min(whole + 1, n - 1)
        if k == 0:
            return nodes, nodes, np.ones(n)
        offsets = _distinct_offsets(n, n - 1, k, rng)
        pulled = offsets + (offsets >= nodes[:, None])
        # the first `whole` pulls always happen, the last one only where `extra` is drawn
        keep = np.arange(k)[None, :] < whole + extra[:, None]
        degree = keep.sum(axis=1)
        rows = np.concatenate([nodes, np.repeat(nodes, k)[keep.ravel()]])
        cols = np.concatenate([nodes, pulled.ravel()[keep.ravel()]])
        weight = 1.0 / (degree + 1)
        return rows, cols, weight[rows]
