"""Online convex optimization in the SEA model (Sachs et al. 2022): loss sequences, exact regret,
and the baseline learner of spec ``federated.md`` section 10 (e).

A sequence draws ``f_t(x) = ½‖x − c_t‖² + ξ_tᵀx`` (``kind="quadratic"``, 1-smooth and
1-strongly convex) or ``f_t(x) = ⟨c_t + ξ_t, x⟩`` (``kind="linear"``) with ``ξ_t ~ N(0, σ²I)``:
the adversary picks the centre ``c_t`` (the distribution's mean), nature the noise. Centre
schedules: ``fixed`` (i.i.d. losses, Σ² = 0), ``rotating`` (constant angular speed ω in a random
plane), ``drift`` (angle ``rate · log t``: it never stops moving, but Σ²_{1:T} stays bounded),
``switching`` (``±c`` every ``period`` rounds) and ``alternating`` (``±c`` every round: the last
gradient is then the worst hint). For both kinds ``∇F_t − ∇F_{t−1} = ±(c_t − c_{t−1})``, so
``Σ²_{1:T} = Σ_t ‖c_t − c_{t−1}‖²`` (:func:`adversarial_variation`) and
``σ²_{1:T} = T d σ²``.

>>> seq = SEASequence(dim=3, schedule="fixed", sigma=0.0, seed=0)
>>> c, xi = seq.draw(100)
>>> learner = OGD(radius=1.0, grad_bound=1.5)
>>> out = run_online(learner, c, xi, kind="quadratic", radius=1.0, checkpoints=[10, 100])
>>> out["regret"].shape, bool(out["regret"][-1] < 5.0)
(torch.Size([2]), True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

from murmura.optim.oomd import project_ball

KINDS = ("quadratic", "linear")
CENTRES = ("fixed", "rotating", "drift", "switching", "alternating")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def loss(x: Tensor, c: Tensor, xi: Tensor, kind: str = "quadratic") -> Tensor:
    """``f_t(x)`` over the last axis.

    >>> float(loss(torch.tensor([1.0, 0.0]), torch.zeros(2), torch.tensor([0.5, 0.0])))
    1.0
    """
    _check_kind(kind)
    if kind == "quadratic":
        return 0.5 * torch.sum((x - c) ** 2, dim=-1) + torch.sum(xi * x, dim=-1)
    return torch.sum((c + xi) * x, dim=-1)


def grad(x: Tensor, c: Tensor, xi: Tensor, kind: str = "quadratic") -> Tensor:
    """``∇f_t(x)``: ``x − c_t + ξ_t`` or ``c_t + ξ_t``.

    >>> grad(torch.tensor([1.0, 0.0]), torch.zeros(2), torch.tensor([0.5, 0.0]))
    tensor([1.5000, 0.0000])
    """
    _check_kind(kind)
    if kind == "quadratic":
        return x - c + xi
    return (c + xi).expand_as(x)


def adversarial_variation(c: Tensor) -> Tensor:
    """``Σ²_{1:T} = Σ_{t≥2} ‖c_t − c_{t−1}‖²`` for centres ``c`` of shape ``[T, ..., d]``.

    >>> float(adversarial_variation(torch.tensor([[1.0], [-1.0], [1.0]])))
    8.0
    """
    if c.dim() < 2:
        raise ValueError("c must be [T, ..., d]")
    return torch.sum((c[1:] - c[:-1]) ** 2, dim=(0, -1))


def stochastic_variance(sigma: float, dim: int, horizon: int) -> float:
    """``σ²_{1:T} = Σ_t E‖ξ_t‖² = T d σ²``."""
    return horizon * dim * sigma ** 2


@dataclass(frozen=True)
class SEASequence:
    """A keyed SEA sequence: ``draw(T)`` returns the centres and noise, each ``[T, dim]``."""

    dim: int = 10
    schedule: str = "fixed"
    sigma: float = 0.0
    scale: float = 0.5
    omega: float = 0.01
    rate: float = 1.0
    period: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.schedule not in CENTRES:
            raise ValueError(f"schedule must be one of {CENTRES}, got {self.schedule!r}")
        if self.dim < 2:
            raise ValueError(f"dim must be >= 2 (rotations need a plane), got {self.dim}")
        if self.sigma < 0 or self.scale < 0:
            raise ValueError("sigma and scale must be >= 0")
        if self.period < 1:
            raise ValueError(f"period must be >= 1, got {self.period}")

    def draw(self, horizon: int) -> tuple[Tensor, Tensor]:
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        gen = torch.Generator().manual_seed(self.seed)
        basis, _ = torch.linalg.qr(torch.randn(self.dim, 2, generator=gen, dtype=torch.float64))
        u, v = basis[:, 0], basis[:, 1]
        t = torch.arange(1, horizon + 1, dtype=torch.float64).unsqueeze(1)
        if self.schedule == "fixed":
            c = u.expand(horizon, -1).clone()
        elif self.schedule in ("rotating", "drift"):
            angle = self.omega * t if self.schedule == "rotating" else self.rate * torch.log(t)
            c = torch.cos(angle) * u + torch.sin(angle) * v
        else:
            block = (t - 1) // (self.period if self.schedule == "switching" else 1)
            c = torch.where(block % 2 == 0, 1.0, -1.0) * u
        xi = self.sigma * torch.randn(horizon, self.dim, generator=gen, dtype=torch.float64)
        return self.scale * c, xi


class RegretTracker:
    """Cumulative loss minus that of the best fixed decision in ``{‖u‖ ≤ radius}`` in hindsight,
    exact at every round: the comparator is ``Π(mean(c − ξ))`` for quadratics and
    ``−radius · S/‖S‖`` (``S = Σ(c + ξ)``) for linear losses. Also the dynamic regret against
    each round's own minimizer. Leading axes are independent runs.

    >>> tr = RegretTracker("linear", radius=1.0)
    >>> for g in ([1.0, 0.0], [1.0, 0.0]):
    ...     _ = tr.observe(torch.zeros(2), torch.tensor(g), torch.zeros(2))
    >>> float(tr.regret()), tr.comparator()
    (2.0, tensor([-1., -0.]))
    """

    def __init__(self, kind: str = "quadratic", radius: float | None = 1.0) -> None:
        _check_kind(kind)
        if kind == "linear" and radius is None:
            raise ValueError("linear losses need a bounded domain (radius) for a comparator")
        if radius is not None and not radius > 0:
            raise ValueError(f"radius must be > 0 or None, got {radius}")
        self.kind, self.radius = kind, radius
        self.rounds = 0
        self._loss: Tensor | None = None

    def observe(self, x: Tensor, c: Tensor, xi: Tensor) -> Tensor:
        """Record round ``t``'s play ``x`` and loss (``c``, ``ξ``); return ``f_t(x)``."""
        if x.shape[-1] != c.shape[-1] or c.shape != xi.shape:
            raise ValueError(f"shapes differ: x {tuple(x.shape)}, c {tuple(c.shape)}, "
                             f"xi {tuple(xi.shape)}")
        value = loss(x, c, xi, self.kind)
        if self.kind == "quadratic":
            lin, const = c - xi, 0.5 * torch.sum(c ** 2, dim=-1)
            best_now = project_ball(c - xi, self.radius)
            own = loss(best_now, c, xi, self.kind)
        else:
            lin, const = c + xi, torch.zeros(c.shape[:-1], dtype=c.dtype)
            own = -float(self.radius) * torch.linalg.vector_norm(c + xi, dim=-1)
        if self._loss is None:
            self._loss, self._lin = torch.zeros_like(value), torch.zeros_like(lin)
            self._const, self._own = torch.zeros_like(const), torch.zeros_like(own)
        self._loss = self._loss + value
        self._lin = self._lin + lin
        self._const = self._const + const
        self._own = self._own + own
        self.rounds += 1
        return value

    def _need(self) -> None:
        if self._loss is None:
            raise ValueError("no rounds observed yet")

    def comparator(self) -> Tensor:
        """The best fixed decision in hindsight."""
        self._need()
        if self.kind == "quadratic":
            return project_ball(self._lin / self.rounds, self.radius)
        norm = torch.linalg.vector_norm(self._lin, dim=-1, keepdim=True)
        return -float(self.radius) * self._lin / torch.clamp(norm, min=1e-300)

    def best_loss(self) -> Tensor:
        u = self.comparator()
        if self.kind == "quadratic":
            return (0.5 * self.rounds * torch.sum(u ** 2, dim=-1)
                    - torch.sum(self._lin * u, dim=-1) + self._const)
        return torch.sum(self._lin * u, dim=-1)

    def cumulative_loss(self) -> Tensor:
        self._need()
        return self._loss

    def regret(self) -> Tensor:
        """Static regret ``Σ f_t(x_t) − min_u Σ f_t(u)``."""
        return self.cumulative_loss() - self.best_loss()

    def dynamic_regret(self) -> Tensor:
        """``Σ f_t(x_t) − Σ min_u f_t(u)``."""
        return self.cumulative_loss() - self._own


