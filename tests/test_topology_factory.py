"""make_topology, the Topology interface, connectivity checks and input validation."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
from scipy.sparse.csgraph import connected_components

from murmura.registry import RegistryError
from murmura.topology import (
    TOPOLOGIES,
    MixingMatrix,
    StaticTopology,
    Topology,
    check_connected,
    is_connected,
    make_topology,
    num_components,
    topology_params,
)

STATIC = [
    ("complete", {}),
    ("ring", {}),
    ("torus", {}),
    ("star", {}),
    ("erdos_renyi", {"p": 0.5}),
    ("random_regular", {"k": 4}),
    ("exponential", {}),
    ("small_world", {"k": 4, "p": 0.2}),
    ("isolated", {}),
    ("none", {}),
]
TIME_VARYING = [("one_peer_exponential", {}), ("random_matching", {}), ("random_k_out", {"k": 2})]


@pytest.mark.parametrize(("name", "params"), STATIC + TIME_VARYING)
def test_one_interface_for_every_topology(name: str, params: dict) -> None:
    n = 16
    topo = make_topology(name, n, seed=2, **params)
    assert isinstance(topo, Topology) and topo.num_nodes == n
    assert topo.time_varying == ((name, params) in TIME_VARYING)
    w = topo.mixing_at(3)
    assert isinstance(w, MixingMatrix) and w.matrix.layout == torch.sparse_csr
    assert w.matrix.dtype == torch.float32 and w.matrix.shape == (n, n)
    g = topo.graph_at(3)
    assert isinstance(g, nx.Graph) and g.number_of_nodes() == n
    # The graph and the matrix agree on who sends to whom.
    a = w.dense().numpy() != 0
    np.fill_diagonal(a, False)
    senders_to = {(j, i) for i, j in zip(*np.nonzero(a), strict=True)}
    edges = set(g.edges) if g.is_directed() else {e for u, v in g.edges for e in ((u, v), (v, u))}
    assert edges == senders_to
    if not topo.time_varying:
        assert topo.mixing_at(0) is topo.mixing_at(99)  # cached, same every round
        assert topo.spectral_gap() == w.spectral_gap()
    assert name in repr(topo)


def test_static_default_weights_are_metropolis() -> None:
    topo = make_topology("star", 5)
    assert topo.weights == "metropolis"
    assert topo.mixing_at(0).dense()[1, 1].item() == pytest.approx(1 - 1 / 5)
    uni = make_topology("star", 5, weights="uniform")
    assert uni.mixing_at(0).dense()[1, 1].item() == pytest.approx(1 / 2)


def test_require_connected_message() -> None:
    with pytest.raises(ValueError) as info:
        make_topology("erdos_renyi", 100, p=0.01, seed=0, require_connected=True)
    topo = make_topology("erdos_renyi", 100, p=0.01, seed=0)
    count = connected_components(topo.adjacency(), directed=False)[0]
    assert count > 1
    msg = str(info.value)
    assert msg.startswith(f"the erdos_renyi(p=0.01) graph on 100 nodes has {count} connected")
    assert "the algorithm needs a connected graph: increase p" in msg and "0.046" in msg
    with pytest.raises(ValueError, match="has 6 connected components.*no edges by design"):
        make_topology("isolated", 6, require_connected=True)
    with pytest.raises(ValueError, match="k >= 3"):
        make_topology("random_regular", 40, k=1, require_connected=True)
    # Connected graphs and time-varying topologies pass.
    make_topology("erdos_renyi", 100, p=0.2, require_connected=True)
    for name, params in TIME_VARYING:
        make_topology(name, 10, require_connected=True, **params)


def test_connectivity_helpers() -> None:
    two = nx.disjoint_union(nx.cycle_graph(3), nx.cycle_graph(4))
    assert num_components(two) == 2 and not is_connected(two)
    with pytest.raises(ValueError, match="the graph on 7 nodes has 2 connected components"):
        check_connected(two)
    check_connected(nx.cycle_graph(3))
    assert is_connected(make_topology("ring", 5))
    assert num_components(make_topology("isolated", 5)) == 5
    assert num_components(make_topology("ring", 1)) == 1
    # A mixing matrix: strongly connected components of its support.
    one_way = MixingMatrix.from_dense(np.array([[1.0, 0.0], [0.5, 0.5]]))
    assert num_components(one_way) == 2
    assert is_connected(make_topology("ring", 5).mixing_at(0))
    with pytest.raises(ValueError, match="the mixing matrix's graph on 2 nodes"):
        check_connected(one_way)
    with pytest.raises(ValueError, match="connected only over time"):
        is_connected(make_topology("random_matching", 6))
    assert not is_connected(make_topology("random_matching", 6).mixing_at(0))
    with pytest.raises(TypeError, match="expected a networkx graph"):
        num_components([[1]])


def test_from_graph_and_user_generators() -> None:
    topo = StaticTopology.from_graph(nx.path_graph(4), weights="max_degree")
    assert topo.mixing_at(0).in_degree.tolist() == [1, 2, 2, 1] and topo.num_edges == 3

    seen = {}

    @TOPOLOGIES.register("test_seeded_path", "a path, remembering its seed", overwrite=True)
    def seeded_path(n: int, *, seed: int = 0, reverse: bool = False) -> nx.Graph:
        seen["seed"] = seed
        return nx.path_graph(n)

    topo = make_topology("test_seeded_path", 5, seed=9, reverse=True, require_connected=True)
    assert seen["seed"] == 9 and topo.params == {"reverse": True}
    assert nx.utils.graphs_equal(topo.graph_at(0), nx.path_graph(5))
    assert topology_params("test_seeded_path") == (["reverse"], [], False)

    @TOPOLOGIES.register("test_no_seed", "seedless generator", overwrite=True)
    def no_seed(n: int) -> nx.Graph:
        return nx.cycle_graph(n)

    assert make_topology("test_no_seed", 4, seed=3).mixing_at(0).in_degree.tolist() == [2] * 4

    @TOPOLOGIES.register("test_bad_type", "returns a list", overwrite=True)
    def bad_type(n: int, *, seed: int = 0) -> nx.Graph:
        return [(0, 1)]  # type: ignore[return-value]

    with pytest.raises(ValueError, match="returned list, expected a networkx Graph"):
        make_topology("test_bad_type", 3)

    @TOPOLOGIES.register("test_bad_size", "wrong node count", overwrite=True)
    def bad_size(n: int, *, seed: int = 0) -> nx.Graph:
        return nx.path_graph(n + 1)

    with pytest.raises(ValueError, match="graph with 4 nodes for n=3"):
        make_topology("test_bad_size", 3)

    @TOPOLOGIES.register("test_directed", "directed", overwrite=True)
    def directed(n: int, *, seed: int = 0) -> nx.Graph:
        return nx.DiGraph(nx.path_graph(n))

    with pytest.raises(ValueError, match="got a directed one"):
        make_topology("test_directed", 3)


def test_overriding_a_builtin_name_uses_the_users_function() -> None:
    @TOPOLOGIES.register("test_ring_clone", "a user ring", overwrite=True)
    def clone(n: int, *, seed: int = 0) -> nx.Graph:
        return nx.path_graph(n)

    assert make_topology("test_ring_clone", 5).num_edges == 4


@pytest.mark.parametrize(
    ("name", "n", "kwargs", "match"),
    [
        ("ring", 0, {}, r"n \(the number of nodes\) must be an integer >= 1, got 0"),
        ("ring", -4, {}, "must be an integer >= 1, got -4"),
        ("ring", 2.5, {}, "must be an integer >= 1, got 2.5"),
        ("ring", 5, {"seed": -1}, "seed must be an integer >= 0, got -1"),
        ("ring", 5, {"seed": 1.5}, "seed must be an integer >= 0"),
        ("ring", 5, {"k": 2}, "unknown parameter 'k' for topology 'ring'; accepted .*: none"),
        ("erdos_renyi", 5, {"q": 0.1}, "parameter 'q' for topology 'erdos_renyi'; accepted .*: p$"),
        ("small_world", 9, {"k": 4, "p": 0.1, "x": 1, "y": 2}, "parameters 'x', 'y' .*: k, p$"),
        ("torus", 12, {"row": 3}, "accepted parameters: rows, cols"),
        ("erdos_renyi", 5, {}, r"'erdos_renyi' needs parameter p; e.g. make_topology\(.*p=...\)"),
        ("small_world", 9, {}, "needs parameters k, p"),
        ("erdos_renyi", 5, {"p": -0.1}, r"erdos_renyi: p must be a probability in \[0, 1\], got -"),
        ("erdos_renyi", 5, {"p": 2}, r"p must be a probability in \[0, 1\], got 2"),
        ("random_regular", 5, {"k": 3}, "n \\* k = 5 \\* 3 is odd"),
        ("random_regular", 5, {"k": 5}, "the degree k must be below n"),
        ("random_k_out", 5, {"k": 0}, r"random_k_out: k must be an integer in \[1, 4\], got 0"),
        ("random_k_out", 5, {"k": 7}, "1 <= k <= n - 1"),
        ("torus", 13, {}, "n=13 cannot be factored"),
        ("torus", 12, {"rows": 5}, "rows=5 does not divide n=12"),
        ("small_world", 10, {"k": 5, "p": 0.1}, "k must be even"),
        ("complete", 10_001, {}, "about 50,005,000 edges, above the limit of 20,000,000"),
        ("erdos_renyi", 10**6, {"p": 0.5}, "lower p or n"),
        ("one_peer_exponential", 5, {"weights": "uniform"}, "time-varying and defines its own"),
        ("ring", 5, {"weights": 3}, "weights must be the name of a mixing rule"),
    ],
)  # fmt: skip
def test_bad_inputs_raise_clear_value_errors(name: str, n, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_topology(name, n, **kwargs)


def test_unknown_names_raise_registry_errors() -> None:
    with pytest.raises(RegistryError, match="unknown topology 'rnig'. Did you mean 'ring'"):
        make_topology("rnig", 5)
    with pytest.raises(RegistryError, match="unknown mixing weights 'unifrom'"):
        make_topology("ring", 5, weights="unifrom")


def test_static_round_validation_and_devices() -> None:
    topo = make_topology("ring", 4)
    with pytest.raises(ValueError, match="round must be an integer >= 0"):
        topo.mixing_at(-2)
    w = topo.mixing_at(0, device="cpu")
    assert w is topo.mixing_at(0, device=torch.device("cpu"))
    assert w.out_degree.device == w.matrix.device
