"""FedAMD (Wu et al., ICML 2023) against hand computations: the miner's recursion and the
anchors' bullseyes on a one-dimensional quadratic, the server's table against a literal replay
of the spec's pseudo-code (the table of every client's bullseye, not its running mean), the
roles, the bytes, bad parameters, and the experiment's quick mode."""

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from murmura.algorithms import make_algorithm
from murmura.algorithms.base import RoundContext
from murmura.algorithms.fedamd import Roles
from murmura.data import Dataset, FederatedData
from murmura.swarm import Evaluation, Simulation
from murmura.tasks import Classification

REPO = Path(__file__).resolve().parents[1]
X0 = 1.0


@dataclass(frozen=True)
class Quadratic(Classification):
    """Sample ``(a, c)``: ``f(y) = a/2 (y - c)²``, so a minibatch's gradient is
    ``mean_b a_b (y - c_b)``. The model is the point ``y`` (one number)."""

    def loss(self, forward, params, batch):
        y = forward(params, batch["x"])[:, 0]
        a, c = batch["x"][:, 0], batch["x"][:, 1]
        return (0.5 * a * (y - c) ** 2).mean(), {}


SAMPLES = torch.tensor([[1.0, 2.0], [3.0, -1.0], [2.0, 0.5], [0.5, 4.0],
                        [1.5, 1.0], [2.5, -2.0], [1.0, 3.0], [4.0, 0.0]])


def quadratic_sim(n: int, **kwargs) -> Simulation:
    """``n`` clients holding 8 / n of the samples each (node i: samples i, i + n, ...)."""
    data = Dataset("quadratic", SAMPLES, torch.zeros(8, dtype=torch.int64), SAMPLES[:2],
                   torch.zeros(2, dtype=torch.int64), num_classes=1)
    parts = [np.arange(i, 8, n) for i in range(n)]
    params = dict(lr=0.1, server_lr=1.0, local_steps=2, batch_size=1) | kwargs
    return Simulation(FederatedData.from_parts(data, parts), "vector", "fedamd", seed=3,
                      model_kwargs={"dim": 1, "mean": X0, "std": 0.0}, task=Quadratic(),
                      algorithm_kwargs=params, evaluation=Evaluation(every=0))


def batch_grad(sim: Simulation, node: int, round: int, step: int, y: float) -> float:
    """∇f_node(y; B) on the minibatch the engine reads at (round, step)."""
    index = sim.sampler.batches(torch.tensor([node]), round, 0, step + 1).index[0, step]
    a, c = SAMPLES[index, 0], SAMPLES[index, 1]
    return float((a * (y - c)).mean())


def test_the_miner_recursion_and_the_anchors_bullseyes_by_hand():
    # sequential P = 2: round 0 fills the table, round 1 (t = 0) all anchors, round 2 miners
    sim = quadratic_sim(2, p=2)
    for _ in range(2):
        sim.step(3)
        assert torch.all(sim.params == X0) and float(sim.server_state["params"]) == X0
    # each anchor's bullseye: the mean of its 2 minibatch gradients at x0, from round 1
    G = [0.5 * (batch_grad(sim, i, 1, 0, X0) + batch_grad(sim, i, 1, 1, X0)) for i in range(2)]
    g = 0.5 * (G[0] + G[1])
    assert float(sim.server_state["g"]) == pytest.approx(g, abs=1e-6)
    assert torch.allclose(sim.node_state["g"], torch.tensor(g))  # what the miners will read
    sim.step(3)
    deltas = []
    for i in range(2):
        lr = 0.1
        y0 = X0
        v = g + batch_grad(sim, i, 2, 0, y0) - batch_grad(sim, i, 2, 0, y0)  # = g
        y1 = y0 - lr * v
        v = v - batch_grad(sim, i, 2, 1, y0) + batch_grad(sim, i, 2, 1, y1)
        y2 = y1 - lr * v
        assert float(sim.node_state["v"][i]) == pytest.approx(v, abs=1e-6)
        assert float(sim.node_state["prev"][i]) == pytest.approx(y1, abs=1e-6)
        deltas.append(X0 - y2)
    x = X0 - 1.0 * (deltas[0] + deltas[1]) / 2
    assert float(sim.server_state["params"]) == pytest.approx(x, abs=1e-6)
    assert torch.allclose(sim.params, torch.tensor(x))
    assert float(sim.server_state["g"]) == pytest.approx(g, abs=1e-6)  # miners leave g alone


