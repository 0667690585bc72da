"""Attacks on a graph that send each honest neighbour its own message (``per_target = True``).

The engine calls such an attack once for every (Byzantine sender, honest receiver) link::

    attack(own[d], target[d], honest[k, d], weights[k], byzantine_weight, mask[k], key) -> [d]

``own`` is the sender's own message, ``target`` the receiver's, ``honest`` the receiver's
honest in-neighbours' messages (the receiver's own first), ``weights`` the receiver's mixing
weights ``W[i, j]`` of those rows, ``byzantine_weight`` the total weight ``W[i, .]`` the
receiver gives its Byzantine in-neighbours, ``mask`` marks the real rows and ``key`` is the
link's random key. Vmapped over links like every per-node rule.

>>> import torch
>>> target = torch.tensor([0., 0.])
>>> honest = torch.tensor([[0., 0.], [2., 4.]])          # the target's own message first
>>> weights, mask = torch.tensor([0.5, 0.25]), torch.ones(2)
>>> Dissensus()(target, target, honest, weights, torch.tensor(0.25), mask, 0).tolist()
[-2.0, -4.0]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from murmura.robust.attacks import ATTACKS, make_attack

Tensor = torch.Tensor


@ATTACKS.register("dissensus", "per neighbour: cancel the honest pull on it (ClippedGossip)")
@dataclass(frozen=True)
class Dissensus:
    """The dissensus attack of He, Karimireddy and Jaggi, "Byzantine-robust decentralized
    learning via ClippedGossip" (2022): to receiver ``i`` send

        ``x_i - epsilon * sum_{j honest} W_ij (x_j - x_i) / sum_{b Byzantine} W_ib``

    so that, with plain gossip ``x_i + sum_j W_ij (x_j - x_i)``, the Byzantine neighbours'
    terms add ``-epsilon`` times the honest pull: ``epsilon = 1`` (the default) cancels it
    exactly, and the receiver never moves towards its honest neighbours; ``epsilon > 1``
    pushes it away (the authors' experiment scripts, epfml/byzantine-robust-decentralized-
    optimizer, run ``dissensus1.5``, i.e. ``epsilon = 1.5``). A receiver with no Byzantine
    weight (not a real link) is sent its own vector."""

    epsilon: float = 1.0

    per_target = True

    def __post_init__(self) -> None:
        if isinstance(self.epsilon, bool) or not isinstance(self.epsilon, (int, float)):
            raise ValueError(f"dissensus: epsilon must be a number, got {self.epsilon!r}")
        object.__setattr__(self, "epsilon", float(self.epsilon))

    def __call__(self, own: Tensor, target: Tensor, honest: Tensor, weights: Tensor,
                 byzantine_weight: Tensor, mask: Tensor, key: Tensor) -> Tensor:
        pull = ((weights * mask).unsqueeze(-1) * (honest - target)).sum(0)
        byzantine_weight = torch.as_tensor(byzantine_weight, dtype=target.dtype)
        scale = torch.where(byzantine_weight > 0, self.epsilon / byzantine_weight.clamp_min(
            torch.finfo(target.dtype).tiny), torch.zeros_like(byzantine_weight))
        return target - scale * pull


@ATTACKS.register("equivocation", "per neighbour: a base attack computed over its neighbourhood")
@dataclass(frozen=True)
class Equivocation:
    """Equivocation: a different message to every honest neighbour, each the ``base`` attack
    (``"alie"`` by default; any attack of the ``(own, honest, mask, key)`` contract) computed
    over THAT neighbour's honest neighbourhood (its own message first) instead of over the
    attacker's. ``base="alie"`` / ``"ipm"`` are the neighbourhood ALIE and IPM of the
    ClippedGossip paper (He, Karimireddy and Jaggi, 2022, whose code computes them over the
    target and its honest neighbours: ``mean - z std`` with ``z = 10`` in their scripts
    (``ALIE10``: ``base = {name = "alie", tau = 10.0, negative = true}``) and IPM with
    ``epsilon = 0.1`` (``base = {name = "ipm", tau = 0.1}``)). The base's ``own`` is the
    sender's message; its key is the link's, so keyed bases (gaussian) draw afresh per link.
    A base tuned against the defence (``optimal_alie``) is bound through :meth:`bind_defence`.
    """

    base: Any = "alie"

    per_target = True

    def __post_init__(self) -> None:
        base = make_attack(self.base)
        if getattr(base, "per_target", False):
            raise ValueError(f"equivocation: base {type(base).__name__} already sends per "
                             "target; use it directly")
        if getattr(base, "flips_labels", False):
            raise ValueError("equivocation: base label_flip changes the data, not the "
                             "messages; use it directly")
        object.__setattr__(self, "base", base)

    @property
    def vectorized(self) -> bool:
        return getattr(self.base, "vectorized", True)

    def bind_defence(self, aggregator: Any, f: int) -> Equivocation:
        """The base bound to the defence when it tunes itself (optimal_ipm, optimal_alie)."""
        bind = getattr(self.base, "bind_defence", None)
        return self if bind is None else dataclasses.replace(self, base=bind(aggregator, f))

    def __call__(self, own: Tensor, target: Tensor, honest: Tensor, weights: Tensor,
                 byzantine_weight: Tensor, mask: Tensor, key: Tensor) -> Tensor:
        return self.base(own, honest, mask, key)
