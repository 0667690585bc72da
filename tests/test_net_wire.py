"""murmura.net without sockets: identity and peers file, codecs, chunks, the guard, fuzzing."""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import struct

import numpy as np
import pytest
import tomli_w
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from murmura.net import (
    REASONS,
    Envelope,
    Guard,
    Identity,
    Limits,
    PeersError,
    RateLimit,
    Reassembler,
    Sealer,
    TensorSpec,
    WireError,
    decode_frame,
    decode_tensors,
    encode_frame,
    encode_tensors,
    generate,
    load_peers,
    peers_from,
    sign,
    split,
    write_peers,
)
from murmura.net.chunks import HEADER as CHUNK_HEADER
from murmura.net.tensors import DTYPES

# ---------------------------------------------------------------------------------------------
# identities and the peers file


@pytest.fixture(scope="module")
def ids() -> dict[str, Identity]:
    return {name: Identity.create(name) for name in ("a", "b", "c")}


@pytest.fixture(scope="module")
def peers(ids):
    return peers_from({"peer": [ids[n].entry(f"127.0.0.1:{7000 + i}")
                                for i, n in enumerate(ids)]})


def test_generate_writes_private_keys_0600_and_loads_back(tmp_path):
    ident = generate("node-1", tmp_path / "k")
    for name in ("ed25519.key", "tls.key"):
        assert (tmp_path / "k" / name).stat().st_mode & 0o777 == 0o600
    back = Identity.load(tmp_path / "k")
    assert back.node_id == "node-1" and back.fingerprint == ident.fingerprint
    assert back.signing_key.sign(b"x") == ident.signing_key.sign(b"x")  # Ed25519: deterministic
    assert len(ident.fingerprint) == 64
    with pytest.raises(FileExistsError, match="refusing to replace"):
        generate("node-1", tmp_path / "k")
    generate("node-1", tmp_path / "k", overwrite=True)
    os.chmod(tmp_path / "k" / "tls.key", 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        Identity.load(tmp_path / "k")


def test_peers_file_round_trip_with_certificate_paths(tmp_path, ids):
    for name, ident in ids.items():
        ident.save(tmp_path / name)
    entries = [{**ids[n].entry(f"10.0.0.{i}:7000"), "certificate": f"{n}/tls.crt"}
               for i, n in enumerate(ids, 1)]
    (tmp_path / "peers.toml").write_text(tomli_w.dumps({"peer": entries}))
    loaded = load_peers(tmp_path / "peers.toml")
    assert list(loaded) == ["a", "b", "c"]
    assert loaded["b"].address == "10.0.0.2:7000"
    assert loaded.by_fingerprint(ids["c"].fingerprint).id == "c"
    assert loaded.by_fingerprint("0" * 64) is None
    path = write_peers(tmp_path / "inline.toml", [(ids["a"], "[::1]:9000")])
    assert load_peers(path)["a"].host == "::1"


def _broken(ids, index, **change):
    entries = [ids[n].entry(f"127.0.0.1:{7000 + i}") for i, n in enumerate(ids)]
    entries[index].update(change)
    for key, value in change.items():
        if value is None:
            del entries[index][key]
    return {"peer": entries}


@pytest.mark.parametrize("index, change, field, words", [
    (1, {"id": "a"}, "id", "the same as peer #0"),
    (2, {"address": "127.0.0.1:7000"}, "address", "the same as peer #0"),
    (1, {"address": "nowhere"}, "address", "host:port"),
    (1, {"address": "h:70000"}, "address", "outside 1..65535"),
    (1, {"ed25519": "zz" * 32}, "ed25519", "64 hex digits"),
    (1, {"ed25519": "ab" * 16}, "ed25519", "64 hex digits"),
    (1, {"fingerprint": "12" * 32}, "fingerprint", "does not match"),
    (1, {"fingerprint": "xyz"}, "fingerprint", "64 hex digits"),
    (1, {"certificate": "-----BEGIN CERTIFICATE-----\ngarbage\n"}, "certificate", "PEM"),
    (1, {"certificate": "missing.crt"}, "certificate", "cannot read"),
    (1, {"id": "bad id!"}, "id", "characters"),
    (1, {"ed25519": None}, "ed25519", "missing"),
    (1, {"colour": "red"}, "colour", "unknown field"),
])
def test_peers_file_errors_name_the_peer_and_the_field(ids, index, change, field, words):
    with pytest.raises(PeersError) as info:
        peers_from(_broken(ids, index, **change))
    message = str(info.value)
    assert f"peer #{index}" in message and f"field {field!r}" in message and words in message


def test_peers_file_duplicate_key_and_bad_toml(tmp_path, ids):
    data = _broken(ids, 2, ed25519=ids["a"].entry()["ed25519"])
    with pytest.raises(PeersError, match=r"peer #2 \('c'\), field 'ed25519': the same as peer #0"):
        peers_from(data)
    (tmp_path / "p.toml").write_text("[[peer]\nid = 1")
    with pytest.raises(PeersError, match="p.toml"):
        load_peers(tmp_path / "p.toml")
    with pytest.raises(PeersError, match="no \\[\\[peer\\]\\] tables"):
        peers_from({"peer": []})


# ---------------------------------------------------------------------------------------------
# codecs


@pytest.mark.parametrize("shape", [(), (0,), (5,), (3, 0, 2), (2, 3, 4), (1,) * 8])
@pytest.mark.parametrize("dtype", [dt.name for dt in DTYPES.values()])
def test_tensor_round_trip(dtype, shape):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal(shape) * 50).astype(dtype)
    out = decode_tensors(encode_tensors({"t": array, "u": array.T}))
    for name, original in (("t", array), ("u", array.T)):
        assert out[name].dtype == original.dtype and out[name].shape == original.shape
        assert np.array_equal(out[name], original)
        assert out[name].ctypes.data % 8 == 0 or out[name].size == 0  # aligned views


