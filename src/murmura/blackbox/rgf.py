"""The RGF baselines of FZooS's paper: FedZO (local Adam on randomized-gradient-free
finite differences), SCAFFOLD-ZO (control variates, types I and II) and FedProx-ZO."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch.func import vmap

from murmura.blackbox.methods import (
    BLACKBOX,
    Method,
    Run,
    _count,
    _positive,
    adam,
)
from murmura.swarm.random import key_normal

Tensor = torch.Tensor


# ---------------------------------------------------------------------------------------------
# the RGF baselines


def rgf_directions(key: Tensor, dim: int, q: int) -> Tensor:
    """``q`` Gram-Schmidt-orthonormalized Gaussian directions ``[q, d]`` (rows), from one
    client's key: QR with ``diag(R) > 0`` is Gram-Schmidt of the draws in order."""
    q_mat, r_mat = torch.linalg.qr(key_normal(key, (dim, q)).to(torch.float64))
    return (q_mat * torch.sign(torch.diagonal(r_mat))).T


def rgf_estimate(fx: Tensor, f_dirs: Tensor, dirs: Tensor, mu: float) -> Tensor:
    """The RGF estimate ``(1/q) Σ_k (f(x + μ u_k) − f(x)) / μ · u_k`` (forward differences,
    the code's ``1/q``; with ``q = d`` orthonormal directions and a linear ``f`` it is exactly
    ``∇f / q``)."""
    return ((f_dirs - fx) / mu) @ dirs / dirs.shape[0]


def rgf_points(x: Tensor, key: Tensor, *, q: int, mu: float) -> tuple[Tensor, Tensor]:
    """One client's directions and the points it queries for them: ``x + μ u_k``."""
    dirs = rgf_directions(key, x.shape[-1], q)
    return dirs, x + mu * dirs


def rgf_local_step(x: Tensor, fx: Tensor, f_dirs: Tensor, dirs: Tensor, x_start: Tensor,
                   m: Tensor, v: Tensor, correction: Tensor, *, step: int, lr: float, mu: float,
                   prox: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One client's RGF iteration: ``g = RGF(x)``, ``x <- Adam(x, g + c + prox (x − x_start))``
    with ``c`` the round's drift correction (0 for FedZO). Returns ``(x, m, v, g)``."""
    g = rgf_estimate(fx, f_dirs, dirs, mu)
    x_new, m, v = adam(x, g + correction + prox * (x - x_start), m, v, step, lr)
    return x_new, m, v, g


@BLACKBOX.register("fedzo", "FedZO: local Adam on RGF finite-difference gradients "
                            "(q orthonormal directions), averaged by the server")
@dataclass(frozen=True)
class FedZO(Method):
    """FedZO, the code's ``rgf`` with ``correction none``: per iteration ``q`` queries at
    ``x + μ u_k`` and one at the new ``x``, plus one at ``x`` when a round starts
    (``q + 1`` per step, as the code counts). ``q ≤ d`` is required (Gram-Schmidt).
    ``prox``: a proximal coefficient, 0 here (:class:`FedProxZO` sets it)."""

    q: int = 20
    mu: float = 0.01
    prox: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _count(type(self).__name__, q=self.q)
        _positive(type(self).__name__, mu=self.mu)
        if not self.prox >= 0:
            raise ValueError(f"{type(self).__name__}: prox must be ≥ 0, got {self.prox!r}")

    def start(self, run: Run, x0: Tensor) -> None:
        if self.q > run.problem.dim:
            raise ValueError(f"{type(self).__name__}: q={self.q} orthonormal directions need "
                             f"q ≤ dim={run.problem.dim}; pass q ≤ {run.problem.dim}")

    def correction(self, run: Run, r: int) -> Tensor:
        """The drift correction added to every local gradient in round ``r`` ``[N, d]``."""
        return torch.zeros(run.problem.num_clients, run.problem.dim, dtype=torch.float64)

    def local_round(self, run: Run, x: Tensor, r: int) -> Tensor:
        n = run.problem.num_clients
        xi = x.expand(n, -1).clone()
        fx = run.state.pop("fx", None)  # f_i(x) when a post-round step already queried it
        fx = run.oracle(xi[:, None])[:, 0] if fx is None else fx
        m, v, g_sum = torch.zeros_like(xi), torch.zeros_like(xi), torch.zeros_like(xi)
        correction = self.correction(run, r)
        for t in range(run.local_iters):
            dirs, points = vmap(partial(rgf_points, q=self.q, mu=self.mu))(
                xi, run.keys("rgf/directions", r, t))
            f_dirs = run.oracle(points)
            step = partial(rgf_local_step, step=t + 1, lr=self.lr, mu=self.mu, prox=self.prox)
            xi, m, v, g = vmap(step)(xi, fx, f_dirs, dirs, x.expand(n, -1), m, v, correction)
            fx = run.oracle(xi[:, None])[:, 0]
            g_sum = g_sum + g
        run.state["g_mean"] = g_sum / run.local_iters  # the code's gx_avg (uncorrected)
        return xi


@BLACKBOX.register("fedprox_zo", "FedProx-ZO: FedZO with the proximal term prox·(x − x_round)")
@dataclass(frozen=True)
class FedProxZO(FedZO):
    """The code's ``rgf`` with ``correction prox``: ``g + prox (x − x_start)``, ``prox = 1`` as
    the code's fixed regularizer. The code adds it from round 1 on (its corrections wait for a
    server surrogate); here it applies in every round, as FedProx does."""

    prox: float = 1.0


@BLACKBOX.register("scaffold_zo", "SCAFFOLD-ZO: FedZO with control variates from RGF "
                                  "estimates (type II 'scaf' or type I 'diff')")
@dataclass(frozen=True)
class ScaffoldZO(FedZO):
    """SCAFFOLD with RGF gradients: ``g + c − c_i`` from round 1 on, ``c = Σ_i w_i c_i``.

    ``control = "scaf"`` (type II): ``c_i`` is the mean of client ``i``'s uncorrected local
    estimates of the last round. ``control = "diff"`` (type I): ``c_i`` is a fresh RGF estimate
    at the new server ``x`` (``q + 1`` more queries per client and round; the code does not add
    these to its query count, a defect, they are counted here; the query at ``x`` then serves
    as the next round's first). Messages: ``x_i, c_i`` up and ``x, c`` down (``2d`` each).
    """

    control: str = "scaf"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.control not in ("scaf", "diff"):
            raise ValueError(f"ScaffoldZO: control must be 'scaf' (type II) or 'diff' (type I),"
                             f" got {self.control!r}")

    def message_values(self, dim: int) -> tuple[int, int]:
        return 2 * dim, 2 * dim

    def correction(self, run: Run, r: int) -> Tensor:
        st = run.state
        if "c_own" not in st:
            return super().correction(run, r)
        return st["c_global"] - st["c_own"]

    def after_server(self, run: Run, x: Tensor, x_local: Tensor, r: int) -> None:
        st, n = run.state, run.problem.num_clients
        if self.control == "scaf":
            st["c_own"] = st["g_mean"]
        else:
            st["fx"] = run.oracle(x.expand(n, 1, -1))[:, 0]
            dirs, points = vmap(partial(rgf_points, q=self.q, mu=self.mu), in_dims=(None, 0))(
                x, run.keys("rgf/control", r))
            st["c_own"] = vmap(partial(rgf_estimate, mu=self.mu))(st["fx"], run.oracle(points),
                                                                   dirs)
        st["c_global"] = run.weights @ st["c_own"]
