"""The in-memory dataset every part of murmura consumes, and the dataset registry.

A dataset is whole tensors, not a loader: the engine gathers every node's minibatch with one
indexing operation, so data must already be normalized tensors on the right device.

>>> import torch
>>> from murmura.data import DATASETS, Dataset, load_dataset
>>> @DATASETS.register("tiny")
... def tiny(*, size: int = 4) -> Dataset:
...     '''Four points on a line.'''
...     x = torch.arange(size, dtype=torch.float32)[:, None]
...     y = torch.arange(size) % 2
...     return Dataset("tiny", x, y, x, y, num_classes=2)
>>> load_dataset("tiny", size=6).feature_shape
(1,)
>>> DATASETS._entries.pop("tiny").name  # tidy up the doctest
'tiny'
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from murmura.data._checks import check_kwargs
from murmura.registry import Registry

DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset")


@dataclass(repr=False)
class Dataset:
    """Train and test tensors of one classification task.

    ``train_x``/``test_x`` are float tensors ``[N, *feature_shape]`` (float32 for the
    built-ins), already normalized; ``train_y``/``test_y`` are int64 ``[N]`` in
    ``0..num_classes-1``. ``natural_partition`` holds per-node train indices when the data
    comes split by node (the synthetic dataset), else None. Shapes, dtypes and label ranges are
    checked on construction.

    >>> import torch
    >>> ds = Dataset("xor", torch.zeros(4, 2), torch.tensor([0, 1, 1, 0]),
    ...              torch.zeros(2, 2), torch.tensor([0, 1]), num_classes=2)
    >>> ds.feature_shape, ds.num_train, ds.num_test
    ((2,), 4, 2)
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    natural_partition: list[np.ndarray] | None = None
    task: str = "classification"

    def __post_init__(self) -> None:
        sequence = self.task == "next_token"
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                raise TypeError(f"dataset {self.name!r}: {split}_x and {split}_y must be tensors")
            if x.ndim < 1 or not (x.is_floating_point() or sequence and x.dtype == torch.int64):
                raise ValueError(
                    f"dataset {self.name!r}: {split}_x must be a float tensor [N, ...] (int64 "
                    f"symbols for a next_token task), got {x.dtype} of shape {tuple(x.shape)}"
                )
            if y.dtype != torch.int64 or y.ndim != (2 if sequence else 1):
                shape = "[N, positions]" if sequence else "[N]"
                raise ValueError(
                    f"dataset {self.name!r}: {split}_y must be an int64 tensor {shape} for a "
                    f"{self.task} task, got {y.dtype} of shape {tuple(y.shape)}"
                )
            if x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"dataset {self.name!r}: {split}_x has {x.shape[0]} samples but {split}_y "
                    f"has {y.shape[0]}"
                )
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise ValueError(
                    f"dataset {self.name!r}: {split}_y must lie in 0..{self.num_classes - 1} "
                    f"(num_classes={self.num_classes}), got {int(y.min())}..{int(y.max())}"
                )
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise ValueError(
                f"dataset {self.name!r}: train features {tuple(self.train_x.shape[1:])} and "
                f"test features {tuple(self.test_x.shape[1:])} differ"
            )
        if self.natural_partition is not None:
            n = self.train_x.shape[0]
            for i, p in enumerate(self.natural_partition):
                if len(p) and (p.min() < 0 or p.max() >= n):
                    raise ValueError(
                        f"dataset {self.name!r}: natural_partition[{i}] has indices outside "
                        f"0..{n - 1}"
                    )

    @property
    def partition_labels(self) -> torch.Tensor:
        """One class id per training sample, for label-skew partitioners: the label, or for
        a sequence the symbol its last position predicts."""
        return self.train_y if self.train_y.ndim == 1 else self.train_y[:, -1]

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. ``(1, 28, 28)`` or ``(64,)``."""
        return tuple(self.train_x.shape[1:])

    @property
    def num_train(self) -> int:
        return int(self.train_x.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.test_x.shape[0])

    def to(self, device: torch.device | str) -> Dataset:
        """A copy with the four tensors on ``device`` (``natural_partition`` stays numpy)."""
        return dataclasses.replace(
            self,
            train_x=self.train_x.to(device),
            train_y=self.train_y.to(device),
            test_x=self.test_x.to(device),
            test_y=self.test_y.to(device),
        )

    def __repr__(self) -> str:
        # The default dataclass repr would print tensor contents.
        nat = "None" if self.natural_partition is None else f"<{len(self.natural_partition)} nodes>"
        return (
            f"Dataset(name={self.name!r}, train={self.num_train}, test={self.num_test}, "
            f"feature_shape={self.feature_shape}, num_classes={self.num_classes}, "
            f"device={self.train_x.device}, natural_partition={nat})"
        )


def load_dataset(
    name: str, *, root: str | os.PathLike[str] | None = None, **kwargs: Any
) -> Dataset:
    """Build the dataset registered as ``name`` (see ``DATASETS.describe()``).

    ``root`` is where file-based datasets look first; datasets that read no files (``digits``,
    ``synthetic``) ignore it. Other keyword arguments go to the dataset's builder; unknown ones
    raise ValueError listing the accepted ones.

    >>> ds = load_dataset("digits")
    >>> ds.train_x.shape, ds.num_classes
    (torch.Size([1257, 64]), 10)
    """
    builder = DATASETS.get(name)
    params = inspect.signature(builder).parameters
    if root is not None and "root" in params:
        kwargs["root"] = root
    check_kwargs(builder, kwargs, what=f"dataset {name!r}")
    ds = builder(**kwargs)
    if not isinstance(ds, Dataset):
        raise TypeError(
            f"dataset builder {name!r} returned {type(ds).__name__}, expected murmura.data.Dataset"
        )
    return ds
