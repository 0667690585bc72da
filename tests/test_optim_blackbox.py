"""Optimization by directional attacks (spec federated.md section 14): the attack operator by
hand, the poll set's geometry, the radius rules on constructed cases, the budget, the box,
determinism, bad input, counterfactuals from a run directory, the kind and the experiment."""

import importlib.util
import math
import statistics
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import murmura.optim.blackbox  # noqa: F401  (registers the blackbox kind)
from murmura.config import Experiment
from murmura.optim.blackbox import METHODS, minimize, random_starts
from murmura.optim.cdsm import (
    Radii,
    attack_radius_after,
    covering_direction,
    dsm_radius_after,
    poll_directions,
    search_direction,
    sufficient_increase,
)
from murmura.optim.directional import Attack, fgsm_direction, pgd_direction
from murmura.optim.network_problems import (
    Problem,
    counterfactual_from_run,
    load_run_model,
    predicted_class,
    teacher_problem,
)
from murmura.runner import run_experiment

REPO = Path(__file__).resolve().parents[1]
D64 = torch.float64
A = torch.tensor([[1.0, -2.0, 0.0], [0.5, 1.0, -1.0]], dtype=D64)
B = torch.tensor([0.1, -0.3], dtype=D64)
W = torch.tensor([1.0, -1.0], dtype=D64)


def linear_problem(a=(1.0, 2.0, -1.0), shift=0.0, x0=0.5, constraint=None, r0=0.1):
    """obj(x) = aᵀx + shift over [0, 1]^3 (Φ = identity)."""
    a = torch.tensor(a, dtype=D64)
    return Problem(lambda x: x, lambda y: a @ y + shift, torch.zeros(3), torch.ones(3),
                   torch.full((3,), float(x0)), constraint=constraint, r0=r0)


def recording(problem):
    """The problem with every point Φ sees written down."""
    seen = []

    def phi(x):
        seen.append(x.detach().clone())
        return problem.phi(x)

    return Problem(phi, problem.f, problem.lower, problem.upper, problem.x0,
                   problem.constraint, problem.r0, problem.dtype), seen


@pytest.fixture(scope="module")
def teacher():
    return teacher_problem(seed=0)


# ------------------------------------------------------------------ the attack operator


def test_fgsm_on_a_linear_network_is_r_sign_of_A_transpose_u():
    # Φ(x) = Ax + b, f(y) = wᵀy − ½‖y‖²: u = w − Φ(x). At x = (1, 0, 2):
    # Φ = (1.1, −1.8), u = (−0.1, 0.8), Aᵀu = (−0.1 + 0.4, 0.2 + 0.8, −0.8) = (0.3, 1.0, −0.8)
    x = torch.tensor([1.0, 0.0, 2.0], dtype=D64)
    d = fgsm_direction(lambda v: A @ v + B, lambda y: W @ y - 0.5 * (y * y).sum(), x, 0.2)
    assert d.tolist() == [0.2, 0.2, -0.2]
    # f(y) = y₁: u = (1, 0), Aᵀu = (1, −2, 0): a zero component does not move
    d, passes = Attack("fgsm")(lambda v: A @ v + B, lambda y: y[0], x, 0.5)
    assert d.tolist() == [0.5, -0.5, 0.0] and passes == 1


def test_centered_fgsm_is_the_official_soft_target_cross_entropy_attack():
    # the code: targeted FGSM (eps 0.5) on δ ↦ Φ(x + 2r(δ − ½)) − Φ(x) from δ = ½, target u
    phi = lambda v: A @ v + B  # noqa: E731
    f = lambda y: torch.tensor([3.0, 1.0], dtype=D64) @ y  # noqa: E731  u = (3, 1), Σu ≠ 0
    x, r = torch.tensor([0.2, 0.4, 0.6], dtype=D64), 0.3
    delta = torch.full((3,), 0.5, dtype=D64, requires_grad=True)
    out = phi(x + 2 * r * (delta - 0.5)) - phi(x)
    loss = F.cross_entropy(out[None], torch.tensor([[3.0, 1.0]], dtype=D64))
    (grad,) = torch.autograd.grad(loss, delta)
    official = 2 * r * ((0.5 - 0.5 * grad.sign()).clamp(0, 1) - 0.5)
    centered, _ = Attack("fgsm", centered=True)(phi, f, x, r)
    assert torch.equal(centered, official)  # Aᵀ(u − ū) = Aᵀ(1, −1) = (0.5, −3, 1)
    clean, _ = Attack("fgsm")(phi, f, x, r)  # Aᵀu = (3.5, −5, −1): the third sign differs
    assert clean.tolist() == [0.3, -0.3, -0.3] and centered.tolist() == [0.3, -0.3, 0.3]


