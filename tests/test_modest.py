"""MoDeST: the sample every node computes alone, the hosted average, the bytes and the pings,
offline nodes skipped, and the liveness rules, against hand-computed cases."""

import pytest
import torch

from murmura.algorithms import make_algorithm
from murmura.algorithms.base import RoundContext
from murmura.algorithms.modest import PING_BYTES, ModestSampling
from murmura.algorithms.plans import Average, Control
from murmura.data import federate
from murmura.swarm.engine import Simulation


def ctx(round=0, n=10):
    return RoundContext(round, 100, 0, n, torch.device("cpu"))


def test_the_sample_is_the_head_of_a_keyed_order_and_skips_offline_nodes():
    rule = ModestSampling(sample_size=4, aggregators=2, offline_fraction=0.5, offline_from=3)
    order = rule.order(0, 5, 10)
    assert sorted(order.tolist()) == list(range(10))
    assert torch.equal(order, ModestSampling().order(0, 5, 10))  # any node computes the same
    assert not torch.equal(order, rule.order(0, 6, 10))
    online = rule.online(0, 5, 10)
    assert int(online.sum()) == 5 and bool(rule.online(0, 2, 10).all())
    sample, pinged = rule.available(0, 5, 10, 4)
    expected = [int(i) for i in order if online[i]][:4]
    assert sample.tolist() == expected
    # pinged front to back up to the 4th online node, offline ones included
    last = order.tolist().index(expected[-1])
    assert pinged.tolist() == order[: last + 1].tolist()


def test_a_round_is_pings_then_an_average_hosted_by_the_next_samples_head():
    rule = ModestSampling(sample_size=3, aggregators=2)
    trainers = rule.sample(0, 0, 10)
    plans = rule.plan(ctx(0), trainers, None, torch.ones(10))
    control, average = plans
    assert isinstance(control, Control) and isinstance(average, Average)
    nxt = rule.sample(0, 1, 10)
    assert torch.equal(torch.nonzero(average.receivers).flatten(), nxt)
    head = rule.order(0, 1, 10)[:2]
    assert sorted(average.hosts.tolist()) == sorted(head.tolist())
    assert torch.allclose(average.weights[trainers], torch.full((3,), 1 / 3, dtype=torch.float64))
    # every node online: trainers ping 2 nodes each, aggregators 3 each; pongs come back
    assert float(control.sent.sum()) == 2 * PING_BYTES * (3 * 2 + 2 * 3)


def test_liveness_an_aggregator_needs_enough_models_or_at_least_three():
    rule = ModestSampling(sample_size=5, success_fraction=1.0, min_models=3,
                          offline_fraction=0.8, offline_from=0)  # 2 of 10 nodes online
    trainers = rule.sample(0, 0, 10)
    assert len(trainers) == 2
    plan = rule.plan(ctx(0), trainers, None, torch.ones(10))
    assert isinstance(plan, Control)  # dropped: 2 < floor(1.0 * 5) and 2 < 3
    relaxed = ModestSampling(sample_size=5, success_fraction=0.4, offline_fraction=0.8)
    assert isinstance(relaxed.plan(ctx(0), trainers, None, torch.ones(10)), list)


def test_modest_trains_the_sample_and_counts_2as_models_plus_pings():
    data = federate("digits", num_nodes=12, partition="iid", seed=0)
    sim = Simulation(data, model="logreg", seed=0, algorithm="modest",
                     algorithm_kwargs={"sample_size": 4, "aggregators": 2, "local_steps": 2,
                                       "batch_size": 8})
    rule = sim.algorithm.communication
    start = sim.params[0].clone()
    record = sim.step(5)
    trainers, nxt = rule.sample(0, 0, 12), rule.sample(0, 1, 12)
    hosts = rule.order(0, 1, 12)[:2]
    size = sim.message_bytes
    # trainers to both hosts, hosts to the next sample's other members, nobody to itself
    models = sum(2 - int(t in hosts) for t in trainers.tolist())
    models += sum(4 - int(h in nxt) for h in hosts.tolist())
    pings = 2 * PING_BYTES * (4 * 2 + 2 * 4)
    assert record["bytes_sent"] == models * size + pings
    assert torch.equal(sim.params[0], sim.params[11])  # every row holds the aggregate
    assert not torch.equal(sim.params[0], start)


def test_modest_refuses_a_sample_larger_than_the_swarm():
    data = federate("digits", num_nodes=4, partition="iid", seed=0)
    with pytest.raises(ValueError, match="sample_size 10 exceeds the number of nodes 4"):
        Simulation(data, model="logreg", algorithm="modest", seed=0)
    with pytest.raises(ValueError, match="aggregators"):
        make_algorithm("modest", sample_size=2, aggregators=3)
