import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = Path(__file__).resolve().parents[1]


def fashion_mnist_dir() -> Path | None:
    for candidate in (
        os.environ.get("MURMURA_DATA"),
        REPO.parent / "shared" / "datasets" / "fashion-mnist",
    ):
        if candidate and (Path(candidate) / "train-images-idx3-ubyte.gz").exists():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def fmnist_root() -> Path:
    root = fashion_mnist_dir()
    if root is None:
        pytest.skip("Fashion-MNIST files not found (set MURMURA_DATA)")
    return root