def test_pgd_stays_in_the_ball_and_the_box_and_one_full_step_is_fgsm():
    phi, f = (lambda v: torch.tanh(A @ v)), (lambda y: W @ y)
    x = torch.tensor([0.9, 0.1, 0.5], dtype=D64)
    low, high = -x, 1 - x  # the box [0, 1]^3 seen from x
    d = pgd_direction(phi, f, x, 0.3, 7, low, high)
    assert d.abs().max() <= 0.3 + 1e-12 and bool(((x + d >= 0) & (x + d <= 1)).all())
    one = pgd_direction(phi, f, x, 0.05, 1, low, high, alpha=0.05)
    assert torch.equal(one, fgsm_direction(phi, f, x, 0.05))
    d, passes = Attack("pgd", steps=4)(phi, f, x, 0.3, torch.zeros(3), torch.ones(3))
    assert passes == 4 and bool(((x + d >= 0) & (x + d <= 1)).all())


# ------------------------------------------------------------------ cDSM's pieces


@pytest.mark.parametrize("n", [2, 5, 20])
def test_the_poll_set_is_a_minimal_positive_spanning_set_at_inf_norm_r(n):
    D = poll_directions(n, 0.25, torch.Generator().manual_seed(n), D64)
    assert tuple(D.shape) == (n + 1, n)
    assert torch.allclose(D.abs().amax(1), torch.full((n + 1,), 0.25, dtype=D64))
    # positive spanning with n + 1 vectors: they span R^n and 0 = Σ λ_i d_i with every λ_i > 0
    assert torch.linalg.matrix_rank(D.T) == n
    null = torch.linalg.svd(D.T).Vh[-1]
    assert torch.allclose(D.T @ null, torch.zeros(n, dtype=D64), atol=1e-10)
    assert bool((null > 1e-8).all() or (null < -1e-8).all())
    w = torch.randn(200, n, generator=torch.Generator().manual_seed(1), dtype=D64)
    assert bool(((w @ D.T).amax(1) > 0).all())  # every direction has an ascent candidate


def test_covering_and_search_points_have_the_code_radii():
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        d = covering_direction(20, 0.1, g, D64)
        assert 0.0 < float(d.abs().max()) <= 0.1 ** (1 / 20)  # (U r0)^(1/n), U ≤ 1
    radius = float(covering_direction(4, 0.5, torch.Generator().manual_seed(0), D64).abs().max())
    u = float(torch.rand((), generator=torch.Generator().manual_seed(0), dtype=D64))
    assert radius == pytest.approx((u * 0.5) ** 0.25)
    assert float(search_direction(7, 0.3, g, D64).abs().max()) == pytest.approx(0.3)


def test_radius_rules_and_sufficient_increase_by_hand():
    assert attack_radius_after(0.5, "sufficient", 1e-5, 1.0) == pytest.approx(0.65)
    assert attack_radius_after(0.9, "sufficient", 1e-5, 1.0) == 1.0  # clipped at r_atk_max
    assert attack_radius_after(0.5, "increase", 1e-5, 1.0) == pytest.approx(0.55)
    assert attack_radius_after(1.3e-5, "failure", 1e-5, 1.0) == 1e-5  # floored at r_atk_min
    assert dsm_radius_after(0.5, True, 1e-5, 0.8) == 0.8 and dsm_radius_after(0.5, False, 0.3,
                                                                                1.0) == 0.3
    assert sufficient_increase(-0.998, -1.0) and not sufficient_increase(-0.9995, -1.0)
    with pytest.raises(ValueError, match="outcome"):
        attack_radius_after(0.1, "success", 1e-5, 1.0)


