"""Federated learning on the virtual clock: a simulation's clients run tasks at their own pace
(download, local steps, upload), and a clock mode (:mod:`murmura.clock.modes`) decides what the
server does with what arrives.

The clients' local training is the simulation's own local stage (its local rule and work, the
same vmapped code as a round), run for the clients whose tasks end in a time window, each keyed
by its own task number; only the communication is the clock's. Each task is one event: its
duration is ``download + steps x step time + upload`` (the compute model, and the links on the
bytes actually sent), and a client must stay online for all of it, or its work is lost and it
starts again when it is back.

The runner is the engine's stage for time, as ``Simulation.step`` is for rounds: it writes the
simulation's rows (a client's download) and byte ledgers; what it applies is pure (the mode's
``aggregate`` on tensors, the simulation's local rule). A record's ``updates_applied`` counts
the client updates the server received (FedBuff's dropped stale ones included).

>>> from murmura.data import federate
>>> from murmura.swarm import Simulation
>>> sim = Simulation(federate("digits", num_nodes=8, seed=0), "logreg", "fedavg", seed=0,
...                  algorithm_kwargs={"local_steps": 2})
>>> run = ClockedFederation(sim, {"name": "fedbuff", "K": 4},
...                         compute={"name": "lognormal", "mu": -2.0, "sigma": 0.5})
>>> records = run.run(until=3.0, eval_every=1.0)
>>> [r["time"] for r in records], records[-1]["version"] > 0
([1.0, 2.0, 3.0], True)
"""

from __future__ import annotations

import math
from typing import Any

import torch

from murmura.clock.availability import make_availability
from murmura.clock.devices import make_compute
from murmura.clock.events import EventKind, EventQueue
from murmura.clock.links import make_links
from murmura.clock.log import EventLog
from murmura.clock.modes import Arrivals, make_mode
from murmura.swarm.random import uniform

Tensor = torch.Tensor
SERVER = -1


