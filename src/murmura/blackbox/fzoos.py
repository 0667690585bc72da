"""FZooS (Shu, Lin, Dai and Low, arXiv 2308.04077): each client's local steps follow the
analytic gradient of a GP fitted to its own query trajectory, corrected by the gap between the
global and its own random-Fourier-feature surrogates (shared as weight vectors). The run it works
in, the registry and the shared helpers: :mod:`murmura.blackbox.methods`."""

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
    append,
    around,
)
from murmura.blackbox.surrogates import (
    LENGTHSCALES,
    GPFit,
    condition_on,
    fit_gp,
    gp_grad_variance,
    gp_mean_grad,
    matern52,
    nearest,
    rff_features,
    rff_fit,
    rff_grad,
)

Tensor = torch.Tensor


# ---------------------------------------------------------------------------------------------
# FZooS


def _gp_at(xs: Tensor, mask: Tensor, lengthscale: Tensor, noise: float) -> GPFit:
    """A GP on the masked inputs with a given length-scale, for its gradient variance only."""
    eye = torch.eye(xs.shape[0], dtype=xs.dtype)
    k = mask[:, None] * mask[None, :] * (matern52(xs, xs, lengthscale) + noise * eye)
    chol = torch.linalg.cholesky_ex(k + (1.0 - mask)[:, None] * eye)[0]
    zero = torch.zeros((), dtype=xs.dtype)
    return GPFit(xs, mask, torch.zeros_like(mask), chol, lengthscale, zero, zero)


def most_uncertain(gp: GPFit, candidates: Tensor, k: int) -> Tensor:
    """The ``k`` candidates ``[C, d]`` of largest posterior gradient variance: ``[k, d]``."""
    _, index = torch.topk(gp_grad_variance(gp, candidates), k)
    return candidates.index_select(0, index)


def fzoos_gradient(gp: GPFit, x: Tensor, nu_own: Tensor, nu_global: Tensor, omega: Tensor,
                   offset: Tensor, gamma_t: float) -> Tensor:
    """The surrogate gradient with the adaptive correction (paper's local update):
    ``∇μ_i(x) + γ_t (∇μ̂_F(x) − ∇μ̂_i(x))``, the global and own RFF surrogates' gradients."""
    drift = rff_grad(x, nu_global, omega, offset) - rff_grad(x, nu_own, omega, offset)
    return gp_mean_grad(gp, x) + gamma_t * drift


