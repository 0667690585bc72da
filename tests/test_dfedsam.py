"""DFedSAM / DFedSAM-MGS (Shi et al., ICML 2023): the SAM gradient against hand-computed values,
rho = 0 against SGD, Q gossip steps against W^Q, their bytes, bad parameters, and the
experiment's smoke mode."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from murmura.algorithms import SGD, Algorithm, FullParticipation, Gossip, LocalWork, make_algorithm
from murmura.algorithms.dfedsam import SAM
from murmura.algorithms.rules import Every, NoCommunication
from murmura.data import federate
from murmura.swarm import Evaluation, Simulation
from murmura.topology import make_topology

REPO = Path(__file__).resolve().parents[1]


def quadratic(params, x, y):
    """F = 1/2 sum_k x_k p_k² over both tensors: the gradient is x * p (x: the curvatures)."""
    p = torch.cat([params["w"], params["b"]])
    return 0.5 * (x * p * p).sum()


def test_sam_gradient_is_the_gradient_at_the_ascent_point():
    # p = (1, 1 | 1), curvatures (1, 2 | 3): g = (1, 2 | 3), ||g|| = sqrt(14) over BOTH tensors;
    # rho = 0.1 sqrt(14) makes eps = 0.1 g = (0.1, 0.2 | 0.3), so
    # g~ = curv * (p + eps) = (1.1, 2 * 1.2 | 3 * 1.3).
    params = {"w": torch.tensor([1.0, 1.0]), "b": torch.tensor([1.0])}
    x, y = torch.tensor([1.0, 2.0, 3.0]), torch.zeros(1)
    g = SAM(0.1, rho=0.1 * math.sqrt(14)).gradient(quadratic)(params, x, y)
    torch.testing.assert_close(g["w"], torch.tensor([1.1, 2.4]))
    torch.testing.assert_close(g["b"], torch.tensor([3.9]))


def test_sam_normalizes_per_node_under_vmap():
    # two nodes: node 0 as above, node 1 with p = (0, 2 | 0), curvatures (1, 1 | 1):
    # g = (0, 2 | 0), ||g|| = 2, rho = 1: eps = (0, 1 | 0), g~ = (0, 3 | 0)
    params = {"w": torch.tensor([[1.0, 1.0], [0.0, 2.0]]), "b": torch.tensor([[1.0], [0.0]])}
    x = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
    y = torch.zeros(2, 1)
    rule = SAM(0.1, rho=1.0)
    g = vmap(rule.gradient(quadratic))(params, x, y)
    s = 1 / math.sqrt(14)
    torch.testing.assert_close(
        g["w"], torch.tensor([[1 + s, 2 * (1 + 2 * s)], [0.0, 3.0]]))
    torch.testing.assert_close(g["b"], torch.tensor([[3 * (1 + 3 * s)], [0.0]]))


def test_sam_at_a_stationary_point_takes_no_ascent_and_rho_zero_is_the_plain_gradient():
    params = {"w": torch.zeros(2), "b": torch.zeros(1)}
    x, y = torch.tensor([1.0, 2.0, 3.0]), torch.zeros(1)
    g = SAM(0.1, rho=0.5).gradient(quadratic)(params, x, y)
    assert all(torch.equal(v, torch.zeros_like(v)) for v in g.values())  # no 0/0
    params = {"w": torch.tensor([1.0, -2.0]), "b": torch.tensor([0.5])}
    g0 = SAM(0.1, rho=0.0).gradient(quadratic)(params, x, y)
    torch.testing.assert_close(g0["w"], torch.tensor([1.0, -4.0]), rtol=0, atol=0)
    torch.testing.assert_close(g0["b"], torch.tensor([1.5]), rtol=0, atol=0)


def linear_ce(params, x, y, w=None):
    losses = F.cross_entropy(x @ params["weight"].T + params["bias"], y, reduction="none")
    return losses.mean() if w is None else (losses * w).sum() / w.sum().clamp_min(1.0)


def test_sam_weighted_loss_ignores_padding_samples():
    """The engine's (params, x, y, w) variant: zero-weight samples change neither gradient."""
    gen = torch.Generator().manual_seed(0)
    params = {"weight": torch.randn(3, 4, generator=gen), "bias": torch.randn(3, generator=gen)}
    x, y = torch.randn(5, 4, generator=gen), torch.tensor([0, 1, 2, 1, 0])
    w = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0])
    rule = SAM(0.1, rho=0.3)
    padded = rule.gradient(linear_ce)(params, x, y, w)
    real = rule.gradient(linear_ce)(params, x[:3], y[:3])
    for k in params:
        torch.testing.assert_close(padded[k], real[k])
    # and it really is the SAM gradient: the plain gradient at p + rho g / ||g||
    g = torch.func.grad(linear_ce)(params, x[:3], y[:3])
    norm = torch.sqrt(sum(v.square().sum() for v in g.values()))
    ascent = {k: params[k] + 0.3 * g[k] / norm for k in params}
    expected = torch.func.grad(linear_ce)(ascent, x[:3], y[:3])
    for k in params:
        torch.testing.assert_close(padded[k], expected[k])
        assert not torch.allclose(padded[k], g[k])


