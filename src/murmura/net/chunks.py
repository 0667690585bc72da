"""A message as a stream of chunks, each with its own SHA-256, and its checked reassembly.

One stream carries one message (a frame, :mod:`murmura.net.wire`), cut into chunks of
``Limits.chunk_bytes`` (the last one shorter). A chunk is a 56-byte header and its data:

``b"MCHK"``, ``u32`` index, ``u32`` count, ``u32`` data length, ``u64`` total message
length, 32-byte SHA-256 of the data (all little-endian), then the data.

:class:`Reassembler` refuses a chunk as soon as it is wrong (its digest, its place, a total
over ``Limits.max_message_bytes``), so a hostile stream costs at most one chunk of work past
the fault. Every chunk but the last must be as long as the first, and at least
``MIN_CHUNK_BYTES``: the count of chunks is then fixed by the total, and a sender cannot
make a receiver process millions of one-byte chunks.

>>> from murmura.net.limits import DEFAULT_LIMITS, Limits
>>> limits = Limits(chunk_bytes=65536)
>>> message = bytes(range(256)) * 1000
>>> parts = split(message, limits)
>>> len(parts), [len(p) for p in parts]
(4, [65592, 65592, 65592, 59448])
>>> r = Reassembler(limits)
>>> for p in parts:
...     r.feed(p)
>>> r.finish() == message
True
>>> Reassembler(limits).feed(parts[1])
Traceback (most recent call last):
...
murmura.net.errors.WireError: bad_chunk: chunk 1 where chunk 0 was due
"""

from __future__ import annotations

import hashlib
import struct

from murmura.net.errors import WireError
from murmura.net.limits import DEFAULT_LIMITS, MIN_CHUNK_BYTES, Limits

MAGIC = b"MCHK"
HEADER = struct.Struct("<4sIIIQ32s")


def split(message: bytes, limits: Limits = DEFAULT_LIMITS) -> list[bytes]:
    """Cut ``message`` into chunk frames of at most ``limits.chunk_bytes`` data each."""
    if len(message) > limits.max_message_bytes:
        raise ValueError(f"message of {len(message)} bytes, "
                         f"Limits.max_message_bytes is {limits.max_message_bytes}")
    size = limits.chunk_bytes
    count = max(1, -(-len(message) // size))
    view = memoryview(message)
    out = []
    for index in range(count):
        data = view[index * size:(index + 1) * size]
        digest = hashlib.sha256(data).digest()
        out.append(HEADER.pack(MAGIC, index, count, len(data), len(message), digest)
                   + bytes(data))
    return out


class Reassembler:
    """Checks chunks one at a time (:meth:`feed`) and returns the message (:meth:`finish`)."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._parts: list[bytes] = []
        self._received = 0
        self._count = 0
        self._total = 0
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        """Check one chunk and keep its data; raises :class:`WireError` on any fault."""
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise WireError("bad_type", f"chunk of type {type(chunk).__name__}")
        if len(chunk) < HEADER.size:
            raise WireError("truncated", f"chunk of {len(chunk)} bytes, "
                                         f"the header alone is {HEADER.size}")
        magic, index, count, length, total, digest = HEADER.unpack_from(chunk, 0)
        if magic != MAGIC:
            raise WireError("bad_magic", f"chunk starts with {bytes(magic)!r}, not {MAGIC!r}")
        if total > self.limits.max_message_bytes:
            raise WireError("oversize", f"a message of {total} bytes announced, "
                                        f"the limit is {self.limits.max_message_bytes}")
        if length > self.limits.chunk_bytes:
            raise WireError("oversize", f"chunk of {length} data bytes, "
                                        f"the limit is {self.limits.chunk_bytes}")
        if len(chunk) - HEADER.size != length:
            raise WireError("truncated" if len(chunk) - HEADER.size < length else "bad_length",
                            f"chunk {index} declares {length} data bytes, "
                            f"carries {len(chunk) - HEADER.size}")
        n = len(self._parts)
        if n == 0:
            if index != 0:
                raise WireError("bad_chunk", f"chunk {index} where chunk 0 was due")
            # the first chunk fixes the chunk size, hence the count: check it adds up
            if count < 1 or (count > 1 and length < MIN_CHUNK_BYTES) or \
                    count != max(1, -(-total // max(length, 1))):
                raise WireError("bad_chunk", f"{count} chunks of {length} bytes cannot carry "
                                             f"{total} bytes")
            self._count, self._total, self._size = count, total, length
        elif index != n:
            raise WireError("bad_chunk", f"chunk {index} where chunk {n} was due")
        elif n >= self._count:
            raise WireError("bad_chunk", f"chunk {index} past the announced {self._count}")
        elif count != self._count or total != self._total:
            raise WireError("bad_chunk", f"chunk {index} announces {count} chunks and "
                                         f"{total} bytes, chunk 0 announced {self._count} "
                                         f"and {self._total}")
        expected = self._size if index < self._count - 1 else self._total - self._received
        if length != expected:
            raise WireError("bad_chunk", f"chunk {index} of {length} bytes, {expected} due")
        data = bytes(chunk[HEADER.size:])
        if hashlib.sha256(data).digest() != digest:
            raise WireError("chunk_digest", f"chunk {index}: SHA-256 does not match its data")
        self._parts.append(data)
        self._received += length

    @property
    def complete(self) -> bool:
        return bool(self._parts) and len(self._parts) == self._count

    def finish(self) -> bytes:
        """The message, once every announced chunk arrived; else :class:`WireError`."""
        if not self.complete:
            got = len(self._parts)
            raise WireError("truncated", f"stream ended after {got} of "
                                         f"{self._count or '?'} chunks")
        return self._parts[0] if self._count == 1 else b"".join(self._parts)


__all__ = ["HEADER", "MAGIC", "Reassembler", "split"]