# ------------------------------------------------------------------ the loop on constructed cases


def test_a_sufficient_increase_grows_r_atk_and_skips_the_direct_search():
    # obj = x1 + 2 x2 − x3 from 0.5·1 (value 1): FGSM moves 0.1·sign(a), +0.4 (ratio 0.4 ≥ τ)
    res = minimize(linear_problem(), "hybrid", budget=3)
    assert res.steps[0] == {"status": "attack-sufficient+skipped", "evaluations": 3,
                            "value": pytest.approx(1.4), "r_atk": pytest.approx(0.13),
                            "r_dsm": 0.1}
    assert res.x.tolist() == pytest.approx([0.6, 0.6, 0.4]) and res.gradients == 1
    # with r_dsm at its floor already, the attack's success doubles it
    res = minimize(linear_problem(), "hybrid", budget=3, radii=Radii(r0=0.1, r_dsm_min=0.1))
    assert res.steps[0]["r_dsm"] == pytest.approx(0.2)


def test_a_small_increase_grows_r_atk_by_1_1_then_the_direct_search_runs():
    res = minimize(linear_problem(shift=1e6), "hybrid", budget=200, max_iterations=1)
    step = res.steps[0]
    assert step["status"].startswith("attack-increase+") and step["r_atk"] == pytest.approx(0.11)
    dfo = step["status"].split("+")[1]
    expected = {"covering": 0.1, "search": 0.2, "poll": 0.2, "failure": 0.05}[dfo]
    assert step["r_dsm"] == pytest.approx(expected)


def test_at_the_maximizing_corner_everything_fails_and_both_radii_shrink():
    problem = linear_problem(a=(1.0, 1.0, 1.0), x0=1.0)
    res = minimize(problem, "hybrid", budget=100, max_iterations=1)
    assert res.steps[0]["status"] == "attack-failure+failure"
    assert res.steps[0]["r_atk"] == pytest.approx(0.1 / 1.3)
    assert res.steps[0]["r_dsm"] == pytest.approx(0.05)
    assert res.value == 3.0 and res.x.tolist() == [1.0, 1.0, 1.0]
    # the attack's trial point is clipped back onto x: it costs its gradient, not an evaluation
    res = minimize(problem, "attack", budget=100, max_iterations=3)
    assert res.evaluations == 1 + 3 and [s["r_atk"] for s in res.steps] == pytest.approx(
        [0.1 / 1.3, 0.1 / 1.3**2, 0.1 / 1.3**3])


def test_each_method_stops_when_its_radii_are_spent():
    problem = linear_problem(a=(1.0, 1.0, 1.0), x0=1.0)
    radii = Radii(r0=0.1, r_atk_min=0.05, r_dsm_min=0.05)
    for method in METHODS:
        res = minimize(problem, method, budget=10_000, radii=radii)
        assert res.stop == "radius" and res.iterations <= 3, method


# ------------------------------------------------------------------ budget, box, determinism


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_the_budget_is_never_exceeded_and_the_trajectory_is_the_running_best(
        method, attack, teacher):
    for budget in (1, 2, 3, 4, 7, 23, 150):
        for cost in (0, 1, 3):
            res = minimize(teacher, method, budget, seed=1, attack=attack, gradient_cost=cost)
            assert res.evaluations <= budget and len(res.trajectory) == res.evaluations
            assert all(b >= a for a, b in zip(res.trajectory, res.trajectory[1:]))
            assert res.value == res.trajectory[-1] == teacher.objective(res.x)
            assert res.value_at(budget) == res.value and res.value_at(0) != res.value_at(0)
            assert res.value_at(1) == teacher.objective(teacher.x0)
            if budget == 150 and method != "cdsm":
                assert res.evaluations - res.gradients * cost > 0 and res.gradients > 0


