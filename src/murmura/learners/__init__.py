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

import murmura.learners.gbnn_kind  # noqa: F401  (registers the gbnn kind)
from murmura.learners.fewshot import cl2n, infer, kmeans, sample_tasks, simpleshot, slk
from murmura.learners.gbrl import GradientBoostedTrees, TreeActorCritic
from murmura.learners.ppo import MLPActorCritic, PPOConfig, train_ppo


def __getattr__(name: str):
    # GBNN's estimators subclass scikit-learn's, whose import costs about a second: loaded
    # when first asked for, not on `import murmura`
    if name in ("GBNNClassifier", "GBNNRegressor"):
        from murmura.learners import gbnn

        return getattr(gbnn, name)
    raise AttributeError(f"module 'murmura.learners' has no attribute {name!r}")


__all__ = ["GBNNClassifier", "GBNNRegressor", "GradientBoostedTrees", "MLPActorCritic",
           "PPOConfig", "TreeActorCritic", "cl2n", "infer", "kmeans", "sample_tasks", "simpleshot",
           "slk", "train_ppo"]
