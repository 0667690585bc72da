"""The Flag Aggregator (Almasi, Mishra, Vamanan and Ravi, "Scalable Distributed Training under
Failures and Augmented Losses using Convex Optimization", ICLR 2024, arXiv 2302.05865).

Aggregation as subspace estimation: the ``r``-dimensional subspace ``Y`` that best explains the
*directions* of the ``p`` messages under the flag median's robust (sine) loss, by iteratively
reweighted least squares (IRLS) whose every step is a weighted flag mean (an SVD); the
aggregate is the sum of the unit messages projected onto ``Y``. An outlying direction gets a
small IRLS weight and is projected away. Spec: ``specs/robust.md`` section 5; reference code
``hamidralmasi/FlagAggregator`` @ ``1ae2c45``, ``aggregators/flag.py`` and
``aggregators/center_algorithms_torch.py`` (``irls_flag``, ``flag_mean_iteration``,
``calc_error_1_2``).

The output's norm is at most ``p / r`` whatever the scale of the messages (a sum of ``p``
projected unit vectors, over ``r``): the step length is the aggregator's, not the messages'.
``scale`` multiplies the output; with it, the server's learning rate must be retuned (the spec's
pilot uses lr 0.5 and scales FA's output by 0.05).

>>> import torch
>>> x = torch.tensor([[2., 0., 0.], [3., 0., 0.], [1., 0., 0.], [0., 0., -50.]])
>>> FlagAggregator(relative_to_own=False)(x[0], x, torch.ones(4)).tolist()  # outlier gone
[3.0, 0.0, 0.0]
>>> own = torch.tensor([1., 1., 1.])        # a server's model; the uploads are own + x
>>> [round(v, 4) for v in FlagAggregator(scale=0.1)(own, own + x, torch.ones(4)).tolist()]
[1.3, 1.0, 1.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import torch

from murmura.robust.aggregators import AGGREGATORS, usable_rows

Tensor = torch.Tensor

#: IRLS stops once the objective falls by no more than this, or falls to it (the code's 1e-10).
STOP = 1e-10


@lru_cache(maxsize=16)
def _random_basis(d: int, r: int, seed: int) -> Tensor:
    """The code's ``Y_0``: ``torch.manual_seed(seed); Q(torch.rand(d, r) - 0.5)[:, :r]``, CPU
    float32 (drawn from a generator of its own, so torch's global one is left alone)."""
    generator = torch.Generator().manual_seed(seed)
    raw = torch.rand(d, r, generator=generator) - 0.5
    return torch.linalg.qr(raw).Q[:, :r]


@lru_cache(maxsize=16)
def _basis_on(d: int, r: int, seed: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return _random_basis(d, r, seed).to(device=device, dtype=dtype)


def initial_basis(d: int, r: int, seed: int, dtype: torch.dtype = torch.float32,
                  device: torch.device | str = "cpu") -> Tensor:
    """The fixed random start ``Y_0 [d, r]`` (cached: the same every step, as in the code).
    A random draw cannot run under ``vmap``: :meth:`FlagAggregator.bind` (which the engine
    calls at setup) or :meth:`FlagAggregator.prepare` draws it before the first vmapped call."""
    try:
        return _basis_on(int(d), int(r), int(seed), dtype, torch.device(device))
    except RuntimeError as error:
        if "vmap" not in str(error):
            raise
        raise ValueError(
            f"flag: the random start Y_0 for d={d} is drawn outside vmap; call "
            f"aggregator.prepare({d}) (or bind it to the model's layout) before vmapping it"
        ) from error


def _sqrt_psd(b: Tensor) -> Tensor:
    """The symmetric square root of a positive semi-definite matrix."""
    values, vectors = torch.linalg.eigh(b)
    return (vectors * values.clamp_min(0.0).sqrt()) @ vectors.T


@AGGREGATORS.register("flag", "Flag Aggregator: project the unit messages onto their robust "
                      "(flag-median) r-dim subspace, by IRLS")
@dataclass(frozen=True)
class FlagAggregator:
    """The Flag Aggregator (FA; Almasi et al., ICLR 2024), as the spec and the code write it::

        x_i = g_i / ||g_i||;   Y_0 = Q(U[-0.5, 0.5)^{d x r}) from torch.manual_seed(seed)
        n_its IRLS steps from Y:
            w_i  = (|1 - ||Y^T x_i||^2| + eps)^(-1/4)
            w_ij = lam / (p (p - 1)) (|1 - ||Y^T (x_i - x_j)||^2| + eps)^(-1/4),  i != j
            Y'   = the first r left singular vectors of [w_i x_i]_i ++ [w_ij (x_i - x_j)]_{i!=j}
            keep Y' iff obj(Y') < obj(Y),  obj(Y) = sum_i sqrt(max(0, 1 - ||Y^T x_i||^2));
            stop when obj falls by at most 1e-10 (or to 1e-10)
        FA = (1 / r) sum_i Y Y^T x_i

    ``r`` is the code's ``r_col`` (trainer default 1; experiment scripts 8), ``lam`` its
    ``lambda_`` (0), ``n_its`` its IRLS iterations (1), ``seed`` the random start's (1), ``eps``
    the weights' (1e-7). With ``n_its = 1`` a step the objective does not accept leaves FA
    projecting onto the *random* start, as the code does. The code also writes per-step CSV
    diagnostics to a hard-coded path; that is dropped.

    **Messages and the rescale.** FA is a gradient aggregator. With ``relative_to_own=True``
    (the default) it aggregates the messages' displacements ``g_i = m_i - own`` and returns
    ``own + scale * FA``: at a server receiving models, ``own`` is the server's model and
    ``g_i`` the client's update (``-lr`` times its gradient for one local step), so the
    server steps by ``scale * FA(-g)`` whatever the clients' lr (FA is blind to the messages'
    scale: ``||FA|| <= p / r``). A server receiving gradient-like payloads (any name but
    ``"params"``) gets ``own = 0``, which is the paper's FA on the vectors themselves, as is
    ``relative_to_own=False`` (returns ``scale * FA(m)``). ``scale`` is thus FA's step length
    (the spec's pilot: lr 0.5 with FA's output times 0.05, i.e. ``scale = 0.025``). On a
    graph ``own`` is the node's model and ``g_j = x_j - x_i`` mixes its neighbours' updates
    with their disagreement (beyond the paper, which has a server). The library's
    ``aggregate("flag", vectors)`` passes ``own = vectors[0]``: give ``own=zeros`` (or
    ``relative_to_own=False``) for the paper's FA of the vectors.

    **Masks, inputs, cost.** Padded rows, rows with a non-finite coordinate and rows with no
    direction (``g_i = 0``: on a graph, the node's own message when ``relative_to_own``) take
    no part (the code would count a zero row in ``p``); none valid: ``own`` (``0`` for
    ``relative_to_own=False``). Every step works on the ``p x p`` Gram matrix of the unit
    messages (the flag mean's SVD through ``M M^T = X^T B X``), so a call costs
    ``O(d p^2 + d p r)`` and vmaps over receivers; ``lam > 0`` costs no more.
    """

    r: int = 1
    lam: float = 0.0
    n_its: int = 1
    seed: int = 1
    eps: float = 1e-7
    scale: float = 1.0
    relative_to_own: bool = True

    vectorized: ClassVar[bool] = True

    def __post_init__(self) -> None:
        for name in ("r", "n_its"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"flag: {name} must be an integer >= 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"flag: seed must be an integer (the random start's), got "
                             f"{self.seed!r}")
        for name in ("lam", "eps", "scale"):
            value = getattr(self, name)
            ok = (not isinstance(value, bool) and isinstance(value, (int, float))
                  and math.isfinite(value) and (value >= 0 if name == "lam" else value > 0))
            if not ok:
                bound = ">= 0" if name == "lam" else "> 0"
                raise ValueError(f"flag: {name} must be a finite number {bound}, got {value!r}"
                                 + (" (the spec's pilot: scale = lr x 0.05)"
                                    if name == "scale" else ""))
        if not isinstance(self.relative_to_own, bool):
            raise ValueError(f"flag: relative_to_own must be true or false, got "
                             f"{self.relative_to_own!r}")

    def prepare(self, d: int) -> FlagAggregator:
        """Draw (and cache) the random start for vectors of ``d`` coordinates."""
        if int(d) < self.r:
            raise ValueError(f"flag: r={self.r} needs vectors of at least r coordinates, got "
                             f"d={d}; lower r")
        _random_basis(int(d), self.r, self.seed)
        return self

    def bind(self, layout: Any) -> FlagAggregator:
        """The engine's setup hook: draw the random start for the model's ``d``."""
        return self.prepare(layout.spec.dim)

    def __call__(self, own: Tensor, received: Tensor, mask: Tensor) -> Tensor:
        d = received.shape[-1]
        if d < self.r:
            self.prepare(d)  # raises the ValueError
        base = own if self.relative_to_own else torch.zeros_like(own)
        g = received - base
        norm = g.norm(dim=-1)
        # a non-finite own model (an attacker's, aggregating its own Inf) makes every update
        # non-finite: no row then takes part
        valid = usable_rows(received, mask) & torch.isfinite(norm) & (norm > 0)
        x = torch.where(valid.unsqueeze(-1), g / norm.clamp_min(1e-12).unsqueeze(-1), 0.0)
        v = valid.to(torch.float64)
        p = v.sum()
        y0 = initial_basis(d, self.r, self.seed, x.dtype, x.device)
        gram = (x @ x.T).double()  # G = X X^T: every later product stays p x p
        proj = (x @ y0).double().T  # [r, p]: Y^T x_i, columns
        err = self._objective(proj, v)
        at_start = torch.ones((), dtype=torch.bool, device=x.device)
        coef = torch.zeros(len(v), self.r, dtype=torch.float64, device=x.device)  # Y = X^T C
        running = err > STOP
        for _ in range(self.n_its):
            new_coef = self._flag_mean(proj, gram, v, p)
            new_proj = new_coef.T @ gram
            new_err = self._objective(new_proj, v)
            accept = running & (new_err < err)
            coef = torch.where(accept, new_coef, coef)
            proj = torch.where(accept, new_proj, proj)
            at_start = at_start & ~accept
            running = running & (err - new_err > STOP) & (new_err > STOP)
            err = torch.where(accept, new_err, err)
        total = proj @ v  # [r]: sum_i Y^T x_i
        from_start = y0 @ total.to(x.dtype)
        from_messages = x.T @ (coef @ total).to(x.dtype)
        fa = torch.where(at_start, from_start, from_messages) / self.r
        return base + self.scale * fa

    @staticmethod
    def _objective(proj: Tensor, v: Tensor) -> Tensor:
        """The code's ``calc_error_1_2(..., 'sine')``: ``sum_i sqrt(max(0, 1 - ||Y^T x_i||^2))``."""
        return ((1.0 - proj.square().sum(0)).clamp_min(0.0).sqrt() * v).sum()

    def _flag_mean(self, proj: Tensor, gram: Tensor, v: Tensor, p: Tensor) -> Tensor:
        """One IRLS step (the code's ``flag_mean_iteration``, ``'sine'`` weights): the
        coefficients ``C [p, r]`` of the first ``r`` left singular vectors ``Y = X^T C`` of
        ``M = [w_i x_i] ++ [w_ij (x_i - x_j)]``. ``M M^T = X^T B X`` with ``B = diag(w_i^2) +
        Laplacian(2 w_ij^2)``, so with ``R = B^(1/2)`` they are ``X^T R u_k / sqrt(mu_k)`` for
        the top eigenpairs of ``R G R``; a direction ``M`` lacks (rank < r) gets zeros."""
        w = (1.0 - proj.square().sum(0)).abs().add(self.eps).pow(-0.25) * v
        b = torch.diag(w.square())
        if self.lam > 0:
            diff = proj.unsqueeze(2) - proj.unsqueeze(1)  # [r, p, p]: Y^T (x_i - x_j)
            pair = (1.0 - diff.square().sum(0)).abs().add(self.eps).pow(-0.25)
            pair = pair * (self.lam / (p * (p - 1)).clamp_min(1.0)) * torch.outer(v, v)
            a = 2.0 * pair.square() * (1.0 - torch.eye(len(v), dtype=pair.dtype,
                                                         device=pair.device))
            b = b + torch.diag(a.sum(1)) - a
        root = _sqrt_psd(b)
        values, vectors = torch.linalg.eigh(root @ gram @ root)
        top, u = values.flip(0)[: self.r], vectors.flip(1)[:, : self.r]
        keep = top > 1e-12 * values[-1].clamp_min(1e-300)
        inverse = torch.where(keep, top.clamp_min(1e-300).rsqrt(), torch.zeros_like(top))
        coef = (root @ u) * inverse
        missing = self.r - coef.shape[1]  # r > p: the subspace has at most p directions
        return torch.nn.functional.pad(coef, (0, missing)) if missing > 0 else coef


__all__ = ["FlagAggregator", "initial_basis"]
