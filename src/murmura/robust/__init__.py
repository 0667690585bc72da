"""Robustness: aggregators and attacks, each a per-node function, and the adversary that places
malicious nodes (see docs/rules.md)."""

from murmura.robust.adversary import Adversary
from murmura.robust.aggregators import (
    AGGREGATORS,
    Average,
    Krum,
    Median,
    TrimmedMean,
    make_aggregator,
)
from murmura.robust.attacks import ATTACKS, Gaussian, SignFlip, make_attack

__all__ = [
    "AGGREGATORS", "ATTACKS", "Adversary", "Average", "Gaussian", "Krum", "Median", "SignFlip",
    "TrimmedMean", "make_aggregator", "make_attack",
]
