"""Optimistic online mirror descent (Chen, Zhang, Tu, Zhao, Zhang, ICML 2023; spec
``federated.md`` section 10), Euclidean instance, as pure functions and as a torch optimizer.

One round ``t`` (``M_1 = 0``)::

    x_t     = Π_X(x̂_t − η_t M_t)        # play, using the hint
    g_t     = ∇f_t(x_t)
    x̂_{t+1} = Π_X(x̂_t − η_t g_t)        # update the lazy iterate
    M_{t+1} = g_t                        # hint = last gradient (or one the caller supplies)

with the adaptive step ``η_t = min{1/(4L), D / sqrt(δ + Σ_{s<t} ‖g_s − M_s‖²)}`` (convex,
``L``-smooth) or ``η_t = min{1/(4L), 2/(λ t)}`` (``λ``-strongly convex). Both constants are
recalled in the spec ([mem]), not read from the theorem statements. The ``A``-norm variant for
exp-concave losses (optimistic ONS) is :class:`OptimisticONS`, pure functions only.

Vectors are torch tensors; the norm, projection and step are taken over the *last* axis, so a
``[B, d]`` tensor runs ``B`` independent learners at once (what the experiment does).

>>> import torch
>>> opt = OOMD(radius=1.0, delta=1.0)
>>> state = opt.init(torch.zeros(2))
>>> x, state = opt.update(torch.tensor([1.0, 0.0]), state)   # η_1 = 2/√1, then η_2 = 2/√2
>>> x
tensor([-1.,  0.])
>>> float(opt.step_size(state))
1.414...
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

SCHEDULES = ("adaptive", "strongly_convex")


def project_ball(x: Tensor, radius: float | None) -> Tensor:
    """Euclidean projection of ``x`` (over its last axis) onto ``{‖x‖ ≤ radius}``; ``None`` is
    the whole space.

    >>> project_ball(torch.tensor([3.0, 4.0]), 1.0)
    tensor([0.6000, 0.8000])
    """
    if radius is None:
        return x
    if not radius > 0:
        raise ValueError(f"radius must be > 0 or None, got {radius}")
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return x * torch.clamp(radius / torch.clamp(norm, min=1e-300), max=1.0)


def adaptive_step(sq_sum: Tensor | float, diameter: float, delta: float = 1.0,
                  smoothness: float | None = None) -> Tensor:
    """``min{1/(4L), D / sqrt(δ + Σ_{s<t} ‖g_s − M_s‖²)}``; no cap when ``smoothness`` is None.

    >>> float(adaptive_step(3.0, diameter=2.0, delta=1.0))
    1.0
    >>> float(adaptive_step(0.0, diameter=2.0, delta=1.0, smoothness=1.0))
    0.25
    """
    if not diameter > 0:
        raise ValueError(f"diameter must be > 0, got {diameter}")
    if not delta > 0:
        raise ValueError(f"delta must be > 0 (it keeps the first step finite), got {delta}")
    eta = diameter / torch.sqrt(delta + torch.as_tensor(sq_sum, dtype=torch.float64))
    if smoothness is not None:
        if not smoothness > 0:
            raise ValueError(f"smoothness must be > 0 or None, got {smoothness}")
        eta = torch.clamp(eta, max=1.0 / (4.0 * smoothness))
    return eta


def strongly_convex_step(t: int, strong_convexity: float,
                         smoothness: float | None = None) -> float:
    """``min{1/(4L), 2/(λ t)}`` for round ``t ≥ 1`` ([mem]: the exact schedule is uncertain).

    >>> strongly_convex_step(4, 1.0), strongly_convex_step(4, 1.0, smoothness=1.0)
    (0.5, 0.25)
    """
    if t < 1:
        raise ValueError(f"rounds count from 1, got t={t}")
    if not strong_convexity > 0:
        raise ValueError(f"strong_convexity must be > 0, got {strong_convexity}")
    eta = 2.0 / (strong_convexity * t)
    if smoothness is not None:
        if not smoothness > 0:
            raise ValueError(f"smoothness must be > 0 or None, got {smoothness}")
        eta = min(eta, 1.0 / (4.0 * smoothness))
    return eta


class OOMDState(NamedTuple):
    """``x_hat`` = x̂_t, ``hint`` = M_t, ``sq_sum`` = Σ_{s<t} ‖g_s − M_s‖² (one per learner),
    ``t`` = rounds already played."""

    x_hat: Tensor
    hint: Tensor
    sq_sum: Tensor
    t: int


@dataclass(frozen=True)
class OOMD:
    """Optimistic OMD with the Euclidean mirror map on the ball ``{‖x‖ ≤ radius}``.

    ``diameter`` defaults to ``2 * radius`` (it must be given when ``radius`` is None);
    ``optimistic=False`` keeps ``M_t = 0``: the same adaptive step without a hint (plain
    adaptive OGD), the ablation of what optimism adds.
    """

    radius: float | None = 1.0
    diameter: float | None = None
    delta: float = 1.0
    smoothness: float | None = None
    schedule: str = "adaptive"
    strong_convexity: float | None = None
    optimistic: bool = True

    def __post_init__(self) -> None:
        if self.radius is not None and not self.radius > 0:
            raise ValueError(f"radius must be > 0 or None, got {self.radius}")
        if self.diameter is None and self.radius is None:
            raise ValueError("an unconstrained OOMD needs a diameter (the step's scale D)")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.schedule == "strongly_convex" and self.strong_convexity is None:
            raise ValueError("schedule='strongly_convex' needs strong_convexity")
        adaptive_step(0.0, self.D, self.delta, self.smoothness)  # validates the constants

    @property
    def D(self) -> float:  # noqa: N802 - the paper's symbol
        return float(self.diameter) if self.diameter is not None else 2.0 * float(self.radius)

    def init(self, x1: Tensor) -> OOMDState:
        """x̂_1 = Π_X(x1), M_1 = 0; leading axes of ``x1`` are independent learners."""
        x_hat = project_ball(torch.as_tensor(x1), self.radius)
        sq = torch.zeros(x_hat.shape[:-1], dtype=torch.float64)
        return OOMDState(x_hat, torch.zeros_like(x_hat), sq, 0)

    def step_size(self, state: OOMDState) -> Tensor:
        """η_t for the round about to be played (``t = state.t + 1``)."""
        if self.schedule == "strongly_convex":
            eta = strongly_convex_step(state.t + 1, float(self.strong_convexity), self.smoothness)
            return torch.full_like(state.sq_sum, eta)
        return adaptive_step(state.sq_sum, self.D, self.delta, self.smoothness)

    def play(self, state: OOMDState) -> Tensor:
        """x_t = Π_X(x̂_t − η_t M_t)."""
        eta = self.step_size(state).to(state.x_hat.dtype).unsqueeze(-1)
        return project_ball(state.x_hat - eta * state.hint, self.radius)

    def update(self, grad: Tensor, state: OOMDState,
               hint: Tensor | None = None) -> tuple[Tensor, OOMDState]:
        """Take ``g_t = ∇f_t(x_t)``; return ``(x_{t+1}, state_{t+1})``. ``hint`` is M_{t+1}
        (default ``g_t``, or 0 when not optimistic)."""
        grad = torch.as_tensor(grad, dtype=state.x_hat.dtype)
        if grad.shape != state.x_hat.shape:
            raise ValueError(f"grad has shape {tuple(grad.shape)}, the iterate "
                             f"{tuple(state.x_hat.shape)}")
        if not bool(torch.isfinite(grad).all()):
            raise ValueError("grad has non-finite entries")
        eta = self.step_size(state).to(grad.dtype).unsqueeze(-1)
        x_hat = project_ball(state.x_hat - eta * grad, self.radius)
        miss = torch.sum((grad - state.hint).to(torch.float64) ** 2, dim=-1)
        if hint is None:
            hint = grad if self.optimistic else torch.zeros_like(grad)
        elif tuple(hint.shape) != tuple(grad.shape):
            raise ValueError(f"hint has shape {tuple(hint.shape)}, grad {tuple(grad.shape)}")
        new = OOMDState(x_hat, hint.to(grad.dtype), state.sq_sum + miss, state.t + 1)
        return self.play(new), new


class OptimisticOMD(torch.optim.Optimizer):
    """:class:`OOMD` as a torch optimizer: the parameters hold the played point ``x_t``.

    Each parameter group is one learner: its parameters, flattened and concatenated, are the
    vector ``x`` (the ball, the norms and the adaptive step are over the whole group). The
    parameters are projected onto the ball at construction (x_1 = x̂_1 = Π_X(x0)). ``step``
    may be given ``hint`` (one tensor per parameter, single group only) for M_{t+1}; the
    default is the gradient just seen.

    >>> import torch
    >>> w = torch.nn.Parameter(torch.zeros(2))
    >>> opt = OptimisticOMD([w], radius=1.0)
    >>> w.grad = torch.tensor([1.0, 0.0]); opt.step()
    >>> w.data
    tensor([-1.,  0.])
    """

    def __init__(self, params: Iterable[Any], radius: float | None = 1.0,
                 diameter: float | None = None, delta: float = 1.0,
                 smoothness: float | None = None, schedule: str = "adaptive",
                 strong_convexity: float | None = None, optimistic: bool = True) -> None:
        defaults = dict(radius=radius, diameter=diameter, delta=delta, smoothness=smoothness,
                        schedule=schedule, strong_convexity=strong_convexity,
                        optimistic=optimistic)
        super().__init__(params, defaults)
        for group in self.param_groups:
            rule = self._rule(group)
            params_ = group["params"]
            with torch.no_grad():
                flat = torch.cat([p.detach().reshape(-1) for p in params_])
                st = rule.init(flat)
                self._write(params_, st.x_hat)
            self._save(params_, st)

    @staticmethod
    def _rule(group: dict[str, Any]) -> OOMD:
        return OOMD(radius=group["radius"], diameter=group["diameter"], delta=group["delta"],
                    smoothness=group["smoothness"], schedule=group["schedule"],
                    strong_convexity=group["strong_convexity"], optimistic=group["optimistic"])

    @staticmethod
    def _write(params: Sequence[Tensor], flat: Tensor) -> None:
        offset = 0
        for p in params:
            p.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()

    def _save(self, params: Sequence[Tensor], st: OOMDState) -> None:
        offset = 0
        for p in params:
            n = p.numel()
            self.state[p]["x_hat"] = st.x_hat[offset:offset + n].view_as(p).clone()
            self.state[p]["hint"] = st.hint[offset:offset + n].view_as(p).clone()
            offset += n
        self.state[params[0]]["sq_sum"] = st.sq_sum.clone()
        self.state[params[0]]["t"] = st.t

    def _load(self, params: Sequence[Tensor]) -> OOMDState:
        head = self.state[params[0]]
        return OOMDState(torch.cat([self.state[p]["x_hat"].reshape(-1) for p in params]),
                         torch.cat([self.state[p]["hint"].reshape(-1) for p in params]),
                         head["sq_sum"], int(head["t"]))

    def step_size(self, group: int = 0) -> float:
        """η_t of the round the parameters currently play, for one group."""
        g = self.param_groups[group]
        return float(self._rule(g).step_size(self._load(g["params"])))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None,
             hint: Sequence[Tensor] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if hint is not None and len(self.param_groups) != 1:
            raise ValueError("hint= needs a single parameter group")
        for group in self.param_groups:
            params_ = group["params"]
            if any(p.grad is None for p in params_):
                raise ValueError("every parameter needs a gradient (x_t is the whole group)")
            if any(p.grad.is_sparse for p in params_):
                raise ValueError("OptimisticOMD does not take sparse gradients")
            flat_grad = torch.cat([p.grad.reshape(-1) for p in params_])
            flat_hint = None
            if hint is not None:
                if len(hint) != len(params_):
                    raise ValueError(f"hint needs {len(params_)} tensors, got {len(hint)}")
                flat_hint = torch.cat([torch.as_tensor(h).reshape(-1) for h in hint])
            x, st = self._rule(group).update(flat_grad, self._load(params_), flat_hint)
            self._write(params_, x)
            self._save(params_, st)
        return loss


OptimisticOGD = OptimisticOMD  # the name spec section 10 (f) uses


def project_ball_norm(z: Tensor, a: Tensor, radius: float, iters: int = 200) -> Tensor:
    """Projection in the ``A``-norm, ``argmin_{‖y‖ ≤ radius} (y − z)ᵀ A (y − z)``, for one
    vector: ``y(μ) = (A + μI)⁻¹ A z`` with ``μ ≥ 0`` found by bisection on ``‖y(μ)‖ = radius``.

    >>> project_ball_norm(torch.tensor([2.0, 0.0]), torch.eye(2), 1.0)
    tensor([1., 0.])
    """
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    if z.dim() != 1 or a.shape != (z.numel(), z.numel()):
        raise ValueError("project_ball_norm takes one vector z [d] and A [d, d]")
    if float(torch.linalg.vector_norm(z)) <= radius:
        return z.clone()
    lam, q = torch.linalg.eigh(a.to(torch.float64))
    w = q.T @ z.to(torch.float64)
    lo, hi = 0.0, float(lam.max()) * (float(torch.linalg.vector_norm(z)) / radius - 1.0)
    for _ in range(iters):  # ‖y(μ)‖ decreases in μ and reaches radius by hi
        mid = 0.5 * (lo + hi)
        if float(torch.linalg.vector_norm(lam * w / (lam + mid))) > radius:
            lo = mid
        else:
            hi = mid
    return (q @ (lam * w / (lam + hi))).to(z.dtype)


class ONSState(NamedTuple):
    x_hat: Tensor
    hint: Tensor
    a: Tensor  # A_{t-1} = I + (β/2) Σ_{s<t} (g_s − M_s)(g_s − M_s)ᵀ
    t: int


@dataclass(frozen=True)
class OptimisticONS:
    """Optimistic online Newton step for ``α``-exp-concave losses on ``{‖x‖ ≤ radius}``
    ([mem] constants, spec section 10 (b)): ``β = ½ min{1/(4GD), α}``,
    ``x_t = Π^{A_{t−1}}(x̂_t − A_{t−1}⁻¹ M_t)``, ``x̂_{t+1} = Π^{A_t}(x̂_t − A_t⁻¹ g_t)``,
    ``M_{t+1} = g_t``. One learner (a ``[d]`` vector).
    """

    alpha: float
    grad_bound: float
    radius: float = 1.0

    def __post_init__(self) -> None:
        for name in ("alpha", "grad_bound", "radius"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")

    @property
    def beta(self) -> float:
        return 0.5 * min(1.0 / (4.0 * self.grad_bound * 2.0 * self.radius), self.alpha)

    def init(self, x1: Tensor) -> ONSState:
        x1 = torch.as_tensor(x1, dtype=torch.float64)
        if x1.dim() != 1:
            raise ValueError("OptimisticONS runs one learner: x1 must be [d]")
        x_hat = project_ball(x1, self.radius)
        return ONSState(x_hat, torch.zeros_like(x_hat), torch.eye(x_hat.numel(),
                                                                   dtype=torch.float64), 0)

    def play(self, state: ONSState) -> Tensor:
        z = state.x_hat - torch.linalg.solve(state.a, state.hint)
        return project_ball_norm(z, state.a, self.radius)

    def update(self, grad: Tensor, state: ONSState,
               hint: Tensor | None = None) -> tuple[Tensor, ONSState]:
        grad = torch.as_tensor(grad, dtype=torch.float64)
        if grad.shape != state.x_hat.shape:
            raise ValueError(f"grad has shape {tuple(grad.shape)}, the iterate "
                             f"{tuple(state.x_hat.shape)}")
        miss = grad - state.hint
        a = state.a + 0.5 * self.beta * torch.outer(miss, miss)
        x_hat = project_ball_norm(state.x_hat - torch.linalg.solve(a, grad), a, self.radius)
        new = ONSState(x_hat, grad if hint is None else torch.as_tensor(hint, dtype=grad.dtype),
                       a, state.t + 1)
        return self.play(new), new


__all__ = ["OOMD", "ONSState", "OOMDState", "OptimisticOGD", "OptimisticOMD", "OptimisticONS",
           "adaptive_step", "project_ball", "project_ball_norm", "strongly_convex_step"]
