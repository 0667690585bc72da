"""The swarm sharded over processes with ``torch.distributed``.

Rank r holds the contiguous block of nodes ``bounds[r]:bounds[r+1]``: their rows of the state,
their optimizer state and byte ledgers. Local training is the ordinary vmapped engine over those
rows (every draw is keyed by the global node id, so a node computes the same thing on any rank).
Communication crosses ranks only where the algorithm's plan does:

- gossip ``x_i <- sum_j W_ij x_j``: each rank receives just the rows of its neighbours that live
  on other ranks (a halo), never the whole state, then multiplies its rows of W;
- a server average: each rank sums its weighted rows, one all-reduce adds the sums;
- metrics: sums, minima and maxima over nodes are all-reduced, so every rank sees the same record.

Results equal a single process's up to floating-point summation order.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.distributed as dist

from murmura.swarm.engine import Simulation


def shard_bounds(num_nodes: int, world_size: int) -> list[int]:
    """Contiguous, balanced blocks: the first ``num_nodes % world_size`` ranks get one more.

    >>> shard_bounds(10, 3)
    [0, 4, 7, 10]
    """
    if world_size < 1 or num_nodes < world_size:
        raise ValueError(
            f"cannot shard {num_nodes} nodes over {world_size} processes: every process needs "
            "at least one node (use fewer processes)"
        )
    base, extra = divmod(num_nodes, world_size)
    bounds = [0]
    for r in range(world_size):
        bounds.append(bounds[-1] + base + (1 if r < extra else 0))
    return bounds


@dataclass
class HaloPlan:
    """What one rank exchanges to apply one mixing matrix to its rows."""

    local_matrix: torch.Tensor  # sparse CSR [local, local + halo]: columns remapped
    send: dict[int, torch.Tensor]  # peer rank -> local row indices it needs from us
    receive: dict[int, int]  # peer rank -> number of rows we need from it (in column order)
    source: Any  # the MixingMatrix this plan was built for (kept alive: the cache is by id)


def halo_plan(mixing: Any, bounds: list[int], rank: int, device: torch.device) -> HaloPlan:
    """Rows to send and receive, and this rank's rows of W with columns renumbered as
    ``[own rows, then received rows ordered by (owner rank, node id)]``. Every rank derives
    every other rank's needs from the same W, so no request messages are exchanged."""
    W = sp.csr_matrix(mixing.to_scipy())
    lo, hi = bounds[rank], bounds[rank + 1]
    world = len(bounds) - 1

    def needs(r: int) -> np.ndarray:
        block = W[bounds[r] : bounds[r + 1]]
        cols = np.unique(block.indices)
        return cols[(cols < bounds[r]) | (cols >= bounds[r + 1])]

    mine = needs(rank)
    owners = np.searchsorted(np.asarray(bounds), mine, side="right") - 1
    receive = {int(s): int((owners == s).sum()) for s in range(world) if (owners == s).any()}
    send = {}
    for r in range(world):
        if r == rank:
            continue
        theirs = needs(r)
        rows = theirs[(theirs >= lo) & (theirs < hi)] - lo
        if len(rows):
            send[r] = torch.as_tensor(rows, dtype=torch.int64, device=device)

    # column renumbering: own nodes first, then the halo in receive order (mine is sorted, and
    # ownership is monotone in the node id, so that order is by owner then node)
    remap = np.full(W.shape[1], -1, dtype=np.int64)
    remap[lo:hi] = np.arange(hi - lo)
    remap[mine] = (hi - lo) + np.arange(len(mine))
    block = W[lo:hi].tocoo()
    local = sp.csr_matrix(
        (block.data, (block.row, remap[block.col])), shape=(hi - lo, hi - lo + len(mine))
    )
    local.sort_indices()
    matrix = torch.sparse_csr_tensor(
        torch.as_tensor(local.indptr, dtype=torch.int64),
        torch.as_tensor(local.indices, dtype=torch.int64),
        torch.as_tensor(local.data, dtype=torch.float32),
        size=local.shape,
        check_invariants=True,
    ).to(device)
    return HaloPlan(matrix, send, receive, mixing)


