"""Real peers on loopback: `murmura launch` against the simulator, and faults.

Each test starts real `murmura node` processes (mutual TLS, gRPC) and reads what they wrote.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from murmura.config import Experiment
from murmura.metrics.evaluation import evaluate_model
from murmura.net import Client, Identity, Limits, Sealer
from murmura.net.chunks import split
from murmura.net.launch import Launch
from murmura.net.node import run_id
from murmura.net.peer import PeerSettings
from murmura.net.tensors import encode_tensors
from murmura.net.wire import Envelope, encode_frame, sign
from murmura.runner.run import build_simulation

BASE = """
name = "{name}"
seed = 0
rounds = {rounds}
[data]
dataset = "digits"
nodes = {nodes}
partition = {partition}
[model]
name = "mlp"
hidden = [16]
{topology}
[algorithm]
name = "{algorithm}"
lr = {lr}
local_steps = {steps}
{extra}
[evaluation]
every = {every}
[output]
plots = false
report = false
"""

SHAPES = {
    "dsgd": dict(algorithm="dsgd", topology='[topology]\nname = "ring"', extra=""),
    "fedavg": dict(algorithm="fedavg", topology="", extra=""),
    "compressed": dict(algorithm="choco", topology='[topology]\nname = "ring"',
                       extra='gamma = 0.2\ncompressor = { name = "top_k", ratio = 0.1 }'),
    "robust": dict(algorithm="dsgd", topology='[topology]\nname = "random_regular"\nk = 4',
                   extra='aggregator = { name = "trimmed_mean", fraction = 0.25 }'),
}


def experiment(tmp_path: Path, shape: str, **settings) -> Experiment:
    values = dict(name=f"peers-{shape}", rounds=6, nodes=8, lr=0.1, steps=3, every=2,
                  partition='{ name = "dirichlet", alpha = 1.0 }', **SHAPES[shape])
    values.update(settings)
    path = tmp_path / f"{shape}.toml"
    path.write_text(BASE.format(**values))
    return Experiment.from_toml(path)


def launch(exp: Experiment, out: Path, timeout_s: float = 240, **kw) -> tuple[Launch, object]:
    run = Launch(exp, out, **kw)
    run.start()
    codes = run.wait(timeout_s)
    return run, codes


def simulate(exp: Experiment):
    sim = build_simulation(exp)
    sim.run(exp.rounds)
    return sim


@pytest.mark.parametrize("shape", ["dsgd", "fedavg", "compressed", "robust"])
def test_launch_ends_with_the_simulators_metrics(tmp_path, shape):
    exp = experiment(tmp_path, shape)
    run, codes = launch(exp, tmp_path / "run", settings=PeerSettings(deadline_s=60.0))
    assert all(code == 0 for code in codes.values()), (codes, _logs(run))
    result = run.gather()
    assert result.status == "completed"
    expected = simulate(exp).history.records
    got = result.history.records
    assert [r["round"] for r in got] == [r["round"] for r in expected]
    for mine, theirs in zip(got, expected):
        for key in ("bytes_sent_total", "bytes_received_total", "bytes_sent_per_node_max",
                    "bytes_received_per_node_mean", "server_bytes_sent_total"):
            assert mine[key] == theirs[key], (key, mine["round"])
        assert mine["net_missing"] == 0 and mine["net_refused_total"] == 0
        if "test_accuracy" in theirs:
            assert mine["test_accuracy"] == pytest.approx(theirs["test_accuracy"], abs=1e-9)
            assert mine["test_loss"] == pytest.approx(theirs["test_loss"], rel=1e-5)
            assert mine["node_accuracy_mean"] == pytest.approx(theirs["node_accuracy_mean"],
                                                               abs=1e-6)
            assert mine["consensus_distance"] == pytest.approx(
                theirs["consensus_distance"], rel=1e-4, abs=1e-9)
    # laid out like `murmura run`'s: the same files and summary keys
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for name in ("config.toml", "metrics.csv", "metrics.jsonl", "topology.json"):
        assert (tmp_path / "run" / name).is_file()
    assert {"name", "status", "rounds_done", "total_rounds", "final", "simulation",
            "seconds"} <= set(summary)
    assert summary["simulation"]["backend"] == "peers"
    assert summary["final"]["test_accuracy"] == pytest.approx(
        expected[-1]["test_accuracy"], abs=1e-9)


def _logs(run: Launch) -> str:
    return "\n".join(f"--- {p}\n" + (run.folder(p) / "log.txt").read_text()[-1500:]
                     for p in run.ids if (run.folder(p) / "log.txt").is_file())


def _wait_for_round(run: Launch, peers: list[str], rounds: int, timeout_s: float = 180) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        done = run.rounds_done()
        if all(done[p] >= rounds for p in peers):
            return
        time.sleep(0.1)
    raise AssertionError(f"peers did not reach round {rounds}: {run.rounds_done()}\n"
                         f"{_logs(run)}")


def _own_accuracy(sim, nodes: list[int]) -> float:
    """The mean test accuracy of these nodes' own models."""
    data = sim.data.dataset
    accs = [evaluate_model(sim.model, sim.spec, sim.params[i], data.test_x, data.test_y,
                           sim.buffers, 1024, sim.task)[0] for i in nodes]
    return float(np.mean(accs))


