"""Federated baselines on the v2 contract: server rules computed by hand (FedAvgM and the FedOpt
family, as Flower computes them), FedProx's proximal step against autograd, SCAFFOLD's control
variates and bytes, exact resumption, a robust rule at the server."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from murmura.algorithms import RoundContext, make_algorithm
from murmura.algorithms.federated import (
    AdaptiveServer,
    ProxSGD,
    ScaffoldControl,
    ScaffoldServer,
    ScaffoldSGD,
    SendModelAndControl,
    ServerMomentum,
)
from murmura.data import federate
from murmura.swarm import Evaluation, Simulation

NO_EVAL = Evaluation(every=0)


def ctx(uploaders: int = 4, num_nodes: int = 8) -> RoundContext:
    return RoundContext(0, 3, 0, num_nodes, torch.device("cpu"), uploaders=uploaders)


def digits(nodes: int = 8, seed: int = 0):
    return federate("digits", num_nodes=nodes, partition="dirichlet", alpha=0.5, seed=seed)


X0 = [1.0, -2.0, 0.5]
MEANS = [[0.8, -1.5, 0.5], [0.7, -1.9, 0.6], [0.71, -1.6, 0.55]]


def run_server(rule, means=MEANS, x0=X0) -> list[torch.Tensor]:
    """The server models after each update, and checks that the broadcast is the model."""
    state = rule.init(torch.tensor(x0, dtype=torch.float32))
    models = []
    for mean in means:
        broadcast, state = rule.update(state, {"params": torch.tensor(mean)}, ctx())
        assert torch.equal(broadcast["params"], state["params"])
        models.append(state["params"])
    return models


# ---------------------------------------------------------------------------------------------
# server rules by hand


def test_fedavgm_by_hand():
    # g = x - mean; m <- 0.9 m + g; x <- x - 0.5 m
    # 1: g = [.2, -.5, 0], m = g, x = [.9, -1.75, .5]
    # 2: g = [.2, .15, -.1], m = [.38, -.3, -.1], x = [.71, -1.6, .55]
    # 3: g = 0, m = [.342, -.27, -.09], x = [.539, -1.465, .595]
    models = run_server(ServerMomentum(server_lr=0.5, server_momentum=0.9))
    expected = [[0.9, -1.75, 0.5], [0.71, -1.6, 0.55], [0.539, -1.465, 0.595]]
    for got, want in zip(models, expected):
        np.testing.assert_allclose(got.numpy(), want, atol=1e-6)


def flower_fedopt(kind, means, lr, b1, b2, tau, x0=X0) -> list[np.ndarray]:
    """Flower's FedAdam / FedYogi / FedAdagrad ``aggregate_fit``, in float64, at
    ``server_round`` t = 1, 2, ...: FedAdam's ``eta_norm = eta sqrt(1 - b2^(t+1)) / (1 -
    b1^(t+1))``; FedYogi's and FedAdagrad's step is ``eta``."""
    x, m, v = np.array(x0, dtype=np.float64), 0.0, 0.0
    out = []
    for t, mean in enumerate(means, start=1):
        delta = np.array(mean, dtype=np.float64) - x
        m = b1 * m + (1 - b1) * delta
        if kind == "adam":
            v = b2 * v + (1 - b2) * delta**2
            eta = lr * math.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1))
        elif kind == "yogi":
            v = v - (1 - b2) * delta**2 * np.sign(v - delta**2)
            eta = lr
        else:
            v = v + delta**2
            eta = lr
        x = x + eta * m / (np.sqrt(v) + tau)
        out.append(x.copy())
    return out


# Flower's defaults: FedAdagrad fixes beta_1 = 0 (no momentum)
FLOWER = {"adam": (0.1, 0.9, 0.99, 1e-9), "yogi": (0.01, 0.9, 0.99, 1e-3),
          "adagrad": (0.1, 0.0, 0.99, 1e-9)}


@pytest.mark.parametrize("kind", sorted(FLOWER))
@pytest.mark.parametrize("beta1", [None, 0.5])
def test_fedopt_server_by_hand(kind, beta1):
    lr, b1, b2, tau = FLOWER[kind]
    b1 = b1 if beta1 is None else beta1
    models = run_server(AdaptiveServer(kind, lr, b1, b2, tau))
    for got, want in zip(models, flower_fedopt(kind, MEANS, lr, b1, b2, tau)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", sorted(FLOWER))
def test_named_fedopt_algorithms_take_flowers_defaults(kind):
    server = make_algorithm(f"fed{kind}").server
    assert (server.kind, server.server_lr, server.beta1, server.beta2, server.tau) == (
        kind, *FLOWER[kind])


def test_fedadam_first_update_is_bias_corrected():
    """At t = 1: m = 0.1 delta, v = 0.01 delta^2, so x moves by lr_1 sign(delta) with
    lr_1 = 0.1 sqrt(1 - 0.99^2) / (1 - 0.9^2) = 0.0742460 (Flower's exponent is t + 1)."""
    (x1,) = run_server(AdaptiveServer("adam", 0.1, 0.9, 0.99, 1e-9), means=[MEANS[0]])
    step = 0.1 * math.sqrt(1 - 0.99**2) / (1 - 0.9**2)
    assert step == pytest.approx(0.0742460, abs=1e-7)
    np.testing.assert_allclose(x1.numpy(), [1.0 - step, -2.0 + step, 0.5], atol=1e-6)
    (plain,) = run_server(AdaptiveServer("adam", 0.1, 0.9, 0.99, 1e-9, bias_correction=False),
                          means=[MEANS[0]])
    np.testing.assert_allclose(plain.numpy(), [0.9, -1.9, 0.5], atol=1e-6)  # Reddi et al.


def test_adaptive_server_counts_its_updates():
    rule = AdaptiveServer("adam")
    state = rule.init(torch.zeros(3))
    for t in range(3):
        assert float(state["updates"]) == t
        _, state = rule.update(state, {"params": torch.ones(3)}, ctx())


@pytest.mark.parametrize("name,rule", [
    ("fedavgm", lambda: ServerMomentum(1.0, 0.9)),
    ("fedadam", lambda: AdaptiveServer("adam", *FLOWER["adam"])),
    ("fedyogi", lambda: AdaptiveServer("yogi", *FLOWER["yogi"])),
    ("fedadagrad", lambda: AdaptiveServer("adagrad", *FLOWER["adagrad"])),
])
def test_simulated_server_applies_its_rule_to_fedavgs_aggregate(name, rule):
    """The engine's server step: the rule's update on the sample-weighted mean of the uploaded
    models, round after round (a FedAvg simulation computes each round's mean from the current
    server model)."""
    data = digits()
    kwargs = dict(lr=0.1, local_steps=2, clients_per_round=5)
    sim = Simulation(data, "logreg", name, algorithm_kwargs=kwargs, evaluation=NO_EVAL)
    reference = Simulation(data, "logreg", "fedavg", algorithm_kwargs=kwargs,
                           evaluation=NO_EVAL)
    server = rule()
    state = server.init(sim.params[0].clone())
    for round_index in range(3):
        with torch.no_grad():
            reference.params.copy_(state["params"].expand_as(reference.params))
        reference.round = round_index
        reference.step(3)
        _, state = server.update(state, {"params": reference.params[0].clone()}, ctx(5))
        sim.step(3)
        torch.testing.assert_close(sim.server_state["params"], state["params"], atol=2e-6,
                                   rtol=1e-5)
        torch.testing.assert_close(sim.params[0], state["params"], atol=2e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# FedProx


def test_prox_step_is_autograd_of_the_proximal_objective():
    torch.manual_seed(0)
    w = torch.randn(3, 4)
    anchor = torch.randn(3, 4)
    x, y = torch.randn(5, 4), torch.tensor([0, 2, 1, 1, 0])
    mu, lr = 0.7, 0.3
    leaf = w.clone().requires_grad_(True)
    objective = (F.cross_entropy(x @ leaf.T, y)
                 + mu / 2 * (leaf - anchor).square().sum())
    (total,) = torch.autograd.grad(objective, leaf)
    data_leaf = w.clone().requires_grad_(True)
    (data_grad,) = torch.autograd.grad(F.cross_entropy(x @ data_leaf.T, y), data_leaf)
    param = w.clone()
    ProxSGD(lr, mu=mu).update(param, data_grad.clone(), {"anchor": anchor}, None)
    torch.testing.assert_close(param, w - lr * total, atol=1e-6, rtol=1e-6)


def by_hand(sim, start: torch.Tensor, node: int, round_index: int, steps: int, lr: float,
            extra=None) -> torch.Tensor:
    """One node's local steps in plain autograd on its sampler's minibatches: ``extra(row)``
    adds a term to the loss."""
    data = sim.data.dataset
    row = start.clone()
    for step in range(steps):
        index = sim.sampler.batch(torch.tensor([node]), round_index, step).index[0]
        leaf = row.clone().requires_grad_(True)
        out = functional_call(sim.model, (sim.spec.views(leaf), sim.buffers),
                              (data.train_x[index],))
        loss = F.cross_entropy(out, data.train_y[index])
        if extra is not None:
            loss = loss + extra(leaf)
        (g,) = torch.autograd.grad(loss, leaf)
        row = (row - lr * g).detach()
    return row


def test_fedprox_rounds_equal_the_proximal_objective_by_hand():
    data = digits(nodes=5)
    mu, lr, steps = 0.5, 0.1, 3
    sim = Simulation(data, "logreg", "fedprox", evaluation=NO_EVAL,
                     algorithm_kwargs=dict(mu=mu, lr=lr, local_steps=steps))
    weights = data.sizes.to(torch.float64) / data.sizes.sum()
    x = sim.params[0].clone()
    for round_index in range(2):
        anchor = x.clone()  # the model the round started from
        rows = torch.stack([
            by_hand(sim, x, node, round_index, steps, lr,
                    lambda leaf, a=anchor: mu / 2 * (leaf - a).square().sum())
            for node in range(5)])
        x = (weights.to(torch.float32) @ rows)
        sim.step(2)
        torch.testing.assert_close(sim.params[0], x, atol=1e-5, rtol=1e-5)
    # the proximal term mattered: plain local SGD from the same start lands elsewhere
    plain = by_hand(sim, anchor, 0, 1, steps, lr)
    assert not torch.allclose(plain, rows[0], atol=1e-4)


# ---------------------------------------------------------------------------------------------
# SCAFFOLD


def test_scaffold_client_step_and_control_update_by_hand():
    param = torch.tensor([1.0, 2.0])
    grad = torch.tensor([0.5, -1.0])
    state = {"control": torch.tensor([0.5, -0.5]), "server_control": torch.tensor([0.1, 0.2]),
             "anchor": torch.tensor([2.0, 0.0]), "control_delta": torch.zeros(2)}
    ScaffoldSGD(lr=0.5).update(param, grad, state, None)
    # y <- y - lr (g - c_i + c) = [1, 2] - 0.5 [0.5 - 0.5 + 0.1, -1 + 0.5 + 0.2]
    torch.testing.assert_close(param, torch.tensor([0.95, 2.15]))

    y = torch.tensor([1.0, 2.0])
    out = ScaffoldControl(lr=0.5)(y, state, torch.tensor(3), torch.tensor(4))
    # c_i+ = c_i - c + (x - y) / (K lr) = [0.5 - 0.1 + 1 / 2, -0.5 - 0.2 - 2 / 2]
    torch.testing.assert_close(out["control"], torch.tensor([0.9, -1.7]))
    torch.testing.assert_close(out["control_delta"], torch.tensor([0.4, -1.2]))
    # a node that took no step divides by one step, not zero
    zero = ScaffoldControl(lr=0.5)(y, state, torch.tensor(3), torch.tensor(0))
    assert torch.isfinite(zero["control"]).all()


def test_scaffold_server_by_hand():
    server = ScaffoldServer(server_lr=0.5)
    state = server.init(torch.tensor([1.0, 1.0]))
    assert torch.equal(state["control"], torch.zeros(2))
    aggregate = {"params": torch.tensor([2.0, 0.0]), "control_delta": torch.tensor([0.5, 1.0])}
    broadcast, state = server.update(state, aggregate, ctx(uploaders=2, num_nodes=8))
    # x + 0.5 (mean - x); c + |S| / N mean(delta c)
    torch.testing.assert_close(state["params"], torch.tensor([1.5, 0.5]))
    torch.testing.assert_close(state["control"], torch.tensor([0.125, 0.25]))
    assert set(broadcast) == {"params", "server_control"}
    torch.testing.assert_close(broadcast["server_control"], state["control"])
    payload, updates = SendModelAndControl().encode(
        torch.ones(3), {"control_delta": torch.full((3,), 2.0)}, torch.tensor(0))
    assert set(payload) == {"params", "control_delta"} and updates == {}
    assert SendModelAndControl().nbytes(10) == 80


@pytest.mark.parametrize("clients", [None, 5])
def test_scaffold_first_round_is_fedavg_with_uniform_weights(clients):
    data = digits()
    kwargs = dict(lr=0.1, local_steps=3, clients_per_round=clients)
    scaffold = Simulation(data, "logreg", "scaffold", algorithm_kwargs=kwargs,
                          evaluation=NO_EVAL)
    fedavg = Simulation(data, "logreg", "fedavg", evaluation=NO_EVAL,
                        algorithm_kwargs=dict(kwargs, weighting="uniform"))
    scaffold.step(2)
    fedavg.step(2)
    torch.testing.assert_close(scaffold.params, fedavg.params, atol=1e-6, rtol=1e-5)
    # the control variates are now non-zero and change the second round
    assert float(scaffold.server_state["control"].abs().max()) > 0
    torch.testing.assert_close(scaffold.node_state["server_control"][0],
                               scaffold.server_state["control"])
    scaffold.step(2)
    fedavg.step(2)
    assert not torch.allclose(scaffold.params, fedavg.params, atol=1e-4)


def test_scaffold_moves_two_vectors_each_way_per_client_and_round():
    data = digits()
    sim = Simulation(data, "logreg", "scaffold", evaluation=NO_EVAL,
                     algorithm_kwargs=dict(lr=0.1, local_steps=1, clients_per_round=3))
    d = sim.spec.dim
    rounds = torch.zeros(8, dtype=torch.float64)
    for _round_index in range(3):
        chosen = sim.algorithm.participation.select(sim.context(3))
        rounds[chosen] += 1
        record = sim.step(3)
        assert record["bytes_sent"] == 3 * 8 * d
        assert record["bytes_received"] == 3 * 8 * d
    assert torch.equal(sim.bytes_sent, rounds * 8 * d)
    assert torch.equal(sim.bytes_received, rounds * 8 * d)
    assert sim.server_bytes_sent == 3 * 3 * 8 * d


# ---------------------------------------------------------------------------------------------
# resuming


@pytest.mark.parametrize("name,kwargs", [
    ("fedadam", dict(clients_per_round=4)),
    ("fedyogi", dict()),
    ("scaffold", dict(clients_per_round=4)),
    ("fedavg", dict(aggregator="median")),
])
def test_a_resumed_run_equals_a_straight_one(name, kwargs):
    data = digits()
    evaluation = Evaluation(every=1, node_samples=50)

    def build():
        return Simulation(data, "logreg", name, evaluation=evaluation,
                          algorithm_kwargs=dict(lr=0.1, local_steps=2, **kwargs))

    straight = build()
    straight.run(4)
    first = build()
    first.total_rounds = 4
    for _ in range(2):
        first.step(4)
    tensors, values = first.state_dict()
    tensors = {k: v.clone() for k, v in tensors.items()}
    del first
    resumed = build()
    resumed.load_state_dict(tensors, values)
    resumed.run(4)
    assert torch.equal(resumed.params, straight.params)
    assert set(resumed.server_state) == set(straight.server_state)
    for key, value in straight.server_state.items():
        assert torch.equal(resumed.server_state[key], value), key
    for key, value in straight.node_state.items():
        assert torch.equal(resumed.node_state[key], value), key
    for a, b in zip(straight.history.records, resumed.history.records):
        for key in ("test_accuracy", "test_loss", "node_accuracy_mean", "bytes_sent_total"):
            assert a[key] == b[key], (a["round"], key)


CONFIG = """
seed = 2
rounds = 4
[data]
dataset = "digits"
nodes = 8
partition = { name = "dirichlet", alpha = 0.5 }
[model]
name = "logreg"
[algorithm]
name = "fedadam"
lr = 0.1
local_steps = 2
clients_per_round = 4
[evaluation]
every = 1
node_samples = 50
[output]
checkpoint_every = 2
plots = false
report = false
"""


def test_fedadam_resumed_from_its_checkpoint_file_equals_a_straight_run(tmp_path):
    from murmura.config import Experiment
    from murmura.runner import RunDirectory, run_experiment

    experiment = Experiment.from_toml_text(CONFIG)
    straight = run_experiment(experiment, tmp_path / "straight", progress=False)
    run_experiment(experiment, tmp_path / "cut", progress=False)
    run = RunDirectory(tmp_path / "cut")
    for rounds, path in run.checkpoints():
        if rounds > 2:
            path.unlink()  # as if the run had died after round 2
    resumed = run_experiment(run.experiment(), run.path, resume=True, progress=False)
    for key in ("test_accuracy", "test_loss", "node_accuracy_mean"):
        assert resumed.final[key] == straight.final[key], key
    tensors, _ = run.load_checkpoint(run.checkpoints()[-1][1])
    reference, _ = RunDirectory(tmp_path / "straight").load_checkpoint(
        RunDirectory(tmp_path / "straight").checkpoints()[-1][1])
    assert set(tensors) == set(reference)
    for key, value in reference.items():
        assert torch.equal(tensors[key], value), key


# ---------------------------------------------------------------------------------------------
# a robust rule at the server


def test_fedavg_with_a_median_at_the_server_takes_the_median_of_the_uploads():
    data = digits()
    kwargs = dict(lr=0.1, local_steps=2)
    robust = Simulation(data, "logreg", "fedavg", evaluation=Evaluation(every=1, node_samples=50),
                        algorithm_kwargs=dict(kwargs, aggregator="median"))
    plain = Simulation(data, "logreg", "fedavg", algorithm_kwargs=kwargs, evaluation=NO_EVAL)
    plain.train(None, 0)
    expected = np.median(plain.params.numpy(), axis=0)  # 8 uploads: mean of the middle two
    robust.step(2)
    np.testing.assert_allclose(robust.params.numpy(), np.broadcast_to(expected, (8, len(expected))),
                               atol=1e-6, rtol=1e-6)
    assert not np.allclose(expected, plain.params.numpy().mean(0), atol=1e-4)
    robust.run(2)
    assert math.isfinite(robust.history.final["test_accuracy"])
    assert make_algorithm("fedavg", aggregator="median").communication.aggregator is not None
