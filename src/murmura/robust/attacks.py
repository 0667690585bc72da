"""Attacks: what a malicious node sends instead of its honest message,
``attack(own[d], honest[k, d], mask[k], key) -> [d]`` for ONE attacker (vmapped by the engine).

``honest`` holds the honest messages the attacker sees this round (its in-neighbours' on a
graph; every honest upload at a server), padded and masked; ``key`` is the attacker's random
key for the round (draw with :func:`murmura.swarm.random.key_normal`).

The rules here are ByzFL's (``byzfl/attacks/attacks.py``, v0.0.11) with its names and defaults:
ByzFL computes ONE vector from the honest vectors ``H`` and replicates it ``f`` times; in
murmura every attacker computes its own from what it sees (the same vector at a server, where
all see every honest upload, except for the keyed draws of :class:`Gaussian`).

Declarations an attack may carry, read by the engine:

* ``flips_labels = True`` (:class:`LabelFlip`): the malicious nodes train on flipped labels
  (:meth:`LabelFlip.flip`: ``y' = C - 1 - y``, a shift, or given pairs) and send their own
  message.
* ``per_target = True`` (:mod:`murmura.robust.graph_attacks`): called once per (Byzantine
  sender, honest receiver) link with the receiver's neighbourhood, a different message to
  each neighbour.
* ``bind_defence(aggregator, f) -> attack`` (:mod:`murmura.robust.optimal_attacks`): the
  engine hands the defender's aggregator (and the number of attackers) to an attack that
  tunes itself against them.
* ``vectorized = False``: called once per attacker instead of ``vmap``.

>>> import torch
>>> honest = torch.tensor([[1., 2.], [3., 4.]])
>>> SignFlip()(honest[0], honest, torch.ones(2), torch.tensor(0)).tolist()
[-2.0, -3.0]
>>> IPM()(honest[0], honest, torch.ones(2), torch.tensor(0)).tolist()
[-4.0, -6.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from murmura.registry import Registry, build_component
from murmura.robust.aggregators import masked_mean
from murmura.swarm.random import key_normal

Tensor = torch.Tensor

ATTACKS: Registry = Registry("attack")


def masked_std(vectors: Tensor, mask: Tensor, ddof: int = 1) -> Tensor:
    """Coordinate-wise standard deviation of the rows ``mask`` marks, with ``ddof`` (numpy's
    meaning; ByzFL's ALIE uses 1). Fewer than ``ddof + 1`` rows give 0, not NaN."""
    mean = masked_mean(vectors, mask)
    squares = ((vectors - mean) ** 2 * mask.unsqueeze(-1)).sum(0)
    return torch.sqrt(squares / (mask.sum() - ddof).clamp_min(1.0))


def _real(name: str, value: object) -> float:
    """``value`` as a finite float, or a ValueError naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@ATTACKS.register("sign_flip", "send minus the mean of the honest messages it sees (ByzFL)")
@dataclass(frozen=True)
class SignFlip:
    """``-mean(honest)`` (ByzFL's ``SignFlipping``)."""

    def __call__(self, own: Tensor, honest: Tensor, mask: Tensor, key: Tensor) -> Tensor:
        return -masked_mean(honest, mask)


@ATTACKS.register("ipm", "inner product manipulation: send -tau times the honest mean (ByzFL)")
@dataclass(frozen=True)
class IPM:
    """Inner product manipulation (Xie, Koyejo and Gupta, UAI 2019; ByzFL's
    ``InnerProductManipulation(tau=2.0)``): ``-tau * mean(honest)``, which for a large enough
    ``tau`` makes the aggregate's inner product with the honest mean negative."""

    tau: float = 2.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "tau", _real("ipm: tau", self.tau))

    def __call__(self, own: Tensor, honest: Tensor, mask: Tensor, key: Tensor) -> Tensor:
        return -self.tau * masked_mean(honest, mask)


@ATTACKS.register("alie", "a little is enough: the honest mean plus tau coordinate-wise stds")
@dataclass(frozen=True)
class ALIE:
    """A little is enough (Baruch, Baruch and Goldberg, NeurIPS 2019), as ByzFL's
    ``ALittleIsEnough(tau=1.5)``: ``mean(honest) + tau * std(honest)``, coordinate-wise, the
    standard deviation with ``ddof = 1`` over the valid rows (one row: std 0).

    ByzFL adds the deviation; the paper sends ``mean - z * std`` (``negative=True``). Rules
    symmetric in sign (median, trimmed mean, Krum) cannot tell the two apart; sign-sensitive
    ones can. The paper also derives ``z`` from the numbers of nodes; ByzFL (and murmura) take a
    fixed ``tau``."""

    tau: float = 1.5
    negative: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "tau", _real("alie: tau", self.tau))
        if not isinstance(self.negative, bool):
            raise ValueError(f"alie: negative must be true or false, got {self.negative!r}")

    def __call__(self, own: Tensor, honest: Tensor, mask: Tensor, key: Tensor) -> Tensor:
        sign = -1.0 if self.negative else 1.0
        return masked_mean(honest, mask) + sign * self.tau * masked_std(honest, mask)


