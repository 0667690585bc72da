"""The driver: :func:`fed_minimize` runs a registered method on a federated black-box problem and
reports ``F(x)`` after every round against the number of queries spent.

Per round: every client's local iterations (``method.local_round``), the server step
``x <- x − η Σ_i w_i (x − x_i)``, then ``method.after_server`` (surrogates, control variates).
The report is the driver's alone: it evaluates the global ``F = Σ_i w_i f_i`` at the server's
``x`` (``problem.global_value``, never shown to the method), the cumulative queries of every
client (counted by the oracle the method queries through), and the bytes of the round's
messages, ``4`` bytes per number (float32 on the wire) times the method's message sizes
(spec 9 (c): FZooS sends ``x_i``, ``ν_i`` and one scalar up and receives ``x`` and ``ν_F``).
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import torch

from murmura.blackbox.methods import BLACKBOX, Method, Oracle, Run
from murmura.blackbox.problems import FederatedProblem

Tensor = torch.Tensor


@dataclass
class Result:
    """A run's trajectory, one entry per point of report (index 0: the start, before round 1;
    index ``r``: after round ``r``): ``values`` ``F(x)``, ``queries`` (all clients, cumulative),
    ``queries_per_client`` (cumulative, ``[N]`` each), ``bytes_up`` / ``bytes_down`` (that
    round's messages, all clients: client -> server and server -> clients)."""

    method: str
    params: dict[str, Any]
    x: Tensor
    values: list[float] = field(default_factory=list)
    queries: list[int] = field(default_factory=list)
    queries_per_client: list[list[int]] = field(default_factory=list)
    bytes_up: list[int] = field(default_factory=list)
    bytes_down: list[int] = field(default_factory=list)

    def value_at(self, budget: int) -> float:
        """``F`` after the last round completed within ``budget`` queries (all clients); NaN
        when even the start costs more."""
        within = [v for v, q in zip(self.values, self.queries) if q <= budget]
        return within[-1] if within else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "params": self.params, "x": self.x.tolist(),
                "values": self.values, "queries": self.queries,
                "queries_per_client": self.queries_per_client, "bytes_up": self.bytes_up,
                "bytes_down": self.bytes_down}


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"fed_minimize: {name} must be a positive integer, got {value!r}")
    return value


def fed_minimize(problem: FederatedProblem, method: str | Method = "fzoos", rounds: int = 15,
                 local_iters: int = 5, seed: int = 0, x0: Tensor | None = None,
                 bytes_per_value: int = 4, **method_params: Any) -> Result:
    """Minimize ``F = Σ_i w_i f_i`` over ``rounds`` rounds of ``local_iters`` local iterations
    with a method from ``BLACKBOX`` (a name and its parameters, or a built method).

    >>> from murmura.blackbox import Quadratic
    >>> res = fed_minimize(Quadratic(dim=4, num_clients=2, seed=0), "fedzo", rounds=2,
    ...                    local_iters=2, q=4)
    >>> res.queries, res.values[-1] < res.values[0]
    ([0, 22, 44], True)
    """
    rounds_run = fed_rounds(problem, method, rounds, local_iters, seed, x0, bytes_per_value,
                            **method_params)
    while True:
        try:
            next(rounds_run)
        except StopIteration as done:
            return done.value


def fed_rounds(problem: FederatedProblem, method: str | Method = "fzoos", rounds: int = 15,
               local_iters: int = 5, seed: int = 0, x0: Tensor | None = None,
               bytes_per_value: int = 4, **method_params: Any
               ) -> Generator[Result, None, Result]:
    """:func:`fed_minimize` one round at a time: yields the growing :class:`Result` after the
    start and after every round (the ``fed_blackbox`` kind writes each as it comes), and
    returns it."""
    rounds, local_iters = _check_int("rounds", rounds), _check_int("local_iters", local_iters)
    _check_int("bytes_per_value", bytes_per_value)
    for name in ("dim", "num_clients", "weights", "query", "global_value"):
        if not hasattr(problem, name):
            raise ValueError(f"fed_minimize: problem has no {name!r}; it must follow "
                             f"murmura.blackbox.FederatedProblem")
    n, d = problem.num_clients, problem.dim
    weights = torch.as_tensor(problem.weights, dtype=torch.float64)
    if tuple(weights.shape) != (n,) or bool((weights < 0).any()):
        raise ValueError(f"fed_minimize: problem.weights must be {n} non-negative numbers, got "
                         f"shape {tuple(weights.shape)}")
    if isinstance(method, str):
        name, algo = method, BLACKBOX.get(method)(**method_params)
    elif isinstance(method, Method):
        if method_params:
            raise ValueError("fed_minimize: pass parameters with a method name, or build the "
                             "method with them, not both")
        name = next((n for n in BLACKBOX.names() if BLACKBOX.get(n) is type(method)),
                    type(method).__name__)
        algo = method
    else:
        raise ValueError(f"fed_minimize: method must be a name from BLACKBOX "
                         f"({', '.join(BLACKBOX.names())}) or a Method, got {method!r}")
    x = torch.as_tensor(problem.x0 if x0 is None else x0, dtype=torch.float64)
    if tuple(x.shape) != (d,):
        raise ValueError(f"fed_minimize: x0 must have shape ({d},) (the problem's dim), got "
                         f"{tuple(x.shape)}")
    run = Run(problem, Oracle(problem), int(seed), rounds, local_iters)
    algo.start(run, x)
    result = Result(name, algo.params(), x)
    up, down = algo.message_values(d)

    def report(sent: int, received: int) -> None:
        result.values.append(float(problem.global_value(x)))
        result.queries.append(int(run.oracle.counts.sum()))
        result.queries_per_client.append(run.oracle.counts.tolist())
        result.bytes_up.append(sent)
        result.bytes_down.append(received)

    report(0, 0)
    yield result
    for r in range(rounds):
        x_local = algo.local_round(run, x, r)
        x = x - algo.eta * (weights @ (x - x_local))
        algo.after_server(run, x, x_local, r)
        report(n * up * bytes_per_value, n * down * bytes_per_value)
        result.x = x
        yield result
    return result
