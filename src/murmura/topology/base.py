"""The one interface the engine sees: a :class:`Topology` gives the mixing matrix of any round.

Static graphs return the same cached matrix every round; time-varying ones
(:mod:`murmura.topology.time_varying`) build a fresh one per round, deterministically from
``(seed, round)``.

>>> from murmura.topology import make_topology
>>> topo = make_topology("ring", 5)
>>> topo.mixing_at(0) is topo.mixing_at(7), topo.time_varying
(True, False)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import networkx as nx
import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components

from murmura.topology.mixing import (
    MixingFn,
    MixingMatrix,
    _canonical_edges,
    _check_n,
    graph_edges,
    resolve_mixing,
)

__all__ = [
    "Topology",
    "StaticTopology",
    "num_components",
    "is_connected",
    "check_connected",
]


def check_round(round: Any) -> int:
    if isinstance(round, bool) or not isinstance(round, (int, np.integer)) or round < 0:
        raise ValueError(f"round must be an integer >= 0, got {round!r}")
    return int(round)


def describe(name: str, params: dict[str, Any]) -> str:
    """``erdos_renyi(p=0.01)``-style label used in messages and reprs."""
    inner = ", ".join(f"{k}={v!r}" for k, v in params.items())
    return f"{name}({inner})" if inner else name


class Topology(ABC):
    """Who talks to whom in each round, as a mixing matrix per round.

    Subclass it (and register the class in ``TOPOLOGIES``) for your own time-varying schedule;
    :func:`~murmura.topology.make_topology` constructs registered classes as
    ``cls(n, seed=seed, **params)``.

    Attributes: ``name``, ``num_nodes``, ``seed``, ``params``, ``time_varying``.
    """

    name: str = "custom"
    num_nodes: int
    seed: int = 0
    params: dict[str, Any]
    time_varying: bool = False

    @abstractmethod
    def mixing_at(self, round: int, device: torch.device | str | None = None) -> MixingMatrix:
        """The mixing matrix used in ``round`` (on ``device``, CPU by default)."""

    @abstractmethod
    def graph_at(self, round: int) -> nx.Graph | nx.DiGraph:
        """The round's communication graph, for inspection and drawing of small swarms."""

    def spectral_gap(self) -> float:
        """``1 - |lambda_2(W)|`` of a static topology's mixing matrix."""
        if self.time_varying:
            raise ValueError(
                f"{self.label} is time-varying: a single round's matrix may be disconnected, so "
                f"one spectral gap does not describe it; use topology.mixing_at(t).spectral_gap() "
                f"for one round"
            )
        return self.mixing_at(0).spectral_gap()

    @property
    def label(self) -> str:
        return describe(self.name, getattr(self, "params", {}))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label}, n={self.num_nodes}, seed={self.seed})"


