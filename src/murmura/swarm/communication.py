"""Communication, the second stage of a round: the engine executes the plans a communication
rule returns and counts the bytes every message carries across each link.

Plans (``murmura.algorithms.plans``) are executed for every node at once: the per-node encoder,
aggregator, attack and combiner are ``vmap``ped over blocks of rows; linear mixing is one sparse
product per payload tensor. Two primitives reach across processes, :meth:`_mix_rows` and
:meth:`_weighted_sum`; a sharded simulation overrides just those.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch.func import vmap

from murmura.algorithms.plans import (
    Average,
    Control,
    Exchange,
    Mix,
    Plan,
    SendModel,
    ServerAverageRule,
    ServerStep,
    ShareRows,
)
from murmura.swarm.nonlinear import NonLinearCommunication
from murmura.swarm.random import node_keys
from murmura.swarm.sharing import RowSharing

Tensor = torch.Tensor

# bytes of per-node inputs and outputs a vmapped block of the communication stage may hold
_BLOCK_BYTES = 64 << 20


class Communication(NonLinearCommunication, RowSharing):
    """The communication stage of :class:`~murmura.swarm.engine.Simulation`."""

    @torch.no_grad()
    def communicate(self, plan: Plan | Sequence[Plan]) -> None:
        """Execute a plan (or a sequence of plans, in order) and count every message sent."""
        if plan is None:
            return
        if isinstance(plan, (list, tuple)):
            for index, part in enumerate(plan):
                self._plan_index = index
                self.communicate(part)
            self._plan_index = 0
            return
        if self.malicious is not None:  # attacks rewrite messages: no model-only fast path
            if isinstance(plan, Mix):
                plan = Exchange(plan.matrix)
            elif isinstance(plan, Average):
                plan = ServerStep(plan.weights, receivers=plan.receivers, hosts=plan.hosts)
        if isinstance(plan, Mix):
            self._mix(plan)
        elif isinstance(plan, Average):
            self._average(plan)
        elif isinstance(plan, Exchange):
            self._exchange_messages(plan)
        elif isinstance(plan, ServerStep):
            self._server_step(plan)
        elif isinstance(plan, ShareRows):
            self._share_rows(plan)
        elif isinstance(plan, Control):
            lo, hi = self.first_node, self.last_node
            self.bytes_sent += plan.sent[lo:hi].to(self.bytes_sent)
            self.bytes_received += plan.received[lo:hi].to(self.bytes_received)
        else:
            raise TypeError(
                f"unknown communication plan {type(plan).__name__}: a rule's plan() returns Mix, "
                "Average, Exchange, ServerStep, ShareRows, Control, None, or a list of them"
            )

    # ------------------------------------------------------------ the fast paths

    def _mix(self, plan: Mix) -> None:
        mixing = plan.matrix
        if self._mix_buffer is None:
            self._mix_buffer = torch.empty_like(self.params)
        self._mix_rows(mixing, self.params, self._mix_buffer)
        self.params, self._mix_buffer = self._mix_buffer, self.params
        self._count_links(mixing, self.message_bytes)

    def _average(self, plan: Average) -> None:
        size = self.message_bytes
        average = self._weighted_sum(plan.weights.to(self.params.dtype), self.params)
        self.params.copy_(average.expand_as(self.params))
        self._mark_identical()
        uploaders = plan.weights > 0
        receivers = uploaders if plan.receivers is None else plan.receivers
        self._count_star(uploaders, size, receivers, size, plan.hosts)

    def _mark_identical(self) -> None:
        """Every row now holds the same model: evaluation can skip summing the state (the mark
        is void as soon as the state is written again)."""
        self._identical = (self.params, self.params._version)

    # ------------------------------------------------------------ primitives across processes

    def _mix_rows(self, mixing: Any, rows: Tensor, out: Tensor) -> None:
        """``out <- W @ rows`` for this process's rows (all of them here)."""
        # addmm into a kept buffer: a fresh [n, d] result would cost page faults every round.
        # cuSPARSE scales the output by beta in a pass of its own, beta 0 included; zeroing
        # it first is cheaper there (8.6 against 10.7 ms at 100,000 x 7,850 on an H100).
        if out.device.type == "cuda":
            torch.addmm(out.zero_(), mixing.matrix, rows, out=out)
        else:
            torch.addmm(out, mixing.matrix, rows, beta=0.0, out=out)

    def _weighted_sum(self, weights: Tensor, rows: Tensor) -> Tensor:
        """``sum_j weights[j] rows[j]`` over every node (``weights``: ``[n]``, global)."""
        return weights[self.first_node : self.last_node] @ rows

    def _all_rows(self, rows: Tensor, what: str) -> Tensor:
        """Every node's rows (``[n, ...]``), for the non-linear plans."""
        return rows

    # ------------------------------------------------------------ byte counting

    def _count_links(self, mixing: Any, size: float) -> None:
        lo, hi = self.first_node, self.last_node
        self.bytes_sent += mixing.out_degree[lo:hi].to(torch.float64) * size
        self.bytes_received += mixing.in_degree[lo:hi].to(torch.float64) * size

    def _count_star(self, uploaders: Tensor, up: float, receivers: Tensor, down: float,
                    hosts: Tensor | None = None) -> None:
        lo, hi = self.first_node, self.last_node
        if hosts is None:
            self.bytes_sent += uploaders[lo:hi].to(torch.float64) * up
            self.bytes_received += receivers[lo:hi].to(torch.float64) * down
            self.server_bytes_sent += float(receivers.sum()) * down
            return
        # every uploader to every host, every host to every receiver, nobody to itself
        host = torch.zeros_like(uploaders, dtype=torch.float64)
        host[hosts] = 1.0
        upload, receive = uploaders.to(torch.float64), receivers.to(torch.float64)
        h, u, r = host.sum(), upload.sum(), receive.sum()
        sent = upload * (h - host) * up + host * (r - receive) * down
        got = host * (u - upload) * up + receive * (h - host) * down
        self.bytes_sent += sent[lo:hi]
        self.bytes_received += got[lo:hi]

    # ------------------------------------------------------------ per-node functions, vmapped

    def _comm_block(self, vectors: int) -> int:
        return max(1, min(self.local_nodes, _BLOCK_BYTES // max(1, 4 * self.spec.dim * vectors)))

    def _per_node(
        self, fn: Callable, rows: Tensor | None, args: Sequence[Any], in_dims: Sequence[Any],
        store: Callable[[Any, Any], None], vectors: int | None = None,
    ) -> None:
        """``vmap(fn)`` over the nodes ``rows`` (local indices; ``None``: every local node) in
        blocks; ``args`` are full local tensors (or dicts of them) indexed by those rows, or
        shared values (``in_dims`` entry ``None``). ``store(where, outputs)`` places each
        block's outputs, so no ``[n, d]`` result is built only to be copied again. ``vectors``:
        how many ``[d]`` vectors one node's inputs and outputs hold, when more than the usual."""
        count = self.local_nodes if rows is None else len(rows)
        block = self._comm_block(vectors or 4 + len(args))
        for start in range(0, count, block):
            where = (slice(start, min(start + block, count)) if rows is None
                     else rows[start : start + block])
            sliced = [_rows_of(a, where) if d == 0 else a for a, d in zip(args, in_dims)]
            store(where if rows is None else slice(start, start + len(where)),
                  vmap(fn, in_dims=tuple(in_dims))(*sliced))

    def _message_keys(self) -> Tensor:
        """Every local node's key for this round's message of the current plan."""
        nodes = torch.arange(self.first_node, self.last_node, device=self.device)
        return node_keys(self.seed, "message", nodes, self.round, self._plan_index)

    def _target(self, name: str, who: str) -> Tensor:
        """The rows a result named ``name`` is stored into: the model, or a node state."""
        target = self.params if name == "params" else self.node_state.get(name)
        if target is None:
            raise KeyError(
                f"{who} {name!r}, which is neither 'params' nor a node state any rule declares "
                f"(declared: {sorted(self.node_state)}); add it to a rule's node_state"
            )
        return target

    def _write(self, updates: dict[str, Tensor], where: Any) -> None:
        """Store per-node results: ``"params"`` into the model rows, others into node state."""
        for name, value in updates.items():
            self._target(name, "a rule returned an update for")[where] = value

    def _encode(self, encoder: Any, rows: Tensor | None) -> dict[str, Tensor]:
        """Every sender's payload (``rows``: local indices; ``None``: every local node), with
        the encoder's own-state updates written as it goes."""
        if isinstance(encoder, SendModel) and rows is None and self.malicious is None:
            return {"params": self.params}  # read as it is: nothing writes it before the mix
        payload: dict[str, Tensor] = {}
        count = self.local_nodes if rows is None else len(rows)

        def store(where: Any, outputs: tuple[dict, dict]) -> None:
            message, updates = outputs
            for name, value in message.items():
                if name not in payload:
                    payload[name] = torch.empty(count, *value.shape[1:], dtype=value.dtype,
                                                device=self.device)
                payload[name][where] = value
            self._write(updates, where if rows is None else rows[where])

        state = dict(self.node_state)
        self._per_node(encoder.encode, rows, (self.params, state, self._message_keys()),
                       (0, 0, 0), store)
        return payload

    # ------------------------------------------------------------ graph exchanges

    def _exchange_messages(self, plan: Exchange) -> None:
        mixing = plan.matrix
        payload = self._encode(plan.encoder, None)
        own_messages, links = payload, None
        if self.malicious is not None:
            if getattr(self.adversary.attack, "per_target", False):
                links = self._targeted_links(payload, mixing)
            else:
                payload = self._attack_on_graph(payload, mixing)
        if plan.aggregator is not None:
            received = self._aggregate_on_graph(plan.aggregator, payload, mixing, links)
        elif links is not None:
            received = self._mix_with_links(mixing, payload, links)
        else:
            received = {}
            for name, message in payload.items():
                received[name] = torch.empty_like(message)
                self._mix_rows(mixing, message, received[name])
        if self.malicious is not None and not getattr(self.adversary, "receives", True):
            bad = self.malicious[self.first_node : self.last_node]
            received = {name: torch.where(bad.view(-1, *(1,) * (value.dim() - 1)),
                                          own_messages[name], value)
                        for name, value in received.items()}
        args = [self.params, dict(self.node_state), received]
        if getattr(plan.combiner, "needs_key", False):
            args.append(node_keys(self.seed, "combine",
                                  torch.arange(self.first_node, self.last_node,
                                               device=self.device), self.round, self._plan_index))
        self._per_node(plan.combiner.combine, None, args, (0,) * len(args),
                       lambda where, updates: self._write(updates, where))
        self._count_links(plan.routes or mixing, plan.encoder.nbytes(self.spec.dim))

    # ------------------------------------------------------------ a server

    def _server_step(self, plan: ServerStep) -> None:
        lo, hi = self.first_node, self.last_node
        uploaders = plan.weights > 0
        receivers = uploaders if plan.receivers is None else plan.receivers
        rows = torch.nonzero(uploaders[lo:hi]).flatten()
        payload = self._encode(plan.encoder, rows) if len(rows) else None
        m = int(uploaders.sum())
        if self.malicious is not None and payload is not None:
            payload = self._attack_at_server(payload, rows + lo)
        server = self.algorithm.server or ServerAverageRule()
        if getattr(server, "needs_uploads", False):
            aggregate = self._uploads(plan, payload, uploaders)
        elif plan.aggregator is None:
            weights = plan.weights.to(self.params.dtype)
            weights = weights / weights.sum()
            local = weights[lo:hi][rows]
            names = payload.keys() if payload is not None else self._payload_names(plan.encoder)
            aggregate = {}
            for name in names:
                part = (local @ payload[name] if payload is not None
                        else torch.zeros(self.spec.dim, device=self.device))
                aggregate[name] = self._sum_over_processes(part)
        else:
            aggregate = self._robust_server(plan.aggregator, payload, m)
        if not self.server_state:
            self.server_state = server.init(self._initial_row())
        ctx = replace(self.context(self._round_total), uploaders=m)
        broadcast, self.server_state = server.update(self.server_state, aggregate, ctx)
        personal = False
        for name, value in broadcast.items():
            target = self._target(name, "the server broadcast")
            if value.dim() == 2 and value.shape[0] == self.num_nodes:
                # one row per node: each receiver downloads its own (a cluster's model)
                target.copy_(value[lo:hi])
                personal = True
            else:
                target.copy_(value.expand_as(target))
        if "params" in broadcast and not personal:
            self._mark_identical()
        down = sum(4 * (v[0].numel() if v.dim() == 2 and v.shape[0] == self.num_nodes
                        else v.numel()) for v in broadcast.values())
        self._count_star(uploaders, plan.encoder.nbytes(self.spec.dim), receivers, down,
                         plan.hosts)

    def _uploads(self, plan: ServerStep, payload: dict[str, Tensor] | None, uploaders: Tensor
                 ) -> dict[str, Tensor]:
        """What a server rule with ``needs_uploads`` gets: every upload, ``[m, ...]`` per
        payload name in the order of ``"clients"`` (the uploaders' ids), and their ``"weights"``
        (the plan's, unnormalized)."""
        if plan.aggregator is not None:
            raise ValueError(
                f"{type(self.algorithm.server).__name__} reads every upload itself "
                "(needs_uploads), so its plan must not also name an aggregator"
            )
        clients = torch.nonzero(uploaders).flatten()
        result = {name: self._all_rows(stack, "a server that reads every upload")
                  for name, stack in (payload or {}).items()}
        result["clients"] = clients
        result["weights"] = plan.weights[clients].to(self.params.dtype)
        return result

    def _sum_over_processes(self, part: Tensor) -> Tensor:
        return part

    def _payload_names(self, encoder: Any) -> list[str]:
        probe = {k: v[:1] for k, v in self.node_state.items()}
        keys = torch.zeros(1, dtype=torch.int64, device=self.device)
        payload, _ = vmap(encoder.encode)(self.params[:1], probe, keys)
        return list(payload)


def _rows_of(value: Any, where: Any) -> Any:
    if isinstance(value, dict):
        return {k: v[where] for k, v in value.items()}
    return value[where]


__all__ = ["Communication"]
