"""Pre-aggregators, ``pre(received[k, d], mask[k], key) -> (rows[k', d], mask[k'])``, and the
chain that runs them before an aggregator.

A pre-aggregator transforms one receiver's padded, masked stack of messages before the robust
rule sees it (ByzFL's ``pre_agg_list``): NNM mixes each message with its nearest neighbours,
bucketing averages random buckets, clipping and ARC shrink long vectors. Like an aggregator it
is written for ONE receiver and ``vmap``ped by the engine: masked torch ops only, padded rows
(``mask == 0``) never influence a valid output row, come back as zeros with mask 0, and the
inputs are never written (ByzFL's ``Clipping`` and ``ARC`` clip numpy input in place; these do
not). Only bucketing is random: it declares ``needs_key = True`` and draws its permutation from
``key`` (an int64 scalar, e.g. from :func:`murmura.swarm.random.node_keys`); the others accept
and ignore a key. :class:`Chained` is an aggregator itself: the pre-aggregators in order, then
the aggregator; ``make_aggregator({"name": "trimmed_mean", "f": 2, "pre": ["nnm"]})`` builds one.

>>> import torch
>>> x = torch.tensor([[3., 4.], [0., 1.], [9., 9.]])
>>> rows, mask = Clipping(c=2.0)(x, torch.tensor([1., 1., 0.]))   # the last row is padding
>>> rows.tolist(), mask.tolist()
([[1.2000000476837158, 1.600000023841858], [0.0, 1.0], [0.0, 0.0]], [1.0, 1.0, 0.0])
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from murmura.registry import Registry, build_component
from murmura.swarm.random import hash_keys, key_uniform

Tensor = torch.Tensor

PREAGGREGATORS: Registry = Registry("pre-aggregator")


def _count(rule: Any, name: str, low: int) -> None:
    """Refuse a count field that is not an integer >= ``low``; store it as an int."""
    value = getattr(rule, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value) or int(value) != value or value < low:
        raise ValueError(f"{type(rule).__name__.lower()}: {name} must be an integer >= {low}, "
                         f"got {value!r}")
    object.__setattr__(rule, name, int(value))


def _valid(rows: Tensor, mask: Tensor) -> Tensor:
    """``rows`` with the padded ones (``mask == 0``) set to zeros."""
    return torch.where(mask.unsqueeze(-1) > 0, rows, torch.zeros_like(rows))


def _squared_distances(x: Tensor, mask: Tensor) -> Tensor:
    """``[k, k]`` squared L2 distances between the rows, +inf towards padded rows and exactly 0
    on the diagonal (Gram form: ``k x k`` memory, not ``k x k x d``; the rows are centred on
    their mean first, so large models far from the origin lose no precision)."""
    valid = mask.unsqueeze(-1) > 0
    x = torch.where(valid, x, torch.zeros_like(x))
    x = torch.where(valid, x - x.sum(0) / mask.sum().clamp_min(1.0), x)
    sq = (x * x).sum(-1)
    dist = (sq.unsqueeze(0) + sq.unsqueeze(1) - 2.0 * x @ x.T).clamp_min(0.0)
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    dist = torch.where(eye, torch.zeros_like(dist), dist)
    return torch.where(mask.unsqueeze(0) > 0, dist, torch.full_like(dist, math.inf))


@PREAGGREGATORS.register("nnm", "nearest-neighbour mixing: each message -> mean of its n-f nearest")
@dataclass(frozen=True)
class NNM:
    """Nearest Neighbor Mixing (Allouah et al., "Fixing by Mixing", AISTATS 2023; ByzFL's
    ``NNM(f=0)``): ``y_i = 1/(n-f) sum_{j in N_i} x_j``, where ``N_i`` are the ``n - f`` messages
    nearest to ``x_i`` in L2, ``x_i`` itself included; ``n`` is the receiver's count of valid rows.

    ByzFL raises when ``f >= n``; under ``vmap`` a rule cannot raise on a count, so a receiver
    with ``f >= n`` keeps its single nearest message (itself), and ``min_messages()`` (``f + 1``)
    lets the engine and :func:`murmura.robust.preaggregate` refuse such inputs beforehand.
    Distances tie only between equal messages in practice; ties keep the lower index first."""

    f: int = 0

    def __post_init__(self) -> None:
        _count(self, "f", 0)

    def min_messages(self) -> int:
        return int(self.f) + 1

    def __call__(self, received: Tensor, mask: Tensor, key: Tensor | None = None
                 ) -> tuple[Tensor, Tensor]:
        keep = (mask.sum() - self.f).clamp_min(1.0)
        order = torch.argsort(_squared_distances(received, mask), dim=1, stable=True)
        rank = torch.argsort(order, dim=1)
        nearest = ((rank < keep) & (mask.unsqueeze(0) > 0)).to(received.dtype)
        mixed = (nearest @ _valid(received, mask)) / nearest.sum(1, keepdim=True).clamp_min(1.0)
        return _valid(mixed, mask), mask


@PREAGGREGATORS.register("bucketing", "means of random buckets of s messages (needs a key)")
@dataclass(frozen=True)
class Bucketing:
    """Bucketing (Karimireddy, He and Jaggi, ICLR 2022; ByzFL's ``Bucketing(s=1)``): shuffle the
    ``n`` valid messages, average consecutive buckets of ``s``; a last, incomplete bucket of the
    ``n mod s`` left over is averaged too (ByzFL's form), so ``ceil(n / s)`` rows come out,
    padded to ``ceil(k / s)``. ``s = 1`` only permutes.

    The permutation is drawn from ``key`` (48 random bits per row from
    :func:`~murmura.swarm.random.key_uniform`, sorted), so it is the same on any device and
    under ``vmap``; ByzFL draws it from numpy's or torch's global generator instead."""

    s: int = 1
    needs_key: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _count(self, "s", 1)

    def messages_in(self, rows_out: int) -> int:
        """How many messages give at least ``rows_out`` buckets."""
        return (max(rows_out, 1) - 1) * int(self.s) + 1

    def __call__(self, received: Tensor, mask: Tensor, key: Tensor | None = None
                 ) -> tuple[Tensor, Tensor]:
        if key is None:
            raise ValueError(
                "bucketing draws a random permutation: pass key (an int64 scalar tensor, e.g. "
                "murmura.swarm.random.node_keys(seed, 'bucketing', nodes, round))"
            )
        k, s = received.shape[0], int(self.s)
        draw = (key_uniform(key, (k,), 0).to(torch.float64)
                + key_uniform(key, (k,), 1).to(torch.float64) * 2.0**-24)
        order = torch.argsort(torch.where(mask > 0, draw, torch.full_like(draw, 2.0)), stable=True)
        shuffled = _valid(received, mask)[order]
        position = torch.arange(k, device=received.device)
        buckets = torch.arange(-(-k // s), device=received.device)
        member = ((position // s).unsqueeze(0) == buckets.unsqueeze(1)) & (position < mask.sum())
        count = member.sum(1, keepdim=True).to(received.dtype)
        means = (member.to(received.dtype) @ shuffled) / count.clamp_min(1.0)
        return means, (count.squeeze(1) > 0).to(mask.dtype)


@PREAGGREGATORS.register("clipping", "static clipping: x * min(1, c / ||x||)")
@dataclass(frozen=True)
class Clipping:
    """Static clipping (ByzFL's ``Clipping(c=2.0)``): ``x_i * min(1, c / ||x_i||_2)``, a new
    tensor (ByzFL clips numpy input in place). A message of infinite norm becomes NaN, as in
    ByzFL (``inf * c / inf``)."""

    c: float = 2.0

    def __post_init__(self) -> None:
        if isinstance(self.c, bool) or not isinstance(self.c, (int, float)) or not self.c >= 0:
            raise ValueError(f"clipping: c must be a number >= 0 (the norm bound), got {self.c!r}")

    def __call__(self, received: Tensor, mask: Tensor, key: Tensor | None = None
                 ) -> tuple[Tensor, Tensor]:
        norm = torch.linalg.vector_norm(received, dim=-1, keepdim=True)
        scale = torch.where(norm > self.c, self.c / norm, torch.ones_like(norm))
        return _valid(received * scale, mask), mask


@PREAGGREGATORS.register("arc", "adaptive robust clipping of the 2f(n-f)/n longest messages")
@dataclass(frozen=True)
class ARC:
    """Adaptive Robust Clipping (Allouah et al., "Towards practical Byzantine-robust federated
    learning: the power of adaptive robust clipping", 2024; ByzFL's ``ARC(f=0)``): with
    ``c = floor(2 f / n * (n - f))`` (ByzFL's float expression, evaluated in float64 alike), the
    ``c`` messages of largest norm are clipped to the norm of the ``(n - c)``-th smallest; the
    others pass unchanged. ByzFL raises when ``f > n`` (``min_messages()`` is ``f``); under
    ``vmap`` such a receiver clips nothing."""

    f: int = 0

    def __post_init__(self) -> None:
        _count(self, "f", 0)

    def min_messages(self) -> int:
        return max(int(self.f), 1)

    def __call__(self, received: Tensor, mask: Tensor, key: Tensor | None = None
                 ) -> tuple[Tensor, Tensor]:
        n = mask.sum().to(torch.float64)
        clipped = torch.floor(2 * self.f / n * (n - self.f)).clamp(min=0.0).minimum(n - 1)
        norm = torch.linalg.vector_norm(received, dim=-1)
        ordered = torch.sort(torch.where(mask > 0, norm, torch.full_like(norm, math.inf))).values
        cut = (n - clipped - 1).clamp_min(0).long().reshape(1)
        threshold = ordered.gather(0, cut).squeeze(0)
        scale = torch.where(norm > threshold, threshold / norm, torch.ones_like(norm))
        return _valid(received * scale.unsqueeze(-1), mask), mask


def make_preaggregator(spec: str | dict | object) -> object:
    """A pre-aggregator from a name, ``{"name": ..., **params}``, or a pre-aggregator itself."""
    rule = build_component(PREAGGREGATORS, spec)
    if rule is None:
        raise ValueError("a pre-aggregator spec must not be None; e.g. pre = [\"nnm\"]")
    return rule


@dataclass(frozen=True)
class Chained:
    """An aggregator that runs pre-aggregators, in order, then ``aggregator`` (ByzFL's
    ``pre_agg_list`` before its aggregator): ``aggregator(own, pre_m(...pre_1(received)))``.

    ``own`` passes through unchanged (a server's model or a node's own message is the pivot of
    a self-centred rule, not a message to be mixed). Declarations follow the parts: the chain
    ``needs_key`` when a part does (bucketing), is ``vectorized`` when every part is, and takes
    ``needs_data`` / ``needs_weights`` from its aggregator (mixing weights pass through
    row-preserving pre-aggregators; bucketing merges rows, so it cannot precede such a rule).

    Call: ``chain(own, received, mask, *extra, key=None, weights=None, batch=None)``, where the
    positional ``extra`` are ``weights`` (if ``needs_weights``) then ``key`` (if
    ``needs_key``), the order in which the engine passes them (a receiver's key is
    ``node_keys(seed, "aggregate", receiver, round, plan)``). Each stage gets its own key,
    ``hash_keys(key, stage)``; the aggregator's is ``hash_keys(key, len(pre))``.

    >>> chain = Chained(pre=({"name": "nnm", "f": 1},), aggregator={"name": "trimmed_mean", "f": 1})
    >>> x = torch.tensor([[0.], [1.], [2.], [30.]])
    >>> chain(x[0], x, torch.ones(4)).tolist()   # NNM(f=1) rows: 1, 1, 1, 11; trim one each end
    [1.0]
    """

    pre: tuple = ()
    aggregator: Any = None

    def __post_init__(self) -> None:
        from murmura.robust.aggregators import make_aggregator

        pre = (self.pre,) if isinstance(self.pre, (str, dict)) else tuple(self.pre)
        object.__setattr__(self, "pre", tuple(make_preaggregator(p) for p in pre))
        aggregator = make_aggregator(self.aggregator)
        if aggregator is None:
            raise ValueError("chained: give the aggregator that follows the pre-aggregators")
        if getattr(aggregator, "joint", False):
            raise ValueError(
                f"chained: {type(aggregator).__name__} is joint (reads every payload name); "
                "pre-aggregators work on one payload: drop pre or use a per-payload aggregator"
            )
        if getattr(aggregator, "needs_weights", False) and any(
                hasattr(p, "messages_in") for p in self.pre):
            raise ValueError(
                f"chained: {type(aggregator).__name__} reads each message's mixing weight, but "
                "bucketing merges messages: drop bucketing or choose another aggregator"
            )
        object.__setattr__(self, "aggregator", aggregator)

    @property
    def needs_key(self) -> bool:
        return any(getattr(p, "needs_key", False) for p in (*self.pre, self.aggregator))

    @property
    def vectorized(self) -> bool:
        return all(getattr(p, "vectorized", True) for p in (*self.pre, self.aggregator))

    @property
    def needs_data(self) -> int:
        return int(getattr(self.aggregator, "needs_data", 0) or 0)

    @property
    def needs_weights(self) -> bool:
        return bool(getattr(self.aggregator, "needs_weights", False))

    def min_messages(self) -> int:
        """The fewest messages a receiver needs: the aggregator's count traced back through
        the pre-aggregators (bucketing needs ``(m - 1) s + 1`` messages for ``m`` buckets)."""
        need = int(getattr(self.aggregator, "min_messages", lambda: 1)())
        for p in reversed(self.pre):
            need = max(getattr(p, "messages_in", lambda m: m)(need),
                       int(getattr(p, "min_messages", lambda: 1)()))
        return need

    def bind(self, layout: Any) -> Chained:
        """The chain with every part that has ``bind(layout)`` bound (see ``ModelLayout``)."""
        parts = [p.bind(layout) if hasattr(p, "bind") else p for p in (*self.pre, self.aggregator)]
        return dataclasses.replace(self, pre=tuple(parts[:-1]), aggregator=parts[-1])

    def preaggregate(self, received: Tensor, mask: Tensor, key: Tensor | None = None
                     ) -> tuple[Tensor, Tensor]:
        """The rows and mask the aggregator gets: each pre-aggregator in order."""
        for stage, p in enumerate(self.pre):
            if getattr(p, "needs_key", False):
                stage_key = None if key is None else hash_keys(key, stage)
                received, mask = p(received, mask, stage_key)
            else:
                received, mask = p(received, mask)
        return received, mask

    def __call__(self, own: Tensor, received: Tensor, mask: Tensor, *extra: Tensor,
                 key: Tensor | None = None, weights: Tensor | None = None,
                 batch: dict | None = None) -> Tensor:
        rest = list(extra)
        if self.needs_weights and weights is None and rest:
            weights = rest.pop(0)
        if self.needs_key and key is None and rest:
            key = rest.pop(0)
        if rest:
            raise TypeError(f"chained: {len(rest)} unexpected positional argument(s)")
        if self.needs_key and key is None:
            raise ValueError(
                "chained: a part of this chain is random (bucketing): pass key, an int64 "
                "scalar tensor (the engine passes each receiver's key)"
            )
        rows, mask = self.preaggregate(received, mask, key)
        args: list[Any] = [own, rows, mask]
        if self.needs_weights:
            args.append(weights)
        if getattr(self.aggregator, "needs_key", False):
            args.append(hash_keys(key, len(self.pre)))
        return self.aggregator(*args, **({} if batch is None else {"batch": batch}))


def chain(pre: Sequence[Any], aggregator: Any) -> Any:
    """``aggregator`` itself when ``pre`` is empty, else ``Chained(pre, aggregator)``; ``pre``
    may be one name or spec, or a list of them (a config's ``pre = ["nnm", ...]``)."""
    from murmura.robust.aggregators import make_aggregator

    if isinstance(pre, (str, dict)) or callable(pre):
        pre = [pre]
    if not isinstance(pre, (list, tuple)):
        raise ValueError(f"pre must be a list of pre-aggregator names or specs, got {pre!r}")
    return Chained(tuple(pre), aggregator) if pre else make_aggregator(aggregator)