def test_tensor_inputs_big_endian_strided_and_torch():
    big = np.arange(6, dtype=">f8").reshape(2, 3)[:, ::2]
    out = decode_tensors(encode_tensors({"big": big, "torch": torch.arange(4.0),
                                         "scalar": 3.5}))
    assert out["big"].dtype == np.dtype("<f8") and out["big"].tolist() == [[0, 2], [3, 5]]
    assert out["torch"].tolist() == [0, 1, 2, 3] and out["scalar"].shape == ()
    assert torch.equal(torch.from_numpy(out["torch"].copy()), torch.arange(4.0))
    with pytest.raises(ValueError, match="allow-list"):
        encode_tensors({"c": np.zeros(2, np.complex64)})
    with pytest.raises(ValueError, match="name"):
        encode_tensors({"bad name": np.zeros(2)})


def test_exact_bytes():
    payload = encode_tensors({"x": np.array([1, -2], "<i2")})
    assert payload.hex() == ("544e5352" "01000000"  # magic, count
                             "0100" "05" "01" "0400000000000000"  # name len, int16, ndim, bytes
                             "0200000000000000" "78" "000000"  # dim 2, "x", padding
                             "0100feff" "00000000")  # data, padding
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    frame = Sealer("a", "r", key).seal("b", 2, "model", {"x": np.array([1, -2], "<i2")},
                                       nonce=bytes(16))
    assert frame[:16].hex() == "4d524d52" "01000000" "54000000" "00000000"
    assert len(frame) == 208
    assert hashlib.sha256(frame).hexdigest() == (
        "8199346f75893ca87eb16e96764d249c168c6091e3f58546400e64cadf957465")
    decoded = decode_frame(frame)
    assert decoded.envelope.encode() == decoded.envelope_bytes  # canonical
    assert bytes(decoded.payload) == payload


def test_multi_chunk_model_round_trip(ids, peers):
    limits = Limits(chunk_bytes=65536)
    rng = np.random.default_rng(1)
    model = {"layer0.weight": rng.standard_normal((200, 300)).astype("f4"),
             "layer0.bias": rng.standard_normal(200).astype("f4"),
             "steps": np.array(12, dtype=np.int64)}
    frame = Sealer("a", "run", ids["a"].signing_key, limits).seal("b", 0, "model", model)
    chunks = split(frame, limits)
    assert len(chunks) == -(-len(frame) // 65536) > 3
    assert all(len(c) == 65536 + CHUNK_HEADER.size for c in chunks[:-1])
    r = Reassembler(limits)
    for c in chunks:
        r.feed(c)
    message = Guard("b", "run", peers, limits=limits).admit(r.finish(), "a")
    for name, array in model.items():
        assert np.array_equal(message.tensors[name], array)
    assert message.size == len(frame)
    small = split(b"x" * 10, limits)
    assert len(small) == 1


# ---------------------------------------------------------------------------------------------
# the guard


SPEC = {"model": {"w": TensorSpec((4, 3), "float32"), "n": TensorSpec((), "int64")}}


def good_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal((4, 3)).astype("f4"), "n": np.array(seed, dtype=np.int64)}


