"""MoDeST (de Vos et al., 2023) on the virtual clock: hash-ordered samples, pings that find who
is online, aggregators that wait for enough models or time out.

The round rule (:class:`murmura.algorithms.modest.ModestSampling`) decides who takes part in a
round; here the same protocol runs against simulated time and an availability model
(``specs/decentralized.md`` section 2). Round ``k``'s order of the swarm is the rule's own
keyed hash order (:meth:`~murmura.algorithms.modest.ModestSampling.order`), and one round is:

1. **Train.** Each node of the sample ``S_k`` got an aggregate (a download: latency plus the
   model's bytes over the links; round 0 starts from the initial model, which every node
   holds, with no download). It takes its local steps (the compute model, keyed by its own
   task number): all of a round's trainers are one call of the simulation's own local stage
   (``sim.train``, vmapped, each keyed by its task number), as in
   :class:`~murmura.clock.federated.ClockedFederation`. A trainer must stay online from the
   start of its download to the end of each upload: one that leaves mid-task loses its work
   (the availability model's interval checks), so its model is never aggregated.
2. **Find the aggregators.** Each trainer pings round ``k + 1``'s order front to back until
   ``a`` nodes answer: ``a`` pings are in flight at once and one that times out is replaced by
   the next node of the order (the code's ``PingPeersRequestCache``). An online node answers
   after a round trip (two ping transfers over the links; ``ping_rtt`` seconds without links),
   an offline one costs ``ping_timeout``; a node asked about itself answers at once. So the
   nodes found are exactly the first ``a`` of the order online when pinged, the rule's
   ``A_{k+1}`` filtered by availability, and the time it takes is that of the slowest lane.
3. **Upload** the trained model to each aggregator found (in parallel, each transfer timed by
   the links; a node's uplink is not shared, as in ``ClockedFederation``; to itself: free).
4. **Aggregate.** An aggregator starts its timer at the first model it receives. It averages,
   unweighted, the first ``floor(sf s)`` models that arrive (in arrival order) as soon as that
   many are in; otherwise, at ``aggregation_timeout`` after the first, it averages what it has
   if that is at least ``min_models``, and else drops the round. It must stay online from its
   first arrival to the end of its sends, or what it gathered is lost. It then pings round
   ``k + 1``'s order for ``s`` nodes (``S_{k+1}``, itself among them when it is in the head)
   and sends the average to each: round ``k + 1``'s trainers are the nodes that receive a model
   (one that gets several, from several aggregators, trains from the first to arrive). A node
   still busy with its round-``k`` task trains round ``k + 1`` when that task is over (the code
   cancels the training instead; the two differ only in a straggler's useless upload).
   Models arriving after their aggregator aggregated (or dropped) are logged with staleness 1
   and never used.
5. **A dropped round** (no aggregator averaged anything, or every send of the average failed)
   is restarted at ``R = max(round start + aggregation_timeout, the round's last event)``,
   where the round start is the earliest model arrival of its trainers: the first node of
   round ``k``'s order online at ``R`` (or at the next time any node is) pings that order for
   ``s`` nodes and sends them the model round ``k`` started from, as if it held it (every
   node holds the last aggregate, as the round rule's rows do; the code has no restart). A
   restart none of whose sends lands is tried again ``aggregation_timeout`` after it ended.
   The restarted round draws fresh batches (new task numbers).

Bytes, on the simulation's ledgers (``sim.bytes_sent`` / ``sim.bytes_received``), as the round
rule counts them: every trainer's model to every aggregator it found and every aggregator's
average to every node of the next sample, nobody sending to itself (``2 a s`` model transfers
a round without churn), plus 64 B (:data:`~murmura.algorithms.modest.PING_BYTES`) for each ping
and each pong. Unlike the round rule, a ping from a node to itself is free, and an offline node
receives nothing (a ping to it is counted at its sender only), and the code's retries every
second are not counted. Bytes are entered at the simulated time they are sent or received, so
a record at time ``t`` holds what moved by ``t``.

The event log (``run.log``, :class:`~murmura.clock.log.EventLog`) holds ``download_arrival``
(a trainer gets an aggregate), ``task_start`` / ``task_finish`` (local steps; the finish's
duration is the compute time), ``upload_arrival`` (a model at an aggregator) and
``server_tick`` (an aggregator averages; ``version`` is the new model's, ``k + 1``); pings are
on the byte ledgers only. The federation's model at time ``t`` is the aggregate of the highest
round averaged by ``t`` (the earliest, of several aggregators'; one that reached no trainer does
not count): it is what a record evaluates, and ``run.model`` in a callback.

>>> from murmura.data import federate
>>> from murmura.swarm import Simulation
>>> sim = Simulation(federate("digits", num_nodes=8, seed=0), "logreg", "modest", seed=0,
...                  algorithm_kwargs={"sample_size": 3, "local_steps": 2})
>>> run = ClockedModest(sim, sample_size=3, ping_timeout=1.0, aggregation_timeout=4.0,
...                     availability={"name": "always", "fail_at": 5.0, "fail_nodes": [0, 1]})
>>> records = run.run(until=20.0, eval_every=10.0)
>>> [r["time"] for r in records], records[-1]["round"] > records[0]["round"] > 0
([10.0, 20.0], True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from murmura.algorithms.modest import PING_BYTES, ModestSampling
from murmura.clock.availability import make_availability
from murmura.clock.devices import make_compute
from murmura.clock.events import EventKind, NodeCounters
from murmura.clock.links import make_links
from murmura.clock.log import EventLog

Tensor = torch.Tensor
_INF = math.inf
_F64 = torch.float64


@dataclass
class _Trainers:
    """A round's trainers, as they received their models."""

    version: int  # the round k
    nodes: Tensor  # int64 [m]
    since: Tensor  # when each download started (a trainer must be online from then on)
    arrival: Tensor  # when each model arrived
    models: Tensor  # [m, d] the model each trains from
    source: Tensor  # int64 [m]: who sent it (the node itself: no download)
    base: Tensor  # [d] the model the round started from (a restart sends it again)


