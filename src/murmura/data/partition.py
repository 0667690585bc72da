"""Partitioners: split a labelled training set among nodes.

A partitioner is ``fn(labels, num_nodes, *, seed, **params) -> list[np.ndarray]``: one sorted
int64 array of sample indices per node, every sample given to at most one node (the built-ins give
every sample to exactly one). Register your own in :data:`PARTITIONERS` and call it by name:

>>> import numpy as np
>>> from murmura.data import PARTITIONERS, partition
>>> @PARTITIONERS.register("first_half_only")
... def first_half_only(labels, num_nodes, *, seed):
...     '''Node 0 gets the first half, the others share the rest.'''
...     idx = np.arange(len(labels))
...     half = len(labels) // 2
...     return [idx[:half]] + list(np.array_split(idx[half:], num_nodes - 1))
>>> [len(p) for p in partition("first_half_only", np.zeros(8, dtype=int), 3, seed=0)]
[4, 2, 2]
>>> PARTITIONERS._entries.pop("first_half_only").name  # tidy up the doctest
'first_half_only'

Randomness comes only from ``numpy.random.default_rng(seed)``, so the same (labels, num_nodes,
seed, params) give the same split on any machine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from murmura.data._checks import (
    check_float,
    check_int,
    check_kwargs,
    check_labels,
    check_num_nodes,
    check_seed,
)
from murmura.registry import Registry

Partitioner = Callable[..., list[np.ndarray]]

PARTITIONERS: Registry[Partitioner] = Registry("partitioner")

# Rejection sampling for Dirichlet splits: each draw costs O(classes * nodes), so a thousand is
# well under a second even for thousands of nodes, and a setting that fails a thousand times is
# hopeless rather than unlucky.
DIRICHLET_MAX_ATTEMPTS = 1000


def _parts_from_assignment(assign: np.ndarray, num_nodes: int) -> list[np.ndarray]:
    """assign[i] = node of sample i  ->  one sorted int64 index array per node."""
    # A stable argsort keeps the indices of each node in ascending order, so no per-node sort.
    order = np.argsort(assign, kind="stable").astype(np.int64, copy=False)
    sizes = np.bincount(assign, minlength=num_nodes)
    return list(np.split(order, np.cumsum(sizes)[:-1]))


def _split_counts(proportions: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """Cut ``totals[c]`` items into pieces proportional to ``proportions[c]`` (rows sum to 1)
    the Hsu et al. / FedLab way: cut points at floor(cumsum(p) * total). Returns counts [C, N]."""
    bounds = np.floor(np.cumsum(proportions, axis=1) * totals[:, None]).astype(np.int64)
    # The last cut is the total by definition; rounding in cumsum must not lose a sample.
    bounds[:, -1] = totals
    bounds = np.maximum.accumulate(np.minimum(bounds, totals[:, None]), axis=1)
    return np.diff(bounds, axis=1, prepend=0)


def _alpha(alpha: Any) -> float:
    return check_float(
        "alpha",
        alpha,
        positive=True,
        hint="alpha is the Dirichlet concentration: small (0.1) = very skewed, "
        "large (100) = nearly iid",
    )


@PARTITIONERS.register("iid")
def iid(labels: np.ndarray, num_nodes: int, *, seed: int) -> list[np.ndarray]:
    """Uniformly random split into equal parts (sizes differ by at most one).

    >>> import numpy as np
    >>> [len(p) for p in iid(np.array([0, 1, 0, 1, 0, 1, 0]), 3, seed=0)]
    [3, 2, 2]
    """
    y = check_labels(labels)
    num_nodes = check_num_nodes(num_nodes, len(y))
    rng = np.random.default_rng(check_seed(seed))
    assign = np.empty(len(y), dtype=np.int64)
    # Node i gets len//num_nodes samples, the first len % num_nodes nodes one more.
    sizes = np.full(num_nodes, len(y) // num_nodes)
    sizes[: len(y) % num_nodes] += 1
    assign[rng.permutation(len(y))] = np.repeat(np.arange(num_nodes), sizes)
    return _parts_from_assignment(assign, num_nodes)


@PARTITIONERS.register("dirichlet")
def dirichlet(
    labels: np.ndarray,
    num_nodes: int,
    *,
    seed: int,
    alpha: float,
    min_size: int | None = None,
) -> list[np.ndarray]:
    """Label skew: each class is split among nodes by proportions p ~ Dir(alpha * 1).

    The convention of Hsu et al. 2019 and FedLab: for every class c independently draw
    p_c ~ Dir(alpha, ..., alpha) over the nodes and give node i the share p_c[i] of class c (cut
    points at floor(cumsum(p_c) * n_c) of the shuffled class indices). Small alpha (0.1) gives
    each node few classes; large alpha (100) is close to iid. Sizes are not balanced.

    The whole draw is repeated (at most ``DIRICHLET_MAX_ATTEMPTS`` times, then ValueError) until
    every node has at least ``min_size`` samples. The default ``min_size`` is
    ``max(1, min(10, len(labels) // (2 * num_nodes)))``: at most 10 as in FedLab, never more
    than half the mean node size (requiring the mean itself is almost never met by a Dirichlet
    draw), and at least 1 so that no node is empty. Pass ``min_size=0`` to allow empty nodes.

    >>> import numpy as np
    >>> y = np.repeat(np.arange(4), 25)
    >>> parts = dirichlet(y, 5, seed=0, alpha=0.5)
    >>> sum(len(p) for p in parts), min(len(p) for p in parts) >= 5
    (100, True)
    """
    y = check_labels(labels)
    num_nodes = check_num_nodes(num_nodes, len(y))
    alpha = _alpha(alpha)
    rng = np.random.default_rng(check_seed(seed))
    if min_size is None:
        min_size = max(1, min(10, len(y) // (2 * num_nodes)))
    else:
        min_size = check_int("min_size", min_size, minimum=0, hint="use 0 to allow empty nodes")
        if min_size * num_nodes > len(y):
            raise ValueError(
                f"min_size={min_size} with {num_nodes} nodes needs {min_size * num_nodes} "
                f"samples but there are only {len(y)}; lower min_size or use fewer nodes"
            )
    classes, y_idx = np.unique(y, return_inverse=True)
    # Shuffling each class once is enough: rejection depends only on the proportions, so the
    # accepted split is still a uniformly random assignment of the class's samples.
    by_class = np.argsort(y_idx, kind="stable")
    class_sizes = np.bincount(y_idx, minlength=len(classes))
    starts = np.concatenate([[0], np.cumsum(class_sizes)[:-1]])
    for s, n_c in zip(starts, class_sizes, strict=True):
        by_class[s : s + n_c] = rng.permutation(by_class[s : s + n_c])
    conc = np.full(num_nodes, alpha)
    best = -1
    for _ in range(DIRICHLET_MAX_ATTEMPTS):
        p = rng.dirichlet(conc, size=len(classes))  # [C, N]
        if not np.all(np.isfinite(p)):  # defensive: very small alpha can underflow
            continue
        counts = _split_counts(p, class_sizes)
        smallest = int(counts.sum(axis=0).min())
        if smallest >= min_size:
            break
        best = max(best, smallest)
    else:
        raise ValueError(
            f"dirichlet partition with alpha={alpha}: no draw in {DIRICHLET_MAX_ATTEMPTS} gave "
            f"every one of the {num_nodes} nodes at least min_size={min_size} samples (best "
            f"smallest node: {best}) with {len(classes)} classes and {len(y)} samples; use a "
            f"larger alpha, fewer nodes, or a smaller min_size"
        )
    # Sample at position j of class c's shuffled block goes to the node whose cut covers j.
    node_of_slot = np.concatenate(
        [np.repeat(np.arange(num_nodes), counts[c]) for c in range(len(classes))]
    )
    assign = np.empty(len(y), dtype=np.int64)
    assign[by_class] = node_of_slot
    return _parts_from_assignment(assign, num_nodes)


@PARTITIONERS.register("shards")
def shards(
    labels: np.ndarray, num_nodes: int, *, seed: int, classes_per_node: int = 2
) -> list[np.ndarray]:
    """Pathological non-iid split of McMahan et al. 2017: each node gets k label-sorted shards.

    Sort the samples by label (ties in random order), cut them into ``num_nodes * k`` contiguous
    shards with ``np.array_split`` (when the count does not divide, the first
    ``len(labels) % (num_nodes * k)`` shards hold one sample more), shuffle the shards and deal
    k to each node. A node sees at most k classes when every class's count is a multiple of
    the shard size; otherwise a shard can straddle two classes and a node can see up to 2k.
    Two shards of the same class can land on one node, giving it fewer than k classes.

    >>> import numpy as np
    >>> y = np.repeat(np.arange(10), 6)
    >>> parts = shards(y, 5, seed=0, classes_per_node=2)
    >>> [len(set(y[p])) <= 2 for p in parts]
    [True, True, True, True, True]
    """
    y = check_labels(labels)
    num_nodes = check_num_nodes(num_nodes, len(y))
    k = check_int(
        "classes_per_node", classes_per_node, minimum=1, hint="give each node at least 1 shard"
    )
    rng = np.random.default_rng(check_seed(seed))
    num_classes = len(np.unique(y))
    if k > num_classes:
        raise ValueError(
            f"classes_per_node={k} exceeds the number of classes in labels ({num_classes}); "
            f"use classes_per_node <= {num_classes}"
        )
    num_shards = num_nodes * k
    if num_shards > len(y):
        raise ValueError(
            f"classes_per_node={k} with {num_nodes} nodes needs {num_shards} shards but there "
            f"are only {len(y)} samples; lower classes_per_node or use fewer nodes"
        )
    perm = rng.permutation(len(y))
    order = perm[np.argsort(y[perm], kind="stable")]
    shard_sizes = np.full(num_shards, len(y) // num_shards)
    shard_sizes[: len(y) % num_shards] += 1
    shard_of_slot = np.repeat(np.arange(num_shards), shard_sizes)
    node_of_shard = np.empty(num_shards, dtype=np.int64)
    node_of_shard[rng.permutation(num_shards)] = np.arange(num_shards) // k
    assign = np.empty(len(y), dtype=np.int64)
    assign[order] = node_of_shard[shard_of_slot]
    return _parts_from_assignment(assign, num_nodes)


PARTITIONERS.add("pathological", shards, "alias of 'shards' (McMahan et al. 2017)")


@PARTITIONERS.register("class_disjoint")
def class_disjoint(
    labels: np.ndarray, num_nodes: int, *, seed: int, groups: int
) -> list[np.ndarray]:
    """Nodes form ``groups`` groups that see disjoint sets of classes; iid within a group.

    Nodes are split into contiguous groups (``np.array_split(range(num_nodes), groups)``) and
    the sorted distinct labels into as many contiguous class sets (``np.array_split``), so group
    g owns class set g; the samples of that set are shuffled and split evenly among the group's
    nodes.

    >>> import numpy as np
    >>> y = np.repeat(np.arange(4), 5)
    >>> parts = class_disjoint(y, 4, seed=0, groups=2)
    >>> [sorted(set(y[p].tolist())) for p in parts]
    [[0, 1], [0, 1], [2, 3], [2, 3]]
    """
    y = check_labels(labels)
    num_nodes = check_num_nodes(num_nodes, len(y))
    g = check_int("groups", groups, minimum=1, hint="use at least one group")
    rng = np.random.default_rng(check_seed(seed))
    classes = np.unique(y)
    if g > len(classes):
        raise ValueError(
            f"groups={g} exceeds the number of classes in labels ({len(classes)}): each group "
            f"needs a class of its own; use groups <= {len(classes)}"
        )
    if g > num_nodes:
        raise ValueError(
            f"groups={g} exceeds num_nodes={num_nodes}: each group needs a node; use "
            f"groups <= {num_nodes}"
        )
    assign = np.empty(len(y), dtype=np.int64)
    for class_set, nodes in zip(
        np.array_split(classes, g), np.array_split(np.arange(num_nodes), g), strict=True
    ):
        idx = np.flatnonzero(np.isin(y, class_set))
        if len(idx) < len(nodes):
            raise ValueError(
                f"groups={g}: the group of nodes {nodes[0]}..{nodes[-1]} owns classes "
                f"{class_set.tolist()} with only {len(idx)} samples for {len(nodes)} nodes; "
                f"use fewer groups or fewer nodes"
            )
        sizes = np.full(len(nodes), len(idx) // len(nodes))
        sizes[: len(idx) % len(nodes)] += 1
        assign[rng.permutation(idx)] = np.repeat(nodes, sizes)
    return _parts_from_assignment(assign, num_nodes)


@PARTITIONERS.register("label_groups")
def label_groups(
    labels: np.ndarray, num_nodes: int, *, seed: int, groups: Sequence[Sequence[int]]
) -> list[np.ndarray]:
    """Nodes form groups that hold given, possibly overlapping, label sets (OCFL's clusters).

    Nodes are split into ``len(groups)`` contiguous groups
    (``np.array_split(range(num_nodes), len(groups))``); the nodes of group g see the labels
    ``groups[g]`` only. Overlapping labels are *shared*, not copied: the shuffled samples of
    each label are dealt evenly to all the nodes of all the groups that hold it (a label held by
    two groups of five nodes gives each of the ten nodes a tenth of its samples; a remainder
    goes to the holders with the fewest samples so far). Every sample goes to at most one node;
    a label that no group holds is left out.

    >>> import numpy as np
    >>> y = np.repeat(np.arange(4), 6)
    >>> parts = label_groups(y, 4, seed=0, groups=[[0, 1, 2], [1, 2, 3]])
    >>> [sorted(set(y[p].tolist())) for p in parts]
    [[0, 1, 2], [0, 1, 2], [1, 2, 3], [1, 2, 3]]
    >>> [len(p) for p in parts]
    [5, 5, 7, 7]
    """
    y = check_labels(labels)
    num_nodes = check_num_nodes(num_nodes, len(y))
    rng = np.random.default_rng(check_seed(seed))
    present = np.unique(y)
    hint = "give a list of label lists, e.g. groups = [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]"
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence) or not groups:
        raise ValueError(f"groups must be a non-empty list of label lists, got {groups!r}; {hint}")
    if len(groups) > num_nodes:
        raise ValueError(
            f"groups has {len(groups)} label sets but num_nodes={num_nodes}: each group needs a "
            f"node; use at most {num_nodes} groups"
        )
    sets = []
    for g, group in enumerate(groups):
        if isinstance(group, (str, bytes)) or not isinstance(group, Sequence) or not group:
            raise ValueError(f"groups[{g}] must be a non-empty list of labels, got {group!r}")
        members = [check_int(f"groups[{g}] entries", c, minimum=0) for c in group]
        if len(set(members)) != len(members):
            raise ValueError(f"groups[{g}] = {list(group)} names a label twice; list each once")
        absent = sorted(set(members) - set(present.tolist()))
        if absent:
            raise ValueError(
                f"groups[{g}] names label(s) {absent} that labels do not contain (classes "
                f"present: {present.tolist()}); use labels of the dataset"
            )
        sets.append(members)
    node_groups = np.array_split(np.arange(num_nodes), len(sets))
    assign = np.full(len(y), -1, dtype=np.int64)
    totals = np.zeros(num_nodes, dtype=np.int64)
    for c in present.tolist():
        holders = np.concatenate([nodes for nodes, s in zip(node_groups, sets) if c in s]
                                 + [np.empty(0, np.int64)])
        if len(holders) == 0:
            continue
        idx = rng.permutation(np.flatnonzero(y == c))
        sizes = np.full(len(holders), len(idx) // len(holders))
        sizes[np.argsort(totals[holders], kind="stable")[: len(idx) % len(holders)]] += 1
        assign[idx] = np.repeat(holders, sizes)
        totals[holders] += sizes
    if totals.min() == 0:
        raise ValueError(
            f"groups: node {int(np.argmin(totals))} gets no sample (its group's labels have "
            f"fewer samples than holders); use fewer nodes or larger label sets"
        )
    kept = np.flatnonzero(assign >= 0)
    parts = _parts_from_assignment(assign[kept], num_nodes)
    return [kept[p] for p in parts]


@PARTITIONERS.register("quantity_skew")
def quantity_skew(
    labels: np.ndarray, num_nodes: int, *, seed: int, alpha: float, min_size: int = 1
) -> list[np.ndarray]:
    """Quantity skew: label-iid, but node sizes follow q ~ Dir(alpha * 1).

    Every node first gets ``min_size`` samples (default 1, so no node is empty); the remaining
    ``len(labels) - num_nodes * min_size`` are cut in proportions q (cut points at
    floor(cumsum(q) * remaining), as in :func:`dirichlet`). Which samples a node gets is
    uniformly random, so each node's label distribution matches the global one in expectation.

    >>> import numpy as np
    >>> parts = quantity_skew(np.zeros(100, dtype=int), 4, seed=0, alpha=0.5)
    >>> sum(len(p) for p in parts), min(len(p) for p in parts) >= 1
    (100, True)
    """
    y = check_labels(labels)
    num_nodes = check_num_nodes(num_nodes, len(y))
    alpha = _alpha(alpha)
    min_size = check_int("min_size", min_size, minimum=0, hint="use 0 to allow empty nodes")
    if min_size * num_nodes > len(y):
        raise ValueError(
            f"min_size={min_size} with {num_nodes} nodes needs {min_size * num_nodes} samples "
            f"but there are only {len(y)}; lower min_size or use fewer nodes"
        )
    rng = np.random.default_rng(check_seed(seed))
    q = rng.dirichlet(np.full(num_nodes, alpha))
    if not np.all(np.isfinite(q)):  # defensive: numpy handles tiny alpha, but never trust NaN
        raise ValueError(f"alpha={alpha} is too small to draw node sizes; use a larger alpha")
    rest = len(y) - min_size * num_nodes
    sizes = min_size + _split_counts(q[None, :], np.array([rest]))[0]
    assign = np.empty(len(y), dtype=np.int64)
    assign[rng.permutation(len(y))] = np.repeat(np.arange(num_nodes), sizes)
    return _parts_from_assignment(assign, num_nodes)


def _check_parts(parts: Any, num_samples: int, num_nodes: int, name: str) -> list[np.ndarray]:
    """A partitioner's output as sorted int64 arrays, or ValueError; guards user partitioners."""
    if not isinstance(parts, Sequence) or len(parts) != num_nodes:
        got = len(parts) if isinstance(parts, Sequence) else type(parts).__name__
        raise ValueError(
            f"partitioner {name!r} must return a list of {num_nodes} index arrays, got {got}"
        )
    out = []
    for i, p in enumerate(parts):
        a = np.asarray(p)
        if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
            raise ValueError(
                f"partitioner {name!r}: part {i} must be a 1-D integer index array, got "
                f"shape {a.shape} dtype {a.dtype}"
            )
        if a.size and (a.min() < 0 or a.max() >= num_samples):
            raise ValueError(
                f"partitioner {name!r}: part {i} has indices outside 0..{num_samples - 1}"
            )
        out.append(np.sort(a).astype(np.int64, copy=False))
    flat = np.concatenate(out) if out else np.empty(0, np.int64)
    if len(np.unique(flat)) != len(flat):
        raise ValueError(f"partitioner {name!r} gave some sample to more than one node")
    return out


def partition(
    name: str, labels: np.ndarray, num_nodes: int, *, seed: int, **params: Any
) -> list[np.ndarray]:
    """Split ``labels`` among ``num_nodes`` nodes with the partitioner registered as ``name``.

    Unknown parameters and missing required ones raise ValueError listing what is accepted; the
    result is checked (one sorted int64 array per node, no sample twice).

    >>> import numpy as np
    >>> y = np.repeat(np.arange(3), 10)
    >>> [len(p) for p in partition("shards", y, 3, seed=0, classes_per_node=1)]
    [10, 10, 10]
    >>> partition("dirichlet", y, 3, seed=0, alhpa=0.1)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: partitioner 'dirichlet' got unexpected parameter(s) 'alhpa'; accepted: alpha, ...
    """
    fn = PARTITIONERS.get(name)
    check_kwargs(fn, params, what=f"partitioner {name!r}", fixed=("labels", "num_nodes", "seed"))
    y = check_labels(labels)
    num_nodes = check_num_nodes(num_nodes, len(y))
    seed = check_seed(seed)
    return _check_parts(fn(y, num_nodes, seed=seed, **params), len(y), num_nodes, name)


def partition_stats(
    parts: Sequence[np.ndarray], labels: np.ndarray, num_classes: int | None = None
) -> dict[str, Any]:
    """Sizes and label heterogeneity of a partition, as plain Python numbers and lists.

    Heterogeneity is the total-variation distance between each node's label distribution and
    the pooled distribution of all assigned samples: 0 = every node looks like the whole,
    1 = nodes see no class in common with the whole (empty nodes are left out of the mean).

    Keys: ``num_nodes``, ``sizes``, ``min_size``, ``max_size``, ``mean_size``, ``std_size``,
    ``label_counts`` ([node][class]), ``classes_per_node``, ``tv_per_node`` (NaN for empty
    nodes), ``mean_tv``, ``max_tv``.

    >>> import numpy as np
    >>> y = np.array([0, 0, 1, 1])
    >>> partition_stats([np.array([0, 1]), np.array([2, 3])], y, 2)["mean_tv"]
    0.5
    """
    y = check_labels(labels)
    if num_classes is None:
        num_classes = int(y.max()) + 1
    num_classes = check_int("num_classes", num_classes, minimum=1)
    if y.max() >= num_classes:
        raise ValueError(
            f"num_classes={num_classes} but labels contain class {int(y.max())}; pass "
            f"num_classes > {int(y.max())}"
        )
    n = len(parts)
    arrays = [np.asarray(p, dtype=np.int64) for p in parts]
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    flat = np.concatenate(arrays) if arrays else np.empty(0, np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= len(y)):
        raise ValueError(f"parts hold indices outside 0..{len(y) - 1}: they do not match labels")
    node_of = np.repeat(np.arange(n), lengths)
    counts = np.bincount(node_of * num_classes + y[flat], minlength=n * num_classes).reshape(
        n, num_classes
    )
    total = counts.sum(axis=0)
    pooled = total / max(total.sum(), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        dist = counts / lengths[:, None]
    tv = 0.5 * np.abs(dist - pooled).sum(axis=1)
    tv[lengths == 0] = np.nan
    nonempty = tv[lengths > 0]
    return {
        "num_nodes": n,
        "sizes": lengths.tolist(),
        "min_size": int(lengths.min()) if n else 0,
        "max_size": int(lengths.max()) if n else 0,
        "mean_size": float(lengths.mean()) if n else 0.0,
        "std_size": float(lengths.std()) if n else 0.0,
        "label_counts": counts.tolist(),
        "classes_per_node": (counts > 0).sum(axis=1).tolist(),
        "tv_per_node": tv.tolist(),
        "mean_tv": float(nonempty.mean()) if len(nonempty) else float("nan"),
        "max_tv": float(nonempty.max()) if len(nonempty) else float("nan"),
    }
