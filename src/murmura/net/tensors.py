"""Named tensors as bytes: a small header per tensor plus its raw little-endian data.

No pickle: a payload is

* ``b"TNSR"``, then the tensor count as a little-endian ``u32``;
* per tensor, starting at an offset that is a multiple of 8: ``u16`` name length, ``u8``
  dtype code (:data:`DTYPES`), ``u8`` number of dimensions, ``u64`` byte length, one ``u64``
  per dimension, the name (ASCII, :data:`NAME_CHARS`), zero padding to a multiple of 8, the
  data (C order, little-endian), zero padding to a multiple of 8.

Tensors keep the order they were given in. Padding keeps every tensor's data 8-byte aligned,
so decoding returns read-only NumPy views into the payload, without copying (copy them to
write, e.g. ``torch.from_numpy(a.copy())``). The encoding is canonical: one set of tensors
has exactly one encoding, and decoding checks every length, code and padding byte, raising
only :class:`~murmura.net.errors.WireError`.

>>> import numpy as np
>>> payload = encode_tensors({"w": np.arange(6, dtype=np.float32).reshape(2, 3),
...                           "step": np.array(7, dtype=np.int64)})
>>> len(payload)
88
>>> out = decode_tensors(payload)
>>> out["w"].tolist(), out["step"].shape, int(out["step"])
([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]], (), 7)
>>> decode_tensors(payload[:-8])
Traceback (most recent call last):
...
murmura.net.errors.WireError: truncated: tensor 'step': 8 data bytes declared, 0 left
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Mapping

import numpy as np

from murmura.net.errors import WireError
from murmura.net.limits import DEFAULT_LIMITS, Limits

MAGIC = b"TNSR"
DTYPES: dict[int, np.dtype] = {
    1: np.dtype("bool"),
    2: np.dtype("uint8"),
    3: np.dtype("int8"),
    4: np.dtype("<u2"),
    5: np.dtype("<i2"),
    6: np.dtype("<u4"),
    7: np.dtype("<i4"),
    8: np.dtype("<u8"),
    9: np.dtype("<i8"),
    10: np.dtype("<f2"),
    11: np.dtype("<f4"),
    12: np.dtype("<f8"),
}
CODES: dict[str, int] = {dt.name: code for code, dt in DTYPES.items()}
NAME_CHARS = r"[A-Za-z0-9_.:/-]"
MAX_NAME = 255
_NAME = re.compile(rf"{NAME_CHARS}{{1,{MAX_NAME}}}\Z")
_HEAD = struct.Struct("<4sI")
_TENSOR = struct.Struct("<HBBQ")


def _pad(n: int) -> int:
    return -n % 8


def encode_tensors(tensors: Mapping[str, object], limits: Limits = DEFAULT_LIMITS) -> bytes:
    """Encode named arrays (NumPy arrays, or anything ``np.asarray`` takes: CPU torch
    tensors, scalars). Raises :class:`ValueError` for what a receiver would refuse."""
    if len(tensors) > limits.max_tensors:
        raise ValueError(f"{len(tensors)} tensors, Limits.max_tensors is {limits.max_tensors}")
    parts: list[object] = [_HEAD.pack(MAGIC, len(tensors))]
    for name, value in tensors.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"tensor name {name!r}: 1 to {MAX_NAME} of {NAME_CHARS}")
        array = np.asarray(value)
        if array.dtype.name not in CODES:
            raise ValueError(f"tensor {name!r}: dtype {array.dtype} is not in the allow-list "
                             f"({', '.join(CODES)})")
        if array.ndim > limits.max_ndim:
            raise ValueError(f"tensor {name!r}: {array.ndim} dimensions, "
                             f"Limits.max_ndim is {limits.max_ndim}")
        # np.asarray, not np.ascontiguousarray: the latter turns 0-d arrays into 1-d ones
        array = np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C")
        if array.nbytes > limits.max_tensor_bytes:
            raise ValueError(f"tensor {name!r}: {array.nbytes} bytes, "
                             f"Limits.max_tensor_bytes is {limits.max_tensor_bytes}")
        raw = name.encode("ascii")
        head = _TENSOR.pack(len(raw), CODES[array.dtype.name], array.ndim, array.nbytes)
        head += struct.pack(f"<{array.ndim}Q", *array.shape) + raw
        head += bytes(_pad(len(head)))
        # a flat uint8 view is a bytes-like object: join copies the data once, not twice
        parts += [head, array.reshape(-1).view(np.uint8), bytes(_pad(array.nbytes))]
    return b"".join(parts)  # type: ignore[arg-type]


def decode_tensors(payload: bytes | bytearray | memoryview,
                   limits: Limits = DEFAULT_LIMITS) -> dict[str, np.ndarray]:
    """Decode a payload into read-only arrays; any fault raises :class:`WireError`."""
    try:
        view = memoryview(payload).cast("B")
    except TypeError as e:
        raise WireError("bad_type", f"payload of type {type(payload).__name__}") from e
    if len(view) > limits.max_message_bytes:
        raise WireError("oversize", f"payload of {len(view)} bytes")
    if len(view) < _HEAD.size:
        raise WireError("truncated", f"payload of {len(view)} bytes, the header is 8")
    magic, count = _HEAD.unpack_from(view, 0)
    if magic != MAGIC:
        raise WireError("bad_magic", f"payload starts with {bytes(magic)!r}, not {MAGIC!r}")
    if count > limits.max_tensors:
        raise WireError("too_many_tensors", f"{count} tensors, the limit is {limits.max_tensors}")
    out: dict[str, np.ndarray] = {}
    at = _HEAD.size
    for index in range(count):
        label = f"tensor #{index}"
        if len(view) - at < _TENSOR.size:
            raise WireError("truncated", f"{label}: header cut short")
        name_len, code, ndim, nbytes = _TENSOR.unpack_from(view, at)
        if not 1 <= name_len <= MAX_NAME:
            raise WireError("bad_name", f"{label}: name of {name_len} bytes")
        if code not in DTYPES:
            raise WireError("bad_dtype", f"{label}: dtype code {code} not in the allow-list")
        if ndim > limits.max_ndim:
            raise WireError("bad_shape", f"{label}: {ndim} dimensions, "
                                         f"the limit is {limits.max_ndim}")
        head_len = _TENSOR.size + 8 * ndim + name_len
        if len(view) - at < head_len + _pad(head_len):
            raise WireError("truncated", f"{label}: header cut short")
        shape = struct.unpack_from(f"<{ndim}Q", view, at + _TENSOR.size)
        raw = bytes(view[at + head_len - name_len:at + head_len])
        name = raw.decode("ascii", errors="replace")
        if not _NAME.match(name):
            raise WireError("bad_name", f"{label}: name {name!r} outside {NAME_CHARS}")
        if name in out:
            raise WireError("bad_name", f"{label}: name {name!r} repeated")
        label = f"tensor {name!r}"
        if any(view[at + head_len:at + head_len + _pad(head_len)]):
            raise WireError("bad_padding", f"{label}: header padding not zero")
        at += head_len + _pad(head_len)
        if nbytes > limits.max_tensor_bytes:
            raise WireError("tensor_oversize", f"{label}: {nbytes} bytes, "
                                               f"the limit is {limits.max_tensor_bytes}")
        dtype = DTYPES[code]
        if math.prod(shape) * dtype.itemsize != nbytes:  # Python ints: no overflow
            raise WireError("bad_shape", f"{label}: shape {list(shape)} of {dtype.name} is not "
                                         f"{nbytes} bytes")
        if len(view) - at < nbytes + _pad(nbytes):
            raise WireError("truncated", f"{label}: {nbytes} data bytes declared, "
                                         f"{max(0, len(view) - at)} left")
        array = np.frombuffer(view, dtype=dtype, count=math.prod(shape), offset=at)
        if code == CODES["bool"] and nbytes and array.view(np.uint8).max() > 1:
            raise WireError("bad_dtype", f"{label}: bool bytes other than 0 and 1")
        out[name] = array.reshape(shape)
        at += nbytes
        if any(view[at:at + _pad(nbytes)]):
            raise WireError("bad_padding", f"{label}: data padding not zero")
        at += _pad(nbytes)
    if at != len(view):
        raise WireError("bad_length", f"{len(view) - at} bytes after the last tensor")
    return out


__all__ = ["CODES", "DTYPES", "MAGIC", "NAME_CHARS", "decode_tensors", "encode_tensors"]
