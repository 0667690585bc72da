"""The receiving side's checks: what a peer accepts, what it refuses, and the counts.

:meth:`Guard.admit` takes one reassembled frame and the node id the transport authenticated
(from the TLS client certificate; ``None`` in insecure mode) and returns a verified
:class:`Message`, or raises :class:`~murmura.net.errors.WireError` (:class:`Refused` for a
failed check) after counting it in :class:`Counters` and logging one line. The checks run
cheapest-first and never trust a field before the one it depends on is checked:

1. ``rate_limited``: a token bucket per sender; with TLS it runs first, keyed by the
   authenticated identity, so a flood costs no parsing and no signature verification;
2. the frame's structure (:func:`~murmura.net.wire.decode_frame`: ``truncated``,
   ``bad_magic``, ``oversize``, ...);
3. ``no_tls_identity`` / ``sender_mismatch`` / ``unknown_sender``: the TLS identity must be
   the envelope's sender, a listed peer;
4. ``bad_signature``: Ed25519 over the envelope, under the sender's listed key (in insecure
   mode the rate limit runs here, once the sender is proven);
5. ``wrong_receiver``, ``wrong_run``, ``stale_round`` / ``future_round`` (a window of
   ``behind`` and ``ahead`` rounds around :attr:`Guard.round`);
6. ``replay``: a cache of (sender, round, sequence, nonce) for the rounds in the window, at
   most ``replay_per_sender`` entries per sender (``replay_cache_full`` past that: a peer
   that floods only starves itself), pruned by :meth:`Guard.set_round`;
7. ``digest_mismatch``: SHA-256 of the payload against the signed digest (only a frame that
   passes it enters the replay cache);
8. ``duplicate`` / ``equivocation``: a second payload from the same sender for the same
   (round, kind): the same bytes again are a duplicate; different bytes are equivocation,
   and both signed envelopes are kept as :class:`Evidence` (:attr:`Guard.evidence`);
9. the payload's tensors (:func:`~murmura.net.tensors.decode_tensors`), then what the caller
   expects (``unexpected_kind``, ``wrong_tensors``, ``wrong_dtype``, ``wrong_shape``), then
   ``non_finite``.

A guard is not thread-safe: use it from one event loop (the transport's).

>>> import numpy as np
>>> from murmura.net.identity import Identity, peers_from
>>> from murmura.net.wire import Sealer
>>> a, b = Identity.create("a"), Identity.create("b")
>>> peers = peers_from({"peer": [a.entry("127.0.0.1:7001"), b.entry("127.0.0.1:7002")]})
>>> guard = Guard("b", "run", peers, expected={"model": {"w": TensorSpec((3,), "float32")}})
>>> frame = Sealer("a", "run", a.signing_key).seal("b", 0, "model", {"w": np.zeros(3, "f4")})
>>> guard.admit(frame, tls_id="a").tensors["w"].tolist()
[0.0, 0.0, 0.0]
>>> try:
...     guard.admit(frame, tls_id="a")  # the same frame again
... except WireError as err:
...     print(err)
replay: a round 0 seq 0 seen before
>>> guard.counters.accepted, guard.counters.refused["replay"]
(1, 1)
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from murmura.net.errors import REASONS, WireError
from murmura.net.identity import Peers, fingerprint
from murmura.net.limits import DEFAULT_LIMITS, Limits
from murmura.net.tensors import decode_tensors
from murmura.net.wire import (
    SIGNING_CONTEXT,
    Envelope,
    check_id,
    decode_frame,
    verify_digest,
    verify_signature,
)

log = logging.getLogger("murmura.net")
LOG_FIRST = 10  # refusals logged per (peer, reason) before they are only counted


class Refused(WireError):
    """A frame that decoded but failed one of the guard's checks."""


@dataclass(frozen=True)
class TensorSpec:
    """What the caller expects of one tensor; ``None`` in the shape matches any length."""

    shape: tuple[int | None, ...]
    dtype: str

    def matches_shape(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.shape) and all(
            e is None or e == s for e, s in zip(self.shape, shape))


