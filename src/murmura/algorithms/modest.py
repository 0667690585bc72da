"""MoDeST: decentralized sampling (de Vos, Dhasade, Kermarrec, Lavoie, Pouwelse, 2023).

Federated rounds without a server. Each round every node computes the same pseudo-random order
of the swarm from (node id, round), with no coordinator: the first ``s`` online nodes of round
``k``'s order train (the sample ``S_k``), the first ``a`` online nodes of round ``k + 1``'s order
aggregate (``A_{k+1}``, the head of the next sample). Trainers send their models to every
aggregator; each aggregator averages them (unweighted) and sends the average to every node of
``S_{k+1}``, which trains from it. Pings, front to back in the order, find who is online.

In murmura: a participation rule (the sample), and a communication rule whose plan is the
pings (:class:`~murmura.algorithms.plans.Control`) and an average hosted by the aggregators
(:class:`~murmura.algorithms.plans.Average` with ``hosts``): ``2 a s`` model transfers per
round. Every row is set to the aggregate, since a node outside the sample never uses its model
before it receives the next one (and evaluation reads the federation's model).

Specification: ``specs/decentralized.md`` section 2. The order is murmura's keyed hash of
(seed, node, round), not the code's md5 of ``"<peer_id>-<k>"``; both are a uniformly random
permutation every node can compute. The code's bandwidth ordering of aggregators is Plexus's
(arXiv v2), not MoDeST's, and is left out. Membership is static (every node knows every other;
no JOIN/LEAVE adverts and no piggybacked views, which the spec's pilot does not count either);
a node goes offline for good at a chosen round, and the liveness rules apply: an aggregator
waits for ``floor(success_fraction * s)`` models and, short of that, aggregates at its timeout
if it has at least ``min_models`` (3), else the round is dropped. Churn on a clock (nodes
leaving mid-round) is the virtual clock's (issue 14).

>>> import torch
>>> from murmura.algorithms.base import RoundContext
>>> rule = ModestSampling(sample_size=3, aggregators=1)
>>> ctx = RoundContext(0, 10, 0, 8, torch.device("cpu"))
>>> trainers = ModestSample(rule).select(ctx)
>>> len(trainers), bool(torch.equal(trainers, rule.sample(ctx.seed, 0, 8)))
(3, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

from murmura.algorithms.base import ALGORITHMS, Algorithm, RoundContext, Tensor
from murmura.algorithms.named import _work
from murmura.algorithms.plans import Average, Control, Plan
from murmura.algorithms.rules import SGD, Every
from murmura.swarm.random import stream_id, uniform

PING_BYTES = 64  # a ping and a pong each (specs/decentralized.md section 0.2)


@dataclass(frozen=True)
class ModestSampling:
    """MoDeST's communication: trainers -> aggregators (the head of the next sample) -> the next
    sample, with the pings that find who is online. ``offline_fraction`` of the nodes (chosen
    by a keyed hash) stop answering from round ``offline_from`` on."""

    sample_size: int = 10
    aggregators: int = 1
    success_fraction: float = 1.0
    min_models: int = 3
    offline_fraction: float = 0.0
    offline_from: int = 0
    needs_topology: bool = False

    def __post_init__(self) -> None:
        for name, low in (("sample_size", 1), ("aggregators", 1), ("min_models", 1),
                          ("offline_from", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or int(value) != value or value < low:
                raise ValueError(f"modest: {name} must be an integer >= {low}, got {value!r}")
        if self.aggregators > self.sample_size:
            raise ValueError(
                f"modest: the aggregators are the head of the next sample, so aggregators "
                f"({self.aggregators}) <= sample_size ({self.sample_size})"
            )
        if not 0 < self.success_fraction <= 1:
            raise ValueError(
                f"modest: success_fraction must lie in (0, 1], got {self.success_fraction!r}")
        if not 0 <= self.offline_fraction < 1:
            raise ValueError(
                f"modest: offline_fraction must lie in [0, 1), got {self.offline_fraction!r}")

    def online(self, seed: int, round: int, n: int) -> Tensor:
        """Which nodes answer pings in ``round`` (bool ``[n]``)."""
        alive = torch.ones(n, dtype=torch.bool)
        if self.offline_fraction and round >= self.offline_from:
            keys = uniform(seed, stream_id("modest-offline"), torch.arange(n), dtype=torch.float64)
            gone = torch.topk(keys, math.floor(self.offline_fraction * n), largest=False).indices
            alive[gone] = False
        return alive

    def order(self, seed: int, round: int, n: int) -> Tensor:
        """Round ``round``'s order of the swarm: the same at every node, from (node, round)."""
        keys = uniform(seed, stream_id("modest-order"), torch.arange(n), round,
                       dtype=torch.float64)
        return torch.argsort(keys)

    def available(self, seed: int, round: int, n: int, count: int) -> tuple[Tensor, Tensor]:
        """The first ``count`` online nodes of the round's order, and every node pinged to find
        them (front to back, the offline ones included)."""
        order = self.order(seed, round, n)
        answers = self.online(seed, round, n)[order]
        found = torch.cumsum(answers.to(torch.int64), 0)
        reach = int(torch.searchsorted(found, min(count, int(found[-1])))) + 1
        pinged = order[:reach]
        return pinged[answers[:reach]], pinged

    def sample(self, seed: int, round: int, n: int) -> Tensor:
        """``S_round``, sorted."""
        return torch.sort(self.available(seed, round, n, self.sample_size)[0]).values

    def plan(self, ctx: RoundContext, participants: Tensor | None, topology: Any,
             sizes: Tensor) -> Plan | list[Plan]:
        n, nxt = ctx.num_nodes, ctx.round + 1
        trainers = participants if participants is not None else torch.arange(n)
        hosts, hosts_pinged = self.available(ctx.seed, nxt, n, self.aggregators)
        receivers, receivers_pinged = self.available(ctx.seed, nxt, n, self.sample_size)
        pings = self._pings(n, ctx.seed, nxt, trainers.cpu(), hosts_pinged, hosts,
                            receivers_pinged)
        enough = len(trainers) >= math.floor(self.success_fraction * self.sample_size)
        if not enough and len(trainers) < self.min_models:
            return pings  # the aggregators time out without enough models: round dropped
        weights = torch.zeros(n, dtype=torch.float64)
        weights[trainers.cpu()] = 1.0 / len(trainers)
        mask = torch.zeros(n, dtype=torch.bool)
        mask[receivers] = True
        device = ctx.device
        return [pings, Average(weights.to(device), receivers=mask.to(device),
                               hosts=hosts.to(device))]

    def _pings(self, n: int, seed: int, round: int, trainers: Tensor, hosts_pinged: Tensor,
               hosts: Tensor, receivers_pinged: Tensor) -> Control:
        """Each trainer pings round ``round``'s order until ``a`` aggregators answer; each
        aggregator pings it until ``s`` trainers answer. A ping is 64 B, an online node's pong
        64 B back."""
        online = self.online(seed, round, n).to(torch.float64)
        sent = torch.zeros(n, dtype=torch.float64)
        received = torch.zeros(n, dtype=torch.float64)
        for pingers, pinged in ((trainers, hosts_pinged), (hosts, receivers_pinged)):
            sent[pingers] += PING_BYTES * len(pinged)
            received[pingers] += PING_BYTES * float(online[pinged].sum())
            received[pinged] += PING_BYTES * len(pingers)
            sent[pinged] += PING_BYTES * len(pingers) * online[pinged]
        return Control(sent, received)


