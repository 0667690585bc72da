"""FZooS and the federated black-box tool (murmura.blackbox): the GP mean gradient against
autograd and sklearn, the gradient variance against its formula, the RFF surrogate against the
RBF kernel, RGF on a linear function, the adaptive correction on a hand case, Adam and the
history buffer by hand, query and byte counting, determinism and client independence of the
draws, refused input, and the experiment's quick mode."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from murmura.blackbox import BLACKBOX, FZooS, Quadratic, Run, fed_minimize
from murmura.blackbox.fzoos import fzoos_gradient, fzoos_local_step
from murmura.blackbox.methods import Oracle, adam, append
from murmura.blackbox.rgf import FedZO, ScaffoldZO, rgf_directions, rgf_estimate
from murmura.blackbox.surrogates import (
    GPFit,
    fit_gp,
    gp_grad_variance,
    gp_mean,
    gp_mean_grad,
    matern52,
    matern52_grad,
    nearest,
    rff_features,
    rff_fit,
    rff_grad,
    rff_map,
)
from murmura.swarm.random import key_normal, node_keys

ROOT = Path(__file__).resolve().parents[1]
D64 = torch.float64

XS = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.2, 0.9]], dtype=D64)
YS = torch.tensor([1.0, 2.0, 0.5, 1.5, 0.8], dtype=D64)


class Spheres:
    """Client i: ``‖x − c_i‖²`` (a FederatedProblem for the tests)."""

    def __init__(self, centers):
        self.centers = torch.as_tensor(centers, dtype=D64)
        self.num_clients, self.dim = self.centers.shape
        self.weights = torch.full((self.num_clients,), 1.0 / self.num_clients, dtype=D64)
        self.x0 = torch.zeros(self.dim, dtype=D64)
        self.rows = 0

    def query(self, x):
        self.rows += x[..., 0].numel()
        c = self.centers.reshape(self.num_clients, *(1,) * (x.dim() - 2), self.dim)
        return ((x - c) ** 2).sum(-1)

    def global_value(self, x):
        return (self.weights[:, None] * ((x - self.centers) ** 2)).sum()


@pytest.fixture(autouse=True)
def one_thread():
    """Small dense linear algebra: one thread is faster, above all on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SMALL = dict(init_queries=4, explore=2, candidates=10, post_candidates=20, post_explore=5,
             gp_queries=30, features=64, rff_queries=50)


# ---------------------------------------------------------------------------------------------
# the GP


def test_matern_kernel_and_its_gradient_by_hand():
    a, b = torch.tensor([[0.0, 0.0]], dtype=D64), torch.tensor([[0.6, 0.8]], dtype=D64)
    s = math.sqrt(5.0)  # r = 1, l = 1
    assert float(matern52(a, b, torch.tensor(1.0, dtype=D64))) == pytest.approx(
        (1 + s + 5 / 3) * math.exp(-s))
    grad = matern52_grad(a[0], b, torch.tensor(1.0, dtype=D64))[0]
    factor = -5.0 / 3.0 * (1 + s) * math.exp(-s)
    assert torch.allclose(grad, factor * (a[0] - b[0]))


def test_gp_mean_and_analytic_gradient_match_autograd_and_sklearn():
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import Matern

    gp = fit_gp(XS, YS, torch.ones(5, dtype=D64), torch.tensor([0.7], dtype=D64))
    x = torch.tensor([0.3, 0.2], dtype=D64, requires_grad=True)
    (auto,) = torch.autograd.grad(gp_mean(gp, x), x)
    analytic = gp_mean_grad(gp, x.detach())
    assert torch.allclose(analytic, auto, atol=1e-10)

    y = (YS - YS.min()) / (YS.max() - YS.min())
    sk = GaussianProcessRegressor(Matern(length_scale=0.7, nu=2.5), alpha=1e-6,
                                  optimizer=None).fit(XS.numpy(), y.numpy())
    scale, lo = float(YS.max() - YS.min()), float(YS.min())

    def predict(p):
        return sk.predict(np.asarray(p).reshape(1, -1))[0] * scale + lo

    x0 = x.detach().numpy()
    assert float(gp_mean(gp, x.detach())) == pytest.approx(predict(x0), abs=1e-9)
    h = 1e-6
    fd = [(predict(x0 + h * e) - predict(x0 - h * e)) / (2 * h) for e in np.eye(2)]
    assert np.allclose(analytic.numpy(), fd, atol=1e-6)


