"""A deterministic virtual clock for asynchronous federated and decentralized runs.

Simulated time, not wall time: events (task start and finish, upload and download arrivals,
nodes going online and offline, timers and Poisson wake-ups) are totally ordered and handed
out one time window at a time, as tensors, so a window is processed as one vectorized step.
Compute time per step, link latency and bandwidth, and availability are models evaluated for
a tensor of nodes at once, and every draw is a hash of ``(seed, node, purpose, counter)``
(:mod:`murmura.swarm.random`): the same seed gives the same event log, bit for bit, however
the work is batched.

* :mod:`~murmura.clock.events`: :class:`EventKind`, :class:`Event`, :class:`EventQueue`,
  :class:`Window`, :class:`NodeCounters`;
* :mod:`~murmura.clock.devices`: compute models (:data:`COMPUTE`);
* :mod:`~murmura.clock.links`: :class:`Links` (:data:`LINK_MODELS`);
* :mod:`~murmura.clock.availability`, :mod:`~murmura.clock.markov`,
  :mod:`~murmura.clock.intervals`: availability models (:data:`AVAILABILITY`);
* :mod:`~murmura.clock.traces`: FedScale trace conversion (one time) and JSON loaders;
* :mod:`~murmura.clock.log`: :class:`EventLog`;
* :mod:`~murmura.clock.toy` and :mod:`~murmura.clock.reference`: a FedBuff-like schedule,
  vectorized and as a plain one-event-at-a-time loop.

>>> import torch
>>> from murmura.clock import EventKind, EventQueue, make_compute
>>> compute = make_compute({"name": "lognormal", "mu": -2.0, "sigma": 0.3}, seed=1)
>>> q = EventQueue()
>>> nodes = torch.arange(4)
>>> _ = q.push_many(compute.task_time(nodes, steps=5), EventKind.TASK_FINISH, nodes)
>>> w = q.pop_window(width=0.2)  # everything within 0.2 s of the first finish, as tensors
>>> bool((w.times < w.start + 0.2).all()), len(w) + len(q)
(True, 4)
"""

from murmura.clock._checks import SERVER
from murmura.clock.availability import (
    AVAILABILITY,
    AlwaysOnline,
    Availability,
    Bernoulli,
    Diurnal,
    PermanentFailure,
    make_availability,
    with_failures,
)
from murmura.clock.devices import (
    COMPUTE,
    ComputeModel,
    ConstantCompute,
    LognormalCompute,
    ParetoCompute,
    TraceCompute,
    make_compute,
)
from murmura.clock.events import Event, EventKind, EventQueue, NodeCounters, Window
from murmura.clock.intervals import IntervalAvailability
from murmura.clock.links import LINK_MODELS, Links, make_links
from murmura.clock.log import EventLog
from murmura.clock.markov import MarkovChurn
from murmura.clock.modest import ClockedModest
from murmura.clock.toy import BufferedRun, BufferedSchedule, BufferedState, simulate_buffered

__all__ = [
    "AVAILABILITY", "COMPUTE", "LINK_MODELS", "SERVER", "AlwaysOnline", "Availability",
    "Bernoulli", "BufferedRun", "BufferedSchedule", "BufferedState", "ClockedModest",
    "ComputeModel",
    "ConstantCompute", "Diurnal", "Event", "EventKind", "EventLog", "EventQueue",
    "IntervalAvailability", "Links", "LognormalCompute", "MarkovChurn", "NodeCounters",
    "ParetoCompute", "PermanentFailure", "TraceCompute", "Window", "make_availability",
    "make_compute", "make_links", "simulate_buffered", "with_failures",
]
