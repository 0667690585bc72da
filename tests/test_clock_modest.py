"""MoDeST on the virtual clock (murmura.clock.modest.ClockedModest)."""

from __future__ import annotations

import heapq
import math
from functools import cache

import pytest
import torch

from murmura.algorithms.modest import PING_BYTES, ModestSampling
from murmura.clock import EventKind
from murmura.clock.modest import ClockedModest
from murmura.clock.output import write_run
from murmura.data import federate
from murmura.swarm import Evaluation, Simulation


@cache
def _data(n: int, seed: int):
    return federate("digits", num_nodes=n, seed=seed)


def _sim(n: int = 8, s: int = 3, seed: int = 0, a: int = 1) -> Simulation:
    return Simulation(_data(n, 0), "logreg", "modest", seed=seed,
                      algorithm_kwargs={"sample_size": s, "aggregators": a, "local_steps": 2},
                      evaluation=Evaluation(every=0))


def _ticks(run: ClockedModest) -> dict[int, float]:
    """When each round's models were averaged: version k + 1 -> time (first aggregator)."""
    cols = run.log.columns()
    out: dict[int, float] = {}
    for t, k, v in zip(cols["time"].tolist(), cols["kind"].tolist(), cols["version"].tolist()):
        if k == int(EventKind.SERVER_TICK):
            out.setdefault(v, t)
    return out


def test_same_seed_same_log_and_params():
    churn = {"name": "markov", "mean_on": 6.0, "mean_off": 3.0}
    kwargs = dict(ping_timeout=1.0, aggregation_timeout=3.0, min_models=2,
                  compute={"name": "lognormal", "mu": -0.5, "sigma": 0.4, "jitter": 0.2},
                  links={"latency": {"name": "lognormal", "mu": -4.0, "sigma": 0.5,
                                     "jitter": 0.3}, "bandwidth": 2e5},
                  availability=churn)
    runs = []
    for seed in (0, 0, 1):
        run = ClockedModest(_sim(10, 3, seed, a=2), 3, aggregators=2, **kwargs)
        run.run(until=18.0, eval_every=6.0)
        runs.append(run)
    a, b, c = runs
    assert len(a.log) > 20 and a.records[-1]["round"] > 0
    assert a.log.rows() == b.log.rows()
    assert torch.equal(a.sim.params, b.sim.params) and torch.equal(a.model, b.model)
    assert torch.equal(a.sim.bytes_sent, b.sim.bytes_sent)
    assert [r["test_accuracy"] for r in a.records] == [r["test_accuracy"] for r in b.records]
    assert a.log.rows() != c.log.rows()  # another seed: another order, other draws


def test_sample_is_the_rule_order_filtered_by_availability():
    n, s, seed = 12, 3, 0
    rule = ModestSampling(s)
    run = ClockedModest(_sim(n, s), s, ping_timeout=1.0, aggregation_timeout=3.0)
    run.run(until=12.0, eval_every=6.0)
    for r in run.rounds:  # no churn: exactly the round rule's samples
        assert r["trainers"] == rule.sample(seed, r["round"], n).tolist()
    # With failures, the first s nodes of the order still online when the aggregator pings.
    fail = {"name": "always", "fail_at": 7.0, "fail_nodes": [0, 1, 2, 3, 4, 5, 6]}
    run = ClockedModest(_sim(n, s), s, ping_timeout=1.0, aggregation_timeout=3.0,
                        availability=fail)
    run.run(until=40.0, eval_every=20.0)
    ticks = _ticks(run)
    checked = 0
    for r in run.rounds:
        k = r["round"]
        if r["restart_at"] is None and k in ticks and ticks[k] >= 7.0:
            order = rule.order(seed, k, n)
            on = run.availability.online_at(order, torch.full((n,), ticks[k], dtype=torch.float64))
            assert r["trainers"] == order[on][:s].sort().values.tolist()
            assert not set(r["trainers"]) & set(range(7))
            checked += 1
    assert checked >= 2