def test_masked_history_entries_change_nothing():
    grid = torch.tensor([0.3, 0.7, 2.0], dtype=D64)
    full = fit_gp(XS, YS, torch.ones(5, dtype=D64), grid)
    junk = torch.tensor([[5.0, -3.0], [0.31, 0.2]], dtype=D64)
    padded = fit_gp(torch.cat([XS, junk]), torch.cat([YS, torch.tensor([9.0, -4.0], dtype=D64)]),
                    torch.tensor([1.0] * 5 + [0.0, 0.0], dtype=D64), grid)
    x = torch.tensor([0.3, 0.2], dtype=D64)
    assert float(padded.lengthscale) == float(full.lengthscale)
    assert torch.allclose(gp_mean_grad(padded, x), gp_mean_grad(full, x), atol=1e-12)
    assert float(gp_mean(padded, x)) == pytest.approx(float(gp_mean(full, x)), abs=1e-12)


def test_length_scale_is_the_grid_point_of_sklearns_largest_log_marginal_likelihood():
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import Matern

    grid = [0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2]
    y = (YS - YS.min()) / (YS.max() - YS.min())
    sk = GaussianProcessRegressor(Matern(nu=2.5), alpha=1e-6, optimizer=None).fit(
        XS.numpy(), y.numpy())
    lml = [sk.log_marginal_likelihood(np.log([ell])) for ell in grid]
    gp = fit_gp(XS, YS, torch.ones(5, dtype=D64), torch.tensor(grid, dtype=D64))
    assert float(gp.lengthscale) == grid[int(np.argmax(lml))]


def test_nearest_selects_by_distance_among_the_valid_entries():
    hx = torch.tensor([[0.0], [3.0], [1.0], [0.1], [9.0]], dtype=D64)
    hy = torch.arange(5, dtype=D64)
    xs, ys, mask = nearest(hx, hy, torch.tensor(3), torch.tensor([0.9], dtype=D64), 4)
    # valid: 0.0, 3.0, 1.0 (the 4th and 5th are beyond count); nearest to 0.9: 1.0, 0.0, 3.0
    assert xs[:3, 0].tolist() == [1.0, 0.0, 3.0] and ys[:3].tolist() == [2.0, 0.0, 1.0]
    assert mask.tolist() == [1.0, 1.0, 1.0, 0.0] and float(ys[3]) == 0.0


def test_gradient_variance_is_the_posterior_trace():
    ell = torch.tensor(0.8, dtype=D64)
    gp = fit_gp(XS, YS, torch.ones(5, dtype=D64), ell.reshape(1))
    # the prior 5/(3 l^2) I: minus the Hessian of k(δ) near δ = 0
    hess = torch.autograd.functional.hessian(
        lambda delta: matern52(delta[None], torch.zeros(1, 2, dtype=D64), ell)[0, 0],
        torch.tensor([1e-5, -2e-5], dtype=D64))
    assert torch.allclose(-hess, 5 / (3 * 0.64) * torch.eye(2, dtype=D64), atol=1e-3)
    candidates = torch.tensor([[0.3, 0.2], [0.0, 0.0], [40.0, 40.0]], dtype=D64)
    k = matern52(XS, XS, ell) + 1e-6 * torch.eye(5, dtype=D64)
    expected = []
    for c in candidates:
        jac = matern52_grad(c, XS, ell)  # [n, d]
        expected.append(2 * 5 / (3 * 0.64) - torch.trace(jac.T @ torch.linalg.solve(k, jac)))
    got = gp_grad_variance(gp, candidates)
    assert torch.allclose(got, torch.stack(expected), atol=1e-8)
    # far from the data the gradient is as uncertain as under the prior; near it, less
    assert float(got[2]) == pytest.approx(2 * 5 / (3 * 0.64))
    assert float(got[0]) < float(got[2]) and float(got[1]) < float(got[2])


# ---------------------------------------------------------------------------------------------
# random Fourier features


