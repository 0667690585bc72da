"""Optimistic OMD (spec federated.md section 10): the update by hand, the adaptive step, the
torch optimizer against the pure functions, exact regret, projections, refused input, and the
experiment's quick mode."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from murmura.optim import (
    OGD,
    OOMD,
    OptimisticOGD,
    OptimisticOMD,
    OptimisticONS,
    RegretTracker,
    SEASequence,
    adaptive_step,
    adversarial_variation,
    project_ball,
    project_ball_norm,
    run_online,
    strongly_convex_step,
)

REPO = Path(__file__).resolve().parents[1]
R2 = math.sqrt(2.0)


def close(a, b, tol=1e-12):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64),
                          torch.as_tensor(b, dtype=torch.float64), atol=tol, rtol=0)


def test_two_rounds_by_hand_unconstrained():
    # D = 2, δ = 1: η_1 = 2, η_2 = 2/√(1+1), η_3 = 2/√(1+1+2)
    opt = OOMD(radius=None, diameter=2.0, delta=1.0)
    state = opt.init(torch.zeros(2, dtype=torch.float64))
    assert close(opt.play(state), [0.0, 0.0]) and close(opt.step_size(state), 2.0)
    x2, state = opt.update(torch.tensor([1.0, 0.0], dtype=torch.float64), state)
    assert close(state.x_hat, [-2.0, 0.0]) and close(state.sq_sum, 1.0)
    assert close(opt.step_size(state), R2)
    assert close(x2, [-2.0 - R2, 0.0])  # x̂_2 − η_2 M_2 with M_2 = g_1
    x3, state = opt.update(torch.tensor([0.0, 1.0], dtype=torch.float64), state)
    assert close(state.x_hat, [-2.0, -R2])  # x̂_3 = x̂_2 − η_2 g_2
    assert close(state.sq_sum, 3.0) and close(opt.step_size(state), 1.0)
    assert close(x3, [-2.0, -R2 - 1.0])


def test_supplied_hint_and_no_hint():
    opt = OOMD(radius=None, diameter=2.0)
    state = opt.init(torch.zeros(2, dtype=torch.float64))
    _, state = opt.update(torch.tensor([1.0, 0.0], dtype=torch.float64), state,
                          hint=torch.tensor([0.0, 3.0], dtype=torch.float64))
    assert close(opt.play(state), [-2.0, -3.0 * R2])
    plain = OOMD(radius=None, diameter=2.0, optimistic=False)
    st = plain.init(torch.zeros(2, dtype=torch.float64))
    x, st = plain.update(torch.tensor([1.0, 0.0], dtype=torch.float64), st)
    assert close(x, [-2.0, 0.0]) and close(st.hint, [0.0, 0.0])
    _, st = plain.update(torch.tensor([1.0, 0.0], dtype=torch.float64), st)
    assert close(st.sq_sum, 2.0)  # ‖g − 0‖² twice


def test_projected_round_on_the_ball():
    opt = OOMD(radius=1.0, delta=1.0)  # D = 2
    state = opt.init(torch.tensor([3.0, 4.0], dtype=torch.float64))
    assert close(state.x_hat, [0.6, 0.8])
    x, state = opt.update(torch.tensor([0.0, 1.0], dtype=torch.float64), state)
    # x̂_2 = Π([0.6, 0.8 − 2]) = [0.6, −1.2]/‖·‖; x_2 = Π(x̂_2 − √2 [0, 1])
    xh = torch.tensor([0.6, -1.2], dtype=torch.float64) / math.hypot(0.6, 1.2)
    assert close(state.x_hat, xh)
    z = xh - R2 * torch.tensor([0.0, 1.0], dtype=torch.float64)
    assert close(x, z / torch.linalg.vector_norm(z))


def test_adaptive_and_strongly_convex_steps():
    assert close(adaptive_step(0.0, diameter=2.0, delta=1.0), 2.0)
    assert close(adaptive_step(0.0, diameter=2.0, delta=1.0, smoothness=1.0), 0.25)
    assert close(adaptive_step(99.0, diameter=2.0, delta=1.0, smoothness=1.0), 0.2)
    assert close(adaptive_step(torch.tensor([0.0, 3.0]), diameter=2.0), [2.0, 1.0])
    assert strongly_convex_step(1, 2.0) == 1.0 and strongly_convex_step(16, 1.0, 1.0) == 0.125
    opt = OOMD(radius=1.0, schedule="strongly_convex", strong_convexity=1.0)
    state = opt.init(torch.zeros(3, dtype=torch.float64))
    for _ in range(3):
        _, state = opt.update(torch.ones(3, dtype=torch.float64), state)
    assert close(opt.step_size(state), 0.5)  # round 4: 2/(1·4)


def test_projection_rows_are_independent():
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    assert close(project_ball(x, 1.0), [[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]], 1e-7)
    assert project_ball(x, None) is x


def test_batched_learners_equal_single_runs():
    gen = torch.Generator().manual_seed(3)
    grads = torch.randn(15, 4, 3, generator=gen, dtype=torch.float64)
    opt = OOMD(radius=0.5, smoothness=2.0)
    batch = opt.init(torch.zeros(4, 3, dtype=torch.float64))
    singles = [opt.init(torch.zeros(3, dtype=torch.float64)) for _ in range(4)]
    for g in grads:
        xb, batch = opt.update(g, batch)
        for i in range(4):
            xi, singles[i] = opt.update(g[i], singles[i])
            assert close(xb[i], xi)


def test_optimizer_matches_pure_functions():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(2, 3, dtype=torch.float64))
    b = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))
    flat0 = torch.cat([a.detach().reshape(-1), b.detach().reshape(-1)])
    optim = OptimisticOMD([a, b], radius=1.0, delta=0.5, smoothness=1.0)
    rule = OOMD(radius=1.0, delta=0.5, smoothness=1.0)
    state = rule.init(flat0)
    x = rule.play(state)
    assert close(torch.cat([a.detach().reshape(-1), b.detach().reshape(-1)]), x)
    for _ in range(20):
        a.grad, b.grad = torch.randn_like(a), torch.randn_like(b)
        g = torch.cat([a.grad.reshape(-1), b.grad.reshape(-1)])
        optim.step()
        x, state = rule.update(g, state)
        assert close(torch.cat([a.detach().reshape(-1), b.detach().reshape(-1)]), x)
        assert math.isclose(optim.step_size(), float(rule.step_size(state)), rel_tol=1e-12)
    assert OptimisticOGD is OptimisticOMD


def test_optimizer_trains_with_a_closure_and_hint():
    w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    target = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
    optim = OptimisticOMD([w], radius=1.0, smoothness=1.0)

    def closure():
        optim.zero_grad()
        value = 0.5 * torch.sum((w - target) ** 2)
        value.backward()
        return value

    for _ in range(200):
        optim.step(closure)
    assert close(w.detach(), target, 1e-6)
    w.grad = torch.zeros(3, dtype=torch.float64)
    before = w.detach().clone()
    optim.step(hint=[torch.ones(3, dtype=torch.float64)])
    assert close(w.detach(), before - 0.25 * torch.ones(3, dtype=torch.float64))


def test_regret_of_known_sequences():
    tr = RegretTracker("quadratic", radius=1.0)
    for c in ([1.0, 0.0], [-1.0, 0.0]):
        tr.observe(torch.zeros(2), torch.tensor(c), torch.zeros(2))
    assert close(tr.cumulative_loss(), 1.0, 1e-7) and close(tr.regret(), 0.0, 1e-7)
    assert close(tr.dynamic_regret(), 1.0, 1e-7)
    for radius, expected in ((1.0, 1.0), (0.5, 0.75)):  # noise [1, 0] twice, x = 0, c = 0
        tr = RegretTracker("quadratic", radius=radius)
        for _ in range(2):
            tr.observe(torch.zeros(2), torch.zeros(2), torch.tensor([1.0, 0.0]))
        assert close(tr.regret(), expected, 1e-7)
        assert close(tr.comparator(), [-radius, 0.0], 1e-7)
    tr = RegretTracker("linear", radius=2.0)
    tr.observe(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([0.0, 0.5]))
    assert close(tr.regret(), 3.0, 1e-7)  # 0 − (−2 · 1.5)


def test_comparator_beats_every_fixed_point():
    c, xi = SEASequence(dim=4, schedule="switching", sigma=0.5, period=3, seed=1).draw(30)
    for kind in ("quadratic", "linear"):
        tr = RegretTracker(kind, radius=1.0)
        for t in range(30):
            tr.observe(torch.zeros(4, dtype=torch.float64), c[t], xi[t])
        best = float(tr.best_loss())
        pts = project_ball(torch.randn(500, 4, dtype=torch.float64) * 2, 1.0)
        from murmura.optim import loss

        totals = sum(loss(pts, c[t], xi[t], kind) for t in range(30))
        assert best <= float(totals.min()) + 1e-9
        assert math.isclose(float(sum(loss(tr.comparator(), c[t], xi[t], kind)
                                      for t in range(30))), best, rel_tol=1e-9)


def test_ogd_and_sequences():
    ogd = OGD(radius=1.0, grad_bound=4.0)
    st = ogd.init(torch.zeros(2, dtype=torch.float64))
    x, st = ogd.update(torch.tensor([1.0, 0.0], dtype=torch.float64), st)
    assert close(x, [-0.5, 0.0]) and math.isclose(ogd.step_size(st), 0.5 / R2)
    c, xi = SEASequence(dim=3, schedule="alternating", scale=0.5).draw(5)
    assert close(c[0], -c[1]) and close(xi, torch.zeros(5, 3))
    assert close(adversarial_variation(c), 4 * 1.0)  # ‖2c‖² = 1, four changes
    c2, _ = SEASequence(dim=3, schedule="switching", period=2).draw(5)
    assert close(c2[0], c2[1]) and close(c2[2], -c2[0]) and close(c2[4], c2[0])
    c3, _ = SEASequence(dim=3, schedule="drift").draw(100)
    assert close(torch.linalg.vector_norm(c3, dim=1), torch.full((100,), 0.5))
    assert float(adversarial_variation(c3)) < 0.25 * math.pi ** 2 / 6 + 1e-9


def test_oomd_adapts_to_a_fixed_noiseless_loss():
    c, xi = SEASequence(dim=5, schedule="fixed", sigma=0.0, seed=2).draw(2000)
    out = run_online(OOMD(radius=1.0, smoothness=1.0), c, xi, checkpoints=[100, 2000])
    assert float(out["regret"][-1]) < 1.0
    assert abs(float(out["regret"][-1] - out["regret"][0])) < 1e-6  # converged: no more regret


def test_ons_one_round_by_hand_and_norm_projection():
    ons = OptimisticONS(alpha=1.0, grad_bound=1.0, radius=10.0)
    assert math.isclose(ons.beta, 0.5 / 80)
    st = ons.init(torch.zeros(2, dtype=torch.float64))
    x, st = ons.update(torch.tensor([1.0, 0.0], dtype=torch.float64), st)
    a11 = 1.0 + 0.5 * ons.beta
    assert close(st.a, [[a11, 0.0], [0.0, 1.0]])
    assert close(st.x_hat, [-1.0 / a11, 0.0]) and close(x, [-2.0 / a11, 0.0])
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(3, dtype=torch.float64)
    z = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    y = project_ball_norm(z, a, 1.0)
    assert math.isclose(float(torch.linalg.vector_norm(y)), 1.0, rel_tol=1e-9)
    r = a @ (z - y)  # KKT: A(z − y) = μ y with μ ≥ 0
    assert float(r @ y) > 0 and close(r / r.norm(), y / y.norm(), 1e-7)


@pytest.mark.parametrize("make", [
    lambda: OOMD(radius=0.0),
    lambda: OOMD(radius=None),
    lambda: OOMD(schedule="fast"),
    lambda: OOMD(schedule="strongly_convex"),
    lambda: OOMD(delta=0.0),
    lambda: OOMD(smoothness=-1.0),
    lambda: OGD(radius=None),
    lambda: OGD(grad_bound=0.0),
    lambda: SEASequence(schedule="random"),
    lambda: SEASequence(dim=1),
    lambda: SEASequence(sigma=-1.0),
    lambda: RegretTracker("linear", radius=None),
    lambda: RegretTracker("cubic"),
    lambda: RegretTracker().regret(),
    lambda: strongly_convex_step(0, 1.0),
    lambda: OptimisticONS(alpha=0.0, grad_bound=1.0),
    lambda: OptimisticOMD([torch.nn.Parameter(torch.zeros(2))], radius=-1.0),
])
def test_bad_input_is_refused(make):
    with pytest.raises(ValueError):
        make()


def test_bad_updates_are_refused():
    opt = OOMD()
    st = opt.init(torch.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        opt.update(torch.zeros(2), st)
    with pytest.raises(ValueError, match="non-finite"):
        opt.update(torch.tensor([0.0, float("nan"), 0.0]), st)
    with pytest.raises(ValueError, match="hint"):
        opt.update(torch.zeros(3), st, hint=torch.zeros(4))
    w = torch.nn.Parameter(torch.zeros(2))
    optim = OptimisticOMD([w])
    with pytest.raises(ValueError, match="gradient"):
        optim.step()
    w.grad = torch.zeros(2)
    with pytest.raises(ValueError, match="hint"):
        optim.step(hint=[torch.zeros(2), torch.zeros(2)])
    c, xi = SEASequence(dim=2).draw(5)
    with pytest.raises(ValueError, match="checkpoints"):
        run_online(OOMD(), c, xi, checkpoints=[6])


def test_the_experiment_quick_mode_runs(tmp_path):
    path = REPO / "experiments" / "oomd" / "run.py"
    spec = importlib.util.spec_from_file_location("experiment_oomd", path)
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    threads = torch.get_num_threads()
    try:
        assert run.main(["--quick", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads((tmp_path / "quick.json").read_text())
    assert set(result["table"]) == set(run.SETTINGS)
    assert all(set(rows) == set(run.ARMS) for rows in result["table"].values())
    assert (tmp_path / "oomd_quick.png").exists()


def test_optimizer_state_dict_round_trip():
    w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    optim = OptimisticOMD([w], radius=1.0)
    for g in ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0]):
        w.grad = torch.tensor(g, dtype=torch.float64)
        optim.step()
    w2 = torch.nn.Parameter(w.detach().clone())
    other = OptimisticOMD([w2], radius=1.0)
    other.load_state_dict(optim.state_dict())
    assert math.isclose(other.step_size(), optim.step_size())
    w.grad = w2.grad = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    optim.step()
    other.step()
    assert close(w.detach(), w2.detach())
