"""Learners: tools a practitioner uses around federated training.

* :mod:`~murmura.learners.fewshot`: transductive few-shot inference (SimpleShot, K-means,
  SLK) over a batch of tasks, on any model's features; the ``fewshot`` kind.
"""

from murmura.learners.fewshot import cl2n, infer, kmeans, sample_tasks, simpleshot, slk

__all__ = ["cl2n", "infer", "kmeans", "sample_tasks", "simpleshot", "slk"]
