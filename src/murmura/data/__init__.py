"""Datasets, partitioners and the per-node data the engine consumes.

>>> from murmura.data import federate, partition_stats
>>> fed = federate("digits", num_nodes=10, partition="shards", classes_per_node=2, seed=0)
>>> max(fed.stats()["classes_per_node"]) <= 4
True

Datasets are found by name in :data:`DATASETS` (``fashion_mnist``, ``digits``, ``synthetic``,
``mnist``, ``cifar10``), partitioners in :data:`PARTITIONERS` (``iid``, ``dirichlet``,
``shards``/``pathological``, ``class_disjoint``, ``quantity_skew``); register your own the
same way.
"""

from murmura.data import text as _text  # noqa: F401  (registers python_docs)
from murmura.data.dataset import DATASETS, Dataset, load_dataset
from murmura.data.datasets import DataFormatError, DataNotFoundError
from murmura.data.federated import FederatedData, federate
from murmura.data.partition import PARTITIONERS, partition, partition_stats

__all__ = [
    "DATASETS",
    "PARTITIONERS",
    "DataFormatError",
    "DataNotFoundError",
    "Dataset",
    "FederatedData",
    "federate",
    "load_dataset",
    "partition",
    "partition_stats",
]