def craft(sender="a", receiver="b", run="run", round=5, kind="model", tensors=None,
          payload=None, key=None, ids=None, digest=None, signature=None, seq=0, nonce=None):
    """A frame with any field chosen, signed unless ``signature`` is given."""
    payload = encode_tensors(tensors or good_tensors()) if payload is None else payload
    env = Envelope(sender, receiver, run, round, seq, nonce or os.urandom(16),
                   digest or hashlib.sha256(payload).digest(), len(payload), kind)
    key = key or ids[sender].signing_key
    return encode_frame(env, signature or sign(env, key), payload)


def tensor_payload(code=11, ndim=1, dims=(3,), nbytes=12, name=b"w", data=None, count=1):
    head = struct.pack("<HBBQ", len(name), code, ndim, nbytes)
    head += struct.pack(f"<{len(dims)}Q", *dims) + name
    head += bytes(-len(head) % 8)
    data = bytes(nbytes) if data is None else data
    return struct.pack("<4sI", b"TNSR", count) + head + data + bytes(-len(data) % 8)


def test_guard_accepts_then_refuses_in_order(ids, peers):
    guard = Guard("b", "run", peers, expected=SPEC)
    guard.set_round(5)
    frame = craft(ids=ids)
    assert guard.admit(frame, "a").tensors["n"] == 0
    with pytest.raises(WireError, match="^replay"):
        guard.admit(frame, "a")
    with pytest.raises(WireError, match="^no_tls_identity"):
        guard.admit(craft(ids=ids), None)
    assert guard.counters.snapshot()["net_accepted"] == 1
    assert guard.counters.snapshot()["net_refused_total"] == 2
    assert dict(guard.counters.by_peer["a"]) == {"replay": 1}


def test_equivocation_is_kept_as_evidence(ids, peers):
    guard = Guard("b", "run", peers, expected=SPEC)
    guard.set_round(5)
    first = craft(ids=ids, tensors=good_tensors(1))
    guard.admit(first, "a")
    with pytest.raises(WireError, match="^duplicate"):
        guard.admit(craft(ids=ids, tensors=good_tensors(1), seq=1), "a")  # same bytes, resent
    with pytest.raises(WireError, match="^equivocation"):
        guard.admit(craft(ids=ids, tensors=good_tensors(2), seq=2), "a")
    guard.admit(craft(ids=ids, tensors=good_tensors(2), kind="model", round=6), "a")  # next
    guard.admit(craft(sender="c", ids=ids, tensors=good_tensors(3)), "c")  # another sender
    [evidence] = guard.evidence
    assert guard.evidence_against("a") == [evidence] and guard.evidence_against("c") == []
    assert (evidence.sender, evidence.round, evidence.kind) == ("a", 5, "model")
    assert evidence.first.envelope.digest != evidence.second.envelope.digest
    assert evidence.verify(ids["a"].public_key)
    assert not evidence.verify(ids["c"].public_key)
    guard.set_round(50)  # evidence outlives the round window
    assert len(guard.evidence) == 1
    assert guard.counters.refused["equivocation"] == 1 and guard.counters.refused["duplicate"] == 1


def test_rate_limit_trips_on_a_flood_and_recovers(ids, peers):
    now = [0.0]
    guard = Guard("b", "run", peers, rate=RateLimit(per_s=10, burst=5), clock=lambda: now[0])
    results = []
    for i in range(40):  # a flood of distinct, valid messages
        try:
            guard.admit(craft(ids=ids, kind=f"k{i}", round=0), "a")
            results.append("ok")
        except WireError as err:
            results.append(err.reason)
    assert results[:5] == ["ok"] * 5 and results[5:] == ["rate_limited"] * 35
    guard.admit(craft(sender="c", ids=ids, round=0), "c")  # another sender is not throttled
    now[0] = 1.0  # 10 tokens back, capped at the burst of 5
    assert sum(_ok(guard, craft(ids=ids, kind=f"late{i}", round=0), "a") for i in range(8)) == 5
    assert guard.counters.refused["rate_limited"] == 38


def _ok(guard, frame, tls_id) -> bool:
    try:
        guard.admit(frame, tls_id)
    except WireError:
        return False
    return True


