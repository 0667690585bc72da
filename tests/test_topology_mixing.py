"""Mixing weights, the MixingMatrix container, and spectral gaps."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from murmura.topology import (
    MIXING,
    MixingMatrix,
    erdos_renyi,
    make_topology,
    mixing_from_edges,
    mixing_from_graph,
    random_regular,
    small_world,
    spectral_gap,
)

FAST = settings(max_examples=100, deadline=None)


@st.composite
def random_graphs(draw: st.DrawFn) -> nx.Graph:
    kind = draw(st.sampled_from(["erdos_renyi", "random_regular", "small_world"]))
    seed = draw(st.integers(0, 2**31 - 1))
    if kind == "erdos_renyi":
        return erdos_renyi(draw(st.integers(2, 60)), p=draw(st.floats(0, 1)), seed=seed)
    if kind == "random_regular":
        n = draw(st.integers(2, 60))
        k = draw(st.integers(0, n - 1))
        return random_regular(n, k=k - (n * k) % 2, seed=seed)
    n = draw(st.integers(5, 60))
    return small_world(n, k=draw(st.sampled_from([2, 4])), p=draw(st.floats(0, 1)), seed=seed)


def dense(w: MixingMatrix) -> np.ndarray:
    return w.dense().double().numpy()


@FAST
@given(random_graphs(), st.sampled_from(["metropolis", "max_degree"]))
def test_symmetric_rules_are_doubly_stochastic(g: nx.Graph, rule: str) -> None:
    w = mixing_from_graph(g, weights=rule)
    a = dense(w)
    assert np.allclose(a, a.T, atol=1e-7)
    assert (a >= 0).all()
    assert np.allclose(a.sum(axis=0), 1, atol=1e-6) and np.allclose(a.sum(axis=1), 1, atol=1e-6)
    assert w.is_symmetric and w.is_doubly_stochastic
    # The support is exactly the graph plus the diagonal.
    adj = nx.to_numpy_array(g, nodelist=range(g.number_of_nodes())) > 0
    assert np.array_equal((a > 0) & ~np.eye(len(a), dtype=bool), adj)


@FAST
@given(random_graphs())
def test_uniform_is_row_stochastic_and_flags_regularity(g: nx.Graph) -> None:
    w = mixing_from_graph(g, weights="uniform")
    a = dense(w)
    assert (a >= 0).all() and np.allclose(a.sum(axis=1), 1, atol=1e-6)
    deg = np.array([d for _, d in sorted(g.degree())])
    nz = a[:, 0] > 0
    assert np.allclose(a[0][a[0] > 0], 1 / (1 + deg[0]))
    assert nz.sum() == deg[0] + 1
    # Doubly stochastic (and symmetric) exactly when every connected component is regular.
    regular = all(len({deg[i] for i in comp}) == 1 for comp in nx.connected_components(g))
    assert w.is_doubly_stochastic == regular and w.is_symmetric == regular


def test_hand_computed_weights_on_a_path() -> None:
    g = nx.path_graph(3)  # degrees 1, 2, 1
    m = dense(mixing_from_graph(g, weights="metropolis"))
    assert np.allclose(m, [[2 / 3, 1 / 3, 0], [1 / 3, 1 / 3, 1 / 3], [0, 1 / 3, 2 / 3]])
    u = dense(mixing_from_graph(g, weights="uniform"))
    assert np.allclose(u, [[1 / 2, 1 / 2, 0], [1 / 3, 1 / 3, 1 / 3], [0, 1 / 2, 1 / 2]])
    x = dense(mixing_from_graph(g, weights="max_degree"))  # d_max = 2
    assert np.allclose(x, [[2 / 3, 1 / 3, 0], [1 / 3, 1 / 3, 1 / 3], [0, 1 / 3, 2 / 3]])
    x = dense(mixing_from_graph(nx.star_graph(3), weights="max_degree"))  # d_max = 3
    assert np.allclose(np.diag(x), [1 / 4, 3 / 4, 3 / 4, 3 / 4])


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("ring", {}),
        ("torus", {}),
        ("star", {}),
        ("complete", {}),
        ("exponential", {}),
        ("erdos_renyi", {"p": 0.3}),
        ("one_peer_exponential", {}),
        ("random_matching", {}),
    ],
)
def test_gossip_preserves_the_average(name: str, params: dict) -> None:
    n = 24
    topo = make_topology(name, n, seed=3, **params)
    x = torch.randn(n, 7, generator=torch.Generator().manual_seed(0))
    for t in range(5):
        w = topo.mixing_at(t)
        assert w.is_doubly_stochastic
        y = torch.sparse.mm(w.matrix, x)
        assert torch.allclose(y.mean(0), x.mean(0), atol=1e-5)
        if t == 0:
            assert not torch.allclose(y, x)  # it did mix something
        x = y


def test_row_stochastic_gossip_does_not_preserve_the_average() -> None:
    # The counterpart: uniform weights on an irregular graph drift the mean.
    w = mixing_from_graph(nx.star_graph(5), weights="uniform")
    x = torch.arange(6.0).unsqueeze(1)
    assert not torch.allclose((w.matrix @ x).mean(0), x.mean(0), atol=1e-3)


def test_spectral_gap_complete_is_one() -> None:
    for n in [2, 5, 30]:
        w = make_topology("complete", n).mixing_at(0)
        assert np.allclose(dense(w), 1 / n)
        assert w.spectral_gap() == pytest.approx(1.0, abs=1e-6)


def ring_gap(n: int) -> float:
    return 1 - (1 + 2 * math.cos(2 * math.pi / n)) / 3


@pytest.mark.parametrize("n", [3, 4, 5, 8, 13, 40, 501, 800])  # > 500 uses ARPACK
def test_spectral_gap_ring_closed_form(n: int) -> None:
    assert make_topology("ring", n).spectral_gap() == pytest.approx(ring_gap(n), abs=1e-6)


def test_spectral_gap_shrinks_as_the_ring_grows() -> None:
    gaps = [make_topology("ring", n).spectral_gap() for n in [4, 8, 16, 32, 64]]
    assert all(a > b for a, b in zip(gaps, gaps[1:], strict=False))


def test_spectral_gap_disconnected_is_zero() -> None:
    assert make_topology("isolated", 5).spectral_gap() == pytest.approx(0.0, abs=1e-9)
    two_rings = nx.disjoint_union(nx.cycle_graph(4), nx.cycle_graph(5))
    assert spectral_gap(two_rings) == pytest.approx(0.0, abs=1e-9)
    big = make_topology("random_regular", 1_000, k=1)  # a perfect matching
    assert big.spectral_gap() == pytest.approx(0.0, abs=1e-6)
    assert make_topology("ring", 1).spectral_gap() == 1.0


def three_permutations(n: int) -> MixingMatrix:
    """(I + P1 + P2) / 3 for random permutations: doubly stochastic, not symmetric."""
    rng = np.random.default_rng(0)
    rows = np.tile(np.arange(n), 3)
    cols = np.concatenate([np.arange(n), rng.permutation(n), rng.permutation(n)])
    w = MixingMatrix.from_coo(rows, cols, np.full(3 * n, 1 / 3), n)
    assert w.is_doubly_stochastic and not w.is_symmetric
    return w


def test_sparse_spectral_gap_agrees_with_dense() -> None:
    cases = [
        make_topology("random_regular", 700, k=3, seed=1).mixing_at(0),  # eigsh, deflated
        make_topology("star", 700, weights="uniform").mixing_at(0),  # eigs on row-stochastic
        make_topology("random_k_out", 600, k=2, seed=2).mixing_at(0),  # eigs, non-symmetric
        make_topology("random_matching", 600, seed=3).mixing_at(0),  # gap 0, deflated eigsh
        make_topology("one_peer_exponential", 600).mixing_at(0),  # no convergence: dense
        three_permutations(700),  # eigs on the deflated, doubly stochastic, non-symmetric W
    ]
    for w in cases:
        ev = np.sort(torch.linalg.eigvals(w.dense().double()).abs().numpy())[::-1]
        assert w.spectral_gap() == pytest.approx(max(0.0, 1 - ev[1]), abs=1e-5), w


def test_spectral_gap_accepts_many_forms_and_is_cached() -> None:
    g = nx.cycle_graph(6)
    w = mixing_from_graph(g)
    expected = ring_gap(6)
    a = dense(w)
    forms = [w, g, a, torch.from_numpy(a), torch.from_numpy(a).to_sparse(), w.matrix]
    forms += [sp.csr_array(a), make_topology("ring", 6)]
    for form in forms:
        assert spectral_gap(form) == pytest.approx(expected, abs=1e-6), type(form)
    assert w._cache["spectral_gap"] == pytest.approx(expected)
    assert w.to("cpu").spectral_gap() == w.spectral_gap()


def test_degrees_count_other_nodes_only() -> None:
    w = make_topology("ring", 9).mixing_at(0)
    assert w.out_degree.tolist() == [2] * 9 and w.in_degree.tolist() == [2] * 9
    assert w.out_degree.dtype == torch.int64 and w.in_degree.dtype == torch.int64
    w = make_topology("star", 7).mixing_at(0)
    assert w.out_degree.tolist() == [6] + [1] * 6 and w.in_degree.tolist() == [6] + [1] * 6
    assert w.num_messages == 12
    assert make_topology("isolated", 4).mixing_at(0).out_degree.tolist() == [0] * 4


def test_directed_degrees_follow_columns_and_rows() -> None:
    # W[i, j] != 0: j sends to i. Node 0 receives from 1 and 2; nobody receives from 0.
    w = MixingMatrix.from_dense(np.array([[0.5, 0.25, 0.25], [0, 1, 0], [0, 0, 1]]))
    assert w.in_degree.tolist() == [2, 0, 0] and w.out_degree.tolist() == [0, 1, 1]
    assert not w.is_symmetric and not w.is_doubly_stochastic


def test_mixing_matrix_container() -> None:
    w = make_topology("ring", 5).mixing_at(0)
    assert w.matrix.layout == torch.sparse_csr and w.matrix.dtype == torch.float32
    assert w.matrix.shape == (5, 5) and w.num_nodes == 5
    assert w.to("cpu").device == torch.device("cpu")
    assert torch.equal(w.to("cpu").dense(), w.dense())
    assert "n=5" in repr(w)
    # Explicit zeros are not messages.
    z = MixingMatrix.from_coo(np.array([0, 0, 1]), np.array([0, 1, 1]), np.array([1, 0, 1.0]), 2)
    assert z.in_degree.tolist() == [0, 0]
    # Duplicates are summed.
    d = MixingMatrix.from_coo(np.array([0, 0, 1]), np.array([0, 0, 1]), np.array([0.5, 0.5, 1]), 2)
    assert d.dense().tolist() == [[1.0, 0.0], [0.0, 1.0]] and d.is_doubly_stochastic


def test_mixing_matrix_errors() -> None:
    big = make_topology("ring", 6_000).mixing_at(0)
    with pytest.raises(ValueError, match="refusing a dense copy .* 6000 nodes"):
        big.dense()
    with pytest.raises(ValueError, match="same length"):
        MixingMatrix.from_coo(np.array([0, 1]), np.array([0]), np.array([1.0, 1.0]), 2)
    with pytest.raises(ValueError, match="NaN or Inf"):
        MixingMatrix.from_dense(np.array([[np.nan, 0], [0, 1]]))
    with pytest.raises(ValueError, match="square"):
        MixingMatrix.from_scipy(sp.csr_array(np.ones((2, 3))))
    with pytest.raises(ValueError, match=r"node ids in \[0, 3\)"):
        mixing_from_edges(np.array([0]), np.array([3]), 3)
    with pytest.raises(ValueError, match="directed"):
        mixing_from_graph(nx.DiGraph([(0, 1)]))
    with pytest.raises(ValueError, match="convert_node_labels_to_integers"):
        mixing_from_graph(nx.Graph([("a", "b")]))
    with pytest.raises(KeyError, match="unknown mixing weights 'metropolys'. Did you mean"):
        mixing_from_graph(nx.path_graph(2), weights="metropolys")


def test_user_mixing_rule_by_name_and_callable() -> None:
    @MIXING.register("test_lazy_uniform", "half uniform, half self", overwrite=True)
    def lazy(src, dst, degrees, n):
        rows, cols, vals = MIXING.get("metropolis")(src, dst, degrees, n)
        return rows, cols, 0.5 * vals + 0.5 * (rows == cols)

    by_name = make_topology("ring", 6, weights="test_lazy_uniform").mixing_at(0)
    by_fn = make_topology("ring", 6, weights=lazy).mixing_at(0)
    assert torch.equal(by_name.dense(), by_fn.dense())
    assert by_name.dense()[0, 0].item() == pytest.approx(2 / 3)
    assert by_name.is_doubly_stochastic


def test_edges_listed_twice_or_with_loops_are_canonicalized() -> None:
    w = mixing_from_edges(np.array([0, 1, 1, 2]), np.array([1, 0, 1, 0]), 3)
    assert w.in_degree.tolist() == [2, 1, 1]
    assert np.allclose(dense(w).sum(1), 1)