def algorithm(rule, communication, steps=2, batch_size=8):
    return Algorithm(name="probe", local_rule=rule,
                     local_work=LocalWork(batch_size=batch_size, steps=steps),
                     communication=communication, schedule=Every(1),
                     participation=FullParticipation())


def simulate(algo, rounds=1, n=6, topology="ring", fused=True, seed=0, partition="iid"):
    data = federate("digits", num_nodes=n, partition=partition, seed=seed,
                    **({"alpha": 0.3} if partition == "dirichlet" else {}))
    sim = Simulation(data, "logreg", algo, topology if algo.needs_topology else None,
                     seed=seed, fused=fused, evaluation=Evaluation(every=0))
    if rounds:
        sim.run(rounds=rounds)
    return sim


def test_one_engine_step_is_the_sam_step_on_each_nodes_own_minibatch():
    lr, rho = 0.5, 0.2
    sim = simulate(algorithm(SAM(lr, rho=rho), NoCommunication(), steps=1), rounds=0)
    start = sim.params.clone()
    sim.run(rounds=1)
    index = sim.sampler.batches(torch.arange(6), 0, 0, 1).index[:, 0]
    model = sim.model
    names = sim.spec.names

    def loss(params, x, y):
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    for i in range(6):
        p = {k: v.clone() for k, v in sim.spec.views(start[i]).items()}
        x = sim.data.dataset.train_x[index[i]].view(len(index[i]), -1)
        y = sim.data.dataset.train_y[index[i]]
        g = torch.func.grad(loss)(p, x, y)
        norm = torch.sqrt(sum(g[k].square().sum() for k in names))
        gt = torch.func.grad(loss)({k: p[k] + rho * g[k] / norm for k in names}, x, y)
        expected = torch.cat([(p[k] - lr * gt[k]).reshape(-1) for k in names])
        torch.testing.assert_close(sim.params[i], expected, rtol=1e-5, atol=1e-6)


def test_rho_zero_is_dfedavg_exactly():
    # the SAM rule with rho = 0 through the engine's vmap path is SGD on the same path ...
    sam = simulate(algorithm(SAM(0.1, rho=0.0), Gossip()), rounds=2, fused=False)
    sgd = simulate(algorithm(SGD(0.1), Gossip()), rounds=2, fused=False)
    assert torch.equal(sam.params, sgd.params)
    # ... and dfedsam(rho=0) is D-SGD / DFedAvg, fused step included, momentum and epochs too
    kw = dict(lr=0.1, momentum=0.5, local_epochs=1.0, batch_size=16)
    a = simulate(make_algorithm("dfedsam", rho=0.0, **kw), rounds=2, partition="dirichlet")
    b = simulate(make_algorithm("dsgd", **kw), rounds=2, partition="dirichlet")
    assert torch.equal(a.params, b.params)
    # while rho > 0 does change the models
    c = simulate(make_algorithm("dfedsam", rho=0.05, **kw), rounds=2, partition="dirichlet")
    assert not torch.allclose(a.params, c.params)
    assert torch.isfinite(c.params).all()  # masked (padded) last batches included


