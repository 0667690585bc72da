"""murmura: decentralized and federated learning, every rule written for one node and run for
all nodes at once.

>>> import murmura
>>> data = murmura.federate("digits", num_nodes=4, partition="iid", seed=0)
>>> sim = murmura.Simulation(data, "logreg", "fedavg", algorithm_kwargs={"local_steps": 2})
>>> len(sim.run(rounds=2))
2
"""

__version__ = "0.1.0"

import murmura.learners  # noqa: E402, F401  (registers the learners' kinds)
import murmura.optim.blackbox  # noqa: E402, F401  (registers the blackbox kind)
import murmura.optim.kinds  # noqa: E402, F401  (registers the online kind)
import murmura.select  # noqa: E402, F401  (registers the metainf kind)
from murmura.algorithms import ALGORITHMS, make_algorithm  # noqa: E402
from murmura.algorithms.compressors import COMPRESSORS  # noqa: E402
from murmura.blackbox import BLACKBOX, fed_minimize  # noqa: E402
from murmura.data import DATASETS, PARTITIONERS, federate, load_dataset  # noqa: E402
from murmura.models import MODELS, build_model  # noqa: E402
from murmura.robust import AGGREGATORS, ATTACKS, PREAGGREGATORS, Adversary  # noqa: E402
from murmura.runner.kinds import KINDS  # noqa: E402
from murmura.swarm.engine import Evaluation, Simulation  # noqa: E402
from murmura.tasks import TASKS  # noqa: E402
from murmura.topology import TOPOLOGIES, make_topology  # noqa: E402

__all__ = [
    "AGGREGATORS", "ALGORITHMS", "ATTACKS", "BLACKBOX", "COMPRESSORS", "DATASETS", "KINDS",
    "MODELS", "PARTITIONERS", "PREAGGREGATORS", "TASKS", "TOPOLOGIES", "Adversary", "Evaluation",
    "Simulation", "__version__", "build_model", "fed_minimize", "federate", "load_dataset",
    "make_algorithm", "make_topology",
]