@dataclass(frozen=True)
class RateLimit:
    """A token bucket per sender: ``per_s`` messages a second, bursts of ``burst``."""

    per_s: float = 200.0
    burst: float = 400.0


@dataclass(frozen=True)
class Message:
    """A message that passed every check: its envelope, tensors and wire size."""

    envelope: Envelope
    tensors: dict[str, np.ndarray]
    signature: bytes
    size: int

    @property
    def sender(self) -> str:
        return self.envelope.sender

    @property
    def round(self) -> int:
        return self.envelope.round

    @property
    def kind(self) -> str:
        return self.envelope.kind


@dataclass(frozen=True)
class SignedEnvelope:
    """An envelope's exact bytes and the signature over them: checkable by anyone."""

    envelope_bytes: bytes
    signature: bytes

    @property
    def envelope(self) -> Envelope:
        return Envelope.decode(self.envelope_bytes)

    def verify(self, key: Ed25519PublicKey) -> bool:
        try:
            key.verify(self.signature, SIGNING_CONTEXT + self.envelope_bytes)
        except Exception:
            return False
        return True


@dataclass(frozen=True)
class Evidence:
    """Two envelopes the same sender signed for the same (round, kind), with different
    payload digests: proof of equivocation that any holder of the peers file can check."""

    sender: str
    round: int
    kind: str
    first: SignedEnvelope
    second: SignedEnvelope

    def verify(self, key: Ed25519PublicKey) -> bool:
        """Both signatures valid under ``key``, same sender, round and kind, two digests."""
        try:
            a, b = self.first.envelope, self.second.envelope
        except WireError:
            return False
        same = (a.sender, a.round, a.kind) == (b.sender, b.round, b.kind) == (
            self.sender, self.round, self.kind)
        return same and a.digest != b.digest and self.first.verify(key) and \
            self.second.verify(key)


@dataclass
class Counters:
    """What a guard accepted and refused, by reason (every reason present, from 0) and by
    peer (only authenticated ids, so an attacker cannot grow the table)."""

    accepted: int = 0
    accepted_bytes: int = 0
    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    by_peer: dict[str, dict[str, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int)))

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())

    def snapshot(self) -> dict[str, int]:
        """Flat metric columns: ``net_accepted``, ``net_refused_total``,
        ``net_refused_<reason>``."""
        out = {"net_accepted": self.accepted, "net_accepted_bytes": self.accepted_bytes,
               "net_refused_total": self.refused_total}
        out.update({f"net_refused_{r}": n for r, n in self.refused.items()})
        return out


def _specs(expected: Mapping[str, Mapping[str, object] | None] | None
           ) -> dict[str, dict[str, TensorSpec] | None] | None:
    if expected is None:
        return None
    out: dict[str, dict[str, TensorSpec]] = {}
    for kind, tensors in expected.items():
        if tensors is None:
            out[kind] = None
            continue
        out[kind] = {}
        for name, spec in tensors.items():
            if not isinstance(spec, TensorSpec):
                shape, dtype = spec  # type: ignore[misc]
                spec = TensorSpec(tuple(shape), str(np.dtype(dtype)))
            out[kind][name] = TensorSpec(tuple(spec.shape), str(np.dtype(spec.dtype)))
    return out


