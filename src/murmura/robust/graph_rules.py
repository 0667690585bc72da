"""Graph rules: ClippedGossip's self-centred clipping, BRIDGE's screening, Bulyan, and the
neighbour counts these rules need.

Each is an aggregator ``f(own[d], received[k, d], mask[k]) -> [d]`` for ONE receiver (see
:mod:`murmura.robust.aggregators`), vmapped by the engine. On a graph the engine puts the
receiver's own message first in ``received``: :class:`BridgeTrimmedMean` relies on that (it
never trims the node itself); :class:`SelfCenteredClipping` is centred on ``own``, whose own
row then adds nothing.

How a user composes them with D-SGD (the gradient step is the local rule, the rule here the
gossip step), in a TOML config::

    [algorithm]
    name = "dsgd"
    lr = 0.05
    local_steps = 1
    aggregator = { name = "bridge", screening = "trimmed_mean", f = 1 }    # BRIDGE-T
    # aggregator = { name = "self_centered_clipping", f = 1 }              # ClippedGossip

or in Python ``Simulation(data, "mlp", "dsgd", "random_regular", algorithm_kwargs=dict(lr=0.05,
aggregator={"name": "bulyan", "f": 1}))``.

>>> import torch
>>> own = torch.zeros(2)
>>> received = torch.tensor([[0., 0.], [1., 0.], [0., 1.], [30., 40.]])  # own first
>>> weights = torch.full((4,), 0.25)
>>> [round(v, 4) for v in SelfCenteredClipping(tau=1.0)(own, received, torch.ones(4), weights)
...  .tolist()]  # the far neighbour (30, 40) counts as (0.6, 0.8)
[0.4, 0.45]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from murmura.robust.aggregators import (
    AGGREGATORS,
    TrimmedMean,
    _sort_rows,
    check_f,
    make_aggregator,
    usable_rows,
)
from murmura.robust.distance_rules import distances

Tensor = torch.Tensor


# ---------------------------------------------------------------------------------------------
# ClippedGossip


def clipping_radius(distance: Tensor, weights: Tensor, mask: Tensor, f: int | None = None,
                    delta: float | None = None) -> Tensor:
    """The adaptive radius: rank the rows by ``distance`` to the receiver (farthest first),
    take the fewest farthest rows that could be Byzantine (``f`` of them, or the fewest whose
    ``weights`` sum to ``delta``) and return the distance of the next row, so exactly those
    are clipped. When that covers every row, the radius is the nearest row's (on a graph the
    receiver itself: 0)."""
    valid = mask > 0
    far = torch.nan_to_num(distance, nan=math.inf)  # a NaN message ranks as the farthest
    ranked = torch.where(valid, far, torch.full_like(far, -math.inf))
    order = torch.argsort(ranked, descending=True)
    if f is not None:
        clipped = torch.full_like(mask.sum(), float(f))
    else:
        heavy = (weights * mask)[order]
        before = torch.cumsum(heavy, 0) - heavy  # the weight of the rows ranked above
        clipped = ((before < delta - 1e-6) & valid[order]).to(mask.dtype).sum()
    last = (mask.sum() - 1).clamp_min(0.0)
    at = torch.minimum(clipped, last).long().reshape(1)
    return ranked[order].gather(0, at).squeeze(0).clamp_min(0.0)


@AGGREGATORS.register(
    "self_centered_clipping",
    "ClippedGossip: x_i + sum_j w_ij clip(x_j - x_i, tau), fixed or adaptive tau (He et al.)",
)
@dataclass(frozen=True)
class SelfCenteredClipping:
    """Self-centred clipping, the gossip step of ClippedGossip (He, Karimireddy and Jaggi,
    "Byzantine-robust decentralized learning via ClippedGossip", 2022, arXiv 2202.01545)::

        x_i <- x_i + sum_j W_ij CLIP(x_j - x_i, tau_i),  CLIP(z, tau) = min(1, tau / ||z||) z

    over the receiver's neighbourhood (itself included, whose term is 0), with its mixing
    weights ``W[i, .]`` (``needs_weights``: the engine passes them; at a server they are ``1 /
    m`` and ``own`` is the server's model, which makes this one iteration of centred clipping).

    ``tau``: a fixed radius. Otherwise the radius is adaptive, chosen from the Byzantine budget
    by :func:`clipping_radius`: the ``f`` farthest neighbours (or the farthest ones whose weight
    reaches ``delta``, the paper's delta_i = sum of W_ij over Byzantine j) are clipped to the
    distance of the next one. The paper's analysis sets tau_i from the honest neighbours'
    expected distances (about tau_i^2 = (1 / delta_i) sum over honest j of W_ij E||x_i -
    x_j||^2; not re-read from its text here), which needs to know who is honest; its code
    (``epfml/byzantine-robust-decentralized-optimizer``, ``SelfCenteredClipping``) uses the
    second-largest distance, which is ``f=1`` here, the default. Where that budget covers every
    neighbour the radius is 0 (the node keeps its model); the official code then keeps its
    single neighbour's distance instead. Messages with a non-finite distance (an Inf attack)
    add nothing: the official code would turn them into NaN."""

    tau: float | None = None
    f: int | None = None
    delta: float | None = None
    needs_weights: ClassVar[bool] = True

    def __post_init__(self) -> None:
        name = "self_centered_clipping"
        if self.tau is not None:
            if self.f is not None or self.delta is not None:
                raise ValueError(f"{name}: give a fixed tau, or f or delta for the adaptive "
                                 "radius, not both")
            if isinstance(self.tau, bool) or not isinstance(self.tau, (int, float)) \
                    or not self.tau > 0:
                raise ValueError(f"{name}: tau must be a number > 0 (math.inf: no clipping), "
                                 f"got {self.tau!r}")
        if self.f is not None and self.delta is not None:
            raise ValueError(f"{name}: give f (a count of neighbours) or delta (a weight), "
                             "not both")
        if self.f is not None:
            check_f(name, self.f)
        if self.delta is not None and (isinstance(self.delta, bool)
                                       or not isinstance(self.delta, (int, float))
                                       or not 0 <= self.delta < 1):
            raise ValueError(f"{name}: delta (the Byzantine neighbours' share of the mixing "
                             f"weight) must lie in [0, 1), got {self.delta!r}")

    def radius(self, distance: Tensor, weights: Tensor, mask: Tensor) -> Tensor:
        if self.tau is not None:
            return torch.full_like(mask.sum(), float(self.tau))
        f = None if self.delta is not None else (1 if self.f is None else int(self.f))
        return clipping_radius(distance, weights, mask, f=f, delta=self.delta)

    def min_neighbours(self, f: int | None = None) -> int | None:
        """``f + 1``: the adaptive radius is then the distance of a neighbour that is not one of
        ``f`` Byzantine ones, or nearer; a fixed radius asks for no count."""
        if self.tau is not None:
            return None
        if f is None and self.delta is None:
            f = 1 if self.f is None else int(self.f)
        return None if f is None else int(f) + 1

    def __call__(self, own: Tensor, received: Tensor, mask: Tensor,
                 weights: Tensor | None = None) -> Tensor:
        if weights is None:
            weights = mask / mask.sum().clamp_min(1.0)
        z = received - own
        distance = torch.linalg.vector_norm(z, dim=-1)
        tau = self.radius(distance, weights, mask)
        scale = torch.where(distance > tau, tau / distance.clamp_min(1e-30),
                            torch.ones_like(distance))
        keep = torch.isfinite(distance) & (mask > 0)
        coefficient = torch.where(keep, weights * scale, torch.zeros_like(scale))
        clipped = torch.where(keep.unsqueeze(-1), z, torch.zeros_like(z))
        return own + (coefficient.unsqueeze(-1) * clipped).sum(0)


# ---------------------------------------------------------------------------------------------
# BRIDGE and Bulyan


def closest_to_median_mean(values: Tensor, valid: Tensor, keep: Tensor,
                           windows: int | None = None) -> Tensor:
    """Per coordinate, the mean of the ``keep`` valid values closest to their median (an even
    count's median is the mean of the two middle values, numpy's): Bulyan's last stage. They
    are the ``keep`` consecutive sorted values whose farthest is nearest the median; of values
    equally near, the lower are kept. ``windows``: a bound on ``n - keep + 1``, the windows
    tried (default: all). (``meamed`` with ``keep = n - f`` cannot serve: it screens at most
    ``(n - 1) / 2`` of ``n`` values, Bulyan ``2 f`` of ``theta``.)"""
    k, d = values.shape
    ordered = _sort_rows(torch.where(valid.unsqueeze(-1), values,
                                     torch.full_like(values, math.inf)))
    m = valid.to(values.dtype).sum()
    low = ((m - 1) // 2).long().reshape(1, 1).expand(1, d)
    high = (m // 2).long().reshape(1, 1).expand(1, d)
    median = 0.5 * (ordered.gather(0, low) + ordered.gather(0, high))
    below, above = median - ordered, ordered - median
    best = torch.full_like(median, math.inf)
    start = torch.zeros_like(median)
    for first in range(min(k, windows or k)):  # a window of `keep`, by its farthest value
        last = (first + keep - 1).clamp(0, k - 1).long().reshape(1, 1).expand(1, d)
        reach = torch.maximum(below[first : first + 1], above.gather(0, last))
        reach = reach.masked_fill(first + keep > m, math.inf)
        better = reach < best
        best = torch.minimum(best, reach)
        start = start.masked_fill(better, float(first))
    position = torch.arange(k, device=values.device, dtype=values.dtype).unsqueeze(-1)
    inside = (position >= start) & (position < start + keep)
    return torch.where(inside, ordered, torch.zeros_like(ordered)).sum(0) / keep.clamp_min(1.0)


@AGGREGATORS.register(
    "bulyan", "n - 2f vectors picked by iterated Krum, then a robust mean per coordinate"
)
@dataclass(frozen=True)
class Bulyan:
    """Bulyan (El Mhamdi, Guerraoui and Rouault, "The hidden vulnerability of distributed
    learning in Byzantium", ICML 2018), for ``n >= 4 f + 3`` vectors:

    1. selection: theta = n - 2f times, pick the Krum winner of the vectors not yet picked and
       move it to the selection S (Krum scored as murmura's ``krum``, ByzFL's: the squared
       distances to the r - f - 1 nearest others of the r remaining; Blanchard et al. use
       r - f - 2; equal scores go to the vector with the smaller sum of squared distances to
       the remaining ones, so the order of the messages does not matter);
    2. aggregation, per coordinate over S: ``final="median"`` (the paper's) averages the
       beta = theta - 2f values closest to the median; ``final="trimmed_mean"`` drops the f
       smallest and f largest (also beta left): BRIDGE-B (Fang, Yang and Bajwa 2022).

    On a graph the neighbourhood includes the node itself. Below ``4 f + 3`` messages theta and
    beta are clamped to at least 1; :meth:`min_messages` makes the engine refuse such a graph.
    The selection loop runs over the stack's rows (static length), so the rule stays vmappable.
    """

    f: int = 0
    final: Literal["median", "trimmed_mean"] = "median"

    def __post_init__(self) -> None:
        check_f("bulyan", self.f)
        if self.final not in ("median", "trimmed_mean"):
            raise ValueError(f"bulyan: final must be 'median' (El Mhamdi et al.) or "
                             f"'trimmed_mean' (BRIDGE-B), got {self.final!r}")

    def min_messages(self) -> int:
        return 4 * int(self.f) + 3

    def min_neighbours(self, f: int | None = None) -> int:
        return 4 * int(self.f if f is None else f) + 2  # the node itself is one of the n

    def select(self, received: Tensor, mask: Tensor) -> Tensor:
        """The selection S as a 0/1 mask over the rows (never a non-finite message)."""
        f, k = int(self.f), received.shape[0]
        remaining = usable_rows(received, mask)
        dist = distances(received, remaining) ** 2
        selected = torch.zeros_like(remaining)
        theta = (mask.sum() - 2 * f).clamp_min(1.0)
        position = torch.arange(k, device=received.device, dtype=mask.dtype)
        for step in range(k):
            pair = remaining.unsqueeze(0) & remaining.unsqueeze(1)
            among = torch.where(pair, dist, torch.full_like(dist, math.inf))
            ordered = torch.sort(among, dim=1).values  # column 0: itself
            take = (position >= 1) & (position < remaining.to(mask.dtype).sum() - f)
            score = torch.where(take.unsqueeze(0), ordered, torch.zeros_like(ordered)).sum(1)
            score = torch.where(remaining, score, torch.full_like(score, math.inf))
            # ties (a mutual nearest pair, when one neighbour is scored) go to the one nearer
            # to all the others, not to the first row: the order of the messages is no input
            spread = torch.where(pair, dist, torch.zeros_like(dist)).sum(1)
            tied = remaining & (score == score.min())
            best = torch.argmin(torch.where(tied, spread, torch.full_like(spread, math.inf)))
            pick = (position == best) & remaining & (step < theta)
            selected, remaining = selected | pick, remaining & ~pick
        return selected.to(mask.dtype)

    def __call__(self, own: Tensor, received: Tensor, mask: Tensor) -> Tensor:
        chosen = self.select(received, mask)
        if self.final == "trimmed_mean":
            return TrimmedMean(f=int(self.f))(own, received, chosen)
        beta = (chosen.sum() - 2 * int(self.f)).clamp_min(1.0)
        return closest_to_median_mean(received, chosen > 0, beta, windows=2 * int(self.f) + 1)


@dataclass(frozen=True)
class BridgeTrimmedMean:
    """BRIDGE-T's screening (Fang, Yang and Bajwa, "BRIDGE: Byzantine-resilient decentralized
    gradient descent", IEEE TSIPN 2022; ByRDiE's, Yang and Bajwa 2019): per coordinate, drop
    the ``f`` largest and ``f`` smallest of the NEIGHBOURS' values, then average what is left
    together with the node's own value (which is never trimmed)::

        [y_j]_k = (x_j,k + sum over the kept neighbours i of x_i,k) / (|N_j| - 2f + 1)

    The first row of ``received`` is the node's own message (the engine's order on a graph);
    with fewer than ``2 f + 1`` neighbours nothing is left to average and the node keeps its
    value. A trimmed mean over the neighbourhood and the node alike is ``trimmed_mean``."""

    f: int = 0

    def __post_init__(self) -> None:
        check_f("bridge", self.f)

    def min_messages(self) -> int:
        return 2 * int(self.f) + 2

    def min_neighbours(self, f: int | None = None) -> int:
        return 2 * int(self.f if f is None else f) + 1

    def __call__(self, own: Tensor, received: Tensor, mask: Tensor) -> Tensor:
        position = torch.arange(received.shape[0], device=received.device)
        neighbours = torch.where(position > 0, mask, torch.zeros_like(mask))
        left = (neighbours.sum() - 2 * int(self.f)).clamp_min(0.0)
        trimmed = TrimmedMean(f=int(self.f))(own, received, neighbours)
        total = torch.where(left > 0, trimmed * left, torch.zeros_like(trimmed))
        return (own + total) / (left + 1.0)


SCREENINGS = ("trimmed_mean", "median", "krum", "bulyan")


@AGGREGATORS.register(
    "bridge", "BRIDGE's screening of the neighbourhood: trimmed_mean, median, krum or bulyan"
)
def bridge(screening: str = "trimmed_mean", f: int = 0) -> object:
    """BRIDGE's screening rule (Fang, Yang and Bajwa 2022) over the node's neighbourhood,
    itself included: ``"trimmed_mean"`` (BRIDGE-T, :class:`BridgeTrimmedMean`: the node's own
    value is never trimmed), ``"median"`` (BRIDGE-M: ``median``, ``f`` unused), ``"krum"``
    (BRIDGE-K: ``krum``) or ``"bulyan"`` (BRIDGE-B: :class:`Bulyan` with a trimmed-mean last
    stage). ``f`` is the paper's b, the Byzantine neighbours tolerated.

    BRIDGE updates ``w_j <- y_j - rho grad f_j(w_j)``: the screened model, then the node's own
    gradient at its pre-screening model. murmura's ``dsgd`` with this aggregator screens the
    half-step models ``w_i - rho grad f_i(w_i)`` instead (adapt, then combine; the screening is
    the same): ``dsgd(lr=rho, local_steps=1, aggregator={"name": "bridge", "f": b})``."""
    if screening not in SCREENINGS:
        raise ValueError(f"bridge: screening must be one of {', '.join(SCREENINGS)}, "
                         f"got {screening!r}")
    f = check_f("bridge", f)
    if screening == "trimmed_mean":
        return BridgeTrimmedMean(f)
    if screening == "median":
        return make_aggregator("median")
    if screening == "krum":
        return make_aggregator({"name": "krum", "f": f})
    return Bulyan(f, final="trimmed_mean")


# ---------------------------------------------------------------------------------------------
# how many neighbours a rule needs


def minimum_neighbours(aggregator: object, f: int | None = None) -> int | None:
    """The fewest in-neighbours (the node itself not counted) a graph node needs for
    ``aggregator`` (a rule, a name or ``{"name": ..., ...}``) to tolerate ``f`` Byzantine
    neighbours (default: the rule's own ``f``), by its paper; ``None`` when it states none.

    * coordinate-wise rules (``trimmed_mean``, ``median``, BRIDGE-T/-M): ``2 f + 1`` (BRIDGE's
      |N_j| >= 2b + 1);
    * ``krum``: ``2 f + 2`` (Blanchard et al.'s n >= 2f + 3, the node being one of the n);
    * ``bulyan`` (BRIDGE-B): ``4 f + 2`` (El Mhamdi et al.'s n >= 4f + 3, likewise);
    * ``self_centered_clipping`` with an adaptive radius: ``f + 1``; a fixed radius: ``None``;
    * a rule that declares ``min_neighbours(f)`` answers itself; else one that declares
      ``min_messages()`` needs that many less itself; ``average``: ``None``."""
    rule = make_aggregator(aggregator)
    if f is not None:
        check_f("minimum_neighbours", f)
    own = getattr(rule, "min_neighbours", None)
    if own is not None:
        return own(f)
    f = f if f is not None else getattr(rule, "f", None)
    name = type(rule).__name__
    if name in ("TrimmedMean", "Median", "Meamed"):
        return None if f is None else 2 * int(f) + 1
    if name in ("Krum", "MultiKrum"):
        return None if f is None else 2 * int(f) + 2
    need = getattr(rule, "min_messages", None)
    return need() - 1 if need is not None and need() > 1 else None


__all__ = [
    "SCREENINGS", "BridgeTrimmedMean", "Bulyan", "SelfCenteredClipping", "bridge",
    "closest_to_median_mean", "clipping_radius", "minimum_neighbours",
]
