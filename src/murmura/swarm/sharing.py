"""Rows of per-peer tables sent between neighbours (:class:`~murmura.algorithms.plans.ShareRows`):
what a node knows about distant peers, gossiped one row per link.

The rule's ``pick`` runs vmapped over every link, its ``merge`` over blocks of receivers; the
engine only gathers the chosen rows, lays them out by the receiver's in-neighbour slots and counts
the bytes of the links that carried one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.func import vmap

from murmura.swarm.random import hash_keys, node_keys

Tensor = torch.Tensor


class RowSharing:
    """The :class:`~murmura.algorithms.plans.ShareRows` part of the communication stage."""

    def _share_rows(self, plan: Any) -> None:
        for name in (*plan.reads, *plan.sends):
            spec = self.node_state_specs.get(name)
            if spec is None or spec.shape[:1] != ("n",):
                found = "not declared" if spec is None else f"shaped {spec.shape}"
                raise ValueError(f"ShareRows reads and sends per-peer tables, node state shaped "
                                 f"('n', ...); {name!r} is {found}")
        index, mask = self._neighbourhoods(plan.matrix)
        lo = self.first_node
        rows, slots = torch.nonzero(mask > 0, as_tuple=True)
        senders = index[rows, slots]
        receivers = rows + lo
        tables = {name: self._all_rows(self.node_state[name], "a ShareRows plan")
                  for name in {*plan.reads, *plan.sends}}
        keys = hash_keys(node_keys(self.seed, "share", senders, self.round, self._plan_index),
                         receivers)
        picked = vmap(plan.pick)({name: tables[name][senders] for name in plan.reads},
                                 senders, receivers, keys).to(torch.int64)
        if self.malicious is not None:
            picked = torch.where(self.malicious[senders], -1, picked)
        sent = picked >= 0
        chosen = picked.clamp(min=0)
        local, k = index.shape
        arrived: dict[str, Tensor] = {}
        for name in plan.sends:
            table = tables[name]
            arrived[name] = table.new_zeros(local, k, *table.shape[2:])
            arrived[name][rows, slots] = table[senders, chosen]
        peers = torch.full((local, k), -1, dtype=torch.int64, device=self.device)
        peers[rows, slots] = picked
        slot_mask = torch.zeros(local, k, device=self.device)
        slot_mask[rows, slots] = sent.to(slot_mask.dtype)
        state = {name: self.node_state[name] for name in tables}
        table_rows = sum(v[0].numel() for v in state.values()) // max(1, self.spec.dim)
        self._per_node(plan.merge, None, (state, arrived, peers, index, slot_mask), (0,) * 5,
                       lambda where, updates: self._write(updates, where),
                       vectors=4 + k + 2 * table_rows)
        size = float(plan.nbytes(self.spec.dim))
        out = torch.zeros(self.num_nodes, dtype=torch.float64, device=self.device)
        out.index_add_(0, senders, sent.to(torch.float64) * size)
        self.bytes_sent += self._sum_over_processes(out)[lo : self.last_node]
        self.bytes_received.index_add_(0, rows, sent.to(torch.float64) * size)


__all__ = ["RowSharing"]
