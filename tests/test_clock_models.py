"""Compute-time and link models: hand-computed values, keyed draws independent of batching,
and clear errors for bad input."""

import math

import pytest
import torch

from murmura.clock import (
    COMPUTE,
    LINK_MODELS,
    SERVER,
    ConstantCompute,
    Links,
    LognormalCompute,
    ParetoCompute,
    TraceCompute,
    make_compute,
    make_links,
)
from murmura.clock.draws import keyed_normal, keyed_uniform
from murmura.clock.links import ConstantDraw, LognormalDraw, TraceDraw
from murmura.registry import RegistryError


def test_registries_list_the_built_ins():
    assert COMPUTE.names() == ["constant", "lognormal", "pareto", "trace"]
    assert LINK_MODELS.names() == ["constant", "lognormal", "trace"]


def test_constant_and_trace_compute_by_hand():
    assert ConstantCompute(0.5).task_time(torch.tensor([0, 1]), 4).tolist() == [2.0, 2.0]
    trace = TraceCompute(torch.tensor([1.0, 2.0, 3.0]))
    assert trace.task_time(torch.arange(3), 2).tolist() == [2.0, 4.0, 6.0]
    steps = torch.tensor([1, 0, 3])
    assert trace.task_time(torch.arange(3), steps).tolist() == [1.0, 0.0, 9.0]
    with pytest.raises(ValueError, match="no entry in step_seconds"):
        trace.step_time(torch.tensor([3]))
    model = make_compute({"name": "trace", "step_seconds": [0.25, 0.5]})
    assert model.step_time(torch.tensor([1, 0])).tolist() == [0.5, 0.25]


def test_lognormal_without_spread_is_exp_mu():
    model = LognormalCompute(mu=math.log(0.2), sigma=0.0)
    assert torch.allclose(model.step_time(torch.arange(3), 7),
                          torch.full((3,), 0.2, dtype=torch.float64))


def test_draws_do_not_depend_on_batch_order_or_calls():
    nodes = torch.arange(200)
    counters = torch.arange(200) % 7
    for model in (LognormalCompute(-1.0, 0.7, jitter=0.3, seed=5),
                  ParetoCompute(1.5, 0.1, jitter=0.2, seed=5)):
        full = model.step_time(nodes, counters)
        fresh = type(model)(**{k: getattr(model, k) for k in model.__dataclass_fields__})
        perm = torch.randperm(200, generator=torch.Generator().manual_seed(0))
        shuffled = torch.empty_like(full)
        shuffled[perm] = fresh.step_time(nodes[perm], counters[perm])
        single = torch.cat([fresh.step_time(nodes[i:i + 1], counters[i:i + 1])
                            for i in range(0, 200, 37)])
        assert torch.equal(full, shuffled)  # bit for bit
        assert torch.equal(full[::37], single)
    for draw in (keyed_uniform, keyed_normal):
        a = draw(3, "p", nodes, counters)
        b = torch.cat([draw(3, "p", nodes[i:i + 10], counters[i:i + 10])
                       for i in range(0, 200, 10)])
        assert torch.equal(a, b)
        assert not torch.equal(a, draw(4, "p", nodes, counters))  # another seed, other numbers
        assert not torch.equal(a, draw(3, "q", nodes, counters))  # another purpose too


def test_lognormal_speed_is_fixed_per_node_and_jitter_per_task():
    fixed = LognormalCompute(0.0, 0.5, seed=1)
    nodes = torch.arange(50)
    assert torch.equal(fixed.step_time(nodes, 0), fixed.step_time(nodes, 9))
    jittery = LognormalCompute(0.0, 0.5, jitter=0.3, seed=1)
    a, b = jittery.step_time(nodes, 0), jittery.step_time(nodes, 1)
    assert not torch.equal(a, b)
    # The jitter has mean one: it does not change a node's mean speed.
    many = jittery.step_time(torch.zeros(20000, dtype=torch.int64), torch.arange(20000))
    assert abs(float(many.mean()) / float(fixed.step_time(torch.tensor([0]))) - 1) < 0.02


def test_lognormal_and_pareto_laws():
    nodes = torch.arange(20000)
    median = LognormalCompute(math.log(0.3), 0.8, seed=2).step_time(nodes).median()
    assert abs(float(median) / 0.3 - 1) < 0.04
    pareto = ParetoCompute(shape=3.0, scale=0.2, seed=2).step_time(nodes)
    assert float(pareto.min()) >= 0.2
    assert abs(float(pareto.mean()) - 0.2 * 3 / 2) < 0.01  # scale * shape / (shape - 1)


