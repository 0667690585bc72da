"""Learners: tools a practitioner uses around federated training.

* :mod:`~murmura.learners.fewshot`: transductive few-shot inference (SimpleShot, K-means,
  SLK) over a batch of tasks, on any model's features; the ``fewshot`` kind.
* :mod:`~murmura.learners.gbnn`: GBNN, a one-hidden-layer network trained stage by stage with
  gradient boosting (:class:`GBNNClassifier`, :class:`GBNNRegressor`), exported as one
  ``torch.nn.Sequential`` a swarm can start from.
"""

from murmura.learners.fewshot import cl2n, infer, kmeans, sample_tasks, simpleshot, slk
from murmura.learners.gbnn import GBNNClassifier, GBNNRegressor

__all__ = ["GBNNClassifier", "GBNNRegressor", "cl2n", "infer", "kmeans", "sample_tasks",
           "simpleshot", "slk"]