def test_rff_features_approximate_the_rbf_kernel_and_their_gradient_is_exact():
    omega, offset = rff_features(seed=0, dim=3, num_features=20000, lengthscale=0.8)
    again = rff_features(seed=0, dim=3, num_features=20000, lengthscale=0.8)
    assert torch.equal(omega, again[0]) and torch.equal(offset, again[1])  # shared by a seed
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.3, -0.2, 0.5], [1.0, 0.4, -0.6]], dtype=D64)
    phi = rff_map(pts, omega, offset)
    rbf = torch.exp(-torch.cdist(pts, pts) ** 2 / (2 * 0.64))
    assert torch.allclose(phi @ phi.T, rbf, atol=0.03)
    nu = torch.linspace(-1, 1, 20000, dtype=D64)
    z = torch.tensor([0.2, -0.1, 0.4], dtype=D64, requires_grad=True)
    (auto,) = torch.autograd.grad(rff_map(z, omega, offset) @ nu, z)
    assert torch.allclose(rff_grad(z.detach(), nu, omega, offset), auto, atol=1e-10)


def test_rff_fit_interpolates_its_queries_and_returns_the_scaled_weights():
    omega, offset = rff_features(seed=3, dim=2, num_features=200, lengthscale=1.0)
    mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0], dtype=D64)
    xs = torch.cat([XS, torch.tensor([[7.0, 7.0]], dtype=D64)])
    ys = torch.cat([YS, torch.tensor([0.0], dtype=D64)])
    nu, y_min = rff_fit(xs, ys, mask, omega, offset)
    assert float(y_min) == 0.5
    assert torch.allclose(rff_map(XS, omega, offset) @ nu + y_min, YS, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# the update rules


def test_rgf_is_exact_on_a_linear_function_with_orthonormal_directions():
    a = torch.tensor([1.0, -2.0, 3.0, 0.5], dtype=D64)
    key = node_keys(5, "test", torch.tensor([0]))[0]
    dirs = rgf_directions(key, 4, 4)
    assert torch.allclose(dirs @ dirs.T, torch.eye(4, dtype=D64), atol=1e-12)
    draws = key_normal(key, (4, 4)).to(D64)  # Gram-Schmidt keeps the first draw's direction
    assert torch.allclose(dirs[0], draws[:, 0] / draws[:, 0].norm())
    x, mu = torch.tensor([0.3, 0.1, -0.2, 0.7], dtype=D64), 0.01
    f = lambda p: p @ a + 7.0  # noqa: E731
    est = rgf_estimate(f(x), f(x + mu * dirs), dirs, mu)
    assert torch.allclose(est, a / 4, atol=1e-10)  # the code's 1/q scale
    two = rgf_directions(key, 4, 2)
    est2 = rgf_estimate(f(x), f(x + mu * two), two, mu)
    assert torch.allclose(2 * est2, two.T @ (two @ a), atol=1e-10)  # the projection onto span


def test_adaptive_correction_sign_and_size_by_hand():
    # M = 2 features in d = 1: grad(nu) = -sqrt(2/2) sum_j nu_j sin(b_j) w_j = -3 nu_1 at z = 0
    omega = torch.tensor([[3.0, 1.0]], dtype=D64)
    offset = torch.tensor([math.pi / 2, 0.0], dtype=D64)
    zero = torch.zeros((), dtype=D64)
    flat = GPFit(torch.zeros(1, 1, dtype=D64), torch.ones(1, dtype=D64),
                 torch.zeros(1, dtype=D64), torch.ones(1, 1, dtype=D64),
                 torch.tensor(1.0, dtype=D64), zero, zero + 1)  # mean gradient 0
    x = torch.zeros(1, dtype=D64)
    nu_global = torch.tensor([2.0, 5.0], dtype=D64)  # grad -6
    nu_own = torch.tensor([0.5, 7.0], dtype=D64)  # grad -1.5
    g = fzoos_gradient(flat, x, nu_own, nu_global, omega, offset, gamma_t=1 / 3)  # t = 2
    assert torch.allclose(g, torch.tensor([-1.5], dtype=D64))  # 1/3 (-6 + 1.5)
    assert float(fzoos_gradient(flat, x, nu_global, nu_global, omega, offset, 1.0)) == 0.0
    # with a real GP the correction is added to its mean gradient
    gp = fit_gp(XS[:, :1], YS, torch.ones(5, dtype=D64), torch.tensor([0.5], dtype=D64))
    x = torch.tensor([0.25], dtype=D64)
    assert torch.allclose(fzoos_gradient(gp, x, nu_own, nu_global, omega, offset, 0.5),
                          gp_mean_grad(gp, x) + 0.5 * (rff_grad(x, nu_global, omega, offset)
                                                       - rff_grad(x, nu_own, omega, offset)))


def test_adam_first_step_and_history_append_by_hand():
    x, g = torch.tensor([1.0, 1.0], dtype=D64), torch.tensor([2.0, -0.5], dtype=D64)
    new, m, v = adam(x, g, torch.zeros(2, dtype=D64), torch.zeros(2, dtype=D64), 1, 0.1)
    assert torch.allclose(new, torch.tensor([0.9, 1.1], dtype=D64), atol=1e-7)  # lr·sign(g)
    assert torch.allclose(m, 0.1 * g) and torch.allclose(v, 0.001 * g * g)
    hx, hy = torch.zeros(4, 2, dtype=D64), torch.zeros(4, dtype=D64)
    pts, vals = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=D64), torch.tensor([5.0, 6.0],
                                                                                  dtype=D64)
    hx, hy, count = append(hx, hy, torch.tensor(1), pts, vals)
    assert hx.tolist() == [[0, 0], [1, 2], [3, 4], [0, 0]] and hy.tolist() == [0, 5, 6, 0]
    assert int(count) == 3


