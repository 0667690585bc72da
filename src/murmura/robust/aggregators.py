"""Robust aggregators: ``f(own[d], received[k, d], mask[k]) -> [d]`` for ONE receiver.

Each is a small frozen callable, ByzFL-style (its constructor arguments and defaults), written
for one receiver with a padded, masked stack of messages (a node's neighbourhood, or a server's
uploads); the engine ``vmap``s it over blocks of receivers. Padded rows (``mask == 0``) never
influence the result. ``own`` is the receiver's own vector: a server's current model, or a
node's own message, which on a graph the engine also puts first in ``received``, so these rules
screen the neighbourhood including oneself, as BRIDGE does. Only self-centred rules read it
(MoNNA's pivot, centered clipping's centre).

The families: coordinate-wise rules here (average, median, trimmed mean, Meamed), distance-based
ones in :mod:`murmura.robust.distance_rules` (Krum, Multi-Krum, MDA, MoNNA), iterative centres in
:mod:`murmura.robust.centre_rules` (geometric median, centered clipping), spectral ones in
:mod:`murmura.robust.spectral_rules` (CAF, SMEA).

Counts. ByzFL's rules raise when ``2 f >= n``. A vmapped rule cannot raise on a count it only
sees as a tensor, so every rule here uses ``min(f, floor((n - 1) / 2))`` for a receiver with
``n`` valid messages (:func:`tolerated`), and declares ``min_messages()``; the engine
(:func:`check_messages`, before a run, for a server or a static graph) and
:func:`murmura.robust.aggregate` refuse inputs with fewer messages, naming f and n.

Non-finite messages (the ``inf`` attack, NaN): coordinate-wise rules read NaN as ``+inf``
(ByzFL's return NaN); distance-based rules treat a row with any non-finite coordinate as
infinitely far from every other (ByzFL's geometric median drops ``+-inf`` rows; its Krum would
pick a NaN-scored row).

>>> import torch
>>> x = torch.tensor([[1., 2.], [3., 8.], [100., -50.], [0., 0.]])
>>> mask = torch.tensor([1., 1., 1., 0.])          # the last row is padding
>>> Median()(x[0], x, mask).tolist()
[3.0, 2.0]
>>> TrimmedMean(f=1)(x[0], x, mask).tolist()
[3.0, 2.0]
>>> Meamed(f=1)(x[0], x, mask).tolist()           # the 2 values nearest each median
[2.0, 5.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from murmura.registry import Registry, build_component

Tensor = torch.Tensor

AGGREGATORS: Registry = Registry("aggregator")


_NETWORK_ROWS = 32  # up to this many messages a sorting network beats torch.sort (2-3x, CPU)


def _sort_rows(x: Tensor) -> Tensor:
    """``x [k, d]`` sorted along its rows. A neighbourhood has few rows and many coordinates:
    there an odd-even transposition network of elementwise min/max (the same result exactly)
    costs a third of ``torch.sort``'s time (7 rows of 159,010: 63 against 188 ms)."""
    if x.shape[0] > _NETWORK_ROWS:
        return torch.sort(x, dim=0).values
    rows = list(x.unbind(0))
    for sweep in range(len(rows)):
        for i in range(sweep % 2, len(rows) - 1, 2):
            rows[i], rows[i + 1] = torch.minimum(rows[i], rows[i + 1]), torch.maximum(
                rows[i], rows[i + 1])
    return torch.stack(rows)


def masked_mean(vectors: Tensor, mask: Tensor) -> Tensor:
    """The mean of the rows of ``vectors [k, d]`` that ``mask [k]`` marks (padding excluded,
    whatever it holds)."""
    kept = torch.where(mask.unsqueeze(-1) > 0, vectors, torch.zeros_like(vectors))
    return kept.sum(0) / mask.sum().clamp_min(1.0)


def check_f(rule: str, f: object, name: str = "f") -> int:
    """``f`` as an integer >= 0, or a ValueError naming the rule and the parameter."""
    if isinstance(f, bool) or not isinstance(f, (int, float)) or int(f) != f or f < 0:
        raise ValueError(f"{rule}: {name} must be an integer >= 0, got {f!r}")
    return int(f)


