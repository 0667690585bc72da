"""The ``online`` kind: an online learner against a SEA sequence, through ``murmura run``.

    kind = { name = "online", learner = "oomd", schedule = "switching", sigma = 0.1 }

One record per checkpoint (``rounds`` of them, evenly spaced over ``horizon`` online rounds):
the learner's static regret (against the best fixed point in hindsight of the losses so far)
and its dynamic regret, on quadratic losses ``½‖x − c_t‖² + ξ_tᵀx`` over the unit ball
(:class:`~murmura.optim.online.SEASequence`, keyed by the experiment's seed).
"""

from __future__ import annotations

import math

from murmura.optim.online import OGD, SEASequence, run_online
from murmura.optim.oomd import OOMD
from murmura.runner.kinds import KINDS

LEARNERS = ("oomd", "omd_nohint", "ogd")


@KINDS.register("online", "an online learner (oomd, omd_nohint, ogd) on a SEA sequence: "
                "static and dynamic regret", overwrite=True)
def online(context, learner: str = "oomd", schedule: str = "fixed", sigma: float = 0.0,
           dim: int = 10, horizon: int = 4000, scale: float = 0.5):
    """Regret of ``learner`` over ``horizon`` rounds, read at ``rounds`` checkpoints."""
    if learner not in LEARNERS:
        raise ValueError(f"learner {learner!r}: choose one of {', '.join(LEARNERS)}")
    checkpoints = context.experiment.rounds
    if horizon < checkpoints:
        raise ValueError(f"horizon {horizon} is shorter than the {checkpoints} checkpoints "
                         "(rounds)")
    if learner == "ogd":
        player = OGD(radius=1.0, grad_bound=1.0 + scale + sigma * math.sqrt(dim))
    else:
        player = OOMD(radius=1.0, delta=1.0, smoothness=1.0, optimistic=learner == "oomd")
    c, xi = SEASequence(dim=dim, schedule=schedule, sigma=sigma, scale=scale,
                        seed=context.seed).draw(horizon)
    points = [round(horizon * (k + 1) / checkpoints) for k in range(checkpoints)]
    out = run_online(player, c, xi, checkpoints=points)
    for k, t in enumerate(out["checkpoints"].tolist()):
        yield {"round": k, "t": t, "regret": float(out["regret"][k]),
               "dynamic_regret": float(out["dynamic"][k])}
    return {"learner": learner, "horizon": horizon}


__all__ = ["LEARNERS", "online"]
