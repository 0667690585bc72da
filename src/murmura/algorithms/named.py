"""Named algorithms: each one a short composition of rules, found by name in ``ALGORITHMS``."""

from __future__ import annotations

import inspect
from typing import Any

from murmura.algorithms.base import ALGORITHMS, Algorithm, LocalWork, Schedule
from murmura.algorithms.plans import ServerAverageRule
from murmura.algorithms.rules import (
    SGD,
    Every,
    FullParticipation,
    Gossip,
    Late,
    MergeBudget,
    Never,
    NoCommunication,
    SampledParticipation,
    ServerAverage,
)


def _work(local_steps: int | None, local_epochs: float | None, batch_size: int) -> LocalWork:
    """Local work per round: ``local_steps`` minibatches or ``local_epochs`` passes over the
    node's data (one epoch when neither is given; giving both is refused by LocalWork)."""
    if local_steps is None and local_epochs is None:
        local_epochs = 1.0
    return LocalWork(batch_size=batch_size, steps=local_steps, epochs=local_epochs)


def _participation(fraction: float | None, count: int | None, model: Any = None) -> Any:
    if model is not None:
        if fraction is not None or count is not None:
            raise ValueError(
                "participation (a model of who is available) and fraction / clients_per_round "
                "(a uniform sample) cannot both apply: set one"
            )
        from murmura.algorithms.participation import make_participation

        return make_participation(model)
    if fraction is None and count is None:
        return FullParticipation()
    return SampledParticipation(fraction=fraction, count=count)


def _schedule(
    communicate_every: int, late_fraction: float | None, final_merge: bool,
    merge_fraction: float | None = None, merge_placement: str = "late",
    merge_window_start: float = 0.9,
) -> Schedule:
    if merge_fraction is not None:
        if late_fraction is not None or communicate_every != 1:
            raise ValueError(
                f"merge_fraction={merge_fraction} (gossip every round, exact merges in a fraction "
                "of them) cannot be combined with late_fraction or communicate_every: set one"
            )
        return MergeBudget(merge_fraction, merge_placement, merge_window_start,
                           merge_at_end=final_merge)
    if late_fraction is not None:
        if communicate_every != 1:
            raise ValueError(
                f"late_fraction={late_fraction} (communicate every round of the last fraction) "
                f"and communicate_every={communicate_every} cannot both apply: set one"
            )
        return Late(late_fraction, merge_at_end=final_merge)
    return Every(communicate_every, merge_at_end=final_merge)


@ALGORITHMS.register("fedavg", "FedAvg: sampled clients train locally, a server averages by size")
def fedavg(
    lr: float = 0.05,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    local_epochs: float | None = None,
    local_steps: int | None = None,
    batch_size: int = 32,
    fraction: float | None = None,
    clients_per_round: int | None = None,
    weighting: str = "samples",
    aggregator: str | dict[str, Any] | None = None,
    participation: str | dict[str, Any] | None = None,
) -> Algorithm:
    """FedAvg (McMahan et al., 2017): ``x <- sum_i (n_i / n) x_i`` over the round's clients;
    ``aggregator`` (a name or ``{name = ..., ...}`` from ``murmura.robust``) replaces the weighted
    mean by a robust rule over the uploaded models. ``participation`` (``{name = "bernoulli" |
    "cyclic" | "markov", p = ...}``, :mod:`murmura.algorithms.participation`) says who is
    available each round instead of a uniform sample; a round with nobody is skipped."""
    params = dict(locals())
    from murmura.algorithms.federated import ServerOptimize
    from murmura.robust import make_aggregator

    participation = _participation(fraction, clients_per_round, participation)
    work = _work(local_steps, local_epochs, batch_size)
    robust = make_aggregator(aggregator)
    return Algorithm(
        name="fedavg",
        local_rule=SGD(lr, momentum, weight_decay),
        # Each round's clients start a fresh optimizer from the global model, as in FedAvg.
        local_work=LocalWork(work.batch_size, work.steps, work.epochs,
                             reset_state_each_round=True),
        communication=(ServerAverage(weighting) if robust is None
                       else ServerOptimize(weighting, aggregator=robust)),
        schedule=Every(1),
        participation=participation,
        params=params,
        server=None if robust is None else ServerAverageRule(),
    )


