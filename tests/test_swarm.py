"""ParamSpec, counter-based randomness and the minibatch sampler."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from murmura.swarm import BatchSampler, ParamSpec
from murmura.swarm.random import normal, permute, randint, uniform


def test_paramspec_views_write_through_and_flatten_roundtrip():
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    spec = ParamSpec.from_module(model)
    assert spec.dim == 5 * 4 + 4 + 4 * 3 + 3
    flat = spec.flatten(model)
    views = spec.views(flat)
    assert views["0.weight"].shape == (4, 5)
    assert torch.equal(views["2.bias"], model[2].bias.detach())
    stack = flat.repeat(3, 1)
    spec.views(stack)["0.bias"][1] += 1.0  # a view: writes land in the stack
    assert float((stack[1] - flat).abs().sum()) == pytest.approx(4.0)
    assert torch.equal(spec.flatten(spec.views(stack)), stack)
    with pytest.raises(ValueError, match="model size"):
        spec.views(torch.zeros(3, spec.dim + 1))


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 3000), key=st.integers(-(2**62), 2**62))
def test_permute_is_a_bijection(size, key):
    p = permute(torch.arange(size), torch.tensor(size), torch.tensor(key))
    assert torch.equal(torch.sort(p).values, torch.arange(size))


def test_permute_differs_by_key_and_rejects_out_of_range():
    a = permute(torch.arange(50), torch.tensor(50), torch.tensor(1))
    b = permute(torch.arange(50), torch.tensor(50), torch.tensor(2))
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="position"):
        permute(torch.tensor([5]), torch.tensor(5), torch.tensor(0))


def test_draws_depend_on_coordinates_not_on_order_or_batching():
    nodes = torch.arange(100)
    full = uniform(7, "s", nodes, 3, 4, size=(6,))
    blocks = [nodes[i : i + 30] for i in range(0, 100, 30)]
    part = torch.cat([uniform(7, "s", block, 3, 4, size=(6,)) for block in blocks])
    assert torch.equal(full, part)
    shuffled = torch.randperm(100)
    assert torch.equal(uniform(7, "s", shuffled, 3, 4, size=(6,)), full[shuffled])
    assert not torch.equal(full, uniform(7, "s", nodes, 3, 5, size=(6,)))  # another step
    assert not torch.equal(full, uniform(8, "s", nodes, 3, 4, size=(6,)))  # another seed
    assert not torch.equal(full, uniform(7, "t", nodes, 3, 4, size=(6,)))  # another stream


def test_distributions_look_right():
    u = uniform(0, "u", torch.arange(2000), size=(50,))
    assert 0 <= float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005
    z = normal(0, "z", torch.arange(2000), size=(50,))
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1) < 0.02
    r = randint(0, "r", torch.arange(1000), high=torch.full((1000,), 7), size=(20,))
    counts = torch.bincount(r.flatten(), minlength=7)
    assert int(r.min()) == 0 and int(r.max()) == 6
    assert float(counts.min()) > 0.9 * 20000 / 7


def sampler(sizes, batch, **kw):
    sizes = torch.tensor(sizes)
    table = torch.zeros(len(sizes), int(sizes.max()), dtype=torch.int64)
    offset = 0
    for i, s in enumerate(sizes.tolist()):
        table[i, :s] = torch.arange(offset, offset + s)
        offset += s
    return BatchSampler(table, sizes, batch, seed=3, **kw), table


def test_epoch_mode_visits_each_sample_once_per_round():
    s, table = sampler([10, 7, 3], batch=4, epochs=1.0)
    nodes = torch.arange(3)
    assert s.num_steps() == 3
    got = s.batches(nodes, round_index=5, first_step=0, num_steps=3)
    for i, size in enumerate([10, 7, 3]):
        taken = got.index[i][got.weight[i] > 0]
        assert sorted(taken.tolist()) == table[i, :size].tolist()
    assert got.active.tolist() == [[True, True, True], [True, True, False], [True, False, False]]
    other = s.batches(nodes, round_index=6, first_step=0, num_steps=3)
    assert not torch.equal(got.index, other.index)  # a fresh shuffle each round


def test_step_mode_reads_a_continuous_stream_of_epochs():
    s, table = sampler([8, 12], batch=4, steps=2)
    nodes = torch.arange(2)
    seen = torch.cat([s.batches(nodes, r, 0, 2).index.reshape(2, -1) for r in range(6)], dim=1)
    # 6 rounds x 2 steps x 4 = 48 samples: exactly 6 epochs of node 0 and 4 of node 1
    for i, size in enumerate([8, 12]):
        epochs = seen[i].reshape(-1, size)
        for epoch in epochs:
            assert sorted(epoch.tolist()) == table[i, :size].tolist()
    single = s.batch(torch.tensor([1]), 2, 1).index[0]
    assert torch.equal(single, s.batches(nodes, 2, 0, 2).index[1, 1])


@pytest.mark.parametrize("kwargs,match", [
    (dict(batch_size=0, steps=1), "batch_size"),
    (dict(batch_size=4), "exactly one"),
    (dict(batch_size=4, steps=1, epochs=1.0), "exactly one"),
    (dict(batch_size=4, steps=0), "steps"),
    (dict(batch_size=4, epochs=-1.0), "epochs"),
])
def test_sampler_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BatchSampler(torch.zeros(2, 3, dtype=torch.int64), torch.tensor([3, 3]), seed=0, **kwargs)


def test_sampler_rejects_empty_nodes():
    with pytest.raises(ValueError, match="hold no training samples"):
        BatchSampler(torch.zeros(2, 3, dtype=torch.int64), torch.tensor([3, 0]), 2, seed=0,
                     steps=1)
