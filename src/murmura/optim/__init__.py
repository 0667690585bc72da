"""Online and black-box optimizers that are not tied to the swarm engine.

:mod:`~murmura.optim.oomd`: optimistic online mirror descent for the SEA model (spec
``federated.md`` section 10) as pure functions (:class:`OOMD`, :class:`OptimisticONS`) and as
a torch optimizer (:class:`OptimisticOMD`, alias :data:`OptimisticOGD`);
:mod:`~murmura.optim.online`: SEA loss sequences, the exact :class:`RegretTracker`, and the
:class:`OGD` baseline. :mod:`~murmura.optim.blackbox`: optimization through a trained network
(spec section 14), :func:`minimize` by directional attacks (:mod:`~murmura.optim.directional`),
cDSM (:mod:`~murmura.optim.cdsm`) or their hybrid, on a :class:`Problem`
(:mod:`~murmura.optim.network_problems`: the teacher pilot, counterfactuals of a run's model).

>>> from murmura.optim import OOMD, SEASequence, run_online
>>> c, xi = SEASequence(dim=2, sigma=0.0).draw(50)
>>> out = run_online(OOMD(radius=1.0, smoothness=1.0), c, xi)
>>> bool(out["regret"][-1] < 1.0)
True
"""

from murmura.optim.blackbox import METHODS, minimize, random_starts
from murmura.optim.cdsm import Radii
from murmura.optim.directional import Attack
from murmura.optim.network_problems import (
    Problem,
    counterfactual_from_run,
    counterfactual_problem,
    load_run_model,
    predicted_class,
    teacher_problem,
)
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
    "METHODS", "OGD", "ONSState", "OOMD", "OOMDState", "Attack", "OptimisticOGD",
    "OptimisticOMD", "OptimisticONS", "Problem", "Radii", "RegretTracker", "SEASequence",
    "adaptive_step", "adversarial_variation", "counterfactual_from_run",
    "counterfactual_problem", "grad", "load_run_model", "loss", "minimize", "predicted_class",
    "project_ball", "project_ball_norm", "random_starts", "run_online", "stochastic_variance",
    "strongly_convex_step", "teacher_problem",
]
