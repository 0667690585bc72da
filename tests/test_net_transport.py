"""murmura.net over live gRPC on 127.0.0.1: mutual TLS, insecure mode, hostile traffic."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import os
import random
import struct
import time

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from murmura.net import (
    Client,
    Envelope,
    Guard,
    Identity,
    Limits,
    RateLimit,
    Sealer,
    Server,
    encode_frame,
    encode_tensors,
    peers_from,
    sign,
    split,
)
from murmura.net.chunks import HEADER as CHUNK_HEADER
from murmura.net.transport import METHOD

RUN = "run"
FAST = {"deadline_s": 5.0, "attempts": 1}


@pytest.fixture(scope="module")
def ids() -> dict[str, Identity]:
    return {name: Identity.create(name) for name in ("a", "b", "c", "m", "x")}


@pytest.fixture(scope="module")
def peers(ids):
    """a, b, c and m are listed (m misbehaves); x is not."""
    return peers_from({"peer": [ids[n].entry(f"127.0.0.1:{9000 + i}")
                                for i, n in enumerate("abcm")]})


def frame_from(ids, sender, receiver="b", round=0, kind="model", tensors=None, key=None,
               seq=0):
    payload = encode_tensors(tensors or {"w": np.ones(3, "f4")})
    env = Envelope(sender, receiver, RUN, round, seq, os.urandom(16),
                   hashlib.sha256(payload).digest(), len(payload), kind)
    return encode_frame(env, sign(env, key or ids[sender].signing_key), payload)


async def _serve(guard, identity, body, **server_kw):
    async with Server(guard, identity, **server_kw) as server:
        return await body(server)


def serve(guard, identity, body, **server_kw):
    return asyncio.run(asyncio.wait_for(_serve(guard, identity, body, **server_kw), 60))


def test_mutual_tls_accepts_a_listed_peer_and_refuses_the_rest(ids, peers):
    guard = Guard("b", RUN, peers)

    async def body(server):
        address = {"b": server.address}
        async with Client(peers, ids["a"], addresses=address, **FAST) as a:
            ok = await a.send("b", frame_from(ids, "a"))
            assert ok.ok and ok.code == "OK" and ok.attempts == 1
            message = await asyncio.wait_for(server.inbox.get(), 5)
            assert message.sender == "a" and message.tensors["w"].tolist() == [1, 1, 1]
            replay = await a.send("b", frame_from(ids, "a", kind="other", seq=1))
            assert replay.ok
        # x's certificate is not in b's peers file: the TLS handshake fails
        async with Client(peers, ids["x"], addresses=address, **FAST) as x:
            refused = await x.send("b", frame_from(ids, "a", key=ids["x"].signing_key))
            assert not refused.ok and refused.code == "UNAVAILABLE"
        # c is listed, but signs as a (with its own key): the TLS identity is c
        async with Client(peers, ids["c"], addresses=address, **FAST) as c:
            spoof = await c.send("b", frame_from(ids, "a", kind="x", key=ids["c"].signing_key))
            assert not spoof.ok and spoof.code == "PERMISSION_DENIED"
            assert spoof.reason == "sender_mismatch"
            forged = await c.send("b", frame_from(ids, "c", key=Ed25519PrivateKey.generate()))
            assert forged.reason == "bad_signature"
            assert (await c.send("b", frame_from(ids, "c"))).ok
        # a certificate issued by a listed peer's key (a's certificate is not a CA)
        minted = _issued_by(ids["a"])
        async with Client(peers, minted, addresses=address, **FAST) as fake:
            assert not (await fake.send("b", frame_from(ids, "a", kind="y"))).ok
        # a plain-TCP client cannot talk to a TLS server
        async with Client(peers, insecure=True, addresses=address, **FAST) as plain:
            assert (await plain.send("b", frame_from(ids, "a", kind="z"))).code == "UNAVAILABLE"
        return server.inbox.qsize()

    assert serve(guard, ids["b"], body) == 2  # a's second and c's own
    refused = guard.counters.refused
    assert guard.counters.accepted == 3
    assert refused["sender_mismatch"] == 1 and refused["bad_signature"] == 1
    assert guard.counters.refused_total == 2  # the TLS handshake failures never reach Python


def _issued_by(issuer: Identity) -> Identity:
    """A certificate for a fresh key, signed by ``issuer``'s TLS key."""
    issuer_key = serialization.load_pem_private_key(issuer.tls_key_pem, None)
    issuer_cert = x509.load_pem_x509_certificate(issuer.tls_cert_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "a")]))
            .issuer_name(issuer_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("murmura-peer")]), False)
            .sign(issuer_key, hashes.SHA256()))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return Identity("a", Ed25519PrivateKey.generate(), pem,
                    cert.public_bytes(serialization.Encoding.PEM))