class StaticTopology(Topology):
    """A fixed undirected graph with mixing weights from a rule in ``MIXING``.

    Stored as an edge list (each undirected edge once) so that it scales to 10^5+ nodes; the
    networkx graph is built only when :meth:`graph_at` asks for it.

    >>> import networkx as nx
    >>> topo = StaticTopology.from_graph(nx.cycle_graph(6), weights="uniform")
    >>> topo.mixing_at(0).in_degree.tolist(), round(topo.spectral_gap(), 4)
    ([2, 2, 2, 2, 2, 2], 0.3333)
    """

    time_varying = False

    def __init__(
        self,
        src: np.ndarray,
        dst: np.ndarray,
        n: int,
        *,
        name: str = "custom",
        params: dict[str, Any] | None = None,
        seed: int = 0,
        weights: str | MixingFn = "metropolis",
        graph: nx.Graph | None = None,
        connectivity_hint: str | None = None,
    ) -> None:
        self.num_nodes = _check_n(n)
        self.src, self.dst = _canonical_edges(src, dst, self.num_nodes)
        self.name = name
        self.params = dict(params or {})
        self.seed = seed
        self.weights, self._rule = resolve_mixing(weights)
        self._graph = graph
        self.connectivity_hint = connectivity_hint
        self._mixing: dict[torch.device, MixingMatrix] = {}

    @classmethod
    def from_graph(
        cls, graph: nx.Graph, *, weights: str | MixingFn = "metropolis", name: str = "custom"
    ) -> StaticTopology:
        """Wrap an undirected networkx graph on nodes ``0..n-1``."""
        src, dst, n = graph_edges(graph)
        return cls(src, dst, n, name=name, weights=weights, graph=graph)

    @property
    def num_edges(self) -> int:
        return int(self.src.shape[0])

    @property
    def degrees(self) -> np.ndarray:
        return np.bincount(self.src, minlength=self.num_nodes) + np.bincount(
            self.dst, minlength=self.num_nodes
        )

    def mixing_at(self, round: int = 0, device: torch.device | str | None = None) -> MixingMatrix:
        """The same (cached) matrix for every round."""
        check_round(round)
        dev = torch.device("cpu") if device is None else torch.device(device)
        if dev not in self._mixing:
            cpu = torch.device("cpu")
            if cpu not in self._mixing:
                n = self.num_nodes
                rows, cols, vals = self._rule(self.src, self.dst, self.degrees, n)
                self._mixing[cpu] = MixingMatrix.from_coo(rows, cols, vals, n)
            if dev != cpu:
                self._mixing[dev] = self._mixing[cpu].to(dev)
        return self._mixing[dev]

    def graph_at(self, round: int = 0) -> nx.Graph:
        """The undirected graph (the same object every round; do not mutate it)."""
        check_round(round)
        if self._graph is None:
            g = nx.Graph()
            g.add_nodes_from(range(self.num_nodes))
            g.add_edges_from(zip(self.src.tolist(), self.dst.tolist(), strict=True))
            self._graph = g
        return self._graph

    def adjacency(self) -> sp.csr_array:
        """Symmetric 0/1 adjacency matrix (scipy CSR)."""
        n = self.num_nodes
        ones = np.ones(2 * self.num_edges, dtype=np.int8)
        rows = np.concatenate([self.src, self.dst])
        cols = np.concatenate([self.dst, self.src])
        return sp.csr_array((ones, (rows, cols)), shape=(n, n))

    def __repr__(self) -> str:
        return (
            f"StaticTopology({self.label}, n={self.num_nodes}, edges={self.num_edges}, "
            f"weights={self.weights!r})"
        )


# ---------------------------------------------------------------- connectivity


def num_components(x: nx.Graph | Topology | MixingMatrix) -> int:
    """Connected components of an undirected graph or static topology; for a (possibly
    non-symmetric) mixing matrix, strongly connected components of its support, since a fixed
    directed ``W`` reaches consensus only if information can flow from every node to every other.

    >>> import networkx as nx
    >>> num_components(nx.empty_graph(3)), num_components(nx.path_graph(3))
    (3, 1)
    """
    if isinstance(x, MixingMatrix):
        a = x.to_scipy()
        return int(connected_components(a, directed=not x.is_symmetric, connection="strong")[0])
    if isinstance(x, StaticTopology):
        return int(connected_components(x.adjacency(), directed=False)[0])
    if isinstance(x, Topology):
        if x.time_varying:
            raise ValueError(
                f"{x.label} is time-varying and is connected only over time (a single round's "
                f"graph may not be); check one round with is_connected(topology.mixing_at(t))"
            )
        return num_components(x.mixing_at(0))
    if isinstance(x, nx.Graph):
        if x.number_of_nodes() == 0:
            return 0
        if x.is_directed():
            return nx.number_strongly_connected_components(x)
        return nx.number_connected_components(x)
    raise TypeError(
        f"expected a networkx graph, a Topology or a MixingMatrix, got {type(x).__name__}"
    )


def is_connected(x: nx.Graph | Topology | MixingMatrix) -> bool:
    """True when :func:`num_components` is 1.

    >>> import networkx as nx
    >>> is_connected(nx.cycle_graph(4)), is_connected(nx.empty_graph(2))
    (True, False)
    """
    return num_components(x) == 1


def check_connected(
    x: nx.Graph | Topology | MixingMatrix, hint: str | Callable[[], str] | None = None
) -> None:
    """Raise a ValueError saying how to fix it if ``x`` is not connected.

    >>> import networkx as nx
    >>> check_connected(nx.cycle_graph(4))  # connected: returns quietly
    """
    c = num_components(x)
    if c == 1:
        return
    if isinstance(x, Topology):
        what, n = f"the {x.label} graph", x.num_nodes
        if hint is None:
            hint = getattr(x, "connectivity_hint", None)
    elif isinstance(x, MixingMatrix):
        what, n = "the mixing matrix's graph", x.num_nodes
    else:
        what, n = "the graph", x.number_of_nodes()
    if callable(hint):
        hint = hint()
    if hint is None:
        hint = "use a connected topology such as ring, torus, exponential, small_world or complete"
    raise ValueError(
        f"{what} on {n} nodes has {c} connected components; the algorithm needs a connected "
        f"graph: {hint}"
    )
