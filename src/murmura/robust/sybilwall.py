"""SybilWall: FoolsGold's similarity test over per-peer update histories, in decentralized
learning, with a probabilistic gossip of the histories of distant peers.

Werthenbach and Pouwelse, "Towards Sybil Resilience in Decentralized Learning", arXiv 2306.15044
(2023); spec ``specs/robust.md`` section 2; reference code
``ThomasWerthenbach/Sybil-Resilient-Decentralized-Learning`` @ ``f748c812`` (``ml/aggregators/
sybilwall.py``, ``foolsgold.py``, ``experiment_infrastructure/decentralized_learning/node.py``).

Each node ``i`` keeps a record per peer ``p`` it knows of: an update history ``H_p``, the round it
dates from, its distance in hops and whom it came from (per-peer tables, node state shaped
``("n", ...)``). Every round:

1. :class:`HistoryGossip`: to each neighbour ``j`` it sends ONE record ``p`` (not ``i``, not
   ``j``, not one ``j`` sent it), drawn with ``P(p) ∝ λ exp(-λ (d_p - 1))``; ``j`` stores it at
   distance ``d_p + 1`` if ``p`` is new to it, or replaces its record if the one received is
   newer and its own is not a direct neighbour's (distance > 1).
2. :class:`SybilWall` (the aggregator): each neighbour's history takes in its new message,
   FoolsGold scores every known peer's history, and
   ``x_i <- (x'_i + sum_{p in N(i)} w_p x'_p) / (1 + sum_p w_p)``, the own model with weight 1.

Where the code departs from its evident intent (spec section 2 (b)), murmura follows the intent:

* ``history="sum_local_updates"`` (default, FoolsGold's Σ of local updates ``x'_p - x_p``, which
  the sender then also sends: ``8 d`` bytes per message) or ``"latest_model"`` (the code's
  telescoping sum, which is the latest model a peer sent; ``4 d`` bytes).
* The code's weight vector covers neighbours AND distant histories, appends 1 for the own model,
  and zips it with the neighbours' models: with distant records the own model silently gets the
  first distant peer's weight. Here the own model has weight 1 and only neighbours' weights are
  used, normalized over neighbours plus self.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from murmura.algorithms.plans import NodeState
from murmura.robust.aggregators import AGGREGATORS
from murmura.swarm.random import key_uniform

Tensor = torch.Tensor

HISTORY, ROUND, DISTANCE, SOURCE = ("sybilwall_history", "sybilwall_round",
                                    "sybilwall_distance", "sybilwall_source")
# a record per peer: the history, the round it dates from, its distance in hops (inf: unknown),
# the node it came from (-1: none)
RECORDS = {
    HISTORY: NodeState("zeros", shape=("n", "d")),
    ROUND: NodeState(-1.0, shape=("n",)),
    DISTANCE: NodeState(math.inf, shape=("n",)),
    SOURCE: NodeState(-1.0, shape=("n",)),
}


def foolsgold_weights(histories: Tensor, mask: Tensor) -> Tensor:
    """FoolsGold's weight of each history ``[m, d]`` among those with ``mask`` 1 (0 elsewhere),
    as ``ml/aggregators/foolsgold.py::compute_similarity_score`` computes it::

        cs    = cosine_similarity(H) - I
        v_p   = max_q cs_pq + 1e-5
        cs_pq *= v_p / v_q   where v_p < v_q          (pardoning the honest)
        w_p   = clip(1 - max_q cs_pq, 0, 1);  w <- w / max w
        w_p   = clip(ln(w_p / (1 - w_p)) + 0.5, 0, 1)  (logit, kappa = 1)

    Near-identical histories (Sybils) get weight 0; one history alone gets 1.

    >>> h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    >>> foolsgold_weights(h, torch.ones(3)).tolist()
    [1.0, 0.0, 0.0]
    """
    present = mask > 0
    unit = histories / histories.norm(dim=1, keepdim=True).clamp_min(1e-12)
    others = present.unsqueeze(0) & present.unsqueeze(1) & ~torch.eye(
        len(mask), dtype=torch.bool, device=mask.device)
    cs = torch.where(others, unit @ unit.T, 0.0)  # the diagonal (and absent rows) count as 0
    v = cs.max(dim=1).values + 1e-5
    cs = torch.where(v.unsqueeze(1) < v.unsqueeze(0), cs * v.unsqueeze(1) / v.unsqueeze(0), cs)
    w = torch.where(present, (1.0 - cs.max(dim=1).values).clamp(0.0, 1.0), 0.0)
    w = w / w.max().clamp_min(1e-12)
    w = torch.log(w / (1.0 - w)) + 0.5
    return torch.where(present, torch.nan_to_num(w, posinf=1.0, neginf=0.0).clamp(0.0, 1.0), 0.0)


@AGGREGATORS.register("sybilwall", "FoolsGold weights from per-peer update histories, own "
                      "model weight 1 (decentralized; keeps node state)")
@dataclass(frozen=True)
class SybilWall:
    """The SybilWall aggregation at one node (see the module docstring).

    A stateful, joint rule: it reads the payload names ``"params"`` (the models ``x'``) and, with
    ``history="sum_local_updates"``, ``"update"`` (each sender's ``x' - x``), its per-peer records
    (``RECORDS``) and the round; it returns the new model and the records' new values. It runs on a
    graph (each node keeps its own records), not at a server."""

    history: Literal["sum_local_updates", "latest_model"] = "sum_local_updates"

    joint = True
    needs_round = True

    def __post_init__(self) -> None:
        if self.history not in ("sum_local_updates", "latest_model"):
            raise ValueError(f"sybilwall: history must be 'sum_local_updates' or "
                             f"'latest_model', got {self.history!r}")

    @property
    def node_state(self) -> dict[str, NodeState]:
        return dict(RECORDS)

    def __call__(self, own: dict[str, Tensor], received: dict[str, Tensor], mask: Tensor,
                 round: Tensor, ids: Tensor, state: dict[str, Tensor]
                 ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        if self.history == "sum_local_updates" and "update" not in received:
            raise ValueError(
                "sybilwall: history='sum_local_updates' needs each sender's local update, which "
                "only the algorithm sybilwall_dl sends; use it, or history='latest_model'")
        models, heard = received["params"], mask[1:] > 0
        peers = torch.arange(state[DISTANCE].shape[0], device=mask.device)
        sent = ((ids[1:].unsqueeze(1) == peers) & heard.unsqueeze(1)).to(models.dtype)  # [k, n]
        hit = sent.sum(0) > 0
        if self.history == "sum_local_updates":
            history = state[HISTORY] + sent.T @ received["update"][1:]
        else:
            history = torch.where(hit.unsqueeze(1), sent.T @ models[1:], state[HISTORY])
        distance = torch.where(hit, 1.0, state[DISTANCE])
        known = torch.isfinite(distance)
        w = foolsgold_weights(history, known.to(models.dtype))[ids[1:]] * heard
        mixed = (models[0] + w @ models[1:]) / (1.0 + w.sum())
        return {"params": mixed}, {
            HISTORY: history, DISTANCE: distance,
            ROUND: torch.where(hit, round.to(models.dtype), state[ROUND]),
            SOURCE: torch.where(hit, peers.to(models.dtype), state[SOURCE]),
        }


@dataclass(frozen=True)
class HistoryGossip:
    """SybilWall's gossip of records (a :class:`~murmura.algorithms.plans.ShareRows`' ``pick``
    and ``merge``): one record per link per round, nearer peers likelier,
    ``P(p) ∝ λ exp(-λ (d_p - 1))`` with ``λ = 1 / 1.25`` (the code's)."""

    gossip_lambda: float = 0.8

    reads = (DISTANCE, SOURCE)
    sends = (HISTORY, ROUND, DISTANCE)

    def __post_init__(self) -> None:
        if isinstance(self.gossip_lambda, bool) or not isinstance(
                self.gossip_lambda, (int, float)) or not 0 < self.gossip_lambda < math.inf:
            raise ValueError(f"sybilwall: gossip_lambda must be a positive number, got "
                             f"{self.gossip_lambda!r}")

    def nbytes(self, dim: int) -> int:
        return 4 * dim + 12  # the history, and the peer, its round and distance

    def pick(self, state: dict[str, Tensor], sender: Tensor, receiver: Tensor, key: Tensor
             ) -> Tensor:
        distance, source = state[DISTANCE], state[SOURCE]
        peers = torch.arange(distance.shape[0], device=distance.device)
        eligible = (torch.isfinite(distance) & (peers != sender) & (peers != receiver)
                    & (source != receiver.to(source.dtype)))
        lam = self.gossip_lambda
        weight = torch.where(eligible, lam * torch.exp(-lam * (distance.clamp(max=1e6) - 1.0)),
                             0.0)
        total = weight.sum()
        drawn = (torch.cumsum(weight, 0) <= key_uniform(key, (1,))[0] * total).sum()
        return torch.where(total > 0, drawn.clamp(max=len(peers) - 1), -1)

    def merge(self, state: dict[str, Tensor], rows: dict[str, Tensor], peers: Tensor,
              senders: Tensor, mask: Tensor) -> dict[str, Tensor]:
        p = peers.clamp(min=0)
        stored_distance, stored_round = state[DISTANCE][p], state[ROUND][p]
        new_round, new_distance = rows[ROUND], rows[DISTANCE] + 1.0
        accept = (mask > 0) & (peers >= 0) & (
            torch.isinf(stored_distance) | ((new_round > stored_round) & (stored_distance > 1)))
        # of several records of one peer arriving at once, the newest, nearest, first wins
        slot = torch.arange(len(peers), device=peers.device)
        same = p.unsqueeze(1) == p.unsqueeze(0)
        r_s, r_t = new_round.unsqueeze(1), new_round.unsqueeze(0)
        d_s, d_t = new_distance.unsqueeze(1), new_distance.unsqueeze(0)
        earlier = slot.unsqueeze(0) < slot.unsqueeze(1)
        better = accept.unsqueeze(0) & same & (
            (r_t > r_s) | ((r_t == r_s) & ((d_t < d_s) | ((d_t == d_s) & earlier))))
        wins = accept & ~better.any(dim=1)
        table = torch.arange(state[DISTANCE].shape[0], device=peers.device)
        take = ((p.unsqueeze(1) == table) & wins.unsqueeze(1)).to(rows[HISTORY].dtype)  # [k, n]
        hit = take.sum(0) > 0
        return {
            HISTORY: torch.where(hit.unsqueeze(1), take.T @ rows[HISTORY], state[HISTORY]),
            ROUND: torch.where(hit, take.T @ new_round, state[ROUND]),
            DISTANCE: torch.where(hit, take.T @ torch.where(wins, new_distance, 0.0),
                                  state[DISTANCE]),
            SOURCE: torch.where(hit, take.T @ senders.to(take.dtype), state[SOURCE]),
        }


__all__ = ["HistoryGossip", "SybilWall", "foolsgold_weights", "RECORDS"]
