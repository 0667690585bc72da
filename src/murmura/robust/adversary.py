"""Which nodes are malicious and what they send."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from murmura.robust.attacks import make_attack
from murmura.swarm.random import uniform

PLACEMENTS = ("random", "degree", "betweenness", "attached")


@dataclass(frozen=True)
class Adversary:
    """Malicious nodes: ``count`` of them, a ``fraction`` of all nodes, or the given ``nodes``;
    ``placement="random"`` draws them from the seed. They train honestly; every message they
    send is replaced by ``attack`` (see :mod:`murmura.robust.attacks`). ``placement="degree"``
    takes the best-connected nodes of the graph, ``"betweenness"`` the bridges and bottlenecks
    (highest betweenness centrality, networkx's; ties broken by node id). ``placement`` may also
    be a rule of your own, ``placement(count, num_nodes, seed, topology) -> node ids``.
    ``placement="attached"`` takes the nodes the ``attached`` topology added to its base graph:
    leaves hanging on a target node, or identities wired to a few random honest nodes.

    ``sybils=True``: the malicious nodes are identities of ONE attacker (Sybils), so every one
    of them sends the message of the first (lowest id), computed by the attack as usual (for
    ``label_flip``, what that node trained on its flipped data).

    ``receives=False``: on a graph the malicious nodes ignore what they receive and keep their
    own message (a label-flipping attacker then trains one consistently poisoned model, as in
    Bristle's and SybilWall's threat models); at a server they still download the model.

    >>> adv = Adversary("sign_flip", fraction=0.25)
    >>> int(adv.place(8, seed=0).sum())
    2
    """

    attack: Any
    fraction: float | None = None
    count: int | None = None
    nodes: tuple[int, ...] | None = None
    placement: Any = "random"
    sybils: bool = False
    receives: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "attack", make_attack(self.attack))
        for name in ("sybils", "receives"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"adversary: {name} must be true or false, got "
                                 f"{getattr(self, name)!r}")
        if self.sybils and getattr(self.attack, "per_target", False):
            raise ValueError(
                f"adversary: Sybil identities send one message, and "
                f"{type(self.attack).__name__} sends a different one per link; drop sybils or "
                "choose another attack")
        given = [x is not None for x in (self.fraction, self.count, self.nodes)]
        if sum(given) != 1:
            raise ValueError("adversary: give exactly one of fraction, count or nodes")
        if self.fraction is not None and not 0 < self.fraction < 1:
            raise ValueError(
                f"adversary: fraction must lie in (0, 1) (some node must stay honest), got "
                f"{self.fraction!r}"
            )
        if self.nodes is not None and len(set(self.nodes)) != len(self.nodes):
            raise ValueError(f"adversary: nodes lists a node twice: {list(self.nodes)}")
        if self.count is not None and (int(self.count) != self.count or self.count < 1):
            raise ValueError(f"adversary: count must be a positive integer, got {self.count!r}")
        if not callable(self.placement) and self.placement not in PLACEMENTS:
            raise ValueError(
                f"adversary: unknown placement {self.placement!r}; choose one of {PLACEMENTS}"
            )

    def how_many(self, num_nodes: int) -> int:
        if self.nodes is not None:
            count = len(set(self.nodes))
        elif self.count is not None:
            count = int(self.count)
        else:
            count = max(1, round(self.fraction * num_nodes))
        if count >= num_nodes:
            raise ValueError(
                f"adversary: {count} malicious nodes of {num_nodes} leaves no honest node; "
                "lower fraction or count"
            )
        return count

    def place(self, num_nodes: int, seed: int, topology: Any = None) -> torch.Tensor:
        """The malicious nodes as a bool mask ``[num_nodes]``."""
        count = self.how_many(num_nodes)
        mask = torch.zeros(num_nodes, dtype=torch.bool)
        if self.nodes is not None:
            bad = [int(i) for i in self.nodes]
            if any(i < 0 or i >= num_nodes for i in bad):
                raise ValueError(f"adversary: nodes must lie in [0, {num_nodes}), got {bad}")
            mask[bad] = True
            return mask
        if callable(self.placement):
            chosen = torch.as_tensor(self.placement(count, num_nodes, seed, topology),
                                     dtype=torch.int64).unique()
            if len(chosen) != count or bool((chosen < 0).any() | (chosen >= num_nodes).any()):
                raise ValueError(
                    f"adversary: the placement rule returned {chosen.tolist()}; it must return "
                    f"{count} distinct node ids in [0, {num_nodes})"
                )
            mask[chosen] = True
            return mask
        if self.placement in ("degree", "betweenness"):
            return self._central(mask, count, topology)
        if self.placement == "attached":
            return self._attached(mask, count, topology)
        keys = uniform(seed, "adversary", torch.arange(num_nodes), dtype=torch.float64)
        mask[torch.topk(keys, count, largest=False).indices] = True
        return mask

    def _central(self, mask: torch.Tensor, count: int, topology: Any) -> torch.Tensor:
        """The ``count`` most central nodes of the round-0 graph, by ``placement``."""
        if topology is None:
            raise ValueError(
                f"adversary: placement={self.placement!r} reads the graph, and this algorithm "
                "has no topology (at a server every client is alike: use placement='random')"
            )
        import networkx as nx

        graph = nx.Graph(topology.graph_at(0))
        graph.remove_edges_from(nx.selfloop_edges(graph))
        score = (dict(graph.degree()) if self.placement == "degree"
                 else nx.betweenness_centrality(graph))
        ranked = sorted(range(len(mask)), key=lambda i: (-score.get(i, 0.0), i))
        mask[ranked[:count]] = True
        return mask

    def _attached(self, mask: torch.Tensor, count: int, topology: Any) -> torch.Tensor:
        """The nodes an ``attached`` topology added, all of them."""
        graph = topology.graph_at(0) if topology is not None else None
        added = None if graph is None else graph.graph.get("attached")
        if added is None:
            raise ValueError(
                "adversary: placement='attached' takes the nodes the 'attached' topology added; "
                "use topology 'attached' (see murmura list topologies), or another placement")
        if len(added) != count:
            raise ValueError(
                f"adversary: the topology attached {len(added)} nodes and the adversary has "
                f"{count}; make them equal (adversary count = {len(added)})")
        mask[list(added)] = True
        return mask
