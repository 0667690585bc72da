"""Static graph generators: structure, fast path == networkx path, scale."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from murmura.topology import (
    TOPOLOGIES,
    complete,
    erdos_renyi,
    exponential,
    isolated,
    make_topology,
    random_regular,
    ring,
    small_world,
    star,
    torus,
)
from murmura.topology.graphs import _pairs_from_index, _random_regular_edges

FAST = settings(max_examples=100, deadline=None)


def degrees(g: nx.Graph) -> list[int]:
    return [d for _, d in sorted(g.degree())]


def assert_simple_on_range(g: nx.Graph, n: int) -> None:
    assert isinstance(g, nx.Graph) and not g.is_directed()
    assert sorted(g.nodes) == list(range(n))
    assert nx.number_of_selfloops(g) == 0


def test_all_builtins_are_registered_with_descriptions() -> None:
    expected = {
        "complete", "ring", "torus", "star", "erdos_renyi", "random_regular", "exponential",
        "small_world", "isolated", "none", "one_peer_exponential", "random_matching",
        "random_k_out",
    }  # fmt: skip
    assert expected <= set(TOPOLOGIES.names())
    assert all(TOPOLOGIES.describe()[name] for name in expected)


def test_complete_ring_star_isolated_structure() -> None:
    assert complete(6).number_of_edges() == 15
    assert degrees(ring(7)) == [2] * 7
    assert ring(2).number_of_edges() == 1 and ring(1).number_of_edges() == 0
    assert degrees(star(6)) == [5, 1, 1, 1, 1, 1]
    assert isolated(4).number_of_edges() == 0 and isolated(4).number_of_nodes() == 4
    assert TOPOLOGIES.get("none") is isolated
    for g, n in [(complete(6), 6), (ring(7), 7), (star(6), 6)]:
        assert_simple_on_range(g, n)


def test_torus_shapes() -> None:
    g = torus(12)  # auto 3 x 4
    assert degrees(g) == [4] * 12 and g.number_of_edges() == 24
    assert nx.is_isomorphic(torus(12, rows=3), nx.grid_2d_graph(3, 4, periodic=True))
    assert nx.is_isomorphic(torus(20, cols=5), nx.grid_2d_graph(4, 5, periodic=True))
    assert degrees(torus(6, rows=2, cols=3)) == [3] * 6  # side 2: one vertical neighbour
    assert nx.utils.graphs_equal(torus(5, rows=1), ring(5))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 7}, "prime"),
        ({"n": 3}, "cannot be factored"),
        ({"n": 12, "rows": 5}, "rows=5 does not divide n=12"),
        ({"n": 12, "cols": 7}, "cols=7 does not divide n=12"),
        ({"n": 12, "rows": 3, "cols": 5}, r"rows \* cols = 3 \* 5 = 15 but n=12"),
        ({"n": 12, "rows": 0}, "rows must be an integer >= 1"),
    ],
)
def test_torus_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        torus(**kwargs)


def test_exponential_matches_definition() -> None:
    for n in [1, 2, 3, 5, 8, 10, 17]:
        want = nx.Graph()
        want.add_nodes_from(range(n))
        if n > 1:
            for i in range(n):
                for j in range(int(math.floor(math.log2(n - 1))) + 1):
                    for nb in ((i + 2**j) % n, (i - 2**j) % n):
                        if nb != i:
                            want.add_edge(i, nb)
        assert nx.utils.graphs_equal(exponential(n), want), n
    assert sorted(exponential(8).neighbors(0)) == [1, 2, 4, 6, 7]


def test_erdos_renyi_extremes_and_density() -> None:
    assert erdos_renyi(12, p=0.0).number_of_edges() == 0
    assert erdos_renyi(12, p=1.0).number_of_edges() == 66
    n, p = 300, 0.05
    counts = [erdos_renyi(n, p=p, seed=s).number_of_edges() for s in range(5)]
    mean, sd = p * n * (n - 1) / 2, math.sqrt(p * (1 - p) * n * (n - 1) / 2)
    assert all(abs(c - mean) < 5 * sd for c in counts)
    assert erdos_renyi(50, p=0.2, seed=1).edges == erdos_renyi(50, p=0.2, seed=1).edges
    assert set(erdos_renyi(50, p=0.2, seed=1).edges) != set(erdos_renyi(50, p=0.2, seed=2).edges)


def test_pair_index_decoding_is_exact() -> None:
    n = 60
    i, j = np.tril_indices(n, -1)  # row-major lower triangle = our index order
    order = np.lexsort((j, i))
    lo, hi = _pairs_from_index(np.arange(n * (n - 1) // 2, dtype=np.int64))
    assert np.array_equal(lo, j[order]) and np.array_equal(hi, i[order])
    # Near the end of a 10^5-node triangle the float sqrt must still decode exactly.
    big = 100_000
    last = np.arange(big * (big - 1) // 2 - 5, big * (big - 1) // 2, dtype=np.int64)
    lo, hi = _pairs_from_index(last)
    assert hi.tolist() == [big - 1] * 5 and lo.tolist() == list(range(big - 6, big - 1))
    # Around triangular numbers of ~10^8-row triangles float64 rounds the root up: the integer
    # correction must bring it back (last entry of row i-1, first entry of row i).
    rows = np.array([10**8 + 7, 2**26 + 3, 3 * 10**9 + 1], dtype=np.int64)
    lo, hi = _pairs_from_index(np.concatenate([rows * (rows - 1) // 2 - 1, rows * (rows - 1) // 2]))
    assert hi.tolist() == (rows - 1).tolist() + rows.tolist()
    assert lo.tolist() == (rows - 2).tolist() + [0, 0, 0]


@FAST
@given(st.integers(2, 60), st.integers(0, 59), st.integers(0, 2**31 - 1))
def test_random_regular_is_simple_and_regular(n: int, k: int, seed: int) -> None:
    k = min(k, n - 1)
    if (n * k) % 2:
        k -= 1
    g = random_regular(n, k=k, seed=seed)
    assert_simple_on_range(g, n)
    assert degrees(g) == [k] * n


def test_random_regular_dense_and_sparse_paths() -> None:
    for n, k in [(40, 30), (41, 20), (300, 7), (2000, 3)]:
        src, dst = _random_regular_edges(n, k=k, seed=5)
        assert src.shape[0] == n * k // 2
        deg = np.bincount(src, minlength=n) + np.bincount(dst, minlength=n)
        assert (deg == k).all()
        assert np.unique(src * n + dst).shape[0] == src.shape[0] and (src < dst).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 5, "k": 3}, "odd"),
        ({"n": 5, "k": 5}, "k must be an integer in"),
        ({"n": 5, "k": -1}, "k must be an integer in"),
        ({"n": 5, "k": 2.0}, "k must be an integer"),
    ],
)
def test_random_regular_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        random_regular(**kwargs)


@FAST
@given(st.integers(5, 60), st.sampled_from([2, 4]), st.floats(0, 1), st.integers(0, 1000))
def test_small_world_connected(n: int, k: int, p: float, seed: int) -> None:
    g = small_world(n, k=k, p=p, seed=seed)
    assert_simple_on_range(g, n)
    assert nx.is_connected(g) and g.number_of_edges() == n * k // 2


@pytest.mark.parametrize(
    ("fn", "kwargs", "match"),
    [
        (small_world, {"n": 10, "k": 3, "p": 0.1}, "k must be even"),
        (small_world, {"n": 4, "k": 4, "p": 0.1}, "below n"),
        (small_world, {"n": 10, "k": 4, "p": -0.1}, r"p must be a probability in \[0, 1\]"),
        (erdos_renyi, {"n": 10, "p": 1.5}, r"p must be a probability in \[0, 1\], got 1.5"),
        (erdos_renyi, {"n": 10, "p": "0.5"}, "p must be a probability"),
        (ring, {"n": 0}, r"n \(the number of nodes\) must be an integer >= 1, got 0"),
        (ring, {"n": 3.0}, "must be an integer >= 1"),
        (ring, {"n": True}, "must be an integer >= 1"),
        (complete, {"n": 20_000}, "use 'star'"),
        (erdos_renyi, {"n": 10, "p": 0.1, "seed": -3}, "seed must be an integer >= 0"),
    ],
)
def test_generator_errors(fn, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fn(**kwargs)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("complete", {}),
        ("ring", {}),
        ("torus", {"rows": 4}),
        ("star", {}),
        ("erdos_renyi", {"p": 0.15}),
        ("random_regular", {"k": 3}),
        ("exponential", {}),
        ("small_world", {"k": 4, "p": 0.3}),
        ("isolated", {}),
    ],
)
def test_vectorized_path_equals_networkx_generator(name: str, params: dict) -> None:
    n, seed = 24, 11
    from_generator = TOPOLOGIES.get(name)(n, seed=seed, **params)
    from_factory = make_topology(name, n, seed=seed, **params).graph_at(0)
    assert nx.utils.graphs_equal(from_generator, from_factory)


def test_hundred_thousand_nodes_build() -> None:
    # Not timed (benchmarks do that); this proves the vectorized paths work at scale.
    n = 100_000
    rr = make_topology("random_regular", n, k=4, seed=0)
    w = rr.mixing_at(0)
    assert (w.in_degree == 4).all() and (w.out_degree == 4).all() and w.is_doubly_stochastic
    rg = make_topology("ring", n)
    w = rg.mixing_at(0)
    assert (w.in_degree == 2).all() and w.is_symmetric and w.matrix.values().numel() == 3 * n


@pytest.mark.parametrize(
    "name,params,reference",
    [
        ("complete", {}, lambda n: nx.complete_graph(n)),
        ("ring", {}, lambda n: nx.cycle_graph(n)),
        ("star", {}, lambda n: nx.star_graph(n - 1)),
        ("torus", {"rows": 4}, lambda n: nx.convert_node_labels_to_integers(
            nx.grid_2d_graph(4, n // 4, periodic=True), ordering="sorted")),
        ("isolated", {}, lambda n: nx.empty_graph(n)),
    ],
)
def test_deterministic_graphs_equal_networkx_own_generators(name, params, reference) -> None:
    n = 24
    ours = make_topology(name, n, **params).graph_at(0)
    assert nx.is_isomorphic(ours, reference(n))
    if name != "torus":  # same labelling too, not only the same shape
        assert nx.utils.edges_equal(sorted(map(sorted, ours.edges())),
                                    sorted(map(sorted, reference(n).edges())))