@ALGORITHMS.register("dsgd", "D-SGD / D-PSGD: local steps, then gossip x <- W x with neighbours")
def dsgd(
    lr: float = 0.05,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    local_steps: int | None = None,
    local_epochs: float | None = None,
    batch_size: int = 32,
    communicate_every: int = 1,
    late_fraction: float | None = None,
    final_merge: bool = False,
    aggregator: str | dict[str, Any] | None = None,
    merge_fraction: float | None = None,
    merge_placement: str = "late",
    merge_window_start: float = 0.9,
    final_gossip_steps: int = 0,
) -> Algorithm:
    """Decentralized SGD (Lian et al., 2017): ``x_i <- sum_j W_ij (x_j - lr g_j)``, with H local
    steps between gossips and an optional single global merge at the end (Zhu et al., 2025).
    ``aggregator`` (from ``murmura.robust``) replaces the weighted sum by a robust rule over the
    node's neighbourhood, itself included: ``x_i <- f(x_i, [x_i, x_j for j in N(i)])``.

    The single-merge paper's schedules: ``merge_fraction`` of the rounds are exact global merges
    placed ``merge_placement`` = ``"early"``, ``"late"``, ``"window"`` (starting at
    ``merge_window_start``, a fraction of training) or ``"increasing"``, the others gossip (see
    :class:`~murmura.algorithms.rules.MergeBudget`); ``final_gossip_steps`` > 0 ends training
    with that many gossip steps instead of an exact merge."""
    from murmura.robust import make_aggregator

    if final_gossip_steps and final_merge:
        raise ValueError(
            f"final_gossip_steps={final_gossip_steps} replaces the exact final merge by gossip "
            "steps: set final_merge = false (or use dsgd rather than dsgd_final_merge)"
        )
    return Algorithm(
        name="dsgd",
        local_rule=SGD(lr, momentum, weight_decay),
        local_work=_work(local_steps, local_epochs, batch_size),
        communication=Gossip(aggregator=make_aggregator(aggregator),
                             final_steps=final_gossip_steps),
        schedule=_schedule(communicate_every, late_fraction, final_merge, merge_fraction,
                           merge_placement, merge_window_start),
        participation=FullParticipation(),
        needs_connected=not final_merge,
        params=dict(locals()),
    )


@ALGORITHMS.register(
    "dsgd_final_merge", "D-SGD with one exact global merge after the last round (single merge)"
)
def dsgd_final_merge(**params) -> Algorithm:
    """D-SGD whose last gossip is replaced by one global average (Zhu et al., 2025)."""
    params.setdefault("final_merge", True)
    algo = dsgd(**params)
    return Algorithm(**{**algo.__dict__, "name": "dsgd_final_merge"})


# Same parameters as dsgd (so unknown ones are rejected by name), with final_merge on.
dsgd_final_merge.__signature__ = inspect.signature(dsgd).replace(  # type: ignore[attr-defined]
    parameters=[
        p.replace(default=True) if p.name == "final_merge" else p
        for p in inspect.signature(dsgd).parameters.values()
    ]
)


@ALGORITHMS.register("local_sgd", "local training only, optionally one global merge at the end")
def local_sgd(
    lr: float = 0.05,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    local_steps: int | None = None,
    local_epochs: float | None = None,
    batch_size: int = 32,
    final_merge: bool = False,
) -> Algorithm:
    """Every node trains alone; ``final_merge`` averages all models once at the end."""
    return Algorithm(
        name="local_sgd",
        local_rule=SGD(lr, momentum, weight_decay),
        local_work=_work(local_steps, local_epochs, batch_size),
        communication=NoCommunication(),
        schedule=Never(merge_at_end=final_merge),
        participation=FullParticipation(),
        params=dict(locals()),
    )


ALGORITHMS.add("d-psgd", dsgd, "alias of dsgd")
