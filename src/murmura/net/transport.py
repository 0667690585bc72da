"""gRPC transport (``grpc.aio``): a server that admits chunked messages, a client that sends.

No protoc and no generated code: one stream-unary method, ``/murmura.net.Peer/Send``,
registered with a generic handler, bytes in (the chunks of one frame,
:mod:`murmura.net.chunks`) and bytes out (``b"ok"``). Refusals end the call with a status:
``PERMISSION_DENIED`` for identity faults, ``RESOURCE_EXHAUSTED`` for rate limits and a full
inbox, ``INVALID_ARGUMENT`` for everything else, the details reading ``refused: REASON: ...``.

**Mutual TLS** with pinned certificates: the server asks for a client certificate and trusts
only the peers file's certificates (each self-signed and not a CA, so a listed peer cannot
mint others); it then maps the client certificate (from the call's ``auth_context``) to a
node id by its fingerprint, refusing unknown ones, and the :class:`~murmura.net.guard.Guard`
requires that id to be the envelope's sender. The client trusts, for each peer, only that
peer's certificate. A certificate not in the peers file fails the TLS handshake (gRPC logs
it; Python never sees the call, so it is not counted). Plain TCP needs ``insecure=True`` on
both the server and its guard (messages are then still signed and checked).

The client never blocks forever: each attempt has a deadline, failed connections are retried
with exponential backoff and jitter a bounded number of times, and :meth:`Client.send`
returns a :class:`Delivery` instead of raising, so a dead neighbour is just a failed delivery.

>>> import asyncio, numpy as np
>>> from murmura.net.identity import Identity, peers_from
>>> from murmura.net.guard import Guard
>>> from murmura.net.wire import Sealer
>>> a, b = Identity.create("a"), Identity.create("b")
>>> peers = peers_from({"peer": [a.entry("127.0.0.1:1"), b.entry("127.0.0.1:2")]})
>>> async def demo():
...     async with Server(Guard("b", "run", peers), b) as server:  # mutual TLS
...         async with Client(peers, a, addresses={"b": server.address}) as client:
...             frame = Sealer("a", "run", a.signing_key).seal("b", 0, "model",
...                                                            {"w": np.ones(2, "f4")})
...             delivery = await client.send("b", frame)
...         message = await server.inbox.get()
...     return delivery.ok, message.sender, message.tensors["w"].tolist()
>>> asyncio.run(demo())
(True, 'a', [1.0, 1.0])
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

import grpc

from murmura.net.chunks import HEADER, Reassembler, split
from murmura.net.errors import WireError
from murmura.net.guard import Guard, Message
from murmura.net.identity import TLS_NAME, Identity, Peers
from murmura.net.limits import DEFAULT_LIMITS, Limits

log = logging.getLogger("murmura.net")

SERVICE = "murmura.net.Peer"
METHOD = f"/{SERVICE}/Send"
OK = b"ok"
_DENIED = {"rate_limited", "inbox_full", "replay_cache_full"}
_AUTH = {"no_tls_identity", "unknown_certificate", "unknown_sender", "sender_mismatch",
         "bad_signature"}
_RETRY = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def grpc_options(limits: Limits) -> list[tuple[str, int | str]]:
    """Channel and server options: gRPC's message limits are one chunk and its header (the
    whole message is bounded by ``limits.max_message_bytes`` while it is reassembled)."""
    most = limits.chunk_bytes + HEADER.size
    return [("grpc.max_receive_message_length", most), ("grpc.max_send_message_length", most),
            # a restarted peer is reachable again within seconds, not gRPC's default 2 min
            ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.max_reconnect_backoff_ms", 2000),
            ("grpc.enable_retries", 0)]  # Client does its own, with the replay rule


def _status(reason: str) -> grpc.StatusCode:
    if reason in _AUTH:
        return grpc.StatusCode.PERMISSION_DENIED
    if reason in _DENIED:
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if reason == "internal_error":
        return grpc.StatusCode.INTERNAL
    return grpc.StatusCode.INVALID_ARGUMENT


class Server:
    """Receives messages for ``guard.me``: verified ones go to ``on_message`` (sync or async)
    or, without it, to :attr:`inbox` (bounded; when full, messages are refused and counted).

    ``identity`` is this node's (its TLS key and certificate); omit it only with
    ``insecure=True``. ``max_streams`` bounds concurrent calls and ``stream_timeout_s`` how
    long one may take, so memory stays under ``max_streams * limits.max_message_bytes``."""

    def __init__(self, guard: Guard, identity: Identity | None = None, *,
                 host: str = "127.0.0.1", port: int = 0, insecure: bool = False,
                 on_message: Callable[[Message], Awaitable[None] | None] | None = None,
                 inbox_size: int = 1024, max_streams: int = 64,
                 stream_timeout_s: float = 60.0) -> None:
        if insecure and not guard.insecure:
            raise ValueError("an insecure server needs Guard(..., insecure=True): without TLS "
                             "there is no transport identity to check")
        if not insecure:
            if identity is None:
                raise ValueError("a TLS server needs this node's Identity (or insecure=True, "
                                 "for local tests only)")
            listed = guard.peers[guard.me].fingerprint
            if identity.fingerprint != listed:
                raise ValueError(f"the certificate of identity {identity.node_id!r} is not the "
                                 f"one the peers file lists for {guard.me!r}")
        self.guard, self.identity, self.insecure = guard, identity, insecure
        self.host, self.port = host, port
        self.on_message = on_message
        self.inbox: asyncio.Queue[Message] = asyncio.Queue(inbox_size)
        self.max_streams, self.stream_timeout_s = max_streams, stream_timeout_s
        self._server: grpc.aio.Server | None = None

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def counters(self):
        return self.guard.counters

    async def start(self) -> int:
        """Listen; returns the port (an ephemeral one if ``port=0``)."""
        server = grpc.aio.server(options=grpc_options(self.guard.limits),
                                 maximum_concurrent_rpcs=self.max_streams)
        handler = grpc.stream_unary_rpc_method_handler(self._send)  # no (de)serializers: bytes
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Send": handler}),))
        target = f"{self.address.rsplit(':', 1)[0]}:{self.port}"
        if self.insecure:
            port = server.add_insecure_port(target)
        else:
            assert self.identity is not None
            creds = grpc.ssl_server_credentials(
                [(self.identity.tls_key_pem, self.identity.tls_cert_pem)],
                root_certificates=self.guard.peers.trust_pem(), require_client_auth=True)
            port = server.add_secure_port(target, creds)
        if port == 0:
            raise OSError(f"cannot listen on {target}")
        await server.start()
        self._server, self.port = server, port
        return port

    async def stop(self, grace: float | None = 0.5) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _collect(self, requests: AsyncIterator[bytes], peer: str | None) -> bytes:
        parts = Reassembler(self.guard.limits)
        while True:
            try:
                chunk = await requests.__anext__()
            except StopAsyncIteration:
                break
            except (grpc.RpcError, asyncio.IncompleteReadError, ConnectionError) as e:
                raise WireError("stream_aborted", f"reading the stream failed: {e}") from e
            parts.feed(chunk)
        return parts.finish()

    async def _send(self, requests: AsyncIterator[bytes], context) -> bytes:
        peer: str | None = None
        try:
            if not self.insecure:
                pems = dict(context.auth_context()).get("x509_pem_cert") or [None]
                peer = self.guard.identify(pems[0])  # counts its own refusal
            try:
                frame = await asyncio.wait_for(self._collect(requests, peer),
                                               self.stream_timeout_s)
            except WireError as err:
                self.guard.record(err, peer)
                raise
            except asyncio.TimeoutError:
                err = WireError("stream_aborted", f"stream over {self.stream_timeout_s:g} s")
                self.guard.record(err, peer)
                raise err from None
            message = self.guard.admit(frame, peer)  # counts its own refusals
            await self._deliver(message, peer)
        except asyncio.CancelledError:
            self.guard.record(WireError("stream_aborted", "the caller cancelled"), peer)
            raise
        except WireError as err:
            await context.abort(_status(err.reason), f"refused: {err}")
        except Exception as e:  # a bug must cost one message, never the peer
            log.exception("node %s: error while receiving from %s", self.guard.me, peer)
            self.guard.record(WireError("internal_error", repr(e)), peer)
            await context.abort(grpc.StatusCode.INTERNAL, "refused: internal_error")
        return OK

    async def _deliver(self, message: Message, peer: str | None) -> None:
        if self.on_message is not None:
            result = self.on_message(message)
            if inspect.isawaitable(result):
                await result
            return
        try:
            self.inbox.put_nowait(message)
        except asyncio.QueueFull:
            err = WireError("inbox_full", f"{self.inbox.maxsize} messages wait unread")
            self.guard.record(err, peer)
            raise err from None


@dataclass(frozen=True)
class Delivery:
    """How a send ended. ``code`` is the last gRPC status (``"OK"`` on success), ``reason``
    the receiver's refusal reason if it refused. A retry refused as ``replay`` counts as
    delivered: an earlier attempt got through and only its answer was lost."""

    ok: bool
    peer: str
    attempts: int
    code: str
    reason: str | None = None
    detail: str = ""
    elapsed_s: float = 0.0


def _reason(details: str | None) -> str | None:
    if details and details.startswith("refused: "):
        return details[len("refused: "):].split(":", 1)[0].strip()
    return None


class Client:
    """Sends frames to peers, one cached channel per peer.

    ``identity`` is this node's (its TLS client certificate); omit it only with
    ``insecure=True``. ``addresses`` overrides the peers file's (a test's ephemeral ports).
    Each attempt has a deadline of ``deadline_s``; unreachable peers and timeouts are
    retried ``attempts - 1`` times, after ``backoff_s * 2**k`` (at most ``backoff_max_s``,
    with jitter), so a send ends within about ``attempts * deadline_s`` plus the backoffs."""

    def __init__(self, peers: Peers, identity: Identity | None = None, *,
                 insecure: bool = False, limits: Limits = DEFAULT_LIMITS,
                 addresses: Mapping[str, str] | None = None, deadline_s: float = 10.0,
                 attempts: int = 3, backoff_s: float = 0.2, backoff_max_s: float = 5.0) -> None:
        if not insecure and identity is None:
            raise ValueError("a TLS client needs this node's Identity (or insecure=True, for "
                             "local tests only)")
        if attempts < 1 or deadline_s <= 0:
            raise ValueError("attempts must be >= 1 and deadline_s > 0")
        self.peers, self.identity, self.insecure, self.limits = peers, identity, insecure, limits
        self.addresses = dict(addresses or {})
        self.deadline_s, self.attempts = deadline_s, attempts
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._random = random.Random()

    def _channel(self, peer_id: str) -> grpc.aio.Channel:
        channel = self._channels.get(peer_id)
        if channel is None:
            peer = self.peers[peer_id]
            target = self.addresses.get(peer_id, peer.address)
            options = grpc_options(self.limits)
            if self.insecure:
                channel = grpc.aio.insecure_channel(target, options=options)
            else:
                assert self.identity is not None
                creds = grpc.ssl_channel_credentials(
                    root_certificates=peer.cert_pem,  # this peer's certificate, nothing else
                    private_key=self.identity.tls_key_pem,
                    certificate_chain=self.identity.tls_cert_pem)
                channel = grpc.aio.secure_channel(
                    target, creds, options=[*options, ("grpc.ssl_target_name_override",
                                                       TLS_NAME)])
            self._channels[peer_id] = channel
        return channel

    async def send(self, peer_id: str, frame: bytes, *,
                   deadline_s: float | None = None) -> Delivery:
        """Send one frame (from :class:`~murmura.net.wire.Sealer`) to ``peer_id``."""
        return await self.send_chunks(peer_id, split(frame, self.limits), deadline_s=deadline_s)

    async def send_chunks(self, peer_id: str, chunks: Iterable[bytes], *,
                          deadline_s: float | None = None) -> Delivery:
        """Send pre-cut chunks as one stream (tools and tests use it to send anything)."""
        if peer_id not in self.peers:
            return Delivery(False, peer_id, 0, "NOT_LISTED", detail="not in the peers file")
        chunks = list(chunks)
        deadline = self.deadline_s if deadline_s is None else deadline_s
        start = time.monotonic()
        call = self._channel(peer_id).stream_unary(METHOD)
        code, details = "UNKNOWN", ""
        for attempt in range(1, self.attempts + 1):
            try:
                await call(iter(chunks), timeout=deadline)
                return Delivery(True, peer_id, attempt, "OK",
                                elapsed_s=time.monotonic() - start)
            except grpc.aio.AioRpcError as e:
                status, details = e.code(), e.details() or ""
                code, reason = status.name, _reason(details)
                if reason == "replay" and attempt > 1:
                    return Delivery(True, peer_id, attempt, code, reason, details,
                                    time.monotonic() - start)
                if status not in _RETRY or attempt == self.attempts:
                    return Delivery(False, peer_id, attempt, code, reason, details,
                                    time.monotonic() - start)
            pause = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
            await asyncio.sleep(pause * self._random.uniform(0.5, 1.0))
        return Delivery(False, peer_id, self.attempts, code, None, details,
                        time.monotonic() - start)

    async def close(self) -> None:
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = ["METHOD", "SERVICE", "Client", "Delivery", "Server", "grpc_options"]
