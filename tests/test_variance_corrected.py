"""Variance-corrected averaging (Tian et al., 2024; spec section 5) against hand-computed
merges, and its experiment's smoke run."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import vmap

from murmura.algorithms import make_algorithm
from murmura.algorithms.base import ModelLayout
from murmura.algorithms.variance_corrected import VarianceCorrectedAverage, tensor_slots
from murmura.data import federate
from murmura.swarm import Evaluation, Simulation
from murmura.swarm.params import ParamSpec

ROOT = Path(__file__).resolve().parents[1]


def layout(model: nn.Module) -> ModelLayout:
    return ModelLayout(ParamSpec.from_module(model), model)


def linear_2x2() -> VarianceCorrectedAverage:
    """Bound to nn.Linear(2, 2): row = [w00, w01, w10, w11, b0, b1]."""
    return VarianceCorrectedAverage().bind(layout(nn.Linear(2, 2)))


# model 1: W = [[3, 1], [3, 1]] (mean 2, std 1); model 2: W = [[5, 5], [-1, -1]] (mean 2, std 3)
M1 = torch.tensor([3.0, 1.0, 3.0, 1.0, 1.0, 3.0])
M2 = torch.tensor([5.0, 5.0, -1.0, -1.0, 3.0, -1.0])
# A = [[4, 3], [1, 0]]: mean 2, deviations (2, 1, -1, -2), std sqrt(2.5); bias average (2, 1)
A_DEV = torch.tensor([2.0, 1.0, -1.0, -2.0])


def test_merge_of_two_models_by_hand():
    merged = linear_2x2()(M1, torch.stack([M1, M2]), torch.ones(2))
    # target: mean of the two stds (1 + 3) / 2 = 2, not the pooled sqrt((1 + 9) / 2)
    expected_w = 2.0 + A_DEV * 2.0 / math.sqrt(2.5)
    assert torch.allclose(merged[:4], expected_w, atol=1e-6)
    assert torch.allclose(merged[4:], torch.tensor([2.0, 1.0]))  # bias: plain average
    assert merged[:4].std(correction=0) == pytest.approx(2.0, abs=1e-6)


def test_xavier_target_and_plain_arm_by_hand():
    stack, mask = torch.stack([M1, M2]), torch.ones(2)
    xavier = VarianceCorrectedAverage("xavier").bind(layout(nn.Linear(2, 2)))
    # sqrt(2 / (fan_in + fan_out)) = sqrt(2 / 4); 2 + dev * sqrt(0.5) / sqrt(2.5) = 2 + dev/sqrt5
    assert torch.allclose(xavier(M1, stack, mask)[:4], 2.0 + A_DEV / math.sqrt(5.0), atol=1e-6)
    plain = VarianceCorrectedAverage("none").bind(layout(nn.Linear(2, 2)))
    assert torch.allclose(plain(M1, stack, mask), (M1 + M2) / 2)


def test_uncorrelated_models_keep_their_spread():
    """The vanishing variance: the plain mean of 8 independent tensors has ~1/sqrt(8) of their
    std; the corrected one keeps the inputs' mean std exactly."""
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10))
    rule = VarianceCorrectedAverage().bind(layout(model))
    g = torch.Generator().manual_seed(0)
    stack = torch.randn(8, ParamSpec.from_module(model).dim, generator=g)
    merged, plain = rule(stack[0], stack, torch.ones(8)), stack.mean(0)
    for slot in rule.slots:
        part = slice(slot.start, slot.stop)
        if slot.corrected:
            target = stack[:, part].std(dim=1, correction=0).mean()
            assert merged[part].std(correction=0) == pytest.approx(float(target), rel=1e-5)
            assert plain[part].std(correction=0) < 0.5 * target
        else:
            assert torch.allclose(merged[part], plain[part], atol=1e-6)


def test_identical_models_are_left_alone():
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    rule = VarianceCorrectedAverage().bind(layout(model))
    row = ParamSpec.from_module(model).flatten(model)
    merged = rule(row, row.expand(3, -1), torch.ones(3))
    assert torch.allclose(merged, row, atol=1e-6)
    alone = rule(row, row.unsqueeze(0), torch.ones(1))  # an unmatched node hears nobody
    assert torch.allclose(alone, row, atol=1e-6)


