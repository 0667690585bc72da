"""Non-linear communication: robust aggregation over each neighbourhood or a server's uploads,
and what malicious nodes send instead of their honest messages.

An aggregator is a per-receiver function the engine vmaps over blocks of receivers (see
``murmura.algorithms.plans.Aggregator``). Beyond ``(own, received, mask)`` it may ask for the
receiver's mixing weights of those rows (``needs_weights``: ClippedGossip's weighted clipping),
a key (``needs_key``: a random bucketing) and the round number (``needs_round``), passed in
that order. A stateful aggregator (one that declares ``node_state``) then gets the global ids of
the rows it aggregates (its own first) and its node state, and returns ``(result, updates)``:
SybilWall keeps one update history per peer. An attack replaces a
malicious node's message with one function of the honest messages it sees; a ``per_target``
attack (dissensus, equivocation) sends a different message over each of its links, computed
from the receiving node's neighbourhood.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.func import vmap

from murmura.swarm.random import hash_keys, node_keys, uniform


def _rows_of(value: Any, where: Any) -> Any:
    if isinstance(value, dict):
        return {k: v[where] for k, v in value.items()}
    return value[where]


Tensor = torch.Tensor


def per_attacker(attack: Any, in_dims: tuple, *args: Any) -> Tensor:
    """``attack`` over a batch of attackers (or links): vmapped, or one call each for an attack
    that is not ``vectorized`` (a line search against an unvectorized defence)."""
    if getattr(attack, "vectorized", True):
        return vmap(attack, in_dims=in_dims)(*args)
    count = next(a.shape[0] for a, d in zip(args, in_dims) if d == 0)
    return torch.stack([attack(*(a[i] if d == 0 else a for a, d in zip(args, in_dims)))
                        for i in range(count)])


class NonLinearCommunication:
    """The robust-aggregation and attack parts of :class:`~murmura.swarm.communication.
    Communication`."""

    # ------------------------------------------------------------ neighbourhoods

    def _neighbourhoods(self, mixing: Any) -> tuple[Tensor, Tensor]:
        """Each local node's in-neighbours (other nodes it receives from), padded: global ids
        ``[local, k]`` and a 0/1 mask, from the matrix's nonzeros (cached per matrix)."""
        return self._neighbour_table(mixing)[:2]

    def _neighbour_weights(self, mixing: Any) -> Tensor:
        """``[local, k + 1]``: each receiver's weight of itself, then of its in-neighbours in
        the order of :meth:`_neighbourhoods` (0 at padding)."""
        return self._neighbour_table(mixing)[2]

    def _neighbour_table(self, mixing: Any) -> tuple[Tensor, Tensor, Tensor]:
        cached = self._neighbour_cache.get(id(mixing))
        if cached is not None and cached[0] is mixing:
            return cached[1:]
        csr = mixing.matrix.to_sparse_csr()
        crow, col = csr.crow_indices().cpu(), csr.col_indices().cpu()
        values = csr.values().cpu()
        lo, hi = self.first_node, self.last_node
        rows = torch.repeat_interleave(torch.arange(hi - lo), crow[lo + 1 : hi + 1] - crow[lo:hi])
        cols = col[crow[lo] : crow[hi]]
        vals = values[crow[lo] : crow[hi]].to(torch.float32)
        selfish = cols == rows + lo
        own_weight = torch.zeros(hi - lo)
        own_weight[rows[selfish]] = vals[selfish]
        others = ~selfish
        rows, cols, vals = rows[others], cols[others], vals[others]
        degree = torch.bincount(rows, minlength=hi - lo)
        k = int(degree.max()) if len(degree) else 0
        position = torch.arange(len(rows)) - (torch.cumsum(degree, 0) - degree)[rows]
        index = torch.zeros(hi - lo, k, dtype=torch.int64)
        mask = torch.zeros(hi - lo, k)
        weights = torch.zeros(hi - lo, k + 1)
        index[rows, position] = cols
        mask[rows, position] = 1.0
        weights[:, 0] = own_weight
        weights[rows, position + 1] = vals
        table = (index.to(self.device), mask.to(self.device), weights.to(self.device))
        if len(self._neighbour_cache) > 4:  # time-varying graphs: a new matrix every round
            self._neighbour_cache.clear()
        self._neighbour_cache[id(mixing)] = (mixing, *table)
        return table

    # ------------------------------------------------------------ aggregation on a graph

    def _aggregator_extras(self, aggregator: Any, mixing: Any, receivers: Tensor
                           ) -> list[Tensor]:
        """The optional arguments an aggregator declares, per local receiver: its weights of the
        rows it aggregates, then its key for this message."""
        extras = []
        if getattr(aggregator, "needs_weights", False):
            extras.append(self._neighbour_weights(mixing))
        if getattr(aggregator, "needs_key", False):
            extras.append(node_keys(self.seed, "aggregate", receivers, self.round,
                                    self._plan_index))
        if getattr(aggregator, "needs_round", False):
            extras.append(torch.full((len(receivers),), self.round, device=self.device))
        return extras

    def _aggregator_state(self, aggregator: Any, index: Tensor, payload: dict) -> dict | None:
        """A stateful aggregator's inputs beyond the messages: the ids of the rows it gets (own
        first) and its node state, or ``None`` for a stateless rule."""
        names = list(getattr(aggregator, "node_state", None) or {})
        if not names:
            return None
        if not getattr(aggregator, "joint", False) and len(payload) > 1:
            raise ValueError(
                f"{type(aggregator).__name__} keeps node state, so it must read every payload "
                "name at once (joint = True) when an encoder sends more than one")
        missing = [name for name in names if name not in self.node_state]
        if missing:
            raise ValueError(
                f"{type(aggregator).__name__} keeps node state {missing}, which the algorithm's "
                "communication rule does not declare: its node_state must include the "
                "aggregator's")
        own_ids = torch.arange(self.first_node, self.last_node, device=self.device)
        return {"ids": torch.cat([own_ids.unsqueeze(1), index], dim=1),
                "state": {name: self.node_state[name] for name in names}}

    def _aggregate_on_graph(self, aggregator: Any, payload: dict[str, Tensor], mixing: Any,
                            links: dict[str, tuple[Tensor, Tensor, Tensor]] | None = None
                            ) -> dict[str, Tensor]:
        """``r_i = f(m_i, [m_i, m_j for j in N_in(i)], mask[, weights][, key])`` for every node
        and payload name (all names at once for a ``joint`` rule), in blocks of receivers so
        memory stays ``block x (k + 1) x d``; one receiver at a time for a rule that is not
        ``vectorized``. ``links``: per name, the messages a per-target attack sent over single
        links (local receiver row, position in its neighbourhood, message), which replace the
        sender's message in that receiver's stack only."""
        index, mask = self._neighbourhoods(mixing)
        own_mask = torch.ones(len(index), 1, device=self.device)
        full_mask = torch.cat([own_mask, mask], dim=1)
        receivers = torch.arange(self.first_node, self.last_node, device=self.device)
        extras = self._aggregator_extras(aggregator, mixing, receivers)
        stateful = self._aggregator_state(aggregator, index, payload)
        table_rows = 0 if stateful is None else sum(
            v[0].numel() // max(1, self.spec.dim) for v in stateful["state"].values())
        joint = getattr(aggregator, "joint", False)
        groups = [list(payload)] if joint else [[name] for name in payload]
        result: dict[str, Tensor] = {}
        for names in groups:
            everyone = {name: self._all_rows(payload[name], "a non-linear aggregation on a graph")
                        for name in names}
            out: dict[str, Tensor] = {}
            block = (1 if not getattr(aggregator, "vectorized", True)
                     else self._comm_block(len(names) * (index.shape[1] + 3) + 2 * table_rows))
            for start in range(0, len(index), block):
                stop = min(start + block, len(index))
                own = {name: payload[name][start:stop] for name in names}
                stack = {name: torch.cat([own[name].unsqueeze(1),
                                          everyone[name][index[start:stop]]], dim=1)
                         for name in names}
                for name in names:
                    if links and name in links:
                        self._insert_links(stack[name], links[name], start, stop)
                part = [e[start:stop] for e in extras]
                if stateful is not None:
                    part += [stateful["ids"][start:stop],
                             {k: v[start:stop] for k, v in stateful["state"].items()}]
                if block == 1:
                    values = self._aggregate_one(aggregator, start, own, stack,
                                                 full_mask[start], joint,
                                                 [_rows_of(p, 0) for p in part],
                                                 stateful is not None)
                elif joint:
                    values = vmap(aggregator)(own, stack, full_mask[start:stop], *part)
                else:
                    values = vmap(aggregator)(own[names[0]], stack[names[0]],
                                              full_mask[start:stop], *part)
                    values = ({names[0]: values[0]}, values[1]) if stateful else {
                        names[0]: values}
                if stateful is not None:
                    values, updates = values
                    self._write_aggregator_state(updates, slice(start, stop))
                for name, value in values.items():  # a joint rule may return fewer names
                    if name not in out:
                        out[name] = value.new_empty(len(index), *value.shape[1:])
                    out[name][start:stop] = value
            result.update(out)
        return result

    @staticmethod
    def _insert_links(stack: Tensor, links: tuple[Tensor, Tensor, Tensor], start: int,
                      stop: int) -> None:
        rows, positions, messages = links
        inside = (rows >= start) & (rows < stop)
        stack[rows[inside] - start, positions[inside] + 1] = messages[inside]

    def _write_aggregator_state(self, updates: dict[str, Tensor], where: slice) -> None:
        for name, value in updates.items():
            if name not in self.node_state:
                raise KeyError(f"an aggregator returned an update for {name!r}, which it does "
                               f"not declare in its node_state ({sorted(self.node_state)})")
            self.node_state[name][where] = value

    def _aggregate_one(self, aggregator: Any, row: int, own: dict, stack: dict, mask: Tensor,
                       joint: bool, extras: list | None = None, stateful: bool = False
                       ) -> Any:
        """A rule that is not vectorized, for one receiver (local row ``row``), with its own
        samples when it asks for them (and, for a stateful rule, its state updates)."""
        kwargs: dict[str, Any] = {}
        wanted = int(getattr(aggregator, "needs_data", 0) or 0)
        if wanted:
            kwargs["batch"] = self._own_samples(row + self.first_node, wanted)
        extras = extras or []
        if joint:
            values = aggregator({k: v[0] for k, v in own.items()},
                                {k: v[0] for k, v in stack.items()}, mask, *extras, **kwargs)
        else:
            name = next(iter(own))
            values = aggregator(own[name][0], stack[name][0], mask, *extras, **kwargs)
        updates = None
        if stateful:
            values, updates = values
            updates = {k: v.unsqueeze(0) for k, v in updates.items()}
        values = ({k: v.unsqueeze(0) for k, v in values.items()} if joint
                  else {next(iter(own)): values.unsqueeze(0)})
        return (values, updates) if stateful else values

    def _own_samples(self, node: int, count: int) -> dict[str, Tensor]:
        """Up to ``count`` of ``node``'s training samples, a random subset keyed by (seed, node,
        round) without replacement, with the labels the node trains on (a label-flipping
        attacker's flipped ones)."""
        size = int(self.data.sizes[node])
        table = self.data.index_table[node, :size]
        keys = uniform(self.seed, "own-samples", torch.arange(size, device=self.device),
                       node, self.round)
        chosen = table[torch.argsort(keys)[: min(count, size)]]
        dataset = self.data.dataset
        y = dataset.train_y[chosen]
        if self._flipped is not None and bool(self._flipped[node]):
            y = self._labels(dataset.train_y, chosen, torch.tensor([node], device=self.device))
        return {"x": dataset.train_x[chosen], "y": y}

    # ------------------------------------------------------------ attacks on a graph

    def _attack_on_graph(self, payload: dict[str, Tensor], mixing: Any) -> dict[str, Tensor]:
        """Malicious nodes' messages replaced by the attack, which sees its honest
        in-neighbours' messages."""
        lo, hi = self.first_node, self.last_node
        bad = torch.nonzero(self.malicious[lo:hi]).flatten()
        if len(bad) == 0 or getattr(self.adversary.attack, "flips_labels", False):
            return self._clone_sybils(payload, bad)  # a data attack: they send what they trained
        index, mask = self._neighbourhoods(mixing)
        honest = (~self.malicious)[index[bad]].to(mask.dtype) * mask[bad]
        keys = node_keys(self.seed, "attack", bad + lo, self.round, self._plan_index)
        attacked = {}
        for name, message in payload.items():
            everyone = self._all_rows(message, "an attack on a graph")
            replaced = message.clone()
            replaced[bad] = per_attacker(self.adversary.attack, (0, 0, 0, 0), message[bad],
                                         everyone[index[bad]], honest, keys)
            attacked[name] = replaced
        return self._clone_sybils(attacked, bad)

    def _clone_sybils(self, payload: dict[str, Tensor], bad: Tensor) -> dict[str, Tensor]:
        """With ``Adversary(sybils=True)`` every malicious node is an identity of one attacker
        and sends the message of the first (lowest id): each local malicious row gets it."""
        if not getattr(self.adversary, "sybils", False):
            return payload
        leader = int(torch.nonzero(self.malicious)[0])
        cloned = {}
        for name, message in payload.items():
            everyone = self._all_rows(message, "Sybil identities")
            copy = message.clone()
            copy[bad] = everyone[leader]
            cloned[name] = copy
        return cloned

    def _targeted_links(self, payload: dict[str, Tensor], mixing: Any
                        ) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
        """A ``per_target`` attack's message over every link from a malicious node to an honest
        receiver: ``attack(own, target, honest[k + 1, d], weights[k + 1], byzantine_weight,
        mask[k + 1], key)``, where ``honest`` is the receiver's own message then its honest
        in-neighbours' (masked), ``weights`` the receiver's W of those rows and
        ``byzantine_weight`` its total W of malicious in-neighbours. Returns, per payload name,
        (local receiver rows, neighbourhood positions, messages)."""
        index, mask = self._neighbourhoods(mixing)
        weights = self._neighbour_weights(mixing)
        lo, hi = self.first_node, self.last_node
        receiver_bad = self.malicious[lo:hi]
        sender_bad = self.malicious[index] & (mask > 0) & ~receiver_bad.unsqueeze(1)
        rows, positions = torch.nonzero(sender_bad, as_tuple=True)
        if len(rows) == 0:
            return {}
        senders = index[rows, positions]
        honest_rows = torch.cat([torch.ones_like(mask[:, :1]),
                                 mask * (~self.malicious[index]).to(mask.dtype)], dim=1)
        byzantine_weight = (weights[:, 1:] * sender_bad.to(weights.dtype)).sum(1)
        keys = hash_keys(node_keys(self.seed, "attack-link", senders, self.round,
                                   self._plan_index), rows + lo)
        links = {}
        for name, message in payload.items():
            everyone = self._all_rows(message, "an attack on a graph")
            stacks = torch.cat([message[rows].unsqueeze(1), everyone[index[rows]]], dim=1)
            sent = per_attacker(
                self.adversary.attack, (0,) * 7, everyone[senders], message[rows], stacks,
                weights[rows] * honest_rows[rows], byzantine_weight[rows], honest_rows[rows],
                keys)
            links[name] = (rows, positions, sent)
        return links

    def _mix_with_links(self, mixing: Any, payload: dict[str, Tensor],
                        links: dict[str, tuple[Tensor, Tensor, Tensor]]) -> dict[str, Tensor]:
        """The linear exchange when malicious senders' messages differ per link: the honest
        messages mixed, plus ``W[i, j] m_ji`` over every malicious link."""
        weights = self._neighbour_weights(mixing)
        lo, hi = self.first_node, self.last_node
        received = {}
        for name, message in payload.items():
            silent = message.clone()
            silent[self.malicious[lo:hi]] = 0.0
            received[name] = torch.empty_like(message)
            self._mix_rows(mixing, silent, received[name])
            if name in links:
                rows, positions, sent = links[name]
                received[name].index_add_(0, rows, weights[rows, positions + 1, None] * sent)
        return received

    # ------------------------------------------------------------ a server

    def _robust_server(self, aggregator: Any, payload: dict[str, Tensor] | None, m: int
                       ) -> dict[str, Tensor]:
        """The server's non-linear aggregate of the ``m`` uploads (with its model as ``own``)."""
        if getattr(aggregator, "node_state", None):
            raise ValueError(
                f"{type(aggregator).__name__} keeps per-node state (each node's records of its "
                "peers) and runs on a graph, not at a server: use a decentralized algorithm")
        own = self.server_state.get("params") if self.server_state else None
        if own is None:
            own = self.params[0]
        result = {}
        for name, stack in (payload or {}).items():
            everyone = self._all_rows(stack, "a robust aggregation at a server")
            mask = torch.ones(len(everyone), device=self.device)
            extras = []
            if getattr(aggregator, "needs_weights", False):
                extras.append(mask / len(everyone))
            if getattr(aggregator, "needs_key", False):
                extras.append(node_keys(self.seed, "aggregate",
                                        torch.tensor([self.num_nodes], device=self.device),
                                        self.round, self._plan_index)[0])
            result[name] = aggregator(own if name == "params" else torch.zeros_like(own),
                                      everyone, mask, *extras)
        return result

    def _attack_at_server(self, payload: dict[str, Tensor], nodes: Tensor) -> dict[str, Tensor]:
        """Malicious uploaders' messages replaced by the attack, which sees every honest
        upload this round (an omniscient attacker). A ``per_target`` attack targets the
        server: its model is the target, the honest uploads the neighbourhood, equally
        weighted."""
        bad_mask = self.malicious[nodes]
        attack = self.adversary.attack
        bad = torch.nonzero(bad_mask).flatten()
        if not bool(bad_mask.any()) or getattr(attack, "flips_labels", False):
            return self._sybil_uploads(payload, bad)
        keys = node_keys(self.seed, "attack", nodes[bad], self.round, self._plan_index)
        attacked = {}
        for name, stack in payload.items():
            everyone = self._all_rows(stack, "an attack at a server")
            honest = everyone[~bad_mask]
            mask = torch.ones(len(honest), device=self.device)
            replaced = stack.clone()
            if getattr(attack, "per_target", False):
                target = (self.server_state or {}).get(name, stack.new_zeros(stack.shape[1]))
                share = torch.full_like(mask, 1.0 / len(everyone))
                replaced[bad] = per_attacker(attack, (0, None, None, None, None, None, 0),
                                             stack[bad], target, honest, share,
                                             share[0] * len(bad), mask, keys)
            else:
                replaced[bad] = per_attacker(attack, (0, None, None, 0), stack[bad], honest,
                                             mask, keys)
            attacked[name] = replaced
        return self._sybil_uploads(attacked, bad)

    def _sybil_uploads(self, payload: dict[str, Tensor], bad: Tensor) -> dict[str, Tensor]:
        """At a server, Sybil identities upload the first malicious uploader's message."""
        if not getattr(self.adversary, "sybils", False) or len(bad) == 0:
            return payload
        cloned = {}
        for name, stack in payload.items():
            copy = stack.clone()
            copy[bad] = stack[bad[0]]
            cloned[name] = copy
        return cloned


__all__ = ["NonLinearCommunication"]