@pytest.mark.parametrize("method", METHODS)
def test_every_evaluated_point_lies_in_the_box(method):
    # the maximizer of obj = aᵀx is a corner: the steps keep pushing out of the box
    problem, seen = recording(linear_problem(a=(1.0, -2.0, 0.5), x0=0.3))
    res = minimize(problem, method, budget=300, seed=2, attack="pgd" if method == "attack"
                   else "fgsm")
    points = torch.stack(seen)
    assert bool(((points >= 0) & (points <= 1)).all())
    assert res.value > problem.objective(problem.x0)


def test_a_constraint_is_an_extreme_barrier():
    # maximize x1 + 2 x2 − x3 subject to Φ(x)_1 ≤ 0.7: x1 cannot pass 0.7
    problem = linear_problem(constraint=lambda y: y[0] - 0.7)
    for method in METHODS:
        res = minimize(problem, method, budget=400, seed=0)
        assert float(res.x[0]) <= 0.7 and res.value > 1.0 and math.isfinite(res.value)
    with pytest.raises(ValueError, match="violates the constraint"):
        minimize(linear_problem(constraint=lambda y: y[0] - 0.1), budget=10)


def test_a_seed_gives_one_run_and_another_seed_another(teacher):
    for method in METHODS:
        a = minimize(teacher, method, 300, seed=5)
        b = minimize(teacher, method, 300, seed=5)
        assert a.trajectory == b.trajectory and torch.equal(a.x, b.x) and a.steps == b.steps
    c = minimize(teacher, "cdsm", 300, seed=6)
    assert c.trajectory != minimize(teacher, "cdsm", 300, seed=5).trajectory
    starts = random_starts(teacher, 4, seed=1)
    assert torch.equal(starts[0], teacher.x0) and torch.equal(starts, random_starts(teacher, 4, 1))


def test_bad_input_is_refused_with_a_clear_message(teacher):
    with pytest.raises(ValueError, match="choose one of hybrid, attack, cdsm"):
        minimize(teacher, "nelder-mead")
    for budget in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="budget"):
            minimize(teacher, budget=budget)
    with pytest.raises(ValueError, match="outside the box"):
        minimize(teacher, x0=torch.full((20,), 1.5))
    with pytest.raises(ValueError, match="shape"):
        minimize(teacher, x0=torch.zeros(19))
    with pytest.raises(ValueError, match="same length"):
        Problem(lambda x: x, lambda y: y.sum(), torch.zeros(3), torch.ones(3), torch.zeros(4))
    with pytest.raises(ValueError, match="outside the box"):
        Problem(lambda x: x, lambda y: y.sum(), torch.zeros(3), torch.ones(3), torch.ones(3) * 2)
    with pytest.raises(ValueError, match="lower bound"):
        Problem(lambda x: x, lambda y: y.sum(), torch.ones(3), torch.ones(3), torch.ones(3))
    mismatched = Problem(teacher.phi, teacher.f, torch.zeros(5), torch.ones(5), torch.zeros(5))
    with pytest.raises(ValueError, match="phi failed"):
        minimize(mismatched, budget=10)
    with pytest.raises(ValueError, match="scalar"):
        minimize(Problem(lambda x: x, lambda y: y, torch.zeros(2), torch.ones(2),
                         torch.zeros(2)), budget=10)
    with pytest.raises(ValueError, match="choose one of fgsm, pgd"):
        minimize(teacher, attack="cw")
    with pytest.raises(ValueError, match="minimum radius"):
        Radii(r_atk_min=2.0)


# ------------------------------------------------------------------ problems


def test_the_teacher_problem_is_seeded_and_its_hidden_optimum_scores_zero(teacher):
    assert teacher.dim == 20 and teacher.objective(teacher.info["x_star"]) == 0.0
    assert teacher.info["fit_nmse"] < 0.05  # the student does fit the teacher
    again = teacher_problem(seed=0)
    assert torch.equal(again.x0, teacher.x0) and torch.equal(again.info["y_star"],
                                                             teacher.info["y_star"])
    other = teacher_problem(seed=1, samples=200, fit_steps=20)
    assert not torch.equal(other.info["x_star"], teacher.info["x_star"])


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    exp = Experiment.from_dict({
        "seed": 0, "rounds": 2, "data": {"dataset": "digits", "nodes": 4, "partition": "iid"},
        "model": {"name": "logreg"},
        "algorithm": {"name": "fedavg", "lr": 0.5, "local_steps": 20},
        "output": {"plots": False, "report": False, "checkpoint_every": 0}})
    run_dir = tmp_path_factory.mktemp("cf") / "run"
    result = run_experiment(exp, run_dir, progress=False)
    assert result.status == "completed"
    return run_dir, result