def test_the_table_mean_replays_the_specs_pseudo_code():
    """Partial participation, random roles: a literal table G[n], replayed round by round."""
    n, lr, eta = 4, 0.1, 0.7
    sim = quadratic_sim(n, p=0.5, clients_per_round=2, lr=lr, server_lr=eta)
    roles, table, x = Roles(0.5), [0.0] * n, X0
    kinds = set()
    for t in range(8):
        ctx = RoundContext(t, 8, sim.seed, n, torch.device("cpu"))
        chosen = sim.algorithm.participation.select(ctx)
        ids = torch.arange(n) if chosen is None else chosen
        miner = roles.miners(sim.seed, ids, t)
        g = sum(table) / n  # before this round's anchors refresh it
        deltas = []
        for i, is_miner in zip(ids.tolist(), miner.tolist()):
            if not is_miner:
                table[i] = 0.5 * (batch_grad(sim, i, t, 0, x) + batch_grad(sim, i, t, 1, x))
                continue
            y_prev, y, v = x, x, g
            for k in range(2):
                v = v - batch_grad(sim, i, t, k, y_prev) + batch_grad(sim, i, t, k, y)
                y_prev, y = y, y - lr * v
            deltas.append(x - y)
        if deltas:
            x = x - eta * sum(deltas) / len(deltas)
        kinds.add((int(miner.sum()), len(ids)))
        sim.step(8)
        assert float(sim.server_state["params"]) == pytest.approx(x, abs=1e-5), t
        assert float(sim.server_state["g"]) == pytest.approx(sum(table) / n, abs=1e-5), t
    assert {m for m, _ in kinds} >= {0, 1, 2}  # rounds of anchors only, mixed, miners only


def test_roles_are_deterministic_per_seed_client_and_round_with_frequency_p():
    roles = Roles(0.3)
    clients = torch.arange(2000)
    first = torch.stack([roles.miners(5, clients, t) for t in range(1, 11)])
    assert torch.equal(first, torch.stack([roles.miners(5, clients, t) for t in range(1, 11)]))
    # a client's role does not depend on who else is asked
    assert torch.equal(roles.miners(5, clients[7::13], 4), first[3, 7::13])
    assert not torch.equal(first, torch.stack([roles.miners(6, clients, t)
                                               for t in range(1, 11)]))
    assert abs(1 - float(first.float().mean()) - 0.3) < 0.01  # anchors: 30% of 20,000 draws
    assert not roles.miners(5, clients, 0).any()  # round 0 fills the table: all anchors


def test_the_sequential_mode_anchors_every_pth_round():
    roles = Roles(3)
    anchors = [not bool(roles.miners(0, torch.arange(5), t).any()) for t in range(9)]
    assert anchors == [True, True, False, False, True, False, False, True, False]
    for t in range(9):  # everyone shares the round's role
        assert roles.miners(0, torch.arange(5), t).unique().numel() == 1


def test_the_simulation_gives_each_client_the_servers_roles():
    sim = quadratic_sim(4, p=0.5, clients_per_round=2)
    for t in range(4):
        sim.step(4)
        expected = Roles(0.5).miners(sim.seed, torch.arange(4), t + 1).float()
        assert torch.equal(sim.node_state["miner"][:, 0], expected)


def test_a_round_of_anchors_only_leaves_x_unchanged():
    sim = quadratic_sim(4, p=3, clients_per_round=2, local_steps=3)  # a sample counts twice
    sim.step(3)  # round 0: everyone an anchor
    g0 = sim.server_state["g"].clone()
    sim.step(3)  # round 1 (t = 0): anchors
    assert float(sim.server_state["params"]) == X0 and torch.all(sim.params == X0)
    assert not torch.equal(sim.server_state["g"], g0)  # but the table moved
    sim.step(3)  # round 2: miners
    assert float(sim.server_state["params"]) != X0


def test_bytes_are_one_vector_up_and_x_plus_g_for_miners_down():
    sim = quadratic_sim(4, p=0.5, clients_per_round=2)
    d = sim.spec.dim
    up, down = torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    for t in range(6):
        chosen = sim.algorithm.participation.select(RoundContext(t, 6, sim.seed, 4,
                                                                 torch.device("cpu")))
        ids = torch.arange(4) if chosen is None else chosen
        miner = Roles(0.5).miners(sim.seed, ids, t)
        up[ids] += 4 * d
        down[ids] += torch.where(miner, 8 * d + 4, 4 * d + 4).to(torch.float64)
        record = sim.step(6)
    assert torch.equal(sim.bytes_sent, up)
    assert torch.equal(sim.bytes_received, down)
    assert sim.server_bytes_sent == float(down.sum())
    assert record["bytes_sent_total"] == float(up.sum())


@pytest.mark.parametrize("bad", [
    {"p": 0}, {"p": -0.2}, {"p": 1}, {"p": 2.5}, {"p": True}, {"p": float("nan")},
    {"lr": 0}, {"server_lr": -1.0}, {"local_steps": 0}, {"local_steps": 2.5},
    {"batch_size": 0},
])
def test_bad_parameters_are_refused_by_name(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        make_algorithm("fedamd", **bad)


def test_the_experiments_quick_mode_runs_every_arm(tmp_path):
    spec = importlib.util.spec_from_file_location("fedamd_run",
                                                  REPO / "experiments" / "fedamd" / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    assert run.main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "quick.json").read_text())
    assert {row["arm"] for row in result["table"]} == set(run.ARMS)
    assert (tmp_path / "fedamd_quick.png").exists()