class Guard:
    """The checks one node (``me``) applies to what it receives in run ``run``.

    ``expected`` maps each payload kind the caller accepts to its tensors
    (``{"model": {"w": TensorSpec((784, 10), "float32")}}``, or ``(shape, dtype)`` pairs);
    ``None`` accepts any kind and any tensors (still decoded and checked for NaN/Inf); a
    kind mapped to ``None`` accepts any tensors. A kind ``family.n`` (the n-th exchange of a
    round) that is not listed itself is checked against ``expected[family]``.
    ``insecure=True`` accepts frames without a TLS identity (plain TCP, for local tests):
    then only the Ed25519 signature tells who sent a frame. ``clock`` is for tests."""

    def __init__(self, me: str, run: str, peers: Peers, *, limits: Limits = DEFAULT_LIMITS,
                 behind: int = 1, ahead: int = 1,
                 expected: Mapping[str, Mapping[str, object] | None] | None = None,
                 rate: RateLimit = RateLimit(), replay_per_sender: int = 4096,
                 max_evidence: int = 1000, insecure: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.me = check_id(me)
        self.run = check_id(run, "run id")
        if me not in peers:
            raise ValueError(f"node {me!r} is not in the peers file")
        if behind < 0 or ahead < 0:
            raise ValueError("the round window (behind, ahead) must be non-negative")
        self.peers = peers
        self.limits = limits
        self.behind, self.ahead = behind, ahead
        self.expected = _specs(expected)
        self.rate = rate
        self.replay_per_sender = replay_per_sender
        self.max_evidence = max_evidence
        self.insecure = insecure
        self.clock = clock
        self.round = 0
        self.counters = Counters()
        self.evidence: list[Evidence] = []
        self.latest: dict[str, int] = {}  # the highest round each proven sender signed
        self._buckets: dict[str, tuple[float, float]] = {}
        self._replay: dict[str, dict[int, set[tuple[int, bytes]]]] = defaultdict(dict)
        self._replay_size: dict[str, int] = defaultdict(int)
        self._first: dict[tuple[str, int, str], SignedEnvelope] = {}
        self._logged: dict[tuple[str, str], int] = defaultdict(int)

    # -- the caller's side ---------------------------------------------------------------

    def set_round(self, round: int) -> None:
        """Move the window to ``round`` and forget replay and equivocation state for
        rounds that fell out of it (they are refused as stale from now on)."""
        self.round = round
        floor = round - self.behind
        for sender, rounds in self._replay.items():
            for r in [r for r in rounds if r < floor]:
                self._replay_size[sender] -= len(rounds.pop(r))
        for key in [k for k in self._first if k[1] < floor]:
            del self._first[key]

    def evidence_against(self, sender: str) -> list[Evidence]:
        """The equivocation evidence recorded against ``sender``."""
        return [e for e in self.evidence if e.sender == sender]

    def identify(self, cert_pem: bytes | None) -> str:
        """The node id of a TLS client certificate, by its fingerprint in the peers file;
        :class:`Refused` ``unknown_certificate`` (counted) if no peer has it."""
        try:
            peer = self.peers.by_fingerprint(fingerprint(cert_pem)) if cert_pem else None
        except ValueError:
            peer = None
        if peer is None:
            err = Refused("unknown_certificate", "TLS client certificate not in the peers file")
            self.record(err, None)
            raise err
        return peer.id

    def record(self, err: WireError, peer: str | None) -> None:
        """Count and log a refusal (the transport calls this for stream-level faults)."""
        self.counters.refused[err.reason] += 1
        who = peer if peer is not None else "unauthenticated"
        self.counters.by_peer[who][err.reason] += 1
        n = self._logged[(who, err.reason)] = self._logged[(who, err.reason)] + 1
        if n <= LOG_FIRST:
            more = "; further ones counted only" if n == LOG_FIRST else ""
            log.warning("node %s refused a message from %s: %s%s", self.me, who, err, more)

    # -- the checks ----------------------------------------------------------------------

    def admit(self, data: bytes, tls_id: str | None = None) -> Message:
        """Check one frame from the peer the transport authenticated as ``tls_id``."""
        proven: list[str | None] = [tls_id]  # who to charge the refusal to, once known
        try:
            message = self._check(data, tls_id, proven)
        except WireError as err:
            self.record(err, proven[0])
            raise
        self.counters.accepted += 1
        self.counters.accepted_bytes += message.size
        return message

    def _limit(self, sender: str) -> None:
        now = self.clock()
        tokens, last = self._buckets.get(sender, (self.rate.burst, now))
        tokens = min(self.rate.burst, tokens + (now - last) * self.rate.per_s)
        if tokens < 1.0:
            self._buckets[sender] = (tokens, now)
            raise Refused("rate_limited", f"{sender} is over {self.rate.per_s:g} messages/s")
        self._buckets[sender] = (tokens - 1.0, now)

    def _check(self, data: bytes, tls_id: str | None, proven: list[str | None]) -> Message:
        if tls_id is None and not self.insecure:
            raise Refused("no_tls_identity", "frame without a TLS identity; the guard is not "
                                             "insecure")
        if tls_id is not None:
            self._limit(tls_id)
        frame = decode_frame(data, self.limits)
        env = frame.envelope
        if tls_id is not None and env.sender != tls_id:
            raise Refused("sender_mismatch", f"TLS identity {tls_id} signs as {env.sender}")
        peer = self.peers.get(env.sender)
        if peer is None:
            raise Refused("unknown_sender", f"sender {env.sender!r} is not in the peers file")
        if not verify_signature(frame, peer.public_key):
            raise Refused("bad_signature", f"envelope claiming {env.sender} round {env.round}")
        proven[0] = env.sender
        if env.round > self.latest.get(env.sender, -1):  # even if refused as out of window
            self.latest[env.sender] = env.round
        if tls_id is None:
            self._limit(env.sender)
        if env.receiver != self.me:
            raise Refused("wrong_receiver", f"for {env.receiver}, this is {self.me}")
        if env.run != self.run:
            raise Refused("wrong_run", f"run {env.run!r}, this is {self.run!r}")
        if env.round < self.round - self.behind:
            raise Refused("stale_round", f"round {env.round}, now {self.round}")
        if env.round > self.round + self.ahead:
            raise Refused("future_round", f"round {env.round}, now {self.round}")
        rounds = self._replay[env.sender]
        seen = rounds.setdefault(env.round, set())
        if (env.seq, env.nonce) in seen:
            raise Refused("replay", f"{env.sender} round {env.round} seq {env.seq} seen before")
        if self._replay_size[env.sender] >= self.replay_per_sender:
            raise Refused("replay_cache_full", f"{env.sender} sent {self.replay_per_sender} "
                                               f"messages in the round window")
        verify_digest(frame)
        # remembered only once the payload checks: a corrupted copy must not make the
        # genuine one look like a replay
        seen.add((env.seq, env.nonce))
        self._replay_size[env.sender] += 1
        self._equivocation(env, frame.envelope_bytes, frame.signature)
        family = env.kind if self.expected is None or env.kind in self.expected else \
            env.kind.split(".", 1)[0]
        if self.expected is not None and family not in self.expected:
            raise Refused("unexpected_kind", f"kind {env.kind!r}; expected "
                                             f"{', '.join(self.expected) or 'none'}")
        tensors = decode_tensors(frame.payload, self.limits)
        if self.expected is not None and self.expected[family] is not None:
            self._match(tensors, self.expected[family])
        for name, array in tensors.items():
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise Refused("non_finite", f"tensor {name!r} from {env.sender} has NaN or Inf")
        return Message(env, tensors, frame.signature, frame.size)

    def _equivocation(self, env: Envelope, env_bytes: bytes, signature: bytes) -> None:
        key = (env.sender, env.round, env.kind)
        first = self._first.get(key)
        if first is None:
            self._first[key] = SignedEnvelope(env_bytes, signature)
            return
        if first.envelope.digest == env.digest:
            raise Refused("duplicate", f"{env.sender} sent round {env.round} {env.kind} again")
        if len(self.evidence) < self.max_evidence:
            self.evidence.append(Evidence(env.sender, env.round, env.kind, first,
                                          SignedEnvelope(env_bytes, signature)))
        raise Refused("equivocation", f"{env.sender} signed two different {env.kind} "
                                      f"payloads for round {env.round}")

    @staticmethod
    def _match(tensors: dict[str, np.ndarray], specs: dict[str, TensorSpec]) -> None:
        if set(tensors) != set(specs):
            raise Refused("wrong_tensors", f"tensors {sorted(tensors)}, expected {sorted(specs)}")
        for name, spec in specs.items():
            array = tensors[name]
            if array.dtype.name != spec.dtype:
                raise Refused("wrong_dtype", f"tensor {name!r} is {array.dtype.name}, "
                                             f"expected {spec.dtype}")
            if not spec.matches_shape(array.shape):
                raise Refused("wrong_shape", f"tensor {name!r} has shape {list(array.shape)}, "
                                             f"expected {list(spec.shape)}")


__all__ = ["Counters", "Evidence", "Guard", "Message", "RateLimit", "Refused", "SignedEnvelope",
           "TensorSpec"]
