"""Ordered local data (curricula): which of its samples a node reads at each step, chosen by a
per-node rule from the losses a scoring model gives its samples.

A :class:`~murmura.algorithms.base.LocalWork` with an ``order`` replaces the shuffled
minibatches of :mod:`murmura.swarm.batches` by the order's choice, keeping their shapes and
masks (so epochs, padding and uneven nodes work as before). The engine scores every sample of
each participant with the model the order names (``"global"``: the model the node starts the
round from, the server's in FedAvg; ``"expert"``: fixed parameters given with the order;
``"none"``: no scores, for random orders) and calls the order's per-node function, vmapped, with
a key from (seed, node, round). Participation rules that rank clients by difficulty
(``needs_losses``) get each client's mean loss under its current model the same way.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import vmap

from murmura.swarm.random import node_keys


class OrderedData:
    """The ordered-data stage of :class:`~murmura.swarm.engine.Simulation`."""

    def _check_order(self) -> None:
        order = self.algorithm.local_work.order
        if order is None and not getattr(self.algorithm.participation, "needs_losses", False):
            return
        if self.data.dataset.train_y.ndim != 1:
            raise ValueError(
                "ordering samples or clients by their loss needs one class label per sample "
                f"(cross-entropy); {self.data.dataset.name!r} has sequence targets"
            )
        if order is None:
            return
        scoring = getattr(order, "scoring", None)
        if scoring not in ("global", "expert", "none"):
            raise ValueError(
                f"a data order's scoring must be 'global', 'expert' or 'none', got {scoring!r}"
            )
        if scoring == "expert":
            expert = getattr(order, "expert", None)
            if not isinstance(expert, torch.Tensor) or tuple(expert.shape) != (self.spec.dim,):
                raise ValueError(
                    f"an 'expert' data order needs the expert's flat parameters as a tensor of "
                    f"shape [{self.spec.dim}] (this model's size), got "
                    f"{tuple(expert.shape) if isinstance(expert, torch.Tensor) else expert!r}"
                )

    @torch.no_grad()
    def _sample_losses(self, rows: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of every training sample of ``nodes`` under the models ``rows``
        (``[c, d]``, or one ``[d]`` for all): ``[c, max_size]``, +inf at padding."""
        table = self.data.index_table[nodes]
        sizes = self.data.sizes[nodes]
        dataset = self.data.dataset

        def losses(params, index):
            out = self._forward(params, dataset.train_x[index])
            return F.cross_entropy(out, dataset.train_y[index], reduction="none")

        shared = rows.dim() == 1
        chunk = self._eval_chunk_size(table.shape[1])
        parts = []
        for start in range(0, len(nodes), chunk):
            index = table[start : start + chunk]
            if shared:
                parts.append(vmap(losses, in_dims=(None, 0))(self.spec.views(rows), index))
            else:
                parts.append(vmap(losses)(self.spec.views(rows[start : start + chunk]), index))
        out = torch.cat(parts)
        valid = torch.arange(table.shape[1], device=out.device) < sizes.unsqueeze(1)
        return torch.where(valid, out, torch.inf)

    def client_losses(self) -> torch.Tensor:
        """Each client's mean training loss under its current model: float ``[n]``."""
        if self.local_nodes != self.num_nodes:
            raise ValueError(
                "choosing clients by their loss is not supported by the sharded backend yet "
                "(each process holds only its nodes' models): run it unsharded"
            )
        nodes = torch.arange(self.num_nodes, device=self.device)
        losses = self._sample_losses(self.params, nodes)
        finite = torch.isfinite(losses)
        return torch.where(finite, losses, 0.0).sum(1) / finite.sum(1)

    def _ordered(self, plan: Any, nodes: torch.Tensor, rows: torch.Tensor, round_index: int
                 ) -> Any:
        """``plan`` with its sample indices chosen by the data order."""
        order = self.algorithm.local_work.order
        steps, batch = plan.index.shape[1], plan.index.shape[2]
        sizes = self.data.sizes[nodes]
        if order.scoring == "none":
            losses = torch.zeros(len(nodes), self.data.index_table.shape[1], device=self.device)
        else:
            scorer = rows if order.scoring == "global" else order.expert.to(self.device)
            losses = self._sample_losses(scorer, nodes)
        # a node's steps per round, and so its place in the run's sequence of steps
        per_round = -(-self.sampler.samples_per_round(nodes) // self.sampler.batch_size)
        first = per_round * round_index
        total = per_round * self._round_total
        keys = node_keys(self.seed, "data-order", nodes, round_index)
        positions = vmap(partial(order.positions, steps=steps, batch=batch))(
            losses, sizes, first, total, keys)
        if tuple(positions.shape) != (len(nodes), steps, batch):
            raise ValueError(
                f"{type(order).__name__}.positions must return [steps={steps}, batch={batch}] "
                f"positions per node, got {tuple(positions.shape[1:])}"
            )
        positions = torch.minimum(positions.to(torch.int64).clamp_min(0),
                                  (sizes - 1).view(-1, 1, 1))
        index = torch.gather(self.data.index_table[nodes], 1,
                             positions.reshape(len(nodes), -1)).view_as(plan.index)
        return type(plan)(index=index, weight=plan.weight, active=plan.active)


__all__ = ["OrderedData"]
