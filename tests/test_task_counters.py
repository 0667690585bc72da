"""Local training keyed by each node's own task number (the virtual clock's nodes run tasks at
their own pace) instead of one round for all."""

from __future__ import annotations

import pytest
import torch

from murmura.data import federate
from murmura.swarm import Simulation


def sims(**kwargs):
    data = federate("digits", num_nodes=6, partition="dirichlet", alpha=0.5, seed=0)
    return [Simulation(data, "logreg", "local_sgd", seed=0, **kwargs) for _ in range(2)]


@pytest.mark.parametrize("work", [{"local_steps": 3, "batch_size": 8},
                                  {"local_epochs": 0.5, "batch_size": 8}])
def test_per_node_task_numbers_give_each_node_its_own_rounds_draws(work):
    # node i trained at its task number t_i equals node i trained in round t_i
    counters = torch.tensor([0, 3, 1, 1, 2, 0])
    clocked, rounds = sims(algorithm_kwargs=work)
    nodes = torch.tensor([1, 2, 4])
    start = clocked.params.clone()
    clocked.train(nodes, counters)
    assert torch.equal(clocked.params[[0, 3, 5]], start[[0, 3, 5]])  # the others wait
    for node in nodes.tolist():
        rounds.params.copy_(start)
        rounds.train(torch.tensor([node]), int(counters[node]))
        assert torch.allclose(clocked.params[node], rounds.params[node], atol=1e-6)


def test_ordered_data_refuses_task_numbers():
    data = federate("digits", num_nodes=4, seed=0)
    sim = Simulation(data, "logreg", "curriculum", seed=0)
    with pytest.raises(ValueError, match="does not run on the virtual clock"):
        sim.train(torch.tensor([0]), torch.zeros(4, dtype=torch.int64))
