"""The one exception of the receive path, and the catalogue of reasons it carries.

Everything a peer does with bytes from the network (reassembling chunks, decoding a frame or
a tensor payload, the :class:`~murmura.net.guard.Guard`'s checks) raises only
:class:`WireError`, a :class:`ValueError` with a machine-readable ``reason`` from
:data:`REASONS` and a human-readable ``detail``. A receiver therefore needs one ``except``
clause, and every refusal maps to one counter (``net_refused_<reason>``).

>>> err = WireError("truncated", "frame of 3 bytes, the header alone is 16")
>>> err.reason, isinstance(err, ValueError)
('truncated', True)
>>> str(err)
'truncated: frame of 3 bytes, the header alone is 16'
"""

from __future__ import annotations

REASONS: dict[str, str] = {
    # framing and decoding (murmura.net.chunks, murmura.net.wire, murmura.net.tensors)
    "bad_type": "the input is not bytes",
    "oversize": "a message, or a length it claims, is over Limits.max_message_bytes",
    "truncated": "the input ends before a length it declares",
    "bad_length": "lengths that disagree: trailing bytes, a field longer than its container",
    "bad_magic": "the bytes do not start with the expected magic",
    "bad_version": "a format version this peer does not speak",
    "bad_padding": "reserved or padding bytes that are not zero (the encoding is canonical)",
    "bad_field": "an envelope field out of range (id charset, empty string, round too large)",
    "bad_chunk": "chunk numbering or sizes that do not add up (order, count, size)",
    "chunk_digest": "a chunk whose SHA-256 does not match its data",
    "too_many_tensors": "a payload with more tensors than Limits.max_tensors",
    "bad_name": "a tensor name empty, too long, outside the charset, or repeated",
    "bad_dtype": "a dtype code outside the allow-list",
    "bad_shape": "too many dimensions, or a shape that disagrees with the byte length",
    "tensor_oversize": "a tensor over Limits.max_tensor_bytes",
    # the guard's checks (murmura.net.guard), in the order they run
    "rate_limited": "the sender is over its rate limit (a flood); dropped unread",
    "no_tls_identity": "no TLS identity although the guard is not in insecure mode",
    "unknown_certificate": "a TLS client certificate whose fingerprint no peer has",
    "unknown_sender": "an envelope sender that is not in the peers file",
    "sender_mismatch": "the TLS identity is a different node than the envelope's sender",
    "bad_signature": "the Ed25519 signature does not verify under the sender's key",
    "wrong_receiver": "a message addressed to another node",
    "wrong_run": "a message for another run id",
    "stale_round": "a round too far behind the current one",
    "future_round": "a round too far ahead of the current one",
    "replay": "the same (sender, round, sequence, nonce) seen before",
    "replay_cache_full": "the sender filled its share of the replay cache this window",
    "digest_mismatch": "the payload's SHA-256 differs from the signed digest",
    "duplicate": "a second copy of the same payload for the same (round, kind)",
    "equivocation": "a different payload for the same (round, kind): kept as evidence",
    "unexpected_kind": "a payload kind the caller does not expect",
    "wrong_tensors": "tensor names other than the expected ones",
    "wrong_dtype": "a tensor dtype other than the expected one",
    "wrong_shape": "a tensor shape other than the expected one",
    "non_finite": "NaN or Inf in a floating-point tensor",
    # the transport (murmura.net.transport)
    "stream_aborted": "the sender cancelled or timed out in the middle of a stream",
    "inbox_full": "the receiving application is not keeping up; the message was dropped",
    "internal_error": "a bug in this peer while checking a message (logged with a traceback)",
}


class WireError(ValueError):
    """Bytes from the network refused, with a ``reason`` from :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REASONS:  # a typo here would silently create a new counter
            raise AssertionError(f"unknown WireError reason {reason!r}")
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


__all__ = ["REASONS", "WireError"]
