"""``make_topology``: a topology by name, with its parameters checked before anything is built.

>>> from murmura.topology import make_topology
>>> topo = make_topology("erdos_renyi", 50, p=0.2, seed=3, require_connected=True)
>>> topo.num_nodes, topo.time_varying, topo.mixing_at(0).is_doubly_stochastic
(50, False, True)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import networkx as nx

from murmura.topology.base import StaticTopology, Topology, check_connected
from murmura.topology.graphs import TOPOLOGIES, builtin_edges, check_seed, connectivity_hint
from murmura.topology.mixing import MixingFn, _check_n, graph_edges

__all__ = ["make_topology", "topology_params"]


def topology_params(name: str) -> tuple[list[str], list[str], bool]:
    """``(accepted, required, takes_any)`` keyword parameters of a registered topology, not
    counting ``n`` and ``seed``.

    >>> topology_params("small_world")
    (['k', 'p'], ['k', 'p'], False)
    """
    return _signature_params(TOPOLOGIES.get(name))


def _signature_params(obj: Callable[..., Any]) -> tuple[list[str], list[str], bool]:
    params = list(inspect.signature(obj).parameters.values())
    # The first positional parameter is the number of nodes, whatever its name.
    if params and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        params = params[1:]
    accepted, required, takes_any = [], [], False
    for p in params:
        if p.kind == p.VAR_KEYWORD:
            takes_any = True
        elif p.kind == p.VAR_POSITIONAL or p.name == "seed":
            continue
        else:
            accepted.append(p.name)
            if p.default is p.empty:
                required.append(p.name)
    return accepted, required, takes_any


def _check_params(name: str, obj: Callable[..., Any], params: dict[str, Any]) -> bool:
    """Validate keyword names; returns whether ``obj`` accepts ``seed``."""
    accepted, required, takes_any = _signature_params(obj)
    unknown = [k for k in params if k not in accepted]
    if unknown and not takes_any:
        listed = ", ".join(accepted) if accepted else "none (besides seed and weights)"
        raise ValueError(
            f"unknown parameter{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(k) for k in unknown)} for topology {name!r}; accepted parameters: "
            f"{listed}"
        )
    missing = [k for k in required if k not in params]
    if missing:
        raise ValueError(
            f"topology {name!r} needs parameter{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)}; e.g. make_topology({name!r}, n, "
            f"{', '.join(f'{k}=...' for k in missing)})"
        )
    return "seed" in inspect.signature(obj).parameters


def make_topology(
    name: str,
    n: int,
    *,
    seed: int = 0,
    weights: str | MixingFn | None = None,
    require_connected: bool = False,
    **params: Any,
) -> Topology:
    """Build the topology registered as ``name`` on ``n`` nodes.

    Static graphs get mixing weights from ``weights`` (a name in ``MIXING`` or a rule; ``None``
    means ``"metropolis"``). Time-varying topologies fix their own weights, so passing ``weights``
    for them is an error. ``require_connected`` raises a ValueError for a disconnected static graph;
    time-varying topologies are connected only over time and are not checked.

    Unknown parameters, missing required ones, bad values and unknown names fail here, before
    anything is trained (an unknown name raises the registry's ``RegistryError``, listing names).

    >>> make_topology("random_regular", 1000, k=4).mixing_at(0).in_degree[:3].tolist()
    [4, 4, 4]
    >>> make_topology("erdos_renyi", 10, q=1)
    Traceback (most recent call last):
    ...
    ValueError: unknown parameter 'q' for topology 'erdos_renyi'; accepted parameters: p
    """
    obj = TOPOLOGIES.get(name)
    n = _check_n(n)
    seed = check_seed(seed)
    takes_seed = _check_params(name, obj, params)
    seed_kw = {"seed": seed} if takes_seed else {}

    if isinstance(obj, type) and issubclass(obj, Topology):
        if weights is not None:
            raise ValueError(
                f"topology {name!r} is time-varying and defines its own mixing weights; drop "
                f"weights={weights!r} (weights apply to static graphs only)"
            )
        topo = obj(n, **seed_kw, **params)
        if require_connected and not topo.time_varying:
            check_connected(topo)
        return topo

    weights = "metropolis" if weights is None else weights
    fast = builtin_edges(obj)
    graph: nx.Graph | None = None
    if fast is not None:
        src, dst = fast(n, seed=seed, **params)
    else:
        graph = obj(n, **seed_kw, **params)
        if not isinstance(graph, nx.Graph):
            raise ValueError(
                f"topology {name!r} returned {type(graph).__name__}, expected a networkx Graph "
                f"(or register a Topology subclass for schedules)"
            )
        if graph.number_of_nodes() != n:
            raise ValueError(
                f"topology {name!r} returned a graph with {graph.number_of_nodes()} nodes for "
                f"n={n}; a generator must return nodes 0..n-1"
            )
        src, dst, _ = graph_edges(graph)
    topo = StaticTopology(
        src,
        dst,
        n,
        name=name,
        params=params,
        seed=seed,
        weights=weights,
        graph=graph,
        connectivity_hint=connectivity_hint(obj, n, params),
    )
    if require_connected:
        check_connected(topo)
    return topo