def test_the_run_model_is_the_swarm_consensus_and_a_counterfactual_flips_its_class(digits_run):
    run_dir, result = digits_run
    model, _, dataset = load_run_model(run_dir)
    accuracy = float((model(dataset.test_x).argmax(1) == dataset.test_y).float().mean())
    assert accuracy == pytest.approx(result.final["test_accuracy"], abs=1e-6)
    problem = counterfactual_from_run(run_dir, index=0, target=7)
    assert problem.info["original"] != 7 and predicted_class(problem, problem.x0) != 7
    for method in ("hybrid", "attack"):
        res = minimize(problem, method, budget=300, seed=0)
        assert predicted_class(problem, res.x) == 7
        assert 0 < float((res.x - problem.x0).norm()) < 8.0  # a change, not a new image
    with pytest.raises(ValueError, match="target"):
        counterfactual_from_run(run_dir, target=10)


# ------------------------------------------------------------------ the kind and the experiment


def test_the_blackbox_kind_records_what_minimize_computes(tmp_path, teacher):
    exp = Experiment.from_dict({"seed": 0, "rounds": 3, "kind": {
        "name": "blackbox", "problem": "teacher", "method": ["cdsm", "hybrid"], "budget": 60,
        "starts": 3}, "output": {"plots": False, "report": False}})
    result = run_experiment(exp, tmp_path / "run", progress=False)
    assert result.status == "completed"
    assert [r["evaluations"] for r in result.history] == [20, 40, 60]
    points = random_starts(teacher, 3, 0)
    direct = [minimize(teacher, "hybrid", 60, seed=s, x0=points[s]) for s in range(3)]
    assert result.history[-1]["best_value_hybrid"] == statistics.median(
        r.value_at(60) for r in direct)
    assert result.history[1]["best_value"] == result.history[1]["best_value_cdsm"]
    assert result.summary["simulation"]["hybrid"]["evaluations"] == [r.evaluations
                                                                     for r in direct]
    assert (tmp_path / "run" / "blackbox.json").is_file()


def test_the_blackbox_kind_runs_a_counterfactual_and_refuses_bad_settings(tmp_path, digits_run):
    exp = Experiment.from_dict({"seed": 0, "rounds": 2, "kind": {
        "name": "blackbox", "problem": "counterfactual", "run_dir": str(digits_run[0]),
        "target": 7, "method": "attack", "budget": 100}, "output": {"plots": False,
                                                                     "report": False}})
    result = run_experiment(exp, tmp_path / "cf", progress=False)
    assert result.status == "completed"
    assert result.summary["simulation"]["attack"]["flipped"] == [True]
    for kind, message in (({"method": "adam"}, "choose from"),
                          ({"problem": "counterfactual"}, "needs run_dir"),
                          ({"budget": 1}, "smaller than")):
        exp = Experiment.from_dict({"rounds": 2, "kind": {"name": "blackbox", **kind},
                                    "output": {"plots": False, "report": False}})
        result = run_experiment(exp, tmp_path / f"bad{len(message)}", progress=False)
        assert result.status == "failed" and message in result.summary["message"]


def test_the_example_config_is_valid():
    exp = Experiment.from_toml(REPO / "examples" / "blackbox.toml").check()
    assert exp.kind.name == "blackbox" and Experiment.from_toml_text(exp.to_toml()) == exp


def test_experiment_quick_mode_writes_its_table_and_figure(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "experiment_blackbox", REPO / "experiments" / "blackbox" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--quick", "--out", str(tmp_path)]) == 0
    import json

    result = json.loads((tmp_path / "results" / "blackbox_quick.json").read_text())
    assert set(result["table"]) == set(module.ARMS)
    assert (tmp_path / "blackbox_quick.png").is_file()