def test_masked_rows_have_no_influence():
    rule = linear_2x2()
    two = rule(M1, torch.stack([M1, M2]), torch.ones(2))
    for junk in (torch.full((6,), 1e6), torch.full((6,), float("nan")), M2 * -7):
        padded = rule(M1, torch.stack([M1, M2, junk]), torch.tensor([1.0, 1.0, 0.0]))
        assert torch.allclose(padded, two, atol=1e-6)


def test_vmapped_matches_one_receiver_at_a_time():
    rule = linear_2x2()
    g = torch.Generator().manual_seed(1)
    received = torch.randn(4, 3, 6, generator=g)
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0], [1, 0, 0], [1, 0, 1]])
    batched = vmap(rule)(received[:, 0], received, mask)
    for i in range(4):
        assert torch.allclose(batched[i], rule(received[i, 0], received[i], mask[i]), atol=1e-6)


def test_unbound_rule_and_bad_target_are_refused():
    with pytest.raises(ValueError, match="not bound to a model layout"):
        VarianceCorrectedAverage()(M1, torch.stack([M1, M2]), torch.ones(2))
    with pytest.raises(ValueError, match="target must be one of"):
        VarianceCorrectedAverage("kaiming")
    with pytest.raises(ValueError, match="target must be one of"):
        make_algorithm("variance_corrected", target="xav")
    wrong = VarianceCorrectedAverage().bind(layout(nn.Linear(3, 2)))
    with pytest.raises(ValueError, match="bound to a model of 8 parameters"):
        wrong(M1, torch.stack([M1, M2]), torch.ones(2))


def test_fans_of_conv_and_linear_weights_follow_torch():
    model = nn.Sequential(nn.Conv2d(3, 4, 2), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(16, 5))
    slots = {s.name: s for s in tensor_slots(layout(model))}
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            fans = nn.init._calculate_fan_in_and_fan_out(p)
            assert (slots[name].fan_in, slots[name].fan_out) == fans
        else:
            assert not slots[name].corrected  # biases and the GroupNorm affine: plain average
    assert (slots["0.weight"].fan_in, slots["0.weight"].fan_out) == (12, 16)


def simulation(target: str = "input_mean", algorithm: str = "variance_corrected",
               steps: int = 2) -> Simulation:
    data = federate("digits", num_nodes=6, partition="dirichlet", alpha=1.0, seed=0, min_size=5)
    return Simulation(data, "mlp", algorithm, "random_matching", model_kwargs={"hidden": [8]},
                      algorithm_kwargs={"lr": 0.1, "local_steps": steps, "batch_size": 8,
                                        **({"target": target} if target else {})},
                      seed=0, same_init=False, evaluation=Evaluation(every=0))


def test_in_the_engine_pairs_merge_as_computed_by_hand():
    sim = simulation()
    rule = sim.algorithm.communication.aggregator
    assert rule.slots is not None and [s.name for s in rule.slots if s.corrected] == [
        "1.weight", "3.weight"]
    x = sim.params.clone()
    plan = sim.algorithm.communication.plan(sim.context(1), None, sim.topology, None)
    sim.communicate(plan)
    partner = plan.matrix.matrix.to_dense().fill_diagonal_(0).argmax(dim=1)
    for i in range(6):
        j = int(partner[i])
        assert torch.allclose(sim.params[i], rule(x[i], x[[i, j]], torch.ones(2)), atol=1e-6)
        assert torch.allclose(sim.params[i], sim.params[j], atol=1e-6)  # both get the merge
    assert sim.bytes_sent.tolist() == [4.0 * sim.spec.dim] * 6  # one model per node, no extra


def test_the_plain_arm_is_dsgd_on_random_matching():
    plain, dsgd = simulation("none"), simulation(None, "dsgd")
    plain.run(rounds=3)
    dsgd.run(rounds=3)
    assert torch.allclose(plain.params, dsgd.params, atol=1e-5)
    corrected = simulation()
    corrected.run(rounds=3)
    assert not torch.allclose(corrected.params, plain.params, atol=1e-3)


def test_experiment_quick_mode(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "vc_run", ROOT / "experiments" / "variance_corrected" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "results.json").is_file() and (tmp_path / "accuracy.png").is_file()