class ClockedFederation:
    """Runs ``sim``'s clients against a server on the clock (see the module docstring).

    ``mode``: ``fedasync``, ``fedbuff``, ``fedfix`` or ``sync`` (or a dict with parameters, or a
    rule). ``compute``, ``links``, ``availability``: the clock's models (names, dicts or
    objects; ``None``: one second per step, instant links, always online). ``concurrency``: how
    many clients train at once (FedBuff's maximum concurrency; ``None``: every online client);
    new ones are drawn uniformly among the idle online clients. ``window``: arrivals within this
    many simulated seconds are processed as one vectorized step (0: exact event order).
    ``weighting``: ``p_i`` by ``"samples"`` (data share) or ``"uniform"``. ``train_loss``: each
    evaluation also scores the server's model on the whole training set."""

    def __init__(self, sim: Any, mode: Any, compute: Any = None, links: Any = None,
                 availability: Any = None, concurrency: int | None = None,
                 window: float = 0.0, weighting: str = "samples", train_loss: bool = False
                 ) -> None:
        n = sim.num_nodes
        self.sim, self.mode = sim, make_mode(mode)
        seed = sim.seed
        self.compute = make_compute(compute or {"name": "constant", "seconds": 1.0}, seed=seed,
                                    num_nodes=n)
        self.links = make_links(links, seed=seed, num_nodes=n)
        self.instant = links is None  # no transfer times to draw
        self.availability = make_availability(availability, seed=seed, num_nodes=n)
        if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(
                concurrency, int) or not 1 <= concurrency <= n):
            raise ValueError(f"concurrency must be an integer in [1, {n}] or none, got "
                             f"{concurrency!r}")
        if isinstance(window, bool) or not isinstance(window, (int, float)) or window < 0:
            raise ValueError(f"window must be >= 0 simulated seconds, got {window!r}")
        if weighting not in ("samples", "uniform"):
            raise ValueError(f"weighting must be 'samples' or 'uniform', got {weighting!r}")
        self.concurrency, self.window = concurrency, float(window)
        self.train_loss = bool(train_loss)
        sizes = sim.data.sizes.to(torch.float64)
        self.p = sizes / sizes.sum() if weighting == "samples" else torch.full((n,), 1.0 / n,
                                                                             dtype=torch.float64)
        if hasattr(self.mode, "bind"):  # its d_i read the clients' expected task times
            everyone = torch.arange(n)
            nbytes = float(sim.message_bytes)
            expected = (self.compute.task_time(everyone, self._steps(everyone))
                        + self.links.transfer_time(SERVER, everyone, nbytes)
                        + self.links.transfer_time(everyone, SERVER, nbytes))
            self.mode = self.mode.bind(expected)
        self.state: dict[str, Any] = {"params": sim.params[0].clone(), "version": 0}
        self.queue, self.log = EventQueue(), EventLog()
        self.tasks = torch.zeros(n, dtype=torch.int64)  # tasks each client has started
        self.start_version = torch.zeros(n, dtype=torch.int64)
        self.start_time = torch.zeros(n, dtype=torch.float64)
        self.sent = torch.zeros_like(sim.params)  # the model each client started from
        self.busy = torch.zeros(n, dtype=torch.bool)
        self.pending: list[Arrivals] = []  # returned, waiting for the server's tick
        self.updates_applied = 0
        self._draws = 0

    # ---------------------------------------------------------------- tasks

    def _steps(self, nodes: Tensor) -> Tensor:
        sampler = self.sim.sampler
        if sampler.steps is not None:
            return torch.full((len(nodes),), sampler.steps, dtype=torch.int64)
        per = sampler.samples_per_round(nodes.to(self.sim.device)).cpu()
        return torch.ceil(per / sampler.batch_size).to(torch.int64)

    def _start(self, nodes: Tensor, times: Tensor) -> None:
        """Clients download the current model at ``times`` and start a task; one that will go
        offline before it ends loses it and is scheduled to start again when it is back."""
        if not len(nodes):
            return
        sim, bytes_ = self.sim, float(self.sim.message_bytes)
        counter = self.tasks[nodes]
        finish = times + self.compute.task_time(nodes, self._steps(nodes), counter)
        if not self.instant:
            finish = (finish + self.links.transfer_time(SERVER, nodes, bytes_, counter)
                      + self.links.transfer_time(nodes, SERVER, bytes_, counter))
        online = self.availability.online_at(nodes, times)
        whole = self.availability.online_throughout(nodes, times, finish) & online
        rows = nodes.to(sim.device)
        sim.params[rows] = self.state["params"]
        self.sent[rows] = self.state["params"]
        self.start_version[nodes] = self.state["version"]
        self.start_time[nodes] = times
        self.tasks[nodes] += 1
        self.busy[nodes] = True
        sim.bytes_received[rows] += bytes_ * online.to(torch.float64).to(sim.device)
        sim.server_bytes_sent += bytes_ * float(online.sum())
        self.log.record(times[online], EventKind.TASK_START, nodes[online],
                        version=self.state["version"], nbytes=bytes_)
        self.queue.push_many(finish[whole], EventKind.TASK_FINISH, nodes[whole],
                             {"counter": counter[whole]})
        lost = nodes[~whole]
        if len(lost):  # back online after its (next) offline spell, it tries again
            away = torch.where(online[~whole], self.availability.next_offline(lost, times[~whole]),
                               times[~whole])
            again = self.availability.next_online(lost, away)
            known = torch.isfinite(again)
            self.queue.push_many(again[known], EventKind.TASK_START, lost[known])
            self.busy[lost[~known]] = False

    def _finish(self, nodes: Tensor, times: Tensor, counters: Tensor) -> Arrivals:
        """Train the clients whose tasks end now, from the models they started from."""
        sim, rows = self.sim, nodes.to(self.sim.device)
        round_of = torch.zeros(sim.num_nodes, dtype=torch.int64, device=sim.device)
        round_of[rows] = counters.to(sim.device)
        sim.train(rows, round_of)
        models = sim.params[rows].clone()
        bytes_ = float(sim.message_bytes)
        sim.bytes_sent[rows] += bytes_
        return Arrivals(nodes, models, models - self.sent[rows], self.start_version[nodes],
                        times - self.start_time[nodes], self.p[nodes])

    def _fill(self, time: float) -> None:
        """Keep ``concurrency`` clients training: draw idle online clients to start."""
        idle = torch.nonzero(~self.busy).flatten()
        if not len(idle):
            return
        idle = idle[self.availability.online_at(idle, torch.full((len(idle),), time,
                                                                  dtype=torch.float64))]
        room = len(idle) if self.concurrency is None else self.concurrency - int(self.busy.sum())
        if room <= 0 or not len(idle):
            return
        keys = uniform(self.sim.seed, "clock-select", idle, self._draws, dtype=torch.float64)
        self._draws += 1
        chosen = idle[torch.argsort(keys)[:room]].sort().values
        self._start(chosen, torch.full((len(chosen),), time, dtype=torch.float64))

    # ---------------------------------------------------------------- the server

    def _apply(self, arrivals: Arrivals, times: Tensor) -> None:
        version = self.state["version"]
        self.state, stale = self.mode.aggregate(self.state, arrivals)
        self.updates_applied += len(arrivals)
        self.log.record(times, EventKind.UPLOAD_ARRIVAL, arrivals.nodes,
                        version=version, staleness=stale, nbytes=self.sim.message_bytes,
                        duration=arrivals.task_seconds)

    def _round(self, time: float) -> float:
        """One synchronous round from ``time``; returns when it ends."""
        mode, online = self.mode, torch.nonzero(~self.busy).flatten()
        online = online[self.availability.online_at(online, torch.full(
            (len(online),), time, dtype=torch.float64))]
        if not len(online):
            later = self.availability.next_online(torch.arange(self.sim.num_nodes),
                                                  torch.full((self.sim.num_nodes,), time,
                                                             dtype=torch.float64))
            return float(later.min())
        k = len(online) if mode.clients is None else min(mode.clients, len(online))
        want = min(len(online), math.ceil(mode.over_selection * k))
        keys = uniform(self.sim.seed, "clock-select", online, self._draws, dtype=torch.float64)
        self._draws += 1
        chosen = online[torch.argsort(keys)[:want]].sort().values
        self._start(chosen, torch.full((want,), time, dtype=torch.float64))
        window = self.queue.pop_window(math.inf, until=time + mode.deadline + 1e-12)
        order = torch.argsort(window.times, stable=True)[:k]
        kept = window.take(order)
        end = float(kept.times.max()) if len(kept) == k else time + mode.deadline
        if len(kept):
            arrivals = self._finish(kept.nodes, kept.times, kept.column("counter",
                                                                        dtype=torch.int64))
            self._apply(arrivals, kept.times)
        self.queue = EventQueue()  # the late and the lost: their work is dropped
        self.queue.now = end
        self.busy[:] = False
        return end if math.isfinite(end) else time

    # ---------------------------------------------------------------- the loop

    def run(self, until: float, eval_every: float, callback: Any = None
            ) -> list[dict[str, Any]]:
        """Run until simulated time ``until``, evaluating the server's model every
        ``eval_every`` simulated seconds; returns the records (also in ``self.records``).
        ``callback(run) -> dict`` adds to each record (a metric of one's own)."""
        self._callback = callback
        if not (until > 0 and eval_every > 0):
            raise ValueError(f"until and eval_every must be positive seconds, got {until!r}, "
                             f"{eval_every!r}")
        self.records: list[dict[str, Any]] = []
        next_eval, mode = eval_every, self.mode
        if mode.trigger == "round":
            time = 0.0
            while time < until:
                end = self._round(time)
                while next_eval <= min(end, until) + 1e-12:
                    self._evaluate(next_eval)
                    next_eval += eval_every
                time = end if end > time else time + eval_every
            return self.records
        self._fill(0.0)
        if mode.trigger == "tick":
            self.queue.push(mode.dt, EventKind.SERVER_TICK, SERVER)
        while self.queue and next_eval <= until + 1e-12:
            w = self.queue.pop_window(self.window, until=next_eval + 1e-12)
            if not len(w):
                self._evaluate(next_eval)
                next_eval += eval_every
                continue
            self._window(w)
        while next_eval <= until + 1e-12:
            self._evaluate(next_eval)
            next_eval += eval_every
        return self.records

    def _window(self, w: Any) -> None:
        mode = self.mode
        done = w.select(EventKind.TASK_FINISH)
        if len(done):
            arrivals = self._finish(done.nodes, done.times, done.column("counter",
                                                                        dtype=torch.int64))
            if mode.trigger == "arrival":
                self._apply(arrivals, done.times)
                self.busy[done.nodes] = False
                self._restart(done.nodes, done.times)
            else:
                self.pending.append(arrivals)
        starts = w.select(EventKind.TASK_START)
        if len(starts):
            self._start(starts.nodes, starts.times)
        tick = w.select(EventKind.SERVER_TICK)
        if len(tick):
            time = float(tick.times[0])
            waiting = self._merge(self.pending)
            self.pending = []
            self._apply(waiting, torch.full((len(waiting),), time, dtype=torch.float64))
            self.busy[waiting.nodes] = False
            self._restart(waiting.nodes, torch.full((len(waiting),), time, dtype=torch.float64))
            self.queue.push(time + mode.dt, EventKind.SERVER_TICK, SERVER)

    def _restart(self, nodes: Tensor, times: Tensor) -> None:
        if self.concurrency is None:
            self._start(nodes, times)
        else:
            self._fill(float(times.max()) if len(times) else self.queue.now)

    def _merge(self, parts: list[Arrivals]) -> Arrivals:
        if not parts:
            d = self.sim.spec.dim
            empty = torch.empty(0, dtype=torch.int64)
            return Arrivals(empty, torch.empty(0, d), torch.empty(0, d), empty,
                            torch.empty(0, dtype=torch.float64),
                            torch.empty(0, dtype=torch.float64))
        return Arrivals(*(torch.cat([getattr(p, f) for p in parts]) for f in (
            "nodes", "models", "deltas", "start_versions", "task_seconds", "weights")))

    def _evaluate(self, time: float) -> None:
        sim = self.sim
        sim.server_state = {"params": self.state["params"]}
        record = {"time": time, "version": self.state["version"],
                  "updates_applied": self.updates_applied,
                  "bytes_sent_total": float(sim.bytes_sent.sum()),
                  "server_bytes_sent_total": sim.server_bytes_sent, **sim.evaluate()}
        if self.train_loss:  # the objective itself: the server model on all training data
            from murmura.metrics.evaluation import evaluate_model

            data = sim.data.dataset
            record["train_accuracy"], record["train_loss"] = evaluate_model(
                sim.model, sim.spec, self.state["params"], data.train_x, data.train_y,
                sim.buffers, sim.evaluation.test_batch_size, sim.task)
        stale = self.log.columns()["staleness"] if len(self.log) else torch.zeros(0)
        kinds = self.log.columns()["kind"] if len(self.log) else torch.zeros(0)
        arrived = stale[kinds == int(EventKind.UPLOAD_ARRIVAL)].to(torch.float64)
        record["staleness_mean"] = float(arrived.mean()) if len(arrived) else 0.0
        if getattr(self, "_callback", None) is not None:
            record.update(self._callback(self) or {})
        self.records.append(record)


__all__ = ["ClockedFederation"]
