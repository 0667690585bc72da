"""Spectral robust aggregators: CAF and SMEA, which screen messages by the top eigenvalue of
their (weighted) scatter. Each is ``f(own[d], received[k, d], mask[k][, key]) -> [d]`` for ONE
receiver, with ByzFL's constructor arguments and defaults (see
:mod:`murmura.robust.aggregators` for the contract and the count ``f`` a receiver uses).

Both are ``vectorized = False`` (a data-dependent loop; a brute force over subsets): the engine
calls them once per receiver with real tensors, and they compact the valid rows first. Both are
random as ByzFL writes them, one power iteration from a random start per eigenvalue
(``power_iterations=1``). The start is drawn with ``torch.randn(d)``, one per eigenvalue in
ByzFL's order, from a ``torch.Generator`` seeded with ``key`` (``needs_key = True``: the engine
passes each receiver's key for the round, from (seed, node, round, plan)); with no key, from
torch's global generator, as ByzFL does, so ``torch.manual_seed(s)`` before each side makes
murmura's and ByzFL's torch path draw the same vectors. ``power_iterations=None`` computes the
exact top eigenpair instead (from the small ``n x n`` Gram matrix: deterministic), which is
the papers' form.

>>> import torch
>>> x = torch.tensor([[0., 0.], [1., 0.], [0., 1.], [1., 1.], [40., -40.]])
>>> SMEA(f=1, power_iterations=None)(x[0], x, torch.ones(5)).tolist()   # drops [40, -40]
[0.5, 0.5]
>>> CAF(f=1, power_iterations=None)(x[0], x, torch.ones(5)).round(decimals=2).tolist()
[0.5, 0.5]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from murmura.robust.aggregators import AGGREGATORS, check_f, tolerated, zero_unusable
from murmura.robust.distance_rules import MAX_SUBSETS, subsets

Tensor = torch.Tensor

#: CAF stops filtering after this many rounds (ByzFL loops until the weights are spent; each
#: round zeroes at least one weight unless the largest projection is a zeroed row's).
CAF_ROUNDS = 10_000


def _check_iterations(rule: str, value: object) -> None:
    if value is not None:
        check_f(rule, value, "power_iterations")
        if value < 1:
            raise ValueError(f"{rule}: power_iterations must be >= 1 (ByzFL: 1), or None for "
                             f"the exact eigenvalue, got {value!r}")


def _draws(key: Tensor | None, d: int, device: torch.device) -> Callable[[], Tensor]:
    """One random start ``[d]`` per call: ``torch.randn(d)`` from a generator seeded with
    ``key``, or from torch's global generator when there is no key (ByzFL's draw)."""
    generator = None
    if key is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(int(key) & ((1 << 63) - 1))
    return lambda: torch.randn(d, generator=generator, device=device)


def top_eigenpair(diffs: Tensor, weights: Tensor, iterations: int | None,
                  draw: Callable[[], Tensor]) -> tuple[Tensor, Tensor]:
    """The top eigenvalue and unit eigenvector of ``sum_i w_i d_i d_i^T`` (``diffs [n, d]``):
    ``iterations`` power steps from ``draw()`` (ByzFL's estimate, ``||M v||`` after the last
    step), or exact (``None``) from the ``n x n`` matrix ``B B^T``, ``B = sqrt(w) diffs``."""
    if iterations is None:
        b = diffs.double() * weights.double().sqrt().unsqueeze(-1)
        values, vectors = torch.linalg.eigh(b @ b.T)
        v = (b.T @ vectors[:, -1]).to(diffs.dtype)
        return values[-1].clamp_min(0.0).to(diffs.dtype), v / v.norm().clamp_min(1e-30)
    v = draw().to(diffs.dtype)
    v = v / v.norm()
    value = torch.zeros((), dtype=diffs.dtype, device=diffs.device)
    for _ in range(iterations):
        product = (weights * (diffs @ v)) @ diffs
        value = product.norm()
        if not value > 0:  # the scatter vanishes along v: every message is the same
            break
        v = product / value
    return value, v


@AGGREGATORS.register("caf", "covariance-bound agnostic filter: down-weight along the top "
                      "eigenvector, keep the mean of the flattest spread")
@dataclass(frozen=True)
class CAF:
    """Covariance-bound Agnostic Filter (Allouah, Guerraoui and Stephan, "Towards Trustworthy
    Federated Learning with Untrusted Participants", ICML 2025; ByzFL's ``CAF(f=0)``)::

        c = 1;  while sum c > n - 2f:
            mu = sum_i c_i x_i / sum c;   (lambda, v) = top eigenpair of
                 sum_i c_i (x_i - mu)(x_i - mu)^T / sum c
            tau_i = ((x_i - mu) . v)^2;   c_i <- c_i (1 - tau_i / max_j tau_j)
        return the mu of the smallest lambda met

    As ByzFL: ``max_j`` runs over every row (zeroed ones too), and the eigenpair is one power
    step from a random start (see the module docstring; ``power_iterations=None``: exact).
    Where ByzFL would return ``None`` (``f = 0``: the loop never runs; identical messages:
    NaN), this returns the (weighted) mean. Rows with a non-finite coordinate start with
    ``c = 0``; after :data:`CAF_ROUNDS` rounds the filter stops with the best ``mu`` so far."""

    f: int = 0
    power_iterations: int | None = 1

    vectorized: ClassVar[bool] = False
    needs_key: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_f("caf", self.f)
        _check_iterations("caf", self.power_iterations)

    def min_messages(self) -> int:
        return 2 * int(self.f) + 1

    def __call__(self, own: Tensor, received: Tensor, mask: Tensor,
                 key: Tensor | None = None) -> Tensor:
        x = received[mask > 0]
        n, f = len(x), int(tolerated(int(self.f), mask))
        usable = torch.isfinite(x.sum(-1))
        x = zero_unusable(x, usable)
        c = usable.to(x.dtype)
        draw = _draws(key, x.shape[1], x.device)
        best, smallest = c @ x / c.sum().clamp_min(1.0), None
        for _ in range(CAF_ROUNDS):
            total = c.sum()
            if not total > n - 2 * f:
                break
            mu = c @ x / total
            diffs = (x - mu) * usable.unsqueeze(-1)
            value, v = top_eigenpair(diffs, c / total, self.power_iterations, draw)
            if smallest is None or value < smallest:
                best, smallest = mu, value
            tau = (diffs @ v) ** 2
            top = tau.max()
            if not top > 0:  # nothing left to filter along any direction
                break
            c = c * (1 - tau / top)
        return best


@AGGREGATORS.register("smea", "the mean of the n - f vectors whose scatter has the smallest "
                      "top eigenvalue (brute force)")
@dataclass(frozen=True)
class SMEA:
    """Smallest Maximum Eigenvalue Averaging (Allouah, Guerraoui, Gupta, Pinot and Stephan, "On
    the Privacy-Robustness-Utility Trilemma in Distributed Learning", ICML 2023; ByzFL's
    ``SMEA(f=0)``): among all subsets ``S`` of ``n - f`` vectors, the one whose scatter
    ``sum_{i in S} (x_i - mu_S)(x_i - mu_S)^T`` has the smallest top eigenvalue; return
    ``mu_S``. The first such subset in ``itertools.combinations`` order wins, as in ByzFL.

    ByzFL estimates each eigenvalue by one power step from its own random start (see the module
    docstring), so its choice is noisy: with many subsets, some subset holding outliers draws a
    start nearly orthogonal to them and looks flattest (12 vectors, 3 of them 30 away, d = 3:
    2 of 10 keys pick such a subset; 20 vectors, 4 outliers, d = 159,010, the one key tried:
    the chosen mean is 3,000 from the honest one). ``power_iterations=None`` is the exact
    eigenvalue (the paper's rule, from each subset's ``|S| x |S|`` Gram matrix), which picks
    the honest subset there, and is cheaper: ByzFL's form draws ``C(n, f)`` starts of ``d``
    values (20 vectors, f = 4, d = 159,010: 11 s a call on this CPU, against 0.3 s).
    Exponential: more than ``max_subsets`` subsets is a ValueError. A subset holding a
    non-finite row is never chosen (while another is)."""

    f: int = 0
    power_iterations: int | None = 1
    max_subsets: int = MAX_SUBSETS

    vectorized: ClassVar[bool] = False
    needs_key: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_f("smea", self.f)
        _check_iterations("smea", self.power_iterations)
        check_f("smea", self.max_subsets, "max_subsets")

    def min_messages(self) -> int:
        return 2 * int(self.f) + 1

    def __call__(self, own: Tensor, received: Tensor, mask: Tensor,
                 key: Tensor | None = None) -> Tensor:
        x = received[mask > 0]
        n, f = len(x), int(tolerated(int(self.f), mask))
        sets = subsets("smea", n, f, int(self.max_subsets), x.device)
        usable = torch.isfinite(x.sum(-1))
        clean = zero_unusable(x, usable)
        centred = (clean - clean[usable].mean(0)) * usable.unsqueeze(-1)
        gram = centred.double() @ centred.double().T
        draw = _draws(key, x.shape[1], x.device)
        chunk = max(1, (1 << 22) // max(1, x.shape[1]))
        values = torch.cat([self._top_values(centred, gram, part, draw)
                            for part in sets.split(chunk)])
        values = torch.where(usable[sets].all(1), values, torch.full_like(values, torch.inf))
        return x[sets[torch.argmin(values)]].mean(0)

    def _top_values(self, centred: Tensor, gram: Tensor, sets: Tensor,
                    draw: Callable[[], Tensor]) -> Tensor:
        """``[c]``: the top eigenvalue of each subset's scatter, from its centred Gram matrix
        ``G_S = H gram[S, S] H`` (``H`` removes the subset's mean)."""
        g = gram[sets.unsqueeze(-1), sets.unsqueeze(-2)]
        g = g - g.mean(-1, keepdim=True) - g.mean(-2, keepdim=True) + g.mean((-1, -2),
                                                                             keepdim=True)
        if self.power_iterations is None:
            return torch.linalg.eigvalsh(g)[:, -1].clamp_min(0.0)
        starts = torch.stack([draw() for _ in range(len(sets))]).to(centred.dtype)
        starts = starts / starts.norm(dim=1, keepdim=True)
        a = (centred @ starts.T).T.double().gather(1, sets)  # [c, s]: rows . start
        a = a - a.mean(1, keepdim=True)  # (x_i - mu_S) . start
        value = torch.zeros(len(sets), dtype=torch.float64, device=gram.device)
        for _ in range(int(self.power_iterations)):
            ga = (g @ a.unsqueeze(-1)).squeeze(-1)
            value = (a * ga).sum(1).clamp_min(0.0).sqrt()  # ||D_S^T a|| = ByzFL's eigenvalue
            a = ga / value.clamp_min(1e-300).unsqueeze(-1)
        return value


__all__ = ["CAF", "CAF_ROUNDS", "SMEA", "top_eigenpair"]
