"""The federated active-learning loop (KAFAL's main loop: Cao et al., ICCV 2023; code
github.com/ycao5602/KAFAL, ``main.py``, ``__main__``)::

    per client k: shuffle D_k (keyed by seed, k); labelled L_k = the first ceil(f0 |D_k|),
                  unlabelled U_k = the rest
    for cycle = 1..C:
        a fresh global model (a new Simulation, its seed drawn from (seed, cycle))
        R rounds of federated training on the labelled sets (an algorithm and a task:
            kafal + kcfu is KAFAL's KCFU; kafal + classification is FedAvg)
        record the global model's test accuracy and the labelled set sizes
        unless it is the last cycle: every client scores U_k (an acquisition function,
            vmapped over clients) and moves its top b_k = ceil(fb |D_k|) to L_k

Each cycle is a :class:`~murmura.swarm.engine.Simulation` over
``FederatedData.from_parts(dataset, L).with_pool("unlabelled", U)``, so the engine's sizes (the
server's weights) and label counts are the labelled sets', and the KCFU task reads its
unlabelled batches from ``U``. The acquisition after the last cycle, which the code also runs,
changes no recorded number and is skipped. Pools are index arrays; moving the chosen samples is
bookkeeping outside every rule, one array per client.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.func import functional_call, vmap

from murmura.active.acquisition import make_acquisition, top_b
from murmura.data import FederatedData
from murmura.swarm.random import hash_keys, node_keys, stream_id

Tensor = torch.Tensor


@dataclass
class ActiveLearningResult:
    """One record per cycle (``cycle``, ``test_accuracy``, ``test_loss``, ``labelled_total``,
    ``labelled_fraction``, ``labelled_per_client``, ``seconds``) and the final pools."""

    records: list[dict[str, Any]]
    labelled: list[np.ndarray]
    unlabelled: list[np.ndarray]
    history: list[Any] = field(default_factory=list, repr=False)  # each cycle's History

    @property
    def final(self) -> dict[str, Any]:
        return self.records[-1]


def _count(fraction: float, size: int) -> int:
    """``ceil(fraction · size)``, robust to float error (0.1 · 30 is 3, not 4)."""
    return math.ceil(fraction * size - 1e-9)


def initial_pools(data: FederatedData, fraction: float, seed: int
                  ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each client's labelled set (the first ``ceil(fraction |D_k|)`` of its samples after a
    shuffle keyed by (seed, k)) and its unlabelled rest, both sorted index arrays."""
    labelled, unlabelled = [], []
    for k, part in enumerate(data.parts):
        order = np.random.default_rng([int(seed), k, 0xA1]).permutation(len(part))
        first = _count(fraction, len(part))
        labelled.append(np.sort(part[order[:first]]))
        unlabelled.append(np.sort(part[order[first:]]))
    return labelled, unlabelled


def _logits(sim: Any, rows: Tensor, x: Tensor, chunk: int = 1024) -> Tensor:
    """``[n, U, C]``: node i's model ``rows[i]`` on its samples ``x[i]`` (in chunks of U)."""
    def one(row: Tensor, xb: Tensor) -> Tensor:
        return functional_call(sim.model, (sim.spec.views(row), sim.buffers), (xb,))

    with torch.no_grad():
        return torch.cat([vmap(one)(rows, x[:, s:s + chunk])
                          for s in range(0, x.shape[1], chunk)], dim=1)


def choose(sim: Any, acquisition: Any, budgets: Tensor, seed: int, cycle: int) -> Tensor:
    """bool ``[n, U]``: each client's top-``budgets[k]`` unlabelled samples (positions in its
    pool's row of ``sim.data.pools["unlabelled"]``) by ``acquisition``, vmapped over clients."""
    table, sizes = sim.data.pools["unlabelled"]
    n, width = table.shape
    valid = torch.arange(width, device=table.device) < sizes.unsqueeze(1)
    dataset = sim.data.dataset
    x = dataset.train_x[table.reshape(-1)].view(n, width, *dataset.feature_shape)
    none = torch.zeros(n, width, dataset.num_classes, device=table.device)
    local = glob = none
    if "local" in acquisition.models:
        if "local" not in sim.node_state:
            raise ValueError(
                f"acquisition {acquisition.name!r} compares each client's local model with the "
                f"global one, which algorithm {sim.algorithm.name!r} does not keep: use "
                "algorithm 'kafal' (its after-local step keeps the local model)")
        local = _logits(sim, sim.node_state["local"], x)
    if "global" in acquisition.models:
        params = sim.params  # every row holds the server's average (exactly, after a round)
        row = params[0] if bool((params == params[0]).all()) else params.mean(0)
        rows = row.expand(n, -1)
        glob = _logits(sim, rows, x)
    keys = node_keys(seed, "acquisition", torch.arange(n, device=table.device), cycle)
    counts = sim.data.label_counts().to(table.device)
    scores = vmap(acquisition)(local, glob, counts, keys)
    return vmap(top_b)(scores, valid, budgets.to(table.device))


