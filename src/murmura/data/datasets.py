"""Built-in datasets: Fashion-MNIST, scikit-learn digits, a synthetic federated task, and MNIST
and CIFAR-10 through torchvision when it is installed.

>>> from murmura.data import DATASETS
>>> "fashion_mnist" in DATASETS and "synthetic" in DATASETS
True
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from murmura.data._checks import check_float, check_int, check_seed
from murmura.data.dataset import DATASETS, Dataset


class DataNotFoundError(FileNotFoundError):
    """A dataset's files are nowhere murmura looked; the message lists the places and fixes."""


class DataFormatError(ValueError):
    """A dataset file is corrupt, truncated or not what its name says."""


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST
# ---------------------------------------------------------------------------------------------

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
#: Where Debian's package ``dataset-fashion-mnist`` installs the four .gz files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: MD5 of the original .gz files (fashion-mnist README). Debian's copies are recompressed and
#: have other MD5s; only downloads are checked, local files are validated by parsing.
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
#: Mean and standard deviation of the 60,000 training images' pixels after scaling to [0, 1].
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530


def default_cache_dir() -> Path:
    """``~/.cache/murmura``: where murmura downloads datasets it cannot find elsewhere."""
    return Path.home() / ".cache" / "murmura"


def _files_in(directory: Path) -> tuple[list[Path] | None, str]:
    """The four files in ``directory`` (gz preferred, plain accepted), or None and why not."""
    if not directory.is_dir():
        return None, "no such directory"
    found, missing = [], []
    for stem in FASHION_MNIST_FILES:
        for candidate in (directory / f"{stem}.gz", directory / stem):
            if candidate.is_file():
                found.append(candidate)
                break
        else:
            missing.append(f"{stem}[.gz]")
    if missing:
        return None, "missing " + ", ".join(missing)
    return found, "found"


def _fashion_candidates(root: str | os.PathLike[str] | None) -> list[tuple[Path | None, str]]:
    """Places to look, in order, each with a note saying where it came from."""
    places: list[tuple[Path | None, str]] = []
    if root is not None:
        places += [(Path(root), "root= argument"), (Path(root) / "fashion-mnist", "root= argument")]
    env = os.environ.get("MURMURA_DATA")
    if env:
        places += [(Path(env), "$MURMURA_DATA"), (Path(env) / "fashion-mnist", "$MURMURA_DATA")]
    else:
        places.append((None, "$MURMURA_DATA (not set)"))
    places.append((DEBIAN_FASHION_MNIST_DIR, "Debian package dataset-fashion-mnist"))
    places.append((default_cache_dir() / "fashion-mnist", "download cache"))
    return places


