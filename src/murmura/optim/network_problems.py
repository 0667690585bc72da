"""Problems posed through a trained network: maximize ``obj(x) = f(Φ(x))`` over a box, with an
optional constraint ``c(Φ(x)) ≤ 0`` (spec ``federated.md`` section 14).

:class:`Problem` holds ``phi`` (an ``nn.Module`` or a differentiable callable ``R^n → R^m``
taking one point), the smooth goal ``f`` (``R^m →`` a scalar tensor, differentiable in torch),
the box ``[lower, upper]``, a start ``x0`` and the starting radius ``r0``. The constraint, when
given, is an *extreme barrier*: an infeasible point's objective is ``−inf``, so no step ever
accepts it (the classic cDSM treatment; the official code instead reformulates every problem
into an unconstrained ``f̃(Φ̃(x))`` by hand, problem by problem). The attack direction follows
``∇f`` only: it does not see ``c``, its trial point is barred like any other.

Two problems:

* :func:`teacher_problem`: the spec's pilot. A random teacher network ``R^20 → R^8``, a ReLU MLP
  ``Φ`` fitted to it on uniform samples of ``[0, 1]^20``, ``f(y) = −‖y − y*‖²`` with
  ``y* = Φ(x*)`` for a hidden ``x* ∈ [0, 1]^20`` (so ``max obj = 0``, at ``x*`` at least).
* :func:`counterfactual_problem` / :func:`counterfactual_from_run`: the smallest change to an
  input that a trained classifier puts in a ``target`` class, as the official code's
  reformulation would pose it: ``Φ̃(x) = (logits(x), x)`` and
  ``f(z, x) = −softplus(κ − m(z)) − λ‖x − x_orig‖²`` with the smooth target margin
  ``m(z) = z_t − logsumexp_{j≠t} z_j`` (positive only where ``t`` is predicted). The reward
  saturates once ``t`` leads by ``κ`` (Carlini and Wagner's hinge, smoothed), so past the flip
  only the distance counts: a margin without the cap would pay for moving ever further.

>>> p = teacher_problem(seed=0, samples=64, fit_steps=5)
>>> p.dim, tuple(p.phi(p.x0).shape), p.objective(p.info["x_star"]) == 0.0
(20, (8,), True)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from murmura.runner.trained import load_run_model

Tensor = torch.Tensor


@dataclass(frozen=True, eq=False)  # tensors and callables: identity, not value, equality
class Problem:
    """``max f(Φ(x))`` s.t. ``lower ≤ x ≤ upper`` (and ``c(Φ(x)) ≤ 0``): module docstring.
    ``dtype`` is what ``phi`` takes (points are float64 elsewhere); ``info`` carries what a
    problem wants to report (the hidden optimum, the original input, ...)."""

    phi: Callable[[Tensor], Tensor]
    f: Callable[[Tensor], Tensor]
    lower: Tensor
    upper: Tensor
    x0: Tensor
    constraint: Callable[[Tensor], Tensor] | None = None
    r0: float = 0.1
    dtype: torch.dtype = torch.float64
    name: str = "problem"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key in ("lower", "upper", "x0"):
            value = getattr(self, key)
            if not isinstance(value, Tensor) or value.dim() != 1:
                raise ValueError(f"problem: {key} must be a 1-D tensor [n], got "
                                 f"{getattr(value, 'shape', type(value).__name__)}")
            object.__setattr__(self, key, value.detach().to(torch.float64))
        n = self.lower.numel()
        if self.upper.numel() != n or self.x0.numel() != n:
            raise ValueError(f"problem: lower {tuple(self.lower.shape)}, upper "
                             f"{tuple(self.upper.shape)} and x0 {tuple(self.x0.shape)} must "
                             "have the same length n (the input dimension)")
        if not bool((self.lower < self.upper).all()):
            raise ValueError("problem: every lower bound must be < its upper bound")
        check_in_box(self.x0, self.lower, self.upper, "problem: x0")
        if not (isinstance(self.r0, (int, float)) and self.r0 > 0 and math.isfinite(self.r0)):
            raise ValueError(f"problem: r0 must be a positive number, got {self.r0!r}")

    @property
    def dim(self) -> int:
        return self.lower.numel()

    def clip(self, x: Tensor) -> Tensor:
        return torch.clamp(x, self.lower, self.upper)

    def network(self, x: Tensor) -> Tensor:
        """``Φ(x)`` with ``x`` in ``phi``'s dtype."""
        return self.phi(x.to(self.dtype))

    def goal(self, x: Tensor) -> Tensor:
        """``f ∘ Φ`` as a differentiable function of a float64 ``x`` (the attack's view)."""
        return self.f(self.network(x))

    def objective(self, x: Tensor) -> float:
        """``f(Φ(x))``, or ``−inf`` where ``c(Φ(x)) > 0`` (extreme barrier)."""
        with torch.no_grad():
            y = self.network(x)
            if self.constraint is not None and bool((self.constraint(y) > 0).any()):
                return -math.inf
            value = self.f(y)
        if not isinstance(value, Tensor) or value.numel() != 1:
            raise ValueError(f"problem: f must return a scalar tensor, got "
                             f"{getattr(value, 'shape', type(value).__name__)}")
        return float(value)


