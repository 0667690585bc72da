"""Distance-based robust aggregators: Krum, Multi-Krum, MDA, MoNNA (the geometric median and
centered clipping are in :mod:`murmura.robust.centre_rules`). Each is ``f(own[d], received[k,
d], mask[k]) -> [d]`` for ONE receiver, with ByzFL's constructor arguments and defaults (see
:mod:`murmura.robust.aggregators` for the contract, the count ``f`` a receiver with few messages
uses, and non-finite messages).

Distances are ``torch.cdist``'s (ByzFL's torch path; below 26 rows it sums the squared
differences, so a node's distance to itself is exactly 0; above, rows are first taken relative
to ``own``); a row with a non-finite coordinate is at distance ``+inf`` from everything. MDA
is a brute force over subsets and is not vectorized.

>>> import torch
>>> x = torch.tensor([[0., 0.], [1., 0.], [0., 1.], [50., 50.]])
>>> MultiKrum(f=1)(x[0], x, torch.ones(4)).tolist()     # the 3 best-scored: not [50, 50]
[0.3333333432674408, 0.3333333432674408]
>>> MoNNA(f=1)(x[1], x, torch.ones(4)).tolist()         # the 3 nearest to own = x[1]
[0.3333333432674408, 0.3333333432674408]
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import torch

from murmura.robust.aggregators import (
    AGGREGATORS,
    check_f,
    rank_key,
    smallest,
    tolerated,
    usable_rows,
)

Tensor = torch.Tensor

#: Brute-force rules (MDA, SMEA) refuse inputs with more candidate subsets than this.
MAX_SUBSETS = 100_000


def distances(received: Tensor, usable: Tensor, centre: Tensor | None = None) -> Tensor:
    """``[k, k]`` L2 distances between the rows, ``+inf`` towards rows that are not
    ``usable`` (padding, non-finite) and exactly 0 from a usable row to itself. Above 25 rows
    ``torch.cdist`` uses the Gram form, whose error grows with the rows' norms: the rows are
    then taken relative to ``centre`` if given (the receiver's own vector, near the honest
    ones)."""
    if received.shape[0] > 25 and centre is not None:
        received = received - torch.where(torch.isfinite(centre), centre,
                                          torch.zeros_like(centre))
    dist = torch.cdist(received, received)
    pair = usable.unsqueeze(0) & usable.unsqueeze(1)
    eye = torch.eye(len(usable), dtype=torch.bool, device=received.device)
    dist = torch.where(eye, torch.zeros_like(dist), dist)
    return torch.where(pair, dist, torch.full_like(dist, math.inf))


def distances_to(received: Tensor, point: Tensor) -> Tensor:
    """``[k]``: each row's L2 distance to ``point [d]``, summing squared differences (never
    ``torch.cdist``'s Gram shortcut, which loses the small distances near a converged point)."""
    return torch.cdist(received, point.unsqueeze(0),
                       compute_mode="donot_use_mm_for_euclid_dist").squeeze(-1)


def _nearest_mean(received: Tensor, key: Tensor, count: Tensor, f: int) -> Tensor:
    """The mean of the ``count`` rows with the smallest ``key`` (:func:`smallest`'s choice);
    other rows never enter (no ``0 * inf``)."""
    index, take = smallest(key, count, f)
    chosen = received.index_select(0, index)
    return torch.where(take.unsqueeze(-1), chosen, torch.zeros_like(chosen)).sum(0) / count


# ---------------------------------------------------------------------------------------------
# Krum, Multi-Krum


def krum_scores(own: Tensor, received: Tensor, mask: Tensor, f: Tensor) -> Tensor:
    """``[k]``: each row's sum of squared distances to its ``n - f - 1`` nearest other rows
    (ByzFL's score, which takes the mean of the same terms: the order is the same). Padding
    and non-finite rows score ``+inf``."""
    usable = usable_rows(received, mask)
    n = mask.sum()
    ordered = torch.sort(distances(received, usable, own) ** 2, dim=1).values  # 0: itself
    position = torch.arange(len(mask), device=received.device, dtype=n.dtype)
    take = (position >= 1) & (position < n - f)
    score = torch.where(take.unsqueeze(0), ordered, torch.zeros_like(ordered)).sum(1)
    return torch.where(usable, score, torch.full_like(score, math.inf))


@AGGREGATORS.register("krum", "the received vector closest to its n - f - 1 nearest others")
@dataclass(frozen=True)
class Krum:
    """Krum (Blanchard, El Mhamdi, Guerraoui and Stainer, NeurIPS 2017) as ByzFL computes it:
    score ``x_i`` by its squared distances to its ``n - f - 1`` nearest other vectors, return
    the best-scored vector (the first on a tie). The paper sums over ``n - f - 2`` neighbours;
    murmura follows ByzFL so the two agree. ``min_messages()`` is Blanchard et al.'s
    ``n > 2 f + 2`` (ByzFL only refuses ``2 f >= n``). ByzFL's default ``f = 0``."""

    f: int = 0

    def __post_init__(self) -> None:
        check_f("krum", self.f)

    def min_messages(self) -> int:
        return 2 * int(self.f) + 3

    def __call__(self, own: Tensor, received: Tensor, mask: Tensor) -> Tensor:
        score = krum_scores(own, received, mask, tolerated(int(self.f), mask))
        best = torch.argmin(rank_key(score, score < math.inf, mask > 0))
        return received.index_select(0, best.reshape(1)).squeeze(0)


