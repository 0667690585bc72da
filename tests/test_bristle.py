"""Bristle (spec robust.md section 3): the score, g and certainty formulas against hand
computations, F1 per class, one column merge on a tiny 2-class head (familiar and foreign
columns), a Byzantine candidate's weight 0, the three prioritizers, the fixed validation set,
the frozen backbone, bad parameters, the rule in a simulation and in the library, and the
experiment's quick mode."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from murmura.algorithms.base import ModelLayout
from murmura.data import FederatedData, load_dataset
from murmura.robust import aggregate
from murmura.robust.bristle import (
    Bristle,
    bounded,
    certainty,
    class_weights,
    f1_per_class,
    frozen_features,
    g,
    prioritize,
    score,
    validation_set,
)
from murmura.swarm import Evaluation, Simulation
from murmura.swarm.params import ParamSpec

ROOT = Path(__file__).resolve().parents[1]
T = torch.tensor
KEY = torch.tensor(7)


def sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


# ---------------------------------------------------------------------------------------------
# the formulas


def test_score_is_the_specs_power_of_the_f1_gap():
    mine = T([0.5, 0.5, 1.0, 0.0, 0.3], dtype=torch.float64)
    theirs = T([0.7, 0.3, 0.0, 1.0, 0.3], dtype=torch.float64)
    expected = [2 ** 3.5,          # better: d = 2, d^(3 + 0.5)
                -(2 ** 4.5),       # worse: -d^(4 + 0.5)
                -(10.0 ** 5),      # much worse: d = 10, -10^(4 + 1)
                10.0 ** 3,         # much better: 10^(3 + 0)
                0.0]               # equal: d = 0
    assert score(mine, theirs).tolist() == pytest.approx(expected, rel=1e-12)
    assert bounded(score(mine, theirs)).tolist() == pytest.approx(
        [2 ** 3.5, -(2 ** 4.5), -100.0, 1000.0, 0.0])


def test_g_maps_scores_to_weights_in_0_6():
    s = T([0.0, 100.0, -100.0, -40.6, -40.5, 1e6], dtype=torch.float64)
    expected = [1.0, 10 * sigmoid(1) - 4, 0.0, 0.0, 10 * sigmoid(-0.405) - 4, 6.0]
    assert g(s).tolist() == pytest.approx(expected, abs=1e-12)
    assert 0 < g(T(-40.5, dtype=torch.float64)) < 0.002  # the zero lies at 100 ln(2/3)


def test_certainty_is_mean_minus_population_std_clamped():
    f1 = T([[1.0, 0.5], [0.1, 0.9], [0.2, 0.2], [0.0, 1.0]], dtype=torch.float64)
    assert certainty(f1).tolist() == pytest.approx([0.5, 0.1, 0.2, 0.0], abs=1e-12)
    three = T([[0.2, 0.2, 0.8], [0.0, 0.0, 1.0]], dtype=torch.float64)
    # mean 0.4, std sqrt(0.08); mean 1/3, std sqrt(2/9) > 1/3 -> 0
    assert certainty(three).tolist() == pytest.approx([0.4 - math.sqrt(0.08), 0.0], abs=1e-12)


def test_f1_per_class_counts_tp_fp_fn():
    predicted = T([[0, 0, 1, 1, 2], [0, 0, 0, 0, 0]])
    labels = T([0, 1, 1, 1, 0])
    # row 0, class 0: tp 1, fp 1, fn 1 -> 2/4; class 1: tp 2, fp 0, fn 1 -> 4/5
    # row 1, class 0: tp 2, fp 3, fn 0 -> 4/7; class 1: no true positive -> 0
    f1 = f1_per_class(predicted, labels, T([0, 1]))
    assert f1.flatten().tolist() == pytest.approx([0.5, 0.8, 4 / 7, 0.0])


# ---------------------------------------------------------------------------------------------
# one merge on a tiny head: Linear(1, 2), flat [w0, w1, b0, b1]


def test_familiar_columns_merge_with_per_class_weights():
    own = T([0.0, 0.0, 1.0, 0.0])      # always class 0: F1 = [2/3, 0]
    peer = T([-1.0, 1.0, 0.0, 0.0])    # logits -x, x: perfect, F1 = [1, 1]
    batch = {"x": T([[-1.0], [-2.0], [1.0], [2.0]]), "y": T([0, 0, 1, 1])}
    out = Bristle(num_classes=2)(own, torch.stack([own, peer]), torch.ones(2), KEY,
                                 batch=batch)
    w0 = 10 * sigmoid((10 / 3) ** (3 + 2 / 3) / 100) - 4   # class 0: d = 10/3, better
    w1 = 10 * sigmoid(10.0 ** 3 / 100) - 4                   # class 1: d = 10, better
    # column 0 = ([0, 1] + w0 [-1, 0]) / (1 + w0), column 1 = ([0, 0] + w1 [1, 0]) / (1 + w1)
    assert out.tolist() == pytest.approx([-w0 / (1 + w0), w1 / (1 + w1), 1 / (1 + w0), 0.0],
                                         rel=1e-6)


def test_foreign_columns_take_the_per_peer_weight_and_a_byzantine_one_gets_zero():
    own = T([1.0, 0.0, 0.0, 0.0])       # logits x, 0: class 0 on x > 0
    peer = T([3.0, 1.0, 0.0, 1.0])      # logits 3x, x + 1: class 0 on x = 1, 2 too
    byzantine = T([-50.0, 50.0, 0.0, 9.0])  # always class 1: F1 0 on class 0
    batch = {"x": T([[1.0], [2.0]]), "y": T([0, 0])}  # familiar {0}, foreign {1}
    rule = Bristle(num_classes=2)
    honest = rule(own, torch.stack([own, peer]), torch.ones(2), KEY, batch=batch)
    # equal F1 (1 = 1): s = 0, g = 1, certainty 1 -> both columns are the plain pair mean
    assert honest.tolist() == pytest.approx([2.0, 0.5, 0.0, 0.5])
    attacked = rule(own, torch.stack([own, peer, byzantine]), torch.ones(3), KEY, batch=batch)
    assert attacked.tolist() == pytest.approx(honest.tolist())
    # its weights directly: F1 0 against one's 1 -> s = -10^5, certainty 0 -> weight 0
    weights = class_weights(T([1.0], dtype=torch.float64), T([[1.0], [0.0]], dtype=torch.float64),
                            T([0]), 2)
    assert weights.tolist() == [[1.0, 1.0], [0.0, 0.0]]


def test_padding_and_non_finite_candidates_are_ignored():
    own, peer = T([1.0, 0.0, 0.0, 0.0]), T([3.0, 1.0, 0.0, 1.0])
    batch = {"x": T([[1.0], [2.0]]), "y": T([0, 0])}
    stack = torch.stack([own, peer, torch.full((4,), math.inf), torch.full((4,), 1e3)])
    out = Bristle(num_classes=2)(own, stack, T([1.0, 1.0, 1.0, 0.0]), KEY, batch=batch)
    assert out.tolist() == pytest.approx([2.0, 0.5, 0.0, 0.5])
    alone = Bristle(num_classes=2)(own, own[None], T([1.0]), KEY, batch=batch)
    assert torch.equal(alone, own)


# ---------------------------------------------------------------------------------------------
# the prioritizers


def test_exploit_explore_takes_the_closest_and_draws_from_the_rest():
    distances = T([5.0, 1.0, 3.0, 2.0, 4.0])
    assert prioritize(distances, KEY, exploit=2, explore=0).tolist() == [1, 3]
    chosen = prioritize(distances, KEY, exploit=2, explore=1).tolist()
    assert len(chosen) == 3 and {1, 3} < set(chosen) and set(chosen) - {1, 3} <= {0, 2, 4}
    assert prioritize(distances, KEY).tolist() == [0, 1, 2, 3, 4]  # 50 / 5: all of 5


def test_tiered_draws_4_5_2_from_the_thirds():
    distances = torch.arange(30.0).flip(0)          # candidate 29 is the closest
    chosen = prioritize(distances, KEY, "tiered", alpha=0.4, count=10)
    rank = 29 - chosen                               # 0 = closest
    assert [int(((rank >= lo) & (rank < lo + 10)).sum()) for lo in (0, 10, 20)] == [4, 5, 2]
    # 9 candidates: thirds of 3, so 3 + 3 from the closer two and 2 of the farthest
    few = prioritize(torch.arange(9.0), KEY, "tiered", alpha=0.4, count=10).tolist()
    assert few[:6] == [0, 1, 2, 3, 4, 5] and len(few) == 8 and set(few[6:]) <= {6, 7, 8}


def test_random_draws_count_distinct_candidates_from_the_key():
    distances = torch.arange(12.0)
    chosen = prioritize(distances, KEY, "random", count=4)
    assert len(set(chosen.tolist())) == 4
    assert torch.equal(chosen, prioritize(distances, KEY, "random", count=4))
    draws = {tuple(prioritize(distances, torch.tensor(k), "random", count=4).tolist())
             for k in range(6)}
    assert len(draws) > 1
    assert prioritize(distances[:3], KEY, "random", count=10).tolist() == [0, 1, 2]


# ---------------------------------------------------------------------------------------------
# the validation set and the frozen backbone


def test_validation_set_is_per_class_and_independent_of_order():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(30, 4, generator=generator)
    y = torch.arange(30) % 3
    vx, vy = validation_set(x, y, per_class=4)
    assert torch.bincount(vy).tolist() == [4, 4, 4]
    order = torch.randperm(30, generator=generator)
    px, py = validation_set(x[order], y[order], per_class=4)
    assert sorted(map(tuple, px.tolist())) == sorted(map(tuple, vx.tolist()))
    few_x, few_y = validation_set(x[:5], y[:5], per_class=10)  # fewer than 10 of a class
    assert sorted(few_y.tolist()) == [0, 0, 1, 1, 2]


def test_frozen_features_applies_the_backbone_once():
    digits = load_dataset("digits")
    project = nn.Linear(64, 5, bias=False)
    features = frozen_features(project, digits)
    assert features.train_x.shape == (1257, 5) and features.test_x.shape == (540, 5)
    with torch.no_grad():
        assert torch.allclose(features.train_x, project(digits.train_x))
    assert torch.equal(frozen_features(nn.Identity(), digits).train_x, digits.train_x)
    assert project.training  # restored


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("params, word", [
    ({"prioritizer": "closest"}, "prioritizer"), ({"exploit": -1}, "exploit"),
    ({"exploit": 0, "explore": 0}, r"exploit \+ explore"), ({"alpha": 1.5}, "alpha"),
    ({"count": 0}, "count"), ({"per_class": 0}, "per_class"), ({"num_classes": 1}, "num_classes"),
    ({"pool": 2.5}, "pool"),
])
def test_bad_parameters_are_refused_by_name(params, word):
    with pytest.raises(ValueError, match=word):
        Bristle(**params)


def test_bad_calls_say_what_to_pass():
    own, batch = torch.zeros(4), {"x": T([[1.0]]), "y": T([0])}
    with pytest.raises(ValueError, match="batch"):
        Bristle(num_classes=2)(own, own[None], T([1.0]))
    with pytest.raises(ValueError, match="num_classes"):
        Bristle()(own, own[None], T([1.0]), batch=batch)
    with pytest.raises(ValueError, match="Linear"):
        Bristle(num_classes=3)(own, own[None], T([1.0]), batch=batch)
    with pytest.raises(ValueError, match="labels"):
        Bristle(num_classes=2)(own, own[None], T([1.0]), batch={"x": T([[1.0]]), "y": T([5])})
    mlp = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="logreg"):
        Bristle().bind(ModelLayout(ParamSpec.from_module(mlp), mlp))
    head = nn.Linear(4, 2)
    with pytest.raises(ValueError, match="num_classes"):
        Bristle(num_classes=3).bind(ModelLayout(ParamSpec.from_module(head), head))


# ---------------------------------------------------------------------------------------------
# in a simulation and in the library


def test_in_a_simulation_the_rule_is_bound_and_merges_on_a_graph():
    digits = frozen_features(nn.Identity(), load_dataset("digits"))
    labels = digits.train_y.numpy()
    parts = [np.flatnonzero(np.isin(labels, [i, i + 1, i + 2]))[:60] for i in range(4)]
    data = FederatedData.from_parts(digits, parts)
    sim = Simulation(data, "logreg", "dsgd", "complete", seed=0,
                     algorithm_kwargs={"aggregator": {"name": "bristle", "per_class": 5},
                                       "local_steps": 3, "lr": 0.3, "batch_size": 16},
                     evaluation=Evaluation(every=0))
    assert sim.algorithm.communication.aggregator.head == (0, 10, 64, 640)
    alone = Simulation(data, "logreg", "local_sgd", seed=0, evaluation=Evaluation(every=0),
                       algorithm_kwargs={"local_steps": 3, "lr": 0.3, "batch_size": 16})
    sim.run(rounds=2)
    alone.run(rounds=2)
    assert torch.isfinite(sim.params).all()
    assert not torch.allclose(sim.params, alone.params)  # something was merged


def test_the_library_aggregates_flat_heads_given_the_samples():
    own, peer = np.array([1.0, 0.0, 0.0, 0.0]), np.array([3.0, 1.0, 0.0, 1.0])
    batch = {"x": np.array([[1.0], [2.0]]), "y": np.array([0, 0])}
    out = aggregate("bristle", np.stack([own, peer]), batch=batch, num_classes=2, key=3)
    assert isinstance(out, np.ndarray) and out.tolist() == pytest.approx([2.0, 0.5, 0.0, 0.5])


# ---------------------------------------------------------------------------------------------
# the experiment


def test_the_experiment_quick_mode_runs(tmp_path):
    spec = importlib.util.spec_from_file_location("bristle_run",
                                                  ROOT / "experiments/bristle/run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    assert run.main(["--quick", "--out", str(tmp_path), "--workers", "1"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["table"]["5 attackers"]) == {"local", "average", "median", "bristle"}
    assert results["table"]["no IID peers (caveat)"]["bristle"]["iid"] is None
    assert (tmp_path / "bristle.png").stat().st_size > 0
