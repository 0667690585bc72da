"""FedOOMD: optimistic online mirror descent as a federated server optimizer (issue 16).

The server treats the clients' averaged update as an online gradient (FedOpt's
pseudo-gradient ``g_t = x_t − mean_i x_i``, the sign of FedAvgM's) and plays the next model by
optimistic OMD (Chen et al., ICML 2023; spec ``federated.md`` section 10) with the last
pseudo-gradient as the hint and the adaptive step
``η_t = min{1/(4L), D/√(δ + Σ_{s<t} ‖g_s − M_s‖²)}``: the update of
:class:`murmura.optim.oomd.OOMD`, unconstrained (``radius=None``), applied by the server's rule.
``server_diameter`` is ``D`` (the scale of the steps), ``server_smoothness`` is ``L`` (``1/(4L)``
caps the step: 0.25 for ``L = 1``, FedAvg's step being 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from murmura.algorithms.base import ALGORITHMS, Algorithm, RoundContext, Tensor
from murmura.algorithms.federated import _federated
from murmura.algorithms.plans import Vectors
from murmura.algorithms.rules import SGD
from murmura.optim.oomd import OOMD, OOMDState


@dataclass(frozen=True)
class OptimisticServer:
    """The server's OOMD state as tensors (checkpointed like every server state): the played
    model ``params``, ``x_hat``, the hint and the running ``Σ ‖g − M‖²``."""

    diameter: float = 1.0
    smoothness: float = 0.25
    delta: float = 1e-8

    @property
    def learner(self) -> OOMD:
        return OOMD(radius=None, diameter=self.diameter, delta=self.delta,
                    smoothness=self.smoothness)

    def init(self, params: Tensor) -> Vectors:
        return {"params": params.clone(), "x_hat": params.clone(),
                "hint": torch.zeros_like(params),
                "sq_sum": torch.zeros((), dtype=torch.float64)}

    def update(self, state: Vectors, aggregate: Vectors, ctx: RoundContext
               ) -> tuple[Vectors, Vectors]:
        g = state["params"] - aggregate["params"]
        before = OOMDState(state["x_hat"], state["hint"], state["sq_sum"], ctx.round)
        x, after = self.learner.update(g, before)
        x = x.to(state["params"].dtype)
        return {"params": x}, {"params": x, "x_hat": after.x_hat, "hint": after.hint,
                               "sq_sum": after.sq_sum}


@ALGORITHMS.register("fedoomd", "FedOOMD: optimistic OMD with an adaptive step as the server "
                     "optimizer of the clients' averaged update")
def fedoomd(lr: float = 0.05, server_diameter: float = 1.0, server_smoothness: float = 0.25,
            server_delta: float = 1e-8, local_epochs: float | None = None,
            local_steps: int | None = None, batch_size: int = 32,
            fraction: float | None = None, clients_per_round: int | None = None,
            participation: str | dict | None = None) -> Algorithm:
    """FedAvg's clients; the server plays optimistic OMD on their averaged update (see the
    module docstring; the defaults cap the step at FedAvg's, 1)."""
    server = OptimisticServer(server_diameter, server_smoothness, server_delta)
    server.learner  # validates the constants now  # noqa: B018
    return _federated("fedoomd", SGD(lr), server, dict(locals()) | {"server": None})


__all__ = ["OptimisticServer", "fedoomd"]