def test_a_trainer_leaving_mid_task_is_not_aggregated():
    n, s = 8, 3
    base = ClockedModest(_sim(n, s), s, ping_timeout=1.0, aggregation_timeout=3.0,
                         min_models=2)
    base.run(until=6.0, eval_every=6.0)
    first = base.rounds[1]  # round 1: trains on [start, start + 2 s)
    aggregator = first["aggregators"][0]
    leaver = next(i for i in first["trainers"] if i != aggregator)
    fail = {"name": "always", "fail_at": first["start"] + 1.0, "fail_nodes": [leaver]}
    run = ClockedModest(_sim(n, s), s, ping_timeout=1.0, aggregation_timeout=3.0,
                        min_models=2, availability=fail)
    run.run(until=12.0, eval_every=6.0)
    r = run.rounds[1]
    assert r["trainers"] == first["trainers"] and leaver not in r["finished"]
    assert r["aggregated"] and all(leaver not in used for used in r["used"].values())
    assert sorted(r["used"][aggregator]) == sorted(set(first["trainers"]) - {leaver})
    # sf = 1: the aggregator waited for the missing model until its timeout, then averaged 2
    cols = run.log.columns()
    up = (cols["kind"] == int(EventKind.UPLOAD_ARRIVAL)) & (cols["version"] == 1)
    assert leaver not in cols["node"][up].tolist()
    assert _ticks(run)[2] == pytest.approx(float(cols["time"][up].min()) + 3.0)
    assert run.records[-1]["lost_tasks"] == 1 and run.records[-1]["round"] > 2


def test_fewer_than_min_models_drops_and_restarts_the_round():
    n, s = 8, 3
    base = ClockedModest(_sim(n, s), s, ping_timeout=1.0, aggregation_timeout=3.0)
    base.run(until=6.0, eval_every=6.0)
    first = base.rounds[1]
    aggregator = first["aggregators"][0]
    leavers = [i for i in first["trainers"] if i != aggregator][:2]
    fail = {"name": "always", "fail_at": first["start"] + 1.0, "fail_nodes": leavers}
    run = ClockedModest(_sim(n, s), s, ping_timeout=1.0, aggregation_timeout=3.0,
                        min_models=3, availability=fail)
    records = run.run(until=30.0, eval_every=2.0)
    dropped, again = run.rounds[1], run.rounds[2]
    assert not dropped["aggregated"] and dropped["aggregators"] == []
    assert dropped["restart_at"] >= dropped["start"] + 3.0
    assert again["round"] == 1 and again["start"] >= dropped["restart_at"]
    assert not set(again["trainers"]) & set(leavers)
    at = {r["time"]: r for r in records}
    stuck = [r["round"] for r in records if first["start"] < r["time"] < again["start"]]
    assert stuck and set(stuck) == {1}  # the model stays round 1's until the restart trains
    assert records[-1]["dropped_rounds"] == 1 and records[-1]["round"] >= 3
    assert records[-1]["late_models"] == 1  # the one model that arrived was never used
    assert at[2.0]["dropped_rounds"] == 0


def test_bytes_match_a_hand_count():
    n, s, seed = 6, 2, 0
    sim = _sim(n, s)
    size = float(sim.message_bytes)
    run = ClockedModest(sim, s, ping_timeout=1.0, aggregation_timeout=3.0, ping_rtt=0.5)
    # round 0 trains [0, 2), the trainers ping (2, 2.5), upload, the aggregator pings (2.5, 3)
    # and the models land at 3.0: eval at 3 sees round 0's bytes and nothing of round 1's.
    run.run(until=3.0, eval_every=3.0)
    rule = ModestSampling(s)
    trainers = rule.sample(seed, 0, n).tolist()
    order1 = rule.order(seed, 1, n).tolist()
    agg, receivers = order1[0], order1[:s]
    sent = torch.zeros(n, dtype=torch.float64)
    got = torch.zeros(n, dtype=torch.float64)
    for i in trainers:  # each trainer pings the head of round 1's order, then uploads to it
        if i != agg:
            sent[i] += PING_BYTES + size
            got[i] += PING_BYTES
            got[agg] += PING_BYTES + size
            sent[agg] += PING_BYTES
    for r in receivers:  # the aggregator pings round 1's first s and sends them the average
        if r != agg:
            sent[agg] += PING_BYTES + size
            got[agg] += PING_BYTES
            got[r] += PING_BYTES + size
            sent[r] += PING_BYTES
    assert run.rounds[1]["trainers"] == sorted(receivers)
    assert torch.equal(sim.bytes_sent.cpu(), sent) and torch.equal(sim.bytes_received.cpu(), got)
    # the model transfers are the round rule's 2 a s, less the ones a node makes to itself
    models = 2 * 1 * s - (agg in trainers) - (agg in receivers)
    assert float(sent.sum()) == models * size + PING_BYTES * 2 * (
        len(set(trainers) - {agg}) + len(set(receivers) - {agg}))
    assert run.records[-1]["bytes_sent_total"] == float(sent.sum())