def test_the_vmapped_client_step_is_the_per_client_function():
    problem = Spheres([[0.2, 0.5, 0.1], [0.6, 0.3, 0.9]])
    algo = FZooS(**SMALL)
    run = Run(problem, Oracle(problem), 0, rounds=1, local_iters=2)
    algo.start(run, problem.x0)
    st = run.state
    x = torch.full((3,), 0.4, dtype=D64)
    grid = torch.tensor(algo.lengthscales, dtype=D64)
    keys = run.keys("fzoos/explore", 0, 0)
    args = lambda i: (st["hx"][i], st["hy"][i], st["count"][i], x, torch.zeros(3, dtype=D64),  # noqa: E731
                      torch.zeros(3, dtype=D64), st["nu_own"][i], keys[i], st["nu_global"],
                      st["omega"], st["offset"], grid)
    kw = dict(cfg=algo, step=1, gamma_t=0.0, explore=2)
    batched = torch.vmap(lambda *a: fzoos_local_step(*a, **kw), in_dims=(0,) * 8 + (None,) * 4)(
        st["hx"], st["hy"], st["count"], x.expand(2, 3), torch.zeros(2, 3, dtype=D64),
        torch.zeros(2, 3, dtype=D64), st["nu_own"], keys, st["nu_global"], st["omega"],
        st["offset"], grid)
    for i in range(2):
        single = fzoos_local_step(*args(i), **kw)
        for a, b in zip(single, batched):
            assert torch.allclose(a, b[i], atol=1e-12)


# ---------------------------------------------------------------------------------------------
# the driver: counting, bytes, determinism


def test_fzoos_counts_every_query_and_the_bytes_of_spec_c():
    problem = Spheres([[0.2, 0.5, 0.1], [0.6, 0.3, 0.9]])
    res = fed_minimize(problem, "fzoos", rounds=3, local_iters=3, seed=0, **SMALL)
    # per client: 4 initial, x0 once, per round 3 iterates + 2·2 exploration + x + 5 post-round
    per_round = 3 + 2 * 2 + 1 + 5
    assert res.queries == [8, 8 + 2 * (1 + per_round), 8 + 2 * (1 + 2 * per_round),
                           8 + 2 * (1 + 3 * per_round)]
    assert res.queries_per_client[-1] == [4 + 1 + 3 * per_round] * 2
    assert problem.rows == res.queries[-1]  # what the problem was asked, independently
    assert res.bytes_up[1:] == [2 * (3 + 64 + 1) * 4] * 3  # x_i, ν_i, y_min per client
    assert res.bytes_down[1:] == [2 * (3 + 64) * 4] * 3  # x, ν_F
    assert res.bytes_up[0] == 0 and len(res.values) == 4
    assert res.values[-1] < res.values[0]


