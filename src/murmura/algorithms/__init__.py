"""Rules and the named algorithms composed from them (see docs/rules.md)."""

# importing a module registers its algorithms in ALGORITHMS
from murmura.active import kafal as _kafal  # noqa: F401  (registers kafal)
from murmura.algorithms import (  # noqa: F401
    cbo,
    curriculum,
    decentralized,
    dfedsam,
    dimat,
    fedamd,
    fedau,
    federated,
    fedgela,
    fedoomd,
    fedspeed,
    modest,
    monna,
    named,
    ocfl,
    spsa,
    sybilwall,
    variance_corrected,
)
from murmura.algorithms.base import (
    ALGORITHMS,
    Algorithm,
    CommunicationRule,
    LocalRule,
    LocalWork,
    Participation,
    RoundContext,
    Schedule,
    make_algorithm,
)
from murmura.algorithms.plans import (
    AfterLocal,
    Aggregator,
    Attack,
    Average,
    Combiner,
    Encoder,
    Exchange,
    Mix,
    NodeState,
    SendModel,
    ServerAverageRule,
    ServerRule,
    ServerStep,
    TakeReceived,
)
from murmura.algorithms.rules import (
    SGD,
    Adam,
    Every,
    FullParticipation,
    Gossip,
    Late,
    MergeBudget,
    Never,
    NoCommunication,
    SampledParticipation,
    ServerAverage,
)

__all__ = [
    "ALGORITHMS", "SGD", "Adam", "AfterLocal", "Aggregator", "Algorithm", "Attack", "Average",
    "Combiner", "CommunicationRule", "Encoder", "Every", "Exchange", "FullParticipation", "Gossip",
    "Late", "LocalRule", "LocalWork", "Mix", "Never", "NoCommunication", "NodeState",
    "Participation", "RoundContext", "SampledParticipation", "Schedule", "SendModel",
    "ServerAverage", "ServerAverageRule", "ServerRule", "ServerStep", "TakeReceived",
    "make_algorithm", "MergeBudget",
]