def test_replay_cache_is_bounded_and_pruned(ids, peers):
    guard = Guard("b", "run", peers, replay_per_sender=3, behind=0, ahead=0)
    for i in range(3):
        guard.admit(craft(ids=ids, round=0, kind=f"k{i}"), "a")
    with pytest.raises(WireError, match="^replay_cache_full"):
        guard.admit(craft(ids=ids, round=0, kind="k9"), "a")
    guard.set_round(1)  # round 0 leaves the window: its entries are forgotten
    guard.admit(craft(ids=ids, round=1, kind="k0"), "a")
    assert sum(len(s) for s in guard._replay["a"].values()) == 1


def test_insecure_guard_checks_signatures_and_senders(ids, peers):
    guard = Guard("b", "run", peers, insecure=True)
    guard.admit(craft(ids=ids, round=0), None)
    mallory = Ed25519PrivateKey.generate()
    for frame, reason in [(craft(ids=ids, round=0, key=mallory), "bad_signature"),
                          (craft(sender="zed", ids=ids, round=0, key=mallory), "unknown_sender")]:
        with pytest.raises(WireError) as info:
            guard.admit(frame, None)
        assert info.value.reason == reason


# ---------------------------------------------------------------------------------------------
# the fuzz test: >= 1,000 hostile inputs against reassembly + decoding + the guard


