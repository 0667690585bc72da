"""Variance-corrected model averaging (Tian, Al-Ars, Kitsak and Hofstee, "Vanishing Variance
Problem in Fully Decentralized Neural-Network Systems", arXiv 2404.04616, 2024).

Averaging ``n`` *uncorrelated* models shrinks each weight tensor's variance about ``n``-fold,
which destroys the signal-propagation scale that Xavier/Kaiming initialization set; FedAvg never
sees it because every client starts each round from the server's model. The fix rescales each
averaged weight tensor back to the spread of the models that went into it. No official code is
known: the rule below is the spec's reconstruction from the abstract (spec section 5 (b),
"[inferred]"):

    for each weight tensor with a fan-in (Linear / Conv weights: tensors of 2+ dims):
        A   = sum_k c_k W^(k)                        c_k uniform over the present messages
        s*  = mean_k std(W^(k))                      (target "input_mean"; or Xavier's
                                                      sqrt(2 / (fan_in + fan_out)): "xavier")
        mu  = mean(A)
        W   = mu + (A - mu) * s* / (std(A) + 1e-12)
    biases and normalization parameters (1-dim tensors): the plain average A.

``std`` is the population standard deviation over the entries of one tensor of one model. The
weights ``c_k`` are uniform over the neighbourhood (the node's own model and every neighbour
heard this round): the mixing matrix's weights are *not* used, only which links it has. On
``random_matching`` (the spec's setting: pairs) that is the pair's 1/2-1/2 average, exactly what
``W`` says. ``target="none"`` is the same code path without the rescaling (the plain-average
arm; on ``random_matching`` it gives D-SGD's ``x <- W x``).

The correction needs only statistics of the messages a node has, so it sends nothing more:
one model (``4d`` bytes) per link, as D-SGD.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from murmura.algorithms.base import ALGORITHMS, Algorithm, ModelLayout, Tensor
from murmura.algorithms.named import _work
from murmura.algorithms.rules import SGD, Every, FullParticipation, Gossip

TARGETS = ("input_mean", "xavier", "none")


@dataclass(frozen=True)
class TensorSlot:
    """Where one named parameter lies in the flat row, and its fans (0 for 1-dim tensors)."""

    name: str
    start: int
    stop: int
    fan_in: int = 0
    fan_out: int = 0

    @property
    def corrected(self) -> bool:
        return self.fan_in > 0


def tensor_slots(layout: ModelLayout) -> tuple[TensorSlot, ...]:
    """The row's tensors; those of 2+ dims get torch's fans (``[out, in, *kernel]``: fan-in
    ``in * prod(kernel)``, fan-out ``out * prod(kernel)``)."""
    spec = layout.spec
    slots = []
    for name, shape, start, size in zip(spec.names, spec.shapes, spec.offsets, spec.numels):
        fans = (0, 0)
        if len(shape) >= 2:
            kernel = math.prod(shape[2:])
            fans = (shape[1] * kernel, shape[0] * kernel)
        slots.append(TensorSlot(name, start, start + size, *fans))
    return tuple(slots)


def _row_std(rows: Tensor) -> Tensor:
    """Per-row population standard deviation over the last axis: ``[k, m] -> [k]``."""
    return (rows - rows.mean(dim=-1, keepdim=True)).square().mean(dim=-1).sqrt()


@dataclass(frozen=True)
class VarianceCorrectedAverage:
    """Aggregator ``f(own[d], received[k+1, d], mask[k+1]) -> [d]``: the uniform average of the
    present rows, each weight tensor then rescaled to the target spread (module docstring).
    Must be bound to the model's layout (``bind``) before it runs; the engine does that at
    setup. Loops over parameter tensors, never over nodes: the engine ``vmap``s it."""

    target: str = "input_mean"
    slots: tuple[TensorSlot, ...] | None = None

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(
                f"variance_corrected: target must be one of {', '.join(TARGETS)}, got "
                f"{self.target!r} ('input_mean': the inputs' mean std, the spec's default)"
            )

    def bind(self, layout: ModelLayout) -> VarianceCorrectedAverage:
        return replace(self, slots=tensor_slots(layout))

    def __call__(self, own: Tensor, received: Tensor, mask: Tensor) -> Tensor:
        if self.slots is None:
            raise ValueError(
                "variance_corrected: the aggregator is not bound to a model layout, so it does "
                "not know which slices of the row are weight tensors; call "
                "aggregator.bind(ModelLayout(spec, model)) first (a Simulation binds it itself)"
            )
        if self.slots[-1].stop != received.shape[-1]:
            raise ValueError(
                f"variance_corrected: the aggregator was bound to a model of {self.slots[-1].stop} "
                f"parameters but receives rows of {received.shape[-1]}; bind it to this model"
            )
        present = (mask > 0).to(received.dtype)
        received = torch.where(present.unsqueeze(-1) > 0, received, 0.0)  # padding never leaks
        c = present / present.sum()
        average = c @ received  # A = sum_k c_k W^(k)
        if self.target == "none":
            return average
        parts = []
        for slot in self.slots:
            a = average[slot.start : slot.stop]
            if slot.corrected:
                if self.target == "xavier":
                    sigma = math.sqrt(2.0 / (slot.fan_in + slot.fan_out))
                else:  # mean_k std(W^(k)) over the present rows
                    sigma = c @ _row_std(received[:, slot.start : slot.stop])
                mu = a.mean()
                a = mu + (a - mu) * sigma / (a.std(correction=0) + 1e-12)
            parts.append(a)
        return torch.cat(parts)


@ALGORITHMS.register(
    "variance_corrected",
    "gossip learning with variance-corrected averaging (Tian et al., 2024)",
)
def variance_corrected(
    lr: float = 0.05,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    local_steps: int | None = None,
    local_epochs: float | None = None,
    batch_size: int = 32,
    target: str = "input_mean",
) -> Algorithm:
    """Local SGD steps, then one gossip exchange in which every node sets its model to the
    variance-corrected average of its neighbourhood (itself included). The spec's setting is
    ``topology = "random_matching"`` with a different initial model per node
    (``engine.same_init = false``); any topology works. ``target``: ``"input_mean"`` (default),
    ``"xavier"``, or ``"none"`` (the plain uniform average through the same code path)."""
    return Algorithm(
        name="variance_corrected",
        local_rule=SGD(lr, momentum, weight_decay),
        local_work=_work(local_steps, local_epochs, batch_size),
        communication=Gossip(aggregator=VarianceCorrectedAverage(target)),
        schedule=Every(1),
        participation=FullParticipation(),
        needs_connected=True,
        params=dict(locals()),
    )


__all__ = ["TensorSlot", "VarianceCorrectedAverage", "tensor_slots", "variance_corrected"]