def test_training_continues_after_80_percent_fail_only_with_a_finite_timeout():
    n, s = 20, 3
    fail = {"name": "always", "fail_at": 7.0, "fail_fraction": 0.8}
    live = ClockedModest(_sim(n, s), s, ping_timeout=1.0, aggregation_timeout=3.0,
                         min_models=2, availability=fail)
    records = live.run(until=42.0, eval_every=7.0)
    everyone = torch.arange(n)
    survivors = set(everyone[live.availability.online_at(everyone, 42.0)].tolist())
    assert len(survivors) == 4
    assert records[-1]["round"] >= records[0]["round"] + 2  # the counter advances after 7 s
    late = [r for r in live.rounds if r["start"] > 8.0 and r["restart_at"] is None]
    assert late and all(set(r["trainers"]) <= survivors for r in late)
    # the same failure with an aggregator that never times out: a round that lost a model
    # waits forever, and the model stays where it was at the failure
    stuck = ClockedModest(_sim(n, s), s, ping_timeout=1.0, aggregation_timeout=math.inf,
                          min_models=2, availability=fail)
    frozen = stuck.run(until=42.0, eval_every=7.0)
    assert frozen[-1]["round"] == frozen[0]["round"] < records[-1]["round"]


def test_search_matches_a_plain_reference():
    """The vectorized ping lanes against a one-ping-at-a-time loop with a heap."""
    n, s = 12, 4
    fail = {"name": "always", "fail_at": 0.0, "fail_nodes": [0, 2, 3, 5, 7, 8, 11]}
    run = ClockedModest(_sim(n, s), s, ping_timeout=1.5, aggregation_timeout=3.0,
                        ping_rtt=0.25, availability=fail)
    starts = torch.tensor([0.0, 2.0], dtype=torch.float64)
    pingers = torch.tensor([1, 4])
    search = run._search(pingers, starts, starts, 3, s)
    order = ModestSampling(s).order(0, 3, n).tolist()
    dead = set(fail["fail_nodes"])
    for row, (p, t0) in enumerate(zip(pingers.tolist(), starts.tolist())):
        lanes = [t0] * s
        heapq.heapify(lanes)
        found, end = [], t0
        for v in order:
            if len(found) == s:
                break
            t = heapq.heappop(lanes)
            if v == p or v not in dead:
                found.append(v)
                end = max(end, t + (0.0 if v == p else 0.25))
            else:
                end = max(end, t + 1.5)
                heapq.heappush(lanes, t + 1.5)
        assert search.found[row].tolist() == found
        assert float(search.finish[row]) == pytest.approx(end)


def test_write_run_and_bad_arguments(tmp_path):
    run = ClockedModest(_sim(8, 3), 3, ping_timeout=1.0, aggregation_timeout=3.0)
    with pytest.raises(ValueError, match="nothing to write"):
        write_run(run, tmp_path / "none")
    run.run(until=6.0, eval_every=3.0)
    out = write_run(run, tmp_path / "run")
    assert {"events.csv", "metrics.csv", "summary.json", "curves.png"} <= {
        p.name for p in out.iterdir()}
    with pytest.raises(ValueError, match="runs once"):
        run.run(until=6.0, eval_every=3.0)
    sim = _sim(8, 3)
    for kwargs, match in (({"sample_size": 9}, "sample_size must be an integer in \\[1, 8\\]"),
                          ({"sample_size": 3, "aggregators": 4}, "aggregators"),
                          ({"sample_size": 3, "success_fraction": 0.0}, "success_fraction"),
                          ({"sample_size": 3, "ping_timeout": -1.0}, "ping_timeout"),
                          ({"sample_size": 3, "aggregation_timeout": 0}, "aggregation_timeout"),
                          ({"sample_size": 3, "min_models": 0}, "min_models"),
                          ({"sample_size": 4}, "differs from the simulation's modest rule")):
        with pytest.raises(ValueError, match=match):
            ClockedModest(sim, **kwargs)
    with pytest.raises(ValueError, match="until must be a positive"):
        ClockedModest(sim, 3).run(until=0.0, eval_every=1.0)