class OGDState(NamedTuple):
    x: Tensor
    t: int


@dataclass(frozen=True)
class OGD:
    """Projected online gradient descent, ``x_{t+1} = Π(x_t − η_t g_t)`` with
    ``η_t = D / (G √t)``: the spec's reference baseline. Same interface as :class:`OOMD`.

    >>> st = OGD(radius=1.0, grad_bound=4.0).init(torch.zeros(2))
    >>> OGD(radius=1.0, grad_bound=4.0).update(torch.tensor([1.0, 0.0]), st)[0]
    tensor([-0.5000,  0.0000])
    """

    radius: float | None = 1.0
    grad_bound: float = 1.0
    diameter: float | None = None

    def __post_init__(self) -> None:
        if not self.grad_bound > 0:
            raise ValueError(f"grad_bound must be > 0, got {self.grad_bound}")
        if self.radius is None and self.diameter is None:
            raise ValueError("an unconstrained OGD needs a diameter (the step's scale D)")
        if self.radius is not None and not self.radius > 0:
            raise ValueError(f"radius must be > 0 or None, got {self.radius}")

    @property
    def D(self) -> float:  # noqa: N802 - the paper's symbol
        return float(self.diameter) if self.diameter is not None else 2.0 * float(self.radius)

    def step_size(self, state: OGDState) -> float:
        return self.D / (self.grad_bound * math.sqrt(state.t + 1))

    def init(self, x1: Tensor) -> OGDState:
        return OGDState(project_ball(torch.as_tensor(x1), self.radius), 0)

    def play(self, state: OGDState) -> Tensor:
        return state.x

    def update(self, grad: Tensor, state: OGDState,
               hint: Tensor | None = None) -> tuple[Tensor, OGDState]:
        if grad.shape != state.x.shape:
            raise ValueError(f"grad has shape {tuple(grad.shape)}, the iterate "
                             f"{tuple(state.x.shape)}")
        x = project_ball(state.x - self.step_size(state) * grad, self.radius)
        return x, OGDState(x, state.t + 1)