@ATTACKS.register("mimic", "copy the honest message number epsilon (ByzFL's Mimic)")
@dataclass(frozen=True)
class Mimic:
    """ByzFL's ``Mimic(epsilon=0)``: a copy of honest worker ``epsilon``, ``H[epsilon]``. In
    murmura that is the ``epsilon``-th valid row of what the attacker sees (at a server: the
    honest uploads in node order; on a graph: its honest in-neighbours). ByzFL raises when
    ``epsilon`` is not below the number of honest vectors; an attacker that sees fewer (a
    node with few honest neighbours) copies the last one it sees instead."""

    epsilon: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.epsilon, bool) or not isinstance(self.epsilon, int) or self.epsilon < 0:
            raise ValueError(f"mimic: epsilon must be an integer >= 0, got {self.epsilon!r}")

    def __call__(self, own: Tensor, honest: Tensor, mask: Tensor, key: Tensor) -> Tensor:
        rank = torch.cumsum(mask, 0)  # the 1-based rank of each valid row
        wanted = torch.minimum(torch.full_like(rank[-1], self.epsilon + 1.0), rank[-1])
        pick = ((rank == wanted) & (mask > 0)).to(honest.dtype)
        return (pick.unsqueeze(-1) * honest).sum(0)


@ATTACKS.register("inf", "send a vector of +inf (or of another value: -inf, nan)")
@dataclass(frozen=True)
class Inf:
    """ByzFL's ``Inf()``: every coordinate ``+inf``; ``value`` sends another constant
    (``-inf``, ``nan``: TOML writes them ``-inf`` and ``nan``)."""

    value: float = math.inf

    def __post_init__(self) -> None:
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)):
            raise ValueError(f"inf: value must be a number (inf, -inf, nan), got {self.value!r}")

    def __call__(self, own: Tensor, honest: Tensor, mask: Tensor, key: Tensor) -> Tensor:
        return torch.full_like(own, float(self.value))


@ATTACKS.register("gaussian", "send a N(mu, std^2) vector, fresh each round and node")
@dataclass(frozen=True)
class Gaussian:
    """A vector of independent ``N(mu, std^2)`` draws (ByzFL's ``Gaussian(mu, sigma)``;
    ``sigma`` is accepted for ``std``); each attacker draws its own from its key, so Byzantine
    vectors differ (ByzFL replicates one draw)."""

    mu: float = 0.0
    std: float = 1.0
    sigma: float | None = None

    def __post_init__(self) -> None:
        if self.sigma is not None:
            object.__setattr__(self, "std", self.sigma)
            object.__setattr__(self, "sigma", None)
        object.__setattr__(self, "std", _real("gaussian attack: std", self.std))
        object.__setattr__(self, "mu", _real("gaussian attack: mu", self.mu))
        if self.std < 0:
            raise ValueError(f"gaussian attack: std must be >= 0, got {self.std!r}")

    def __call__(self, own: Tensor, honest: Tensor, mask: Tensor, key: Tensor) -> Tensor:
        return self.mu + self.std * key_normal(key, own.shape)


