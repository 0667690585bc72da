"""MoNNA: Byzantine-robust decentralized SGD by nearest-neighbour averaging with momentum.

Farhadkhani, Guerraoui, Gupta, Hoang, Pinot and Stephan, "Robust Collaborative Learning with
Linear Gradient Overhead", ICML 2023 (arXiv 2209.10931); spec ``specs/robust.md`` section 4;
reference code ``LPD-EPFL/robust-collaborative-learning`` @ ``3425aa12`` (``peerToPeer.py``,
``aggregators/cva.py``). Every honest node ``j``, every step::

    m_j      <- beta m_j + (1 - beta) g_j            # Polyak momentum, dampening = beta
    x_j^1/2  <- x_j - lr m_j                          # the local half-step
    x_j      <- NNA_j = mean of the (received - f) half-steps nearest x_j^1/2

where a node receives its own half-step, other honest ones and the Byzantine vectors, and the
f farthest from its own are discarded. In murmura that is a composition of existing rules:

* the local step is :class:`~murmura.algorithms.rules.SGD` with ``lr (1 - beta)`` and momentum
  ``beta``: its buffer ``b_t = beta b_{t-1} + g_t`` is ``m_t / (1 - beta)``, so
  ``x - lr (1 - beta) b_t = x - lr m_t`` exactly (and the fused linear step applies);
* the mixing is an :class:`~murmura.algorithms.plans.Exchange` of half-steps with the
  aggregator ``monna`` (:class:`murmura.robust.distance_rules.MoNNA`, ByzFL's), whose pivot is
  the receiver's own message;
* the paper's communication model, "wait for the first n - f of n messages", where the
  missing ones are honest (a worst-case network delivers the Byzantine vectors first), is
  :func:`first_arrivals`: per round, each node hears ``wait - 1`` of its in-neighbours, the
  ``delivered_first`` senders first, the rest a keyed uniform draw among the others (the code's
  ``random.sample`` of ``n_h - f - 1`` other honest nodes when ``wait = n - f``).

Not carried: the code's learning-rate decay ``lr_t = lr / (t / decay + 1)`` (updated every
``decay_delta`` steps; SGD's rate is constant, as in the spec's CPU pilot) and its
``l2 * ||x||_2`` loss term (not squared; its gradient has norm ``l2 = 1e-4``); murmura's
``weight_decay`` is the squared form's, off by default.

>>> import torch
>>> from murmura.topology import make_topology
>>> W = make_topology("complete", 6).mixing_at(0)
>>> heard = first_arrivals(W, wait=4, delivered_first=(5,), seed=0, round=0).dense() > 0
>>> heard.sum(1).tolist()          # own + 3 others; node 5 (the adversary's) hears everyone
[4, 4, 4, 4, 4, 6]
>>> bool(heard[:5, 5].all())       # its message reaches every node first
True
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from murmura.algorithms.base import ALGORITHMS, Algorithm, RoundContext
from murmura.algorithms.named import _work
from murmura.algorithms.plans import Exchange
from murmura.algorithms.rules import SGD, Every, FullParticipation
from murmura.swarm.random import stream_id, uniform
from murmura.topology.mixing import MixingMatrix


def first_arrivals(mixing: MixingMatrix, wait: int, delivered_first: Sequence[int], seed: int,
                   round: int) -> MixingMatrix:
    """Who each node hears in a round when it waits for ``wait`` messages, its own included:
    ``wait - 1`` of its in-neighbours in ``mixing``, ``delivered_first`` before the others, in
    the order of a uniform draw keyed by (seed, receiver, sender, round). A node of
    ``delivered_first`` (the adversary's) hears all its in-neighbours: the paper's Byzantine
    nodes are omniscient. Uniform weights over what is heard (an aggregator ignores them).
    Builds a dense ``[n, n]`` mask (n up to a few thousand)."""
    n = mixing.num_nodes
    eye = torch.eye(n, dtype=torch.bool)
    links = (mixing.dense().cpu() != 0) & ~eye
    first = torch.zeros(n, dtype=torch.bool)
    first[list(delivered_first)] = True
    keys = uniform(seed, stream_id("monna-arrivals"), torch.arange(n), round, size=(n,),
                   dtype=torch.float64)
    keys = torch.where(first.unsqueeze(0), keys - 1.0, keys)  # arrive before every other
    keys = torch.where(links, keys, torch.full_like(keys, torch.inf))
    chosen = torch.zeros_like(links)
    chosen.scatter_(1, torch.topk(keys, min(wait - 1, n), largest=False).indices, True)
    heard = (chosen & links) | (first.unsqueeze(1) & links) | eye
    weights = heard / heard.sum(1, keepdim=True)
    with warnings.catch_warnings():  # torch flags CSR as beta; the engine relies on it
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        matrix = weights.to_sparse_csr().to(mixing.device)
    # built here rather than by MixingMatrix.from_dense, whose scipy checks cost 8 ms a round
    others = heard & ~eye
    return MixingMatrix(
        matrix=matrix, num_nodes=n, out_degree=others.sum(0).to(mixing.device),
        in_degree=others.sum(1).to(mixing.device), is_symmetric=bool(torch.equal(heard, heard.T)),
        is_doubly_stochastic=bool(((weights.sum(0) - 1).abs() <= 1e-6).all()))


@dataclass(frozen=True)
class NearestNeighbourMixing:
    """Each node replaces its half-step by ``aggregator`` (MoNNA's NNA) over its own message and
    the messages it hears: every in-neighbour's (``wait=None``), or the first ``wait``
    (:func:`first_arrivals`). Every node still sends to all its out-neighbours: the late
    messages are counted, then discarded."""

    aggregator: Any
    wait: int | None = None
    delivered_first: tuple[int, ...] = ()
    needs_topology: bool = True

    def plan(self, ctx: RoundContext, participants, topology, sizes) -> Exchange:
        if topology is None:
            raise ValueError("monna_dl needs a topology: pass topology='complete' (the paper's "
                             "network) or another graph")
        mixing = topology.mixing_at(ctx.round, device=ctx.device)
        if self.wait is None:
            return Exchange(mixing, aggregator=self.aggregator)
        outside = [i for i in self.delivered_first if not 0 <= i < ctx.num_nodes]
        if outside or self.wait > ctx.num_nodes:
            raise ValueError(
                f"monna_dl: wait={self.wait} must be at most the {ctx.num_nodes} nodes and "
                f"delivered_first node ids in [0, {ctx.num_nodes}) (got {outside}): fix them for "
                "this swarm")
        heard = first_arrivals(mixing, self.wait, self.delivered_first, ctx.seed, ctx.round)
        return Exchange(heard, aggregator=self.aggregator, routes=mixing)


def _count(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value \
            or value < low:
        raise ValueError(f"monna_dl: {name} must be an integer >= {low}, got {value!r}")
    return int(value)


@ALGORITHMS.register("monna_dl", "MoNNA: local momentum half-step, then the mean of the "
                     "received half-steps nearest one's own (f farthest dropped)")
def monna_dl(f: int = 0, lr: float = 0.5, momentum: float = 0.9, weight_decay: float = 0.0,
             batch_size: int = 25, local_steps: int = 1, wait: int | None = None,
             delivered_first: Sequence[int] = (), aggregator: str | dict[str, Any] | None = None
             ) -> Algorithm:
    """MoNNA (Farhadkhani et al., ICML 2023): ``m <- beta m + (1 - beta) g``, ``x^1/2 = x - lr m``,
    then ``x <- NNA(x^1/2; received)``, the mean of the received half-steps, own included, minus
    the ``f`` farthest from one's own (see the module docstring).

    ``f``: the declared number of Byzantine nodes. ``momentum``: ``beta`` (the paper's momentum =
    dampening; 0 is D-SGD with NNA). ``wait``: how many messages a node waits for, its own
    included (the paper: ``n - f``, and then it keeps ``wait - f``); ``None``: all of its
    in-neighbours'. ``delivered_first``: the node ids whose messages always arrive first, the
    adversary's in the paper's worst case (give the same ids as the ``Adversary``).
    ``aggregator``: another rule over the same messages instead of ``monna`` with ``f`` (the
    paper's baselines: ``average`` is D-SGD, ``trimmed_mean`` BRIDGE-like). Defaults: the spec's
    CPU pilot (lr 0.5 constant, beta 0.9, batch 25, one step per round); the paper's MNIST
    script takes lr 0.75 decayed as ``lr / (t / 50 + 1)``, beta in {0, 0.99}, n = 26, f = 5."""
    from murmura.robust import MoNNA, make_aggregator

    params = dict(locals())
    f = _count("f", f, 0)
    local_steps = _count("local_steps", local_steps, 1)
    rule = MoNNA(f=f) if aggregator is None else make_aggregator(aggregator)
    need = max(2 * f + 1, getattr(rule, "min_messages", lambda: 1)())
    if wait is not None and _count("wait", wait, 1) < need:
        raise ValueError(f"monna_dl: wait={wait} messages are too few to screen f={f} with "
                         f"{type(rule).__name__}: a node needs at least {need} (2 f + 1 = "
                         f"{2 * f + 1}; the paper waits for n - f); raise wait or lower f")
    if isinstance(delivered_first, (str, int)):
        raise ValueError(f"monna_dl: delivered_first must be a list of node ids, got "
                         f"{delivered_first!r}")
    first = tuple(_count("delivered_first entries", i, 0) for i in delivered_first)
    if len(set(first)) != len(first):
        raise ValueError(f"monna_dl: delivered_first lists a node twice: {list(first)}")
    if first and wait is None:
        raise ValueError("monna_dl: delivered_first says whose messages arrive first, which "
                         "needs wait (how many a node waits for): set wait, e.g. n - f")
    for name, value in (("lr", lr), ("momentum", momentum)):  # SGD's checks would name lr (1-beta)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                0 < value < math.inf if name == "lr" else 0 <= value < 1):
            raise ValueError(f"monna_dl: {name} must be a number in "
                             f"{'(0, inf)' if name == 'lr' else '[0, 1)'}, got {value!r}")
    return Algorithm(
        name="monna_dl",
        local_rule=SGD(lr * (1.0 - momentum), momentum, weight_decay),
        local_work=_work(local_steps, None, batch_size),
        communication=NearestNeighbourMixing(rule, None if wait is None else int(wait), first),
        schedule=Every(1),
        participation=FullParticipation(),
        needs_connected=True,
        params=params,
    )


__all__ = ["NearestNeighbourMixing", "first_arrivals", "monna_dl"]