def test_sigkill_of_three_of_ten_peers_the_rest_finish_within_two_points(tmp_path):
    exp = experiment(tmp_path, "dsgd", nodes=10, rounds=16, steps=10, lr=0.3, every=4,
                     partition='"iid"',
                     topology='[topology]\nname = "random_regular"\nk = 4')
    run = Launch(exp, tmp_path / "run", settings=PeerSettings(deadline_s=2.0))
    run.start()
    _wait_for_round(run, run.ids, 6)
    killed = ["2", "5", "8"]
    for peer in killed:
        run.kill(peer)
    codes = run.wait(300)
    survivors = [p for p in run.ids if p not in killed]
    assert all(codes[p] == 0 for p in survivors), (codes, _logs(run))
    assert all(codes[p] == -signal.SIGKILL for p in killed)
    result = run.gather()
    final = result.history.records[-1]
    assert final["round"] == exp.rounds - 1 and final["peers_reporting"] == len(survivors)
    assert final["net_missing"] > 0  # the dead were missed, and skipped
    fault_free = _own_accuracy(simulate(exp), [int(p) for p in survivors])
    assert abs(final["peer_test_accuracy_mean"] - fault_free) <= 0.02, (
        final["peer_test_accuracy_mean"], fault_free)
    assert result.status == "incomplete"  # three peers never finished, and it says so
    peers = result.summary["network"]["peers"]
    assert all(peers[p]["status"] == "completed" for p in survivors)


def test_a_killed_peer_restarted_resumes_and_rejoins(tmp_path):
    exp = experiment(tmp_path, "dsgd", nodes=6, rounds=60, every=20)
    run = Launch(exp, tmp_path / "run", settings=PeerSettings(deadline_s=1.0, pace_s=0.2))
    run.start()
    _wait_for_round(run, run.ids, 5)
    run.kill("3")
    stopped_at = run.rounds_done()["3"]
    _wait_for_round(run, ["2", "4"], stopped_at + 6)
    run.restart("3")
    codes = run.wait(300)
    assert all(code == 0 for code in codes.values()), (codes, _logs(run))
    records = [json.loads(line) for line in
               (run.folder("3") / "metrics.jsonl").read_text().splitlines()]
    rounds = [r["round"] for r in records]
    assert rounds[-1] == exp.rounds - 1
    assert rounds[:stopped_at] == list(range(stopped_at))  # resumed from its checkpoint
    jumped = [b for a, b in zip(rounds, rounds[1:]) if b > a + 1]
    assert jumped, rounds  # and caught up with its neighbours instead of lagging
    assert "rejoining at round" in (run.folder("3") / "log.txt").read_text()
    # rejoined: its neighbours hear from it again, nothing is missed in the last rounds
    for neighbour in ("2", "4"):
        tail = [json.loads(line) for line in
                (run.folder(neighbour) / "metrics.jsonl").read_text().splitlines()][-5:]
        assert tail[0]["net_missing"] == tail[-1]["net_missing"], tail
    result = run.gather()
    assert result.status == "completed"


def _frame(sender: Identity, claimed: str, receiver: str, run: str, round: int, kind: str,
           tensors: dict, *, flip: bool = False, key=None) -> bytes:
    payload = encode_tensors(tensors)
    env = Envelope(claimed, receiver, run, round, 0, os.urandom(16),
                   hashlib.sha256(payload).digest(), len(payload), kind)
    frame = bytearray(encode_frame(env, sign(env, key or sender.signing_key), payload))
    if flip:
        frame[-1] ^= 0x01
    return bytes(frame)


