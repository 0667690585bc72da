"""Robust aggregators that iterate towards a centre: the geometric median (smoothed Weiszfeld)
and centered clipping. Each is ``f(own[d], received[k, d], mask[k]) -> [d]`` for ONE receiver,
with ByzFL's constructor arguments and defaults (see :mod:`murmura.robust.aggregators` for the
contract and non-finite messages); distances to the current centre are summed squared
differences (:func:`murmura.robust.distance_rules.distances_to`).

>>> import torch
>>> x = torch.tensor([[0., 0.], [1., 0.], [0., 1.], [50., 50.]])
>>> CenteredClipping(tau=1.0)(torch.zeros(2), x, torch.ones(4)).tolist()  # clipped to 1
[0.4267767071723938, 0.4267767071723938]
>>> GeometricMedian(T=50, start="mean")(x[0], x, torch.ones(4)).round(decimals=2).tolist()
[0.5, 0.5]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from murmura.robust.aggregators import AGGREGATORS, check_f, usable_rows, zero_unusable
from murmura.robust.distance_rules import distances_to

Tensor = torch.Tensor


# ---------------------------------------------------------------------------------------------
# geometric median


@AGGREGATORS.register("geometric_median",
                      "smoothed Weiszfeld iterations towards the geometric median (RFA)")
@dataclass(frozen=True)
class GeometricMedian:
    """The geometric median ``argmin_z sum_i ||x_i - z||`` by ``T`` smoothed Weiszfeld steps
    (Weiszfeld 1937; smoothed as in RFA, Pillutla, Kakade and Harchaoui, IEEE TSP 2022), ByzFL's
    ``GeometricMedian(nu=0.1, T=3)``::

        z_0 = 0;  repeat T times:  beta_i = max(nu, ||x_i - z||),
                                   z = sum_i x_i / beta_i  /  sum_i 1 / beta_i

    Rows with a non-finite coordinate are dropped (ByzFL drops the ``+-inf`` ones). ByzFL starts
    from ``z_0 = 0`` (``start="zero"``, the default, so its reference values match); three steps
    from 0 are an approximate median and the result is not translation-equivariant. The RFA
    authors' code (Pillutla's ``geom_median``) starts from the weighted mean (``start="mean"``:
    then it is equivariant) and runs up to 100 steps to a tolerance: take a larger ``T``."""

    nu: float = 0.1
    T: int = 3
    start: str = "zero"

    def __post_init__(self) -> None:
        if isinstance(self.nu, bool) or not isinstance(self.nu, (int, float)) or \
                not self.nu > 0:
            raise ValueError(f"geometric_median: nu must be a number > 0 (the smoothing "
                             f"distance), got {self.nu!r}")
        check_f("geometric_median", self.T, "T")
        if self.start not in ("zero", "mean"):
            raise ValueError(f"geometric_median: start must be 'zero' (ByzFL) or 'mean' "
                             f"(RFA), got {self.start!r}")

    def __call__(self, own: Tensor, received: Tensor, mask: Tensor) -> Tensor:
        usable = usable_rows(received, mask)
        x = zero_unusable(received, usable)
        weight = usable.to(x.dtype)
        z = (weight @ x / weight.sum().clamp_min(1.0) if self.start == "mean"
             else torch.zeros_like(x[0]))
        for _ in range(int(self.T)):
            beta = distances_to(x, z).clamp_min(float(self.nu))
            w = weight / beta
            z = w @ x / w.sum().clamp_min(torch.finfo(x.dtype).tiny)
        return z


# ---------------------------------------------------------------------------------------------
# centered clipping


@AGGREGATORS.register("centered_clipping",
                      "L steps of v += mean_i clip_tau(x_i - v) from the receiver's own vector")
@dataclass(frozen=True)
class CenteredClipping:
    """Centered clipping (Karimireddy, He and Jaggi, "Learning from history for Byzantine robust
    optimization", ICML 2021; ByzFL's ``CenteredClipping(m=None, L=1, tau=100.0)``)::

        v = own;  repeat L times:  v = v + 1/n sum_i (x_i - v) min(1, tau / ||x_i - v||)

    ByzFL is stateful: ``v`` starts from ``m`` (zeros on the first call) and each call stores
    its output as the next call's start. In murmura the state lives in the engine: the centre is
    ``own``, at a server its current model, i.e. the previous aggregate when the payload is the
    model (a payload that is not the model gets zeros, ByzFL's first call; the paper centres
    on the previous aggregate, its momentum). ``m`` is accepted for ByzFL's signature (whose
    type check rejects every non-None ``m``: it tests ``not ndarray or not Tensor``);
    :func:`murmura.robust.aggregate` passes it as ``own``, ``__call__`` never reads it.
    A non-finite row adds nothing (it still counts in ``n``); ``tau`` may be an int."""

    m: Any = field(default=None, compare=False)
    L: int = 1
    tau: float = 100.0

    def __post_init__(self) -> None:
        check_f("centered_clipping", self.L, "L")
        if isinstance(self.tau, bool) or not isinstance(self.tau, (int, float)) or \
                not self.tau >= 0:
            raise ValueError(f"centered_clipping: tau must be a number >= 0 (the clipping "
                             f"radius), got {self.tau!r}")

    def __call__(self, own: Tensor, received: Tensor, mask: Tensor) -> Tensor:
        usable = usable_rows(received, mask)
        x = zero_unusable(received, usable)
        n = mask.sum().clamp_min(1.0)
        tau = float(self.tau)
        v = own
        for _ in range(int(self.L)):
            norm = distances_to(x, v)
            scale = torch.where(norm > tau, tau / norm, torch.ones_like(norm)) * usable
            v = v + (scale @ x - scale.sum() * v) / n
        return v


__all__ = ["CenteredClipping", "GeometricMedian"]
