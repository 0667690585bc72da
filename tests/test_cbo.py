"""Consensus-based optimization (spec section 8): the consensus point, the move, the engine's
round, the byte count, the benchmark objectives and the vector model, against hand
computations; and the experiment's quick mode."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from murmura.algorithms import make_algorithm
from murmura.algorithms.cbo import ConsensusMove, ConsensusPoint, consensus_point
from murmura.models import build_model
from murmura.swarm import Evaluation, Simulation
from murmura.swarm.random import key_normal
from murmura.tasks import TASKS
from murmura.tasks.objectives import (
    Objective,
    ackley,
    grand_canyon3_noisy,
    placeholder_data,
    rastrigin,
)

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# the consensus point


def test_consensus_point_matches_a_hand_computation():
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [9.0, 9.0]])
    scores = torch.tensor([1.0, 2.0, 3.0, -100.0])  # the last row is padding: masked out
    mask = torch.tensor([1.0, 1.0, 1.0, 0.0])
    # w = exp(-(f - 1)) = 1, e^-1, e^-2
    w1, w2 = math.exp(-1.0), math.exp(-2.0)
    total = 1.0 + w1 + w2
    expected = torch.tensor([w1 / total, 2.0 * w2 / total])
    assert torch.allclose(consensus_point(points, scores, mask, 1.0), expected, atol=1e-6)
    # alpha scales the exponent: alpha = 2 -> w = 1, e^-2, e^-4
    a1, a2 = math.exp(-2.0), math.exp(-4.0)
    expected2 = torch.tensor([a1, 2.0 * a2]) / (1.0 + a1 + a2)
    assert torch.allclose(consensus_point(points, scores, mask, 2.0), expected2, atol=1e-6)


def test_a_huge_alpha_picks_the_best_particle_in_float32():
    points = torch.tensor([[3.0, 1.0], [-2.0, 5.0], [7.0, 7.0]])
    scores = torch.tensor([4.0, 3.9999, 1e30])
    ones = torch.ones(3)
    v = consensus_point(points, scores, ones, 1e15)
    assert torch.equal(v, points[1])
    # ties share the weight equally; nothing overflows to nan
    tied = consensus_point(points, torch.tensor([2.0, 2.0, 5.0]), ones, 1e15)
    assert torch.allclose(tied, (points[0] + points[1]) / 2)
    assert torch.isfinite(consensus_point(points, torch.tensor([1e38, 3e38, 2e38]), ones,
                                          1e15)).all()


def test_the_joint_aggregator_returns_the_consensus_and_keeps_the_own_score():
    agg = ConsensusPoint(alpha=1.0)
    received = {"params": torch.tensor([[0.0], [2.0]]), "score": torch.tensor([[0.0], [1.0]])}
    out = agg({"params": torch.tensor([0.0]), "score": torch.tensor([0.0])}, received,
              torch.ones(2))
    e = math.exp(-1.0)
    assert torch.allclose(out["params"], torch.tensor([2.0 * e / (1.0 + e)]))
    assert torch.equal(out["score"], torch.tensor([0.0]))


# ---------------------------------------------------------------------------------------------
# the move


def test_without_noise_the_move_is_the_exact_drift():
    x, v = torch.tensor([1.0, -2.0, 4.0]), torch.tensor([0.5, 0.5, 0.5])
    key = torch.tensor(12345)
    out = ConsensusMove(lam=2.0, sigma=0.0, dt=0.1).combine(x, {}, {"params": v}, key)
    assert torch.allclose(out["params"], x - 0.2 * (x - v))


@pytest.mark.parametrize("noise", ["isotropic", "anisotropic"])
def test_the_noise_scales_with_the_distance_to_the_consensus(noise):
    x, v = torch.tensor([1.0, -2.0, 4.0]), torch.tensor([0.0, 0.0, 1.0])
    key = torch.tensor(777)
    move = ConsensusMove(lam=1.0, sigma=0.5, dt=0.04, noise=noise)
    out = move.combine(x, {}, {"params": v}, key)["params"]
    xi = key_normal(key, x.shape)
    gap = x - v  # (1, -2, 3), norm sqrt(14)
    spread = gap.abs() if noise == "anisotropic" else math.sqrt(14.0)
    expected = x - 0.04 * gap + 0.5 * 0.2 * spread * xi
    assert torch.allclose(out, expected, atol=1e-6)
    # the same key gives the same move, another key another one
    assert torch.equal(out, move.combine(x, {}, {"params": v}, key)["params"])
    assert not torch.equal(out, move.combine(x, {}, {"params": v}, torch.tensor(778))["params"])


def test_consensus_hopping_resamples_around_the_consensus():
    x, v = torch.tensor([5.0, 5.0]), torch.tensor([1.0, 2.0])
    key = torch.tensor(3)
    out = ConsensusMove(lam=1.0, sigma=0.7, dt=0.01, hopping=True).combine(
        x, {}, {"params": v}, key)
    assert torch.allclose(out["params"], v + 0.7 * key_normal(key, x.shape))


# ---------------------------------------------------------------------------------------------
# one round in the engine


def cbo_sim(n=3, topology="complete", seed=0, dim=2, **kwargs):
    params = dict(alpha=1.0, lam=1.0, sigma=0.0, dt=0.1, batch_size=1)
    params.update(kwargs)
    return Simulation(placeholder_data(n), "vector", "cbo", topology,
                      model_kwargs=dict(dim=dim, mean=0.0, std=1.0), algorithm_kwargs=params,
                      task="rastrigin", same_init=False, seed=seed,
                      evaluation=Evaluation(every=0))


def test_one_round_on_the_complete_graph_is_the_papers_cbo_step():
    sim = cbo_sim(n=3)
    x = sim.params.clone()
    f = rastrigin(x)
    w = torch.exp(-(f - f.min()))
    v = (w[:, None] * x).sum(0) / w.sum()  # every particle sees all three
    sim.run(rounds=1)
    assert torch.allclose(sim.node_state["score"], f[:, None].expand_as(x), atol=1e-5)
    assert torch.allclose(sim.params, x - 0.1 * (x - v), atol=1e-5)
    # each particle sends (x, f): 4 (d + 1) bytes to each of its 2 neighbours
    assert sim.bytes_sent.tolist() == [2 * 4 * (2 + 1)] * 3


def test_on_a_ring_each_node_takes_the_consensus_of_its_neighbourhood():
    sim = cbo_sim(n=5, topology="ring", alpha=3.0)
    x = sim.params.clone()
    f = rastrigin(x)
    sim.run(rounds=1)
    for i in range(5):
        hood = torch.tensor([i, (i - 1) % 5, (i + 1) % 5])
        w = torch.exp(-3.0 * (f[hood] - f[hood].min()))
        v = (w[:, None] * x[hood]).sum(0) / w.sum()
        assert torch.allclose(sim.params[i], x[i] - 0.1 * (x[i] - v), atol=1e-5)
    assert sim.bytes_sent.tolist() == [2 * 4 * 3] * 5


def test_the_noise_is_keyed_by_the_seed():
    def run(seed):
        sim = cbo_sim(n=4, seed=seed, sigma=1.0, noise="anisotropic")
        sim.run(rounds=3)
        return sim.params.clone()

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_cbo_finds_the_minimum_of_ackley():
    sim = cbo_sim(n=30, alpha=1e15, sigma=0.8, dt=0.1, noise="anisotropic", seed=0)
    sim.run(rounds=60)
    f = ackley(sim.params)
    v = consensus_point(sim.params, f, torch.ones(30), 1e15)
    assert float(v.abs().max()) < 0.01


def test_cbo_parameters_are_validated():
    for bad, hint in ((dict(alpha=0.0), "alpha"), (dict(alpha=math.inf), "alpha"),
                      (dict(dt=-1.0), "dt"), (dict(sigma=-0.1), "sigma"),
                      (dict(lam=math.nan), "lam"), (dict(noise="cauchy"), "noise"),
                      (dict(hopping="yes"), "hopping"), (dict(batch_size=0), "batch_size")):
        with pytest.raises(ValueError, match=hint):
            make_algorithm("cbo", **bad)
    algo = make_algorithm("cbo", alpha=50.0, noise="anisotropic", hopping=True)
    assert algo.params["noise"] == "anisotropic" and algo.local_work.steps == 1


# ---------------------------------------------------------------------------------------------
# objectives and the vector model


def test_objective_values_at_known_points():
    assert float(rastrigin(torch.zeros(7))) == 0.0
    assert float(ackley(torch.zeros(7))) == pytest.approx(0.0, abs=1e-6)
    assert float(grand_canyon3_noisy(torch.zeros(2))) == pytest.approx(0.0, abs=1e-6)
    # Rastrigin at an integer point: the cosine term vanishes, only sum x² is left
    assert float(rastrigin(torch.tensor([1.0, -2.0]))) == pytest.approx(5.0, abs=1e-5)
    assert float(rastrigin(torch.tensor([0.5]), amplitude=2.5)) == pytest.approx(0.25 + 5.0)
    # Ackley at (1, 1): the cosine mean is 1, so f = 20 (1 - e^-0.2)
    assert float(ackley(torch.ones(2))) == pytest.approx(20 * (1 - math.exp(-0.2)), abs=1e-5)
    # GrandCanyon at GD's start (8, 8): valley = -8, the ripple and the barrier vanish
    canyon = 0.4 * 64 + 0.2 * 64 + 25 * (1 - math.exp(-1.4 * 64 * math.exp(-0.002 * 8**4)))
    assert float(grand_canyon3_noisy(torch.tensor([8.0, 8.0]))) == pytest.approx(canyon,
                                                                                 abs=1e-4)
    # on the valley floor (valley = 0) with block = 3.375 > 0: the barrier 4 e (1 - e^-9b²)
    v1 = -0.5
    v2 = 2 / 16 * (v1 - 1) * (v1 - 4) ** 2 + 2
    block = -v1 - 1.6 * v2
    ripple = 1.1625 * sum(1 - math.cos(0.75 * math.pi * c) for c in (v1, v2))
    barrier = 4 * math.e * (1 - math.exp(-9 * block**2))
    expected = 0.4 * v1**2 + 0.2 * v2**2 + ripple + barrier
    assert float(grand_canyon3_noisy(torch.tensor([v1, v2]))) == pytest.approx(expected,
                                                                               abs=1e-4)


def test_objective_tasks_score_the_point():
    task = TASKS.get("ackley")()
    point = {"x": torch.tensor([0.1, -0.2])}

    def forward(params, samples):
        return params["x"].expand(samples.shape[0], 2)

    batch = {"x": torch.zeros(4, 64), "y": torch.zeros(4, dtype=torch.long)}
    loss, _ = task.loss(forward, point, batch)
    assert float(loss) == pytest.approx(float(ackley(point["x"])))
    sums = task.metrics(forward, point, batch)
    assert float(sums["loss"] / sums["count"]) == pytest.approx(float(loss), rel=1e-6)
    assert float(sums["correct"]) == 4.0  # ‖x‖∞ = 0.2 < 0.25
    far = task.metrics(forward, {"x": torch.tensor([0.3, 0.0])}, batch)
    assert float(far["correct"]) == 0.0
    with pytest.raises(ValueError, match="function"):
        Objective("sphere")


def test_grand_canyon_refuses_other_dimensions():
    with pytest.raises(ValueError, match="dim=2"):
        Simulation(placeholder_data(3), "vector", "cbo", "complete", model_kwargs=dict(dim=3),
                   task="grand_canyon3_noisy")


def test_the_vector_model_draws_one_point_per_node():
    model = build_model("vector", (64,), 10, dim=3, mean=[8.0, 8.0, 0.0], std=0.0)
    assert model(torch.zeros(2, 64)).tolist() == [[8.0, 8.0, 0.0]] * 2
    sim = cbo_sim(n=400, dim=2)
    x = sim.params
    assert len({tuple(r.tolist()) for r in x}) == 400  # one draw per particle
    assert x.mean().abs() < 0.15 and (x.std() - 1.0).abs() < 0.1
    with pytest.raises(ValueError, match="mean"):
        build_model("vector", (64,), 10, dim=3, mean=[1.0, 2.0])
    with pytest.raises(ValueError, match="std"):
        build_model("vector", (64,), 10, dim=3, std=-1.0)
    with pytest.raises(ValueError, match="dim"):
        build_model("vector", (64,), 10, dim=0)


def test_independent_swarms_as_components_of_one_graph():
    """The experiment's runs: a graph of two disjoint triangles is two 3-particle CBOs."""
    spec = importlib.util.spec_from_file_location("cbo_run", ROOT / "experiments/cbo/run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    topology = run.swarms_of("complete", 2, 3)
    sim = Simulation(placeholder_data(6), "vector", "cbo", topology,
                     model_kwargs=dict(dim=2), task="rastrigin", same_init=False,
                     algorithm_kwargs=dict(alpha=1.0, sigma=0.0, dt=0.1, batch_size=1),
                     evaluation=Evaluation(every=0))
    x = sim.params.clone()
    sim.run(rounds=1)
    for block in (slice(0, 3), slice(3, 6)):
        v = consensus_point(x[block], rastrigin(x[block]), torch.ones(3), 1.0)
        assert torch.allclose(sim.params[block], x[block] - 0.1 * (x[block] - v), atol=1e-5)
    groups = run.RandomGroups(20, seed=0, group=5, swarm=10).mixing_at(3).dense()
    assert (groups[:10, 10:] == 0).all() and ((groups > 0).sum(1) == 5).all()


# ---------------------------------------------------------------------------------------------
# the experiment


def test_the_experiment_quick_mode_runs(tmp_path):
    spec = importlib.util.spec_from_file_location("cbo_run", ROOT / "experiments/cbo/run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    assert run.main(["--quick", "--out", str(tmp_path)]) == 0
    import json

    results = json.loads((tmp_path / "results.json").read_text())
    assert {"canyon", "benchmarks", "digits", "verdicts"} <= set(results)
    assert results["canyon"]["gd_lr0.01"]["success_rate"] == 0.0
    assert (tmp_path / "cbo.png").stat().st_size > 0


def test_the_experiment_config_is_valid():
    from murmura.config import Experiment

    experiment = Experiment.from_toml(ROOT / "experiments/cbo/configs/grand_canyon.toml")
    assert experiment.algorithm.name == "cbo" and experiment.task.name == "grand_canyon3_noisy"
