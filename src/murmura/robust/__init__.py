"""Robustness: aggregators, pre-aggregators and attacks, each a per-node function, the adversary
that places malicious nodes (see docs/rules.md), and the same rules as a library on ``[n, d]``
vectors (:func:`aggregate`, :func:`preaggregate`, :func:`attack`, ByzFL's parameter names)."""

from murmura.robust.adversary import Adversary
from murmura.robust.aggregators import (
    AGGREGATORS,
    Average,
    Meamed,
    Median,
    TrimmedMean,
    make_aggregator,
)
from murmura.robust.attacks import (
    ALIE,
    ATTACKS,
    IPM,
    Gaussian,
    Inf,
    LabelFlip,
    Mimic,
    SignFlip,
    make_attack,
)
from murmura.robust.bristle import Bristle, frozen_features
from murmura.robust.centre_rules import CenteredClipping, GeometricMedian
from murmura.robust.distance_rules import MDA, Krum, MoNNA, MultiKrum
from murmura.robust.flag import FlagAggregator
from murmura.robust.graph_attacks import Dissensus, Equivocation
from murmura.robust.graph_rules import Bulyan, SelfCenteredClipping, bridge, minimum_neighbours
from murmura.robust.library import aggregate, attack, preaggregate
from murmura.robust.optimal_attacks import MinMax, MinSum, OptimalALIE, OptimalIPM
from murmura.robust.preaggregators import (
    ARC,
    NNM,
    PREAGGREGATORS,
    Bucketing,
    Chained,
    Clipping,
    make_preaggregator,
)
from murmura.robust.spectral_rules import CAF, SMEA
from murmura.robust.sybilwall import HistoryGossip, SybilWall, foolsgold_weights

__all__ = [
    "AGGREGATORS", "ALIE", "ARC", "ATTACKS", "CAF", "IPM", "MDA", "NNM", "PREAGGREGATORS", "SMEA",
    "Adversary", "Average", "Bristle", "Bucketing", "Bulyan", "CenteredClipping", "Chained",
    "Clipping",
    "Dissensus", "Equivocation", "FlagAggregator", "Gaussian", "GeometricMedian",
    "HistoryGossip", "Inf", "Krum",
    "LabelFlip",
    "Meamed", "Median", "Mimic", "MinMax", "MinSum", "MoNNA", "MultiKrum", "OptimalALIE",
    "OptimalIPM", "SelfCenteredClipping", "SignFlip", "SybilWall", "TrimmedMean", "aggregate",
    "attack", "foolsgold_weights",
    "bridge", "frozen_features", "make_aggregator", "make_attack", "make_preaggregator",
    "minimum_neighbours", "preaggregate",
]