def test_fuzz_every_hostile_input_is_refused_with_its_reason(ids, peers):
    limits = Limits(chunk_bytes=65536, max_message_bytes=1 << 20, max_tensor_bytes=1 << 19)
    guard = Guard("b", "run", peers, limits=limits, expected=SPEC, rate=RateLimit(1e9, 1e9))
    rng = random.Random(1234)
    fresh = itertools.count(100)  # a fresh round per content case: no false equivocation

    def at_fresh_round() -> int:
        r = next(fresh)
        guard.set_round(r)
        return r

    cases: list[tuple[list[bytes], str | None, set[str]]] = []  # chunks, tls id, reasons

    def add(frame: bytes, reasons: str | set[str], tls_id: str | None = "a") -> None:
        cases.append((split(frame, limits), tls_id, {reasons} if isinstance(reasons, str)
                      else reasons))

    def run(chunks: list[bytes], tls_id: str | None) -> str | None:
        parts = Reassembler(limits)
        try:
            for c in chunks:
                parts.feed(c)
            frame = parts.finish()
        except WireError as err:
            guard.record(err, tls_id)
            return err.reason
        try:
            guard.admit(frame, tls_id)
        except WireError as err:
            return err.reason
        return None

    tally: dict[str, int] = {}

    def check(chunks, tls_id, reasons) -> None:
        try:
            got = run(chunks, tls_id)
        except Exception as e:  # anything but WireError is a bug
            pytest.fail(f"{type(e).__name__} escaped for a case expecting {reasons}: {e}")
        assert got in reasons, f"expected {reasons}, got {got}"
        tally[got] = tally.get(got, 0) + 1

    # random garbage, as chunks and as frames inside valid chunks
    for _ in range(120):
        n = rng.randrange(0, 300)
        junk = rng.randbytes(n)
        cases.append(([junk], "a", {"truncated" if n < CHUNK_HEADER.size else "bad_magic"}))
        add(junk, "truncated" if n < 16 else "bad_magic")
    # a valid frame cut at every length, and its chunk cut short
    base = craft(ids=ids, round=5)
    for cut in range(0, len(base), 2):
        add(base[:cut], "truncated")
    for cut in rng.sample(range(len(base) + CHUNK_HEADER.size), 40):
        cases.append(([split(base, limits)[0][:cut]], "a", {"truncated"}))
    # bit flips of a valid frame, by region
    env_len = struct.unpack_from("<I", base, 8)[0]
    sig_end = 16 + env_len + 64
    pay_start = sig_end + (-sig_end % 8)
    for _ in range(400):
        pos, bit = rng.randrange(len(base)), rng.randrange(8)
        flipped = bytearray(base)
        flipped[pos] ^= 1 << bit
        e = pos - 16  # offset inside the envelope
        if pos < 4:
            want = {"bad_magic"}
        elif pos == 4:
            want = {"bad_version"}
        elif pos < 8 or 12 <= pos < 16:
            want = {"bad_padding"}
        elif pos < 12:
            want = {"bad_length", "truncated", "bad_field", "oversize"}
        elif e < 16:  # round, seq
            want = {"bad_field"} if (e % 8 == 7 and bit == 7) else {"bad_signature"}
        elif e < 64:  # nonce, digest
            want = {"bad_signature"}
        elif e < 72:  # payload length
            want = {"bad_field", "oversize", "truncated", "bad_length"}
        elif e < env_len:  # the strings
            want = {"bad_length", "bad_field", "sender_mismatch", "bad_signature"}
        elif pos < sig_end:
            want = {"bad_signature"}
        elif pos < pay_start:
            want = {"bad_padding"}
        else:
            want = {"digest_mismatch"}
        add(bytes(flipped), want)
    # chunk-level faults
    multi = craft(ids=ids, round=5, tensors={"w": np.zeros((4, 3), "f4"), "n": np.array(1),
                                             "pad": np.zeros(60000, "f4")})
    parts = split(multi, limits)
    assert len(parts) == 4
    for i in range(20):
        bad = bytearray(parts[i % 4])
        bad[CHUNK_HEADER.size + rng.randrange(len(bad) - CHUNK_HEADER.size)] ^= 1
        cases.append((parts[:i % 4] + [bytes(bad)] + parts[i % 4 + 1:], "a", {"chunk_digest"}))
    cases.append((parts[:3], "a", {"truncated"}))  # the stream ends early
    cases.append(([], "a", {"truncated"}))
    cases.append(([parts[0], parts[2], parts[1], parts[3]], "a", {"bad_chunk"}))
    cases.append((parts + [parts[3]], "a", {"bad_chunk"}))
    for field, value, reason in [(2, 9, "bad_chunk"), (4, 1 << 40, "oversize"),
                                 (3, 70000, "oversize"), (0, b"XXXX", "bad_magic")]:
        fields = list(CHUNK_HEADER.unpack_from(parts[0]))
        fields[field] = value
        cases.append(([CHUNK_HEADER.pack(*fields) + parts[0][CHUNK_HEADER.size:]], "a", {reason}))
    cases.append(([split(b"x" * 300000, Limits(chunk_bytes=65536 * 2))[0]], "a", {"oversize"}))
    # oversize frames and oversize claims
    lax = Limits(max_message_bytes=2 * limits.max_message_bytes, chunk_bytes=65536)
    cases.append((split(bytes(limits.max_message_bytes + 1), lax), "a", {"oversize"}))
    for _ in range(10):
        claim = bytearray(base)
        struct.pack_into("<Q", claim, 16 + 64, rng.randrange(limits.max_message_bytes + 1,
                                                             2**62))
        add(bytes(claim), "oversize")
    # envelope faults, validly signed
    for _ in range(20):
        add(craft(ids=ids, round=5, digest=os.urandom(32)), "digest_mismatch")
    mallory = Ed25519PrivateKey.generate()
    for _ in range(20):
        add(craft(ids=ids, round=5, key=mallory), "bad_signature")
        add(craft(ids=ids, round=5, signature=os.urandom(64)), "bad_signature")
        add(craft(ids=ids, round=5, key=ids["c"].signing_key), "bad_signature")
        add(craft(ids=ids, round=5), "sender_mismatch", tls_id="c")  # c relays as a
        add(craft(sender="c", ids=ids, round=5), "sender_mismatch", tls_id="a")
        add(craft(ids=ids, round=5), "no_tls_identity", tls_id=None)
        add(craft(ids=ids, receiver="c", round=5), "wrong_receiver")
        add(craft(ids=ids, run="other", round=5), "wrong_run")
    cases_before_rounds = len(cases)
    guard.set_round(5)  # the round of every case so far
    for chunks, tls_id, reasons in cases:
        check(chunks, tls_id, reasons)
    checked = cases_before_rounds
    cases.clear()
    for r in [0, 1, 2, 3] * 5:
        check(split(craft(ids=ids, round=r), limits), "a", {"stale_round"})
    for r in [7, 8, 1000, 2**62] * 5:
        check(split(craft(ids=ids, round=r), limits), "a", {"future_round"})
    checked += 40
    # replays of accepted messages, content faults (each at a fresh round)
    for i in range(20):
        r = at_fresh_round()
        frame = craft(ids=ids, round=r, tensors=good_tensors(i))
        assert run(split(frame, limits), "a") is None
        check(split(frame, limits), "a", {"replay"})
        check(split(craft(ids=ids, round=r, tensors=good_tensors(i + 1), seq=1), limits), "a",
              {"equivocation"})
        checked += 2
    nan = good_tensors()
    nan["w"][1, 2] = np.nan
    content = [
        ({**good_tensors(), "w": np.full((4, 3), np.inf, "f4")}, "non_finite"),
        ({**good_tensors(), "w": -np.full((4, 3), np.inf, "f4")}, "non_finite"),
        (nan, "non_finite"),
        ({**good_tensors(), "w": np.zeros((3, 4), "f4")}, "wrong_shape"),
        ({**good_tensors(), "w": np.zeros((4, 3), "f8")}, "wrong_dtype"),
        ({"w": np.zeros((4, 3), "f4")}, "wrong_tensors"),
        ({**good_tensors(), "extra": np.zeros(1)}, "wrong_tensors"),
    ]
    payloads = [
        (tensor_payload(code=0), "bad_dtype"), (tensor_payload(code=13), "bad_dtype"),
        (tensor_payload(code=255), "bad_dtype"),
        (tensor_payload(ndim=9, dims=(1,) * 9, nbytes=4), "bad_shape"),
        (tensor_payload(ndim=2, dims=(2**60, 2**60), nbytes=16), "bad_shape"),
        (tensor_payload(dims=(4,), nbytes=12), "bad_shape"),
        (tensor_payload(dims=(2**20,), nbytes=2**22, data=b""), "tensor_oversize"),
        (tensor_payload(name=b""), "bad_name"), (tensor_payload(name=b"a b"), "bad_name"),
        (tensor_payload(count=2), "truncated"), (tensor_payload(count=5000), "too_many_tensors"),
        (tensor_payload() + bytes(8), "bad_length"),
        (tensor_payload()[:-1] + b"\x01", "bad_padding"),
        (tensor_payload(code=1, dims=(2,), nbytes=2, data=b"\x00\x02"), "bad_dtype"),
        (b"TNS", "truncated"), (b"XXXXXXXX", "bad_magic"),
    ]
    for _ in range(4):
        for tensors, reason in content:
            check(split(craft(ids=ids, round=at_fresh_round(), tensors=tensors), limits), "a",
                  {reason})
        for payload, reason in payloads:
            check(split(craft(ids=ids, round=at_fresh_round(), payload=payload), limits), "a",
                  {reason})
        check(split(craft(ids=ids, round=at_fresh_round(), kind="gossip"), limits), "a",
              {"unexpected_kind"})
        checked += len(content) + len(payloads) + 1
    assert checked >= 1000, checked
    assert sum(tally.values()) == checked
    counters = guard.counters
    assert counters.accepted == 20  # the frames that replays replayed
    assert counters.refused_total == checked
    for reason, n in tally.items():
        assert counters.refused[reason] == n, reason
    assert set(tally) <= set(REASONS) and len(tally) >= 28
    # and a valid message afterwards is still accepted
    r = at_fresh_round()
    assert run(split(craft(ids=ids, round=r, tensors=good_tensors(99)), limits), "a") is None
    assert counters.accepted == 21


