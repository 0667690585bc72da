"""One node of a simulation, run as a real peer: the engine with a batch of one node.

:class:`PeerSimulation` is the :class:`~murmura.swarm.engine.Simulation` every peer builds
from the same experiment (the same data split, seed, model, algorithm and topology), holding
the one row of node ``node``. Local training, the encoders, aggregators, combiners and the
server's rule are the simulator's own functions (vmapped over that one row); only the
primitives that reach other nodes go over the network instead of reading other rows, as the
sharded backend (:mod:`murmura.dist`) overrides them for ``torch.distributed``:

* gossip ``x_i <- sum_j W_ij x_j`` (:meth:`_mix_rows`): node ``i`` sends its row to its
  out-neighbours in ``W`` and waits for its in-neighbours' (deadline and quorum: see
  :class:`~murmura.net.mesh.Mesh`). The weight of a neighbour whose message did not come is
  added to the node's own weight, so a row of ``W`` still sums to what it did;
* a non-linear aggregation on a graph (:meth:`_aggregate_on_graph`): the payload goes to the
  out-neighbours; a missing neighbour is masked out, as padding is, so a robust rule
  aggregates the messages that came;
* a server's weighted sum (:meth:`_weighted_sum`, :meth:`_sum_over_processes`): every client
  uploads its weighted part and its weight to the peer playing the server
  (:func:`murmura.net.node.run_relay`), which adds what came, rescales the weights over the
  clients it heard from, and sends the sum back; each client then applies the algorithm's
  server rule to it, as every rank of a sharded run does. Without an answer a client keeps
  its own contribution.

Metrics are this node's: its ledgers, its model's test accuracy (the server's model under a
server), the network's counters. ``murmura launch`` gathers the peers' rows and evaluates
the swarm as the simulator does. Refused clearly: adversaries (an attack reads other nodes'
messages), participation by losses, a server that reads every upload, ``ShareRows`` plans.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from murmura.algorithms.plans import ServerStep
from murmura.metrics.evaluation import evaluate_model
from murmura.net.mesh import Mesh
from murmura.swarm.engine import Simulation

SERVER = "server"


@dataclass(frozen=True)
class PeerSettings:
    """How long a peer waits. ``deadline_s``: for the messages of one exchange (then it goes
    on without the missing ones, or waits one more deadline while fewer than ``quorum`` of
    them came); ``hello_timeout_s``: for its neighbours to come up before round 0;
    ``pace_s``: the least time a round takes (a peer that is done early waits), which
    bounds the traffic and lets a restarted peer catch up with rounds faster than its start
    (0: as fast as the messages come)."""

    deadline_s: float = 30.0
    quorum: float = 1.0
    hello_timeout_s: float = 120.0
    pace_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.deadline_s > 0 or not self.hello_timeout_s > 0:
            raise ValueError("deadline_s and hello_timeout_s must be positive seconds")
        if not self.pace_s >= 0:
            raise ValueError(f"pace_s must be >= 0 seconds, got {self.pace_s!r}")
        if not 0.0 <= self.quorum <= 1.0:
            raise ValueError(f"quorum is a fraction of the expected messages in [0, 1], got "
                             f"{self.quorum!r}")


DEFAULT_SETTINGS = PeerSettings()


def peer_name(node: int) -> str:
    """A node's id in the peers file: its index, ``"0"`` to ``"n-1"``."""
    return str(int(node))