def tolerated(f: int, mask: Tensor) -> Tensor:
    """How many messages a receiver with ``n = mask.sum()`` valid ones screens out:
    ``min(f, floor((n - 1) / 2))`` (a float tensor), i.e. ``f`` wherever ByzFL's ``2 f < n``
    holds, and the most a rule of this kind can tolerate where it does not (see the module
    docstring: the engine and the library refuse such inputs before a rule sees them)."""
    return torch.floor((mask.sum() - 1) / 2).clamp(0.0, float(f))


def usable_rows(received: Tensor, mask: Tensor) -> Tensor:
    """``[k]`` bool: the valid rows whose every coordinate is finite (one cheap row sum: a row
    holding inf or NaN sums to a non-finite value)."""
    return (mask > 0) & torch.isfinite(received.sum(-1))


def zero_unusable(received: Tensor, usable: Tensor) -> Tensor:
    """``received`` with the rows that are not ``usable`` set to zeros (so ``w @ rows`` with
    ``w = 0`` there never meets ``0 * inf``)."""
    return torch.where(usable.unsqueeze(-1), received, torch.zeros_like(received))


def smallest(key: Tensor, count: Tensor, f: int) -> tuple[Tensor, Tensor]:
    """Indices ``[K, ...]`` of the smallest entries of ``key [k, ...]`` along dim 0, ascending,
    and a mask ``[K, ...]`` of the first ``count`` of them: ``torch.topk``'s choice among ties,
    ByzFL's (its ``argpartition`` is ``topk``), so a receiver holding every row agrees with it
    on ties too. ``K = k - min(f, (k - 1) // 2)`` is static (the most ``count = n - f`` can be:
    vmap needs a fixed size); a receiver with padding takes the first ``count`` of them."""
    k = key.shape[0]
    most = k - min(int(f), (k - 1) // 2)
    index = torch.topk(key, most, dim=0, largest=False, sorted=True).indices
    position = torch.arange(most, device=key.device, dtype=count.dtype)
    take = (position < count).reshape(most, *(1,) * (key.dim() - 1)).expand_as(index)
    return index, take


def rank_key(values: Tensor, usable: Tensor, valid: Tensor) -> Tensor:
    """A sort key that puts ``values`` of usable rows first (NaN and inf: after every finite
    value), then the valid but non-finite rows, then padding: padding never outranks a
    message."""
    big = torch.finfo(values.dtype).max
    inside = torch.nan_to_num(values, nan=big, posinf=big)
    return torch.where(usable, inside, torch.where(valid, torch.full_like(values, big),
                                                   torch.full_like(values, math.inf)))


def _sorted_valid(received: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Each coordinate sorted with padded rows pushed past the end (NaN read as ``+inf``, so
    it sorts last instead of spreading through the min/max network); the valid count."""
    valid = (mask.unsqueeze(-1) > 0) & (received == received)
    padded = torch.where(valid, received, torch.full_like(received, math.inf))
    return _sort_rows(padded), mask.sum()


def _middle(ordered: Tensor, m: Tensor) -> Tensor:
    """``[d]``: the median of each column of ``ordered`` (sorted, ``m`` valid values first);
    an even count averages the two middle values (numpy, ByzFL)."""
    d = ordered.shape[-1]
    low = ((m - 1) // 2).long().reshape(1, 1).expand(1, d)
    high = (m // 2).long().reshape(1, 1).expand(1, d)
    return 0.5 * (ordered.gather(0, low) + ordered.gather(0, high)).squeeze(0)

@AGGREGATORS.register("average", "the plain mean of the received vectors (not robust)")
@dataclass(frozen=True)
class Average:
    """``mean_j x_j`` over the valid rows."""

    def __call__(self, own: Tensor, received: Tensor, mask: Tensor) -> Tensor:
        return masked_mean(received, mask)


@AGGREGATORS.register("median", "coordinate-wise median (even counts: mean of the two middle)")
@dataclass(frozen=True)
class Median:
    """Coordinate-wise median; an even count averages the two middle values (numpy, ByzFL)."""

    def __call__(self, own: Tensor, received: Tensor, mask: Tensor) -> Tensor:
        ordered, m = _sorted_valid(received, mask)
        return _middle(ordered, m)


@AGGREGATORS.register(
    "trimmed_mean", "coordinate-wise mean after dropping the f (or fraction) largest and smallest"
)
@dataclass(frozen=True)
class TrimmedMean:
    """Per coordinate: sort, drop the ``f`` smallest and ``f`` largest, average the rest (Yin
    et al., ICML 2018; ByzFL's ``TrMean(f)``).

    ``f`` is a count; ``fraction`` trims ``floor(fraction * k)`` at each end of the ``k``
    messages a receiver holds, so nodes of different degrees trim alike. Exactly one of them is
    required (ByzFL's default ``f = 0`` is the plain mean: ask for ``average``)."""

    f: int | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        if (self.f is None) == (self.fraction is None):
            raise ValueError("trimmed_mean: give exactly one of f (a count) or fraction")
        if self.fraction is not None and not 0 <= self.fraction < 0.5:
            raise ValueError(
                f"trimmed_mean: fraction must lie in [0, 0.5) (it trims that much at each end), "
                f"got {self.fraction!r}"
            )
        if self.f is not None:
            check_f("trimmed_mean", self.f)

    def min_messages(self) -> int:
        return 2 * int(self.f) + 1 if self.f is not None else 1

    def __call__(self, own: Tensor, received: Tensor, mask: Tensor) -> Tensor:
        ordered, m = _sorted_valid(received, mask)
        f = (torch.floor(self.fraction * m + 1e-9) if self.f is None
             else tolerated(int(self.f), mask))
        position = torch.arange(received.shape[0], device=received.device, dtype=m.dtype)
        keep = ((position >= f) & (position < m - f)).unsqueeze(-1)
        total = torch.where(keep, ordered, torch.zeros_like(ordered)).sum(0)
        return total / (m - 2 * f).clamp_min(1.0)


@AGGREGATORS.register("meamed", "coordinate-wise mean of the n - f values nearest the median")
@dataclass(frozen=True)
class Meamed:
    """Mean around the median (Xie, Koyejo and Gupta, "Generalized Byzantine-tolerant SGD",
    2018; ByzFL's ``Meamed(f=0)``): per coordinate, the mean of the ``n - f`` values nearest
    the coordinate-wise median. Among values at the same distance, ``torch.topk`` chooses, as
    in ByzFL (see :func:`smallest`; its reference input has such ties)."""

    f: int = 0

    def __post_init__(self) -> None:
        check_f("meamed", self.f)

    def min_messages(self) -> int:
        return 2 * int(self.f) + 1

    def __call__(self, own: Tensor, received: Tensor, mask: Tensor) -> Tensor:
        valid = (mask.unsqueeze(-1) > 0) & (received == received)
        values = torch.where(valid, received, torch.full_like(received, math.inf))
        m = mask.sum()
        f = tolerated(int(self.f), mask)
        gap = (values - _middle(_sort_rows(values), m)).abs().nan_to_num(nan=math.inf)
        index, take = smallest(gap, m - f, int(self.f))
        nearest = values.gather(0, index)
        return torch.where(take, nearest, torch.zeros_like(nearest)).sum(0) / (m - f)


def make_aggregator(spec: str | dict | object | None) -> object | None:
    """An aggregator from a name, ``{"name": ..., **params}``, or an aggregator itself; a
    ``pre = [...]`` entry (pre-aggregator names or specs) chains them before it
    (:class:`murmura.robust.preaggregators.Chained`)."""
    if isinstance(spec, dict) and "pre" in spec:
        from murmura.robust.preaggregators import chain

        return chain(spec["pre"], {k: v for k, v in spec.items() if k != "pre"})
    return build_component(AGGREGATORS, spec)


def check_messages(aggregator: object, fewest: int, where: str) -> None:
    """Refuse an aggregator that needs more messages than a receiver gets (``fewest``: the
    smallest number any receiver aggregates, ``where`` says whose)."""
    need = getattr(aggregator, "min_messages", lambda: 1)()
    if fewest < need:
        raise ValueError(
            f"aggregator {type(aggregator).__name__} needs at least {need} messages per receiver "
            f"but {where} {fewest}: use a denser graph, more clients per round, or a smaller f"
        )


def fewest_messages(communication: object, topology: object, participants: int) -> int | None:
    """How many messages the receiver with the fewest aggregates under ``communication``'s
    robust rule (a graph node: its in-neighbours and itself; a server: the round's clients), or
    ``None`` when there is no robust rule or a time-varying graph decides it per round."""
    if getattr(communication, "aggregator", None) is None:
        return None
    if getattr(communication, "needs_topology", False):
        if topology is None or topology.time_varying:
            return None
        return int(topology.mixing_at(0).in_degree.min()) + 1
    return participants