@dataclass(frozen=True)
class ModestSample:
    """Participation: round ``k``'s trainers are the sample ``S_k`` of the rule's order."""

    rule: ModestSampling

    def how_many(self, num_nodes: int) -> int:
        if self.rule.sample_size > num_nodes:
            raise ValueError(
                f"modest: sample_size {self.rule.sample_size} exceeds the number of nodes "
                f"{num_nodes}; choose sample_size <= {num_nodes}"
            )
        return self.rule.sample_size

    def select(self, ctx: RoundContext) -> Tensor | None:
        return self.rule.sample(ctx.seed, ctx.round, ctx.num_nodes).to(ctx.device)


@ALGORITHMS.register(
    "modest", "MoDeST: a hash-ordered sample trains, the next sample's head aggregates; no server"
)
def modest(
    lr: float = 0.05,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    local_steps: int | None = 5,
    local_epochs: float | None = None,
    batch_size: int = 20,
    sample_size: int = 10,
    aggregators: int = 1,
    success_fraction: float = 1.0,
    min_models: int = 3,
    offline_fraction: float = 0.0,
    offline_from: int = 0,
) -> Algorithm:
    """MoDeST (de Vos et al., 2023): ``sample_size`` (s) trainers a round, ``aggregators`` (a)
    of the next sample average their models; ``2 a s`` models and the pings cross the network
    per round. Defaults are the code's (``simulations/args.py``: s = 10, a = 1, sf = 1, 5 local
    steps of batch 20). Giving ``local_epochs`` replaces ``local_steps``."""
    params = dict(locals())
    rule = ModestSampling(sample_size, aggregators, success_fraction, min_models,
                          offline_fraction, offline_from)
    if local_epochs is not None:
        local_steps = None
    return Algorithm(
        name="modest",
        local_rule=SGD(lr, momentum, weight_decay),
        # each trainer starts a fresh optimizer from the model it received
        local_work=replace(_work(local_steps, local_epochs, batch_size),
                           reset_state_each_round=True),
        communication=rule,
        schedule=Every(1),
        participation=ModestSample(rule),
        params=params,
    )
