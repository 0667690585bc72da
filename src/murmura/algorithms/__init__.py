"""Rules and the named algorithms composed from them (see docs/rules.md)."""

from murmura.algorithms import named as _named  # noqa: F401  (registers the built-ins)
from murmura.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    Average,
    CommunicationRule,
    LocalRule,
    LocalWork,
    Mix,
    Participation,
    RoundContext,
    Schedule,
    make_algorithm,
)
from murmura.algorithms.rules import (
    SGD,
    Every,
    FullParticipation,
    Gossip,
    Late,
    Never,
    NoCommunication,
    SampledParticipation,
    ServerAverage,
)

__all__ = [
    "ALGORITHMS", "SGD", "Algorithm", "Average", "CommunicationRule", "Every",
    "FullParticipation", "Gossip", "Late", "LocalRule", "LocalWork", "Mix", "Never",
    "NoCommunication", "Participation", "RoundContext", "SampledParticipation", "Schedule",
    "ServerAverage", "make_algorithm",
]
