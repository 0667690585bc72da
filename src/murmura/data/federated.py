"""A dataset split among nodes, in the form the vectorized engine consumes.

The engine draws every node's minibatch at once: sample positions ``pos[i, b]`` in
``0..sizes[i]-1`` become dataset indices ``index_table[i, pos[i, b]]``, one gather for the whole
swarm. Rows shorter than the longest are padded with index 0, which is never read when
positions stay below ``sizes[i]``.

>>> from murmura.data import federate
>>> fed = federate("digits", num_nodes=4, partition="dirichlet", alpha=0.5, seed=0)
>>> fed.num_nodes, fed.index_table.shape[0], int(fed.sizes.sum())
(4, 4, 1257)
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from murmura.data._checks import check_int
from murmura.data.dataset import DATASETS, Dataset, load_dataset
from murmura.data.partition import PARTITIONERS, partition_stats
from murmura.data.partition import partition as _partition


@dataclass(repr=False)
class FederatedData:
    """A :class:`Dataset` plus each node's training indices.

    ``parts[i]`` is node i's sorted int64 index array into ``dataset.train_x``;
    ``index_table`` is ``[num_nodes, max_size]`` int64, row i = ``parts[i]`` padded with 0;
    ``sizes[i] = len(parts[i])``. Build one with :func:`federate` or :meth:`from_parts`.

    >>> import numpy as np
    >>> from murmura.data import load_dataset
    >>> fed = FederatedData.from_parts(load_dataset("digits"), [np.arange(3), np.arange(3, 5)])
    >>> fed.index_table.tolist(), fed.sizes.tolist()
    ([[0, 1, 2], [3, 4, 0]], [3, 2])
    """

    dataset: Dataset
    parts: list[np.ndarray]
    index_table: torch.Tensor
    sizes: torch.Tensor
    test_parts: list[np.ndarray] | None = None  # each node's own held-out samples (holdout)
    # more per-node sample sets by name, (index_table, sizes) like the training one: an
    # active learner's unlabelled pool, read by tasks that declare extra_batches
    pools: dict[str, tuple[torch.Tensor, torch.Tensor]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.parts)
        if self.index_table.ndim != 2 or self.index_table.shape[0] != n:
            raise ValueError(
                f"index_table must be [num_nodes={n}, max_size], got "
                f"{tuple(self.index_table.shape)}"
            )
        if tuple(self.sizes.shape) != (n,):
            raise ValueError(f"sizes must be [num_nodes={n}], got {tuple(self.sizes.shape)}")

    @classmethod
    def from_parts(cls, dataset: Dataset, parts: Sequence[np.ndarray]) -> FederatedData:
        """Build the padded index table from per-node index arrays."""
        arrays = [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
        if not arrays:
            raise ValueError("parts is empty: a federation needs at least one node")
        for i, a in enumerate(arrays):
            if a.ndim != 1 or (a.size and (a.min() < 0 or a.max() >= dataset.num_train)):
                raise ValueError(
                    f"parts[{i}] must be a 1-D array of indices in 0..{dataset.num_train - 1}"
                )
        sizes = np.array([len(a) for a in arrays], dtype=np.int64)
        table = np.zeros((len(arrays), int(sizes.max())), dtype=np.int64)
        for i, a in enumerate(arrays):
            table[i, : len(a)] = a
        return cls(dataset, arrays, torch.from_numpy(table), torch.from_numpy(sizes))

    def with_pool(self, name: str, parts: Sequence[np.ndarray]) -> FederatedData:
        """A copy with one more per-node sample set, ``name`` (indices into the training set,
        one array per node), from which a task declaring ``extra_batches = {name: m}`` gets
        ``m`` samples' features at every step (an active learner's unlabelled pool).

        >>> import numpy as np
        >>> from murmura.data import load_dataset
        >>> fed = FederatedData.from_parts(load_dataset("digits"), [np.arange(3), np.arange(3, 5)])
        >>> fed.with_pool("unlabelled", [np.arange(5, 9), np.arange(9, 10)]).pools[
        ...     "unlabelled"][1].tolist()
        [4, 1]
        """
        if len(parts) != self.num_nodes:
            raise ValueError(f"pool {name!r}: give one index array per node ({self.num_nodes}), "
                             f"got {len(parts)}")
        pool = FederatedData.from_parts(self.dataset, parts)
        return dataclasses.replace(self, pools={**self.pools,
                                                name: (pool.index_table, pool.sizes)})

    def holdout(self, fraction: float, seed: int = 0) -> FederatedData:
        """Each node keeps ``fraction`` of its own samples (at least one, at most all but one)
        out of training, as its personal test set (``test_parts``, indices into the training
        set): personalized methods are scored on the distribution each client has. The split
        is a random one per node, keyed by (seed, node).

        >>> from murmura.data import federate
        >>> fed = federate("digits", 4, seed=0).holdout(0.3)
        >>> [len(p) for p in fed.test_parts], fed.sizes.tolist()
        ([94, 94, 94, 94], [221, 220, 220, 220])
        """
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not (
                0 < fraction < 1):
            raise ValueError(
                f"local_test_fraction must be a number strictly between 0 and 1, got "
                f"{fraction!r} (e.g. 0.3 keeps 30% of each node's samples for its own test)"
            )
        train, test = [], []
        for i, part in enumerate(self.parts):
            if len(part) < 2:
                raise ValueError(
                    f"node {i} holds {len(part)} sample(s): a personal test split needs at "
                    "least 2 per node (use fewer nodes or a partition with a minimum size)"
                )
            order = np.random.default_rng([int(seed), i, 0x5E1F]).permutation(len(part))
            k = min(len(part) - 1, max(1, round(fraction * len(part))))
            test.append(np.sort(part[order[:k]]))
            train.append(np.sort(part[order[k:]]))
        return dataclasses.replace(FederatedData.from_parts(self.dataset, train),
                                   test_parts=test, pools=self.pools)

    @property
    def num_nodes(self) -> int:
        return len(self.parts)

    def to(self, device: torch.device | str) -> FederatedData:
        """A copy whose tensors (the dataset's too) are on ``device``; ``parts`` stay numpy."""
        return dataclasses.replace(
            self,
            dataset=self.dataset.to(device),
            index_table=self.index_table.to(device),
            sizes=self.sizes.to(device),
            pools={k: (t.to(device), z.to(device)) for k, (t, z) in self.pools.items()},
        )

    def node_data(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Node i's training features and labels (a copy; for the unvectorized paths)."""
        idx = torch.as_tensor(self.parts[i], device=self.dataset.train_x.device)
        return self.dataset.train_x[idx], self.dataset.train_y[idx]

    def label_counts(self) -> torch.Tensor:
        """float ``[num_nodes, num_classes]``: each node's training samples of each class."""
        labels = self.dataset.train_y.cpu()
        if labels.ndim != 1:
            raise ValueError(
                f"label counts need one class label per sample; {self.dataset.name!r} has "
                f"targets of shape {tuple(labels.shape[1:])} per sample"
            )
        classes = self.dataset.num_classes
        table, sizes = self.index_table.cpu(), self.sizes.cpu()
        valid = torch.arange(table.shape[1]) < sizes.unsqueeze(1)  # padding is not a sample
        node = torch.arange(self.num_nodes).unsqueeze(1).expand_as(table)
        cell = (node * classes + labels[table])[valid]
        return torch.bincount(cell, minlength=self.num_nodes * classes).view(
            self.num_nodes, classes).to(torch.float32)

    def stats(self) -> dict[str, Any]:
        """:func:`murmura.data.partition_stats` of this split."""
        return partition_stats(
            self.parts, self.dataset.partition_labels.cpu().numpy(), self.dataset.num_classes
        )

    def __repr__(self) -> str:
        s = self.sizes
        return (
            f"FederatedData(dataset={self.dataset.name!r}, num_nodes={self.num_nodes}, "
            f"sizes {int(s.min())}..{int(s.max())}, device={self.index_table.device})"
        )


def federate(
    dataset: Dataset | str,
    num_nodes: int,
    partition: str = "iid",
    *,
    seed: int = 0,
    root: str | os.PathLike[str] | None = None,
    dataset_params: Mapping[str, Any] | None = None,
    local_test_fraction: float | None = None,
    **partition_params: Any,
) -> FederatedData:
    """Split a dataset among ``num_nodes`` nodes.

    ``dataset`` is a :class:`Dataset` or a registered name, loaded with ``root`` and
    ``dataset_params``; when loading by name, ``num_nodes`` and ``seed`` are also passed to
    builders that take them (``synthetic``) unless ``dataset_params`` sets them, so one seed
    drives the whole federation. ``local_test_fraction`` holds that fraction of each node's
    samples out as its personal test set (:meth:`FederatedData.holdout`).
    ``partition="natural"`` uses the dataset's own per-node split (``synthetic`` has one; it
    must have ``num_nodes`` nodes); any other name is a registered partitioner applied to
    ``train_y`` with ``partition_params``.

    >>> fed = federate("synthetic", 8, "natural", seed=3, dataset_params={"heterogeneity": 0.5})
    >>> fed.num_nodes, fed.sizes.tolist()[:3]
    (8, [80, 80, 80])
    """
    num_nodes = check_int("num_nodes", num_nodes, minimum=1, hint="use at least one node")
    if isinstance(dataset, str):
        params = dict(dataset_params or {})
        accepted = inspect.signature(DATASETS.get(dataset)).parameters
        for key, value in (("num_nodes", num_nodes), ("seed", seed)):
            if key in accepted and key not in params:
                params[key] = value
        dataset = load_dataset(dataset, root=root, **params)
    elif not isinstance(dataset, Dataset):
        raise TypeError(
            f"dataset must be a murmura.data.Dataset or a registered name, got "
            f"{type(dataset).__name__}"
        )
    elif dataset_params:
        raise ValueError(
            "dataset_params only applies when dataset is given by name; this dataset is "
            "already built"
        )

    if isinstance(partition, str) and partition.lower() == "natural":
        if partition_params:
            raise ValueError(
                f"partition='natural' takes no parameters, got {', '.join(partition_params)}"
            )
        nat = dataset.natural_partition
        if nat is None:
            raise ValueError(
                f"partition='natural': dataset {dataset.name!r} has no natural per-node split; "
                f"choose one of: {', '.join(PARTITIONERS.names())}"
            )
        if len(nat) != num_nodes:
            raise ValueError(
                f"partition='natural': dataset {dataset.name!r} comes split into {len(nat)} "
                f"nodes but num_nodes={num_nodes}; use num_nodes={len(nat)} or regenerate the "
                f"dataset with num_nodes={num_nodes}"
            )
        return _held_out(FederatedData.from_parts(dataset, nat), local_test_fraction, seed)

    parts = _partition(
        partition, dataset.partition_labels.cpu().numpy(), num_nodes, seed=seed,
        **partition_params
    )
    return _held_out(FederatedData.from_parts(dataset, parts), local_test_fraction, seed)


def _held_out(data: FederatedData, fraction: float | None, seed: int) -> FederatedData:
    return data if fraction is None else data.holdout(fraction, seed)
