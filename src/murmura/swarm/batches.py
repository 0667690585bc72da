"""Per-node minibatches drawn from each node's own partition, for all nodes at once.

Each node reads its partition as a stream of shuffled epochs (like a DataLoader with
``shuffle=True``); the permutation of epoch ``e`` is keyed by (seed, node, e), and a minibatch is
``B`` consecutive positions of that stream, so no per-node Python loop and no sort is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from murmura.swarm.random import hash_keys, permute, stream_id

_BATCH_STREAM = stream_id("batch")


@dataclass
class Batch:
    """Sample indices ``[c, B]`` into the dataset, and which of them count (``None``: all)."""

    index: torch.Tensor
    weight: torch.Tensor | None  # float [c, B] of 0/1, or None when every sample counts
    active: torch.Tensor | None  # bool [c]: nodes that take this step (None: all)

    def rows(self, start: int, stop: int) -> Batch:
        """The minibatches of nodes ``start:stop`` (positions in the node list drawn for)."""
        return Batch(
            index=self.index[start:stop],
            weight=None if self.weight is None else self.weight[start:stop],
            active=None if self.active is None else self.active[start:stop],
        )


class BatchSampler:
    """Minibatch indices for any set of nodes, a pure function of (seed, node, round, step).

    Two regimes:

    * ``epochs`` per round: node ``i`` walks ``ceil(epochs * size_i)`` samples of a fresh
      shuffle each round, ``batch_size`` at a time. Nodes with fewer samples finish earlier:
      their later steps are masked (``active`` false), and a last partial batch is masked
      sample by sample, so each node sees exactly its epoch.
    * ``steps`` per round: every node takes the same number of full batches, reading its
      stream of shuffled epochs continuously across rounds.
    """

    def __init__(
        self,
        index_table: torch.Tensor,
        sizes: torch.Tensor,
        batch_size: int,
        *,
        seed: int,
        steps: int | None = None,
        epochs: float | None = None,
    ) -> None:
        if (steps is None) == (epochs is None):
            raise ValueError("give exactly one of local steps or local epochs per round")
        if steps is not None and (int(steps) != steps or steps < 1):
            raise ValueError(f"local steps must be a positive integer, got {steps!r}")
        if epochs is not None and not (epochs > 0):
            raise ValueError(f"local epochs must be positive, got {epochs!r}")
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if bool((sizes < 1).any()):
            empty = torch.nonzero(sizes < 1).flatten()[:5].tolist()
            raise ValueError(
                f"nodes {empty} hold no training samples; every node needs data "
                "(use fewer nodes or a partition with a minimum size)"
            )
        self.index_table = index_table
        self.sizes = sizes
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.steps = None if steps is None else int(steps)
        self.epochs = None if epochs is None else float(epochs)

    def samples_per_round(self, nodes: torch.Tensor) -> torch.Tensor:
        """How many samples each node processes in a round."""
        if self.epochs is not None:
            return torch.ceil(self.sizes[nodes].to(torch.float64) * self.epochs).to(torch.int64)
        return torch.full_like(nodes, self.steps * self.batch_size, dtype=torch.int64)

    def num_steps(self, nodes: torch.Tensor | None = None) -> int:
        """Steps in a round: the most any of ``nodes`` (default: all) needs."""
        if self.steps is not None:
            return self.steps
        sizes = self.sizes if nodes is None else self.sizes[nodes]
        most = int(torch.ceil(sizes.max().to(torch.float64) * self.epochs).item())
        return -(-most // self.batch_size)

    def batch(self, nodes: torch.Tensor, round_index: int, step: int) -> Batch:
        """Indices of the minibatch each of ``nodes`` reads at (round, step): ``[c, B]``."""
        steps = self.batches(nodes, round_index, step, 1)
        return Batch(
            index=steps.index[:, 0],
            weight=None if steps.weight is None else steps.weight[:, 0],
            active=None if steps.active is None else steps.active[:, 0],
        )

    def batches(
        self, nodes: torch.Tensor, round_index: int | torch.Tensor, first_step: int,
        num_steps: int,
    ) -> Batch:
        """The minibatches of ``num_steps`` consecutive steps at once: ``index`` is
        ``[c, num_steps, B]``, ``weight`` ``[c, num_steps, B]`` and ``active`` ``[c, num_steps]``
        (or ``None`` when every sample counts). One call per block and round keeps the hashing
        off the per-step path."""
        sizes = self.sizes[nodes].view(-1, 1, 1)
        if isinstance(round_index, torch.Tensor):  # one per node: tasks on the virtual clock
            round_index = round_index.view(-1, 1, 1)
        b = self.batch_size
        steps = torch.arange(first_step, first_step + num_steps, device=nodes.device).view(1, -1, 1)
        offsets = torch.arange(b, device=nodes.device).view(1, 1, -1)
        if self.steps is not None:
            stream_pos = (round_index * self.steps + steps) * b + offsets
            round_key = -1
            weight = active = None
        else:
            stream_pos = (steps * b + offsets).expand(len(nodes), -1, -1)
            total = self.samples_per_round(nodes).view(-1, 1, 1)
            valid = stream_pos < total
            round_key = round_index
            if bool(valid.all()):
                weight = active = None
            else:
                weight = valid.to(torch.float32)
                active = valid.any(dim=2)
        epoch_key = torch.div(stream_pos, sizes, rounding_mode="floor")
        key = hash_keys(
            self.seed, _BATCH_STREAM, nodes.view(-1, 1, 1), round_key, epoch_key,
            device=nodes.device,
        )
        position = permute(stream_pos % sizes, sizes, key)
        row_start = nodes.view(-1, 1, 1) * self.index_table.shape[1]
        index = self.index_table.reshape(-1)[row_start + position]
        return Batch(index=index, weight=weight, active=active)
