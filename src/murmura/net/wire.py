"""The wire format: a signed envelope, its payload, and the frame that carries both.

No pickle anywhere: every byte is a fixed struct field, a length-prefixed ASCII string, or
raw tensor data (:mod:`murmura.net.tensors`).

**Envelope** (:class:`Envelope`, canonical bytes from :meth:`Envelope.encode`), little-endian:
``u64`` round, ``u64`` sequence number, 16-byte nonce, 32-byte SHA-256 of the payload,
``u64`` payload length, then four strings, each a ``u8`` length and ASCII bytes: sender,
receiver, run id, payload kind. Ids and the run id match :data:`ID_PATTERN`, kinds
:data:`KIND_PATTERN`, so a given envelope has exactly one encoding and a decoded one
re-encodes to the same bytes.

**Signature**: Ed25519 (:mod:`cryptography`) over ``SIGNING_CONTEXT + envelope bytes``. The
envelope carries the payload's digest and length, so the signature covers the payload too;
the context string keeps these signatures from being valid for anything else.

**Frame** (one message; :func:`encode_frame`, :func:`decode_frame`):

====== ======================================================================
bytes  field
====== ======================================================================
4      magic ``b"MRMR"``
1      version (1)
3      zero
4      envelope length (``u32``, at most :data:`MAX_ENVELOPE`)
4      zero
n      envelope
64     Ed25519 signature
0..7   zero padding to a multiple of 8 (so tensor data stays aligned)
m      payload (``m`` is the envelope's payload length)
====== ======================================================================

A frame travels as chunks (:mod:`murmura.net.chunks`). :func:`decode_frame` checks the
structure only; the receiver's :class:`~murmura.net.guard.Guard` then checks the sender,
the signature, the round, the digest and the tensors.

>>> import numpy as np
>>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
>>> key = Ed25519PrivateKey.from_private_bytes(bytes(32))
>>> sealer = Sealer("alice", "run-1", key)
>>> frame = sealer.seal("bob", 3, "model", {"w": np.ones(4, np.float32)})
>>> f = decode_frame(frame)
>>> f.envelope.sender, f.envelope.receiver, f.envelope.round, f.envelope.seq
('alice', 'bob', 3, 0)
>>> verify_signature(f, key.public_key()), verify_digest(f)
(True, None)
>>> decode_frame(b"MRMR" + frame[4:20])
Traceback (most recent call last):
...
murmura.net.errors.WireError: truncated: frame of 20 bytes, its envelope and signature end at 174
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from murmura.net.errors import WireError
from murmura.net.limits import DEFAULT_LIMITS, Limits
from murmura.net.tensors import encode_tensors

MAGIC = b"MRMR"
VERSION = 1
SIGNING_CONTEXT = b"murmura/envelope/v1\x00"
SIGNATURE_BYTES = 64
NONCE_BYTES = 16
MAX_ROUND = 2**63 - 1
ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
KIND_PATTERN = r"[a-z][a-z0-9_.-]{0,31}"
_ID = re.compile(ID_PATTERN + r"\Z")
_KIND = re.compile(KIND_PATTERN + r"\Z")
_FIXED = struct.Struct("<QQ16s32sQ")
_HEAD = struct.Struct("<4sB3sI4s")
MAX_ENVELOPE = _FIXED.size + 4 * 256


def check_id(value: object, what: str = "node id") -> str:
    """``value`` if it is a valid node or run id, else :class:`ValueError` saying why."""
    if not isinstance(value, str) or not _ID.match(value):
        raise ValueError(f"{what} {value!r}: 1 to 64 characters of A-Z a-z 0-9 _ . -, "
                         f"starting with a letter or digit")
    return value


@dataclass(frozen=True)
class Envelope:
    """Who sends what to whom, for which run and round: the part that is signed."""

    sender: str
    receiver: str
    run: str
    round: int
    seq: int
    nonce: bytes
    digest: bytes
    payload_len: int
    kind: str

    def __post_init__(self) -> None:
        for what in ("sender", "receiver", "run"):
            check_id(getattr(self, what), what)
        if not isinstance(self.kind, str) or not _KIND.match(self.kind):
            raise ValueError(f"kind {self.kind!r} must match {KIND_PATTERN}")
        for what in ("round", "seq", "payload_len"):
            value = getattr(self, what)
            if not isinstance(value, int) or not 0 <= value <= MAX_ROUND:
                raise ValueError(f"{what} {value!r} must be an int in [0, 2**63)")
        if not isinstance(self.nonce, bytes) or len(self.nonce) != NONCE_BYTES:
            raise ValueError(f"nonce must be {NONCE_BYTES} bytes")
        if not isinstance(self.digest, bytes) or len(self.digest) != 32:
            raise ValueError("digest must be 32 bytes (a SHA-256)")

    def encode(self) -> bytes:
        """The canonical bytes: what is signed and what travels."""
        head = _FIXED.pack(self.round, self.seq, self.nonce, self.digest, self.payload_len)
        strings = b"".join(bytes([len(s)]) + s.encode("ascii")
                           for s in (self.sender, self.receiver, self.run, self.kind))
        return head + strings

    @classmethod
    def decode(cls, data: bytes | memoryview) -> Envelope:
        """Parse canonical bytes; any fault raises :class:`WireError`."""
        if len(data) < _FIXED.size + 4:
            raise WireError("truncated", f"envelope of {len(data)} bytes")
        round_, seq, nonce, digest, payload_len = _FIXED.unpack_from(data, 0)
        at, strings = _FIXED.size, []
        for what in ("sender", "receiver", "run", "kind"):
            if at >= len(data):
                raise WireError("bad_length", f"envelope ends before its {what}")
            n = data[at]
            if at + 1 + n > len(data):
                raise WireError("bad_length", f"envelope {what} of {n} bytes runs past its end")
            strings.append(bytes(data[at + 1:at + 1 + n]).decode("ascii", errors="replace"))
            at += 1 + n
        if at != len(data):
            raise WireError("bad_length", f"{len(data) - at} bytes after the envelope's fields")
        try:
            return cls(strings[0], strings[1], strings[2], round_, seq, nonce, digest,
                       payload_len, strings[3])
        except ValueError as e:
            raise WireError("bad_field", str(e)) from e


@dataclass(frozen=True)
class Frame:
    """A decoded frame: the envelope, its exact bytes, the signature, and the payload (a
    view into the frame, not yet checked against the digest nor decoded)."""

    envelope: Envelope
    envelope_bytes: bytes
    signature: bytes
    payload: memoryview
    size: int


def sign(envelope: Envelope, key: Ed25519PrivateKey) -> bytes:
    """The Ed25519 signature of ``envelope`` (deterministic: same key and envelope, same
    64 bytes)."""
    return key.sign(SIGNING_CONTEXT + envelope.encode())


def encode_frame(envelope: Envelope, signature: bytes, payload: bytes) -> bytes:
    """Lay out a frame. The envelope's length and digest must describe ``payload``."""
    if len(signature) != SIGNATURE_BYTES:
        raise ValueError(f"signature must be {SIGNATURE_BYTES} bytes")
    if envelope.payload_len != len(payload):
        raise ValueError("envelope.payload_len does not match the payload")
    env = envelope.encode()
    pad = -(_HEAD.size + len(env) + SIGNATURE_BYTES) % 8
    return b"".join([_HEAD.pack(MAGIC, VERSION, bytes(3), len(env), bytes(4)), env, signature,
                     bytes(pad), payload])


