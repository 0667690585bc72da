"""The PPO arms both GBRL scripts compare (run.py's CartPole pilot, toytext.py's tasks):
GBRL's tree actor-critic with gbrl_sb3's CartPole settings, and NN-PPO under the same
rollouts. One definition, so the two experiments' arms cannot drift apart."""

from __future__ import annotations

import statistics
from typing import Any

ARMS = ("gbrl", "trees_sklearn", "nn_ppo")
# the gbrl library's defaults in gbrl_sb3: oblivious trees, cosine split score, 250 bins
GBRL_TREES = {"split_score": "cosine", "grow_policy": "oblivious", "n_bins": 250}


def ppo_arm(arm: str, n_features: int, n_actions: int, seed: int,
            categorical: bool = False) -> tuple[Any, Any]:
    """``(learner, PPOConfig)`` of ``arm``: ``gbrl`` (the library's trees; ``categorical``:
    equality splits on codes), ``trees_sklearn`` (native trees, greedy, L2) or ``nn_ppo``
    (64-64 tanh MLPs, Adam lr 1e-3, vf_coef 1.0 = SB3's 0.5 on an un-halved MSE)."""
    from murmura.learners.gbrl import TreeActorCritic
    from murmura.learners.ppo import MLPActorCritic, PPOConfig

    if arm == "nn_ppo":
        return MLPActorCritic(n_features, n_actions, lr=1e-3, seed=seed), PPOConfig(vf_coef=1.0)
    if arm not in ARMS:
        raise ValueError(f"arm {arm!r}: choose one of {', '.join(ARMS)}")
    library = arm == "gbrl"
    learner = TreeActorCritic(n_features, n_actions, policy_lr=0.029, value_lr=0.015,
                              backend="gbrl" if library else "sklearn",
                              max_policy_grad_norm=100.0, max_value_grad_norm=10.0, seed=seed,
                              categorical=library and categorical,
                              **(GBRL_TREES if library else {}))
    return learner, PPOConfig()


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.mean(values), "std": statistics.pstdev(values)}