def _fetch_bytes(url: str, timeout: float = 60.0) -> bytes:
    """GET ``url``; the only function in murmura.data that touches the network."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _download_fashion_mnist(dest: Path) -> None:
    """Download the missing original files into ``dest``, checking each MD5 before saving."""
    import http.client

    dest.mkdir(parents=True, exist_ok=True)
    for fname, md5 in FASHION_MNIST_MD5.items():
        target = dest / fname
        if target.is_file():  # only verified files are ever renamed into place
            continue
        try:
            data = _fetch_bytes(FASHION_MNIST_URL + fname)
        except (OSError, http.client.HTTPException) as e:
            raise DataNotFoundError(f"downloading {FASHION_MNIST_URL + fname} failed: {e}") from e
        got = hashlib.md5(data).hexdigest()
        if got != md5:
            raise DataNotFoundError(
                f"downloaded {fname} has MD5 {got}, expected {md5}; the file was not saved "
                f"(a proxy or a changed mirror may have altered it)"
            )
        # Write then rename, so an interrupted download never leaves a half file that a later
        # run would take for the real one.
        tmp = target.with_suffix(".part")
        tmp.write_bytes(data)
        os.replace(tmp, target)


def _read_idx(path: Path, expected_ndim: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (gzip-compressed or not) into a read-only array."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as e:
            raise DataFormatError(
                f"{path} is a corrupt or truncated gzip file ({e}); delete it and fetch it again"
            ) from None
    expected_magic = 0x0800 + expected_ndim
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08 or raw[3] != expected_ndim:
        magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
        shown = f"0x{magic:08x}" if magic is not None else f"only {len(raw)} bytes"
        raise DataFormatError(
            f"{path} is not an IDX file of {expected_ndim}-D unsigned bytes: magic number "
            f"{shown}, expected 0x{expected_magic:08x}; delete it and fetch it again"
        )
    header = 4 + 4 * expected_ndim
    if len(raw) < header:
        raise DataFormatError(f"{path} is truncated inside its header; fetch it again")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=expected_ndim, offset=4))
    want = math.prod(dims)
    have = len(raw) - header
    if have != want:
        raise DataFormatError(
            f"{path} is {'truncated' if have < want else 'too long'}: its header promises "
            f"{'x'.join(map(str, dims))} = {want} bytes of data, the file holds {have}; delete "
            f"it and fetch it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


@functools.lru_cache(maxsize=4)
def _load_fashion_arrays(
    files: tuple[str, ...], stamps: tuple[tuple[int, int], ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Parsed uint8 arrays, cached per process. ``stamps`` (mtime, size) is part of the key so
    a replaced file is read again; the arrays are read-only so the cache cannot be corrupted."""
    del stamps
    paths = [Path(f) for f in files]
    train_x, train_y = _read_idx(paths[0], 3), _read_idx(paths[1], 1)
    test_x, test_y = _read_idx(paths[2], 3), _read_idx(paths[3], 1)
    for x, y, px, py in (
        (train_x, train_y, paths[0], paths[1]),
        (test_x, test_y, paths[2], paths[3]),
    ):
        if x.shape[1:] != (28, 28):
            raise DataFormatError(f"{px} holds images of {x.shape[1:]}, expected 28x28")
        if x.shape[0] != y.shape[0]:
            raise DataFormatError(f"{px} holds {x.shape[0]} images but {py} {y.shape[0]} labels")
        if y.size and y.max() > 9:
            raise DataFormatError(f"{py} holds label {int(y.max())}, expected 0..9")
    return train_x, train_y, test_x, test_y


