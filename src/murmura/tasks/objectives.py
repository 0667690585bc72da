"""Benchmark objectives as tasks: the loss of a node is ``f(x)`` at the point its model holds.

For derivative-free global optimizers (consensus-based optimization, ``murmura.algorithms.cbo``)
whose particles are nodes. The node's model is a point ``x ∈ R^d`` (the ``vector`` model,
``murmura.models.vector``, whose forward pass returns its point once per sample); the loss reads
that point through ``forward`` (so any model whose output rows are the point works) and ignores
the minibatch. The engine still needs a dataset to draw minibatches from:
:func:`placeholder_data` gives every node one sample of ``digits``, never read.

Functions (each takes ``[..., d]`` and returns ``[...]``; all have their global minimum 0 at 0):

* ``rastrigin``: ``Σ x_k² + A Σ (1 − cos 2π x_k)``; ``A = 10`` is the usual Rastrigin
  (``10 d + Σ (x_k² − 10 cos 2π x_k)``); the CBO papers' code (``objective_function.m``) uses
  ``A = 2.5``.
* ``ackley``: ``−20 exp(−0.2 √(mean x_k²)) − exp(mean cos 2π x_k) + e + 20``.
* ``grand_canyon3_noisy`` (d = 2): Riedl, Klock, Geldhauser, Fornasier, "Gradient is All You
  Need?" (arXiv 2306.09778), exactly as in the spec (section 8) and the official
  ``BenchmarkFunctions/objective_function.m``: a curved valley with a barrier across it and a
  cosine ripple; gradient descent from (8, 8) stalls in it.

Scores (``metrics``), as sums over the evaluated samples so that evaluation's means are the
point's values: ``loss`` = ``f(x)``, ``correct`` = success ``‖x − x*‖∞ < success_radius``
(``x* = 0``; 0.25 as in the paper's experiments). ``test_accuracy`` of a run is thus the
success of the average particle x̄ and ``test_loss`` is ``f(x̄)``.

>>> import torch
>>> task = TASKS.get("grand_canyon3_noisy")()
>>> float(grand_canyon3_noisy(torch.zeros(2))), task.name
(0.0, 'grand_canyon3_noisy')
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from murmura.tasks import TASKS

Tensor = torch.Tensor


def rastrigin(x: Tensor, amplitude: float = 10.0) -> Tensor:
    """``Σ x_k² + A Σ (1 − cos 2π x_k)`` over the last axis."""
    return (x * x).sum(-1) + amplitude * (1.0 - torch.cos(2.0 * math.pi * x)).sum(-1)


def ackley(x: Tensor) -> Tensor:
    """``−20 exp(−0.2 √(mean x²)) − exp(mean cos 2πx) + e + 20`` over the last axis."""
    return (-20.0 * torch.exp(-0.2 * torch.sqrt((x * x).mean(-1)))
            - torch.exp(torch.cos(2.0 * math.pi * x).mean(-1)) + math.e + 20.0)


def grand_canyon3_noisy(v: Tensor) -> Tensor:
    """GrandCanyon3noisy (d = 2, last axis), the spec's and the official code's formula."""
    if v.shape[-1] != 2:
        raise ValueError(f"grand_canyon3_noisy is defined in 2 dimensions, got {v.shape[-1]}")
    v1, v2 = v[..., 0], v[..., 1]
    valley = v2 - (2.0 / 16.0 * (v1 - 1.0) * (v1 - 4.0) ** 2 + 2.0)
    block = -v1 - 1.6 * v2
    barrier = torch.clamp((1.0 - torch.exp(-9.0 * block**2)) * torch.sign(block), min=0.0)
    return (25.0 * (1.0 - torch.exp(-1.4 * valley**2 * torch.exp(-0.002 * v1**4)))
            + 0.4 * v1**2 + 0.2 * v2**2 + 1.1625 * (1.0 - torch.cos(0.75 * math.pi * v)).sum(-1)
            + 4.0 * torch.exp(1.0 - 2.0 * (valley**2) ** 2) * barrier)


FUNCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "rastrigin": rastrigin, "ackley": ackley, "grand_canyon3_noisy": grand_canyon3_noisy}
DIMENSIONS = {"grand_canyon3_noisy": 2}  # the functions defined in one dimension only


@dataclass(frozen=True)
class Objective:
    """The loss is ``function(x)`` at the node's point ``x = forward(params, samples)[0]``;
    the minibatch is ignored. ``amplitude``: Rastrigin's ``A``."""

    function: str = "rastrigin"
    success_radius: float = 0.25
    amplitude: float = 10.0

    def __post_init__(self) -> None:
        if self.function not in FUNCTIONS:
            raise ValueError(f"objective: function must be one of {', '.join(FUNCTIONS)}, got "
                             f"{self.function!r}")
        for name in ("success_radius", "amplitude"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"objective: {name} must be a finite number >= 0, got {value!r}")

    @property
    def name(self) -> str:
        return self.function

    def value(self, x: Tensor) -> Tensor:
        """``f`` at the points ``x [..., d]``."""
        if self.function == "rastrigin":
            return rastrigin(x, self.amplitude)
        return FUNCTIONS[self.function](x)

    def loss(self, forward, params, batch):
        point = forward(params, batch["x"][:1])[0]
        return self.value(point), {}

    def metrics(self, forward, params, batch):
        point = forward(params, batch["x"][:1])[0]
        count = torch.tensor(float(batch["y"].shape[0]), dtype=torch.float64)
        success = (point.abs().max() < self.success_radius).to(torch.float64)
        return {"loss": self.value(point).to(torch.float64) * count,
                "correct": success * count, "count": count}

    def check_output(self, out, dataset, batch):
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != batch:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"objective {self.function!r} reads the point from the model's output, one row "
                f"[batch, dim] per sample (the 'vector' model); the model returned {shape}")
        needed = DIMENSIONS.get(self.function)
        if needed is not None and out.shape[1] != needed:
            raise ValueError(f"objective {self.function!r} is defined in {needed} dimensions; "
                             f"the model's point has {out.shape[1]} (set dim={needed})")


for _name, _description in (
    ("rastrigin", "benchmark: Rastrigin f(x) at the node's point (the vector model); minimum 0 "
                  "at 0"),
    ("ackley", "benchmark: Ackley f(x) at the node's point (the vector model); minimum 0 at 0"),
    ("grand_canyon3_noisy", "benchmark: GrandCanyon3noisy (d=2) from 'Gradient is All You "
                            "Need?'; minimum 0 at 0"),
):
    TASKS.add(_name, partial(Objective, _name), _description)


def placeholder_data(num_nodes: int, dataset: str = "digits"):
    """A federation in which every node holds the same one sample (index 0) of ``dataset``: the
    minibatches the engine draws for a benchmark objective, which ignores them."""
    from murmura.data import FederatedData, load_dataset

    if isinstance(num_nodes, bool) or int(num_nodes) != num_nodes or num_nodes < 1:
        raise ValueError(f"placeholder_data: num_nodes must be a positive integer, got "
                         f"{num_nodes!r}")
    return FederatedData.from_parts(load_dataset(dataset),
                                    [np.zeros(1, dtype=np.int64)] * int(num_nodes))


__all__ = ["FUNCTIONS", "Objective", "ackley", "grand_canyon3_noisy", "placeholder_data",
           "rastrigin"]