def test_random_mutations_raise_only_wire_errors(ids, peers):
    """Insertions, deletions and overwrites anywhere in valid frames and payloads: never an
    exception other than WireError, never accepted."""
    limits = Limits(chunk_bytes=65536, max_message_bytes=1 << 20)
    guard = Guard("b", "run", peers, limits=limits, rate=RateLimit(1e9, 1e9), behind=10**6,
                  ahead=10**6)
    rng = random.Random(99)
    bases = [craft(ids=ids, round=r, tensors={"w": (np.arange(r + 3) % 2).astype(d)})
             for r, d in enumerate(["f4", "i8", "u1", "f2", "bool"])]
    for i in range(1500):
        data = bytearray(rng.choice(bases))
        for _ in range(rng.randrange(1, 4)):
            pos = rng.randrange(len(data) + 1)
            op = rng.randrange(3)
            if op == 0:
                data[pos:pos + rng.randrange(1, 9)] = b""
            elif op == 1:
                data[pos:pos] = rng.randbytes(rng.randrange(1, 9))
            else:
                data[pos:pos + 1] = bytes([rng.randrange(256)])
        if bytes(data) in bases:
            continue
        try:
            guard.admit(bytes(data), "a")
        except WireError as err:
            assert err.reason in REASONS
        else:
            pytest.fail(f"mutation {i} was accepted")
        try:
            decode_tensors(bytes(data[-rng.randrange(1, len(data)):]), limits)
        except WireError:
            pass
    assert guard.counters.accepted == 0
    with pytest.raises(WireError, match="^oversize"):
        guard.admit(bytes(limits.max_message_bytes + 1), "a")
    for bad in ("text", None, 3):
        with pytest.raises(WireError, match="^bad_type"):
            guard.admit(bad, "a")
