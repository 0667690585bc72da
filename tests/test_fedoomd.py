"""FedOOMD: optimistic OMD as the server optimizer, by hand and in a run."""

from __future__ import annotations

import math

import pytest
import torch

from murmura.algorithms.base import RoundContext
from murmura.algorithms.fedoomd import OptimisticServer


def ctx(r: int) -> RoundContext:
    return RoundContext(r, 10, 0, 4, torch.device("cpu"))


def test_two_server_steps_by_hand():
    server = OptimisticServer(diameter=1.0, smoothness=0.25, delta=1.0)
    state = server.init(torch.tensor([1.0, 0.0]))
    # g1 = x1 - mean = [1, 0]; eta1 = min(1, 1/sqrt(1)) = 1: x_hat2 = [0, 0]; the hint is g1
    # and sum |g - M|^2 = 1, so eta2 = min(1, 1/sqrt(2)): x2 = x_hat2 - eta2 g1
    out, state = server.update(state, {"params": torch.tensor([0.0, 0.0])}, ctx(0))
    assert out["params"].tolist() == pytest.approx([-1 / math.sqrt(2), 0.0])
    assert state["x_hat"].tolist() == [0.0, 0.0] and float(state["sq_sum"]) == 1.0
    # g2 = x2 - mean2 with mean2 = [0, 1]: x_hat3 = x_hat2 - eta2 g2, |g2 - g1|^2 joins the sum
    g2 = torch.tensor([-1 / math.sqrt(2), -1.0])
    out, state = server.update(state, {"params": torch.tensor([0.0, 1.0])}, ctx(1))
    eta2 = 1 / math.sqrt(2)
    x_hat3 = -eta2 * g2
    eta3 = min(1.0, 1 / math.sqrt(2 + float(((g2 - torch.tensor([1.0, 0.0])) ** 2).sum())))
    assert state["x_hat"].tolist() == pytest.approx(x_hat3.tolist())
    assert out["params"].tolist() == pytest.approx((x_hat3 - eta3 * g2).tolist())


def test_fedoomd_trains_and_refuses_bad_constants():
    from murmura import Simulation, federate

    data = federate("digits", num_nodes=6, partition="iid", seed=0)
    sim = Simulation(data, "mlp", "fedoomd", algorithm_kwargs={"lr": 0.1, "local_steps": 5,
                     "server_diameter": 0.5}, model_kwargs={"hidden": [16]}, seed=0)
    history = sim.run(8)
    # learning (chance is 0.1; FedAvg with the same clients reaches 0.41 here) under the
    # server's own steps (its running sum of hint misses has grown)
    assert history.final["test_accuracy"] > 0.3
    assert float(sim.server_state["sq_sum"]) > 0
    with pytest.raises(ValueError, match="diameter must be > 0"):
        Simulation(data, "mlp", "fedoomd", algorithm_kwargs={"server_diameter": 0.0})