def hostile(attacker: Identity, run: str, d: int, rng: random.Random, limits: Limits
            ) -> list[list[bytes]]:
    """1,200 malformed or hostile streams for peer 0, from a listed peer that is no node.
    Their round, 40, is ahead of peer 0 but inside its window, so each is refused for what
    is wrong with it, not for its round."""
    good = _frame(attacker, "m", "0", run, 40, "mix.0", {"x": np.ones(d, "f4")})
    out: list[list[bytes]] = []
    for _ in range(200):
        out.append([rng.randbytes(rng.randrange(1, 300))])  # garbage
    for _ in range(200):
        out.append(split(good[: rng.randrange(1, len(good))], limits))  # truncated
    for i in range(200):
        out.append(split(_frame(attacker, "m", "0", run, 40, f"mix.{i}",
                                {"x": np.ones(d, "f4")}, flip=True), limits))
    for i in range(150):  # signing as another node
        out.append(split(_frame(attacker, "1", "0", run, 40, f"mix.{i}",
                                {"x": np.ones(d, "f4")}), limits))
    for i in range(150):  # NaN and Inf
        bad = np.ones(d, "f4")
        bad[rng.randrange(d)] = rng.choice([np.nan, np.inf])
        out.append(split(_frame(attacker, "m", "0", run, 40, f"mix.{i + 200}", {"x": bad}),
                         limits))
    for i in range(100):  # wrong shape, wrong dtype
        tensors = {"x": np.ones(d + 1, "f4")} if i % 2 else {"x": np.ones(d, "f8")}
        out.append(split(_frame(attacker, "m", "0", run, 40, f"mix.{i + 400}", tensors), limits))
    for i in range(100):  # another run, stale and far-future rounds
        out.append(split(_frame(attacker, "m", "0", "other-run", 40, f"mix.{i}",
                                {"x": np.ones(d, "f4")}), limits))
    for i in range(100):
        out.append(split(_frame(attacker, "m", "0", run, 10**6 + i, "mix.0",
                                {"x": np.ones(d, "f4")}), limits))
    rng.shuffle(out)
    return out


def test_a_live_peer_refuses_1200_hostile_messages_and_keeps_training(tmp_path):
    exp = experiment(tmp_path, "dsgd", nodes=4, rounds=30, every=10)
    attacker = Identity.create("m")
    stranger = Identity.create("x")  # not in the peers file
    # paced, so that the whole attack lands while peer 0 trains
    run = Launch(exp, tmp_path / "run", settings=PeerSettings(deadline_s=60.0, pace_s=0.5),
                 extra_peers=[(attacker, "127.0.0.1:9")])
    run.prepare()
    from murmura.net.identity import load_peers

    peers = load_peers(tmp_path / "run" / "peers.toml")
    d = build_simulation(exp).spec.dim
    limits = Limits()
    streams = hostile(attacker, run_id(exp), d, random.Random(0), limits)
    assert len(streams) >= 1000
    run.start()
    _wait_for_round(run, ["0"], 1)

    async def attack():
        gate = asyncio.Semaphore(8)
        async with Client(peers, attacker, addresses=dict(run.addresses), deadline_s=10,
                          attempts=1) as client:
            async def one(chunks):
                async with gate:
                    return await client.send_chunks("0", chunks)

            results = await asyncio.gather(*(one(c) for c in streams))
        async with Client(peers, stranger, addresses=dict(run.addresses), deadline_s=5,
                          attempts=1) as client:
            frame = Sealer("x", run_id(exp), stranger.signing_key).seal(
                "0", 1, "mix.0", {"x": np.ones(d, "f4")})
            unlisted = await client.send("0", frame)
        return results, unlisted

    results, unlisted = asyncio.run(attack())
    assert not any(r.ok for r in results)
    # every one was answered with its refusal while peer 0 was still training
    assert all(r.reason is not None for r in results), Counter(r.code for r in results)
    assert run.rounds_done()["0"] < exp.rounds
    assert not unlisted.ok  # the TLS handshake fails: an unlisted certificate
    codes = run.wait(240)
    assert all(code == 0 for code in codes.values()), (codes, _logs(run))
    summary = json.loads((run.folder("0") / "summary.json").read_text())
    counters = summary["counters"]
    assert summary["status"] == "completed"
    assert counters["net_refused_total"] >= 1000, counters
    for reason in ("digest_mismatch", "sender_mismatch", "non_finite", "wrong_run",
                   "future_round", "truncated"):
        assert counters[f"net_refused_{reason}"] > 0, (reason, counters)
    # and it trained as if nothing had happened: the simulator's numbers
    result = run.gather()
    expected = simulate(exp).history.records[-1]
    assert result.history.records[-1]["test_accuracy"] == pytest.approx(
        expected["test_accuracy"], abs=1e-9)