def test_rgf_baselines_count_their_queries_and_bytes():
    problem = Spheres([[0.2, 0.5, 0.1, 0.3], [0.6, 0.3, 0.9, 0.0]])
    fedzo = fed_minimize(problem, "fedzo", rounds=2, local_iters=3, q=4)
    assert fedzo.queries == [0, 2 * (1 + 3 * 5), 2 * 2 * (1 + 3 * 5)]
    assert fedzo.bytes_up[1:] == fedzo.bytes_down[1:] == [2 * 4 * 4] * 2
    scaf = fed_minimize(problem, "scaffold_zo", rounds=2, local_iters=3, q=4)
    assert scaf.queries == fedzo.queries and scaf.bytes_up[1:] == [2 * 8 * 4] * 2
    assert scaf.values[1] == fedzo.values[1]  # no control variate in round 0
    assert scaf.values[2] != fedzo.values[2]
    problem.rows = 0
    diff = fed_minimize(problem, "scaffold_zo", rounds=2, local_iters=3, q=4, control="diff")
    # type I: q + 1 more per round at the new x; that f(x) also starts the next round
    assert diff.queries == [0, 2 * (1 + 15 + 5), 2 * (1 + 15 + 5 + 15 + 5)]
    assert problem.rows == diff.queries[-1]
    assert fed_minimize(problem, ScaffoldZO(q=4), rounds=1).method == "scaffold_zo"


def test_scaffold_type_ii_controls_are_the_mean_local_estimates():
    problem = Spheres([[0.2, 0.5, 0.1, 0.3], [0.6, 0.3, 0.9, 0.0]])
    algo = ScaffoldZO(q=4)
    run = Run(problem, Oracle(problem), 0, rounds=2, local_iters=2)
    algo.start(run, problem.x0)
    xl = algo.local_round(run, problem.x0, 0)
    assert torch.equal(algo.correction(run, 0), torch.zeros(2, 4, dtype=D64))
    x = problem.x0 - run.weights @ (problem.x0 - xl)
    algo.after_server(run, x, xl, 0)
    st = run.state
    assert torch.equal(st["c_own"], st["g_mean"])
    assert torch.allclose(st["c_global"], st["g_mean"].mean(0))
    assert torch.allclose(algo.correction(run, 1), st["g_mean"].mean(0) - st["g_mean"])


def test_same_seed_same_trajectory_and_seeds_differ():
    problem = Quadratic(dim=4, num_clients=2, div=0.5, seed=1)
    a = fed_minimize(problem, "fzoos", rounds=2, local_iters=2, seed=7, **SMALL)
    b = fed_minimize(problem, "fzoos", rounds=2, local_iters=2, seed=7, **SMALL)
    c = fed_minimize(problem, "fzoos", rounds=2, local_iters=2, seed=8, **SMALL)
    assert a.values == b.values and torch.equal(a.x, b.x)
    assert a.values[1:] != c.values[1:]


def test_a_clients_draws_do_not_depend_on_the_other_clients():
    three = Spheres([[0.2, 0.5, 0.1], [0.6, 0.3, 0.9], [0.9, 0.9, 0.9]])
    two = Spheres([[0.2, 0.5, 0.1], [0.0, 0.8, 0.4]])
    for algo in (FZooS(**SMALL), FedZO(q=3)):
        first = []
        for problem in (three, two):
            run = Run(problem, Oracle(problem), 3, rounds=1, local_iters=2)
            algo.start(run, problem.x0)
            first.append(algo.local_round(run, problem.x0, 0)[0])
        assert torch.equal(first[0], first[1])


def test_quadratic_by_hand():
    p = Quadratic(dim=4, num_clients=3, div=0.5, seed=2)
    assert torch.allclose(p.c1.mean(0), torch.ones(4, dtype=D64))  # Dirichlet rows sum to 1
    assert torch.allclose(p.query(torch.full((3, 1, 4), 0.5, dtype=D64)),
                          torch.full((3, 1), 0.1 / 4, dtype=D64))  # z = 0
    ones = torch.ones(3, 4, dtype=D64)  # z = 10; clipped above 1
    assert torch.allclose(p.query(ones), p.query(2 * ones))
    assert torch.allclose(p.query(ones), 0.1 / 4 * (100 * p.c1.sum(1) + 10 * p.c2.sum(1) + 1))
    assert p.minimum() == pytest.approx(0.1 / 4 * (4 * -0.25 + 1))  # z* = -1/2
    assert float(p.global_value(torch.full((4,), 0.475, dtype=D64))) == pytest.approx(
        p.minimum())


