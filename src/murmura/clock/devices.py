"""Compute time: how many simulated seconds one local step takes on each node.

Every model answers ``step_time(nodes, counter)`` for a tensor of nodes at once; a task of
``steps`` steps takes ``steps * step_time`` (one draw per task, not per step: a device is slow
for a whole task, as when it is busy with something else). ``counter`` is the node's own task
index (see :class:`murmura.clock.NodeCounters`), so a draw is a pure function of
``(seed, node, purpose, counter)`` and never depends on which other nodes are in the batch.

Built in, by name in :data:`COMPUTE`:

* ``constant``: the same seconds per step everywhere;
* ``lognormal``: node ``i`` has a fixed speed factor ``exp(mu + sigma z_i)`` seconds per step
  (median ``exp(mu)``), times an optional per-task jitter ``exp(jitter z - jitter^2 / 2)`` of
  mean one, so ``jitter`` changes the spread but not a node's mean;
* ``pareto``: fixed per node, ``scale * U^(-1/shape)`` (heavy-tailed stragglers; mean
  ``scale * shape / (shape - 1)`` for ``shape > 1``), with the same optional jitter;
* ``trace``: per-node seconds from a list or a converted FedScale device trace.

>>> import torch
>>> from murmura.clock import make_compute
>>> model = make_compute({"name": "lognormal", "mu": 0.0, "sigma": 0.5}, seed=0)
>>> nodes = torch.arange(4)
>>> t = model.task_time(nodes, steps=10, counter=0)
>>> bool(torch.equal(t[2:], model.task_time(nodes[2:], 10, 0)))  # batch-independent
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from murmura.clock._checks import as_nodes, build, positive
from murmura.clock.draws import NodeCache, keyed_normal, keyed_uniform
from murmura.registry import Registry

__all__ = ["COMPUTE", "ComputeModel", "ConstantCompute", "LognormalCompute", "ParetoCompute",
           "TraceCompute", "make_compute"]

COMPUTE: Registry = Registry("compute model")


def _counter(counter: torch.Tensor | int, nodes: torch.Tensor) -> torch.Tensor:
    c = torch.as_tensor(counter)
    if c.dtype.is_floating_point or (c.numel() and int(c.min()) < 0):
        raise ValueError("counter must be non-negative integers (the node's task index)")
    return c.to(torch.int64).expand_as(nodes) if c.dim() == 0 else c.to(torch.int64)


class ComputeModel:
    """Seconds per local step, per node. Subclasses implement ``_step_time``."""

    seed: int = 0

    def step_time(self, nodes: torch.Tensor, counter: torch.Tensor | int = 0) -> torch.Tensor:
        """Seconds one local step takes on each node (float64, shape of ``nodes``) for the task
        numbered ``counter`` (a scalar or one per node)."""
        nodes = as_nodes(nodes, allow_server=False)
        return self._step_time(nodes, _counter(counter, nodes))

    def task_time(self, nodes: torch.Tensor, steps: torch.Tensor | int,
                  counter: torch.Tensor | int = 0) -> torch.Tensor:
        """Seconds a task of ``steps`` local steps takes: ``steps * step_time``."""
        steps_t = torch.as_tensor(steps)
        if steps_t.dtype.is_floating_point or (steps_t.numel() and int(steps_t.min()) < 0):
            raise ValueError(f"steps must be non-negative integers, got {steps!r}")
        return steps_t.to(torch.float64) * self.step_time(nodes, counter)

    def _step_time(self, nodes: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _jitter(self, jitter: float, nodes: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
        if jitter == 0:
            return torch.ones(nodes.shape, dtype=torch.float64)
        z = keyed_normal(self.seed, "clock.compute.jitter", nodes, counter)
        return torch.exp(jitter * z - 0.5 * jitter * jitter)


@dataclass(frozen=True)
class ConstantCompute(ComputeModel):
    """Every node takes ``seconds`` per step."""

    seconds: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        positive(self.seconds, "seconds", allow_zero=True)

    def _step_time(self, nodes: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
        return torch.full(nodes.shape, float(self.seconds), dtype=torch.float64)


@dataclass(frozen=True, eq=False)
class LognormalCompute(ComputeModel):
    """Node ``i`` takes ``exp(mu + sigma z_i)`` seconds per step (``z_i`` fixed per node), times
    a mean-one per-task jitter when ``jitter > 0``."""

    mu: float = 0.0
    sigma: float = 0.5
    jitter: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not math.isfinite(float(self.mu)):
            raise ValueError(f"mu must be finite (log-seconds per step), got {self.mu!r}")
        positive(self.sigma, "sigma", allow_zero=True)
        positive(self.jitter, "jitter", allow_zero=True)
        object.__setattr__(self, "_speed", NodeCache(self._speeds))

    def _speeds(self, nodes: torch.Tensor) -> torch.Tensor:
        z = keyed_normal(self.seed, "clock.compute.speed", nodes)
        return torch.exp(self.mu + self.sigma * z)

    def _step_time(self, nodes: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
        return self._speed(nodes) * self._jitter(self.jitter, nodes, counter)


@dataclass(frozen=True, eq=False)
class ParetoCompute(ComputeModel):
    """Node ``i`` takes ``scale * U_i^(-1/shape)`` seconds per step (``U_i`` fixed per node, in
    (0, 1]), times a mean-one per-task jitter when ``jitter > 0``."""

    shape: float = 2.0
    scale: float = 1.0
    jitter: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        positive(self.shape, "shape")
        positive(self.scale, "scale")
        positive(self.jitter, "jitter", allow_zero=True)
        object.__setattr__(self, "_speed", NodeCache(self._speeds))

    def _speeds(self, nodes: torch.Tensor) -> torch.Tensor:
        u = 1.0 - keyed_uniform(self.seed, "clock.compute.pareto", nodes)
        # exp(-log(u) / shape), not u.pow(...): torch's pow rounds differently for one element
        # than for many, and a draw must not depend on the batch it is computed in.
        return self.scale * torch.exp(-torch.log(u) / self.shape)

    def _step_time(self, nodes: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
        return self._speed(nodes) * self._jitter(self.jitter, nodes, counter)


@dataclass(frozen=True, eq=False)
class TraceCompute(ComputeModel):
    """Node ``i`` takes ``step_seconds[i]`` seconds per step (a measured or converted trace)."""

    step_seconds: torch.Tensor
    seed: int = 0

    def __post_init__(self) -> None:
        values = torch.as_tensor(self.step_seconds, dtype=torch.float64).reshape(-1)
        if values.numel() == 0:
            raise ValueError("step_seconds must list one value per node, got none")
        if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
            raise ValueError("step_seconds must be finite and >= 0 (seconds per step)")
        object.__setattr__(self, "step_seconds", values)

    @classmethod
    def from_trace(cls, trace: Any, num_nodes: int, batch_size: int,
                   augmentation: float = 3.0) -> TraceCompute:
        """From a :class:`murmura.clock.traces.DeviceTrace`: FedScale's ``computation`` is the
        inference latency in ms per sample, and a training step costs ``augmentation`` (3, for
        forward plus backward, as FedScale's ``get_completion_time``) times ``batch_size``
        samples' inference. Node ``i`` takes the trace's client ``i mod len(trace)``, as
        FedScale maps client ids onto its profiles."""
        positive(batch_size, "batch_size")
        positive(augmentation, "augmentation")
        if int(num_nodes) < 1:
            raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
        index = torch.arange(int(num_nodes)) % len(trace)
        ms = trace.compute_ms_per_sample[index]
        return cls(augmentation * batch_size * ms / 1000.0)

    def _step_time(self, nodes: torch.Tensor, counter: torch.Tensor) -> torch.Tensor:
        if nodes.numel() and int(nodes.max()) >= self.step_seconds.numel():
            raise ValueError(f"node {int(nodes.max())} has no entry in step_seconds (length "
                             f"{self.step_seconds.numel()}); give one value per node")
        return self.step_seconds[nodes]


@COMPUTE.register("constant", "the same seconds per local step on every node")
def _constant(seconds: float = 1.0, seed: int = 0) -> ConstantCompute:
    return ConstantCompute(seconds, seed)


@COMPUTE.register("lognormal", "per-node lognormal speed factor, optional per-task jitter")
def _lognormal(mu: float = 0.0, sigma: float = 0.5, jitter: float = 0.0,
               seed: int = 0) -> LognormalCompute:
    return LognormalCompute(mu, sigma, jitter, seed)


@COMPUTE.register("pareto", "per-node Pareto step time (heavy-tailed stragglers)")
def _pareto(shape: float = 2.0, scale: float = 1.0, jitter: float = 0.0,
            seed: int = 0) -> ParetoCompute:
    return ParetoCompute(shape, scale, jitter, seed)


@COMPUTE.register("trace", "per-node seconds per step, listed or from a device-trace JSON")
def _trace(step_seconds: Sequence[float] | None = None, path: str | None = None,
           num_nodes: int | None = None, batch_size: int | None = None,
           augmentation: float = 3.0) -> TraceCompute:
    if (step_seconds is None) == (path is None):
        raise ValueError("compute model 'trace' needs exactly one of step_seconds (a list, one "
                         "per node) or path (a device-trace JSON from convert_fedscale)")
    if step_seconds is not None:
        return TraceCompute(torch.as_tensor(step_seconds, dtype=torch.float64))
    if num_nodes is None or batch_size is None:
        raise ValueError("compute model 'trace' from a path needs num_nodes and batch_size")
    from murmura.clock.traces import load_device_trace

    return TraceCompute.from_trace(load_device_trace(path), num_nodes, batch_size, augmentation)


def make_compute(spec: Any, seed: int = 0, num_nodes: int | None = None) -> ComputeModel:
    """A compute model from a name, ``{"name": ..., **params}`` or a :class:`ComputeModel`;
    ``seed`` and ``num_nodes`` fill the parameters of those names the spec leaves out."""
    return build(COMPUTE, spec, ComputeModel, seed=seed, num_nodes=num_nodes)