def check_in_box(x: Tensor, lower: Tensor, upper: Tensor, what: str) -> None:
    if tuple(x.shape) != tuple(lower.shape):
        raise ValueError(f"{what} has shape {tuple(x.shape)}; the box is {tuple(lower.shape)}")
    if not bool(((x >= lower) & (x <= upper)).all()):
        raise ValueError(f"{what} lies outside the box [lower, upper]: start inside it (e.g. "
                         "problem.clip(x0))")


# ---------------------------------------------------------------------------------------------
# the spec's pilot


def _mlp(sizes: list[int], activation: type[nn.Module], generator: torch.Generator) -> nn.Module:
    layers: list[nn.Module] = []
    for k, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        linear = nn.Linear(fan_in, fan_out, dtype=torch.float64)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(fan_out, fan_in, generator=generator,
                                            dtype=torch.float64) * math.sqrt(2.0 / fan_in))
            linear.bias.copy_(torch.randn(fan_out, generator=generator, dtype=torch.float64)
                              * 0.1)
        layers += [linear] + ([activation()] if k < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


@functools.lru_cache(maxsize=16)
def _fitted_student(seed: int, dim: int, out_dim: int, hidden: int, samples: int,
                    fit_steps: int) -> tuple[nn.Module, Tensor, Tensor, float]:
    g = torch.Generator().manual_seed(int(seed) * 7919 + 14)
    teacher = _mlp([dim, 32, out_dim], nn.Tanh, g)
    student = _mlp([dim, hidden, hidden, out_dim], nn.ReLU, g)
    X = torch.rand(samples, dim, generator=g, dtype=torch.float64)
    with torch.no_grad():
        Y = teacher(X)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: threads only contend (30x slower on a busy CPU)
    try:
        for _ in range(fit_steps):
            optimizer.zero_grad()
            loss = ((student(X) - Y) ** 2).mean()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    student.requires_grad_(False).eval()
    x_star = torch.rand(dim, generator=g, dtype=torch.float64)
    x0 = torch.rand(dim, generator=g, dtype=torch.float64)
    with torch.no_grad():
        fit = float(((student(X) - Y) ** 2).mean() / Y.var())
    return student, x_star, x0, fit


def teacher_problem(seed: int = 0, dim: int = 20, out_dim: int = 8, hidden: int = 64,
                    samples: int = 2000, fit_steps: int = 400, r0: float = 0.1) -> Problem:
    """The spec's pilot (module docstring): ``Φ`` a ReLU MLP ``dim → hidden → hidden → out_dim``
    fitted by full-batch Adam (``fit_steps`` steps, lr 1e-2) to a random tanh teacher
    ``dim → 32 → out_dim`` on ``samples`` uniform points; ``x*`` and ``x0`` uniform in the box
    ``[0, 1]^dim``; all drawn from ``seed``. ``info``: ``x_star``, ``y_star``, ``fit_nmse``
    (the student's error over the teacher's output variance)."""
    for name, value in (("dim", dim), ("out_dim", out_dim), ("hidden", hidden),
                        ("samples", samples), ("fit_steps", fit_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"teacher_problem: {name} must be a positive integer, got {value!r}")
    student, x_star, x0, fit = _fitted_student(int(seed), dim, out_dim, hidden, samples,
                                               fit_steps)
    with torch.no_grad():
        y_star = student(x_star)

    def f(y: Tensor) -> Tensor:
        return -((y - y_star) ** 2).sum()

    return Problem(student, f, torch.zeros(dim), torch.ones(dim), x0.clone(), r0=r0,
                   name="teacher", info={"x_star": x_star, "y_star": y_star, "fit_nmse": fit,
                                         "seed": int(seed)})


# ---------------------------------------------------------------------------------------------
# counterfactuals


def counterfactual_problem(model: Callable[[Tensor], Tensor], x_orig: Tensor, target: int,
                           distance_weight: float = 0.1, lower: float = 0.0, upper: float = 1.0,
                           input_shape: tuple[int, ...] | None = None, r0: float = 0.1,
                           confidence: float = 1.0, dtype: torch.dtype = torch.float32
                           ) -> Problem:
    """Move ``x_orig`` (flat, in the box ``[lower, upper]^n``) until ``model`` (a classifier
    taking a batch ``[1, *input_shape]``) predicts ``target``, paying ``distance_weight`` per
    unit of squared distance: ``Φ̃(x) = (logits(x), x)``, ``f = −softplus(κ − m) −
    λ‖x − x_orig‖²`` with ``κ = confidence`` (module docstring). ``info``: ``x_orig``,
    ``target``, ``original`` (the class predicted at ``x_orig``)."""
    x_orig = torch.as_tensor(x_orig, dtype=torch.float64).reshape(-1)
    shape = tuple(input_shape) if input_shape is not None else (x_orig.numel(),)
    if math.prod(shape) != x_orig.numel():
        raise ValueError(f"counterfactual: input_shape {shape} does not hold "
                         f"{x_orig.numel()} values")
    if not distance_weight >= 0:
        raise ValueError(f"counterfactual: distance_weight must be ≥ 0, got {distance_weight!r}")
    with torch.no_grad():
        logits = model(x_orig.to(dtype).view(1, *shape))[0]
    classes = logits.numel()
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < classes:
        raise ValueError(f"counterfactual: target must be a class index in [0, {classes}), "
                         f"got {target!r}")
    others = torch.arange(classes) != target
    anchor = x_orig.to(dtype)

    def phi(x: Tensor) -> Tensor:
        return torch.cat([model(x.reshape(1, *shape))[0], x])

    def f(y: Tensor) -> Tensor:
        z, x = y[:classes], y[classes:]
        margin = z[target] - torch.logsumexp(z[others], 0)
        return (-torch.nn.functional.softplus(confidence - margin)
                - distance_weight * ((x - anchor) ** 2).sum())

    n = x_orig.numel()
    return Problem(phi, f, torch.full((n,), float(lower)), torch.full((n,), float(upper)),
                   x_orig.clone(), r0=r0, dtype=dtype, name="counterfactual",
                   info={"x_orig": x_orig, "target": target, "classes": classes,
                         "original": int(logits.argmax()), "input_shape": shape,
                         "confidence": confidence, "distance_weight": distance_weight})


def predicted_class(problem: Problem, x: Tensor) -> int:
    """The class a counterfactual problem's model predicts at ``x``."""
    with torch.no_grad():
        return int(problem.network(x)[: problem.info["classes"]].argmax())


def counterfactual_from_run(run_dir: str | Path, index: int = 0, target: int | None = None,
                            node: int | None = None, distance_weight: float = 0.1,
                            r0: float = 0.1, confidence: float = 1.0) -> Problem:
    """:func:`counterfactual_problem` on the run's model (:func:`load_run_model`) from test
    sample ``index``; ``target`` defaults to the predicted class + 1 (mod the classes). The box
    is the dataset's range (``[0, 1]`` for digits and Fashion-MNIST)."""
    model, _, dataset = load_run_model(run_dir, node)
    if not 0 <= index < dataset.num_test:
        raise ValueError(f"index {index!r}: the test set has samples 0..{dataset.num_test - 1}")
    x = dataset.test_x[index]
    shape = tuple(dataset.feature_shape)
    with torch.no_grad():
        original = int(model(x.view(1, *shape))[0].argmax())
    target = (original + 1) % dataset.num_classes if target is None else target
    low, high = float(dataset.train_x.min()), float(dataset.train_x.max())
    problem = counterfactual_problem(model, x.reshape(-1), target, distance_weight, low, high,
                                     shape, r0, confidence)
    problem.info.update(index=index, label=int(dataset.test_y[index]))
    return problem


__all__ = ["Problem", "check_in_box", "counterfactual_from_run", "counterfactual_problem",
           "load_run_model", "predicted_class", "teacher_problem"]
