"""Surrogates of one client's black box, written for one client (the methods ``vmap`` them):
a Gaussian process on the client's query history, its analytic mean gradient and gradient
variance, and a random-Fourier-feature (RFF) regression that a client can send as ``M`` numbers.

Shu, Lin, Dai and Low, "Federated Zeroth-Order Optimization using Trajectory-Informed Surrogate
Gradients" (FZooS, arXiv 2308.04077); official code github.com/shuyao95/FZooS, ``optimizers.py``
(``fzoos_opt``, ``RFFGP``). Specification: ``specs/federated.md`` section 9.

**GP** (:func:`fit_gp`). Kernel Matérn ν = 5/2 of unit amplitude, noise ``1e-6``, zero prior
mean, on ``y`` min-max normalized over the selected queries (as the code's sklearn regressor
with ``normalize_y=False`` fed ``(y - min) / (max - min)``). The code fits the length-scale with
sklearn's optimizer and 20 random restarts, which cannot be vmapped; here it is the value of a
fixed log-spaced grid with the largest log marginal likelihood, evaluated for all grid points
at once. Histories are fixed-size buffers ``[Q, d]`` with a count (:func:`nearest` selects the
``k`` queries nearest to ``x`` among the first ``count``, masked where fewer exist); a masked
entry is decoupled from the rest (unit diagonal, zero target), so it changes neither the
posterior nor the likelihood.

**Mean gradient** (:func:`gp_mean_grad`): analytic,
``∇μ(x) = (y_max − y_min) Σ_j α_j ∂k(x, X_j)/∂x`` with ``α = (K + σ²I)⁻¹ y`` and, for
Matérn 5/2 (``s = √5 ‖x − x'‖/ℓ``), ``∂k/∂x = −5/(3ℓ²) (1 + s) e^{−s} (x − x')``. The code takes
finite differences of ``predict`` (``approx_fprime``, ε = 1e-20); the spec says use the analytic
gradient.

**Gradient variance** (:func:`gp_grad_variance`): the trace of the posterior covariance of
``∇f`` at a candidate ``c``, ``5d/(3ℓ²) − tr(J K⁻¹ Jᵀ)``, ``J = ∂k(c, X)/∂c`` (the prior
``∂²k/∂x∂x'`` at ``x = x'`` is ``5/(3ℓ²) I``). The code's ``grad_var`` differs in three ways
taken as defects: it switches to an RBF kernel (GPy) with the Matérn length-scale, it keeps only
the first coordinate's entry, and its cross term uses the second derivative ``∂²k(c, X)/∂c∂X``
where the posterior formula needs the first; here the fitted Matérn GP's own formula is used.

**RFF** (:func:`rff_features`, :func:`rff_fit`, :func:`rff_grad`): sklearn's ``RBFSampler``
construction, ``φ(x) = √(2/M) cos(ωᵀx + b)`` with ``ω ~ N(0, I/ℓ²)``, ``b ~ U[0, 2π)``, so
``φ(x)ᵀφ(x') ≈ exp(−‖x − x'‖²/(2ℓ²))``; ``ω, b`` come from a seed every client knows (never
sent). The weights ``ν`` are the minimum-norm least-squares fit to the min-max normalized ``y``
(the code's ``Ridge(alpha=0)``, which sklearn solves in the dual when ``n < M``; here
``ν = Φᵀ (ΦΦᵀ)⁺ y``), and ``∇μ̂(z) = −√(2/M) Σ_j ν_j sin(ω_jᵀz + b_j) ω_j``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from murmura.swarm.random import normal, uniform

Tensor = torch.Tensor

#: The length-scale grid replacing sklearn's restarts: 4 values per decade, 1e-2 .. 1e2.
LENGTHSCALES: tuple[float, ...] = tuple(10.0 ** (k / 4.0) for k in range(-8, 9))
_EPS = 1e-20  # the code's guard in (y - min) / (max - min + eps)


class GPFit(NamedTuple):
    """One client's fitted GP: training inputs ``x`` ``[n, d]``, ``mask`` ``[n]``, weights
    ``alpha`` ``[n]`` (masked entries 0), Cholesky factor ``chol`` ``[n, n]`` of the masked
    ``K + σ²I``, the chosen ``lengthscale`` (0-dim) and the normalization ``y_min``, ``y_max``."""

    x: Tensor
    mask: Tensor
    alpha: Tensor
    chol: Tensor
    lengthscale: Tensor
    y_min: Tensor
    y_max: Tensor


def nearest(hx: Tensor, hy: Tensor, count: Tensor, x: Tensor, k: int
            ) -> tuple[Tensor, Tensor, Tensor]:
    """The ``k`` entries of the history ``hx`` ``[Q, d]``, ``hy`` ``[Q]`` (first ``count``
    valid) nearest to ``x``: ``(xs [k, d], ys [k], mask [k])``; mask 0 where fewer exist."""
    valid = torch.arange(hx.shape[0], device=hx.device) < count
    dist = torch.where(valid, ((hx - x) ** 2).sum(-1), torch.full_like(hy, math.inf))
    _, index = torch.topk(dist, min(k, hx.shape[0]), largest=False)
    mask = torch.isfinite(dist.index_select(0, index)).to(hx.dtype)
    return hx.index_select(0, index), hy.index_select(0, index) * mask, mask


def matern52(a: Tensor, b: Tensor, lengthscale: Tensor) -> Tensor:
    """Matérn 5/2 kernel ``(1 + s + s²/3) e^{−s}``, ``s = √5 ‖a − b‖/ℓ``: ``[n, m]``
    (``lengthscale`` broadcasts in front: ``[L, 1, 1]`` gives ``[L, n, m]``)."""
    r = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1).clamp_min(0.0).sqrt()
    s = math.sqrt(5.0) * r / lengthscale
    return (1.0 + s + s * s / 3.0) * torch.exp(-s)


def matern52_grad(x: Tensor, xs: Tensor, lengthscale: Tensor) -> Tensor:
    """``∂k(x, xs_j)/∂x`` for every row of ``xs``: ``[n, d]`` (``x`` ``[d]``)."""
    diff = x - xs
    s = math.sqrt(5.0) * (diff * diff).sum(-1).clamp_min(0.0).sqrt() / lengthscale
    return (-5.0 / (3.0 * lengthscale**2) * (1.0 + s) * torch.exp(-s))[:, None] * diff


def _masked(k: Tensor, mask: Tensor, noise: float) -> Tensor:
    eye = torch.eye(k.shape[-1], dtype=k.dtype, device=k.device)
    pair = mask[:, None] * mask[None, :]
    return pair * (k + noise * eye) + (1.0 - mask)[:, None] * eye


def fit_gp(xs: Tensor, ys: Tensor, mask: Tensor, lengthscales: Tensor,
           noise: float = 1e-6) -> GPFit:
    """The GP on the masked queries ``xs`` ``[n, d]``, ``ys`` ``[n]``: y min-max normalized,
    length-scale the grid value (``lengthscales`` ``[L]``) of largest log marginal likelihood."""
    big = torch.finfo(ys.dtype).max
    y_min = torch.where(mask > 0, ys, torch.full_like(ys, big)).min()
    y_max = torch.where(mask > 0, ys, torch.full_like(ys, -big)).max()
    y = (ys - y_min) / (y_max - y_min + _EPS) * mask
    k = matern52(xs, xs, lengthscales[:, None, None])  # [L, n, n]
    chol, info = torch.linalg.cholesky_ex(_masked(k, mask, noise))
    alpha = torch.cholesky_solve(y[None, :, None].expand(len(lengthscales), -1, 1), chol)[..., 0]
    log_det = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    lml = -0.5 * (y * alpha).sum(-1) - log_det - 0.5 * mask.sum() * math.log(2.0 * math.pi)
    lml = torch.where(info == 0, lml, torch.full_like(lml, -math.inf))
    pick = torch.nn.functional.one_hot(torch.argmax(lml), len(lengthscales)).to(ys.dtype)
    return GPFit(xs, mask, pick @ alpha, torch.einsum("l,lij->ij", pick, chol),
                 pick @ lengthscales, y_min, y_max)


def gp_mean(gp: GPFit, x: Tensor) -> Tensor:
    """The posterior mean at ``x`` ``[d]`` in the original units of ``y`` (0-dim)."""
    k = matern52(x[None], gp.x, gp.lengthscale)[0] * gp.mask
    return (k @ gp.alpha) * (gp.y_max - gp.y_min) + gp.y_min


def gp_mean_grad(gp: GPFit, x: Tensor) -> Tensor:
    """``∇μ(x)`` ``[d]``, analytic, in the original units of ``y``."""
    jac = matern52_grad(x, gp.x, gp.lengthscale) * gp.mask[:, None]  # [n, d]
    return (gp.alpha @ jac) * (gp.y_max - gp.y_min)


def gp_grad_variance(gp: GPFit, candidates: Tensor) -> Tensor:
    """``tr Cov[∇f(c) | data]`` for each candidate ``c`` (rows of ``[C, d]``): ``[C]``, in
    normalized units; the candidates are scored independently (none conditions on another)."""
    n, d = gp.x.shape
    jac = torch.vmap(lambda c: matern52_grad(c, gp.x, gp.lengthscale))(candidates)  # [C, n, d]
    jac = jac * gp.mask[None, :, None]
    rhs = jac.permute(1, 0, 2).reshape(n, -1)
    v = torch.linalg.solve_triangular(gp.chol, rhs, upper=False)
    explained = (v * v).reshape(n, candidates.shape[0], d).sum(dim=(0, 2))
    return 5.0 * d / (3.0 * gp.lengthscale**2) - explained


def condition_on(gp: GPFit, x: Tensor, noise: float = 1e-6) -> GPFit:
    """The same GP with one more input ``x`` (its value not needed: only the gradient variance,
    which depends on the locations alone, is read from the result)."""
    xs = torch.cat([gp.x, x[None]])
    mask = torch.cat([gp.mask, torch.ones_like(gp.mask[:1])])
    chol = torch.linalg.cholesky(_masked(matern52(xs, xs, gp.lengthscale), mask, noise))
    return gp._replace(x=xs, mask=mask, chol=chol, alpha=torch.cat([gp.alpha, gp.alpha[:1] * 0]))


def rff_features(seed: int, dim: int, num_features: int, lengthscale: float = 1.0
                 ) -> tuple[Tensor, Tensor]:
    """Shared random features ``(ω [d, M], b [M])`` for an RBF kernel of ``lengthscale``,
    drawn from ``seed`` alone (every client derives the same; nothing is sent)."""
    origin = torch.tensor(0)
    omega = normal(seed, "fzoos/rff_omega", origin, size=(dim, num_features),
                   dtype=torch.float64) / lengthscale
    offset = 2.0 * math.pi * uniform(seed, "fzoos/rff_offset", origin, size=(num_features,),
                                     dtype=torch.float64)
    return omega, offset


def rff_map(x: Tensor, omega: Tensor, offset: Tensor) -> Tensor:
    """``φ(x) = √(2/M) cos(xω + b)``: ``[..., d]`` -> ``[..., M]``."""
    return math.sqrt(2.0 / omega.shape[1]) * torch.cos(x @ omega + offset)


def rff_fit(xs: Tensor, ys: Tensor, mask: Tensor, omega: Tensor, offset: Tensor
            ) -> tuple[Tensor, Tensor]:
    """Minimum-norm least squares of the min-max normalized ``ys`` on ``φ(xs)`` (masked rows
    dropped). Returns what a client sends: ``(ν · (y_max − y_min) [M], y_min)``."""
    big = torch.finfo(ys.dtype).max
    y_min = torch.where(mask > 0, ys, torch.full_like(ys, big)).min()
    y_max = torch.where(mask > 0, ys, torch.full_like(ys, -big)).max()
    y = (ys - y_min) / (y_max - y_min + _EPS) * mask
    phi = rff_map(xs, omega, offset) * mask[:, None]  # [n, M]; the dual form: n ≤ 500 < M
    nu = phi.T @ (torch.linalg.pinv(phi @ phi.T, hermitian=True) @ y)
    return nu * (y_max - y_min), y_min


def rff_grad(z: Tensor, nu: Tensor, omega: Tensor, offset: Tensor) -> Tensor:
    """``∇μ̂(z) = −√(2/M) Σ_j ν_j sin(ω_jᵀz + b_j) ω_j``: ``[d]`` (``ν`` already scaled)."""
    return -math.sqrt(2.0 / omega.shape[1]) * (omega @ (nu * torch.sin(z @ omega + offset)))
