"""Availability: mid-task dropout, Markov churn's stationary law and order-independence,
Bernoulli and diurnal laws, permanent failures, and self-consistent change times."""

import math

import pytest
import torch

from murmura.clock import (
    AVAILABILITY,
    SERVER,
    AlwaysOnline,
    Bernoulli,
    Diurnal,
    IntervalAvailability,
    MarkovChurn,
    make_availability,
    with_failures,
)


def test_registry_lists_the_built_ins():
    assert AVAILABILITY.names() == ["always", "bernoulli", "diurnal", "markov", "trace"]


def test_mid_task_dropout_is_caught_where_an_end_check_is_not():
    # Node 0 is online on [0, 10) and [12, 100); node 1 all along [0, 100).
    avail = IntervalAvailability([[(0.0, 10.0), (12.0, 100.0)], [(0.0, 100.0)]])
    nodes = torch.tensor([0, 1])
    t0, t1 = torch.tensor([5.0, 5.0]), torch.tensor([15.0, 15.0])
    end_only = avail.online_at(nodes, t1)  # FedScale's check: active when the work is due
    assert end_only.tolist() == [True, True]
    assert avail.online_at(nodes, t0).tolist() == [True, True]
    assert avail.online_throughout(nodes, t0, t1).tolist() == [False, True]
    assert avail.online_throughout(nodes, 5.0, 10.0).tolist() == [True, True]  # half-open
    assert avail.next_offline(nodes, 5.0).tolist() == [10.0, 100.0]
    assert avail.next_online(nodes, 10.0).tolist() == [12.0, 10.0]
    assert avail.online_at(nodes, 10.0).tolist() == [False, True]
    assert avail.online_time(nodes, 0.0, 20.0).tolist() == [18.0, 20.0]


def test_intervals_are_merged_and_repeat_with_their_period():
    avail = IntervalAvailability([[(60.0, 100.0), (0.0, 20.0), (10.0, 30.0)], []],
                                 periods=[100.0, None])
    node = torch.tensor([0])
    # Online on [0, 30) and [60, 100) of each cycle; the run from 60 wraps into [100, 130).
    assert avail.online_at(node, torch.tensor([15.0, 45.0, 99.0, 100.0, 130.0])).tolist() == [
        True, False, True, True, False]
    assert avail.next_offline(node, 90.0).item() == 130.0
    assert avail.online_throughout(node, 90.0, 129.0).item()
    assert not avail.online_throughout(node, 90.0, 131.0).item()
    assert avail.next_online(node, 40.0).item() == 60.0
    assert avail.next_online(node, 230.0).item() == 260.0
    # Node 1 has no intervals: never online.
    assert avail.online_at(1, 5.0).item() is False
    assert avail.next_online(1, 5.0).item() == math.inf
    always = IntervalAvailability([[(0.0, 50.0), (50.0, 80.0)]], periods=80.0)
    assert always.next_offline(0, 1234.5).item() == math.inf


def assert_consistent(avail, nodes, times):
    """Change times land in the new state, and the state holds until then."""
    online, change = avail.state(nodes, times)
    finite = torch.isfinite(change)
    assert bool((change[finite] > times[finite]).all())
    after_on, _ = avail.state(nodes[finite], change[finite])
    assert torch.equal(after_on, ~online[finite])
    mid = times + 0.5 * torch.where(finite, change - times, 1.0)
    assert torch.equal(avail.online_at(nodes, mid), online)
    assert torch.equal(avail.online_throughout(nodes, times, change), online)


@pytest.mark.parametrize("avail", [
    Bernoulli(0.6, period=7.0, seed=1),
    Diurnal(0.5, 0.45, period=100.0, seed=1),
    MarkovChurn(20.0, 10.0, seed=1),
    IntervalAvailability([[(0.5, 3.0), (3.0, 4.5), (9.0, 9.25)]] * 3, periods=[10.0, None, 7.5]),
    with_failures(MarkovChurn(20.0, 10.0, seed=2), at=40.0, fraction=0.5, num_nodes=300),
], ids=["bernoulli", "diurnal", "markov", "intervals", "failures"])
def test_change_times_are_self_consistent(avail):
    gen = torch.Generator().manual_seed(0)
    n = avail.num_nodes or 300
    nodes = torch.randint(0, n, (600,), generator=gen)
    times = torch.rand(600, generator=gen, dtype=torch.float64) * 200
    assert_consistent(avail, nodes, times)


def test_markov_churn_is_stationary_with_exponential_sojourns():
    churn = MarkovChurn(mean_on=30.0, mean_off=10.0, seed=7)
    nodes = torch.arange(20000)
    assert churn.stationary_online == 0.75
    for t in (0.0, 500.0):
        assert abs(float(churn.online_at(nodes, t).double().mean()) - 0.75) < 0.015
    online, change = churn.state(nodes, 500.0)
    # Memoryless: the time left in an on (off) sojourn has the sojourn's mean.
    assert abs(float((change - 500.0)[online].mean()) - 30.0) < 1.2
    assert abs(float((change - 500.0)[~online].mean()) - 10.0) < 0.6
    fraction = churn.online_time(nodes[:2000], 0.0, 300.0) / 300.0
    assert abs(float(fraction.mean()) - 0.75) < 0.03