@AGGREGATORS.register("multi_krum", "the mean of the n - f vectors with the best Krum scores")
@dataclass(frozen=True)
class MultiKrum:
    """Multi-Krum (Blanchard et al., NeurIPS 2017; ByzFL's ``MultiKrum(f=0)``): the mean of the
    ``n - f`` vectors with the smallest Krum scores (:func:`krum_scores`); ties as ByzFL's
    (``torch.topk``)."""

    f: int = 0

    def __post_init__(self) -> None:
        check_f("multi_krum", self.f)

    def min_messages(self) -> int:
        return 2 * int(self.f) + 3

    def __call__(self, own: Tensor, received: Tensor, mask: Tensor) -> Tensor:
        f = tolerated(int(self.f), mask)
        score = krum_scores(own, received, mask, f)
        key = rank_key(score, score < math.inf, mask > 0)
        return _nearest_mean(received, key, mask.sum() - f, int(self.f))


# ---------------------------------------------------------------------------------------------
# MDA


@lru_cache(maxsize=64)
def _subsets(n: int, size: int) -> Tensor:
    """``[C(n, size), size]`` int64: every subset of ``range(n)`` in ``itertools`` order."""
    return torch.tensor(list(itertools.combinations(range(n), size)),
                        dtype=torch.int64).reshape(-1, size)


def subsets(rule: str, n: int, f: int, limit: int, device: torch.device) -> Tensor:
    """Every subset of ``n - f`` of ``n`` rows (``itertools`` order, ByzFL's), or a ValueError
    when there are more than ``limit`` of them."""
    count = math.comb(n, f)
    if count > limit:
        raise ValueError(
            f"{rule}: a brute force over C(n={n}, f={f}) = {count} subsets exceeds "
            f"max_subsets={limit}; use a smaller f or fewer vectors, raise max_subsets, or "
            f"choose a polynomial rule (multi_krum, geometric_median, nnm + trimmed_mean)"
        )
    return _subsets(n, n - f).to(device)


@AGGREGATORS.register("mda", "the mean of the n - f vectors of smallest diameter (brute force)")
@dataclass(frozen=True)
class MDA:
    """Minimum-diameter averaging (El Mhamdi, Guerraoui, Guirguis, Hoang and Rouault, PODC
    2020; ByzFL's ``MDA(f=0)``): among all subsets of ``n - f`` vectors, the one with the
    smallest diameter (largest pairwise L2 distance); return its mean. The first such subset
    in ``itertools.combinations`` order wins a tie, as in ByzFL.

    Exponential: ``C(n, f)`` subsets; more than ``max_subsets`` is a ValueError. Not vectorized
    (``vectorized = False``: the engine calls it once per receiver, with real tensors); it
    compacts the valid rows, so ``n`` is the receiver's count of messages."""

    f: int = 0
    max_subsets: int = MAX_SUBSETS

    vectorized: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_f("mda", self.f)
        check_f("mda", self.max_subsets, "max_subsets")

    def min_messages(self) -> int:
        return 2 * int(self.f) + 1

    def __call__(self, own: Tensor, received: Tensor, mask: Tensor) -> Tensor:
        x = received[mask > 0]
        n = len(x)
        f = int(tolerated(int(self.f), mask))
        sets = subsets("mda", n, f, int(self.max_subsets), x.device)
        dist = distances(x, torch.isfinite(x.sum(-1)), own)
        diameter = torch.cat([dist[s.unsqueeze(-1), s.unsqueeze(-2)].amax((1, 2))
                              for s in sets.split(4096)])
        return x[sets[torch.argmin(diameter)]].mean(0)


# ---------------------------------------------------------------------------------------------
# MoNNA


@AGGREGATORS.register("monna", "the mean of the n - f vectors nearest the receiver's own")
@dataclass(frozen=True)
class MoNNA:
    """Nearest-neighbour averaging, MoNNA's mixing step (Farhadkhani, Guerraoui, Gupta, Hoang,
    Pinot and Stephan, ICML 2023; ByzFL's ``MoNNA(f=0, idx=0)``): the mean of the ``n - f``
    vectors nearest (L2) the pivot, ``own``; on a graph the engine puts ``own`` first among
    the received, so it is one of them (distance 0), as ByzFL's ``x_idx`` is. Ties: as ByzFL
    (``torch.topk``).

    ByzFL's pivot is ``vectors[idx]``; in a simulation the pivot is the receiver's own vector
    (a node's half-step model; a server's current model), so ``idx`` only serves
    :func:`murmura.robust.aggregate`, which passes ``vectors[idx]`` as ``own``."""

    f: int = 0
    idx: int = 0

    def __post_init__(self) -> None:
        check_f("monna", self.f)
        check_f("monna", self.idx, "idx")

    def min_messages(self) -> int:
        return 2 * int(self.f) + 1

    def __call__(self, own: Tensor, received: Tensor, mask: Tensor) -> Tensor:
        f = tolerated(int(self.f), mask)
        usable = usable_rows(received, mask)
        gap = distances_to(received, own)
        return _nearest_mean(received, rank_key(gap, usable, mask > 0), mask.sum() - f,
                             int(self.f))


__all__ = [
    "MAX_SUBSETS", "Krum", "MDA", "MoNNA", "MultiKrum", "distances", "distances_to",
    "krum_scores", "subsets",
]
