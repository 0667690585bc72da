"""A character-level text dataset that ships with Python itself: the reference manual's topics
(``pydoc_data.topics``, the text ``help()`` shows), one topic per node.

Each sample is ``context`` symbols and its targets the same window shifted by one (the next
symbol at every position), for the ``next_token`` task. Symbols: newline and printable ASCII
(96); anything else reads as a space. Topics are dealt to nodes round-robin by name, so every
node holds a few subjects of the manual (a natural, heterogeneous split); the last tenth of each
topic's windows is the test set.

>>> from murmura.data import load_dataset
>>> ds = load_dataset("python_docs", num_nodes=8, context=16)
>>> ds.task, ds.num_classes, tuple(ds.train_x.shape[1:]), len(ds.natural_partition)
('next_token', 96, (16,), 8)
"""

from __future__ import annotations

import numpy as np
import torch

from murmura.data._checks import check_int
from murmura.data.dataset import DATASETS, Dataset

VOCAB = 96  # newline, then chr(32)..chr(126)


def encode(text: str) -> np.ndarray:
    """Symbol ids: newline 0, printable ASCII ``c`` as ``ord(c) - 31``, anything else a space."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
    ids = np.where((codes >= 32) & (codes <= 126), codes - 31, 1)
    ids[codes == 10] = 0
    return ids


def decode(ids: np.ndarray | torch.Tensor) -> str:
    return "".join("\n" if int(i) == 0 else chr(int(i) + 31) for i in ids)


@DATASETS.register("python_docs", "Python's reference manual, character level: one topic per "
                   "node, next-symbol targets")
def python_docs(*, num_nodes: int = 16, context: int = 32) -> Dataset:
    from pydoc_data.topics import topics

    names = sorted(topics)
    num_nodes = check_int("num_nodes", num_nodes, minimum=1,
                          hint=f"one node per topic at most ({len(names)} topics)")
    context = check_int("context", context, minimum=2, hint="e.g. context = 32")
    if num_nodes > len(names):
        raise ValueError(
            f"python_docs has {len(names)} topics, one node at least each: use num_nodes <= "
            f"{len(names)}"
        )
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    owner: list[np.ndarray] = []
    for index, name in enumerate(names):
        ids = encode(topics[name])
        windows = len(ids) // (context + 1)
        if windows < 2:
            continue
        blocks = ids[: windows * (context + 1)].reshape(windows, context + 1)
        cut = max(1, windows - max(1, windows // 10))
        train.append(blocks[:cut])
        test.append(blocks[cut:])
        owner.append(np.full(cut, index % num_nodes))
    train_blocks, test_blocks = np.concatenate(train), np.concatenate(test)
    owners = np.concatenate(owner)
    parts = [np.flatnonzero(owners == node) for node in range(num_nodes)]

    def split(blocks: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        tensor = torch.from_numpy(np.ascontiguousarray(blocks))
        return tensor[:, :-1].contiguous(), tensor[:, 1:].contiguous()

    train_x, train_y = split(train_blocks)
    test_x, test_y = split(test_blocks)
    return Dataset("python_docs", train_x, train_y, test_x, test_y, num_classes=VOCAB,
                   natural_partition=parts, task="next_token")
