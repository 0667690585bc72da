"""SybilWall as a decentralized algorithm: local SGD, the gossip of peer records, then the
SybilWall aggregation over the neighbourhood (:mod:`murmura.robust.sybilwall`).

Spec ``specs/robust.md`` section 2. A round, for every node at once::

    x'_i = LocalTrain(x_i)                               # plain SGD, no momentum (the code's)
    gossip: one record per link, P(p) ∝ λ exp(-λ (d_p - 1))
    x_i <- (x'_i + sum_{p in N(i)} w_p x'_p) / (1 + sum_p w_p),   w = FoolsGold(histories)

The Sybil threat is an adversary whose identities all send one message:
``Adversary("label_flip", ..., sybils=True)`` (see :class:`murmura.robust.Adversary`); each
identity has its own links (topology ``attached``). The Sybils do not gossip (a
:class:`~murmura.algorithms.plans.ShareRows` plan sends nothing from malicious nodes).

>>> from murmura import federate
>>> from murmura.robust import Adversary
>>> from murmura.swarm import Simulation
>>> data = federate("digits", num_nodes=10, seed=0)
>>> sim = Simulation(data, "logreg", "sybilwall_dl", seed=0, topology="attached",
...                  topology_kwargs={"base": "ring", "count": 3, "edges": 2},
...                  adversary=Adversary({"name": "label_flip", "pairs": [[0, 1], [1, 0]]},
...                                      count=3, placement="attached", sybils=True))
>>> history = sim.run(rounds=2)
>>> bool(sim.node_state["sybilwall_distance"][0].isfinite().sum() >= 2)   # knows its neighbours
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from murmura.algorithms.base import ALGORITHMS, Algorithm, RoundContext
from murmura.algorithms.named import _work
from murmura.algorithms.plans import Exchange, NodeState, ShareRows
from murmura.algorithms.rules import SGD, Every, FullParticipation
from murmura.robust.sybilwall import HistoryGossip, SybilWall

Tensor = torch.Tensor

START = "round_start"


@dataclass(frozen=True)
class SendModelAndUpdate:
    """The node sends its model ``x'`` and its round's local update ``x' - x`` (``8 d`` bytes):
    what SybilWall's FoolsGold-faithful history sums. With ``update=False``: the model only."""

    update: bool = True

    @property
    def node_state(self) -> dict[str, NodeState]:
        return {START: NodeState("params", "round")} if self.update else {}

    def encode(self, params: Tensor, state: dict[str, Tensor], key: Tensor
               ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        if not self.update:
            return {"params": params}, {}
        return {"params": params, "update": params - state[START]}, {}

    def nbytes(self, dim: int) -> int:
        return (8 if self.update else 4) * dim


@dataclass(frozen=True)
class SybilWallMixing:
    """Gossip of records (unless ``gossip`` is ``None``), then the SybilWall exchange."""

    aggregator: SybilWall = field(default_factory=SybilWall)
    gossip: HistoryGossip | None = field(default_factory=HistoryGossip)
    needs_topology: bool = True

    @property
    def encoder(self) -> SendModelAndUpdate:
        return SendModelAndUpdate(self.aggregator.history == "sum_local_updates")

    @property
    def node_state(self) -> dict[str, NodeState]:
        return {**self.aggregator.node_state, **self.encoder.node_state}

    def plan(self, ctx: RoundContext, participants, topology, sizes) -> list[Any]:
        if topology is None:
            raise ValueError("sybilwall_dl needs a topology: pass topology='attached' (the "
                             "spec's honest graph with Sybil attack edges) or another graph")
        mixing = topology.mixing_at(ctx.round, device=ctx.device)
        exchange = Exchange(mixing, encoder=self.encoder, aggregator=self.aggregator)
        if self.gossip is None:
            return [exchange]
        g = self.gossip
        return [ShareRows(mixing, g.pick, g.merge, g.reads, g.sends, g.nbytes), exchange]


@ALGORITHMS.register("sybilwall_dl", "SybilWall: local SGD, gossip of peer histories, then "
                     "FoolsGold-weighted mixing with the own model at weight 1")
def sybilwall_dl(lr: float = 0.3, batch_size: int = 16, local_steps: int | None = 10,
                 local_epochs: float | None = None, history: str = "sum_local_updates",
                 gossip: bool = True, gossip_lambda: float = 0.8) -> Algorithm:
    """SybilWall (Werthenbach and Pouwelse, 2023). Defaults: the spec's CPU pilot (10 SGD steps of
    batch 16 at lr 0.3 per round); the paper's MNIST configs take lr 0.01, batch 8, 1 or 10 local
    epochs. ``history``: ``"sum_local_updates"`` (FoolsGold's, the spec's recommendation) or
    ``"latest_model"`` (the reference code's). ``gossip=False``: no history gossip, each node
    judges its neighbours alone (the spec's ablation). ``gossip_lambda``: the distance bias
    ``λ`` of the gossip (the code's ``1 / 1.25``)."""
    params = dict(locals())
    if not isinstance(gossip, bool):
        raise ValueError(f"sybilwall_dl: gossip must be true or false, got {gossip!r}")
    return Algorithm(
        name="sybilwall_dl",
        local_rule=SGD(lr),
        local_work=_work(local_steps, local_epochs, batch_size),
        communication=SybilWallMixing(SybilWall(history),
                                      HistoryGossip(gossip_lambda) if gossip else None),
        schedule=Every(1),
        participation=FullParticipation(),
        needs_connected=True,
        params=params,
    )


__all__ = ["SendModelAndUpdate", "SybilWallMixing", "sybilwall_dl"]