def decode_frame(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> Frame:
    """Check a frame's structure; any fault raises :class:`WireError`. Nothing here is
    trusted yet: the guard verifies the signature and the digest."""
    try:
        view = memoryview(data).cast("B")
    except TypeError as e:
        raise WireError("bad_type", f"frame of type {type(data).__name__}") from e
    if len(view) > limits.max_message_bytes:
        raise WireError("oversize", f"frame of {len(view)} bytes, "
                                    f"the limit is {limits.max_message_bytes}")
    if len(view) < _HEAD.size:
        raise WireError("truncated", f"frame of {len(view)} bytes, "
                                     f"the header alone is {_HEAD.size}")
    magic, version, zero1, env_len, zero2 = _HEAD.unpack_from(view, 0)
    if magic != MAGIC:
        raise WireError("bad_magic", f"frame starts with {bytes(magic)!r}, not {MAGIC!r}")
    if version != VERSION:
        raise WireError("bad_version", f"frame version {version}, this peer speaks {VERSION}")
    if any(zero1) or any(zero2):
        raise WireError("bad_padding", "reserved header bytes not zero")
    if env_len > MAX_ENVELOPE:
        raise WireError("bad_length", f"envelope of {env_len} bytes, at most {MAX_ENVELOPE}")
    sig_end = _HEAD.size + env_len + SIGNATURE_BYTES
    if len(view) < sig_end:
        raise WireError("truncated", f"frame of {len(view)} bytes, "
                                     f"its envelope and signature end at {sig_end}")
    env_bytes = bytes(view[_HEAD.size:_HEAD.size + env_len])
    envelope = Envelope.decode(env_bytes)
    if envelope.payload_len > limits.max_message_bytes:
        raise WireError("oversize", f"payload of {envelope.payload_len} bytes announced")
    start = sig_end + (-sig_end % 8)
    end = start + envelope.payload_len
    if len(view) < end:
        raise WireError("truncated", f"frame of {len(view)} bytes, its payload ends at {end}")
    if len(view) > end:
        raise WireError("bad_length", f"{len(view) - end} bytes after the payload")
    if any(view[sig_end:start]):
        raise WireError("bad_padding", "padding before the payload not zero")
    return Frame(envelope, env_bytes, bytes(view[sig_end - SIGNATURE_BYTES:sig_end]),
                 view[start:end], len(view))


def verify_signature(frame: Frame, key: Ed25519PublicKey) -> bool:
    """Whether the frame's signature is the holder of ``key``'s, over its envelope."""
    try:
        key.verify(frame.signature, SIGNING_CONTEXT + frame.envelope_bytes)
    except InvalidSignature:
        return False
    return True


def verify_digest(frame: Frame) -> None:
    """Raise :class:`WireError` ``digest_mismatch`` unless the payload is what was signed."""
    if hashlib.sha256(frame.payload).digest() != frame.envelope.digest:
        raise WireError("digest_mismatch", f"payload of {frame.envelope.sender} round "
                                           f"{frame.envelope.round} is not the signed one")


class Sealer:
    """The sending side of one node in one run: builds signed frames, numbering them.

    Sequence numbers count up from 0 per sealer; each frame has a fresh random nonce, so two
    sealers of the same node (a restarted peer) never produce the same replay-cache key."""

    def __init__(self, node_id: str, run: str, key: Ed25519PrivateKey,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self.node_id = check_id(node_id)
        self.run = check_id(run, "run id")
        self.key = key
        self.limits = limits
        self.seq = 0

    def seal(self, receiver: str, round: int, kind: str, tensors: Mapping[str, object],
             nonce: bytes | None = None) -> bytes:
        """A signed frame carrying ``tensors`` to ``receiver`` (``nonce`` for tests only)."""
        payload = encode_tensors(tensors, self.limits)
        envelope = Envelope(self.node_id, receiver, self.run, round, self.seq,
                            os.urandom(NONCE_BYTES) if nonce is None else nonce,
                            hashlib.sha256(payload).digest(), len(payload), kind)
        frame = encode_frame(envelope, sign(envelope, self.key), payload)
        if len(frame) > self.limits.max_message_bytes:
            raise ValueError(f"a message of {len(frame)} bytes, "
                             f"Limits.max_message_bytes is {self.limits.max_message_bytes}")
        self.seq += 1
        return frame


__all__ = ["ID_PATTERN", "KIND_PATTERN", "MAGIC", "MAX_ENVELOPE", "SIGNING_CONTEXT", "VERSION",
           "Envelope", "Frame", "Sealer", "WireError", "check_id", "decode_frame",
           "encode_frame", "sign", "verify_digest", "verify_signature"]
