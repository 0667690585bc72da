"""A peer's network as the engine sees it: send tensors, wait for the neighbours' with a
deadline and a quorum, never for ever.

:class:`Mesh` runs the gRPC :class:`~murmura.net.transport.Server` and
:class:`~murmura.net.transport.Client` on an asyncio event loop in a background thread, so
the engine (plain synchronous torch code in the main thread) calls :meth:`Mesh.exchange`
and gets back what its neighbours sent for that ``(round, kind)``. Verified messages land
in a mailbox keyed by ``(round, kind, sender)`` (messages from neighbours a few rounds ahead
wait there); the round window, the replay cache and every check are the
:class:`~murmura.net.guard.Guard`'s.

:meth:`Mesh.exchange` sends first, then waits until every expected sender's message is in,
or ``deadline_s`` has passed; if fewer than ``quorum`` of them arrived by then it waits at
most one more deadline for the quorum, then goes on with what it has. A neighbour that
missed :data:`SUSPECT` exchanges in a row is no longer waited for (what it sends is still
used) until a message from it arrives again, so a dead neighbour costs two deadlines, not
one per round, and never a hang; the caller decides what a missing message means (the peer
runtime moves its weight onto the node's own model).

>>> import numpy as np
>>> from murmura.net.identity import Identity, peers_from
>>> a, b = Identity.create("a"), Identity.create("b")
>>> peers = peers_from({"peer": [a.entry("127.0.0.1:1"), b.entry("127.0.0.1:2")]})
>>> with Mesh("a", "run", peers, a) as ma, Mesh("b", "run", peers, b) as mb:
...     ma.addresses["b"] = mb.address; mb.addresses["a"] = ma.address
...     ma.send("b", 0, "x", {"w": np.ones(2, "f4")})
...     got = mb.exchange(0, "x", {}, ["a"], deadline_s=10)
>>> got["a"]["w"].tolist()
[1.0, 1.0]
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping

import numpy as np

from murmura.net.errors import WireError
from murmura.net.guard import Guard, Message, RateLimit
from murmura.net.identity import Identity, Peers
from murmura.net.limits import DEFAULT_LIMITS, Limits
from murmura.net.transport import Client, Delivery, Server
from murmura.net.wire import Sealer

log = logging.getLogger("murmura.net")

Tensors = dict[str, np.ndarray]
SUSPECT = 2  # exchanges in a row a sender may miss before it is no longer waited for


class Mesh:
    """One peer's server, client and mailbox (see the module docstring).

    ``ahead`` is how many rounds ahead of this peer a message may be and still be kept (a
    neighbour that went on without it, or a restarted peer catching up); ``listen`` is
    ``host:port`` (port 0: an ephemeral one, see :attr:`address`)."""

    def __init__(self, me: str, run: str, peers: Peers, identity: Identity, *,
                 listen: str = "127.0.0.1:0", insecure: bool = False,
                 limits: Limits = DEFAULT_LIMITS, addresses: Mapping[str, str] | None = None,
                 ahead: int = 64, send_deadline_s: float = 10.0, attempts: int = 3,
                 rate: RateLimit | None = None,
                 expected: Mapping[str, Mapping[str, object] | None] | None = None) -> None:
        if identity is None:
            raise ValueError("a peer needs its identity (murmura keygen): it signs every "
                             "message, with or without TLS")
        host, sep, port = listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"listen address {listen!r} is not HOST:PORT (port 0: any free "
                             "one)")
        self.me, self.run, self.peers, self.identity = me, run, peers, identity
        self.insecure, self.limits = insecure, limits
        self.guard = Guard(me, run, peers, limits=limits, behind=1, ahead=ahead,
                           insecure=insecure, rate=rate or RateLimit(),
                           replay_per_sender=64 * (ahead + 2), expected=expected)
        self.server = Server(self.guard, identity, host=host.strip("[]") or "127.0.0.1",
                             port=int(port or 0), insecure=insecure, on_message=self._arrived)
        self.addresses: dict[str, str] = dict(addresses or {})
        self._send_deadline_s, self._attempts = send_deadline_s, attempts
        self.sealer = Sealer(me, run, identity.signing_key, limits)
        self.round = 0
        self._mail: dict[tuple[int, str], dict[str, Tensors]] = defaultdict(dict)
        self._latest: dict[str, int] = {}
        self._misses: dict[str, int] = {}
        self._cv = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: Client | None = None
        self._pending: set = set()
        self.sent_frames = 0
        self.sent_bytes = 0
        self.failed_deliveries = 0
        self.missing = 0
        self.late_rounds = 0

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Mesh:
        """Start the event loop thread and listen; returns once the server is up."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.server.start())
                self._client = Client(self.peers, self.identity, insecure=self.insecure,
                                      limits=self.limits, addresses=self.addresses,
                                      deadline_s=self._send_deadline_s,
                                      attempts=self._attempts)
                self._client.addresses = self.addresses  # shared: callers may add to it
            except BaseException as error:  # reported to the starting thread
                failure.append(error)
                ready.set()
                return
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=main, name=f"mesh-{self.me}", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise OSError(f"peer {self.me} cannot listen on {self.server.address}: "
                          f"{failure[0]}") from failure[0]
        return self

    @property
    def address(self) -> str:
        return self.server.address

    def close(self, grace_s: float = 2.0) -> None:
        """Let sends in flight finish (at most ``grace_s``), then stop the loop."""
        loop = self._loop
        if loop is None:
            return

        async def shutdown() -> None:
            pending = list(self._pending)
            if pending:
                await asyncio.wait(pending, timeout=grace_s)
            if self._client is not None:
                await self._client.close()
            await self.server.stop(0.2)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(grace_s + 5)
        except Exception:  # a loop already broken: nothing left to flush
            pass
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        self._loop = None

    def __enter__(self) -> Mesh:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- receiving (runs on the event loop) ----------------------------------------------

    def _arrived(self, message: Message) -> None:
        with self._cv:
            if message.round < self.round - 1:  # raced with set_round: already stale
                return
            self._mail[(message.round, message.kind)][message.sender] = message.tensors
            self._misses[message.sender] = 0
            if message.round > self._latest.get(message.sender, -1):
                self._latest[message.sender] = message.round
            self._cv.notify_all()

    # -- the engine's side ---------------------------------------------------------------

    def set_round(self, round: int) -> None:
        """This peer is now in ``round``: the guard's window moves and older mail goes."""
        with self._cv:
            self.round = round
            for key in [k for k in self._mail if k[0] < round - 1]:
                del self._mail[key]
        if self._loop is not None:
            done = threading.Event()

            def move() -> None:
                self.guard.set_round(round)
                done.set()

            self._loop.call_soon_threadsafe(move)
            done.wait(5)

    def next_mail(self, timeout_s: float, skip: Iterable[tuple[int, str]] = ()
                  ) -> tuple[int, str] | None:
        """The earliest ``(round, kind)`` with mail, other than ``hello`` and ``skip``
        (waits at most ``timeout_s`` for one): how a server learns what to aggregate next."""
        skip = set(skip)

        def order(key: tuple[int, str]) -> tuple[int, str, int]:
            family, _, index = key[1].partition(".")
            return key[0], family, int(index) if index.isdigit() else -1

        def first() -> tuple[int, str] | None:
            keys = [k for k, box in self._mail.items()
                    if box and k[1] != "hello" and k not in skip]
            return min(keys, key=order) if keys else None

        with self._cv:
            self._cv.wait_for(lambda: first() is not None, timeout=timeout_s)
            return first()

    def refuse(self, reason: str, sender: str, detail: str) -> None:
        """Count and log a refusal the engine's side found (a tensor that is not the shape
        the rule expects), on the event loop, where the guard's counters live."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.guard.record, WireError(reason, detail), sender)

    def latest_rounds(self) -> dict[str, int]:
        """The highest round each peer has signed a message to this one for (verified
        signatures only; rounds beyond the window count, though the message was refused)."""
        with self._cv:
            latest = dict(self._latest)
        for sender, round_ in list(self.guard.latest.items()):
            latest[sender] = max(round_, latest.get(sender, -1))
        return latest

    def send(self, receiver: str, round: int, kind: str, tensors: Mapping[str, object]
             ) -> None:
        """Seal and send without waiting (the delivery is counted when it ends)."""
        frame = self.sealer.seal(receiver, round, kind, tensors)
        self.sent_frames += 1
        self.sent_bytes += len(frame)
        assert self._loop is not None and self._client is not None, "start() the mesh first"
        client = self._client

        async def deliver() -> Delivery:
            return await client.send(receiver, frame)

        def launch() -> None:
            task = self._loop.create_task(deliver())
            self._pending.add(task)
            task.add_done_callback(self._delivered)

        self._loop.call_soon_threadsafe(launch)

    def _delivered(self, task: asyncio.Task) -> None:
        self._pending.discard(task)
        if task.cancelled() or task.exception() is not None or not task.result().ok:
            self.failed_deliveries += 1
            result = None if task.cancelled() or task.exception() else task.result()
            if result is not None:
                log.info("node %s: message to %s not delivered (%s %s)", self.me, result.peer,
                         result.code, result.reason or "")

    def wait(self, round: int, kind: str, expect: Iterable[str], *, deadline_s: float,
             quorum: float = 1.0) -> dict[str, Tensors]:
        """What the ``expect``ed senders sent for ``(round, kind)`` (see the module
        docstring for the deadline and the quorum); the mail is taken out of the box."""
        expect = list(dict.fromkeys(expect))
        start = time.monotonic()
        with self._cv:
            box = self._mail[(round, kind)]
            # a sender silent for SUSPECT exchanges in a row is not waited for (its message
            # is still taken if it comes in time) until it is heard from again
            live = [s for s in expect if self._misses.get(s, 0) < SUSPECT]
            need = math.ceil(quorum * len(live) - 1e-9)

            def have() -> int:
                return sum(1 for s in live if s in box)

            self._cv.wait_for(lambda: have() == len(live), timeout=deadline_s)
            if have() < need:
                left = 2 * deadline_s - (time.monotonic() - start)
                self._cv.wait_for(lambda: have() >= need, timeout=max(0.0, left))
            got = {s: box[s] for s in expect if s in box}
            self._mail.pop((round, kind), None)
            for s in expect:
                self._misses[s] = 0 if s in got else self._misses.get(s, 0) + 1
        if len(got) < len(expect):
            self.missing += len(expect) - len(got)
            self.late_rounds += 1
            log.info("node %s round %d %s: %d of %d messages by the deadline (missing %s)",
                     self.me, round, kind, len(got), len(expect),
                     ", ".join(sorted(set(expect) - set(got))[:8]))
        return got

    def exchange(self, round: int, kind: str, outgoing: Mapping[str, Mapping[str, object]],
                 expect: Iterable[str], *, deadline_s: float, quorum: float = 1.0
                 ) -> dict[str, Tensors]:
        """Send ``outgoing`` (receiver -> tensors), then :meth:`wait` for ``expect``."""
        for receiver, tensors in outgoing.items():
            self.send(receiver, round, kind, tensors)
        return self.wait(round, kind, expect, deadline_s=deadline_s, quorum=quorum)

    def hello(self, neighbours: Iterable[str], timeout_s: float) -> set[str]:
        """Before round 0: tell every neighbour this peer is up, resending to those not yet
        listening, and wait for theirs (at most ``timeout_s``). Returns who answered."""
        neighbours = sorted(set(neighbours))
        assert self._loop is not None and self._client is not None
        client, end = self._client, time.monotonic() + timeout_s

        async def greet(peer: str) -> None:
            frame = self.sealer_frame(peer)
            pause = 0.1
            while time.monotonic() < end:
                delivery = await client.send(peer, frame, deadline_s=min(5.0, timeout_s))
                if delivery.ok or delivery.reason is not None:  # a refusal: it is listening
                    return
                await asyncio.sleep(pause)
                pause = min(1.0, pause * 2)

        async def greet_all() -> None:
            await asyncio.gather(*(greet(p) for p in neighbours))

        future = asyncio.run_coroutine_threadsafe(greet_all(), self._loop)
        got = self.wait(0, "hello", neighbours, deadline_s=timeout_s / 2)
        future.result(timeout_s + 10)
        return set(got)

    def sealer_frame(self, peer: str) -> bytes:
        frame = self.sealer.seal(peer, 0, "hello", {})
        self.sent_frames += 1
        self.sent_bytes += len(frame)
        return frame

    def counters(self) -> dict[str, int]:
        """Metric columns: the guard's (``net_accepted``, ``net_refused_<reason>``) and the
        sending side's."""
        out = self.guard.counters.snapshot()
        out.update(net_sent_frames=self.sent_frames, net_sent_bytes=self.sent_bytes,
                   net_failed_deliveries=self.failed_deliveries, net_missing=self.missing,
                   net_equivocations=len(self.guard.evidence))
        return out


__all__ = ["Mesh"]
