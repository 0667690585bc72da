"""The ``fed_blackbox`` kind: a federated zeroth-order method of ``BLACKBOX`` run by
:func:`~murmura.blackbox.driver.fed_rounds` on the paper's heterogeneous quadratic, one record
per round (``F(x)`` at the server's point against the queries and bytes spent), so FZooS and
its baselines run from a TOML file through ``murmura run`` like every other tool::

    kind = { name = "fed_blackbox", method = "fzoos", dim = 300, clients = 5, div = 1.0 }
"""

from __future__ import annotations

from typing import Any


def _register_kind() -> None:
    from murmura.runner.kinds import KINDS

    @KINDS.register("fed_blackbox", "federated zeroth-order optimization (fzoos, fedzo, "
                    "scaffold_zo, fedprox_zo) of the heterogeneous quadratic: F(x) per round "
                    "against queries", overwrite=True)
    def fed_blackbox(context, method: str = "fzoos", dim: int = 300, clients: int = 5,
                     div: float = 1.0, local_iters: int = 5, **method_params: Any):
        """``rounds`` (the experiment's) rounds of ``method`` (its parameters: the other
        keys) on ``Quadratic(dim, clients, div)`` drawn from the experiment's seed; record
        ``round`` r is after round r + 1 (the start's value is in the summary)."""
        from murmura.blackbox.driver import fed_rounds
        from murmura.blackbox.methods import BLACKBOX
        from murmura.blackbox.problems import Quadratic

        if method not in BLACKBOX:
            raise ValueError(f"method {method!r}: choose one of {', '.join(BLACKBOX.names())}")
        problem = Quadratic(dim=dim, num_clients=clients, div=div, seed=context.seed)
        rounds = fed_rounds(problem, method, context.experiment.rounds, local_iters,
                            context.seed, **method_params)
        minimum = problem.minimum()
        start = next(rounds)
        for result in rounds:
            r = len(result.values) - 1
            yield {"round": r - 1, "value": result.values[r], "gap": result.values[r] - minimum,
                   "queries": float(result.queries[r]), "bytes_up": float(result.bytes_up[r]),
                   "bytes_down": float(result.bytes_down[r])}
        return {"method": method, "minimum": minimum, "start_value": start.values[0],
                "params": start.params}


_register_kind()