@ATTACKS.register("label_flip", "train on flipped labels (y' = C - 1 - y, a shift, or given "
                  "pairs) and send that model")
@dataclass(frozen=True)
class LabelFlip:
    """Label flipping, at the data: with ``flips_labels = True`` the engine makes the malicious
    nodes train on flipped labels (:meth:`flip`) and send their own message, which is what
    ``__call__`` returns. The flip is ByzFL's ``y' = C - 1 - y`` by default; ``shift=s`` gives
    ``y' = (y + s) mod C`` (Bristle's ``label_flip_all``), and ``pairs`` a targeted flip of the
    listed classes only, ``[[0, 1], [1, 0]]`` swapping 0 and 1 (SybilWall's attack); other
    labels stay.

    ByzFL's ``LabelFlipping()`` is "the mean of the vectors it is given": its benchmark hands
    it the honest clients' gradients computed on flipped labels and sends their mean from every
    Byzantine client. murmura's malicious nodes each train on their own data, flipped, so each
    sends its own flipped-label message (their mean is ByzFL's vector when they hold the same
    data).

    >>> import torch
    >>> LabelFlip(pairs=((0, 1), (1, 0))).flip(torch.tensor([0, 1, 2]), 3).tolist()
    [1, 0, 2]
    >>> LabelFlip(shift=1).flip(torch.tensor([0, 1, 2]), 3).tolist()
    [1, 2, 0]
    """

    shift: int | None = None
    pairs: tuple[tuple[int, int], ...] | None = None
    flips_labels = True

    def __post_init__(self) -> None:
        if self.shift is not None and self.pairs is not None:
            raise ValueError("label_flip: give shift or pairs, not both")
        if self.shift is not None and (isinstance(self.shift, bool) or not isinstance(
                self.shift, int)):
            raise ValueError(f"label_flip: shift must be an integer, got {self.shift!r}")
        if self.pairs is not None:
            try:
                pairs = tuple((int(a), int(b)) for a, b in self.pairs)
            except (TypeError, ValueError):
                raise ValueError(f"label_flip: pairs must be [from, to] class pairs, e.g. "
                                 f"[[0, 1], [1, 0]]; got {self.pairs!r}") from None
            sources = [a for a, _ in pairs]
            if len(set(sources)) != len(sources) or any(min(p) < 0 for p in pairs):
                raise ValueError(f"label_flip: pairs must map each class at most once, with "
                                 f"classes >= 0; got {list(pairs)}")
            object.__setattr__(self, "pairs", pairs)

    def flip(self, y: Tensor, num_classes: int) -> Tensor:
        """The flipped labels of ``y`` (integers in ``[0, num_classes)``)."""
        if int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(f"label_flip: num_classes must be an integer >= 2, got "
                             f"{num_classes!r}")
        c = int(num_classes)
        if self.shift is not None:
            return (y + self.shift) % c
        if self.pairs is not None:
            if max(max(p) for p in self.pairs) >= c:
                raise ValueError(f"label_flip: pairs {list(self.pairs)} name a class outside "
                                 f"[0, {c}) of this dataset")
            table = torch.arange(c, device=y.device, dtype=y.dtype)
            for a, b in self.pairs:
                table[a] = b
            return table[y]
        return (c - 1) - y

    def __call__(self, own: Tensor, honest: Tensor, mask: Tensor, key: Tensor) -> Tensor:
        return own


def make_attack(spec: str | dict | object) -> object:
    """An attack from a name, ``{"name": ..., **params}``, or an attack itself."""
    attack = build_component(ATTACKS, spec)
    if attack is None:
        raise ValueError("an adversary needs an attack, e.g. attack = { name = \"sign_flip\" }")
    return attack
