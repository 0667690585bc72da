"""Local training, the first stage of a round: every participant takes its local steps, in
blocks of nodes, in place on the state's rows (a vmapped gradient and the rule's update, or the
fused linear-SGD step)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.func import functional_call, vmap

from murmura.swarm.fused import fused_correction
from murmura.swarm.random import node_keys


class LocalTraining:
    """The local-update stage of :class:`~murmura.swarm.engine.Simulation`."""

    def _forward(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, (params, self.buffers), (x,))

    def _loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
        """One node's loss on one minibatch: the task's (cross-entropy by default)."""
        return self.task.loss(self._forward, params, {"x": x, "y": y})[0]

    def _weighted_loss(self, params, x, y, w):
        return self.task.loss(self._forward, params, {"x": x, "y": y, "weight": w})[0]

    # a task that asks for them gets its node's key for the step and its declared node state
    # (as named tensors, like params) in the batch: one more argument, a dict
    def _loss_with_extras(self, params, x, y, extras):
        return self.task.loss(self._forward, params, {"x": x, "y": y, **extras})[0]

    def _weighted_loss_with_extras(self, params, x, y, w, extras):
        return self.task.loss(self._forward, params, {"x": x, "y": y, "weight": w,
                                                      **extras})[0]

    def _order(self, participants: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
        """The nodes to train, in block order, and whether blocks can be slices of the state.

        When nodes take different numbers of steps (epochs over unequal partitions) they are
        sorted by size, so a block stops as soon as its own nodes are done instead of computing
        masked steps for the largest node's epoch. Results do not depend on the order: every
        draw is keyed by node."""
        ids = participants
        if ids is None:
            ids = torch.arange(self.first_node, self.last_node, device=self.device)
        elif self.local_nodes != self.num_nodes:
            ids = ids[(ids >= self.first_node) & (ids < self.last_node)]
        if len(ids) == 0:
            return ids, False
        sizes = self.data.sizes[ids]
        uneven = self.sampler.epochs is not None and bool((sizes != sizes[0]).any())
        if uneven:
            ids = ids[torch.argsort(sizes, descending=True, stable=True)]
        return ids, participants is None and not uneven

    def _step_shapes(
        self, plan: Any, num_steps: int, block: int
    ) -> tuple[list[int], list[int], list[bool]]:
        """For each step of a block: how many nodes still train, how many batch columns the
        fullest of them needs, and whether some of them need fewer (masked samples).

        Nodes are sorted by their number of steps, so the nodes still training at a step are a
        prefix of the block: a step computes exactly those. Valid samples come first in every
        batch, so a step computes only the columns its fullest node needs, and masks nothing
        when every node has that many."""
        if plan.active is None:
            alive = [block] * num_steps
        else:
            steps_of = plan.active.sum(dim=1)
            still = steps_of.unsqueeze(1) > torch.arange(num_steps, device=steps_of.device)
            alive = still.sum(dim=0).tolist()
        width = [self.sampler.batch_size] * num_steps
        masked = [False] * num_steps
        if plan.weight is not None:
            counts = plan.weight.sum(dim=2)
            width = counts.max(dim=0).values.to(torch.int64).tolist()
            low = torch.where(counts > 0, counts, float("inf")).min(dim=0).values
            masked = (low < counts.max(dim=0).values).tolist()
        return alive, width, masked

    def train(
        self, participants: torch.Tensor | None, round_index: int | torch.Tensor,
        rows_identical: bool = False,
    ) -> None:
        """Local update: every participant takes its local steps, block by block, in place.
        ``rows_identical``: every node holds the same parameters (after a server average), which
        the fused step uses for its first step. ``round_index`` keys the draws: the round, or
        (on the virtual clock, where nodes run tasks at their own pace) an int64 ``[n]`` tensor
        of each node's task number."""
        if isinstance(round_index, torch.Tensor) and self.algorithm.local_work.order is not None:
            raise ValueError("ordered local data (curricula) needs rounds; it does not run on "
                             "the virtual clock")
        if self.algorithm.local_work.reset_state_each_round:
            for buf in self.local_state.values():
                buf.zero_()
        self._reset_round_state(participants)
        ids, contiguous = self._order(participants)
        # The round's minibatches in one vectorized call (hashing is cheap per element, costly
        # per call): for every node at once when all take the same number of steps, else per
        # block (blocks of similar sizes, see _order).
        whole = None
        if len(ids) and (self.sampler.steps is not None
                         or bool((self.data.sizes[ids] == self.data.sizes[ids[0]]).all())):
            whole = self.sampler.batches(ids, _of(round_index, ids), 0,
                                         self.sampler.num_steps(ids))
        for start in range(0, len(ids), self.chunk_size):
            stop = min(start + self.chunk_size, len(ids))
            nodes = ids[start:stop]
            rounds = _of(round_index, nodes)
            where: Any = slice(start, stop) if contiguous else nodes - self.first_node
            if whole is not None:
                plan = whole.rows(start, stop)
                num_steps = plan.index.shape[1]
            else:
                num_steps = self.sampler.num_steps(nodes)
                plan = self.sampler.batches(nodes, rounds, 0, num_steps)
            X = self.params[where]
            state = {k: v[where] for k, v in self.local_state.items()}
            shared = {k: v[where] for k, v in self.node_state.items()
                      if self.node_state_specs[k].like_params}
            alive, width, masked = self._step_shapes(plan, num_steps, stop - start)
            if self.algorithm.before_local is not None:
                keys = node_keys(self.seed, "before-local", nodes, rounds, 0)
                self._write_node_updates(
                    X, shared, vmap(self.algorithm.before_local)(X, shared, nodes, keys),
                    "the before-local step")
            if self.algorithm.local_work.order is not None:
                plan = self._ordered(plan, nodes, X, round_index)
            if self._fused is not None:
                correction = fused_correction(self.algorithm.local_rule, shared)
                self._train_block_fused(X, state, plan, num_steps, alive, width, masked,
                                        rows_identical, correction, nodes)
            else:
                self._train_block_generic(X, {**state, **shared}, plan, num_steps, alive, width,
                                          masked, nodes, rounds)
            if self.algorithm.after_local is not None:
                steps = (plan.active.sum(dim=1) if plan.active is not None
                         else torch.full((len(nodes),), num_steps, device=self.device))
                self._write_node_updates(
                    X, shared, vmap(self.algorithm.after_local)(X, shared, nodes, steps),
                    "the after-local step")
            if not contiguous:
                self.params[where] = X
                for k, v in state.items():
                    self.local_state[k][where] = v
                for k, v in shared.items():
                    self.node_state[k][where] = v

    @torch.no_grad()
    def _write_node_updates(self, X: torch.Tensor, shared: dict, updates: dict, who: str
                            ) -> None:
        """A per-node step's results written into the block's rows of params and node state."""
        for k, v in updates.items():
            if k != "params" and k not in shared:
                self._target(k, f"{who} returned an update for")
            (X if k == "params" else shared[k]).copy_(v)

    @torch.no_grad()
    def _reset_round_state(self, participants: torch.Tensor | None) -> None:
        """Node state declared with ``reset="round"`` starts again, for this round's
        participants only: its fill value, or a copy of the node's model."""
        for name, spec in self.node_state_specs.items():
            if spec.reset != "round":
                continue
            target = self.node_state[name]
            if participants is None:
                if spec.init == "params":
                    target.copy_(self.params)
                else:
                    target.fill_(spec.fill)
                continue
            rows = participants[(participants >= self.first_node)
                                & (participants < self.last_node)] - self.first_node
            target[rows] = self.params[rows] if spec.init == "params" else spec.fill

    def _train_block_generic(
        self, X: torch.Tensor, state: dict, plan: Any, num_steps: int, alive: list,
        width: list, masked: list, nodes: torch.Tensor | None = None,
        round_index: int | torch.Tensor = 0,
    ) -> None:
        """A block's local steps: the vmapped gradient, then the rule's update per parameter."""
        rule = self.algorithm.local_rule
        dataset = self.data.dataset
        feature = dataset.feature_shape
        train_x, train_y = dataset.train_x, dataset.train_y
        index_all, weight_all = plan.index, plan.weight
        gradient_state = tuple(getattr(rule, "gradient_state", ()))
        pools = {name: sampler.batches(nodes, round_index, 0, num_steps)
                 for name, sampler in self._pool_samplers.items()}
        views_for: dict[int, tuple[dict, dict]] = {}
        for step in range(num_steps):
            m = alive[step]
            if m not in views_for:
                views_for[m] = (
                    self.spec.views(X[:m]),
                    {k: self.spec.views(v[:m]) for k, v in state.items()},
                )
            param_views, state_views = views_for[m]
            index = index_all[:m, step, : width[step]]
            xb = self._gather(train_x, index).view(*index.shape, *feature)
            yb = self._labels(train_y, index, nodes[:m])
            # the task's extras come first, then the state the rule reads, its key last
            # (docs/rules.md)
            keyed: tuple = ()
            if self._task_extras:
                extras: dict[str, Any] = {}
                if getattr(self.task, "state_names", ()):
                    extras["state"] = {k: state_views[k] for k in self.task.state_names}
                if getattr(self.task, "needs_key", False):
                    extras["key"] = node_keys(self.seed, "task", nodes[:m],
                                              _first(round_index, m), step)
                if getattr(self.task, "needs_label_counts", False):
                    extras["label_counts"] = self.label_counts[nodes[:m]]
                for name, draws in pools.items():
                    picked = draws.index[:m, step]
                    extras[name] = {"x": train_x[picked.reshape(-1)].view(
                        *picked.shape, *feature)}
                keyed += (extras,)
            if gradient_state:
                keyed += ({k: state_views[k] for k in gradient_state},)
            needs_key = getattr(rule, "needs_key", False)
            if needs_key:
                counter = 0 if needs_key == "round" else step
                keyed += (node_keys(self.seed, "local", nodes[:m], _first(round_index, m),
                                    counter),)
            if not masked[step]:
                grads = self._grad_fn(param_views, xb, yb, *keyed)
                active = None
            else:
                weight = weight_all[:m, step, : width[step]]
                grads = self._weighted_grad_fn(param_views, xb, yb, weight, *keyed)
                active = (weight.sum(dim=1) > 0).to(X.dtype)
            with torch.no_grad():
                for name in self.spec.names:
                    p = param_views[name]
                    a = None if active is None else active.view(-1, *(1,) * (p.dim() - 1))
                    rule.update(
                        p, grads[name], {k: v[name] for k, v in state_views.items()}, a
                    )

    def _labels(self, labels: torch.Tensor, index: torch.Tensor, nodes: torch.Tensor | None
                ) -> torch.Tensor:
        """The labels a block's step trains on: flipped (the attack's ``flip``) for the
        malicious nodes of a label-flipping adversary."""
        y = labels[index]
        if self._flipped is None or nodes is None:
            return y
        flipped = self._flipped[nodes].view(-1, *(1,) * (y.dim() - 1))
        classes = self.data.dataset.num_classes
        flip = getattr(self.adversary.attack, "flip", None)  # an attack of one's own may not say
        return torch.where(flipped, (classes - 1) - y if flip is None else flip(y, classes), y)

    def _gather(self, samples: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``samples[index]`` (flattened index) into a buffer kept across steps: a fresh
        minibatch tensor every step costs page faults that cost more than the gather."""
        count = index.numel()
        size = count * math.prod(samples.shape[1:])
        if self._batch_buffer is None or self._batch_buffer.numel() < size:
            self._batch_buffer = torch.empty(size, dtype=samples.dtype, device=samples.device)
        out = self._batch_buffer[:size].view(count, *samples.shape[1:])
        return torch.index_select(samples, 0, index.reshape(-1), out=out)

    @torch.no_grad()
    def _train_block_fused(
        self, X: torch.Tensor, state: dict, plan: Any, num_steps: int, alive: list,
        width: list, masked: list, rows_identical: bool = False,
        correction: torch.Tensor | None = None, nodes: torch.Tensor | None = None,
    ) -> None:
        """A block's local steps by the fused linear-SGD step (``correction``: the rows of a
        per-node vector the rule adds to every gradient, see ``fused_correction``). On the CPU
        a batched GEMM can accumulate in place only into contiguous weights: with 2 steps or
        more the block works on a contiguous copy of its parameters (and momentum), copied in
        and out once per round; with fewer, the copies would cost more than they save and the
        step updates the state's rows through a scratch block (see FusedLinearSGD._accumulate)."""
        dataset = self.data.dataset
        block = X.shape[0]
        rows = {"params": self.spec.views(X)}
        rows.update({k: self.spec.views(v) for k, v in state.items()})
        work = rows
        copied = self.device.type == "cpu" and num_steps >= 2
        if copied:
            if self._workspace is None or self._workspace_rows < block or set(
                self._workspace
            ) != set(rows):
                self._workspace = {
                    kind: {
                        name: torch.empty(block, *shape, device=self.device)
                        for name, shape in zip(self.spec.names, self.spec.shapes)
                    }
                    for kind in rows
                }
                self._workspace_rows = block
            work = {kind: {name: buf[:block] for name, buf in bufs.items()}
                    for kind, bufs in self._workspace.items()}
            for kind, bufs in work.items():
                for name, buf in bufs.items():
                    source = rows[kind][name]
                    # identical rows: read one and broadcast it, not the whole block
                    buf.copy_(source[:1].expand_as(buf) if rows_identical and kind == "params"
                              else source)
        for step in range(num_steps):
            m = alive[step]
            index = plan.index[:m, step, : width[step]]
            xb = self._gather(dataset.train_x, index)
            weight = plan.weight[:m, step, : width[step]] if masked[step] else None
            views = work if m == block else {
                kind: {name: buf[:m] for name, buf in bufs.items()} for kind, bufs in work.items()
            }
            extra = None if correction is None else self.spec.views(correction[:m])
            labels = self._labels(dataset.train_y, index, None if nodes is None else nodes[:m])
            self._fused(views["params"], xb.view(*index.shape, -1), labels,
                        weight, views.get("momentum"), shared=rows_identical and step == 0,
                        correction=extra)
        if copied:
            for kind, bufs in work.items():
                for name, buf in bufs.items():
                    rows[kind][name].copy_(buf)


def _of(round_index: int | torch.Tensor, nodes: torch.Tensor) -> int | torch.Tensor:
    """The round (or each node's task number) of ``nodes``."""
    return round_index[nodes] if isinstance(round_index, torch.Tensor) else round_index


def _first(round_index: int | torch.Tensor, m: int) -> int | torch.Tensor:
    """Of a block's per-node task numbers, those of its first ``m`` nodes (still training)."""
    return round_index[:m] if isinstance(round_index, torch.Tensor) else round_index