def _normalize_images(x: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """uint8 images -> float32 (x / 255 - mean) / std, as a new tensor."""
    with warnings.catch_warnings():
        # torch warns that the cached array is read-only; it is only read here, and .to()
        # copies, so the cache is never written through this tensor.
        warnings.simplefilter("ignore", UserWarning)
        src = torch.from_numpy(x)
    # torch's conversion is several times faster than numpy's astype on 47M pixels.
    out = src.to(torch.float32)
    return out.mul_(1.0 / (255.0 * std)).sub_(mean / std)


@DATASETS.register("fashion_mnist")
def fashion_mnist(*, root: str | os.PathLike[str] | None = None, download: bool = True) -> Dataset:
    """Fashion-MNIST (Xiao et al. 2017): 60k/10k 28x28 grayscale clothing images, 10 classes.

    Reads the four original IDX files (``train-images-idx3-ubyte.gz`` and friends; un-gzipped
    names work too) from the first place that has all four: ``root``, ``root/fashion-mnist``,
    ``$MURMURA_DATA``, ``$MURMURA_DATA/fashion-mnist``, ``/usr/share/datasets/fashion-mnist``
    (Debian's ``dataset-fashion-mnist``), ``~/.cache/murmura/fashion-mnist``. If none has them
    and ``download`` is true, they are downloaded from Zalando's server into that cache and
    checked against the official MD5s; otherwise :class:`DataNotFoundError` lists every place.

    Images become float32 ``[N, 1, 28, 28]``: pixels / 255, then standardized with the training
    set's mean 0.2860 and std 0.3530. Parsed files are cached per process, so loading again is
    cheap (about the cost of the float conversion).

    >>> import os
    >>> root = os.environ.get("MURMURA_DATA", "../shared/datasets/fashion-mnist")
    >>> ds = fashion_mnist(root=root, download=False)  # doctest: +SKIP
    >>> ds.train_x.shape, ds.test_x.shape  # doctest: +SKIP
    (torch.Size([60000, 1, 28, 28]), torch.Size([10000, 1, 28, 28]))
    """
    looked = []
    files = None
    for place, why in _fashion_candidates(root):
        if place is None:
            looked.append(f"  - {why}")
            continue
        files, status = _files_in(place)
        if files is not None:
            break
        looked.append(f"  - {place} ({why}): {status}")
    if files is None:
        cache = default_cache_dir() / "fashion-mnist"
        dl = "download: not attempted (download=False)"
        if download:
            try:
                _download_fashion_mnist(cache)
                files, dl = _files_in(cache)
            except DataNotFoundError as e:
                dl = f"download into {cache}: {e}"
        if files is None:
            raise DataNotFoundError(
                "Fashion-MNIST files not found. Looked for "
                + ", ".join(f"{s}[.gz]" for s in FASHION_MNIST_FILES)
                + " in:\n"
                + "\n".join(looked)
                + f"\n  - {dl}\n"
                "Fix one of: pass root='/folder/with/the/files'; set MURMURA_DATA to such a "
                "folder (or to a folder with a fashion-mnist/ subfolder); install Debian's "
                "package (apt-get install dataset-fashion-mnist); or run once with network "
                f"access and download=True to fetch them from {FASHION_MNIST_URL}."
            )
    stamps = tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    train_x, train_y, test_x, test_y = _load_fashion_arrays(tuple(str(p) for p in files), stamps)
    return Dataset(
        name="fashion_mnist",
        train_x=_normalize_images(train_x, FASHION_MNIST_MEAN, FASHION_MNIST_STD).unsqueeze(1),
        train_y=torch.from_numpy(train_y.astype(np.int64)),
        test_x=_normalize_images(test_x, FASHION_MNIST_MEAN, FASHION_MNIST_STD).unsqueeze(1),
        test_y=torch.from_numpy(test_y.astype(np.int64)),
        num_classes=10,
    )


DATASETS.add("fashion-mnist", fashion_mnist, "alias of 'fashion_mnist'")


# ---------------------------------------------------------------------------------------------
# scikit-learn digits
# ---------------------------------------------------------------------------------------------


@DATASETS.register("digits")
def digits() -> Dataset:
    """scikit-learn's 8x8 handwritten digits: 1,797 samples, 64 features, 10 classes.

    Bundled with scikit-learn, so it needs no files or network. Pixels (0..16) are divided by
    16 and kept flat, ``[N, 64]`` float32. The split is stratified 70/30 with
    ``train_test_split(test_size=0.3, stratify=y, random_state=0)``: 1,257 train, 540 test,
    the same on every machine.

    >>> ds = digits()
    >>> ds.train_x.shape, ds.test_x.shape
    (torch.Size([1257, 64]), torch.Size([540, 64]))
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(
        (x / 16.0).astype(np.float32), y.astype(np.int64), test_size=0.3, stratify=y, random_state=0
    )
    return Dataset(
        name="digits",
        train_x=torch.from_numpy(np.ascontiguousarray(x_tr)),
        train_y=torch.from_numpy(np.ascontiguousarray(y_tr)),
        test_x=torch.from_numpy(np.ascontiguousarray(x_te)),
        test_y=torch.from_numpy(np.ascontiguousarray(y_te)),
        num_classes=10,
    )


# ---------------------------------------------------------------------------------------------
# Synthetic (FedProx / LEAF)
# ---------------------------------------------------------------------------------------------


@DATASETS.register("synthetic")
def synthetic(
    *,
    num_nodes: int = 30,
    samples_per_node: int = 100,
    num_features: int = 60,
    num_classes: int = 10,
    heterogeneity: float = 1.0,
    quantity_skew: float = 0.0,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Federated logistic-regression task with a heterogeneity knob (FedProx's Synthetic).

    Li et al. 2020 (FedProx), LEAF's Synthetic(alpha, beta), with alpha = beta = h =
    ``heterogeneity``. Node k draws u_k ~ N(0, h^2) and B_k ~ N(0, h^2), then its model
    W_k = u_k + a*W_0 + c*E_k, b_k = u_k + a*b_0 + c*e_k and feature mean
    v_k = B_k + a*v_0 + c*f_k, where W_0, b_0, v_0 are standard normal draws shared by all nodes,
    E_k, e_k, f_k standard normal draws of its own, c = sqrt(min(h, 1)) and a = sqrt(1 - c^2).
    Its samples are x ~ N(v_k, diag(j^-1.2)) and y = argmax(W_k x + b_k).

    So for h >= 1 every node's draws have exactly FedProx's Synthetic(h, h) distribution
    (W_k ~ N(u_k, 1), v_k ~ N(B_k, 1), independent across nodes); h = 0 makes all nodes share
    one model and one feature distribution (like FedProx's Synthetic-IID); in between, the
    knob is continuous and nodes differ more as h grows. Features are left unstandardized, as
    in FedProx.

    Node k has ``samples_per_node`` samples, or with ``quantity_skew = s > 0`` about
    ``samples_per_node * exp(s*z - s^2/2)`` with z ~ N(0, 1) (lognormal, same mean; at least 1).
    Of each node's samples, ``floor(test_fraction * n_k)`` (but at most n_k - 1) are held out
    and pooled into the test set; the rest are the training set, node by node, and
    ``natural_partition[k]`` lists node k's training indices. Node k's data depends only on
    (seed, k) and the other arguments, not on ``num_nodes``.

    >>> ds = synthetic(num_nodes=5, samples_per_node=50, heterogeneity=0.5, seed=1)
    >>> ds.train_x.shape, ds.test_x.shape, len(ds.natural_partition)
    (torch.Size([200, 60]), torch.Size([50, 60]), 5)
    """
    num_nodes = check_int("num_nodes", num_nodes, minimum=1, hint="use at least one node")
    samples_per_node = check_int(
        "samples_per_node", samples_per_node, minimum=1, hint="each node needs a sample"
    )
    num_features = check_int("num_features", num_features, minimum=1)
    num_classes = check_int("num_classes", num_classes, minimum=2, hint="classification needs 2")
    h = check_float(
        "heterogeneity",
        heterogeneity,
        nonnegative=True,
        hint="0 = all nodes alike, 1 = FedProx Synthetic(1,1), larger = more different",
    )
    skew = check_float(
        "quantity_skew", quantity_skew, nonnegative=True, hint="0 = equal node sizes"
    )
    test_fraction = check_float("test_fraction", test_fraction, nonnegative=True)
    if test_fraction >= 1:
        raise ValueError(
            f"test_fraction must be < 1, got {test_fraction}: nodes need training data"
        )
    seed = check_seed(seed)

    shared = np.random.default_rng([seed, 0])
    w0 = shared.standard_normal((num_classes, num_features))
    b0 = shared.standard_normal(num_classes)
    v0 = shared.standard_normal(num_features)
    c = math.sqrt(min(h, 1.0))
    a = math.sqrt(1.0 - c * c)
    feature_std = np.arange(1, num_features + 1, dtype=np.float64) ** -0.6  # sqrt(j^-1.2)

    train_x, train_y, test_x, test_y, parts = [], [], [], [], []
    offset = 0
    for k in range(num_nodes):
        rng = np.random.default_rng([seed, 1, k])
        # Every draw is made whatever the arguments, so changing one knob (say quantity_skew)
        # leaves the other random quantities of a node unchanged.
        z = rng.standard_normal()
        u, big_b = rng.normal(0.0, h, size=2)
        w = u + a * w0 + c * rng.standard_normal((num_classes, num_features))
        b = u + a * b0 + c * rng.standard_normal(num_classes)
        v = big_b + a * v0 + c * rng.standard_normal(num_features)
        n_k = samples_per_node
        if skew > 0:
            n_k = max(1, round(samples_per_node * math.exp(skew * z - skew * skew / 2)))
        x = v + rng.standard_normal((n_k, num_features)) * feature_std
        y = np.argmax(x @ w.T + b, axis=1)
        n_test = min(int(test_fraction * n_k), n_k - 1)
        n_train = n_k - n_test
        train_x.append(x[:n_train])
        train_y.append(y[:n_train])
        test_x.append(x[n_train:])
        test_y.append(y[n_train:])
        parts.append(np.arange(offset, offset + n_train, dtype=np.int64))
        offset += n_train

    def tensor(chunks: list[np.ndarray], dtype: np.dtype) -> torch.Tensor:
        return torch.from_numpy(np.concatenate(chunks).astype(dtype))

    return Dataset(
        name="synthetic",
        train_x=tensor(train_x, np.float32),
        train_y=tensor(train_y, np.int64),
        test_x=tensor(test_x, np.float32),
        test_y=tensor(test_y, np.int64),
        num_classes=num_classes,
        natural_partition=parts,
    )


# ---------------------------------------------------------------------------------------------
# torchvision datasets
# ---------------------------------------------------------------------------------------------


def _torchvision(dataset: str) -> Any:
    try:
        import torchvision
    except ImportError as e:
        raise ImportError(
            f"dataset {dataset!r} needs torchvision, which is not installed: "
            f"pip install torchvision (or use 'fashion_mnist', 'digits' or 'synthetic', which "
            f"need no extra package)"
        ) from e
    return torchvision


def _torchvision_root(root: str | os.PathLike[str] | None) -> str:
    if root is not None:
        return str(root)
    return os.environ.get("MURMURA_DATA") or str(default_cache_dir())


def _as_numpy(a: Any) -> np.ndarray:
    return a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


@DATASETS.register("mnist")
def mnist(*, root: str | os.PathLike[str] | None = None, download: bool = True) -> Dataset:
    """MNIST handwritten digits via torchvision: float32 [N, 1, 28, 28], 10 classes.

    Files live under ``root`` (default ``$MURMURA_DATA`` or ``~/.cache/murmura``) in
    torchvision's layout; ``download`` is passed to ``torchvision.datasets.MNIST``. Pixels / 255,
    standardized with the usual mean 0.1307 and std 0.3081.

    >>> ds = mnist(root="data")  # doctest: +SKIP
    """
    tv = _torchvision("mnist")
    where = _torchvision_root(root)
    out = []
    for train in (True, False):
        d = tv.datasets.MNIST(where, train=train, download=download)
        x = _normalize_images(_as_numpy(d.data), 0.1307, 0.3081).unsqueeze(1)
        out += [x, torch.from_numpy(_as_numpy(d.targets).astype(np.int64))]
    return Dataset("mnist", *out, num_classes=10)


CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@DATASETS.register("cifar10")
def cifar10(*, root: str | os.PathLike[str] | None = None, download: bool = True) -> Dataset:
    """CIFAR-10 via torchvision: float32 [N, 3, 32, 32], 10 classes.

    Files live under ``root`` (default ``$MURMURA_DATA`` or ``~/.cache/murmura``); ``download``
    is passed to ``torchvision.datasets.CIFAR10``. Pixels / 255, standardized per channel with
    the training set's mean (0.4914, 0.4822, 0.4465) and std (0.2470, 0.2435, 0.2616).

    >>> ds = cifar10(root="data")  # doctest: +SKIP
    """
    tv = _torchvision("cifar10")
    where = _torchvision_root(root)
    mean = np.asarray(CIFAR10_MEAN, dtype=np.float32)
    std = np.asarray(CIFAR10_STD, dtype=np.float32)
    out = []
    for train in (True, False):
        d = tv.datasets.CIFAR10(where, train=train, download=download)
        x = _as_numpy(d.data).astype(np.float32)  # [N, 32, 32, 3] uint8 -> float copy
        x /= 255.0
        x -= mean
        x /= std
        x_t = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
        out += [x_t, torch.from_numpy(_as_numpy(d.targets).astype(np.int64))]
    return Dataset("cifar10", *out, num_classes=10)
