"""Optimization through a trained network by directional attacks and covering direct search.

Bouchet and Vidal, "Optimization by Directional Attacks: Solving Problems with Neural Network
Surrogates" (arXiv 2510.01461); official code github.com/PierreYvesBouchet/
Optimization-by-Directional-Attacks (``src/optimization_algorithms/hybrid_method.py``,
``direct_search_method.py``); spec ``federated.md`` section 14. :func:`minimize` *maximizes*
``obj(x) = f(Φ(x))`` over a box (a :class:`~murmura.optim.network_problems.Problem`), one
iteration at a time (``x`` is always the best point seen)::

    hybrid   d_A = A(x, r_atk)                                   (murmura.optim.directional)
             sufficient increase ((obj(x+d_A) − obj(x)) / (|obj(x)| + 1e−10) ≥ τ):
                 x ← x + d_A, r_atk ×1.3, skip the direct search this iteration
             else: x ← x + d_A if it increased (r_atk ×1.1), r_atk ÷1.3 if not;
                 covering, then search, then poll (first success wins)   (murmura.optim.cdsm)
    attack   the attack step and its radius rules only
    cdsm     covering, search, poll only

Stops on the budget, after ``max_iterations``, or when the radii are spent (hybrid:
``r_dsm ≤ r_dsm_min`` and ``r_atk ≤ r_atk_min``; attack: ``r_atk ≤ r_atk_min``; cdsm:
``r_dsm ≤ r_dsm_min``; at ``r_dsm ≤ r_dsm_min`` search and poll are skipped, as in the code).

**Budget.** It counts evaluations of ``obj``: one per ``Φ`` forward pass at a trial point
(the start included). An attack's forward + backward pass at ``x`` costs ``gradient_cost``
evaluations (default 1; FGSM takes one pass, PGD ``steps``); ``Result.gradients`` counts the
passes separately, and ``gradient_cost=0`` is the official code's accounting (attacks free).
A trial point the box clips back onto ``x`` is not evaluated. No step starts that the budget
cannot finish, so ``evaluations ≤ budget`` always. Trial points are clipped into the box; a
constraint is an extreme barrier (``Problem``). Every random draw comes from a
``torch.Generator`` seeded with ``seed``.

>>> from murmura.optim.network_problems import teacher_problem
>>> p = teacher_problem(seed=0, samples=64, fit_steps=5)
>>> res = minimize(p, "hybrid", budget=60, seed=0)
>>> res.evaluations <= 60, res.value_at(60) == res.value >= res.value_at(1) == p.objective(p.x0)
(True, True)
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from murmura.optim.cdsm import (
    Radii,
    attack_radius_after,
    covering_direction,
    dsm_radius_after,
    poll_directions,
    search_direction,
    sufficient_increase,
)
from murmura.optim.directional import Attack
from murmura.optim.network_problems import (
    Problem,
    check_in_box,
    counterfactual_from_run,
    predicted_class,
    teacher_problem,
)

Tensor = torch.Tensor
METHODS = ("hybrid", "attack", "cdsm")


class OutOfBudget(Exception):
    """The next step would spend more evaluations than are left."""


class Oracle:
    """``obj`` at trial points, counted: ``evaluations`` (the budget's unit), ``gradients``
    (attack passes), the best point so far, and ``trajectory[k − 1]``: the best ``obj`` after
    ``k`` evaluations."""

    def __init__(self, problem: Problem, budget: int, gradient_cost: int) -> None:
        self.problem, self.budget, self.gradient_cost = problem, budget, gradient_cost
        self.evaluations = self.gradients = 0
        self.trajectory: list[float] = []
        self.best_value, self.best_x = -math.inf, problem.x0

    def afford(self, cost: int) -> None:
        if self.evaluations + cost > self.budget:
            raise OutOfBudget

    def __call__(self, x: Tensor) -> float:
        self.afford(1)
        value = self.problem.objective(x)
        self.evaluations += 1
        if value > self.best_value:
            self.best_value, self.best_x = value, x
        self.trajectory.append(self.best_value)
        return value

    def charge_gradients(self, passes: int) -> None:
        cost = passes * self.gradient_cost
        self.afford(cost)
        self.evaluations += cost
        self.gradients += passes
        self.trajectory.extend([self.best_value] * cost)


@dataclass(frozen=True)
class SearchState:
    """The iterate and its value, both radii, and the searches done (the search radius grows
    as ``r0 √(searches + 1)``)."""

    x: Tensor
    value: float
    r_atk: float
    r_dsm: float
    searches: int = 0
    iteration: int = 0


def _trial(state: SearchState, d: Tensor, problem: Problem, oracle: Oracle
           ) -> tuple[Tensor, float]:
    point = problem.clip(state.x + d)
    if torch.equal(point, state.x):  # the box took the whole move: nothing new to evaluate
        return point, state.value
    return point, oracle(point)


def attack_step(state: SearchState, problem: Problem, oracle: Oracle, attack: Attack,
                radii: Radii) -> tuple[SearchState, str]:
    """``x + A(x, r_atk)`` and the attack radius rule: outcome ``sufficient``, ``increase`` or
    ``failure``."""
    oracle.afford(attack.gradients * oracle.gradient_cost + 1)
    d, passes = attack(problem.network, problem.f, state.x, state.r_atk, problem.lower,
                       problem.upper)
    oracle.charge_gradients(passes)
    point, value = _trial(state, d, problem, oracle)
    if sufficient_increase(value, state.value, radii.tau):
        outcome = "sufficient"
    else:
        outcome = "increase" if value > state.value else "failure"
    r_atk = attack_radius_after(state.r_atk, outcome, radii.r_atk_min, radii.r_atk_max)
    if outcome == "failure":
        return replace(state, r_atk=r_atk), outcome
    r_dsm = state.r_dsm
    if outcome == "sufficient" and r_dsm <= radii.r_dsm_min:
        r_dsm = 2.0 * r_dsm  # the attack made progress: give the poll room again
    return replace(state, x=point, value=value, r_atk=r_atk, r_dsm=r_dsm), outcome


def dfo_steps(state: SearchState, problem: Problem, oracle: Oracle, generator: torch.Generator,
              radii: Radii) -> tuple[SearchState, str]:
    """Covering, then search, then the opportunistic poll; the first success wins. Status:
    ``covering``, ``search``, ``poll`` or ``failure``."""
    n, dtype = problem.dim, torch.float64
    point, value = _trial(state, covering_direction(n, radii.r0, generator, dtype), problem,
                          oracle)
    if value > state.value:
        return replace(state, x=point, value=value), "covering"
    searches = state.searches + 1
    if state.r_dsm > radii.r_dsm_min:
        radius = min(radii.r_dsm_max, radii.r0 * math.sqrt(searches))
        point, value = _trial(state, search_direction(n, radius, generator, dtype), problem,
                              oracle)
        grown = dsm_radius_after(state.r_dsm, True, radii.r_dsm_min, radii.r_dsm_max)
        if value > state.value:
            return replace(state, x=point, value=value, r_dsm=grown, searches=searches), "search"
        for d in poll_directions(n, state.r_dsm, generator, dtype):
            point, value = _trial(state, d, problem, oracle)
            if value > state.value:
                return replace(state, x=point, value=value, r_dsm=grown,
                               searches=searches), "poll"
    shrunk = dsm_radius_after(state.r_dsm, False, radii.r_dsm_min, radii.r_dsm_max)
    return replace(state, r_dsm=shrunk, searches=searches), "failure"


def _iterate(method: str, state: SearchState, problem: Problem, oracle: Oracle, attack: Attack,
             generator: torch.Generator, radii: Radii) -> tuple[SearchState, str]:
    if method == "cdsm":
        return dfo_steps(state, problem, oracle, generator, radii)
    state, outcome = attack_step(state, problem, oracle, attack, radii)
    if method == "attack":
        return state, f"attack-{outcome}"
    if outcome == "sufficient":
        return state, "attack-sufficient+skipped"
    state, status = dfo_steps(state, problem, oracle, generator, radii)
    return state, f"attack-{outcome}+{status}"


def _radii_spent(method: str, state: SearchState, radii: Radii) -> bool:
    atk, dsm = state.r_atk <= radii.r_atk_min, state.r_dsm <= radii.r_dsm_min
    return {"hybrid": atk and dsm, "attack": atk, "cdsm": dsm}[method]


@dataclass
class Result:
    """One run: the best point ``x`` and its ``value``, ``trajectory[k − 1]`` the best ``obj``
    after ``k`` evaluations, the counts, why it stopped (``budget``, ``radius``,
    ``iterations``) and one entry per iteration in ``steps`` (status, evaluations after it,
    value, radii)."""

    method: str
    params: dict[str, Any]
    x: Tensor
    value: float
    trajectory: list[float]
    evaluations: int
    gradients: int
    iterations: int
    stop: str
    steps: list[dict[str, Any]] = field(default_factory=list)

    def value_at(self, budget: int) -> float:
        """The best ``obj`` within ``budget`` evaluations (a run that stopped early keeps its
        final value); NaN below one evaluation."""
        if budget < 1 or not self.trajectory:
            return math.nan
        return self.trajectory[min(int(budget), len(self.trajectory)) - 1]

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "params": self.params, "x": self.x.tolist(),
                "value": self.value, "trajectory": self.trajectory,
                "evaluations": self.evaluations, "gradients": self.gradients,
                "iterations": self.iterations, "stop": self.stop, "steps": self.steps}


def minimize(problem: Problem, method: str = "hybrid", budget: int = 2000, seed: int = 0,
             x0: Tensor | None = None, attack: str | Attack = "fgsm", radii: Radii | None = None,
             gradient_cost: int = 1, max_iterations: int | None = None) -> Result:
    """Maximize ``problem``'s ``f(Φ(x))`` with ``method`` (``hybrid``, ``attack`` or ``cdsm``)
    within ``budget`` evaluations (module docstring), from ``x0`` (default ``problem.x0``).
    ``attack``: ``"fgsm"``, ``"pgd"`` or an :class:`~murmura.optim.directional.Attack`;
    ``radii``: :class:`~murmura.optim.cdsm.Radii` (default: the spec's, ``r0 = problem.r0``).
    (The name follows scipy's; the direction is ascent, as in the paper.)"""
    if method not in METHODS:
        raise ValueError(f"method {method!r}: choose one of {', '.join(METHODS)}")
    for name, value, low in (("budget", budget, 1), ("gradient_cost", gradient_cost, 0),
                             ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"minimize: {name} must be an integer ≥ {low}, got {value!r}")
    if max_iterations is not None and (not isinstance(max_iterations, int) or max_iterations < 1):
        raise ValueError(f"minimize: max_iterations must be a positive integer or None, got "
                         f"{max_iterations!r}")
    if not isinstance(problem, Problem):
        raise ValueError(f"minimize: problem must be a murmura.optim.Problem, got "
                         f"{type(problem).__name__}")
    attack = Attack(attack) if isinstance(attack, str) else attack
    radii = radii or Radii(r0=problem.r0)
    x = problem.x0 if x0 is None else torch.as_tensor(x0, dtype=torch.float64)
    check_in_box(x, problem.lower, problem.upper, "minimize: x0")
    generator = torch.Generator().manual_seed(seed)
    oracle = Oracle(problem, budget, gradient_cost)
    try:
        value = oracle(x)
    except RuntimeError as error:
        raise ValueError(f"problem.phi failed on one point of shape ({problem.dim},): {error}; "
                         "phi must take a point of the box's dimension and f its output") from None
    if value == -math.inf:
        raise ValueError("minimize: x0 violates the constraint c(Φ(x0)) ≤ 0; start from a "
                         "feasible point")
    state = SearchState(x, value, radii.r0, radii.r0)
    steps: list[dict[str, Any]] = []
    stop = "budget"
    try:
        while True:
            if max_iterations is not None and state.iteration >= max_iterations:
                stop = "iterations"
                break
            state, status = _iterate(method, state, problem, oracle, attack, generator, radii)
            state = replace(state, iteration=state.iteration + 1)
            steps.append({"status": status, "evaluations": oracle.evaluations,
                          "value": state.value, "r_atk": state.r_atk, "r_dsm": state.r_dsm})
            if _radii_spent(method, state, radii):
                stop = "radius"
                break
    except OutOfBudget:
        pass
    params = {"budget": budget, "seed": seed, "attack": attack.kind,
              "gradient_cost": gradient_cost, **{k: getattr(radii, k) for k in (
                  "r0", "r_atk_min", "r_atk_max", "r_dsm_min", "r_dsm_max", "tau")}}
    return Result(method, params, oracle.best_x, oracle.best_value, oracle.trajectory,
                  oracle.evaluations, oracle.gradients, state.iteration, stop, steps)


def random_starts(problem: Problem, count: int, seed: int = 0) -> Tensor:
    """``[count, n]`` starting points: ``problem.x0`` first, the others uniform in the box."""
    generator = torch.Generator().manual_seed(int(seed) * 7 + 3)
    u = torch.rand(count, problem.dim, generator=generator, dtype=torch.float64)
    points = problem.lower + u * (problem.upper - problem.lower)
    points[0] = problem.x0
    return points


def _register_kind() -> None:
    from murmura.runner.kinds import KINDS

    @KINDS.register("blackbox", "optimization through a trained network (directional attacks, "
                    "cDSM, their hybrid): best objective against evaluations", overwrite=True)
    def blackbox_kind(context, problem: str = "teacher", method: str | list[str] = "hybrid",
                      budget: int = 500, starts: int = 1, attack: str = "fgsm", dim: int = 20,
                      r0: float = 0.1, gradient_cost: int = 1, run_dir: str | None = None,
                      index: int = 0, target: int | None = None, distance_weight: float = 0.1,
                      confidence: float = 1.0):
        """``method`` (one or a list) from ``starts`` points (the problem's start, then uniform
        ones) on ``problem``: ``teacher`` (:func:`teacher_problem`, seeded by the experiment)
        or ``counterfactual`` (:func:`counterfactual_from_run` on ``run_dir``, test sample
        ``index``). One record per checkpoint (``rounds`` of them, evenly spaced over
        ``budget``): the median over starts of the best value (``best_value``: the first
        method; ``best_value_<method>`` each). Writes ``blackbox.json`` (every run)."""
        import json

        methods = [method] if isinstance(method, str) else list(method)
        if not methods or any(m not in METHODS for m in methods):
            raise ValueError(f"method {method!r}: choose from {', '.join(METHODS)}")
        if isinstance(starts, bool) or starts < 1:
            raise ValueError(f"starts must be a positive integer, got {starts!r}")
        checkpoints = context.experiment.rounds
        if budget < checkpoints:
            raise ValueError(f"budget {budget} is smaller than the {checkpoints} checkpoints "
                             "(rounds)")
        if problem == "teacher":
            task = teacher_problem(seed=context.seed, dim=dim, r0=r0)
        elif problem == "counterfactual":
            if run_dir is None:
                raise ValueError("problem 'counterfactual' needs run_dir: a murmura run "
                                 "directory with checkpoints")
            task = counterfactual_from_run(run_dir, index, target, r0=r0,
                                           distance_weight=distance_weight,
                                           confidence=confidence)
        else:
            raise ValueError(f"problem {problem!r}: choose teacher or counterfactual")
        points = random_starts(task, starts, context.seed)
        runs = {m: [minimize(task, m, budget, seed=context.seed * 1000 + s, x0=points[s],
                             attack=attack, gradient_cost=gradient_cost)
                    for s in range(starts)] for m in methods}
        for k in range(checkpoints):
            spent = round(budget * (k + 1) / checkpoints)
            medians = {m: statistics.median(r.value_at(spent) for r in rs)
                       for m, rs in runs.items()}
            record = {"round": k, "evaluations": spent, "best_value": medians[methods[0]]}
            if len(methods) > 1:
                record.update({f"best_value_{m}": v for m, v in medians.items()})
            yield record
        (context.run_dir / "blackbox.json").write_text(json.dumps(
            {m: [r.to_dict() for r in rs] for m, rs in runs.items()}))
        summary: dict[str, Any] = {"problem": problem, "budget": budget, "starts": starts}
        for m, rs in runs.items():
            row = {"median_best": statistics.median(r.value for r in rs),
                   "best": max(r.value for r in rs),
                   "evaluations": [r.evaluations for r in rs],
                   "gradients": [r.gradients for r in rs], "stops": [r.stop for r in rs]}
            if problem == "counterfactual":
                row["flipped"] = [predicted_class(task, r.x) == task.info["target"] for r in rs]
                row["distance"] = [float((r.x - task.info["x_orig"]).norm()) for r in rs]
            summary[m] = row
        if problem == "counterfactual":
            summary.update(original=task.info["original"], target=task.info["target"])
        else:
            summary["fit_nmse"] = task.info["fit_nmse"]
        return summary


__all__ = ["METHODS", "Oracle", "OutOfBudget", "Result", "SearchState", "attack_step",
           "dfo_steps", "minimize", "random_starts"]

_register_kind()
