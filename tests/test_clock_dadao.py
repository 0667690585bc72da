"""DADAO and gossip-DGD on the two Poisson processes (murmura.clock.dadao) and the convex
problem they run on (murmura.tasks.convex)."""

from __future__ import annotations

import math

import networkx as nx
import pytest
import torch

from murmura.clock.dadao import DADAO, ClockedDecoupled, GossipDGD, GraphConstants
from murmura.data import federate
from murmura.tasks.convex import LogisticProblem


@pytest.fixture(scope="module")
def problem() -> LogisticProblem:
    return LogisticProblem.from_federated(
        federate("digits", num_nodes=6, partition="dirichlet", alpha=0.5, seed=0), mu=0.2)


def test_optimum_matches_sklearn_and_gradient_matches_autograd(problem):
    from sklearn.linear_model import LogisticRegression

    x_star = problem.optimum()
    a = torch.cat([problem.a[i, : int(m)] for i, m in enumerate(problem.sizes)]).numpy()
    y = torch.cat([problem.y[i, : int(m)] for i, m in enumerate(problem.sizes)]).numpy()
    weights = torch.cat([torch.full((int(m),), 1.0 / float(m)) for m in problem.sizes]).numpy()
    n = problem.num_nodes
    # sklearn: C Σ w_s loss_s + ½‖x‖² with C = 1 / (μ n) is F / (μ n)
    reference = LogisticRegression(C=1.0 / (problem.mu * n), fit_intercept=False, tol=1e-12,
                                   max_iter=10000).fit(a, y, sample_weight=weights)
    assert torch.allclose(x_star, torch.tensor(reference.coef_[0]), atol=1e-5)
    x = torch.randn(n, problem.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    analytic = problem.gradient(torch.arange(n), x)
    for i in range(n):
        xi = x[i].clone().requires_grad_(True)
        margin = problem.y[i] * (problem.a[i] @ xi)
        f = ((torch.nn.functional.softplus(-margin) * (problem.y[i] != 0)).sum() / problem.sizes[i]
             + problem.mu / 2 * xi @ xi)
        (auto,) = torch.autograd.grad(f, xi)
        assert torch.allclose(analytic[i], auto, atol=1e-12)
    assert float(problem.loss(x_star)) < float(problem.loss(x_star + 0.01))


def test_problem_rejects_bad_input():
    a, y = [torch.ones(2, 3)], [torch.tensor([1.0, -1.0])]
    with pytest.raises(ValueError, match="mu"):
        LogisticProblem(a, y, mu=0)
    with pytest.raises(ValueError, match="-1 or \\+1"):
        LogisticProblem(a, [torch.tensor([1.0, 0.0])], mu=1.0)
    with pytest.raises(ValueError, match="one tensor per node"):
        LogisticProblem(a, y + y, mu=1.0)


@pytest.mark.parametrize("mu", [0.01, 0.1, 1.0])
def test_propagator_is_the_matrix_exponential(mu):
    rule = DADAO(mu, 4.0, 2.5)
    dt = torch.tensor([0.0, 0.3, 4.0, 60.0], dtype=torch.float64)
    exact = torch.linalg.matrix_exp(rule.ode_matrix() * dt[:, None, None])
    assert torch.allclose(rule.propagator(dt), exact, atol=1e-11, rtol=1e-10)


def test_graph_constants_of_complete_and_ring_graphs():
    # K_n: λ₂(Lap) = n, edge resistance 2/n, and L_norm = Lap / |E|: both are (n - 1) / 2
    k = GraphConstants.of(nx.complete_graph(16))
    assert k.chi1 == pytest.approx(7.5) and k.chi2 == pytest.approx(7.5)
    # ring: λ₂ = 2 (1 - cos 2π/n), edge resistance (n - 1) / n
    r = GraphConstants.of(nx.cycle_graph(16))
    assert r.chi1 == pytest.approx(16 / (2 * (1 - math.cos(2 * math.pi / 16))))
    assert r.chi2 == pytest.approx(0.5 * 16 * 15 / 16)
    assert r.comm_rate == pytest.approx(math.sqrt(2 * r.chi1 * r.chi2))
    with pytest.raises(ValueError, match="connected"):
        GraphConstants.of(nx.empty_graph(4))


def _reference(problem, graph, rule, run):
    """The spec's loop, one event at a time with torch.linalg.matrix_exp, over the events
    that ``run`` logged: an independent implementation of the update rules."""
    c = rule
    n, d = problem.num_nodes, problem.dim
    x0 = run.x0
    X, Xt, Y, Yt, Z, Zt = (x0.clone(), *(torch.zeros(n, d, dtype=torch.float64)
                                         for _ in range(5)))
    last = [0.0] * n
    M = c.ode_matrix()

    def integrate(i, t):
        s = torch.stack([X[i], Xt[i], Y[i], Yt[i], Z[i], Zt[i]])
        s = torch.linalg.matrix_exp(M * (t - last[i])) @ s
        X[i], Xt[i], Y[i], Yt[i], Z[i], Zt[i] = s
        last[i] = t

    rows = run.log.rows()
    k = 0
    while k < len(rows):
        t, kind, i = rows[k][0], rows[k][1], rows[k][2]
        if kind == "gradient_wake":
            integrate(i, t)
            r = problem.gradient(torch.tensor([i]), X[i : i + 1])[0] - c.nu * X[i] - Yt[i]
            X[i], Xt[i], Yt[i] = (X[i] - c.gamma * r, Xt[i] - c.gamma_tilde * r,
                                  Yt[i] + (c.delta + c.delta_tilde) * r)
            k += 1
        else:
            j = rows[k + 1][2]
            integrate(i, t)
            integrate(j, t)
            m = (Y[i] + Z[i]) - (Y[j] + Z[j])
            Z[i], Zt[i], Z[j], Zt[j] = (Z[i] - c.beta * m, Zt[i] - c.beta_tilde * m,
                                        Z[j] + c.beta * m, Zt[j] + c.beta_tilde * m)
            k += 2
    return torch.stack([X, Xt, Y, Yt, Z, Zt], 1), torch.tensor(last, dtype=torch.float64)


def test_waves_give_the_one_event_at_a_time_result(problem):
    graph = nx.cycle_graph(6)
    rule = DADAO.for_graph(problem, graph)
    runs = []
    for window in (0.0, 0.4, 6.0):
        run = ClockedDecoupled(problem, graph, rule, seed=3, window=window)
        run.run(until=24.0, eval_every=8.0)
        runs.append(run)
    for run in runs[1:]:
        assert run.log.rows() == runs[0].log.rows()
        assert run.records == runs[0].records or all(
            a["distance"] == pytest.approx(b["distance"], rel=1e-12)
            for a, b in zip(run.records, runs[0].records))
        assert torch.allclose(run.state, runs[0].state, atol=1e-13)
    state, last = _reference(problem, graph, rule, runs[0])
    assert torch.allclose(runs[0].last, last)
    assert torch.allclose(runs[2].state, state, atol=1e-10)


def test_streams_are_keyed_and_have_the_right_rates(problem):
    graph = nx.cycle_graph(6)
    a = ClockedDecoupled(problem, graph, GossipDGD(0.1), seed=1, comm_rate=12.0)
    b = ClockedDecoupled(problem, graph, GossipDGD(0.1), seed=1, comm_rate=12.0)
    c = ClockedDecoupled(problem, graph, GossipDGD(0.1), seed=2, comm_rate=12.0)
    for run in (a, b, c):
        run.run(until=80.0, eval_every=40.0)
    assert a.log.rows() == b.log.rows() and a.log.rows() != c.log.rows()
    # Poisson counts: 6 nodes x 1 / s and 12 / s over 80 s, within 4 standard deviations
    assert abs(a.gradients - 480) < 4 * math.sqrt(480)
    assert abs(a.communications - 960) < 4 * math.sqrt(960)
    assert float(a.bytes_sent.sum()) == a.communications * 2 * 4 * problem.dim


def test_dadao_reaches_the_optimum_where_gossip_dgd_plateaus():
    problem = LogisticProblem.from_federated(
        federate("digits", num_nodes=6, partition="dirichlet", alpha=0.5, seed=0), mu=1.0)
    graph = nx.cycle_graph(6)
    L = problem.smoothness()
    dadao = ClockedDecoupled(problem, graph, DADAO.for_graph(problem, graph), log=False)
    dgd = ClockedDecoupled(problem, graph, GossipDGD(1 / L), log=False)
    d1 = dadao.run(until=200.0, eval_every=100.0)
    d2 = dgd.run(until=200.0, eval_every=100.0)
    assert d1[-1]["distance"] < 1e-8 < 1e-4 < d2[-1]["distance"]
    assert d1[-1]["gradients"] == d2[-1]["gradients"]  # the same streams


def test_runner_rejects_bad_arguments(problem):
    rule = GossipDGD(0.1)
    with pytest.raises(ValueError, match="nodes must be 0..5"):
        ClockedDecoupled(problem, nx.cycle_graph(5), rule)
    with pytest.raises(ValueError, match="comm_rate"):
        ClockedDecoupled(problem, nx.cycle_graph(6), rule, comm_rate=0.0)
    with pytest.raises(ValueError, match="window"):
        ClockedDecoupled(problem, nx.cycle_graph(6), rule, window=-1.0)
    with pytest.raises(ValueError, match="x0"):
        ClockedDecoupled(problem, nx.cycle_graph(6), rule, x0=torch.zeros(6, 2))
    with pytest.raises(ValueError, match="cannot exceed"):
        DADAO(2.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="step"):
        GossipDGD(-1.0)
    with pytest.raises(ValueError, match="positive"):
        ClockedDecoupled(problem, nx.cycle_graph(6), rule).run(until=0.0, eval_every=1.0)