def test_insecure_mode_only_when_asked(ids, peers):
    with pytest.raises(ValueError, match="insecure=True"):
        Server(Guard("b", RUN, peers, insecure=True), None, insecure=True).__class__(
            Guard("b", RUN, peers), None)
    with pytest.raises(ValueError, match="Guard\\(..., insecure=True\\)"):
        Server(Guard("b", RUN, peers), None, insecure=True)
    with pytest.raises(ValueError, match="Identity"):
        Client(peers)
    with pytest.raises(ValueError, match="not the one the peers file lists"):
        Server(Guard("b", RUN, peers), ids["a"])
    guard = Guard("b", RUN, peers, insecure=True)

    async def body(server):
        address = {"b": server.address}
        async with Client(peers, insecure=True, addresses=address, **FAST) as plain:
            assert (await plain.send("b", frame_from(ids, "a"))).ok
            forged = await plain.send("b", frame_from(ids, "c", key=ids["a"].signing_key))
            assert forged.reason == "bad_signature"  # still signed and checked
        async with Client(peers, ids["a"], addresses=address, **FAST) as tls:
            assert not (await tls.send("b", frame_from(ids, "a", kind="k"))).ok
        return (await server.inbox.get()).sender

    assert serve(guard, None, body, insecure=True) == "a"
    assert guard.counters.accepted == 1 and guard.counters.refused["bad_signature"] == 1


def test_unreachable_peer_fails_within_the_deadlines(ids, peers):
    async def body():
        async with Client(peers, ids["a"], addresses={"b": "127.0.0.1:1"}, deadline_s=0.5,
                          attempts=3, backoff_s=0.05) as client:
            start = time.monotonic()
            result = await client.send("b", frame_from(ids, "a"))
            return result, time.monotonic() - start

    result, elapsed = asyncio.run(body())
    assert not result.ok and result.attempts == 3 and result.code == "UNAVAILABLE"
    assert elapsed < 3 * 0.5 + 1.0


def test_a_stalled_stream_is_cut_and_counted(ids, peers):
    guard = Guard("b", RUN, peers)

    async def body(server):
        async with Client(peers, ids["m"], addresses={"b": server.address}, **FAST) as client:
            chunks = split(frame_from(ids, "m"), Limits())

            async def stall():
                yield chunks[0][:CHUNK_HEADER.size]  # a header promising data never sent
                await asyncio.sleep(10)

            call = client._channel("b").stream_unary(METHOD)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(stall(), timeout=5)
            return info.value.details()

    details = serve(guard, ids["b"], body, stream_timeout_s=0.3)
    assert details.startswith("refused: truncated") or "stream_aborted" in details
    assert guard.counters.refused_total == 1


def hostile_streams(ids, limits: Limits, rng: random.Random) -> list[tuple[str, list[bytes]]]:
    """A few hundred bad streams from m (listed, misbehaving): (expected reason, chunks)."""
    good = frame_from(ids, "m", kind="bait", round=3)
    out: list[tuple[str, list[bytes]]] = []
    for _ in range(60):
        out.append(("bad_magic", [rng.randbytes(rng.randrange(CHUNK_HEADER.size, 400))]))
    for _ in range(40):
        cut = rng.randrange(1, len(good))
        out.append(("truncated", split(good[:cut], limits)))
    for _ in range(60):
        flipped = bytearray(good)
        pos = rng.randrange(len(good) - 16, len(good))  # in the payload
        flipped[pos] ^= 1 << rng.randrange(8)
        out.append(("digest_mismatch", split(bytes(flipped), limits)))
    for i in range(30):
        out.append(("sender_mismatch", split(frame_from(ids, "a", kind=f"s{i}",
                                                        key=ids["m"].signing_key), limits)))
    for i in range(30):
        nan = np.array([1.0, np.nan, 2.0], "f4")
        out.append(("non_finite", split(frame_from(ids, "m", kind=f"n{i}", round=3,
                                                   tensors={"w": nan}), limits)))
    for i in range(20):
        out.append(("stale_round", split(frame_from(ids, "m", round=0, kind=f"t{i}"), limits)))
    for i in range(20):
        out.append(("wrong_receiver", split(frame_from(ids, "m", "c", kind=f"r{i}"), limits)))
    big = split(frame_from(ids, "m", kind="big", tensors={"w": np.zeros(40000, "f4")}), limits)
    for _ in range(20):
        bad = bytearray(big[1])
        bad[-1] ^= 0xFF
        out.append(("chunk_digest", [big[0], bytes(bad), *big[2:]]))
    for _ in range(10):
        out.append(("truncated", big[:-1]))  # the stream ends early
    for _ in range(10):
        fields = list(CHUNK_HEADER.unpack_from(big[0]))
        fields[4] = 1 << 40
        out.append(("oversize", [CHUNK_HEADER.pack(*fields) + big[0][CHUNK_HEADER.size:]]))
    return out