def test_compute_bad_inputs_say_what_to_fix():
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        make_compute({"name": "lognormal", "sigma": -1})
    with pytest.raises(ValueError, match="shape must be > 0"):
        make_compute({"name": "pareto", "shape": 0})
    with pytest.raises(RegistryError, match="Did you mean 'lognormal'"):
        make_compute("lognormale")
    with pytest.raises(ValueError, match="no parameter"):
        make_compute({"name": "constant", "speed": 2})
    with pytest.raises(ValueError, match="exactly one of step_seconds"):
        make_compute({"name": "trace"})
    model = ConstantCompute(1.0)
    with pytest.raises(ValueError, match="integer node ids"):
        model.step_time(torch.tensor([0.0]))
    with pytest.raises(ValueError, match="no server"):
        model.step_time(torch.tensor([SERVER]))
    with pytest.raises(ValueError, match="steps"):
        model.task_time(torch.tensor([0]), -1)
    with pytest.raises(ValueError, match="counter"):
        model.step_time(torch.tensor([0]), -3)
    with pytest.raises(ValueError, match="step_seconds"):
        TraceCompute(torch.tensor([1.0, -1.0]))


def test_transfer_time_by_hand():
    links = Links(latency=ConstantDraw(0.1, per="node"), up=TraceDraw(torch.tensor([1e6, 2e6])),
                  down=TraceDraw(torch.tensor([4e6, 0.5e6])), server_latency=0.02)
    mb = 1e6
    # client 0 -> server: 0.1 + 0.02 s, then 1 MB at min(1 MB/s, inf).
    assert links.transfer_time(0, SERVER, mb).item() == pytest.approx(1.12)
    # server -> client 1: downlink 0.5 MB/s.
    assert links.transfer_time(SERVER, 1, mb).item() == pytest.approx(2.12)
    # 0 -> 1: both access latencies, bottleneck min(up 1 MB/s, down 0.5 MB/s).
    assert links.transfer_time(0, 1, mb).item() == pytest.approx(2.2)
    assert links.transfer_time(1, 0, mb).item() == pytest.approx(0.2 + 0.5)
    # Vectorized: one call for many transfers; 0 bytes cost the latency only.
    got = links.transfer_time(torch.tensor([0, 1]), SERVER, torch.tensor([0.0, 2e6]))
    assert got.tolist() == pytest.approx([0.12, 1.12])
    assert links.bandwidth(torch.tensor([0, 1]), torch.tensor([1, 0])).tolist() == [5e5, 2e6]


def test_per_link_latency_is_symmetric_fixed_and_jittered_per_transfer():
    links = Links(latency=LognormalDraw(math.log(0.05), 0.5, per="link"), seed=3)
    src, dst = torch.tensor([0, 1, 4, SERVER]), torch.tensor([1, 0, SERVER, 4])
    lat = links.latency_between(src, dst)
    assert lat[0] == lat[1] and lat[2] == lat[3] and lat[0] != lat[2]
    # The cached client-server values equal the plain per-pair formula.
    many = links.latency_between(torch.arange(30), SERVER)
    mixed = links.latency_between(torch.tensor([SERVER, 7]), torch.tensor([29, SERVER]))
    assert mixed[0] == many[29] and mixed[1] == many[7]
    jittery = Links(latency=LognormalDraw(math.log(0.05), 0.5, per="link", jitter=0.4), seed=3)
    a, b = jittery.latency_between(src, dst, 0), jittery.latency_between(src, dst, 1)
    assert not torch.equal(a, b)
    assert torch.equal(a, jittery.latency_between(src, dst, 0))


def test_make_links_from_config_and_bad_links():
    links = make_links({"latency": {"name": "lognormal", "mu": -3.0, "sigma": 0.2},
                        "bandwidth": 1e6}, seed=4)
    assert links.seed == 4
    assert links.bandwidth(0, SERVER).item() == 1e6
    assert make_links(None).transfer_time(0, SERVER, 1e9).item() == 0.0  # instant links
    with pytest.raises(ValueError, match="up must be > 0"):
        Links(up=0.0)
    with pytest.raises(ValueError, match="latency must be >= 0"):
        Links(latency=-0.1)
    with pytest.raises(ValueError, match="bandwidth .* or up/down"):
        make_links({"bandwidth": 1e6, "up": 1e6})
    with pytest.raises(ValueError, match="no parameter"):
        make_links({"latncy": 0.1})
    with pytest.raises(ValueError, match="per must be"):
        LognormalDraw(0.0, per="edge")
    with pytest.raises(ValueError, match="nbytes"):
        Links().transfer_time(0, SERVER, -5)
    with pytest.raises(ValueError, match="src"):
        Links().transfer_time(-3, SERVER, 5)