class PeerSimulation(Simulation):
    """The simulation of node ``node`` on a :class:`Mesh` (see the module docstring)."""

    def __init__(self, *args: Any, node: int, mesh: Mesh | None = None,
                 settings: PeerSettings = PeerSettings(), **kwargs: Any) -> None:
        if kwargs.get("adversary") is not None:
            raise ValueError("an adversary is not run on peers: its attacks read other nodes' "
                             "messages; simulate it (murmura run) instead")
        if isinstance(node, bool) or not isinstance(node, int):
            raise ValueError(f"node must be an integer index, got {node!r}")
        self.node, self.mesh, self.settings = node, mesh, settings
        self._exchange_round, self._exchange_count = -1, 0
        self._gathered: dict[int, torch.Tensor] | None = None
        self._absent: set[int] = set()
        self._my_weight: float | None = None
        self._links_cache: dict[int, tuple[Any, list[tuple[int, float]], list[int], float]] = {}
        super().__init__(*args, **kwargs)
        if getattr(self.algorithm.participation, "needs_losses", False):
            raise ValueError(f"algorithm {self.algorithm.name!r} picks clients by every "
                             "client's loss, which no peer knows: simulate it instead")

    def _node_range(self) -> tuple[int, int]:
        if not 0 <= self.node < self.num_nodes:
            raise ValueError(f"node {self.node} is not in this experiment's {self.num_nodes} "
                             f"nodes (0 to {self.num_nodes - 1})")
        return self.node, self.node + 1

    # ------------------------------------------------------------------ the network

    def _net(self) -> Mesh:
        if self.mesh is None:
            raise RuntimeError("this peer has no network: give PeerSimulation a started Mesh")
        return self.mesh

    def _kind(self, family: str) -> str:
        """The n-th exchange of the round: the same sequence on every peer, because every
        peer runs the same plans in the same order."""
        if self._exchange_round != self.round:
            self._exchange_round, self._exchange_count = self.round, 0
        self._exchange_count += 1
        return f"{family}.{self._exchange_count - 1}"

    def _links(self, mixing: Any) -> tuple[list[tuple[int, float]], list[int], float]:
        """In-neighbours with their weights, out-neighbours, and the own weight in ``W``."""
        cached = self._links_cache.get(id(mixing))
        if cached is not None and cached[0] is mixing:
            return cached[1:]
        W = mixing.to_scipy().tocsr()
        i = self.node
        row = W[i : i + 1].tocoo()
        ins = [(int(j), float(w)) for j, w in zip(row.col, row.data) if j != i and w != 0]
        col = W[:, i : i + 1].tocoo()
        outs = sorted(int(j) for j, w in zip(col.row, col.data) if j != i and w != 0)
        own = float(sum(w for j, w in zip(row.col, row.data) if j == i))
        if len(self._links_cache) > 4:
            self._links_cache.clear()
        self._links_cache[id(mixing)] = (mixing, ins, outs, own)
        return ins, outs, own

    def _received(self, got: dict[str, dict[str, np.ndarray]], sender: str,
                  like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
        """A neighbour's tensors if they are shaped like ours, else ``None`` (and counted)."""
        tensors = got.get(sender)
        if tensors is None:
            return None
        if set(tensors) != set(like):
            self._refuse("wrong_tensors", sender, f"{sorted(tensors)} instead of {sorted(like)}")
            return None
        out = {}
        for name, mine in like.items():
            theirs = tensors[name]
            if tuple(theirs.shape) != tuple(mine.shape) or theirs.dtype != np.float32:
                self._refuse("wrong_shape", sender, f"{name} {theirs.dtype}{list(theirs.shape)}"
                                                    f" instead of float32{list(mine.shape)}")
                return None
            out[name] = torch.from_numpy(np.array(theirs)).to(self.device)
        return out

    def _refuse(self, reason: str, sender: str, detail: str) -> None:
        self._net().refuse(reason, sender, detail)

    @staticmethod
    def _numpy(t: torch.Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float32).contiguous().numpy()

    # ------------------------------------------------------------------ a graph

    def _mix_rows(self, mixing: Any, rows: torch.Tensor, out: torch.Tensor) -> None:
        ins, outs, own = self._links(mixing)
        mine = {"x": rows[0]}
        message = {"x": self._numpy(rows[0])}
        got = self._net().exchange(self.round, self._kind("mix"),
                                   {peer_name(j): message for j in outs},
                                   [peer_name(j) for j, _ in ins],
                                   deadline_s=self.settings.deadline_s,
                                   quorum=self.settings.quorum)
        total = own * rows[0]
        for j, w in ins:
            theirs = self._received(got, peer_name(j), mine)
            if theirs is None:
                total = total + w * rows[0]  # the missing weight stays with the node
            else:
                total = total + w * theirs["x"]
        out[0] = total

    def _aggregate_on_graph(self, aggregator: Any, payload: dict[str, torch.Tensor],
                            mixing: Any, links: Any = None) -> dict[str, torch.Tensor]:
        if links:
            raise ValueError("per-target attacks are not run on peers")
        ins, outs, _ = self._links(mixing)
        mine = {name: value[0] for name, value in payload.items()}
        message = {name: self._numpy(value) for name, value in mine.items()}
        got = self._net().exchange(self.round, self._kind("agg"),
                                   {peer_name(j): message for j in outs},
                                   [peer_name(j) for j, _ in ins],
                                   deadline_s=self.settings.deadline_s,
                                   quorum=self.settings.quorum)
        gathered: dict[int, torch.Tensor] = {}
        self._absent = set()
        for value in payload.values():
            rows = torch.zeros(self.num_nodes, *value.shape[1:], dtype=value.dtype,
                               device=self.device)
            rows[self.node] = value[0]
            gathered[id(value)] = rows
        for j, _ in ins:
            theirs = self._received(got, peer_name(j), mine)
            if theirs is None:
                self._absent.add(j)
                continue
            for name, value in payload.items():
                gathered[id(value)][j] = theirs[name]
        self._gathered = gathered
        try:
            return super()._aggregate_on_graph(aggregator, payload, mixing, links)
        finally:
            self._gathered, self._absent = None, set()

    def _neighbourhoods(self, mixing: Any) -> tuple[torch.Tensor, torch.Tensor]:
        index, mask = super()._neighbourhoods(mixing)
        if self._absent:
            mask = mask.clone()
            for j in self._absent:
                mask[index == j] = 0.0
        return index, mask

    def _all_rows(self, rows: torch.Tensor, what: str) -> torch.Tensor:
        if self._gathered is not None and id(rows) in self._gathered:
            return self._gathered[id(rows)]
        raise ValueError(f"{what} is not run on peers: it needs every node's message in one "
                         "process; simulate it (murmura run) instead")

    # ------------------------------------------------------------------ a server

    def _relay(self, part: torch.Tensor, weight: float, total: float,
               fallback: torch.Tensor) -> torch.Tensor:
        up = {"part": self._numpy(part.reshape(-1)),
              "weight": np.array([weight, total], dtype=np.float64)}
        got = self._net().exchange(self.round, self._kind("sum"), {SERVER: up}, [SERVER],
                                   deadline_s=self.settings.deadline_s, quorum=1.0)
        back = self._received(got, SERVER, {"sum": part.reshape(-1)})
        if back is None:
            return fallback
        return back["sum"].reshape(part.shape).to(part.dtype)

    def _weighted_sum(self, weights: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        w = float(weights[self.node])
        part = w * rows[0]
        return self._relay(part, w, float(weights.sum()), rows[0] * float(weights.sum()))

    def _server_step(self, plan: ServerStep) -> None:
        weights = plan.weights.to(torch.float64)
        self._my_weight = float(weights[self.node] / weights.sum()) if weights.sum() > 0 else 0.0
        try:
            super()._server_step(plan)
        finally:
            self._my_weight = None

    def _sum_over_processes(self, part: torch.Tensor) -> torch.Tensor:
        w = self._my_weight
        if w is None:
            raise ValueError("this plan's sums are not run on peers; simulate it instead")
        fallback = part / w if w > 0 else torch.zeros_like(part)
        return self._relay(part, w, 1.0, fallback)

    # ------------------------------------------------------------------ a round

    def step(self, total_rounds: int) -> dict[str, Any]:
        if self.mesh is not None:
            self.mesh.set_round(self.round)
        record = super().step(total_rounds)
        record["node"] = self.node
        if self.mesh is not None:
            record.update(self.mesh.counters())
        return record

    def evaluate(self) -> dict[str, float]:
        """This node's model (the server's, under a server) on the test set, and on its own
        held-out samples where the data has them."""
        served = self.server_state.get("params") if self.server_state else None
        dataset = self.data.dataset
        acc, loss = evaluate_model(self.model, self.spec,
                                   self.params[0] if served is None else served,
                                   dataset.test_x, dataset.test_y, self.buffers,
                                   self.evaluation.test_batch_size, self.task)
        result = {"test_accuracy": acc, "test_loss": loss}
        if self.data.test_parts is not None:
            result["personal_accuracy"] = float(self._personal_accuracies()[0])
        return result

    def summary(self) -> dict[str, Any]:
        info = super().summary()
        info.update(backend="peer", node=self.node)
        return info


__all__ = ["DEFAULT_SETTINGS", "SERVER", "PeerSettings", "PeerSimulation", "peer_name"]