def test_live_server_survives_hostile_traffic_and_keeps_accepting(ids, peers):
    limits = Limits(chunk_bytes=65536, max_message_bytes=1 << 20)
    guard = Guard("b", RUN, peers, limits=limits, rate=RateLimit(1e6, 1e6))
    guard.set_round(3)  # round 0 is now stale
    rng = random.Random(7)
    hostile = hostile_streams(ids, limits, rng)
    assert len(hostile) >= 300
    valid = 60

    async def body(server):
        address = {"b": server.address}
        gate = asyncio.Semaphore(8)  # under the server's max_streams: every call is handled
        async with Client(peers, ids["m"], limits=limits, addresses=address, **FAST) as m, \
                Client(peers, ids["a"], limits=limits, addresses=address, **FAST) as a:
            sealer = Sealer("a", RUN, ids["a"].signing_key, limits)

            async def attack(chunks):
                async with gate:
                    return await m.send_chunks("b", chunks)

            async def honest(i):
                async with gate:
                    frame = sealer.seal("b", 3, f"v{i}", {"w": np.full(3, i, "f4")})
                    return await a.send("b", frame)

            jobs = [attack(c) for _, c in hostile] + [honest(i) for i in range(valid)]
            order = list(range(len(jobs)))
            rng.shuffle(order)  # valid messages interleaved with the attack
            results = await asyncio.gather(*(jobs[i] for i in order))
            back = [None] * len(jobs)
            for i, r in zip(order, results):
                back[i] = r
            final = await a.send("b", sealer.seal("b", 3, "final", {"w": np.zeros(3, "f4")}))
        received = [server.inbox.get_nowait() for _ in range(server.inbox.qsize())]
        return back, final, received

    results, final, received = serve(guard, ids["b"], body)
    hostile_results, honest_results = results[:len(hostile)], results[len(hostile):]
    assert all(r.ok for r in honest_results) and final.ok
    assert [r.reason for r in hostile_results] == [reason for reason, _ in hostile]
    assert not any(r.ok for r in hostile_results)
    assert sorted(int(m.tensors["w"][0]) for m in received if m.kind != "final") == \
        list(range(valid))
    assert {m.sender for m in received} == {"a"}
    counters = guard.counters
    assert counters.accepted == valid + 1
    assert counters.refused_total == len(hostile)
    assert sum(counters.by_peer["m"].values()) == len(hostile)


def test_flood_from_one_peer_is_rate_limited(ids, peers):
    guard = Guard("b", RUN, peers, rate=RateLimit(per_s=1.0, burst=10))

    async def body(server):
        address = {"b": server.address}
        async with Client(peers, ids["m"], addresses=address, **FAST) as m, \
                Client(peers, ids["a"], addresses=address, **FAST) as a:
            flood = [await m.send("b", frame_from(ids, "m", kind=f"f{i}")) for i in range(40)]
            honest = await a.send("b", frame_from(ids, "a"))
        return flood, honest

    flood, honest = serve(guard, ids["b"], body)
    assert sum(r.ok for r in flood) in (10, 11)  # the burst, plus a token that refilled
    limited = [r for r in flood if not r.ok]
    assert all(r.reason == "rate_limited" and r.code == "RESOURCE_EXHAUSTED" for r in limited)
    assert honest.ok
    assert guard.counters.refused["rate_limited"] == len(limited)


def test_on_message_callback_and_full_inbox(ids, peers):
    got = []

    async def collect(message):
        got.append(message.kind)

    async def body(server):
        async with Client(peers, ids["a"], addresses={"b": server.address}, **FAST) as a:
            return [await a.send("b", frame_from(ids, "a", kind=f"k{i}")) for i in range(3)]

    results = serve(Guard("b", RUN, peers), ids["b"], body, on_message=collect)
    assert all(r.ok for r in results) and got == ["k0", "k1", "k2"]
    guard = Guard("b", RUN, peers)
    results = serve(guard, ids["b"], body, inbox_size=2)
    assert [r.ok for r in results] == [True, True, False] and results[2].reason == "inbox_full"
    assert guard.counters.refused["inbox_full"] == 1


def test_grpc_message_limit_follows_the_chunk_size(ids, peers):
    limits = Limits(chunk_bytes=65536, max_message_bytes=1 << 20)
    guard = Guard("b", RUN, peers, limits=limits)

    async def body(server):
        lax = Limits(chunk_bytes=1 << 18, max_message_bytes=1 << 20)
        async with Client(peers, ids["a"], limits=lax, addresses={"b": server.address},
                          **FAST) as a:
            frame = frame_from(ids, "a", tensors={"w": np.zeros(50000, "f4")})
            too_big = await a.send_chunks("b", split(frame, lax))
            fine = await a.send_chunks("b", split(frame, limits))
        return too_big, fine

    too_big, fine = serve(guard, ids["b"], body)
    assert not too_big.ok and too_big.code == "RESOURCE_EXHAUSTED" and fine.ok
    assert struct.calcsize("<4sIIIQ32s") == CHUNK_HEADER.size