class Learner(Protocol):
    def init(self, x1: Tensor) -> Any: ...
    def play(self, state: Any) -> Tensor: ...
    def update(self, grad: Tensor, state: Any) -> tuple[Tensor, Any]: ...


def run_online(learner: Learner, c: Tensor, xi: Tensor, kind: str = "quadratic",
               radius: float | None = 1.0, checkpoints: Sequence[int] | None = None,
               x1: Tensor | None = None) -> dict[str, Tensor]:
    """Play ``learner`` on the losses ``(c_t, ξ_t)``, ``c`` and ``xi`` of shape ``[T, ..., d]``
    (leading axes after ``T``: independent runs); return the static and dynamic regret at each
    checkpoint (rounds, default ``T``), stacked on a first axis."""
    if c.shape != xi.shape or c.dim() < 2:
        raise ValueError("c and xi must share a shape [T, ..., d]")
    horizon = c.shape[0]
    points = sorted(set(checkpoints or [horizon]))
    if points[0] < 1 or points[-1] > horizon:
        raise ValueError(f"checkpoints must lie in [1, {horizon}], got {points}")
    tracker = RegretTracker(kind, radius)
    state = learner.init(torch.zeros_like(c[0]) if x1 is None else x1)
    x = learner.play(state)
    regret, dynamic = [], []
    for t in range(horizon):
        tracker.observe(x, c[t], xi[t])
        if t + 1 in points:
            regret.append(tracker.regret())
            dynamic.append(tracker.dynamic_regret())
        x, state = learner.update(grad(x, c[t], xi[t], kind), state)
    return {"checkpoints": torch.tensor(points), "regret": torch.stack(regret),
            "dynamic": torch.stack(dynamic)}
