"""Online and black-box optimizers that are not tied to the swarm engine.

:mod:`~murmura.optim.oomd`: optimistic online mirror descent for the SEA model (spec
``federated.md`` section 10) as pure functions (:class:`OOMD`, :class:`OptimisticONS`) and as
a torch optimizer (:class:`OptimisticOMD`, alias :data:`OptimisticOGD`);
:mod:`~murmura.optim.online`: SEA loss sequences, the exact :class:`RegretTracker`, and the
:class:`OGD` baseline.

>>> from murmura.optim import OOMD, SEASequence, run_online
>>> c, xi = SEASequence(dim=2, sigma=0.0).draw(50)
>>> out = run_online(OOMD(radius=1.0, smoothness=1.0), c, xi)
>>> bool(out["regret"][-1] < 1.0)
True
"""

from murmura.optim.online import (
    OGD,
    RegretTracker,
    SEASequence,
    adversarial_variation,
    grad,
    loss,
    run_online,
    stochastic_variance,
)
from murmura.optim.oomd import (
    OOMD,
    ONSState,
    OOMDState,
    OptimisticOGD,
    OptimisticOMD,
    OptimisticONS,
    adaptive_step,
    project_ball,
    project_ball_norm,
    strongly_convex_step,
)

__all__ = [
    "OGD", "ONSState", "OOMD", "OOMDState", "OptimisticOGD", "OptimisticOMD", "OptimisticONS",
    "RegretTracker", "SEASequence", "adaptive_step", "adversarial_variation", "grad", "loss",
    "project_ball", "project_ball_norm", "run_online", "stochastic_variance",
    "strongly_convex_step",
]
