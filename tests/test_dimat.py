"""DIMAT (spec §4): activation matching recovers known permutations of the MLP and the CNN, the
permutation preserves the function (GroupNorm included), masked rows are ignored, unsupported
models are refused; the Adam rule equals torch.optim.Adam; the merge inside a Simulation is the
rule applied to the node's neighbourhood and own samples; the experiment's quick mode runs."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from murmura.algorithms import make_algorithm
from murmura.algorithms.base import ModelLayout
from murmura.algorithms.dimat import (
    ActivationMerge,
    Adam,
    AfterPretraining,
    assign,
    correlation,
    layer_walk,
    permute,
)
from murmura.data import federate
from murmura.models import build_model
from murmura.swarm import Evaluation, Simulation
from murmura.swarm.params import ParamSpec

REPO = Path(__file__).resolve().parents[1]


def bound(name, shape, **kwargs):
    torch.manual_seed(0)
    model = build_model(name, shape, 10, **kwargs)
    spec = ParamSpec.from_module(model)
    return model, spec, ActivationMerge(needs_data=128).bind(ModelLayout(spec, model))


def scrambled(spec, merge, row, seed=1):
    """A copy of ``row`` with every hidden layer's units permuted (whole GroupNorm groups
    moved, and units within them), and the permutations used."""
    copy = row.clone()
    views = spec.views(copy)
    g = torch.Generator().manual_seed(seed)
    perms = []
    for layer in merge.walk[1]:
        units = views[f"{layer.producer}.weight"].shape[0]
        size = units // layer.groups
        outer = torch.randperm(layer.groups, generator=g)
        perm = torch.cat([outer[k] * size + torch.randperm(size, generator=g)
                          for k in range(layer.groups)])
        permute(views, layer, perm)
        perms.append(perm)
    return copy, perms


CASES = [("mlp", (64,), {"hidden": [128, 128]}), ("cnn", (1, 8, 8), {"channels": [8, 16]})]


@pytest.mark.parametrize("name,shape,kwargs", CASES)
def test_a_permuted_copy_is_the_same_function_and_aligns_back_exactly(name, shape, kwargs):
    model, spec, merge = bound(name, shape, **kwargs)
    row = spec.flatten(model)
    copy, perms = scrambled(spec, merge, row)
    x = torch.randn(128, *shape, generator=torch.Generator().manual_seed(2))

    def f(r):
        return functional_call(model, spec.views(r), (x,))

    assert not torch.allclose(copy, row)  # the weights moved...
    assert all(not torch.equal(p, torch.arange(len(p))) for p in perms)
    assert torch.allclose(f(copy), f(row), atol=1e-5)  # ...the function did not
    # a padded row (garbage here, zeros in the engine) must not count
    received = torch.stack([row, copy, torch.full_like(row, 7.0)])
    merged = merge(row, received, torch.tensor([1.0, 1.0, 0.0]), {"x": x, "y": None})
    assert torch.equal(merged, row)  # aligned back exactly: the merge of the two is the model
    plain = ActivationMerge(matching=False)(row, received, torch.tensor([1.0, 1.0, 0.0]))
    assert torch.allclose(plain, (row + copy) / 2)  # WA: the unaligned average
    assert not torch.allclose(f(plain), f(row), atol=1e-2)


def test_the_alignment_is_the_permutation_found_layer_by_layer():
    model, spec, merge = bound("mlp", (64,), hidden=[32, 32])
    other = build_model("mlp", (64,), 10, hidden=[32, 32])  # another init, not a permutation
    own, theirs = spec.flatten(model), spec.flatten(other)
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a1, b1 = torch.relu(model[1](x)), torch.relu(other[1](x))
        a2, b2 = torch.relu(model[3](a1)), torch.relu(other[3](b1))
        aligned, perms = merge.align([a1, a2], theirs, x)
    # by hand: layer 1's correlation and assignment, then layer 2 on the permuted model, whose
    # layer-2 activations are the unpermuted ones (its input columns follow layer 1's rows)
    p1 = torch.as_tensor(assign(correlation(a1, b1)))
    p2 = torch.as_tensor(assign(correlation(a2, b2)))
    assert torch.equal(perms[0], p1) and torch.equal(perms[1], p2)
    assert sorted(p1.tolist()) == list(range(32)) and not torch.equal(p1, torch.arange(32))
    w = spec.views(aligned)
    assert torch.equal(w["1.weight"], other[1].weight[p1])
    assert torch.equal(w["1.bias"], other[1].bias[p1])
    assert torch.equal(w["3.weight"], other[3].weight[p2][:, p1])
    assert torch.equal(w["5.weight"], other[5].weight[:, p2])
    assert torch.equal(w["5.bias"], other[5].bias)
    merged = merge(own, torch.stack([own, theirs]), torch.ones(2), {"x": x})
    assert torch.allclose(merged, (own + aligned) / 2)


def test_the_assignment_by_hand_and_within_groupnorm_groups():
    corr = np.array([[0.1, 0.9, 0.0], [0.8, 0.2, 0.1], [0.0, 0.3, 0.5]])
    assert assign(corr).tolist() == [1, 0, 2]  # 0.9 + 0.8 + 0.5
    # the best free permutation swaps units 1 and 2 across the groups {0,1}, {2,3} (3.2); the
    # best group-respecting one swaps the two groups and the units within them (3.0)
    corr = np.eye(4) * 0.6
    corr[1, 2] = corr[2, 1] = 1.0
    corr[0, 3] = corr[3, 0] = 0.5
    assert assign(corr).tolist() == [0, 2, 1, 3]
    assert assign(corr, groups=2).tolist() == [3, 2, 1, 0]
    rng = np.random.default_rng(0)
    perm = assign(rng.normal(size=(16, 16)), groups=4)
    assert sorted(perm.tolist()) == list(range(16))
    assert all(len({int(p) // 4 for p in perm[g * 4:(g + 1) * 4]}) == 1 for g in range(4))


def test_a_permutation_across_groupnorm_groups_would_change_the_function():
    model, spec, merge = bound("cnn", (1, 8, 8), channels=[8, 16])
    row = spec.flatten(model)
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    crossed = row.clone()
    layer = merge.walk[1][0]  # 8 channels, 4 groups of 2
    assert (layer.groups, layer.norm, layer.spread) == (4, "0.1", 1)
    assert merge.walk[1][1].spread == 4  # 16 channels of 2x2 before the linear head
    permute(spec.views(crossed), layer, torch.tensor([0, 2, 1, 3, 4, 5, 6, 7]))

    def f(r):
        return functional_call(model, spec.views(r), (x,))

    assert not torch.allclose(f(crossed), f(row), atol=1e-3)


def test_unsupported_models_and_an_unbound_merge_are_refused():
    for model, words in [
        (nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)), "Tanh"),
        (build_model("logreg", (4,), 2), "hidden layer"),
        (build_model("char_cnn", (8,), 5), "CausalConvLM"),
        (nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten(), nn.Linear(16, 2)), "grouped"),
    ]:
        with pytest.raises(ValueError, match=words):
            layer_walk(model)
    with pytest.raises(ValueError, match="'mlp' and 'cnn'"):
        layer_walk(nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)))
    rows = torch.randn(3, 10)
    with pytest.raises(ValueError, match="not bound"):
        ActivationMerge()(rows[0], rows, torch.ones(3), {"x": torch.randn(4, 2)})
    with pytest.raises(ValueError, match="merge must be one of"):
        make_algorithm("dimat", merge="zipit")
    with pytest.raises(ValueError, match="act_dataset"):
        make_algorithm("dimat", act_data="global")


def test_adam_equals_torch_adam_and_idle_nodes_keep_everything():
    torch.manual_seed(0)
    x0, grads = torch.randn(2, 5), torch.randn(4, 2, 5)
    rule = Adam(lr=0.01)
    x = x0.clone()
    state = {k: torch.zeros(2, 5) for k in rule.state_names}
    active = torch.tensor([[1.0], [0.0]])  # node 1 idles in the last step
    for t, g in enumerate(grads):
        rule.update(x, g.clone(), state, active if t == 3 else None)
    ref = x0[0].clone().requires_grad_(True)
    opt = torch.optim.Adam([ref], lr=0.01)
    for g in grads:
        ref.grad = g[0].clone()
        opt.step()
    assert torch.allclose(x[0], ref.detach(), atol=1e-6)
    again = x0[1].clone()
    state1 = {k: torch.zeros(1, 5) for k in rule.state_names}
    for g in grads[:3]:
        rule.update(again[None], g[1][None].clone(), state1, None)
    assert torch.allclose(x[1], again) and torch.equal(state["step"][1], torch.full((5,), 3.0))


def test_the_schedule_pretrains_then_merges_and_ends_with_training():
    actions = [AfterPretraining(3).action(r, 6) for r in range(6)]
    assert actions == ["skip", "skip", "communicate", "communicate", "communicate", "skip"]
    assert AfterPretraining(0, merge_last=True).action(5, 6) == "communicate"


def test_the_simulation_merges_each_node_with_its_ring_neighbours_on_its_own_samples():
    data = federate("digits", num_nodes=4, partition="dirichlet", alpha=0.5, seed=0)
    sim = Simulation(data, "mlp", "dimat", "ring", model_kwargs={"hidden": [16, 16]},
                     algorithm_kwargs={"local_epochs": 1, "act_samples": 2000},
                     same_init=False, evaluation=Evaluation(every=0))
    assert isinstance(sim.algorithm.communication.aggregator.walk, tuple)  # bound at setup
    sim.train(None, 0)
    before = sim.params.clone()
    sim.communicate(sim.algorithm.communication.plan(sim.context(2), None, sim.topology, None))
    merge = sim.algorithm.communication.aggregator
    table, sizes = sim.data.index_table, sim.data.sizes
    for i in range(4):  # every sample of node i (act_samples >= its size), in any order
        x = sim.data.dataset.train_x[table[i, : sizes[i]]]
        hood = before[[i, (i - 1) % 4, (i + 1) % 4]]
        expected = merge(hood[0], hood, torch.ones(3), {"x": x})
        assert torch.allclose(sim.params[i], expected, atol=1e-6)
    assert float(sim.bytes_sent[0]) == 2 * sim.message_bytes  # two ring neighbours
    wa = Simulation(data, "mlp", "dimat", "ring", model_kwargs={"hidden": [16, 16]},
                    algorithm_kwargs={"merge": "average", "pretrain_rounds": 2},
                    same_init=False, evaluation=Evaluation(every=0))
    history = wa.run(rounds=3)
    assert [r["communicated"] for r in history.records] == ["skip", "communicate", "skip"]


def test_global_activation_data_comes_from_the_named_dataset():
    algo = make_algorithm("dimat", act_data="global", act_dataset="digits", act_samples=300)
    merge = algo.communication.aggregator
    assert merge.needs_data == 0 and tuple(merge.proxy.shape) == (300, 64)
    model, spec, _ = bound("mlp", (64,), hidden=[32, 32])
    merge = merge.bind(ModelLayout(spec, model))
    row = spec.flatten(model)
    copy, _ = scrambled(spec, merge, row)
    merged = merge(row, torch.stack([row, copy]), torch.ones(2))
    # on digits some random units never fire: those match arbitrarily (correlation 0 with
    # everything), and averaging two of them changes nothing on the samples they never fire on
    x = merge.proxy

    def f(r):
        return functional_call(model, spec.views(r), (x,))

    assert torch.allclose(f(merged), f(row), atol=1e-5)
    assert not torch.allclose(f((row + copy) / 2), f(row), atol=1e-2)
    small = build_model("mlp", (8,), 10, hidden=[4])
    with pytest.raises(ValueError, match="do not fit"):
        merge.bind(ModelLayout(ParamSpec.from_module(small), small))


def test_experiment_quick_mode(tmp_path):
    path = REPO / "experiments" / "dimat" / "run.py"
    spec = importlib.util.spec_from_file_location("experiment_dimat", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick", "--out", str(tmp_path), "--workers", "1"]) == 0
    results = (tmp_path / "results.json").read_text()
    assert "dimat" in results and "local_only" in results


def test_the_experiment_config_builds_dimat():
    from murmura.config import Experiment

    exp = Experiment.from_toml(REPO / "experiments" / "dimat" / "dimat.toml").check()
    algorithm = make_algorithm(exp.algorithm.name, **exp.algorithm_params())
    assert algorithm.schedule == AfterPretraining(20)
    assert algorithm.communication.aggregator.needs_data == 512 and not exp.engine.same_init
