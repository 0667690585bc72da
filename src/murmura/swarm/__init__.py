"""The swarm: stacked per-node state, ParamSpec, the vectorized local step, per-node randomness."""

from typing import Any

from murmura.swarm.batches import Batch, BatchSampler
from murmura.swarm.params import ParamSpec

__all__ = ["Batch", "BatchSampler", "Evaluation", "NonFiniteError", "ParamSpec", "Simulation"]


def __getattr__(name: str) -> Any:
    # The engine imports the algorithms, whose rules import murmura.swarm.random: import it lazily
    # so that `import murmura.algorithms` does not need the engine first.
    if name in ("Evaluation", "NonFiniteError", "Simulation"):
        from murmura.swarm import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'murmura.swarm' has no attribute {name!r}")
