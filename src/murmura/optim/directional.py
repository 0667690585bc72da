"""The directional attack operator ``A(x, r)`` of optimization by directional attacks.

Bouchet and Vidal, "Optimization by Directional Attacks: Solving Problems with Neural Network
Surrogates" (arXiv 2510.01461); spec ``federated.md`` section 14 (b). To increase
``f(Φ(x))`` the attack looks for a bounded move that pushes the network's output along the
goal's gradient ``u = ∇f(Φ(x))``::

    A(x, r) ≈ argmax_{‖d‖∞ ≤ r} ⟨u, Φ(x + d) − Φ(x)⟩
    FGSM    d = r · sign(J_Φ(x)ᵀ u)                    (one vector-Jacobian product)
    PGD     d ← Π(d + α · sign(J_Φ(x + d)ᵀ u)), d₀ = 0  (u fixed at x; Π: onto the ∞-ball of
                                                        radius r and the box)

Written natively with :func:`torch.func.vjp` (``torchattacks``, which the official code wraps,
needs ``torchvision``). How it differs from the official code
(``src/attack_algorithms/Phi_xr_model.py``, ``tools/gateway_torchattacks.py``): the code runs
torchattacks' *targeted* FGSM/PGD on the wrapper ``δ ↦ Φ(x + 2r(δ − ½)) − Φ(x)`` from
``δ₀ = ½`` with ``eps = 0.5`` and ``u`` as the target. torchattacks' targeted loss is the cross
entropy with ``u`` as a soft target, whose logit gradient at ``δ₀`` (output 0, softmax uniform)
is ``(Σu/m)·1 − u``; the code's FGSM move is therefore ``r · sign(J_Φ(x)ᵀ (u − mean(u)·1))``:
the clean form with ``u`` centred (cross entropy cannot see a shift of all outputs). The two
agree when ``Σu = 0``; ``centered=True`` reproduces the code's move. The code's PGD uses
torchattacks' defaults (10 steps of ``α = 2/255`` in δ-space, i.e. ``4r/255`` in x-space, so it
never travels more than 16% of ``r``) on the CE loss at ``x + d``; here PGD takes ``steps`` steps
of ``α = 2.5 r / steps`` (Madry et al.'s rule) on the linear target ``⟨u, Φ(x + d)⟩``.

>>> import torch
>>> A = torch.tensor([[1.0, -2.0], [0.5, 0.0]], dtype=torch.float64)
>>> phi = lambda x: A @ x
>>> f = lambda y: y.sum()                 # u = (1, 1), Aᵀu = (1.5, −2)
>>> d, grads = Attack("fgsm")(phi, f, torch.zeros(2, dtype=torch.float64), 0.1)
>>> d.tolist(), grads
([0.1, -0.1], 1)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Tensor = torch.Tensor
ATTACKS = ("fgsm", "pgd")


def goal_gradient(f: Callable[[Tensor], Tensor], y: Tensor) -> Tensor:
    """``u = ∇f(y)``: the output direction the goal wants (``f`` returns a scalar tensor)."""
    return torch.func.grad(f)(y.detach())


def pullback(phi: Callable[[Tensor], Tensor], x: Tensor, u: Tensor | None = None,
             f: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """``(J_Φ(x)ᵀ u, u)`` from one forward and one backward pass; ``u = ∇f(Φ(x))`` unless given."""
    y, vjp = torch.func.vjp(phi, x)
    if u is None:
        if f is None:
            raise ValueError("pullback: give u or the goal f to differentiate")
        u = goal_gradient(f, y)
    (g,) = vjp(u.to(y.dtype))
    return g.detach(), u


def fgsm_direction(phi: Callable[[Tensor], Tensor], f: Callable[[Tensor], Tensor], x: Tensor,
                   r: float, centered: bool = False) -> Tensor:
    """``d = r · sign(J_Φ(x)ᵀ u)``, ``u = ∇f(Φ(x))`` (``u − mean(u)`` with ``centered``: the
    official torchattacks surrogate, module docstring)."""
    y, vjp = torch.func.vjp(phi, x)
    u = goal_gradient(f, y)
    if centered:
        u = u - u.mean()
    (g,) = vjp(u)
    return r * torch.sign(g.detach())


def pgd_direction(phi: Callable[[Tensor], Tensor], f: Callable[[Tensor], Tensor], x: Tensor,
                  r: float, steps: int, low: Tensor, high: Tensor, alpha: float | None = None
                  ) -> Tensor:
    """``steps`` sign-ascent steps on ``⟨u, Φ(x + d)⟩`` with ``u = ∇f(Φ(x))`` fixed, each
    projected onto ``‖d‖∞ ≤ r`` and ``low ≤ d ≤ high`` (the box, moved to ``x``)."""
    alpha = 2.5 * r / steps if alpha is None else alpha
    low, high = torch.maximum(low, torch.full_like(low, -r)), torch.minimum(high, torch.full_like(
        high, r))
    d = torch.zeros_like(x)
    g, u = pullback(phi, x, f=f)
    for step in range(steps):
        if step:
            g, _ = pullback(phi, x + d, u=u)
        d = torch.clamp(d + alpha * torch.sign(g), low, high)
    return d


@dataclass(frozen=True)
class Attack:
    """The operator ``A(x, r)``: ``kind`` ``"fgsm"`` or ``"pgd"`` (``steps`` vector-Jacobian
    products, step ``alpha_factor · r / steps``); ``centered`` moves along the official code's
    centred target. Called as ``attack(phi, f, x, r, lower, upper) -> (d, gradients used)``;
    ``x + d`` may leave the box for FGSM (the caller clips), never for PGD."""

    kind: str = "fgsm"
    steps: int = 5
    alpha_factor: float = 2.5
    centered: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise ValueError(f"attack {self.kind!r}: choose one of {', '.join(ATTACKS)}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"attack: steps must be a positive integer, got {self.steps!r}")
        if not self.alpha_factor > 0:
            raise ValueError(f"attack: alpha_factor must be > 0, got {self.alpha_factor!r}")
        if self.centered and self.kind == "pgd":
            raise ValueError("attack: centered (the official CE surrogate) is FGSM-only")

    @property
    def gradients(self) -> int:
        """Forward + backward passes one call costs."""
        return 1 if self.kind == "fgsm" else self.steps

    def __call__(self, phi: Callable[[Tensor], Tensor], f: Callable[[Tensor], Tensor],
                 x: Tensor, r: float, lower: Tensor | None = None, upper: Tensor | None = None
                 ) -> tuple[Tensor, int]:
        if self.kind == "fgsm":
            return fgsm_direction(phi, f, x, r, self.centered), 1
        low = torch.full_like(x, -r) if lower is None else lower - x
        high = torch.full_like(x, r) if upper is None else upper - x
        return pgd_direction(phi, f, x, r, self.steps, low, high,
                             self.alpha_factor * r / self.steps), self.steps


__all__ = ["ATTACKS", "Attack", "fgsm_direction", "goal_gradient", "pgd_direction", "pullback"]
