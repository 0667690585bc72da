"""Partitioners: coverage, determinism, the skew each one promises, and loud failures."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from murmura.data import PARTITIONERS, partition, partition_stats
from murmura.data.partition import class_disjoint, dirichlet, iid, quantity_skew, shards
from murmura.registry import RegistryError

# Parameters that make every built-in valid for LABELS below (10 classes x 100 samples).
BUILTINS = {
    "iid": {},
    "dirichlet": {"alpha": 0.5},
    "shards": {"classes_per_node": 2},
    "pathological": {"classes_per_node": 3},
    "class_disjoint": {"groups": 2},
    "quantity_skew": {"alpha": 1.0},
}
LABELS = np.random.default_rng(123).permutation(np.repeat(np.arange(10), 100))
FAST = settings(max_examples=40, deadline=None)


def assert_exact_cover(parts: list[np.ndarray], n: int, num_nodes: int) -> None:
    assert len(parts) == num_nodes
    for p in parts:
        assert p.dtype == np.int64 and p.ndim == 1
        assert np.all(np.diff(p) > 0), "each part must be sorted without repeats"
    flat = np.concatenate(parts)
    assert len(flat) == n, "some sample was dropped or given twice"
    assert np.array_equal(np.sort(flat), np.arange(n))


def test_every_builtin_is_registered() -> None:
    assert set(BUILTINS) <= set(PARTITIONERS.names())
    assert PARTITIONERS.get("pathological") is shards


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_every_sample_assigned_exactly_once(name: str) -> None:
    parts = partition(name, LABELS, 10, seed=0, **BUILTINS[name])
    assert_exact_cover(parts, len(LABELS), 10)


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_same_seed_same_split_other_seed_other_split(name: str) -> None:
    a = partition(name, LABELS, 10, seed=7, **BUILTINS[name])
    b = partition(name, LABELS, 10, seed=7, **BUILTINS[name])
    c = partition(name, LABELS, 10, seed=8, **BUILTINS[name])
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_accepts_torch_tensor_and_list_labels(name: str) -> None:
    import torch

    expected = partition(name, LABELS, 5, seed=1, **BUILTINS[name])
    for labels in (torch.from_numpy(LABELS), LABELS.tolist()):
        got = partition(name, labels, 5, seed=1, **BUILTINS[name])
        assert all(np.array_equal(x, y) for x, y in zip(expected, got, strict=True))


# --- property tests over random label arrays ------------------------------------------------


@st.composite
def labelled(draw: st.DrawFn, max_classes: int = 6, max_n: int = 300) -> tuple[np.ndarray, int]:
    num_classes = draw(st.integers(1, max_classes))
    n = draw(st.integers(1, max_n))
    labels = np.array(draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n)))
    num_nodes = draw(st.integers(1, n))
    return labels, num_nodes


@FAST
@given(labelled(), st.integers(0, 2**32 - 1))
def test_iid_property(case: tuple[np.ndarray, int], seed: int) -> None:
    labels, num_nodes = case
    parts = iid(labels, num_nodes, seed=seed)
    assert_exact_cover(parts, len(labels), num_nodes)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@FAST
@given(labelled(), st.floats(0.01, 1000.0), st.integers(0, 1000))
def test_dirichlet_property(case: tuple[np.ndarray, int], alpha: float, seed: int) -> None:
    labels, num_nodes = case
    parts = dirichlet(labels, num_nodes, seed=seed, alpha=alpha, min_size=0)
    assert_exact_cover(parts, len(labels), num_nodes)
    # With the default min_size it either meets the documented minimum or says what to change.
    default_min = max(1, min(10, len(labels) // (2 * num_nodes)))
    try:
        parts = dirichlet(labels, num_nodes, seed=seed, alpha=alpha)
    except ValueError as e:
        assert "alpha" in str(e) and "min_size" in str(e)
    else:
        assert_exact_cover(parts, len(labels), num_nodes)
        assert min(len(p) for p in parts) >= default_min


@FAST
@given(labelled(), st.integers(1, 6), st.integers(0, 1000))
def test_shards_property(case: tuple[np.ndarray, int], k: int, seed: int) -> None:
    labels, num_nodes = case
    num_classes = len(np.unique(labels))
    if k > num_classes or k * num_nodes > len(labels):
        with pytest.raises(ValueError, match="classes_per_node"):
            shards(labels, num_nodes, seed=seed, classes_per_node=k)
        return
    parts = shards(labels, num_nodes, seed=seed, classes_per_node=k)
    assert_exact_cover(parts, len(labels), num_nodes)
    sizes = [len(p) for p in parts]  # k shards each, shard sizes differ by at most one
    assert max(sizes) - min(sizes) <= k


@FAST
@given(labelled(), st.integers(1, 6), st.integers(0, 1000))
def test_class_disjoint_property(case: tuple[np.ndarray, int], groups: int, seed: int) -> None:
    labels, num_nodes = case
    classes = np.unique(labels)
    try:
        parts = class_disjoint(labels, num_nodes, seed=seed, groups=groups)
    except ValueError as e:
        assert "groups" in str(e)
        assert groups > len(classes) or groups > num_nodes or "samples" in str(e)
        return
    assert_exact_cover(parts, len(labels), num_nodes)
    node_groups = np.array_split(np.arange(num_nodes), groups)
    seen = [set(np.unique(labels[np.concatenate([parts[i] for i in g])])) for g in node_groups]
    for i in range(groups):
        for j in range(i + 1, groups):
            assert not seen[i] & seen[j]


@FAST
@given(labelled(), st.floats(0.01, 1000.0), st.integers(0, 1000))
def test_quantity_skew_property(case: tuple[np.ndarray, int], alpha: float, seed: int) -> None:
    labels, num_nodes = case
    parts = quantity_skew(labels, num_nodes, seed=seed, alpha=alpha)
    assert_exact_cover(parts, len(labels), num_nodes)
    assert min(len(p) for p in parts) >= 1


# --- the skew each partitioner promises ----------------------------------------------------


def mean_tv(parts: list[np.ndarray], labels: np.ndarray) -> float:
    return partition_stats(parts, labels, 10)["mean_tv"]


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    labels = np.repeat(np.arange(10), 200)
    tv = {
        alpha: np.mean(
            [
                mean_tv(dirichlet(labels, 20, seed=s, alpha=alpha, min_size=0), labels)
                for s in range(3)
            ]
        )
        for alpha in (0.05, 1.0, 100.0)
    }
    assert tv[0.05] > tv[1.0] + 0.2
    assert tv[1.0] > tv[100.0] + 0.2
    assert tv[100.0] < 0.15


def test_dirichlet_respects_min_size() -> None:
    labels = np.repeat(np.arange(10), 200)
    for min_size in (1, 25, 60):
        parts = dirichlet(labels, 20, seed=0, alpha=0.3, min_size=min_size)
        assert min(len(p) for p in parts) >= min_size
    # Default: min(10, 2000 // (2 * 20)) = 10.
    assert min(len(p) for p in dirichlet(labels, 20, seed=0, alpha=0.3)) >= 10


def test_dirichlet_impossible_request_says_what_to_change() -> None:
    labels = np.repeat(np.arange(2), 100)
    with pytest.raises(ValueError, match="larger alpha") as e:
        dirichlet(labels, 50, seed=0, alpha=0.01, min_size=3)
    assert "min_size=3" in str(e.value)


@pytest.mark.parametrize(("num_nodes", "k"), [(10, 2), (20, 1), (5, 4), (30, 2)])
def test_shards_at_most_k_classes_when_divisible(num_nodes: int, k: int) -> None:
    # 10 classes x 60 samples; the shard size (600 / (num_nodes * k)) divides 60 in each case.
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 60))
    assert 60 % (600 // (num_nodes * k)) == 0
    for seed in range(3):
        parts = shards(labels, num_nodes, seed=seed, classes_per_node=k)
        assert_exact_cover(parts, 600, num_nodes)
        assert all(len(np.unique(labels[p])) <= k for p in parts)
        assert len({len(p) for p in parts}) == 1


def test_shards_shuffle_ties_within_a_class() -> None:
    # One class: the sort decides nothing, so a node's shard must be a random subset rather
    # than a contiguous run of indices in dataset order.
    labels = np.zeros(400, dtype=np.int64)
    parts = shards(labels, 4, seed=0, classes_per_node=1)
    assert all(p[-1] - p[0] > 2 * len(p) for p in parts)


def test_shards_when_not_divisible_sizes_differ_by_at_most_k() -> None:
    labels = np.repeat(np.arange(3), [7, 11, 5])  # 23 samples, 6 shards of 3 or 4
    parts = shards(labels, 3, seed=0, classes_per_node=2)
    assert_exact_cover(parts, 23, 3)
    assert sorted(len(p) for p in parts)[-1] - sorted(len(p) for p in parts)[0] <= 2


def test_class_disjoint_groups_have_disjoint_label_sets() -> None:
    parts = class_disjoint(LABELS, 10, seed=0, groups=3)
    sets = [frozenset(np.unique(LABELS[p]).tolist()) for p in parts]
    groups = np.array_split(np.arange(10), 3)
    group_sets = [frozenset().union(*(sets[i] for i in g)) for g in groups]
    assert [sorted(s) for s in group_sets] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    # Within a group the split is iid: every node sees all the group's classes here.
    for g, s in zip(groups, group_sets, strict=True):
        assert all(sets[i] == s for i in g)


def test_quantity_skew_skews_sizes_not_labels() -> None:
    labels = np.repeat(np.arange(10), 500)
    skewed = partition_stats(quantity_skew(labels, 10, seed=0, alpha=0.3), labels, 10)
    even = partition_stats(quantity_skew(labels, 10, seed=0, alpha=1000.0), labels, 10)
    assert skewed["std_size"] > 5 * even["std_size"]
    assert even["max_size"] - even["min_size"] < 100
    # Label-iid: the big nodes' label mix matches the global one.
    big = [tv for tv, n in zip(skewed["tv_per_node"], skewed["sizes"], strict=True) if n > 500]
    assert big and max(big) < 0.1


def test_iid_is_balanced_in_labels_too() -> None:
    labels = np.repeat(np.arange(10), 1000)
    assert mean_tv(iid(labels, 10, seed=0), labels) < 0.05


# --- partition_stats ------------------------------------------------------------------------


def test_partition_stats_values() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    stats = partition_stats(
        [np.array([0, 1]), np.array([2, 4]), np.array([], dtype=int)], labels, 3
    )
    assert stats["num_nodes"] == 3
    assert stats["sizes"] == [2, 2, 0]
    assert stats["label_counts"] == [[2, 0, 0], [0, 1, 1], [0, 0, 0]]
    assert stats["classes_per_node"] == [1, 2, 0]
    # pooled distribution of assigned samples: [1/2, 1/4, 1/4]
    assert stats["tv_per_node"][0] == pytest.approx(0.5)
    assert stats["tv_per_node"][1] == pytest.approx(0.5)
    assert math.isnan(stats["tv_per_node"][2])
    assert stats["mean_tv"] == pytest.approx(0.5)
    assert stats["min_size"] == 0 and stats["max_size"] == 2


def test_partition_stats_rejects_labels_beyond_num_classes() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        partition_stats([np.array([0])], np.array([5]), 3)
    with pytest.raises(ValueError, match="outside"):
        partition_stats([np.array([7])], np.array([0, 1]), 2)


# --- bad input fails loudly, naming the parameter ------------------------------------------

Y = np.repeat(np.arange(4), 5)  # 4 classes x 5 samples


@pytest.mark.parametrize(
    ("name", "num_nodes", "params", "word"),
    [
        ("dirichlet", 4, {"alpha": 0}, "alpha"),
        ("dirichlet", 4, {"alpha": -1.0}, "alpha"),
        ("dirichlet", 4, {"alpha": float("nan")}, "alpha"),
        ("dirichlet", 4, {"alpha": float("inf")}, "alpha"),
        ("dirichlet", 4, {"alpha": "0.5"}, "alpha"),
        ("dirichlet", 4, {"alpha": True}, "alpha"),
        ("dirichlet", 4, {"alpha": 0.5, "min_size": 6}, "min_size"),
        ("dirichlet", 4, {"alpha": 0.5, "min_size": -1}, "min_size"),
        ("dirichlet", 4, {"alpha": 0.5, "min_size": 1.5}, "min_size"),
        ("quantity_skew", 4, {"alpha": 0.0}, "alpha"),
        ("quantity_skew", 4, {"alpha": float("-inf")}, "alpha"),
        ("quantity_skew", 4, {"alpha": 1.0, "min_size": 6}, "min_size"),
        ("iid", 0, {}, "num_nodes"),
        ("iid", -3, {}, "num_nodes"),
        ("iid", 2.0, {}, "num_nodes"),
        ("iid", 21, {}, "num_nodes"),
        ("dirichlet", 21, {"alpha": 1.0}, "num_nodes"),
        ("shards", 2, {"classes_per_node": 5}, "classes_per_node"),
        ("shards", 2, {"classes_per_node": 0}, "classes_per_node"),
        ("shards", 2, {"classes_per_node": 1.5}, "classes_per_node"),
        ("shards", 6, {"classes_per_node": 4}, "classes_per_node"),  # 24 shards > 20 samples
        ("class_disjoint", 8, {"groups": 5}, "groups"),
        ("class_disjoint", 2, {"groups": 3}, "groups"),
        ("class_disjoint", 2, {"groups": 0}, "groups"),
        ("class_disjoint", 2, {"groups": "2"}, "groups"),
        ("dirichlet", 4, {"alhpa": 0.5}, "alhpa"),
        ("dirichlet", 4, {}, "alpha"),
        ("iid", 4, {"alpha": 1.0}, "alpha"),
    ],
)
def test_bad_parameters_raise_value_error_naming_them(
    name: str, num_nodes: object, params: dict, word: str
) -> None:
    with pytest.raises(ValueError, match=word):
        partition(name, Y, num_nodes, seed=0, **params)


@pytest.mark.parametrize("name", sorted(BUILTINS))
@pytest.mark.parametrize(
    ("labels", "word"),
    [
        (np.array([], dtype=np.int64), "empty"),
        (np.zeros((4, 2), dtype=np.int64), "1-D"),
        (np.array([0.0, 1.0, 1.0, 0.0]), "integer"),
        (np.array([0, -1, 1, 0]), ">= 0"),
    ],
)
def test_bad_labels_raise_value_error(name: str, labels: np.ndarray, word: str) -> None:
    fn = PARTITIONERS.get(name)
    with pytest.raises(ValueError, match="labels") as e:
        fn(labels, 2, seed=0, **BUILTINS[name])
    assert word in str(e.value)


@pytest.mark.parametrize("seed", [-1, 1.5, None])
def test_bad_seed_raises_value_error(seed: object) -> None:
    with pytest.raises(ValueError, match="seed"):
        partition("iid", Y, 2, seed=seed)


def test_unknown_keyword_lists_accepted_ones() -> None:
    with pytest.raises(ValueError, match="accepted: alpha, min_size"):
        partition("dirichlet", Y, 2, seed=0, concentration=0.5)
    with pytest.raises(ValueError, match="accepted: none"):
        partition("iid", Y, 2, seed=0, alpha=0.5)


def test_unknown_partitioner_name_lists_available() -> None:
    with pytest.raises(RegistryError, match="dirichlet"):
        partition("dirichlett", Y, 2, seed=0)


def test_user_partitioner_registered_like_builtins() -> None:
    @PARTITIONERS.register("test_round_robin")
    def round_robin(labels: np.ndarray, num_nodes: int, *, seed: int, offset: int = 0) -> list:
        """Sample i goes to node (i + offset) % num_nodes."""
        idx = np.arange(len(labels))
        return [idx[(idx + offset) % num_nodes == k] for k in range(num_nodes)]

    @PARTITIONERS.register("test_overlapping")
    def overlapping(labels: np.ndarray, num_nodes: int, *, seed: int) -> list:
        """Every node gets everything: invalid."""
        return [np.arange(len(labels))] * num_nodes

    try:
        parts = partition("test_round_robin", Y, 3, seed=0, offset=1)
        assert_exact_cover(parts, len(Y), 3)
        assert parts[1][0] == 0
        with pytest.raises(ValueError, match="accepted: offset"):
            partition("test_round_robin", Y, 3, seed=0, ofset=1)
        with pytest.raises(ValueError, match="more than one node"):
            partition("test_overlapping", Y, 3, seed=0)
    finally:
        PARTITIONERS._entries.pop("test_round_robin")
        PARTITIONERS._entries.pop("test_overlapping")
