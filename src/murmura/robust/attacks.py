"""Attacks: what a malicious node sends instead of its honest message,
``attack(own[d], honest[k, d], mask[k], key) -> [d]`` for ONE attacker (vmapped by the engine).

``honest`` holds the honest messages the attacker sees this round (its in-neighbours' on a
graph; every honest upload at a server), padded and masked; ``key`` is the attacker's random
key for the round (draw with :func:`murmura.swarm.random.key_normal`).

>>> import torch
>>> honest = torch.tensor([[1., 2.], [3., 4.]])
>>> SignFlip()(honest[0], honest, torch.ones(2), torch.tensor(0)).tolist()
[-2.0, -3.0]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from murmura.registry import Registry, build_component
from murmura.robust.aggregators import masked_mean
from murmura.swarm.random import key_normal

Tensor = torch.Tensor

ATTACKS: Registry = Registry("attack")


@ATTACKS.register("sign_flip", "send minus the mean of the honest messages it sees (ByzFL)")
@dataclass(frozen=True)
class SignFlip:
    """``-mean(honest)`` (ByzFL's ``SignFlipping``)."""

    def __call__(self, own: Tensor, honest: Tensor, mask: Tensor, key: Tensor) -> Tensor:
        return -masked_mean(honest, mask)


@ATTACKS.register("gaussian", "send a N(mu, std^2) vector, fresh each round and node")
@dataclass(frozen=True)
class Gaussian:
    """A vector of independent ``N(mu, std^2)`` draws (ByzFL's ``Gaussian(mu, sigma)``); each
    attacker draws its own from its key, so Byzantine vectors differ."""

    mu: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if not self.std >= 0:
            raise ValueError(f"gaussian attack: std must be >= 0, got {self.std!r}")

    def __call__(self, own: Tensor, honest: Tensor, mask: Tensor, key: Tensor) -> Tensor:
        return self.mu + self.std * key_normal(key, own.shape)


def make_attack(spec: str | dict | object) -> object:
    """An attack from a name, ``{"name": ..., **params}``, or an attack itself."""
    attack = build_component(ATTACKS, spec)
    if attack is None:
        raise ValueError("an adversary needs an attack, e.g. attack = { name = \"sign_flip\" }")
    return attack