class ShardedSimulation(Simulation):
    """A :class:`~murmura.swarm.engine.Simulation` of which this process holds one block of
    nodes. Build it on every rank of an initialized process group with the same arguments
    (``torchrun`` sets the group up; see ``docs/scaling.md``)."""

    def __init__(self, *args: Any, group: Any = None, **kwargs: Any) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "a sharded simulation needs an initialized torch.distributed process group: "
                "launch with `torchrun --nproc-per-node P -m murmura run CONFIG --backend dist` "
                "(or call torch.distributed.init_process_group first)"
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self._halo_cache: dict[int, HaloPlan] = {}
        self.inter_rank_bytes_sent = 0.0  # what this rank sent to other ranks, all rounds
        if kwargs.get("adversary") is not None:
            raise ValueError(
                "an adversary is not sharded yet (its attacks read other nodes' messages): run "
                "it with the default backend (leave out --backend dist)"
            )
        super().__init__(*args, **kwargs)
        aggregator = getattr(self.algorithm.communication, "aggregator", None)
        if aggregator is not None:
            raise ValueError(
                f"the aggregator {type(aggregator).__name__} of algorithm "
                f"{self.algorithm.name!r} is not sharded yet (a non-linear aggregation needs every "
                "node's message in one process): run it with the default backend (leave out "
                "--backend dist)"
            )

    def _node_range(self) -> tuple[int, int]:
        self.bounds = shard_bounds(self.num_nodes, self.world_size)
        return self.bounds[self.rank], self.bounds[self.rank + 1]

    # ------------------------------------------------------------------ reductions

    def _reduce(self, t: torch.Tensor, op: Any) -> torch.Tensor:
        out = t.detach().clone().to(self.device)
        dist.all_reduce(out, op=op, group=self.group)
        return out

    def _all_sum(self, t: torch.Tensor) -> torch.Tensor:
        return self._reduce(t, dist.ReduceOp.SUM)

    def _all_min(self, t: torch.Tensor) -> torch.Tensor:
        return self._reduce(t, dist.ReduceOp.MIN)

    def _all_max(self, t: torch.Tensor) -> torch.Tensor:
        return self._reduce(t, dist.ReduceOp.MAX)

    # ------------------------------------------------------------------ communication

    def _plan_for(self, mixing: Any) -> HaloPlan:
        key = id(mixing)
        plan = self._halo_cache.get(key)
        if plan is None or plan.source is not mixing:
            if len(self._halo_cache) > 4:  # time-varying graphs: a new matrix every round
                self._halo_cache.clear()
            plan = halo_plan(mixing, self.bounds, self.rank, self.device)
            self._halo_cache[key] = plan
        return plan

    def _exchange(self, plan: HaloPlan, rows: torch.Tensor) -> torch.Tensor:
        """This rank's ``rows`` followed by the halo rows received from the other ranks."""
        d = rows.shape[1]
        requests = []
        outgoing = []
        for peer, wanted in plan.send.items():
            message = rows.index_select(0, wanted)
            outgoing.append(message)  # kept alive until the send completes
            requests.append(dist.isend(message, dst=peer, group=self.group))
            self.inter_rank_bytes_sent += message.numel() * message.element_size()
        incoming = []
        for peer, count in sorted(plan.receive.items()):
            buffer = torch.empty(count, d, dtype=rows.dtype, device=self.device)
            incoming.append(buffer)
            requests.append(dist.irecv(buffer, src=peer, group=self.group))
        for request in requests:
            request.wait()
        return torch.cat([rows, *incoming]) if incoming else rows

    def _mix_rows(self, mixing: Any, rows: torch.Tensor, out: torch.Tensor) -> None:
        halo = self._plan_for(mixing)
        extended = self._exchange(halo, rows)
        torch.addmm(out, halo.local_matrix, extended, beta=0.0, out=out)

    def _sum_over_processes(self, part: torch.Tensor) -> torch.Tensor:
        total = self._all_sum(part)
        # a ring all-reduce sends 2 (P - 1) / P of the vector from every rank
        self.inter_rank_bytes_sent += (
            2 * (self.world_size - 1) / self.world_size * total.numel() * total.element_size()
        )
        return total

    def _weighted_sum(self, weights: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self._sum_over_processes(weights[self.first_node : self.last_node] @ rows)

    def _all_rows(self, rows: torch.Tensor, what: str) -> torch.Tensor:
        raise ValueError(
            f"{what} is not sharded yet: it needs every node's message in one process. Run it "
            "with the default backend (leave out --backend dist)"
        )

    def step(self, total_rounds: int) -> dict[str, Any]:
        before = self.inter_rank_bytes_sent
        record = super().step(total_rounds)
        sent = torch.tensor([self.inter_rank_bytes_sent - before], dtype=torch.float64)
        record["inter_rank_bytes"] = float(self._all_sum(sent.to(self.device)))
        return record

    # ------------------------------------------------------------------ checkpoints

    def _gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Every rank's rows, in node order, on every rank (blocks padded to equal size)."""
        largest = max(b - a for a, b in zip(self.bounds, self.bounds[1:]))
        padded = torch.zeros(largest, *rows.shape[1:], dtype=rows.dtype, device=self.device)
        padded[: rows.shape[0]] = rows
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded, group=self.group)
        sizes = [b - a for a, b in zip(self.bounds, self.bounds[1:])]
        return torch.cat([p[:k] for p, k in zip(parts, sizes)])

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The whole swarm's state (collective: every rank must call it), as one process's."""
        tensors, values = super().state_dict()
        # the server's state is the same on every rank; everything else is one row per node
        return {k: v if k.startswith("server_state.") else self._gather_rows(v)
                for k, v in tensors.items()}, values

    def load_state_dict(self, tensors: dict[str, torch.Tensor], values: dict[str, Any]) -> None:
        lo, hi = self.first_node, self.last_node
        if tensors["params"].shape[0] != self.num_nodes:
            raise ValueError(
                f"the checkpoint holds {tensors['params'].shape[0]} nodes but this simulation "
                f"has {self.num_nodes}"
            )
        super().load_state_dict({k: v if k.startswith("server_state.") else v[lo:hi]
                                 for k, v in tensors.items()}, values)

    def summary(self) -> dict[str, Any]:
        info = super().summary()
        info.update(backend="dist", world_size=self.world_size, shard_bounds=self.bounds)
        return info


def owner_of(node: int, bounds: list[int]) -> int:
    """The rank holding ``node``."""
    return bisect.bisect_right(bounds, node) - 1