def _check(data: Any, cycles: int, rounds: int, initial_fraction: float,
           budget_fraction: float) -> None:
    if not isinstance(data, FederatedData):
        raise ValueError(f"data must be a FederatedData (each client's whole local set, e.g. "
                         f"murmura.data.federate(...)), got {type(data).__name__}")
    for name, value in (("cycles", cycles), ("rounds", rounds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    for name, value in (("initial_fraction", initial_fraction),
                        ("budget_fraction", budget_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise ValueError(f"{name} must be a number strictly between 0 and 1, got {value!r}")
    for k, part in enumerate(data.parts):
        size = len(part)
        left = size - _count(initial_fraction, size) - (cycles - 1) * _count(budget_fraction,
                                                                             size)
        if size == 0 or left < 1:
            raise ValueError(
                f"client {k} holds {size} samples: too few for an initial labelled set, "
                f"{cycles - 1} acquisitions of ceil({budget_fraction} |D_k|) and one unlabelled "
                "sample left; use fewer cycles, smaller fractions, or a partition with a larger "
                "min_size")


def run_active_learning(
    data: FederatedData,
    *,
    acquisition: str | Any = "ksas",
    task: str | Any = "kcfu",
    algorithm: str | Any = "kafal",
    algorithm_kwargs: dict[str, Any] | None = None,
    model: str | Any = "mlp",
    model_kwargs: dict[str, Any] | None = None,
    cycles: int = 4,
    rounds: int = 10,
    initial_fraction: float = 0.1,
    budget_fraction: float = 0.05,
    seed: int = 0,
    chunk_size: int | None = None,
) -> ActiveLearningResult:
    """Federated active learning over ``data`` (each client's whole local set ``D_k``; module
    docstring): ``cycles`` cycles of ``rounds`` rounds of ``algorithm`` (a name with
    ``algorithm_kwargs``, or an Algorithm) under ``task``, each followed but the last by
    ``acquisition`` (``"ksas"``, ``"entropy"``, ``"random"`` or a callable, see
    :mod:`murmura.active.acquisition`) labelling ``ceil(budget_fraction |D_k|)`` samples per
    client. The defaults are KAFAL: KSAS + KCFU (``task="kcfu"``, ``algorithm="kafal"``).

    >>> from murmura.data import federate
    >>> data = federate("digits", 4, "dirichlet", alpha=0.5, seed=0)
    >>> result = run_active_learning(data, cycles=2, rounds=1, model_kwargs={"hidden": [16]})
    >>> [r["labelled_total"] for r in result.records]
    [128, 194]
    """
    from murmura.swarm.engine import Evaluation, Simulation

    _check(data, cycles, rounds, initial_fraction, budget_fraction)
    acquire = make_acquisition(acquisition)
    labelled, unlabelled = initial_pools(data, initial_fraction, seed)
    sizes = [len(p) for p in data.parts]
    budgets = torch.tensor([_count(budget_fraction, s) for s in sizes])
    records, histories = [], []
    for cycle in range(cycles):
        start = time.perf_counter()
        fed = FederatedData.from_parts(data.dataset, labelled).with_pool("unlabelled", unlabelled)
        cycle_seed = int(hash_keys(seed, stream_id("active-cycle"), cycle)) & 0x7FFFFFFF
        sim = Simulation(fed, model, algorithm, seed=cycle_seed, model_kwargs=model_kwargs,
                         algorithm_kwargs=algorithm_kwargs, task=task, chunk_size=chunk_size,
                         evaluation=Evaluation(every=rounds, node_samples=0))
        history = sim.run(rounds)
        histories.append(history)
        counts = [len(p) for p in labelled]
        records.append({"cycle": cycle, "test_accuracy": history.final["test_accuracy"],
                        "test_loss": history.final["test_loss"],
                        "labelled_total": sum(counts),
                        "labelled_fraction": sum(counts) / sum(sizes),
                        "labelled_per_client": counts})
        if cycle < cycles - 1:
            chosen = choose(sim, acquire, budgets, seed, cycle).cpu().numpy()
            table, pool_sizes = (t.cpu().numpy() for t in fed.pools["unlabelled"])
            for k in range(len(labelled)):
                pool = table[k, : pool_sizes[k]]
                picked = chosen[k, : pool_sizes[k]]
                labelled[k] = np.sort(np.concatenate([labelled[k], pool[picked]]))
                unlabelled[k] = pool[~picked]
        records[-1]["seconds"] = time.perf_counter() - start
    return ActiveLearningResult(records, labelled, unlabelled, histories)


__all__ = ["ActiveLearningResult", "choose", "initial_pools", "run_active_learning"]