@dataclass
class _Search:
    """Pings of one or more pingers, front to back in one round's order."""

    found: Tensor  # int64 [m, count], -1 where fewer answered
    finish: Tensor  # float64 [m]: when each pinger knows its answer


class ClockedModest:
    """MoDeST's rounds on the clock (see the module docstring for the semantics).

    ``sim``: a :class:`~murmura.swarm.Simulation` (usually with the ``modest`` algorithm; its
    local stage trains). ``sample_size`` (s), ``aggregators`` (a), ``success_fraction`` (sf),
    ``min_models``: MoDeST's parameters. ``ping_timeout`` and ``aggregation_timeout``:
    simulated seconds (the code's 5 and 300; ``aggregation_timeout`` may be ``inf``: never time
    out). ``compute``, ``links``, ``availability``: the clock's models (``None``: one second per
    step, instant links, always online). ``ping_rtt``: a ping's round trip when ``links`` is
    ``None``."""

    def __init__(self, sim: Any, sample_size: int, aggregators: int = 1,
                 success_fraction: float = 1.0, ping_timeout: float = 5.0,
                 aggregation_timeout: float = 300.0, min_models: int = 3, compute: Any = None,
                 links: Any = None, availability: Any = None, ping_rtt: float = 0.01) -> None:
        n = sim.num_nodes
        for name, value, low, high in (("sample_size", sample_size, 1, n),
                                       ("aggregators", aggregators, 1, sample_size),
                                       ("min_models", min_models, 1, None)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low or (
                    high is not None and value > high):
                bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
                why = {"sample_size": f" (the swarm has {n} nodes)",
                       "aggregators": " (the aggregators are the head of the next sample, so "
                                      "at most sample_size)"}.get(name, "")
                raise ValueError(f"ClockedModest: {name} must be an integer {bound}{why}, got "
                                 f"{value!r}")
        if isinstance(success_fraction, bool) or not isinstance(success_fraction, (int, float)) \
                or not 0 < success_fraction <= 1:
            raise ValueError(f"ClockedModest: success_fraction must lie in (0, 1] (the share of "
                             f"the sample an aggregator waits for), got {success_fraction!r}")
        for name, value, inf_ok in (("ping_timeout", ping_timeout, False),
                                    ("aggregation_timeout", aggregation_timeout, True),
                                    ("ping_rtt", ping_rtt, False)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
                    or (math.isinf(value) and not inf_ok):
                raise ValueError(f"ClockedModest: {name} must be > 0 simulated seconds"
                                 f"{' (inf: never)' if inf_ok else ' and finite'}, got {value!r}")
        rule = getattr(getattr(sim, "algorithm", None), "communication", None)
        if isinstance(rule, ModestSampling):
            # The simulation's round rule would sample differently from this run: say so.
            for name, mine in (("sample_size", sample_size), ("aggregators", aggregators)):
                if getattr(rule, name) != mine:
                    raise ValueError(f"ClockedModest: {name}={mine} differs from the "
                                     f"simulation's modest rule ({getattr(rule, name)}); pass "
                                     f"the same value to both")
            if rule.offline_fraction:
                raise ValueError("ClockedModest: churn on the clock comes from availability; "
                                 "build the simulation with offline_fraction=0")
        seed = sim.seed
        self.sim = sim
        # The round rule's own order (and nothing else of it): the same permutation per round.
        self.rule = ModestSampling(sample_size, aggregators, float(success_fraction), min_models)
        self.sample_size, self.aggregators = sample_size, aggregators
        self.success_fraction, self.min_models = float(success_fraction), min_models
        self.threshold = max(1, math.floor(self.success_fraction * sample_size))
        self.ping_timeout, self.aggregation_timeout = float(ping_timeout), float(
            aggregation_timeout)
        self.ping_rtt = float(ping_rtt)
        self.compute = make_compute(compute or {"name": "constant", "seconds": 1.0}, seed=seed,
                                    num_nodes=n)
        self.links = make_links(links, seed=seed, num_nodes=n)
        self.instant = links is None
        self.availability = make_availability(availability, seed=seed, num_nodes=n)
        self.counters = NodeCounters(n)  # per-node transfer and ping counters (link jitter)
        self.tasks = torch.zeros(n, dtype=torch.int64)  # tasks each node has started
        self.busy_until = torch.zeros(n, dtype=_F64)  # when each node's trainer work ends
        self.log = EventLog()
        self.rounds: list[dict[str, Any]] = []  # one entry per attempt of a round
        self.records: list[dict[str, Any]] = []
        self.model = sim.params[0].clone()
        self.version = 0
        self._aggregates: list[tuple[float, int, int, Tensor]] = [(0.0, 0, -1, self.model)]
        self._events: list[dict[str, Tensor]] = []  # log rows not yet reached by the clock
        self._ledger: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []  # time, node, sent, got
        self._counts: list[tuple[float, str]] = []  # (time, "lost" | "dropped")
        self._totals = {"tasks": 0, "aggregations": 0, "lost_tasks": 0, "dropped_rounds": 0,
                        "late_models": 0}
        self._ran = False

    # ---------------------------------------------------------------- helpers

    def _steps(self, nodes: Tensor) -> Tensor:
        sampler = self.sim.sampler
        if sampler.steps is not None:
            return torch.full((len(nodes),), sampler.steps, dtype=torch.int64)
        per = sampler.samples_per_round(nodes.to(self.sim.device)).cpu()
        return torch.ceil(per / sampler.batch_size).to(torch.int64)

    def _alive(self, nodes: Tensor, t0: Tensor, t1: Tensor) -> Tensor:
        """Online on all of the closed ``[t0, t1]``: a node that acts at ``t1`` (sends, pings,
        aggregates) must still be there at that instant."""
        return (self.availability.online_throughout(nodes, t0, t1)
                & self.availability.online_at(nodes, t1))

    def _transfer(self, src: Tensor, dst: Tensor, nbytes: float) -> Tensor:
        if self.instant:
            return torch.zeros(src.shape, dtype=_F64)
        counter = self.counters.take("send", src)
        return self.links.transfer_time(src, dst, nbytes, counter)

    def _rtt(self, pingers: Tensor, target: Tensor) -> Tensor:
        if self.instant:
            return torch.full(pingers.shape, self.ping_rtt, dtype=_F64)
        counter = self.counters.take("ping", pingers)
        return (self.links.transfer_time(pingers, target, PING_BYTES, counter)
                + self.links.transfer_time(target, pingers, PING_BYTES, counter))

    def _event(self, times: Tensor, kind: EventKind, nodes: Tensor, version: int,
               nbytes: float = 0.0, duration: Tensor | None = None,
               staleness: Tensor | None = None) -> None:
        if not len(nodes):
            return
        m = len(nodes)
        self._events.append({
            "time": times.to(_F64), "kind": torch.full((m,), int(kind)), "node": nodes,
            "version": torch.full((m,), version), "nbytes": torch.full((m,), int(nbytes)),
            "duration": torch.zeros(m, dtype=_F64) if duration is None else duration.to(_F64),
            "staleness": torch.zeros(m, dtype=torch.int64) if staleness is None else staleness})

    def _bytes(self, times: Tensor, nodes: Tensor, sent: Tensor | float,
               got: Tensor | float) -> None:
        """Ledger entries, applied when the clock reaches ``times``."""
        if len(nodes):
            shape = nodes.shape
            self._ledger.append((times.to(_F64), nodes,
                                 torch.as_tensor(sent, dtype=_F64).expand(shape),
                                 torch.as_tensor(got, dtype=_F64).expand(shape)))

    # ---------------------------------------------------------------- pings

    def _search(self, pingers: Tensor, starts: Tensor, since: Tensor, round: int,
                count: int) -> _Search:
        """Each pinger pings round ``round``'s order front to back from ``starts`` until
        ``count`` nodes answer, ``count`` pings in flight at once (a timed-out one is replaced
        by the next node of the order). Vectorized over pingers, one step per position of the
        order. ``since``: from when each pinger has been online (its pings count only while
        it still is)."""
        m = len(pingers)
        order = self.rule.order(self.sim.seed, round, self.sim.num_nodes)
        free = starts.to(_F64).unsqueeze(1).repeat(1, count)  # when each lane is free; inf: done
        found = torch.full((m, count), -1, dtype=torch.int64)
        nfound = torch.zeros(m, dtype=torch.int64)
        finish = starts.to(_F64).clone()
        pings: list[tuple[Tensor, ...]] = []
        for v in order.tolist():
            active = torch.nonzero(nfound < count).flatten()
            if not len(active):
                break
            t, lane = free[active].min(1)
            who = pingers[active]
            target = torch.full_like(who, v)
            own = who == v  # asked about itself: answers at once, nothing sent
            back = torch.where(own, t, t + self._rtt(who, target))
            answered = own | self.availability.online_throughout(target, t, back)
            end = torch.where(answered, back, t + self.ping_timeout)
            free[active, lane] = torch.where(answered, _INF, end)
            hit = active[answered]
            found[hit, nfound[hit]] = v
            nfound[hit] += 1
            finish[active] = torch.maximum(finish[active], end)
            out = ~own
            pings.append((who[out], target[out], t[out], back[out], answered[out],
                          since[active][out]))
        self._count_pings(pings)
        return _Search(found, finish)

    def _count_pings(self, pings: list[tuple[Tensor, ...]]) -> None:
        if not pings:
            return
        who, target, t, back, answered, since = (torch.cat(c) for c in zip(*pings))
        if not len(who):
            return
        sent = self._alive(who, since, t)  # a node that left sends no more pings
        heard = sent & self.availability.online_at(target, t)
        pong = heard & answered
        self._bytes(t, who, sent.to(_F64) * PING_BYTES, 0.0)
        self._bytes(t, target, 0.0, heard.to(_F64) * PING_BYTES)
        self._bytes(back, target, pong.to(_F64) * PING_BYTES, 0.0)
        pong_back = pong & self._alive(who, since, back)
        self._bytes(back, who, 0.0, pong_back.to(_F64) * PING_BYTES)

    # ---------------------------------------------------------------- one round

    def _sends(self, src: Tensor, dst: Tensor, send: Tensor, since: Tensor
               ) -> tuple[Tensor, Tensor, Tensor]:
        """Model transfers ``src -> dst`` starting at ``send``: (arrival, delivered, seconds).
        The sender must have been online from ``since`` to the send and both ends during the
        transfer; a node's model to itself is free and instant."""
        nbytes = float(self.sim.message_bytes)
        own = src == dst
        seconds = torch.where(own, 0.0, self._transfer(src, dst, nbytes))
        arrive = send + seconds
        start = self._alive(src, since, send)
        ok = (start & self.availability.online_throughout(src, send, arrive)
              & self.availability.online_throughout(dst, send, arrive))
        self._bytes(send, src, (start & ~own).to(_F64) * nbytes, 0.0)
        self._bytes(arrive, dst, 0.0, (ok & ~own).to(_F64) * nbytes)
        return arrive, ok, seconds

    def _round(self, tr: _Trainers) -> tuple[_Trainers | None, float]:
        """Round ``tr.version`` from its trainers' arrivals to the next round's; returns the
        next round's trainers (``None``: the round is dropped) and the round's last event."""
        sim, k, a = self.sim, tr.version, self.aggregators
        nodes, since = tr.nodes, tr.since
        start = torch.maximum(tr.arrival, self.busy_until[nodes])
        counter = self.tasks[nodes].clone()
        self.tasks[nodes] += 1
        seconds = self.compute.task_time(nodes, self._steps(nodes), counter)
        trained = start + seconds
        began = self._alive(nodes, since, start)
        up = self.availability.online_throughout(nodes, since, trained)  # lost otherwise
        record: dict[str, Any] = {"round": k, "start": float(tr.arrival.min()),
                                  "trainers": nodes.tolist(), "finished": nodes[up].tolist(),
                                  "restart_at": None}
        self.rounds.append(record)
        fetched = tr.source != nodes
        self._event(tr.arrival[fetched], EventKind.DOWNLOAD_ARRIVAL, nodes[fetched], k,
                    sim.message_bytes, duration=(tr.arrival - since)[fetched])
        self._event(start[began], EventKind.TASK_START, nodes[began], k)
        lost = nodes[~up]
        if len(lost):
            gone = self.availability.next_offline(lost, since[~up])
            self._counts.extend((float(g), "lost") for g in gone.tolist())
        self.busy_until[nodes] = start
        live, at, since_l = nodes[up], trained[up], since[up]
        latest = float(tr.arrival.max())
        if len(live):
            # The simulation's local stage: the round's finishing trainers in one call, each
            # keyed by its own task number (a lost trainer's steps would be thrown away).
            rows = live.to(sim.device)
            sim.params[rows] = tr.models[up].to(sim.params.dtype)
            round_of = torch.zeros(sim.num_nodes, dtype=torch.int64, device=sim.device)
            round_of[rows] = counter[up].to(sim.device)
            sim.train(rows, round_of)
            models = sim.params[rows].clone()
            self._event(at, EventKind.TASK_FINISH, live, k, duration=seconds[up])
            latest = max(latest, float(at.max()))
            # Each trainer finds the first a online nodes of round k + 1's order and uploads.
            search = self._search(live, at, since_l, k + 1, a)
            pair = torch.arange(len(live)).repeat_interleave(a)
            dest = search.found.reshape(-1)
            pair, dest = pair[dest >= 0], dest[dest >= 0]
            send = search.finish[pair]
            arrive, ok, up_seconds = self._sends(live[pair], dest, send, since_l[pair])
            latest = max(latest, float(search.finish.max()))
            if len(arrive):
                latest = max(latest, float(arrive.max()))
            ends = torch.full((len(live),), -_INF, dtype=_F64)
            ends.scatter_reduce_(0, pair, arrive, "amax")
            self.busy_until[live] = torch.maximum(search.finish, ends)
        else:
            models = tr.models[:0]
            pair = dest = torch.empty(0, dtype=torch.int64)
            arrive = up_seconds = torch.empty(0, dtype=_F64)
            ok = torch.empty(0, dtype=torch.bool)
        nxt, latest = self._aggregate(k, live, models, pair[ok], dest[ok], arrive[ok],
                                      up_seconds[ok], latest, record)
        return nxt, latest

    def _aggregate(self, k: int, live: Tensor, models: Tensor, pair: Tensor, dest: Tensor,
                   arrive: Tensor, up_seconds: Tensor, latest: float, record: dict[str, Any]
                   ) -> tuple[_Trainers | None, float]:
        """Round ``k``'s aggregators (in order of their place in round ``k + 1``'s order)
        average what arrived and send it to the next sample."""
        n, s = self.sim.num_nodes, self.sample_size
        position = torch.argsort(self.rule.order(self.sim.seed, k + 1, n))
        record.update(aggregators=[], used={})
        deliveries: list[tuple[Tensor, ...]] = []
        averages: list[Tensor] = []
        for j in sorted(set(dest.tolist()), key=lambda v: int(position[v])):
            mine = torch.nonzero(dest == j).flatten()
            # arrival order, ties by sender id (the queue's total order)
            mine = mine[torch.argsort(live[pair[mine]], stable=True)]
            mine = mine[torch.argsort(arrive[mine], stable=True)]
            times = arrive[mine]
            first = float(times[0])
            deadline = first + self.aggregation_timeout
            used = torch.zeros(len(mine), dtype=torch.bool)
            if len(mine) >= self.threshold and float(times[self.threshold - 1]) <= deadline:
                when, enough = float(times[self.threshold - 1]), True  # floor(sf s) are in
                used[: self.threshold] = True
            else:  # the timeout: what arrived by then, if it is at least min_models
                used = times <= deadline
                when, enough = deadline, int(used.sum()) >= self.min_models
            jt = torch.tensor([j])
            alive = enough and math.isfinite(when) and bool(self._alive(
                jt, torch.tensor([first], dtype=_F64), torch.tensor([when], dtype=_F64))[0])
            stale = (~used | (not alive)).to(torch.int64)
            self._event(times, EventKind.UPLOAD_ARRIVAL, live[pair[mine]], k,
                        self.sim.message_bytes, duration=up_seconds[mine], staleness=stale)
            latest = max(latest, when if math.isfinite(when) else first)
            if not alive:
                continue
            average = models[pair[mine[used]]].mean(0)  # unweighted, as MoDeST's code
            index = len(averages)
            averages.append(average)
            record["aggregators"].append(j)
            record["used"][j] = live[pair[mine[used]]].tolist()
            self._event(torch.tensor([when]), EventKind.SERVER_TICK, jt, k + 1)
            search = self._search(jt, torch.tensor([when], dtype=_F64),
                                  torch.tensor([first], dtype=_F64), k + 1, s)
            receivers = search.found[0][search.found[0] >= 0]
            send = search.finish.expand(len(receivers))
            got, ok, _ = self._sends(jt.expand(len(receivers)), receivers, send,
                                     torch.full((len(receivers),), first, dtype=_F64))
            latest = max(latest, float(search.finish[0]))
            if len(got):
                latest = max(latest, float(got.max()))
            count = int(ok.sum())
            if count:  # an average nobody received is not the federation's model
                self._aggregates.append((when, k + 1, int(position[j]), average))
            deliveries.append((receivers[ok], got[ok], send[ok], torch.full((count,), int(
                position[j])), torch.full((count,), index), torch.full((count,), j)))
        record["aggregated"] = bool(averages)
        if not deliveries or not sum(len(d[0]) for d in deliveries):
            return None, latest
        r, got, send, pos, index, src = (torch.cat(c) for c in zip(*deliveries))
        # a node that hears from several aggregators trains from the first model to arrive
        order = torch.argsort(pos, stable=True)
        order = order[torch.argsort(got[order], stable=True)]
        seen: set[int] = set()
        keep = []
        for i in order.tolist():
            if int(r[i]) not in seen:
                seen.add(int(r[i]))
                keep.append(i)
        keep_t = torch.tensor(keep, dtype=torch.int64)
        keep_t = keep_t[torch.argsort(r[keep_t])]
        base = averages[int(index[order[0]])]
        return _Trainers(k + 1, r[keep_t], send[keep_t], got[keep_t],
                         torch.stack([averages[i] for i in index[keep_t].tolist()]),
                         src[keep_t], base), latest

    def _first(self, round: int, time: float, base: Tensor, restart: bool, until: float
               ) -> _Trainers | None:
        """Round ``round`` (re)started at ``time`` from ``base``: round 0's sample is the first
        ``s`` online nodes of its order, who all hold the initial model (no pings, no download,
        as the code starts); a restart's is found and sent by the first online node of the
        order (pings and downloads counted). A restart none of whose sends lands is tried
        again ``aggregation_timeout`` after it ended. ``None``: nothing starts before
        ``until`` (or ever)."""
        n, s = self.sim.num_nodes, self.sample_size
        everyone = torch.arange(n)
        order = self.rule.order(self.sim.seed, round, n)
        while time <= until:
            now = torch.full((n,), time, dtype=_F64)
            if not bool(self.availability.online_at(everyone, now).any()):
                time = float(self.availability.next_online(everyone, now).min())
                if not time <= until:
                    return None
            on = self.availability.online_at(order, torch.full((n,), time, dtype=_F64))
            if not restart:
                nodes = order[on][:s].sort().values
                at = torch.full((len(nodes),), time, dtype=_F64)
                return _Trainers(round, nodes, at, at.clone(), base.expand(len(nodes), -1),
                                 nodes, base)
            head = order[on][:1]
            at = torch.tensor([time], dtype=_F64)
            search = self._search(head, at, at, round, s)
            receivers = search.found[0][search.found[0] >= 0]
            send = search.finish.expand(len(receivers))
            got, ok, _ = self._sends(head.expand(len(receivers)), receivers, send,
                                     at.expand(len(receivers)))
            if bool(ok.any()):
                nodes, got, send = receivers[ok], got[ok], send[ok]
                keep = torch.argsort(nodes)
                return _Trainers(round, nodes[keep], send[keep], got[keep],
                                 base.expand(len(keep), -1), head.expand(len(keep)), base)
            time = max(float(search.finish[0]), float(got.max()) if len(got) else time
                       ) + self.aggregation_timeout
        return None

    # ---------------------------------------------------------------- the clock

    def _commit(self, time: float) -> None:
        """Apply the log rows, ledger entries and counts the clock has reached by ``time``."""
        if self._events:
            cols = {c: torch.cat([e[c] for e in self._events]) for c in self._events[0]}
            due = cols["time"] <= time
            if bool(due.any()):
                idx = torch.nonzero(due).flatten()
                # (time, kind, node): the queue's total order
                idx = idx[torch.argsort(cols["node"][idx], stable=True)]
                idx = idx[torch.argsort(cols["kind"][idx], stable=True)]
                idx = idx[torch.argsort(cols["time"][idx], stable=True)]
                kinds = cols["kind"][idx]
                self.log.record(cols["time"][idx], kinds, cols["node"][idx],
                                version=cols["version"][idx], staleness=cols["staleness"][idx],
                                nbytes=cols["nbytes"][idx], duration=cols["duration"][idx])
                self._totals["tasks"] += int((kinds == int(EventKind.TASK_FINISH)).sum())
                self._totals["aggregations"] += int((kinds == int(EventKind.SERVER_TICK)).sum())
                late = (kinds == int(EventKind.UPLOAD_ARRIVAL)) & (cols["staleness"][idx] > 0)
                self._totals["late_models"] += int(late.sum())
            rest = torch.nonzero(~due).flatten()
            self._events = [{c: v[rest] for c, v in cols.items()}] if len(rest) else []
        if self._ledger:
            t, node, sent, got = (torch.cat(c) for c in zip(*self._ledger))
            due = t <= time
            sim = self.sim
            rows = node[due].to(sim.device)
            sim.bytes_sent.index_add_(0, rows, sent[due].to(sim.bytes_sent))
            sim.bytes_received.index_add_(0, rows, got[due].to(sim.bytes_received))
            self._ledger = [(t[~due], node[~due], sent[~due], got[~due])] if bool(
                (~due).any()) else []
        keep = []
        for when, what in self._counts:
            if when <= time:
                self._totals["lost_tasks" if what == "lost" else "dropped_rounds"] += 1
            else:
                keep.append((when, what))
        self._counts = keep

    def _evaluate(self, time: float, callback: Any) -> None:
        self._commit(time)
        done = [x for x in self._aggregates if x[0] <= time]
        best = max(done, key=lambda x: (x[1], -x[0], -x[2]))
        # older rounds' aggregates are never the federation's model again
        self._aggregates = [x for x in self._aggregates if x[1] >= best[1]]
        self.version, self.model = best[1], best[3]
        sim = self.sim
        sim.server_state = {"params": self.model}  # evaluation reads the federation's model
        record = {"time": time, "round": self.version, **self._totals,
                  "bytes_sent_total": float(sim.bytes_sent.sum()),
                  "bytes_received_total": float(sim.bytes_received.sum()), **sim.evaluate()}
        if callback is not None:
            record.update(callback(self) or {})
        self.records.append(record)

    def run(self, until: float, eval_every: float, callback: Any = None
            ) -> list[dict[str, Any]]:
        """Run until simulated time ``until``, evaluating the federation's model every
        ``eval_every`` simulated seconds; returns the records (also ``self.records``).
        ``callback(run) -> dict`` adds to each record (``run.model`` is the model evaluated).
        Records: ``time``, ``round`` (the evaluated model's round), ``aggregations``,
        ``tasks`` (local tasks finished), ``lost_tasks``, ``dropped_rounds``, ``late_models``
        (uploads an aggregator did not use), bytes, and the simulation's evaluation."""
        for name, value in (("until", until), ("eval_every", eval_every)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    0 < value < _INF):
                raise ValueError(f"ClockedModest.run: {name} must be a positive finite number "
                                 f"of simulated seconds, got {value!r}")
        if self._ran:
            raise ValueError("ClockedModest.run runs once; build a new ClockedModest to run "
                             "again")
        self._ran = True
        evals = [eval_every * i for i in range(1, int(math.floor(until / eval_every + 1e-9)) + 1)]
        pending = list(evals)
        trainers = self._first(0, 0.0, self.model, restart=False, until=until)
        previous, still = -1.0, 0
        while trainers is not None and len(trainers.nodes):
            bound = float(trainers.arrival.min())
            if bound > until:
                break
            # Every aggregation still to come follows a training that starts after ``bound``.
            while pending and pending[0] < bound:
                self._evaluate(pending.pop(0), callback)
            still = still + 1 if bound <= previous else 0
            if still > 10_000:
                raise RuntimeError("ClockedModest: rounds take no simulated time (zero compute "
                                   "and instant transfers); give the steps or pings a duration")
            previous = bound
            nxt, latest = self._round(trainers)
            if nxt is None:  # dropped: restarted from the model the round started from
                restart = max(bound + self.aggregation_timeout, latest)
                self.rounds[-1]["restart_at"] = restart
                if not math.isfinite(restart):
                    break
                self._counts.append((restart, "dropped"))
                nxt = self._first(trainers.version, restart, trainers.base, restart=True,
                                  until=until)
            trainers = nxt
        for time in pending:
            self._evaluate(time, callback)
        return self.records


__all__ = ["ClockedModest"]
