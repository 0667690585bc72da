"""Static communication graphs, each found by name in :data:`TOPOLOGIES`.

A generator is ``fn(n, *, seed=0, **params) -> networkx.Graph`` on nodes ``0..n-1``. Built-ins
also have a vectorized edge-list twin that :func:`~murmura.topology.make_topology` uses, so a
100,000-node ring or random 4-regular graph is built in well under a second without ever creating
a networkx graph; the networkx graph stays the public representation for small graphs and drawing.

Register your own generator the same way as the built-ins:

>>> import networkx as nx
>>> from murmura.topology import TOPOLOGIES, make_topology
>>> @TOPOLOGIES.register("my_path", "a line: node i talks to i-1 and i+1", overwrite=True)
... def my_path(n: int, *, seed: int = 0) -> nx.Graph:
...     return nx.path_graph(n)
>>> make_topology("my_path", 4).mixing_at(0).in_degree.tolist()
[1, 2, 2, 1]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np

from murmura.registry import Registry
from murmura.topology.mixing import _canonical_edges, _check_n

__all__ = [
    "TOPOLOGIES",
    "complete",
    "ring",
    "torus",
    "star",
    "erdos_renyi",
    "random_regular",
    "exponential",
    "small_world",
    "isolated",
    "attached",
]

TOPOLOGIES: Registry[Callable[..., Any]] = Registry("topology")

Edges = tuple[np.ndarray, np.ndarray]

# Building a mixing matrix peaks at roughly 6x its final size (2e7 edges: 0.5 GB final, ~3 GB peak,
# ~7 s), so fail before allocating rather than run out of memory half-way. A complete graph hits
# it at about 6,300 nodes. Raise it (murmura.topology.graphs.MAX_EDGES = ...) if you have the RAM.
MAX_EDGES = 20_000_000


@dataclass(frozen=True)
class _Builtin:
    """The vectorized edge builder and connectivity advice behind a built-in generator."""

    edges: Callable[..., Edges]
    hint: Callable[[int, dict[str, Any]], str]


# Keyed by the generator object, so a user who re-registers a built-in name with their own
# function gets their function, not our fast path.
_BUILTINS: dict[Callable[..., Any], _Builtin] = {}

_CONNECTED_ALTERNATIVES = "ring, torus, exponential, small_world or complete"


def _generic_hint(n: int, params: dict[str, Any]) -> str:
    return f"use a connected topology such as {_CONNECTED_ALTERNATIVES}"


def _static(
    name: str,
    description: str,
    edges: Callable[..., Edges],
    hint: Callable[[int, dict[str, Any]], str] = _generic_hint,
) -> Callable[[Callable[..., nx.Graph]], Callable[..., nx.Graph]]:
    def decorator(fn: Callable[..., nx.Graph]) -> Callable[..., nx.Graph]:
        TOPOLOGIES.add(name, fn, description)
        _BUILTINS[fn] = _Builtin(edges, hint)
        return fn

    return decorator


def builtin_edges(fn: Callable[..., Any]) -> Callable[..., Edges] | None:
    """The vectorized edge builder of a built-in generator, or None for user generators."""
    b = _BUILTINS.get(fn)
    return b.edges if b is not None else None


def connectivity_hint(fn: Callable[..., Any], n: int, params: dict[str, Any]) -> str:
    """Advice on how to get a connected graph from generator ``fn``."""
    b = _BUILTINS.get(fn)
    return (b.hint if b is not None else _generic_hint)(n, params)


# ---------------------------------------------------------------- validation helpers


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return int(seed)


def check_int(topology: str, name: str, value: Any, lo: int, hi: int | None, fix: str) -> int:
    """``value`` as an int in ``[lo, hi]``, or a ValueError naming the parameter and the fix."""
    ok = not isinstance(value, bool) and isinstance(value, (int, np.integer))
    if ok and value >= lo and (hi is None or value <= hi):
        return int(value)
    bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
    raise ValueError(f"{topology}: {name} must be an integer {bound}, got {value!r}; {fix}")


def check_prob(topology: str, name: str, value: Any) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.floating, np.integer))
    if ok and 0.0 <= float(value) <= 1.0:
        return float(value)
    raise ValueError(
        f"{topology}: {name} must be a probability in [0, 1], got {value!r}; pass e.g. {name}=0.1"
    )


def _check_edge_budget(topology: str, edges: float, fix: str) -> None:
    if edges > MAX_EDGES:
        raise ValueError(
            f"{topology}: this graph would have about {int(edges):,} edges, above the limit of "
            f"{MAX_EDGES:,} (its mixing matrix alone would need {edges * 24 / 2**30:.1f} GiB, and "
            f"building it several times that); {fix}, or raise murmura.topology.graphs.MAX_EDGES"
        )


def _empty() -> Edges:
    z = np.zeros(0, dtype=np.int64)
    return z, z.copy()


def _to_graph(n: int, edges: Edges) -> nx.Graph:
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from(zip(edges[0].tolist(), edges[1].tolist(), strict=True))
    return g


# ---------------------------------------------------------------- edge builders


def _complete_edges(n: int, *, seed: int = 0) -> Edges:
    n = _check_n(n)
    _check_edge_budget(
        "complete",
        n * (n - 1) // 2,
        "use 'star' for server averaging, which computes the same average with 2(n-1) messages, "
        "or a sparse graph such as 'exponential'",
    )
    src, dst = np.triu_indices(n, 1)
    return src.astype(np.int64), dst.astype(np.int64)


def _ring_edges(n: int, *, seed: int = 0) -> Edges:
    n = _check_n(n)
    nodes = np.arange(n, dtype=np.int64)
    return _canonical_edges(nodes, (nodes + 1) % n, n)


def _torus_shape(n: int, rows: Any, cols: Any) -> tuple[int, int]:
    fix_side = "pass rows and cols with rows * cols == n"
    if rows is not None:
        rows = check_int("torus", "rows", rows, 1, None, fix_side)
    if cols is not None:
        cols = check_int("torus", "cols", cols, 1, None, fix_side)
    if rows is None and cols is None:
        rows = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
        cols = n // rows
        if rows < 2:
            raise ValueError(
                f"torus: n={n} cannot be factored as rows * cols with rows, cols >= 2 (it is "
                f"{'prime' if n > 3 else 'too small'}); choose n with a factorization (e.g. "
                f"{_nearest_composite(n)}), or pass rows=1 explicitly for a ring"
            )
    elif rows is None:
        if n % cols:
            raise ValueError(f"torus: cols={cols} does not divide n={n}; choose cols dividing n")
        rows = n // cols
    elif cols is None:
        if n % rows:
            raise ValueError(f"torus: rows={rows} does not divide n={n}; choose rows dividing n")
        cols = n // rows
    elif rows * cols != n:
        raise ValueError(
            f"torus: rows * cols = {rows} * {cols} = {rows * cols} but n={n}; {fix_side}"
        )
    return rows, cols


def _nearest_composite(n: int) -> int:
    m = max(n, 4)
    while all(m % d for d in range(2, math.isqrt(m) + 1)):
        m += 1
    return m


def _torus_edges(
    n: int, *, seed: int = 0, rows: int | None = None, cols: int | None = None
) -> Edges:
    n = _check_n(n)
    r, c = _torus_shape(n, rows, cols)
    nodes = np.arange(n, dtype=np.int64)
    i, j = nodes // c, nodes % c
    right = i * c + (j + 1) % c
    down = ((i + 1) % r) * c + j
    # With a side of length 1 or 2 the wrap-around links coincide or are self-loops;
    # canonicalizing keeps the graph simple.
    return _canonical_edges(np.concatenate([nodes, nodes]), np.concatenate([right, down]), n)


def _star_edges(n: int, *, seed: int = 0) -> Edges:
    n = _check_n(n)
    leaves = np.arange(1, n, dtype=np.int64)
    return np.zeros(n - 1, dtype=np.int64), leaves


def _pairs_from_index(k: np.ndarray) -> Edges:
    """Inverse of k = i (i - 1) / 2 + j with 0 <= j < i (lower-triangle order)."""
    i = np.floor((1.0 + np.sqrt(1.0 + 8.0 * k.astype(np.float64))) / 2.0).astype(np.int64)
    # The float square root can be off by one near perfect squares.
    i -= (i * (i - 1) // 2) > k
    i += ((i + 1) * i // 2) <= k
    j = k - i * (i - 1) // 2
    return j, i


def _erdos_renyi_edges(n: int, *, seed: int = 0, p: float) -> Edges:
    n = _check_n(n)
    p = check_prob("erdos_renyi", "p", p)
    rng = np.random.default_rng(check_seed(seed))
    pairs = n * (n - 1) // 2
    _check_edge_budget("erdos_renyi", p * pairs, "lower p or n")
    # G(n, p) = a Binomial(N, p) number of edges placed uniformly without replacement: O(edges)
    # work instead of one coin per pair, so sparse graphs on 10^5 nodes are instant.
    m = int(rng.binomial(pairs, p)) if pairs else 0
    idx = np.sort(rng.choice(pairs, size=m, replace=False)) if m else np.zeros(0, np.int64)
    return _pairs_from_index(idx.astype(np.int64))


def _erdos_renyi_hint(n: int, params: dict[str, Any]) -> str:
    threshold = math.log(n) / n if n > 1 else 0.0
    return (
        f"increase p (G(n, p) is connected with high probability once p is well above "
        f"ln(n)/n = {threshold:.3g}) or use {_CONNECTED_ALTERNATIVES}"
    )


def _first_occurrence(a: np.ndarray) -> np.ndarray:
    """Mask of the entries of ``a`` that are the first copy of their value."""
    order = np.argsort(a, kind="stable")
    first = np.ones(a.shape[0], dtype=bool)
    first[order[1:]] = a[order[1:]] != a[order[:-1]]
    return first


def _contains(sorted_keys: np.ndarray, k: np.ndarray) -> np.ndarray:
    pos = np.minimum(np.searchsorted(sorted_keys, k), sorted_keys.shape[0] - 1)
    return sorted_keys[pos] == k


def _pair_stubs(stubs: np.ndarray, n: int, rng: np.random.Generator) -> Edges:
    """A simple graph from a stub list: the pairing (configuration) model, then repair by switches.

    Restarting until a whole pairing is simple would take about ``exp((k^2 - 1)/4)`` tries, so the
    bad pairs (self-loops and repeats, O(k^2) of them whatever n is) are repaired instead: a bad
    pair ``(a, c)`` and a random good pair ``(x, y)`` become ``(a, x)`` and ``(c, y)`` when both are
    new simple edges. All bad pairs propose a switch at once and the non-conflicting proposals are
    applied together, so the repair is vectorized too. Like networkx's generator, the result is
    approximately (asymptotically) uniform over k-regular graphs, not exactly.
    """
    for _ in range(100):
        edges = _try_pairing(stubs, n, rng)
        if edges is not None:
            return edges
    raise RuntimeError(f"random_regular: no simple graph after 100 pairings (n={n}); please report")


def _try_pairing(stubs: np.ndarray, n: int, rng: np.random.Generator) -> Edges | None:
    """One pairing plus switch repair; None at a dead end (e.g. every pair a self-loop)."""
    rng.shuffle(stubs)
    u, v = stubs[0::2].copy(), stubs[1::2].copy()
    tries = 4  # candidate partners per bad pair and round: fewer rounds on dense graphs
    stalled = 0
    while stalled < 50:
        keys = np.minimum(u, v) * n + np.maximum(u, v)
        order = np.argsort(keys)
        sorted_keys = keys[order]
        repeat = np.zeros(keys.shape[0], dtype=bool)
        repeat[order[1:]] = sorted_keys[1:] == sorted_keys[:-1]
        bad_mask = (u == v) | repeat
        b_all = np.flatnonzero(bad_mask)
        if b_all.size == 0:
            return _canonical_edges(u, v, n)
        good = np.flatnonzero(~bad_mask)
        if good.size == 0:
            return None
        b = np.repeat(b_all, tries)
        e = good[rng.integers(good.shape[0], size=b.shape[0])]
        flip = rng.random(b.shape[0]) < 0.5
        x, y = np.where(flip, v[e], u[e]), np.where(flip, u[e], v[e])
        a, c = u[b], v[b]
        k1 = np.minimum(a, x) * n + np.maximum(a, x)
        k2 = np.minimum(c, y) * n + np.maximum(c, y)
        ok = (a != x) & (c != y) & (k1 != k2)
        ok &= ~_contains(sorted_keys, k1) & ~_contains(sorted_keys, k2)
        idx = np.flatnonzero(ok)
        # Proposals applied together must come from different bad pairs, touch different good
        # pairs and create different edges.
        idx = idx[_first_occurrence(b[idx])]
        idx = idx[_first_occurrence(e[idx])]
        new = np.concatenate([k1[idx], k2[idx]])
        unique_new = _first_occurrence(new) & _first_occurrence(new[::-1])[::-1]
        idx = idx[unique_new[: idx.shape[0]] & unique_new[idx.shape[0] :]]
        if idx.size == 0:
            stalled += 1
            continue
        stalled = 0
        bi, ei = b[idx], e[idx]
        u[bi], v[bi], u[ei], v[ei] = a[idx], x[idx], c[idx], y[idx]
    return None


def _random_regular_edges(n: int, *, seed: int = 0, k: int) -> Edges:
    n = _check_n(n)
    k = check_int("random_regular", "k", k, 0, n - 1, "the degree k must be below n")
    if (n * k) % 2:
        raise ValueError(
            f"random_regular: n * k = {n} * {k} is odd, and a k-regular graph needs an even "
            f"number of edge ends; change n or k by one"
        )
    _check_edge_budget("random_regular", n * k / 2, "lower k or n")
    rng = np.random.default_rng(check_seed(seed))
    if k == 0:
        return _empty()
    if 2 * k > n - 1:
        # Dense case: the complement of a uniform (n-1-k)-regular graph is a uniform k-regular
        # graph, and sparse pairing converges fast where dense pairing would not.
        src, dst = _random_regular_edges(n, seed=seed, k=n - 1 - k)
        adj = np.ones((n, n), dtype=bool)
        adj[src, dst] = adj[dst, src] = False
        lo, hi = np.nonzero(np.triu(adj, 1))
        return lo.astype(np.int64), hi.astype(np.int64)
    return _pair_stubs(np.repeat(np.arange(n, dtype=np.int64), k), n, rng)


def _random_regular_hint(n: int, params: dict[str, Any]) -> str:
    return (
        "use k >= 3 (random k-regular graphs are connected with high probability for k >= 3; "
        "k = 1 is a matching and k = 2 a union of cycles) or another seed"
    )


def _exponential_edges(n: int, *, seed: int = 0) -> Edges:
    n = _check_n(n)
    if n == 1:
        return _empty()
    nodes = np.arange(n, dtype=np.int64)
    hops = 2 ** np.arange((n - 1).bit_length(), dtype=np.int64)  # 2^0 .. 2^floor(log2(n-1))
    src = np.tile(nodes, hops.shape[0])
    dst = (src + np.repeat(hops, n)) % n
    return _canonical_edges(src, dst, n)


def _small_world_edges(n: int, *, seed: int = 0, k: int, p: float) -> Edges:
    n = _check_n(n)
    k = check_int("small_world", "k", k, 2, None, "k is the ring-lattice degree, e.g. k=4")
    if k % 2 or k >= n:
        raise ValueError(
            f"small_world: k must be even and below n (each node starts linked to k/2 neighbours "
            f"on each side), got k={k} with n={n}; use an even k such as 4"
        )
    p = check_prob("small_world", "p", p)
    try:
        g = nx.connected_watts_strogatz_graph(n, k, p, tries=100, seed=check_seed(seed))
    except nx.NetworkXError as err:
        raise ValueError(
            f"small_world: no connected graph in 100 tries with n={n}, k={k}, p={p}; lower p or "
            f"raise k"
        ) from err
    e = np.asarray(list(g.edges()), dtype=np.int64).reshape(-1, 2)
    return _canonical_edges(e[:, 0], e[:, 1], n)


def _isolated_edges(n: int, *, seed: int = 0) -> Edges:
    _check_n(n)
    return _empty()


def _isolated_hint(n: int, params: dict[str, Any]) -> str:
    return (
        "'isolated' has no edges by design (local training only); use a connected topology "
        f"such as {_CONNECTED_ALTERNATIVES}"
    )


# ---------------------------------------------------------------- public generators


@_static("complete", "every node linked to every other (up to ~6,300 nodes)", _complete_edges)
def complete(n: int, *, seed: int = 0) -> nx.Graph:
    """Complete graph: every pair of nodes is linked; Metropolis weights give exact averaging.

    >>> complete(4).number_of_edges()
    6
    """
    return _to_graph(n, _complete_edges(n, seed=seed))


@_static("ring", "cycle: node i linked to i-1 and i+1 (mod n)", _ring_edges)
def ring(n: int, *, seed: int = 0) -> nx.Graph:
    """Ring (cycle) ``i -- i+1 mod n``. Two nodes share one edge; one node has none.

    >>> sorted(ring(4).neighbors(0))
    [1, 3]
    """
    return _to_graph(n, _ring_edges(n, seed=seed))


@_static("torus", "2-D torus (wrap-around grid), rows x cols near-square by default", _torus_edges)
def torus(n: int, *, seed: int = 0, rows: int | None = None, cols: int | None = None) -> nx.Graph:
    """2-D torus: node ``r * cols + c`` is linked to its 4 grid neighbours with wrap-around.

    Without ``rows``/``cols`` the most nearly square factorization with both sides >= 2 is used
    (a ValueError for prime ``n``). A side of length 2 has one neighbour, not two, on that axis
    (degree 3); ``rows=1`` gives a ring.

    >>> g = torus(12)
    >>> sorted(d for _, d in g.degree())[:2], g.number_of_edges()
    ([4, 4], 24)
    """
    return _to_graph(n, _torus_edges(n, seed=seed, rows=rows, cols=cols))


@_static("star", "node 0 is a hub linked to every other node (server/federated)", _star_edges)
def star(n: int, *, seed: int = 0) -> nx.Graph:
    """Star: node 0 is the hub, linked to nodes ``1..n-1``; a federated server as a graph.

    >>> star(5).degree(0)
    4
    """
    return _to_graph(n, _star_edges(n, seed=seed))


@_static(
    "erdos_renyi",
    "G(n, p): each pair linked independently with probability p",
    _erdos_renyi_edges,
    _erdos_renyi_hint,
)
def erdos_renyi(n: int, *, seed: int = 0, p: float) -> nx.Graph:
    """Erdos-Renyi ``G(n, p)``: each of the ``n(n-1)/2`` pairs is an edge with probability ``p``.

    Sampled as a binomial number of uniformly placed edges, in time linear in the edges.

    >>> erdos_renyi(10, p=1.0).number_of_edges(), erdos_renyi(10, p=0.0).number_of_edges()
    (45, 0)
    """
    return _to_graph(n, _erdos_renyi_edges(n, seed=seed, p=p))


@_static(
    "random_regular",
    "random k-regular graph (n * k even, k < n)",
    _random_regular_edges,
    _random_regular_hint,
)
def random_regular(n: int, *, seed: int = 0, k: int) -> nx.Graph:
    """Random ``k``-regular simple graph (pairing model with local repair, vectorized).

    Requires ``0 <= k < n`` and ``n * k`` even. Connected with high probability for ``k >= 3``.

    >>> g = random_regular(10, k=3, seed=1)
    >>> {d for _, d in g.degree()}
    {3}
    """
    return _to_graph(n, _random_regular_edges(n, seed=seed, k=k))


@_static(
    "exponential",
    "static exponential graph: i linked to i +- 2^j (mod n), undirected",
    _exponential_edges,
)
def exponential(n: int, *, seed: int = 0) -> nx.Graph:
    """Static exponential graph: ``i`` linked to ``i +- 2^j mod n`` for ``j = 0..floor(log2(n-1))``.

    This is the *undirected* version: each link carries models both ways, so Metropolis weights
    make it symmetric and doubly stochastic, at about ``2 log2(n)`` neighbours per node. Ying et
    al. (2021) and Assran et al. (SGP) use the *directed* graph (``i`` sends only to ``i + 2^j``,
    weights ``1/(log2(n)+1)``), with half the messages; its time-varying one-peer form is
    ``one_peer_exponential``.

    >>> sorted(exponential(8).neighbors(0))
    [1, 2, 4, 6, 7]
    """
    return _to_graph(n, _exponential_edges(n, seed=seed))


@_static(
    "small_world",
    "Watts-Strogatz small world (ring lattice of degree k, rewired with prob. p), connected",
    _small_world_edges,
)
def small_world(n: int, *, seed: int = 0, k: int, p: float) -> nx.Graph:
    """Connected Watts-Strogatz graph: a ring lattice of even degree ``k``, each edge rewired with
    probability ``p``, redrawn (up to 100 tries) until connected (networkx's generator).

    >>> g = small_world(20, k=4, p=0.1, seed=0)
    >>> g.number_of_edges(), nx.is_connected(g)
    (40, True)
    """
    return _to_graph(n, _small_world_edges(n, seed=seed, k=k, p=p))


@_static(
    "isolated",
    "no edges: every node trains alone (local training)",
    _isolated_edges,
    _isolated_hint,
)
def isolated(n: int, *, seed: int = 0) -> nx.Graph:
    """No edges: every node keeps its own model (the local-training baseline); alias ``none``.

    >>> isolated(3).number_of_edges()
    0
    """
    return _to_graph(n, _isolated_edges(n, seed=seed))


TOPOLOGIES.add("none", isolated, "alias of isolated: no edges, local training only")


@TOPOLOGIES.register(
    "attached",
    "a base graph on the first n - count nodes plus count nodes wired to a target or to random "
    "nodes of it (attackers: leaves on a target, Sybil identities' attack edges)",
)
def attached(n: int, *, seed: int = 0, base: str = "random_regular",
             base_params: dict[str, Any] | None = None, count: int = 1, edges: int = 1,
             target: int | list[int] | None = None) -> nx.Graph:
    """``base`` (a topology name, with ``base_params``) on nodes ``0..n-count-1``, then nodes
    ``n-count..n-1`` each linked to ``edges`` distinct nodes of it: the ``target`` node(s) when
    given (``edges=1, target=t``: leaves hanging on node ``t``), else a keyed uniform draw per
    added node. The added nodes are listed in ``graph.graph["attached"]``, which
    ``Adversary(placement="attached")`` reads. The added nodes are not linked to each other.

    >>> g = attached(8, base="ring", count=3, edges=1, target=0)
    >>> sorted(g.neighbors(0)), g.graph["attached"]
    ([1, 4, 5, 6, 7], [5, 6, 7])
    """
    import torch

    from murmura.swarm.random import uniform
    from murmura.topology.factory import make_topology

    for name, value, low in (("count", count, 1), ("edges", edges, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"topology 'attached': {name} must be an integer >= {low}, got "
                             f"{value!r}")
    honest = n - count
    if honest < 1:
        raise ValueError(f"topology 'attached': count={count} leaves no base graph of n={n} "
                         "nodes; lower count or raise n")
    graph = nx.Graph(make_topology(base, honest, seed=seed, **(base_params or {})).graph_at(0))
    added = list(range(honest, n))
    graph.add_nodes_from(added)
    targets = None if target is None else [target] if isinstance(target, int) else list(target)
    if targets is not None:
        if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < honest
               for t in targets) or len(set(targets)) != len(targets):
            raise ValueError(f"topology 'attached': target must be distinct node ids of the base "
                             f"graph, in [0, {honest}); got {target!r}")
        if edges > len(targets):
            raise ValueError(f"topology 'attached': edges={edges} per added node, but only "
                             f"{len(targets)} target(s); lower edges or name more targets")
    elif edges > honest:
        raise ValueError(f"topology 'attached': edges={edges} exceeds the {honest} base nodes")
    for node in added:
        if targets is not None:
            ends = targets[:edges]
        else:
            keys = uniform(seed, "attached", torch.arange(honest), node, dtype=torch.float64)
            ends = torch.topk(keys, edges, largest=False).indices.tolist()
        graph.add_edges_from((node, int(end)) for end in ends)
    graph.graph["attached"] = added
    return graph
