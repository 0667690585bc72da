"""Who talks to whom: static graphs, time-varying schedules, mixing weights, spectral gap.

Everything the engine needs is one call per round, the same for static and time-varying
topologies:

>>> import torch
>>> from murmura.topology import make_topology
>>> topo = make_topology("ring", 6, weights="metropolis", require_connected=True)
>>> W = topo.mixing_at(0)            # MixingMatrix: sparse CSR float32 [n, n]
>>> X = torch.arange(6.0).unsqueeze(1)
>>> (W.matrix @ X).mean().item(), W.out_degree.tolist()
(2.5, [2, 2, 2, 2, 2, 2])
>>> "random_matching" in TOPOLOGIES, "metropolis" in MIXING
(True, True)
"""

from murmura.topology.base import (
    StaticTopology,
    Topology,
    check_connected,
    is_connected,
    num_components,
)
from murmura.topology.factory import make_topology, topology_params
from murmura.topology.graphs import (
    TOPOLOGIES,
    complete,
    erdos_renyi,
    exponential,
    isolated,
    random_regular,
    ring,
    small_world,
    star,
    torus,
)
from murmura.topology.mixing import (
    MIXING,
    MixingFn,
    MixingMatrix,
    max_degree,
    metropolis,
    mixing_from_edges,
    mixing_from_graph,
    spectral_gap,
    uniform,
)
from murmura.topology.time_varying import (
    OnePeerExponential,
    RandomKOut,
    RandomMatching,
    TimeVaryingTopology,
)

__all__ = [
    "MIXING",
    "TOPOLOGIES",
    "MixingFn",
    "MixingMatrix",
    "OnePeerExponential",
    "RandomKOut",
    "RandomMatching",
    "StaticTopology",
    "TimeVaryingTopology",
    "Topology",
    "check_connected",
    "complete",
    "erdos_renyi",
    "exponential",
    "is_connected",
    "isolated",
    "make_topology",
    "max_degree",
    "metropolis",
    "mixing_from_edges",
    "mixing_from_graph",
    "num_components",
    "random_regular",
    "ring",
    "small_world",
    "spectral_gap",
    "star",
    "topology_params",
    "torus",
    "uniform",
]