# ---------------------------------------------------------------------------------------------
# refused input


def test_bad_input_is_refused_with_the_parameter_named():
    p = Quadratic(dim=3, num_clients=2, seed=0)
    with pytest.raises(ValueError, match="rounds"):
        fed_minimize(p, "fedzo", rounds=0, q=3)
    with pytest.raises(ValueError, match="local_iters"):
        fed_minimize(p, "fedzo", local_iters=-1, q=3)
    with pytest.raises(ValueError, match="unknown federated black-box method 'fzo'"):
        fed_minimize(p, "fzo")
    with pytest.raises(ValueError, match="x0 must have shape"):
        fed_minimize(p, "fedzo", x0=torch.zeros(4), q=3)
    with pytest.raises(ValueError, match="q ≤ dim"):
        fed_minimize(p, "fedzo", rounds=1)  # q = 20 > 3
    with pytest.raises(ValueError, match="not both"):
        fed_minimize(p, FedZO(q=3), q=2)
    with pytest.raises(TypeError):
        fed_minimize(p, "fedzo", q=3, nonsense=1)
    with pytest.raises(ValueError, match="lr"):
        FZooS(lr=-0.1)
    with pytest.raises(ValueError, match="explore"):
        FZooS(explore=200)
    with pytest.raises(ValueError, match="control"):
        ScaffoldZO(control="type3")
    with pytest.raises(ValueError, match="query: x must be"):
        p.query(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="dim"):
        Quadratic(dim=0)

    class Broken(Spheres):
        def query(self, x):
            return super().query(x).sum(-1)

    with pytest.raises(ValueError, match="problem.query returned"):
        fed_minimize(Broken([[0.0, 1.0], [1.0, 0.0]]), "fedzo", q=2)


def test_registry_names():
    assert set(BLACKBOX.names()) == {"fzoos", "fedzo", "scaffold_zo", "fedprox_zo"}
    assert BLACKBOX.describe()["fzoos"].startswith("FZooS")


# ---------------------------------------------------------------------------------------------
# the experiment


def test_the_experiment_quick_mode_runs(tmp_path):
    spec = importlib.util.spec_from_file_location("fzoos_run", ROOT / "experiments" / "fzoos" /
                                                  "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    assert run.main(["--quick", "--out", str(tmp_path)]) == 0  # sets 1 thread (fixture resets)
    result = json.loads((tmp_path / "quick.json").read_text())
    assert set(result["table"]) == set(run.ARMS) and (tmp_path / "fzoos_quick.png").exists()
    fz = next(r for r in result["runs"] if r["arm"] == "fzoos")
    assert fz["queries"][0] == 5 * 10 and len(fz["values"]) == 3
    assert result["verdict"]["criterion"] == "F@1000"


def test_the_fed_blackbox_kind_records_fed_minimizes_rounds(tmp_path):
    from murmura.blackbox import Quadratic, fed_minimize
    from murmura.config import Experiment
    from murmura.runner import run_experiment

    exp = Experiment.from_dict({"seed": 3, "rounds": 3, "kind": {
        "name": "fed_blackbox", "method": "fedzo", "dim": 6, "clients": 2, "local_iters": 2,
        "q": 4}, "output": {"plots": False, "report": False}})
    result = run_experiment(exp, tmp_path / "run", progress=False)
    assert result.status == "completed" and [r["round"] for r in result.history] == [0, 1, 2]
    problem = Quadratic(dim=6, num_clients=2, seed=3)
    direct = fed_minimize(problem, "fedzo", rounds=3, local_iters=2, seed=3, q=4)
    assert [r["value"] for r in result.history] == direct.values[1:]
    assert [r["queries"] for r in result.history] == direct.queries[1:]
    assert result.summary["simulation"]["start_value"] == direct.values[0]
    bad = Experiment.from_dict({"rounds": 1, "kind": {"name": "fed_blackbox", "method": "zo"},
                                "output": {"plots": False, "report": False}})
    failed = run_experiment(bad, tmp_path / "bad", progress=False)
    assert failed.status == "failed" and "choose one of fedprox_zo" in failed.summary["message"]
