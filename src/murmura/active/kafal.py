"""KAFAL's federated update (Cao, Shi, Yu, Wang and Tao, ICCV 2023, arXiv 2211.13579; code
github.com/ycao5602/KAFAL, ``main.py``: ``train``), registered as algorithm ``kafal``.

Within one active-learning cycle it is FedAvg over the clients' LABELLED sets: the round's
clients start from the global model, train locally, and the server averages their models
weighted by their labelled pool sizes ``|L_k|`` (the engine's sizes are those of the data it is
given: the labelled parts). Two additions:

* after local training each client keeps its model (node state ``local``, :class:`KeepLocal`):
  KSAS (:mod:`murmura.active.acquisition`) compares it with the global model at the cycle's end;
* with ``fraction`` / ``clients_per_round`` (the code samples 80% of the clients), the last
  round of a cycle takes every client (:class:`FinalRoundAll`, the code's
  ``if com < COMMUNICATION-1``), so every client's kept model is from the cycle's end.

The client loss is a task, not part of the algorithm: run it with ``task="kcfu"``
(:class:`murmura.active.kcfu.KCFU`; ``Simulation(task="kcfu")``, or ``task = "kcfu"`` in a
config) on data with an ``"unlabelled"`` pool; with the default task it is FedAvg (the spec's
KSAS + FedAvg arm). The whole method, cycles of training and acquisition, is
:func:`murmura.active.run_active_learning`.

Defaults are the spec's CPU reproduction (``specs/federated.md`` section 8 (e)): plain SGD lr
0.05, 2 local epochs, every client. The code's CIFAR-10 setting is SGD lr 0.1, momentum 0.9,
weight decay 5e-4, batch 128, 40 local epochs, 80% of the clients. The code keeps each client's
optimizer (its momentum) across the rounds of a cycle; here, as in FedAvg, a round's clients
start a fresh optimizer (no difference at the default momentum 0).

>>> from murmura.data import federate
>>> from murmura.swarm import Evaluation, Simulation
>>> data = federate("digits", 4, "dirichlet", alpha=0.5, seed=0)
>>> sim = Simulation(data, "mlp", "kafal", task="balanced_softmax", evaluation=Evaluation(every=1),
...                  algorithm_kwargs={"local_epochs": 1})
>>> "local" in sim.node_state and 0 <= sim.run(rounds=1).final["test_accuracy"] <= 1
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from murmura.algorithms.base import ALGORITHMS, Algorithm, LocalWork, Participation, RoundContext
from murmura.algorithms.named import _participation, _work
from murmura.algorithms.plans import NodeState, Vectors
from murmura.algorithms.rules import SGD, Every, FullParticipation, ServerAverage

Tensor = torch.Tensor


@dataclass(frozen=True)
class KeepLocal:
    """After local training: ``local <- params`` (the client's model before the server's
    average replaces it)."""

    node_state: dict = field(default_factory=lambda: {"local": NodeState()})

    def __call__(self, params: Tensor, state: Vectors, node: Tensor, steps: Tensor) -> Vectors:
        return {"local": params}


@dataclass(frozen=True)
class FinalRoundAll:
    """``inner``'s clients, except in the last round of the run, which takes every client."""

    inner: Participation

    def how_many(self, num_nodes: int) -> int:
        how_many = getattr(self.inner, "how_many", None)
        return num_nodes if how_many is None else how_many(num_nodes)

    def select(self, ctx: RoundContext) -> Tensor | None:
        if ctx.round == ctx.total_rounds - 1:
            return None
        return self.inner.select(ctx)


@ALGORITHMS.register("kafal", "KAFAL's federated update: FedAvg by labelled pool sizes, each "
                     "client's local model kept for KSAS (run with task kcfu)")
def kafal(
    lr: float = 0.05,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    local_epochs: float | None = None,
    local_steps: int | None = None,
    batch_size: int = 16,
    fraction: float | None = None,
    clients_per_round: int | None = None,
    participation: str | dict[str, Any] | None = None,
    final_round_all: bool = True,
) -> Algorithm:
    """KAFAL's rounds (module docstring): SGD (``lr``, ``momentum``, ``weight_decay``) for
    ``local_epochs`` (2 when neither it nor ``local_steps`` is given) on batches of
    ``batch_size`` labelled samples; ``fraction`` / ``clients_per_round`` / ``participation``:
    who takes part (default every client); ``final_round_all``: the last round takes every
    client. Use ``task="kcfu"`` for KAFAL's loss."""
    params = dict(locals())
    for name in ("lr", "momentum", "weight_decay"):
        value = params[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                value >= 0 and value < float("inf")) or (name == "lr" and value == 0):
            raise ValueError(f"kafal: {name} must be a finite number "
                             f"{'> 0' if name == 'lr' else '>= 0'}, got {value!r}")
    if not isinstance(final_round_all, bool):
        raise ValueError(f"kafal: final_round_all must be true or false, got "
                         f"{final_round_all!r}")
    if local_epochs is None and local_steps is None:
        local_epochs = 2.0
    work = _work(local_steps, local_epochs, batch_size)
    who = _participation(fraction, clients_per_round, participation)
    if final_round_all and not isinstance(who, FullParticipation):
        who = FinalRoundAll(who)
    return Algorithm(
        name="kafal",
        local_rule=SGD(lr, momentum, weight_decay),
        local_work=LocalWork(work.batch_size, work.steps, work.epochs,
                             reset_state_each_round=True),
        communication=ServerAverage("samples"),
        schedule=Every(1),
        participation=who,
        after_local=KeepLocal(),
        params=params,
    )


__all__ = ["FinalRoundAll", "KeepLocal", "kafal"]
