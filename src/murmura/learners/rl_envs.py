"""Vectorized discrete-action environments for :func:`murmura.learners.ppo.train_ppo`.

Spec ``federated.md`` section 13 (GBRL), (e): :class:`ContextualBandit` is the spec's pilot 2,
a contextual bandit on categorical features whose rewarded action depends on interactions of
2-3 categories, needing nothing beyond numpy; :class:`GymVectorEnv` wraps ``n`` copies of a
gymnasium env (``pip install murmura[rl]``) in a ``SyncVectorEnv``. Both follow one small
protocol: ``reset(seed)`` returns the encoded observations ``[n_envs, n_features]``;
``step(actions)`` returns ``(next_obs, rewards, terminated, truncated, final_obs)``, an
episode's end resetting that copy in the same step (``final_obs`` holds the observation the
episode ended on, to bootstrap a truncation from).

>>> bandit = ContextualBandit(n_envs=3, task_seed=0)
>>> X = bandit.reset(seed=0)
>>> X.shape, bandit.n_actions
((3, 6), 4)
>>> _, reward, terminated, _, _ = bandit.step(bandit.optimal_action(bandit.contexts))
>>> reward.tolist(), terminated.tolist()
([1.0, 1.0, 1.0], [True, True, True])
"""

from __future__ import annotations

from typing import Any

import numpy as np

RL_EXTRA = "pip install murmura[rl]"


class ContextualBandit:
    """Contexts of ``n_features`` categorical features with ``n_categories`` values each; the
    rewarded action (reward 1, else 0) is ``table_a[x0, x1]`` when ``x2 < n_categories / 2`` and
    ``table_b[x3, x4]`` otherwise: a 3-way interaction gating two 2-way lookups (tables drawn
    uniformly from the actions by ``task_seed``); further features are noise.

    ``encoding = "codes"`` observes the integer codes (what a tree splits on), ``"onehot"`` one
    indicator per (feature, category) pair (what the spec gives the MLP).
    """

    def __init__(self, n_envs: int = 64, n_features: int = 6, n_categories: int = 8,
                 n_actions: int = 4, encoding: str = "codes", task_seed: int = 0) -> None:
        if n_features < 5:
            raise ValueError(f"n_features must be >= 5 (the rule reads x0..x4), got {n_features}")
        if n_categories < 2 or n_actions < 2 or n_envs < 1:
            raise ValueError(f"n_categories and n_actions must be >= 2 and n_envs >= 1, got "
                             f"{n_categories}, {n_actions}, {n_envs}")
        if encoding not in ("codes", "onehot"):
            raise ValueError(f"encoding {encoding!r}: choose codes or onehot")
        self.num_envs, self.n_actions = n_envs, n_actions
        self.n_categories, self.n_raw_features, self.encoding = n_categories, n_features, encoding
        self.n_features = n_features * (n_categories if encoding == "onehot" else 1)
        tables = np.random.default_rng(task_seed).integers(n_actions, size=(2, n_categories,
                                                                             n_categories))
        self.table_a, self.table_b = tables
        self._rng = np.random.default_rng(0)
        self.contexts = np.zeros((n_envs, n_features), np.int64)

    def sample_contexts(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(self.n_categories, size=(n, self.n_raw_features))

    def optimal_action(self, contexts: np.ndarray) -> np.ndarray:
        first = contexts[:, 2] < self.n_categories // 2
        return np.where(first, self.table_a[contexts[:, 0], contexts[:, 1]],
                        self.table_b[contexts[:, 3], contexts[:, 4]])

    def encode(self, contexts: np.ndarray) -> np.ndarray:
        if self.encoding == "codes":
            return contexts.astype(np.float32)
        onehot = np.zeros((len(contexts), self.n_raw_features, self.n_categories), np.float32)
        np.put_along_axis(onehot, contexts[:, :, None], 1.0, axis=2)
        return onehot.reshape(len(contexts), -1)

    def reset(self, seed: int) -> np.ndarray:
        self._rng = np.random.default_rng(seed)
        self.contexts = self.sample_contexts(self.num_envs, self._rng)
        return self.encode(self.contexts)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, ...]:
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,):
            raise ValueError(f"actions must have shape ({self.num_envs},), got {actions.shape}")
        reward = (actions == self.optimal_action(self.contexts)).astype(np.float64)
        final = self.encode(self.contexts)
        self.contexts = self.sample_contexts(self.num_envs, self._rng)
        done = np.ones(self.num_envs, bool)
        return self.encode(self.contexts), reward, done, np.zeros(self.num_envs, bool), final

    def close(self) -> None:
        pass


def require_gymnasium() -> Any:
    try:
        import gymnasium
    except ImportError as error:
        raise ImportError(f"gymnasium environments need gymnasium: {RL_EXTRA}") from error
    return gymnasium


class GymVectorEnv:
    """``n_envs`` copies of a gymnasium env with a ``Discrete`` action space in a
    ``SyncVectorEnv`` (same-step autoreset); ``Box`` observations are flattened, ``Discrete``
    ones one-hot encoded (FrozenLake, Taxi)."""

    def __init__(self, env_id: str, n_envs: int = 8) -> None:
        gym = require_gymnasium()
        if not isinstance(n_envs, int) or n_envs < 1:
            raise ValueError(f"n_envs must be a positive integer, got {n_envs!r}")
        try:
            probe = gym.make(env_id)
        except gym.error.Error as error:
            raise ValueError(f"env {env_id!r} is not a gymnasium env here: {error}") from None
        action_space, obs_space = probe.action_space, probe.observation_space
        probe.close()
        if not isinstance(action_space, gym.spaces.Discrete):
            raise ValueError(f"env {env_id!r} has action space {action_space}: PPO here needs a "
                             "Discrete one")
        if isinstance(obs_space, gym.spaces.Discrete):
            self._onehot: int | None = int(obs_space.n)
            self.n_features = int(obs_space.n)
        elif isinstance(obs_space, gym.spaces.Box):
            self._onehot = None
            self.n_features = int(np.prod(obs_space.shape))
        else:
            raise ValueError(f"env {env_id!r} has observation space {obs_space}: use a Box or "
                             "Discrete one (wrap dict observations first)")
        self.env_id, self.num_envs, self.n_actions = env_id, n_envs, int(action_space.n)
        self._envs = gym.vector.SyncVectorEnv(
            [lambda: gym.make(env_id) for _ in range(n_envs)],
            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)

    def encode(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs)
        if self._onehot is not None:
            return np.eye(self._onehot, dtype=np.float32)[obs.astype(np.int64).reshape(-1)]
        return obs.reshape(len(obs), -1).astype(np.float32)

    def reset(self, seed: int) -> np.ndarray:
        obs, _ = self._envs.reset(seed=seed)
        self._envs.action_space.seed(seed)
        return self.encode(obs)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, ...]:
        obs, reward, terminated, truncated, info = self._envs.step(np.asarray(actions))
        X = self.encode(obs)
        final = X.copy()
        if "_final_obs" in info:
            for i in np.flatnonzero(info["_final_obs"]):
                final[i] = self.encode(np.asarray(info["final_obs"][i])[None])[0]
        return X, np.asarray(reward, np.float64), terminated, truncated, final

    def close(self) -> None:
        self._envs.close()