@pytest.mark.parametrize("q", [1, 3])
def test_q_gossip_steps_are_w_to_the_q_and_cost_q_times_the_bytes(q):
    n, kw = 6, dict(lr=0.2, rho=0.05, local_steps=3, batch_size=8)
    alone = simulate(algorithm(SAM(0.2, rho=0.05), NoCommunication(), steps=3), n=n)
    trained = alone.params.clone()  # the same batches: keyed by (seed, node, round, step)
    sim = simulate(make_algorithm("dfedsam", gossip_steps=q, **kw), n=n)
    W = make_topology("ring", n).mixing_at(0).matrix.to_dense()
    torch.testing.assert_close(W[0, :3], torch.tensor([1 / 3, 1 / 3, 0.0]))  # the spec's ring
    expected = torch.linalg.matrix_power(W, q) @ trained
    torch.testing.assert_close(sim.params, expected, rtol=1e-5, atol=1e-6)
    # every node sends its fp32 model to its 2 ring neighbours, Q times per round
    assert sim.bytes_sent.tolist() == [q * 2 * 4 * sim.spec.dim] * n


def test_mgs_shrinks_the_consensus_distance():
    def spread(q):
        algo = make_algorithm("dfedsam", lr=0.1, rho=0.05, gossip_steps=q, local_steps=5,
                              batch_size=8)
        sim = simulate(algo, rounds=3, n=8, partition="dirichlet")
        mean = sim.params.mean(dim=0)
        return float((sim.params - mean).square().sum(dim=1).mean())

    assert spread(4) < 0.5 * spread(1)


@pytest.mark.parametrize("params, words", [
    ({"rho": -0.1}, ["rho", ">= 0"]),
    ({"rho": float("nan")}, ["rho", "finite"]),
    ({"rho": "big"}, ["rho", "number"]),
    ({"gossip_steps": 0}, ["gossip_steps", ">= 1"]),
    ({"gossip_steps": 2.5}, ["gossip_steps", "integer"]),
    ({"gossip_steps": True}, ["gossip_steps", "integer"]),
    ({"lr": -1.0}, ["lr", "positive"]),
    ({"local_steps": 5, "local_epochs": 1.0}, ["local_steps", "local_epochs"]),
])
def test_bad_parameters_are_refused_by_name(params, words):
    with pytest.raises(ValueError) as error:
        make_algorithm("dfedsam", **params)
    assert all(w in str(error.value) for w in words)


def test_sam_rule_refuses_a_negative_rho_and_dfedsam_needs_a_topology():
    with pytest.raises(ValueError, match="rho"):
        SAM(0.1, rho=-1.0)
    data = federate("digits", num_nodes=4, partition="iid", seed=0)
    with pytest.raises(ValueError, match="topology"):
        Simulation(data, "logreg", "dfedsam", None, algorithm_kwargs={"local_steps": 1})


def test_experiment_quick_mode(tmp_path):
    path = REPO / "experiments" / "dfedsam" / "run.py"
    spec = importlib.util.spec_from_file_location("experiment_dfedsam", path)
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    assert run.main(["--quick", "--out", str(tmp_path)]) == 0
    summary = (tmp_path / "summary.json").read_text()
    assert "dfedsam_0.05_mgs4" in summary and "fedavg" in summary
    assert (tmp_path / "accuracy.png").exists()
