"""The straightforward event loop: one event, one node, one Python iteration at a time.

The same FedBuff-like schedule as :func:`murmura.clock.simulate_buffered`, written the plain
way a simulator is usually written (FLSim, FedScale): pop the earliest event, handle that one
node, push its next event. It calls the same keyed models with one node each, so it draws the
same numbers; it is the baseline of ``benchmarks/clock.py`` and, with ``width=0``, an oracle
for the vectorized path's log.

>>> from murmura.clock import ConstantCompute, Links, BufferedSchedule
>>> from murmura.clock.reference import reference_buffered
>>> s = BufferedSchedule(3, ConstantCompute(1.0), Links(latency=0.25), steps=1, buffer=1,
...                      until=3.0)
>>> reference_buffered(s).log.staleness_counts()
{0: 1, 1: 1, 2: 4}
"""

from __future__ import annotations

import math

import torch

from murmura.clock._checks import SERVER
from murmura.clock.events import EventKind
from murmura.clock.log import EventLog
from murmura.clock.toy import BufferedRun, BufferedSchedule, BufferedState

__all__ = ["reference_buffered"]


def reference_buffered(schedule: BufferedSchedule, state: BufferedState | None = None
                       ) -> BufferedRun:
    """Run the schedule one event at a time (from its start, or on from a copy of ``state``)."""
    s = schedule
    state = BufferedState.start(s.num_nodes) if state is None else state.copy()
    if state.held.numel() != s.num_nodes:
        raise ValueError(f"state has {state.held.numel()} clients but the schedule "
                         f"{s.num_nodes}")
    held, incoming, count = state.held.tolist(), state.incoming.tolist(), state.count.tolist()
    last, uploads = state.last.tolist(), state.upload.tolist()
    version, buffered = state.version, state.buffered
    queue = state.queue
    log = EventLog()

    def begin(node: int, t: float) -> None:
        c = count[node]
        one = torch.tensor([node])
        compute = s.compute.task_time(one, s.steps, c).item()
        upload = s.links.transfer_time(one, SERVER, s.nbytes, c).item()
        online, change = s.availability.state(one, t)
        online, change = bool(online), change.item()
        if not online:
            if math.isfinite(change):
                queue.push(change, EventKind.TASK_START, node)
            return
        count[node] += 1
        uploads[node] = upload
        finish = t + compute
        if change >= finish + upload:
            queue.push(finish, EventKind.TASK_FINISH, node)
        else:
            queue.push(change, EventKind.NODE_OFFLINE, node)

    limit = math.inf if s.max_events is None else int(s.max_events)
    events = 0
    time = queue.now
    while queue and queue.peek_time() < s.until and events < limit:
        e = queue.pop()
        node, t = e.node, e.time
        one = torch.tensor([node])
        row = {"version": -1, "staleness": 0, "nbytes": 0, "duration": 0.0}
        if e.kind != EventKind.TASK_START:
            row["duration"] = t - last[node]
        if e.kind == EventKind.TASK_START:
            row["version"] = held[node]
            begin(node, t)
        elif e.kind == EventKind.TASK_FINISH:
            queue.push(t + uploads[node], EventKind.UPLOAD_ARRIVAL, node)
        elif e.kind == EventKind.UPLOAD_ARRIVAL:
            row.update(version=held[node], staleness=version - held[node], nbytes=s.nbytes)
            buffered += 1
            if buffered == s.buffer:
                version, buffered = version + 1, 0
            incoming[node] = version
            down = s.links.transfer_time(SERVER, one, s.nbytes, count[node] - 1).item()
            queue.push(t + down, EventKind.DOWNLOAD_ARRIVAL, node)
        elif e.kind == EventKind.DOWNLOAD_ARRIVAL:
            held[node] = incoming[node]
            row.update(version=held[node], nbytes=s.nbytes)
            begin(node, t)
        elif e.kind == EventKind.NODE_OFFLINE:
            back = s.availability.next_online(one, t).item()
            if math.isfinite(back):
                queue.push(back, EventKind.TASK_START, node)
        last[node] = t
        log.record(t, e.kind, node, sequence=e.sequence, **row)
        events += 1
        time = t
    final = BufferedState(torch.tensor(held), torch.tensor(incoming), torch.tensor(count),
                          torch.tensor(last, dtype=torch.float64),
                          torch.tensor(uploads, dtype=torch.float64), version, buffered, queue)
    return BufferedRun(log, events, version, time, events, final)
