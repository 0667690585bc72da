"""A single merging suffices: the random_pull gossip, merge budgets placed in time, final
gossip steps, and the mergeability measured along training."""

import numpy as np
import pytest
import torch

from murmura.algorithms import make_algorithm
from murmura.algorithms.rules import MergeBudget
from murmura.data import federate
from murmura.swarm.engine import Simulation
from murmura.topology import make_topology


def test_random_pull_draws_whole_and_fractional_pulls_row_stochastically():
    topo = make_topology("random_pull", 400, seed=1, r=1.25)
    w = topo.mixing_at(3)
    dense = w.dense()
    assert torch.allclose(dense.sum(dim=1), torch.ones(400, dtype=dense.dtype))
    degree = w.in_degree
    assert set(degree.tolist()) <= {1, 2}  # one pull always, a second one with probability 1/4
    assert 0.15 < float((degree == 2).float().mean()) < 0.35
    # uniform weights over oneself and the pulled peers, never oneself twice
    for i in (0, 17, 399):
        row = dense[i]
        nonzero = row[row > 0]
        assert torch.allclose(nonzero, torch.full_like(nonzero, 1 / (1 + degree[i])))
        assert row[i] > 0
    assert torch.equal(dense, topo.mixing_at(3).dense())  # a function of (seed, round)
    assert not torch.equal(dense, topo.mixing_at(4).dense())


def test_random_pull_edges_r_zero_and_complete():
    assert make_topology("random_pull", 5, r=0).mixing_at(0).num_messages == 0
    full = make_topology("random_pull", 5, r=4).mixing_at(0).dense()
    assert torch.allclose(full, torch.full((5, 5), 0.2, dtype=full.dtype))
    with pytest.raises(ValueError, match=r"r is the expected number of peers"):
        make_topology("random_pull", 5, r=5)


@pytest.mark.parametrize("placement, expected", [
    ("early", {0, 1}), ("late", {18, 19}), ("window", {10, 11}), ("increasing", {14, 19}),
])
def test_a_merge_budget_spends_the_same_rounds_at_different_times(placement, expected):
    budget = MergeBudget(0.1, placement, start=0.5)
    assert budget.merge_rounds(20) == expected
    actions = [budget.action(t, 20) for t in range(20)]
    assert actions.count("merge") == 2 and actions.count("communicate") == 18


def test_merge_budget_rejects_bad_values():
    with pytest.raises(ValueError, match="placement"):
        MergeBudget(0.1, "middle")
    with pytest.raises(ValueError, match="fraction"):
        make_algorithm("dsgd", merge_fraction=1.5)
    with pytest.raises(ValueError, match="late_fraction"):
        make_algorithm("dsgd", merge_fraction=0.1, late_fraction=0.1)
    with pytest.raises(ValueError, match="final_merge = false"):
        make_algorithm("dsgd_final_merge", final_gossip_steps=2)


def run(**algo):
    data = federate("digits", num_nodes=8, partition="dirichlet", alpha=0.5, seed=0)
    sim = Simulation(data, model="logreg", seed=0, algorithm="dsgd", topology="random_pull",
                     topology_kwargs={"r": 0.5},
                     algorithm_kwargs={"lr": 0.05, "local_steps": 2, "batch_size": 8, **algo})
    sim.run(rounds=10)
    return sim


def test_merges_in_the_budget_cost_an_all_reduce_and_equalize_the_models():
    sim = run(merge_fraction=0.2, merge_placement="late")
    records = sim.history.records
    assert [r["communicated"] for r in records].count("merge") == 2
    last = records[-1]
    assert last["consensus_distance"] == 0.0
    # an exact merge moves every model up and the average down: 2 n models
    assert last["bytes_sent"] + last["bytes_received"] == 2 * 8 * sim.message_bytes


def test_final_gossip_steps_replace_the_exact_merge():
    sim = run(final_gossip_steps=3)
    last = sim.history.records[-1]
    assert last["communicated"] == "communicate" and last["consensus_distance"] > 0
    pulls = sum(make_topology("random_pull", 8, seed=0, r=0.5).mixing_at(t).num_messages
                for t in (9, 10, 11))  # the last round's graph, then two fresh ones
    assert last["bytes_received"] == pulls * sim.message_bytes


def test_mergeability_is_the_average_models_accuracy_measured_along_training():
    sim = run()
    before = sim.params.clone()
    measured = sim.evaluate()
    assert torch.equal(before, sim.params)  # measuring changes nothing
    from murmura.metrics.evaluation import evaluate_model

    data = sim.data.dataset
    acc, _ = evaluate_model(sim.model, sim.spec, before.mean(dim=0), data.test_x, data.test_y,
                            sim.buffers, 4096, sim.task)
    assert np.isclose(measured["test_accuracy"], acc, atol=1e-6)