def fzoos_local_step(hx: Tensor, hy: Tensor, count: Tensor, x: Tensor, m: Tensor, v: Tensor,
                     nu_own: Tensor, key: Tensor, nu_global: Tensor, omega: Tensor,
                     offset: Tensor, grid: Tensor, *, cfg: FZooS, step: int, gamma_t: float,
                     explore: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One FZooS iteration of one client (spec 9 (b))::

        fit GP_i on the 150 queries nearest to x           (Matérn 5/2, y min-max normalized)
        g = ∇μ_i(x) + γ_t (∇μ̂_F(x) − ∇μ̂_i(x))              (γ_t = γ/(t+1); 0 in round 0)
        x <- Adam(x, g)
        exploration: of 100 points x + 0.01 U[−1, 1]^d, the ``explore`` (5) of largest GP
        gradient variance given the GP's inputs and the new x (none at the last iteration)

    Returns ``(x, m, v, lengthscale, points to query [1 + explore, d])``, the new ``x`` first.
    The code conditions the variance on ``xs + [x]``, which numpy broadcasts into a shifted
    copy of ``xs``; the intended set (``xs`` and the new ``x``) is used here.
    """
    gp = fit_gp(*nearest(hx, hy, count, x, cfg.gp_queries), grid, cfg.noise)
    g = fzoos_gradient(gp, x, nu_own, nu_global, omega, offset, gamma_t)
    x, m, v = adam(x, g, m, v, step, cfg.lr)
    queries = x[None]
    if explore:
        candidates = around(x, key, cfg.explore_radius, cfg.candidates)
        picked = most_uncertain(condition_on(gp, x, cfg.noise), candidates, explore)
        queries = torch.cat([queries, picked])
    return x, m, v, gp.lengthscale, queries


def fzoos_post_queries(hx: Tensor, hy: Tensor, count: Tensor, x_local: Tensor,
                       lengthscale: Tensor, key: Tensor, x: Tensor, *, cfg: FZooS) -> Tensor:
    """One client's queries once the server's new ``x`` is known (``settings.py``,
    ``get_rff``): ``x`` itself, then of 200 points ``x + r_i U[−1, 1]^d`` with
    ``r_i = mean|x − x_i| / 2`` the 50 of largest gradient variance (the last local GP's
    length-scale, given the 150 queries nearest to ``x`` and ``x``): ``[1 + 50, d]``."""
    radius = (x - x_local).abs().mean() / 2.0
    xs, _, mask = nearest(hx, hy, count, x, cfg.gp_queries)
    base = _gp_at(torch.cat([xs, x[None]]), torch.cat([mask, mask[:1] * 0 + 1]), lengthscale,
                  cfg.noise)
    candidates = around(x, key, radius, cfg.post_candidates)
    return torch.cat([x[None], most_uncertain(base, candidates, cfg.post_explore)])


def fzoos_upload(hx: Tensor, hy: Tensor, count: Tensor, x: Tensor, omega: Tensor,
                 offset: Tensor, *, cfg: FZooS) -> tuple[Tensor, Tensor]:
    """One client's surrogate message: the RFF fit on its ≤ 500 queries nearest to ``x``,
    ``(ν_i · (y_max − y_min) [M], y_min)``."""
    return rff_fit(*nearest(hx, hy, count, x, cfg.rff_queries), omega, offset)


@BLACKBOX.register("fzoos", "FZooS: GP-surrogate gradients from each client's query trajectory, "
                            "drift-corrected by RFF surrogates shared through the server")
@dataclass(frozen=True)
class FZooS(Method):
    """FZooS (Shu et al., arXiv 2308.04077; spec 9 (b)); defaults are the code's.

    Clients query ``init_queries`` points ``x0 + init_radius U[−1, 1]^d`` at the start. Each
    round: every client runs :func:`fzoos_local_step` ``I`` times (querying the new ``x`` and
    its exploration points), sends ``x_i``; the server averages; every client queries
    :func:`fzoos_post_queries` (the new ``x`` and 50 exploration points) and sends its RFF
    surrogate (:func:`fzoos_upload`, ``M = features``); the server broadcasts
    ``ν_F = Σ_i w_i ν_i (y_max,i − y_min,i)``, which, with the client's own ``ν_i``, gives the
    next round's correction ``∇μ̂_F − ∇μ̂_i``. The features ``(ω, b)`` come from the run's seed
    (``rff_seed`` to fix them otherwise), as the code shares ``random_state = 0``.

    GP length-scale: the grid ``lengthscales`` by log marginal likelihood, replacing the code's
    sklearn optimizer with 20 restarts (:mod:`murmura.blackbox.surrogates`). Queries are
    counted exactly; the round-start query of ``x`` is made only in round 0, since later the
    post-round queries already hold ``f_i(x)`` (the code queries that point twice).
    """

    init_queries: int = 10
    init_radius: float = 0.01
    gp_queries: int = 150
    lengthscales: tuple[float, ...] = LENGTHSCALES
    noise: float = 1e-6
    candidates: int = 100
    explore: int = 5
    explore_radius: float = 0.01
    post_candidates: int = 200
    post_explore: int = 50
    features: int = 10000
    rff_lengthscale: float = 1.0
    rff_queries: int = 500
    gamma: float = 1.0
    rff_seed: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        name = type(self).__name__
        _count(name, gp_queries=self.gp_queries, candidates=self.candidates,
               post_candidates=self.post_candidates, features=self.features,
               rff_queries=self.rff_queries)
        _count(name, 0, init_queries=self.init_queries, explore=self.explore,
               post_explore=self.post_explore)
        _positive(name, init_radius=self.init_radius, noise=self.noise,
                  explore_radius=self.explore_radius, rff_lengthscale=self.rff_lengthscale)
        if self.explore > self.candidates or self.post_explore > self.post_candidates:
            raise ValueError(f"{name}: explore ≤ candidates and post_explore ≤ post_candidates "
                             f"are needed (the picks are among the candidates)")
        if not self.lengthscales or min(self.lengthscales) <= 0:
            raise ValueError(f"{name}: lengthscales must be a non-empty tuple of positive "
                             f"numbers, got {self.lengthscales!r}")
        if not self.gamma >= 0:
            raise ValueError(f"{name}: gamma must be ≥ 0 (0 turns the correction off), got "
                             f"{self.gamma!r}")

    def history_size(self, rounds: int, local_iters: int) -> int:
        """Queries one client makes in a run: the history buffer's length."""
        per_round = local_iters + self.explore * (local_iters - 1) + 1 + self.post_explore
        return self.init_queries + 1 + rounds * per_round

    def message_values(self, dim: int) -> tuple[int, int]:
        return dim + self.features + 1, dim + self.features  # spec 9 (c)

    def start(self, run: Run, x0: Tensor) -> None:
        n, d = run.problem.num_clients, run.problem.dim
        size = self.history_size(run.rounds, run.local_iters)
        omega, offset = rff_features(run.seed if self.rff_seed is None else self.rff_seed, d,
                                     self.features, self.rff_lengthscale)
        st = run.state
        st.update(hx=torch.zeros(n, size, d, dtype=torch.float64),
                  hy=torch.zeros(n, size, dtype=torch.float64),
                  count=torch.zeros(n, dtype=torch.int64), omega=omega, offset=offset,
                  nu_own=torch.zeros(n, self.features, dtype=torch.float64),
                  nu_global=torch.zeros(self.features, dtype=torch.float64),
                  lengthscale=torch.ones(n, dtype=torch.float64))
        if self.init_queries:
            init = partial(around, radius=self.init_radius, num=self.init_queries)
            self._query(run, vmap(init, in_dims=(None, 0))(x0, run.keys("fzoos/init")))

    def _query(self, run: Run, points: Tensor) -> None:
        st = run.state
        st["hx"], st["hy"], st["count"] = vmap(append)(st["hx"], st["hy"], st["count"], points,
                                                        run.oracle(points))

    def local_round(self, run: Run, x: Tensor, r: int) -> Tensor:
        st, n = run.state, run.problem.num_clients
        if r == 0:
            self._query(run, x.expand(n, 1, -1))
        xi = x.expand(n, -1).clone()
        m, v = torch.zeros_like(xi), torch.zeros_like(xi)
        grid = torch.tensor(self.lengthscales, dtype=torch.float64)
        for t in range(run.local_iters):
            step = partial(fzoos_local_step, cfg=self, step=t + 1,
                           gamma_t=self.gamma / (t + 1) if r > 0 else 0.0,
                           explore=self.explore if t < run.local_iters - 1 else 0)
            xi, m, v, st["lengthscale"], queries = vmap(
                step, in_dims=(0,) * 8 + (None,) * 4)(
                st["hx"], st["hy"], st["count"], xi, m, v, st["nu_own"],
                run.keys("fzoos/explore", r, t), st["nu_global"], st["omega"], st["offset"],
                grid)
            self._query(run, queries)
        return xi

    def after_server(self, run: Run, x: Tensor, x_local: Tensor, r: int) -> None:
        st = run.state
        post = partial(fzoos_post_queries, cfg=self)
        self._query(run, vmap(post, in_dims=(0,) * 6 + (None,))(
            st["hx"], st["hy"], st["count"], x_local, st["lengthscale"],
            run.keys("fzoos/post", r), x))
        upload = partial(fzoos_upload, cfg=self)
        st["nu_own"], y_min = vmap(upload, in_dims=(0, 0, 0, None, None, None))(
            st["hx"], st["hy"], st["count"], x, st["omega"], st["offset"])
        st["nu_global"] = run.weights @ st["nu_own"]  # the server's aggregate, broadcast
        st["y_min_global"] = run.weights @ y_min  # the code's offset; no gradient reads it
