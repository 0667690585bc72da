"""The covering direct-search method's trial directions and the radius rules of the hybrid.

Bouchet and Vidal, "Optimization by Directional Attacks" (arXiv 2510.01461); spec
``federated.md`` section 14 (b); official code ``src/optimization_algorithms/tools/``
(``covering_step.py``, ``search_step.py``, ``poll_step.py``, ``sufficient_increase.py``) and
``hybrid_method.py``. All randomness comes from a ``torch.Generator``.

* covering: one point ``u_∞ · (U · r₀)^{1/n}``, ``u_∞`` a uniform direction on the sphere
  rescaled to ``‖u_∞‖∞ = 1`` (the code's ``random_unit_direction``), ``U ~ U[0, 1]``;
* search: one point ``u_∞ · r₀ √(searches + 1)`` (the code's "light" search: a random line
  search with the single multiplier 1), capped at ``r_dsm_max``;
* poll: ``n + 1`` directions: the rows ``h_i`` of the Householder matrix ``I − 2vvᵀ`` of a
  random unit ``v`` (an orthonormal basis) and ``−Σ_i h_i``, each rescaled to ``‖·‖∞ = r_dsm``:
  a minimal positive spanning set. The code also rotates each direction by a random angle of
  at most ``arccos(1/n)``; its ``random_rotation`` overlaps its 2×2 blocks, so the matrix is not
  a rotation, and independent per-direction rotations can break positive spanning: omitted.

Radius rules (the spec's pseudo-code, ``hybrid_method.py``)::

    attack   sufficient increase  r_atk ← clip(1.3 r_atk), and r_dsm ← 2 r_dsm if r_dsm ≤ r_dsm_min
             increase             r_atk ← clip(1.1 r_atk)
             failure              r_atk ← max(r_atk_min, r_atk / 1.3)
    dfo      search or poll success  r_dsm ← min(r_dsm_max, 2 r_dsm);  covering success: kept
             failure                 r_dsm ← max(r_dsm_min, r_dsm / 2)

>>> g = torch.Generator().manual_seed(0)
>>> D = poll_directions(3, 0.5, g, torch.float64)
>>> tuple(D.shape), D.abs().amax(1).tolist()
((4, 3), [0.5, 0.5, 0.5, 0.5])
>>> [attack_radius_after(0.1, outcome, 1e-5, 1.0) for outcome in OUTCOMES]
[0.13, 0.11000000000000001, 0.07692307692307693]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Tensor = torch.Tensor
OUTCOMES = ("sufficient", "increase", "failure")


@dataclass(frozen=True)
class Radii:
    """The radius settings (defaults: the spec's): ``r0`` starts both radii and sets the
    covering and search scales; the attack radius lives in ``[r_atk_min, r_atk_max]``, the poll
    radius in ``[r_dsm_min, r_dsm_max]``; ``tau`` is the sufficient-increase threshold."""

    r0: float = 0.1
    r_atk_min: float = 1e-5
    r_atk_max: float = 1.0
    r_dsm_min: float = 1e-5
    r_dsm_max: float = math.inf
    tau: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("r0", "r_atk_min", "r_atk_max", "r_dsm_min", "r_dsm_max"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"radii: {name} must be a positive number, got {value!r}")
        if not self.r_atk_min <= self.r_atk_max or not self.r_dsm_min <= self.r_dsm_max:
            raise ValueError("radii: each minimum radius must be ≤ its maximum")
        if not (isinstance(self.tau, (int, float)) and self.tau >= 0):
            raise ValueError(f"radii: tau must be a number ≥ 0, got {self.tau!r}")


def sufficient_increase(new: float, old: float, tau: float = 1e-3, eps: float = 1e-10) -> bool:
    """``(new − old) / (|old| + eps) ≥ tau`` (the code's relative test)."""
    return (new - old) / (abs(old) + eps) >= tau


def attack_radius_after(r: float, outcome: str, r_min: float, r_max: float) -> float:
    """The attack radius after an attack whose outcome is ``sufficient``, ``increase`` or
    ``failure``."""
    if outcome == "sufficient":
        return min(r_max, max(r_min, 1.3 * r))
    if outcome == "increase":
        return min(r_max, max(r_min, 1.1 * r))
    if outcome == "failure":
        return max(r_min, r / 1.3)
    raise ValueError(f"outcome {outcome!r}: one of {', '.join(OUTCOMES)}")


def dsm_radius_after(r: float, success: bool, r_min: float, r_max: float) -> float:
    """The poll radius after a search or poll step: doubled on success, halved on failure."""
    return min(r_max, 2.0 * r) if success else max(r_min, r / 2.0)


def unit_direction(n: int, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    """A uniform direction on the sphere, rescaled to ``‖·‖∞ = 1``."""
    d = torch.randn(n, generator=generator, dtype=dtype)
    return d / d.abs().max()


def covering_direction(n: int, r0: float, generator: torch.Generator, dtype: torch.dtype
                       ) -> Tensor:
    """The covering step's point: ``u_∞ · (U · r₀)^{1/n}``."""
    scale = (torch.rand((), generator=generator, dtype=dtype) * r0) ** (1.0 / n)
    return unit_direction(n, generator, dtype) * scale


def search_direction(n: int, radius: float, generator: torch.Generator, dtype: torch.dtype
                     ) -> Tensor:
    """The light search step's point: ``u_∞ · radius``."""
    return unit_direction(n, generator, dtype) * radius


def poll_directions(n: int, r: float, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    """``[n + 1, n]``: the Householder basis of a random unit vector and its negated sum, each
    scaled to ``‖·‖∞ = r`` (a minimal positive spanning set)."""
    v = torch.randn(n, generator=generator, dtype=dtype)
    v = v / torch.linalg.vector_norm(v)
    H = torch.eye(n, dtype=dtype) - 2.0 * torch.outer(v, v)
    D = torch.cat([H, -H.sum(0, keepdim=True)])
    return r * D / D.abs().amax(1, keepdim=True)


__all__ = ["OUTCOMES", "Radii", "attack_radius_after", "covering_direction", "dsm_radius_after",
           "poll_directions", "search_direction", "sufficient_increase", "unit_direction"]