def test_markov_answers_do_not_depend_on_query_order_or_batching():
    gen = torch.Generator().manual_seed(1)
    nodes = torch.randint(0, 50, (400,), generator=gen)
    times = torch.rand(400, generator=gen, dtype=torch.float64) * 2000
    forward = MarkovChurn(5.0, 3.0, seed=11, chunk=4)
    order = torch.argsort(times)
    on_f, ch_f = forward.state(nodes[order], times[order])
    backward = MarkovChurn(5.0, 3.0, seed=11, chunk=4)
    rev = order.flip(0)
    parts = [backward.state(nodes[rev[i:i + 7]], times[rev[i:i + 7]]) for i in range(0, 400, 7)]
    on_b = torch.cat([p[0] for p in parts]).flip(0)
    ch_b = torch.cat([p[1] for p in parts]).flip(0)
    assert torch.equal(on_f, on_b) and torch.equal(ch_f, ch_b)  # bit for bit
    other_chunk = MarkovChurn(5.0, 3.0, seed=11, chunk=32)
    assert torch.equal(other_chunk.state(nodes[order], times[order])[1], ch_f)
    assert not torch.equal(MarkovChurn(5.0, 3.0, seed=12).state(nodes, times)[1],
                           forward.state(nodes, times)[1])


def test_bernoulli_and_diurnal_laws():
    nodes = torch.arange(8000)
    bern = Bernoulli(0.3, period=5.0, seed=3)
    assert abs(float(bern.online_at(nodes, 12.0).double().mean()) - 0.3) < 0.02
    # The state is constant within a period and redrawn at its boundary.
    assert torch.equal(bern.online_at(nodes, 10.0), bern.online_at(nodes, 14.999))
    assert not torch.equal(bern.online_at(nodes, 10.0), bern.online_at(nodes, 15.0))
    day = Diurnal(mean=0.5, amplitude=0.4, period=100.0, phase_spread=0.0, seed=3)
    assert abs(float(day.online_at(nodes, 250.0).double().mean()) - 0.9) < 0.02  # the peak
    assert abs(float(day.online_at(nodes, 200.0).double().mean()) - 0.1) < 0.02  # the trough
    assert abs(float(day.online_at(nodes, 225.0).double().mean()) - 0.5) < 0.03
    assert AlwaysOnline().next_offline(nodes[:3], 5.0).tolist() == [math.inf] * 3


def test_permanent_failures_take_exactly_the_fraction_for_good():
    base = MarkovChurn(50.0, 5.0, seed=4)
    avail = with_failures(base, at=100.0, fraction=0.8, num_nodes=100, seed=4)
    assert avail.nodes.numel() == 80
    again = with_failures(MarkovChurn(50.0, 5.0, seed=4), at=100.0, fraction=0.8,
                          num_nodes=100, seed=4)
    assert torch.equal(avail.nodes, again.nodes)
    failed = avail.nodes
    assert not bool(avail.online_at(failed, 100.0).any())
    assert bool(torch.isinf(avail.next_online(failed, 150.0)).all())
    survivors = torch.tensor([i for i in range(100) if i not in set(failed.tolist())])
    assert torch.equal(avail.online_at(survivors, 150.0), base.online_at(survivors, 150.0))
    on_before = failed[avail.online_at(failed, 99.0)]
    assert bool((avail.next_offline(on_before, 99.0) <= 100.0).all())
    listed = with_failures(AlwaysOnline(), at=10.0, nodes=[2, 5])
    assert listed.online_at(torch.arange(6), 10.0).tolist() == [True, True, False, True, True,
                                                                False]


def test_server_is_always_online():
    churn = MarkovChurn(1.0, 1.0, seed=0)
    online, change = churn.state(torch.tensor([SERVER, 0]), 3.0)
    assert online[0] and change[0] == math.inf


def test_make_availability_and_bad_inputs():
    avail = make_availability({"name": "markov", "mean_on": 10.0, "mean_off": 5.0,
                               "fail_at": 20.0, "fail_fraction": 0.5}, seed=3, num_nodes=10)
    assert int(avail.online_at(torch.arange(10), 25.0).sum()) <= 5
    assert isinstance(make_availability(None), AlwaysOnline)
    with pytest.raises(ValueError, match="p must be a probability"):
        make_availability({"name": "bernoulli", "p": 1.5})
    with pytest.raises(ValueError, match="mean_on must be > 0"):
        MarkovChurn(0.0, 1.0)
    with pytest.raises(ValueError, match="fail_at"):
        make_availability({"name": "always", "fail_fraction": 0.5}, num_nodes=4)
    with pytest.raises(ValueError, match="exactly one of nodes"):
        with_failures(AlwaysOnline(), at=1.0)
    with pytest.raises(ValueError, match=r"t must be >= 0"):
        AlwaysOnline().online_at(0, -1.0)
    with pytest.raises(ValueError, match="t1 >= t0"):
        AlwaysOnline().online_throughout(0, 5.0, 4.0)
    with pytest.raises(ValueError, match=r"intervals\[0\]\[1\]"):
        IntervalAvailability([[(0.0, 1.0), (3.0, 2.0)]])
    with pytest.raises(ValueError, match="covers 1 nodes"):
        IntervalAvailability([[(0.0, 1.0)]]).online_at(torch.tensor([1]), 0.5)
    with pytest.raises(ValueError, match=r"periods\[0\]"):
        IntervalAvailability([[(0.0, 1.0)]], periods=[-1.0])
