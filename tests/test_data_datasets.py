"""Datasets (Fashion-MNIST files, digits, synthetic, torchvision guards) and federate()."""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
import types
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

import murmura.data.datasets as D
from murmura.data import (
    DATASETS,
    DataFormatError,
    DataNotFoundError,
    Dataset,
    FederatedData,
    federate,
    load_dataset,
    partition,
    partition_stats,
)
from murmura.registry import RegistryError

REPO = Path(__file__).resolve().parents[1]
STEMS = list(D.FASHION_MNIST_FILES)


def _shared_fashion_dir() -> Path | None:
    candidates = [REPO.parent / "shared" / "datasets" / "fashion-mnist"]
    if os.environ.get("MURMURA_DATA"):
        env = Path(os.environ["MURMURA_DATA"])
        candidates += [env, env / "fashion-mnist"]
    for c in candidates:
        if D._files_in(c)[0] is not None:
            return c
    return None


FASHION_DIR = _shared_fashion_dir()
needs_fashion = pytest.mark.skipif(FASHION_DIR is None, reason="Fashion-MNIST files not present")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach the network: the one function that does is replaced."""

    def forbidden(url: str, timeout: float = 60.0) -> bytes:
        raise AssertionError(f"a test tried to download {url}")

    monkeypatch.setattr(D, "_fetch_bytes", forbidden)


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every default look-up place points into an empty tmp_path."""
    monkeypatch.setenv("MURMURA_DATA", str(tmp_path / "env"))
    monkeypatch.setattr(D, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "debian")
    monkeypatch.setattr(D, "default_cache_dir", lambda: tmp_path / "cache")
    return tmp_path


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def write_fake_fashion(
    folder: Path, n_train: int = 6, n_test: int = 4, gz: bool = True, fill: int = 0
) -> dict[str, np.ndarray]:
    """Small valid IDX files: image i is filled with (i + fill) % 256, label i % 10."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for stem, n in zip(STEMS, (n_train, n_train, n_test, n_test), strict=True):
        if "images" in stem:
            a = np.broadcast_to(((np.arange(n) + fill) % 256)[:, None, None], (n, 28, 28))
        else:
            a = np.arange(n) % 10
        arrays[stem] = np.ascontiguousarray(a, dtype=np.uint8)
        data = idx_bytes(arrays[stem])
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return arrays


# --- Fashion-MNIST from the real files -----------------------------------------------------


@pytest.fixture(scope="module")
def fashion() -> Dataset:
    assert FASHION_DIR is not None
    return load_dataset("fashion_mnist", root=FASHION_DIR, download=False)


@needs_fashion
def test_fashion_mnist_shapes_labels_and_normalization(fashion: Dataset) -> None:
    assert fashion.train_x.shape == (60000, 1, 28, 28)
    assert fashion.test_x.shape == (10000, 1, 28, 28)
    assert fashion.train_x.dtype == torch.float32 and fashion.train_y.dtype == torch.int64
    assert fashion.feature_shape == (1, 28, 28) and fashion.num_classes == 10
    assert torch.bincount(fashion.train_y).tolist() == [6000] * 10
    assert torch.bincount(fashion.test_y).tolist() == [1000] * 10
    # Standardized with the training set's own statistics.
    assert abs(fashion.train_x.mean().item()) < 0.01
    assert abs(fashion.train_x.std().item() - 1.0) < 0.01
    assert fashion.train_x.min().item() == pytest.approx(-0.2860 / 0.3530, abs=1e-5)


@needs_fashion
def test_fashion_mnist_reload_is_cached_and_independent(fashion: Dataset) -> None:
    again = load_dataset("fashion-mnist", root=FASHION_DIR, download=False)
    assert torch.equal(again.train_x, fashion.train_x)
    again.train_x.zero_()
    again.train_y.zero_()
    third = load_dataset("fashion_mnist", root=FASHION_DIR, download=False)
    assert torch.equal(third.train_x, fashion.train_x)
    assert torch.equal(third.train_y, fashion.train_y)
    assert D._load_fashion_arrays.cache_info().hits >= 2


@needs_fashion
def test_fashion_mnist_found_through_murmura_data(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, fashion: Dataset
) -> None:
    monkeypatch.setenv("MURMURA_DATA", str(FASHION_DIR))
    ds = load_dataset("fashion_mnist", download=False)
    assert torch.equal(ds.test_y, fashion.test_y)


@needs_fashion
def test_federate_fashion_mnist_dirichlet(fashion: Dataset) -> None:
    fed = federate(fashion, 100, "dirichlet", alpha=0.5, seed=0)
    assert fed.num_nodes == 100 and int(fed.sizes.sum()) == 60000
    assert fed.stats()["min_size"] >= 10


# --- Fashion-MNIST look-up, download and parsing, on small fake files ----------------------


def test_fake_files_load_with_documented_normalization(isolated: Path) -> None:
    write_fake_fashion(isolated / "data", fill=255)
    ds = load_dataset("fashion_mnist", root=isolated / "data", download=False)
    assert ds.train_x.shape == (6, 1, 28, 28) and ds.test_x.shape == (4, 1, 28, 28)
    assert ds.train_y.tolist() == [0, 1, 2, 3, 4, 5]
    expected = (torch.tensor([255, 0, 1, 2, 3, 4]) / 255.0 - 0.2860) / 0.3530
    assert torch.allclose(ds.train_x[:, 0, 5, 7], expected, atol=1e-6)


def test_plain_uncompressed_files_are_accepted(isolated: Path) -> None:
    write_fake_fashion(isolated / "plain", gz=False)
    ds = load_dataset("fashion_mnist", root=isolated / "plain", download=False)
    assert ds.num_train == 6


def test_lookup_order_root_then_env_subfolder_then_debian(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_fake_fashion(isolated / "root", n_train=3)
    write_fake_fashion(isolated / "env" / "fashion-mnist", n_train=5)
    write_fake_fashion(isolated / "debian", n_train=7)
    assert load_dataset("fashion_mnist", root=isolated / "root", download=False).num_train == 3
    assert load_dataset("fashion_mnist", download=False).num_train == 5
    # root that lacks the files falls through to the next place
    assert load_dataset("fashion_mnist", root=isolated / "none", download=False).num_train == 5
    monkeypatch.setenv("MURMURA_DATA", str(isolated / "elsewhere"))
    assert load_dataset("fashion_mnist", download=False).num_train == 7


def test_missing_everywhere_lists_every_place_and_never_downloads(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    monkeypatch.setattr(D, "_fetch_bytes", lambda url, timeout=60.0: calls.append(url))
    (isolated / "half").mkdir()
    (isolated / "half" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(DataNotFoundError) as e:
        load_dataset("fashion_mnist", root=isolated / "half", download=False)
    msg = str(e.value)
    for place in ("half", "env", "env/fashion-mnist", "debian", "cache/fashion-mnist"):
        assert str(isolated / place) in msg
    assert "missing train-labels-idx1-ubyte[.gz]" in msg
    for fix in ("root=", "MURMURA_DATA", "apt-get install dataset-fashion-mnist", "download"):
        assert fix in msg
    assert calls == []
    assert isinstance(e.value, FileNotFoundError)


def test_unset_murmura_data_is_reported(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MURMURA_DATA")
    with pytest.raises(DataNotFoundError, match=r"\$MURMURA_DATA \(not set\)"):
        load_dataset("fashion_mnist", download=False)


def test_failed_download_gives_clear_error(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, timeout: float = 60.0) -> bytes:
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(D, "_fetch_bytes", offline)
    with pytest.raises(DataNotFoundError) as e:
        load_dataset("fashion_mnist")
    msg = str(e.value)
    assert "failed" in msg and "no route to host" in msg and D.FASHION_MNIST_URL in msg
    assert str(isolated / "debian") in msg


def test_download_with_wrong_checksum_saves_nothing(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(D, "_fetch_bytes", lambda url, timeout=60.0: b"<html>proxy page</html>")
    with pytest.raises(DataNotFoundError, match="MD5"):
        load_dataset("fashion_mnist")
    cache = isolated / "cache" / "fashion-mnist"
    assert not any(cache.iterdir())


def test_download_verifies_then_caches(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = write_fake_fashion(isolated / "server")
    served = {f"{s}.gz": (isolated / "server" / f"{s}.gz").read_bytes() for s in STEMS}
    monkeypatch.setattr(
        D, "FASHION_MNIST_MD5", {k: hashlib.md5(v).hexdigest() for k, v in served.items()}
    )
    fetched = []

    def serve(url: str, timeout: float = 60.0) -> bytes:
        fetched.append(url)
        return served[url.rsplit("/", 1)[1]]

    monkeypatch.setattr(D, "_fetch_bytes", serve)
    ds = load_dataset("fashion_mnist")
    assert len(fetched) == 4 and all(u.startswith(D.FASHION_MNIST_URL) for u in fetched)
    assert ds.test_y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    load_dataset("fashion_mnist")
    assert len(fetched) == 4, "the second load must come from the cache folder"


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_image_file_gives_clear_error(isolated: Path, gz: bool) -> None:
    write_fake_fashion(isolated / "d", gz=False)
    path = isolated / "d" / "train-images-idx3-ubyte"
    data = path.read_bytes()[:-100]
    if gz:
        path.unlink()
        (isolated / "d" / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    with pytest.raises(DataFormatError, match="truncated") as e:
        load_dataset("fashion_mnist", root=isolated / "d", download=False)
    assert "train-images-idx3-ubyte" in str(e.value)


def test_truncated_gzip_stream_gives_clear_error(isolated: Path) -> None:
    write_fake_fashion(isolated / "d")
    path = isolated / "d" / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:15])
    with pytest.raises(DataFormatError, match="corrupt or truncated gzip"):
        load_dataset("fashion_mnist", root=isolated / "d", download=False)


def test_wrong_magic_number_gives_clear_error(isolated: Path) -> None:
    write_fake_fashion(isolated / "d")
    images = isolated / "d" / "train-images-idx3-ubyte.gz"
    labels = isolated / "d" / "train-labels-idx1-ubyte.gz"
    images.write_bytes(labels.read_bytes())  # a label file where images belong
    with pytest.raises(DataFormatError, match="magic number 0x00000801, expected 0x00000803"):
        load_dataset("fashion_mnist", root=isolated / "d", download=False)
    assert issubclass(DataFormatError, ValueError)


def test_mismatched_counts_give_clear_error(isolated: Path) -> None:
    write_fake_fashion(isolated / "d")
    (isolated / "d" / "train-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.zeros(5, dtype=np.uint8)))
    )
    with pytest.raises(DataFormatError, match="6 images but .* 5 labels"):
        load_dataset("fashion_mnist", root=isolated / "d", download=False)


# --- digits ---------------------------------------------------------------------------------


def test_digits_shapes_range_and_stratified_split() -> None:
    ds = load_dataset("digits", root="/ignored/for/digits")
    assert ds.train_x.shape == (1257, 64) and ds.test_x.shape == (540, 64)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert 0.0 <= ds.train_x.min().item() and ds.train_x.max().item() <= 1.0
    train_frac = torch.bincount(ds.train_y) / ds.num_train
    test_frac = torch.bincount(ds.test_y) / ds.num_test
    assert torch.allclose(train_frac, test_frac, atol=0.01)


def test_digits_is_deterministic() -> None:
    a, b = load_dataset("digits"), load_dataset("digits")
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)


# --- synthetic ------------------------------------------------------------------------------


def test_synthetic_shapes_and_natural_partition() -> None:
    ds = load_dataset("synthetic", num_nodes=7, samples_per_node=50, num_features=12, seed=0)
    assert ds.train_x.shape == (7 * 40, 12) and ds.test_x.shape == (7 * 10, 12)
    assert ds.num_classes == 10 and ds.train_y.dtype == torch.int64
    nat = ds.natural_partition
    assert nat is not None and len(nat) == 7
    assert np.array_equal(np.concatenate(nat), np.arange(280))


def test_synthetic_is_deterministic_and_seed_dependent() -> None:
    a = load_dataset("synthetic", num_nodes=5, seed=3)
    b = load_dataset("synthetic", num_nodes=5, seed=3)
    c = load_dataset("synthetic", num_nodes=5, seed=4)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)
    assert not torch.equal(a.train_x, c.train_x)


def test_synthetic_node_data_does_not_depend_on_num_nodes() -> None:
    few = load_dataset("synthetic", num_nodes=3, seed=1)
    many = load_dataset("synthetic", num_nodes=6, seed=1)
    assert torch.equal(few.train_x, many.train_x[: few.num_train])


def _node_spread(ds: Dataset) -> tuple[float, float]:
    """(mean label TV distance of nodes to the pool, spread of node feature means)."""
    parts = ds.natural_partition
    assert parts is not None
    tv = partition_stats(parts, ds.train_y.numpy(), ds.num_classes)["mean_tv"]
    means = torch.stack([ds.train_x[torch.from_numpy(p)].mean(0) for p in parts])
    return tv, means.std(0).mean().item()


def test_synthetic_heterogeneity_knob_changes_node_distributions() -> None:
    kw = {"num_nodes": 20, "samples_per_node": 250, "seed": 0}
    tv0, spread0 = _node_spread(load_dataset("synthetic", heterogeneity=0.0, **kw))
    tv_half, spread_half = _node_spread(load_dataset("synthetic", heterogeneity=0.5, **kw))
    tv1, spread1 = _node_spread(load_dataset("synthetic", heterogeneity=1.0, **kw))
    # h = 0: only sampling noise (200 samples per node)
    assert tv0 < 0.15 and spread0 < 0.2
    assert tv1 > tv_half > tv0 + 0.1
    assert spread1 > spread_half > 3 * spread0


def test_synthetic_quantity_skew_varies_node_sizes() -> None:
    ds = load_dataset("synthetic", num_nodes=30, samples_per_node=100, quantity_skew=1.0)
    sizes = [len(p) for p in ds.natural_partition or []]
    assert min(sizes) >= 1 and max(sizes) > 2 * min(sizes)
    flat = load_dataset("synthetic", num_nodes=30, samples_per_node=100)
    assert {len(p) for p in flat.natural_partition or []} == {80}


@pytest.mark.parametrize(
    ("params", "word"),
    [
        ({"num_nodes": 0}, "num_nodes"),
        ({"num_nodes": 2.5}, "num_nodes"),
        ({"samples_per_node": 0}, "samples_per_node"),
        ({"num_features": 0}, "num_features"),
        ({"num_classes": 1}, "num_classes"),
        ({"heterogeneity": -0.1}, "heterogeneity"),
        ({"heterogeneity": float("nan")}, "heterogeneity"),
        ({"quantity_skew": -1.0}, "quantity_skew"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"test_fraction": -0.5}, "test_fraction"),
        ({"seed": -1}, "seed"),
        ({"heterogenity": 1.0}, "heterogenity"),
    ],
)
def test_synthetic_bad_arguments(params: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        load_dataset("synthetic", **params)


# --- registry, torchvision guards, Dataset validation ---------------------------------------


def test_builtin_datasets_registered_and_unknown_name_lists_them() -> None:
    assert {"fashion_mnist", "fashion-mnist", "digits", "synthetic", "mnist", "cifar10"} <= set(
        DATASETS.names()
    )
    with pytest.raises(RegistryError, match="fashion_mnist"):
        load_dataset("fashion_mnits")


def test_unknown_dataset_keyword_lists_accepted() -> None:
    with pytest.raises(ValueError, match="accepted: root, download"):
        load_dataset("fashion_mnist", dowload=False)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_torchvision_datasets_without_torchvision(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)  # makes `import torchvision` fail
    with pytest.raises(ImportError, match="pip install torchvision"):
        load_dataset(name, root="unused")


def test_torchvision_datasets_are_converted(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeMNIST:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            n = 5 if train else 3
            self.data = torch.full((n, 28, 28), 255, dtype=torch.uint8)
            self.targets = torch.arange(n)

    class FakeCIFAR10:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            n = 4 if train else 2
            self.data = np.zeros((n, 32, 32, 3), dtype=np.uint8)
            self.targets = list(range(n))

    fake = types.ModuleType("torchvision")
    fake.datasets = types.SimpleNamespace(MNIST=FakeMNIST, CIFAR10=FakeCIFAR10)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    m = load_dataset("mnist", root="x")
    assert m.train_x.shape == (5, 1, 28, 28) and m.test_x.shape == (3, 1, 28, 28)
    assert m.train_x.max().item() == pytest.approx((1 - 0.1307) / 0.3081, rel=1e-5)
    c = load_dataset("cifar10", root="x")
    assert c.train_x.shape == (4, 3, 32, 32) and c.test_y.dtype == torch.int64
    assert c.train_x[0, :, 0, 0].tolist() == pytest.approx(
        [-m / s for m, s in zip(D.CIFAR10_MEAN, D.CIFAR10_STD, strict=True)], rel=1e-5
    )


def test_dataset_rejects_inconsistent_tensors() -> None:
    x, y = torch.zeros(4, 3), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="4 samples but train_y has 3"):
        Dataset("bad", x, y[:3], x, y, num_classes=2)
    with pytest.raises(ValueError, match="0..1"):
        Dataset("bad", x, y + 1, x, y, num_classes=2)
    with pytest.raises(ValueError, match="int64"):
        Dataset("bad", x, y.int(), x, y, num_classes=2)
    with pytest.raises(ValueError, match="float"):
        Dataset("bad", x.long(), y, x, y, num_classes=2)
    with pytest.raises(ValueError, match="differ"):
        Dataset("bad", x, y, torch.zeros(4, 2), y, num_classes=2)
    with pytest.raises(ValueError, match="natural_partition"):
        Dataset("bad", x, y, x, y, num_classes=2, natural_partition=[np.array([4])])


# --- federate / FederatedData ---------------------------------------------------------------


def test_federate_builds_padded_index_table() -> None:
    fed = federate("digits", 10, "dirichlet", alpha=0.3, seed=0)
    assert isinstance(fed, FederatedData) and fed.num_nodes == 10
    assert fed.index_table.dtype == torch.int64 and fed.sizes.dtype == torch.int64
    assert fed.index_table.shape == (10, int(fed.sizes.max()))
    for i, p in enumerate(fed.parts):
        row = fed.index_table[i]
        assert row[: len(p)].tolist() == p.tolist()
        assert torch.all(row[len(p) :] == 0)
        assert fed.sizes[i].item() == len(p)
    assert int(fed.sizes.sum()) == fed.dataset.num_train
    x, y = fed.node_data(0)
    assert torch.equal(y, fed.dataset.train_y[torch.from_numpy(fed.parts[0])])
    assert x.shape == (len(fed.parts[0]), 64)


def test_federate_is_deterministic_and_passes_partition_params() -> None:
    a = federate("digits", 5, "shards", classes_per_node=1, seed=2)
    b = federate("digits", 5, "shards", classes_per_node=1, seed=2)
    assert torch.equal(a.index_table, b.index_table)
    direct = partition("shards", a.dataset.train_y.numpy(), 5, seed=2, classes_per_node=1)
    assert all(np.array_equal(p, q) for p, q in zip(a.parts, direct, strict=True))
    with pytest.raises(ValueError, match="classes_per_nod"):
        federate("digits", 5, "shards", classes_per_nod=1)


def test_federate_natural_partition_of_synthetic() -> None:
    fed = federate("synthetic", 6, "natural", seed=5, dataset_params={"samples_per_node": 20})
    assert fed.num_nodes == 6 and fed.sizes.tolist() == [16] * 6
    direct = load_dataset("synthetic", num_nodes=6, samples_per_node=20, seed=5)
    assert torch.equal(fed.dataset.train_x, direct.train_x)


def test_federate_natural_errors() -> None:
    with pytest.raises(ValueError, match="no natural"):
        federate("digits", 4, "natural")
    ds = load_dataset("synthetic", num_nodes=3)
    with pytest.raises(ValueError, match="num_nodes=4"):
        federate(ds, 4, "natural")
    with pytest.raises(ValueError, match="no parameters"):
        federate(ds, 3, "natural", alpha=1.0)


def test_federate_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_nodes"):
        federate("digits", 0)
    with pytest.raises(ValueError, match="num_nodes"):
        federate("digits", 5000)
    with pytest.raises(RegistryError, match="dirichlet"):
        federate("digits", 4, "dirichlett")
    with pytest.raises(ValueError, match="dataset_params"):
        federate(load_dataset("digits"), 4, dataset_params={"x": 1})


def test_federated_data_to_moves_every_tensor() -> None:
    fed = federate("synthetic", 4, "iid", dataset_params={"samples_per_node": 10})
    moved = fed.to("cpu")
    assert moved is not fed and moved.dataset is not fed.dataset
    assert torch.equal(moved.index_table, fed.index_table)
    assert moved.dataset.natural_partition is fed.dataset.natural_partition
    if torch.cuda.is_available():  # exercised on machines with a GPU
        gpu = fed.to("cuda")
        assert gpu.index_table.is_cuda and gpu.dataset.train_x.is_cuda and gpu.sizes.is_cuda
