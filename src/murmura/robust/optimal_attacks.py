"""Attacks tuned by a search: ByzFL's optimal IPM / ALIE (a line search over ``tau`` against the
defender's aggregator) and Shejwalkar and Houmansadr's aggregator-agnostic min-max / min-sum.

All follow the attack contract ``attack(own[d], honest[k, d], mask[k], key) -> [d]`` and are
written for ``vmap``: each search runs a fixed number of probes with ``torch.where`` in place of
the reference code's ``if`` / ``while`` on values, which gives the same probes and the same
answer (see each class).

>>> import torch
>>> from murmura.robust.aggregators import Median
>>> H = torch.tensor([[1., 2., 3.], [4., 5., 6.], [7., 8., 9.], [.5, -1., 2.], [10., -10., 0.]])
>>> attack = OptimalIPM(agg=Median(), pre_agg_list=(), f=2)
>>> attack(H[0], H, torch.ones(5), torch.tensor(0)).tolist()   # ByzFL's: tau* = 10
[-45.0, -8.0, -40.0]
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from murmura.robust.aggregators import Average, make_aggregator, masked_mean
from murmura.robust.attacks import ATTACKS, masked_std

Tensor = torch.Tensor


def _pre_aggregators(spec: Any) -> tuple | None:
    """Pre-aggregators from names, ``{"name": ..., **params}`` or the rules themselves."""
    if spec is None:
        return None
    from murmura.robust.preaggregators import make_preaggregator

    items = [spec] if isinstance(spec, (str, dict)) or callable(spec) else list(spec)
    return tuple(make_preaggregator(item) for item in items)


def _check_aggregator(agg: Any, where: str) -> None:
    if getattr(agg, "joint", False) or getattr(agg, "needs_data", None):
        raise ValueError(
            f"{where}: agg {type(agg).__name__} reads several payloads or training data, which "
            "an attacker cannot simulate; give agg a rule on message vectors (median, ...)"
        )


def aggregate_as_defender(agg: Any, own: Tensor, rows: Tensor, mask: Tensor, key: Tensor
                          ) -> Tensor:
    """What the defence ``agg`` (pre-aggregators included, as a
    :class:`~murmura.robust.preaggregators.Chained`) makes of ``rows``. An aggregator that
    reads mixing weights (``needs_weights``) is given uniform ones; one that ``needs_key``
    gets ``key``."""
    extra: list[Tensor] = []
    if getattr(agg, "needs_weights", False):
        extra.append(mask / mask.sum().clamp_min(1.0))
    if getattr(agg, "needs_key", False):
        extra.append(key)
    return agg(own, rows, mask, *extra)


@dataclass(frozen=True)
class _LineSearch:
    """ByzFL's ``Optimal_*`` line search (``byzfl/attacks/attacks.py``): maximize
    ``||agg(pre(H + [a(tau)] * f)) - mean(H)||`` over ``tau``, ``a(tau) = base + tau * step``.

    Expansion from ``start``: probe ``best + delta``; better: accept, ``delta *= 2``, go on;
    not: ``delta *= ratio`` and contract. Contraction until ``evals`` probes are spent: probe
    ``best + delta``, accept if better, ``delta *= ratio``. ``evals`` counts the probe at
    ``start``. (The original ``line_maximize`` of LPD-EPFL/robust-collaborative-learning also
    probes below the best point; ByzFL's, followed here, only above.)

    ``agg``, ``pre_agg_list`` and ``f`` are the defence the attacker simulates. Left ``None``,
    the engine fills them from the algorithm's aggregator and the number of attackers
    (:meth:`bind_defence`; the aggregator then holds its own pre-aggregators, so
    ``pre_agg_list`` becomes empty); outside a simulation they are ByzFL's defaults,
    ``Average()``, ``[Clipping(c=2.0)]`` and ``f = 1``. The simulated aggregator sees the
    first honest row as its own vector (ByzFL's MoNNA pivot ``idx = 0``). The search is
    vmapped when the aggregator and pre-aggregators are (``vectorized`` says so); each probe
    uses the attacker's key for random pre-aggregators (bucketing), the same for every probe.
    """

    agg: Any = None
    pre_agg_list: Any = None
    f: int | None = None
    evals: int = 20
    start: float = 0.0
    delta: float = 10.0
    ratio: float = 0.8

    name = "optimal"

    def __post_init__(self) -> None:
        where = self.name
        if self.f is not None and (isinstance(self.f, bool) or not isinstance(self.f, int)
                                   or self.f < 0):
            raise ValueError(f"{where}: f (the Byzantine vectors) must be an integer >= 0, "
                             f"got {self.f!r}")
        if isinstance(self.evals, bool) or not isinstance(self.evals, int) or self.evals < 1:
            raise ValueError(f"{where}: evals must be a positive integer, got {self.evals!r}")
        for name in ("start", "delta", "ratio"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
                    value):
                raise ValueError(f"{where}: {name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.delta == 0:
            raise ValueError(f"{where}: delta (the first step) must be non-zero")
        if not 0.5 < self.ratio < 1:
            raise ValueError(f"{where}: ratio must lie in (0.5, 1) (ByzFL's bounds), got "
                             f"{self.ratio!r}")
        if self.agg is not None:
            object.__setattr__(self, "agg", make_aggregator(self.agg))
            _check_aggregator(self.agg, where)
        object.__setattr__(self, "pre_agg_list", _pre_aggregators(self.pre_agg_list))

    def bind_defence(self, aggregator: Any, f: int) -> _LineSearch:
        """This attack against the defender's ``aggregator`` (``None``: a plain mean) with
        ``f`` Byzantine vectors; fields given explicitly are kept."""
        return dataclasses.replace(
            self,
            agg=self.agg if self.agg is not None else (aggregator or Average()),
            pre_agg_list=self.pre_agg_list if self.pre_agg_list is not None else (),
            f=self.f if self.f is not None else int(f),
        )

    def _defence(self) -> tuple[Any, int]:
        """The simulated defence (pre-aggregators, then the aggregator) and ``f``."""
        agg = self.agg if self.agg is not None else Average()
        pres = self.pre_agg_list
        if pres is None:
            pres = _pre_aggregators([{"name": "clipping", "c": 2.0}])
        if pres:
            from murmura.robust.preaggregators import Chained

            agg = Chained(pre=pres, aggregator=agg)
        return agg, 1 if self.f is None else self.f

    @property
    def vectorized(self) -> bool:
        return getattr(self._defence()[0], "vectorized", True)

    def line(self, honest: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(base, step)``: the attack with factor ``tau`` is ``base + tau * step``."""
        raise NotImplementedError

    def __call__(self, own: Tensor, honest: Tensor, mask: Tensor, key: Tensor) -> Tensor:
        agg, f = self._defence()
        honest = torch.where(mask.unsqueeze(-1) > 0, honest, torch.zeros_like(honest))
        base, step = self.line(honest, mask)
        mean = masked_mean(honest, mask)
        first = torch.argmax((mask > 0).to(honest.dtype))
        pivot = honest.index_select(0, first.reshape(1)).squeeze(0)
        rows_mask = torch.cat([mask, torch.ones(f, dtype=mask.dtype, device=mask.device)])

        def distance(tau: Tensor) -> Tensor:
            bad = (base + tau * step).expand(f, -1)
            out = aggregate_as_defender(agg, pivot, torch.cat([honest, bad]), rows_mask, key)
            return torch.linalg.vector_norm(out - mean)

        best_x = torch.full((), self.start, dtype=honest.dtype, device=honest.device)
        best_y = distance(best_x)
        delta = torch.full_like(best_x, self.delta)
        expanding = torch.ones((), dtype=torch.bool, device=honest.device)
        for _ in range(self.evals - 1):
            prop_x = best_x + delta
            prop_y = distance(prop_x)
            better = prop_y > best_y
            best_x = torch.where(better, prop_x, best_x)
            best_y = torch.where(better, prop_y, best_y)
            delta = torch.where(expanding & better, delta * 2.0, delta * self.ratio)
            expanding = expanding & better
        return base + best_x * step


@ATTACKS.register("optimal_ipm", "IPM with tau line-searched against the defender's aggregator")
@dataclass(frozen=True)
class OptimalIPM(_LineSearch):
    """ByzFL's ``Optimal_InnerProductManipulation(agg=Average(), pre_agg_list=[Clipping()],
    f=1, evals=20, start=0.0, delta=10.0, ratio=0.8)``: ``-tau * mean(honest)`` with the
    ``tau`` that moves the defender's aggregate furthest from the honest mean (the line search
    of :class:`_LineSearch`, whose docstring says how the defence is filled in)."""

    name = "optimal_ipm"

    def line(self, honest: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        mean = masked_mean(honest, mask)
        return torch.zeros_like(mean), -mean


@ATTACKS.register("optimal_alie", "ALIE with tau line-searched against the defender's aggregator")
@dataclass(frozen=True)
class OptimalALIE(_LineSearch):
    """ByzFL's ``Optimal_ALittleIsEnough`` (same defaults as :class:`OptimalIPM`):
    ``mean(honest) + tau * std(honest)`` (ByzFL's "+" sign, ``ddof = 1``) with the ``tau``
    that moves the defender's aggregate furthest from the honest mean."""

    name = "optimal_alie"

    def line(self, honest: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        return masked_mean(honest, mask), masked_std(honest, mask)


PERTURBATIONS = ("unit_vec", "std", "sign")


@dataclass(frozen=True)
class _DistanceBounded:
    """Shejwalkar and Houmansadr, "Manipulating the Byzantine: optimizing model poisoning
    attacks and defenses for federated learning" (NDSS 2021), aggregator-agnostic attacks:
    send ``mean - gamma * p`` with the largest ``gamma`` whose distances to the honest vectors
    stay within what honest vectors show among themselves (a subclass says which).

    ``perturbation`` is ``p``: ``"unit_vec"`` (``mean / ||mean||``, the default, as in the
    authors' code), ``"std"`` (the coordinate-wise std, ``ddof = 1``) or ``"sign"``
    (``sign(mean)``); the paper writes these as the inverse unit vector, inverse std and
    inverse sign added to the mean. ``gamma`` is found as the authors' code does: start at
    ``gamma_init`` (10), step ``+-gamma_init / 2^t`` as the bound holds or not, keep the
    last ``gamma`` that held, stop when the step falls to ``tolerance`` (1e-5); that is
    ``ceil(log2(gamma_init / tolerance))`` probes, run here as a fixed loop (the same probes).
    ``gamma = 0`` (the honest mean) if no probe holds."""

    perturbation: str = "unit_vec"
    gamma_init: float = 10.0
    tolerance: float = 1e-5

    name = "min_max"

    def __post_init__(self) -> None:
        if self.perturbation not in PERTURBATIONS:
            raise ValueError(f"{self.name}: perturbation must be one of {PERTURBATIONS}, got "
                             f"{self.perturbation!r}")
        for field in ("gamma_init", "tolerance"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and value > 0):
                raise ValueError(f"{self.name}: {field} must be a positive number, got "
                                 f"{value!r}")
        if self.tolerance >= self.gamma_init:
            raise ValueError(f"{self.name}: tolerance ({self.tolerance}) must be below "
                             f"gamma_init ({self.gamma_init})")

    def direction(self, honest: Tensor, mask: Tensor, mean: Tensor) -> Tensor:
        """The perturbation ``p`` (the attack is ``mean - gamma * p``)."""
        if self.perturbation == "std":
            return masked_std(honest, mask)
        if self.perturbation == "sign":
            return torch.sign(mean)
        norm = torch.linalg.vector_norm(mean)
        return torch.where(norm > 0, mean / norm.clamp_min(1e-30), torch.zeros_like(mean))

    def holds(self, to_attack: Tensor, pairwise: Tensor, valid: Tensor) -> Tensor:
        """Whether the attack's squared distances ``to_attack [k]`` keep within the bound set
        by the honest squared distances ``pairwise [k, k]`` (``valid``: real rows)."""
        raise NotImplementedError

    def __call__(self, own: Tensor, honest: Tensor, mask: Tensor, key: Tensor) -> Tensor:
        mean = masked_mean(honest, mask)
        p = self.direction(honest, mask, mean)
        valid = mask > 0
        centred = torch.where(valid.unsqueeze(-1), honest - mean, torch.zeros_like(honest))
        sq = (centred * centred).sum(-1)
        pairwise = (sq.unsqueeze(0) + sq.unsqueeze(1) - 2.0 * centred @ centred.T).clamp_min(0)
        pairwise = torch.where(valid.unsqueeze(0) & valid.unsqueeze(1), pairwise,
                               torch.zeros_like(pairwise))
        along, pp = centred @ p, (p * p).sum()  # ||h - (mean - g p)||^2 = sq + 2 g along + g^2 pp
        gamma = torch.full((), self.gamma_init, dtype=honest.dtype, device=honest.device)
        step, success = gamma.clone(), torch.zeros_like(gamma)
        for _ in range(math.ceil(math.log2(self.gamma_init / self.tolerance))):
            ok = self.holds(sq + 2.0 * gamma * along + gamma * gamma * pp, pairwise, valid)
            success = torch.where(ok, gamma, success)
            gamma = torch.where(ok, gamma + step / 2, gamma - step / 2)
            step = step / 2
        return mean - success * p


@ATTACKS.register("min_max", "mean - gamma*p, gamma max s.t. its farthest honest distance fits")
@dataclass(frozen=True)
class MinMax(_DistanceBounded):
    """Min-max (Shejwalkar and Houmansadr, NDSS 2021; see :class:`_DistanceBounded`): the
    largest ``gamma`` with ``max_i ||m - h_i||^2 <= max_{i,j} ||h_i - h_j||^2``: the attack is
    no farther from any honest vector than the two farthest honest vectors are apart."""

    name = "min_max"

    def holds(self, to_attack: Tensor, pairwise: Tensor, valid: Tensor) -> Tensor:
        worst = torch.where(valid, to_attack, torch.full_like(to_attack, -math.inf)).max()
        return worst <= pairwise.max()


@ATTACKS.register("min_sum", "mean - gamma*p, gamma max s.t. its summed sq. distances fit")
@dataclass(frozen=True)
class MinSum(_DistanceBounded):
    """Min-sum (Shejwalkar and Houmansadr, NDSS 2021; see :class:`_DistanceBounded`): the
    largest ``gamma`` with ``sum_i ||m - h_i||^2 <= max_i sum_j ||h_i - h_j||^2`` (the paper's
    bound, ``bound="max"``). The authors' notebooks (vrt1shjwlkr/NDSS21-Model-Poisoning)
    bound by the smallest honest sum instead, ``min_i sum_j ||h_i - h_j||^2``: ``bound="min"``.
    """

    bound: str = "max"

    name = "min_sum"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bound not in ("max", "min"):
            raise ValueError(f"min_sum: bound must be 'max' (the paper) or 'min' (the "
                             f"authors' code), got {self.bound!r}")

    def holds(self, to_attack: Tensor, pairwise: Tensor, valid: Tensor) -> Tensor:
        total = torch.where(valid, to_attack, torch.zeros_like(to_attack)).sum()
        sums = pairwise.sum(1)
        if self.bound == "max":
            limit = torch.where(valid, sums, torch.full_like(sums, -math.inf)).max()
        else:
            limit = torch.where(valid, sums, torch.full_like(sums, math.inf)).min()
        return total <= limit
