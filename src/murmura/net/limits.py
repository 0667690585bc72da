"""Explicit size limits, checked before anything is allocated from a claimed length.

Every length a peer reads from the network is compared with one of these before it is
trusted, so a hostile peer can make a receiver hold at most ``max_message_bytes`` per
stream it has open. Both ends of a link must agree on them (a sender refuses to build what
its own limits would refuse to receive).

>>> limits = Limits()
>>> limits.max_message_bytes // 2**20, limits.chunk_bytes // 2**20
(64, 4)
>>> Limits(chunk_bytes=1000)
Traceback (most recent call last):
...
ValueError: Limits.chunk_bytes must be between 65536 and max_message_bytes, got 1000
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_CHUNK_BYTES = 64 * 1024  # every chunk but the last is at least this: bounds the count


@dataclass(frozen=True)
class Limits:
    """Size limits of the wire format.

    ``max_message_bytes`` bounds one whole message (a frame: envelope, signature, payload),
    ``max_tensor_bytes`` one tensor in it, ``chunk_bytes`` the data of one chunk (one gRPC
    message; gRPC's ``max_receive_message_length`` is set to a chunk plus its header),
    ``max_tensors`` and ``max_ndim`` the payload's structure."""

    max_message_bytes: int = 64 * 2**20
    max_tensor_bytes: int = 64 * 2**20
    chunk_bytes: int = 4 * 2**20
    max_tensors: int = 1024
    max_ndim: int = 8

    def __post_init__(self) -> None:
        if self.max_message_bytes < 1024:
            raise ValueError(f"Limits.max_message_bytes must be at least 1024, "
                             f"got {self.max_message_bytes}")
        if not MIN_CHUNK_BYTES <= self.chunk_bytes <= max(self.max_message_bytes,
                                                          MIN_CHUNK_BYTES):
            raise ValueError(f"Limits.chunk_bytes must be between {MIN_CHUNK_BYTES} and "
                             f"max_message_bytes, got {self.chunk_bytes}")
        for name in ("max_tensor_bytes", "max_tensors", "max_ndim"):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be positive, got {getattr(self, name)}")


DEFAULT_LIMITS = Limits()

__all__ = ["DEFAULT_LIMITS", "MIN_CHUNK_BYTES", "Limits"]
