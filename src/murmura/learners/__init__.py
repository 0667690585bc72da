"""Learners: tools a practitioner uses around federated training.

* :mod:`~murmura.learners.fewshot`: transductive few-shot inference (SimpleShot, K-means,
  SLK) over a batch of tasks, on any model's features; the ``fewshot`` kind.
* :mod:`~murmura.learners.gbnn`: GBNN, a one-hidden-layer network trained stage by stage with
  gradient boosting (:class:`GBNNClassifier`, :class:`GBNNRegressor`), exported as one
  ``torch.nn.Sequential`` a swarm can start from.
* :mod:`~murmura.learners.gbrl`: GBRL, a gradient-boosted-trees actor-critic
  (:class:`GradientBoostedTrees` with ``step(X, grads)``, :class:`TreeActorCritic`) trained by
  :func:`~murmura.learners.ppo.train_ppo`, the one PPO loop NN-PPO's :class:`MLPActorCritic`
  also runs in (:mod:`~murmura.learners.rl_envs`: gymnasium's vector envs and the spec's
  categorical bandit); the ``gbrl`` kind.
"""

from murmura.learners.fewshot import cl2n, infer, kmeans, sample_tasks, simpleshot, slk
from murmura.learners.gbnn import GBNNClassifier, GBNNRegressor
from murmura.learners.gbrl import GradientBoostedTrees, TreeActorCritic
from murmura.learners.ppo import MLPActorCritic, PPOConfig, train_ppo

__all__ = ["GBNNClassifier", "GBNNRegressor", "GradientBoostedTrees", "MLPActorCritic",
           "PPOConfig", "TreeActorCritic", "cl2n", "infer", "kmeans", "sample_tasks", "simpleshot",
           "slk", "train_ppo"]
