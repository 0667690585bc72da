"""Vectorized discrete-action environments for :func:`murmura.learners.ppo.train_ppo`.

Spec ``federated.md`` section 13 (GBRL), (e): :class:`ContextualBandit` is the spec's pilot 2,
a contextual bandit on categorical features whose rewarded action depends on interactions of
2-3 categories, needing nothing beyond numpy; :class:`GymVectorEnv` wraps ``n`` copies of a
gymnasium env (``pip install murmura[rl]``) in a ``SyncVectorEnv``. Both follow one small
protocol: ``reset(seed)`` returns the encoded observations ``[n_envs, n_features]``;
``step(actions)`` returns ``(next_obs, rewards, terminated, truncated, final_obs)``, an
episode's end resetting that copy in the same step (``final_obs`` holds the observation the
episode ended on, to bootstrap a truncation from). Categorical observations come as
``codes`` (integer category ids, what a tree splits on) or ``onehot`` (what an MLP reads):
:func:`encode_states` for a ``Discrete`` state id (FrozenLake, Taxi), :func:`encode_minigrid`
for MiniGrid's egocentric 7×7×3 view and direction.

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


ENCODINGS = ("codes", "onehot")
# categories per channel of a MiniGrid image cell (minigrid.core.constants' OBJECT_TO_IDX,
# COLOR_TO_IDX, STATE_TO_IDX) and of its agent direction
MINIGRID_CHANNELS = (11, 6, 3)
MINIGRID_DIRECTIONS = 4
MINIGRID_EXTRA = "pip install minigrid (3.2.0 runs headless; it pulls in pygame-ce)"


def _check_encoding(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding {encoding!r}: choose codes (integer category ids, what a "
                         "tree splits on) or onehot (one indicator per category, for an MLP)")


def encode_states(states: Any, n_states: int, encoding: str) -> np.ndarray:
    """A ``Discrete(n_states)`` observation (FrozenLake's cell, Taxi's state id) per row:
    ``codes`` = the id as one feature ``[n, 1]``, ``onehot`` = ``[n, n_states]``.

    >>> encode_states([2, 0], 3, "codes").tolist(), encode_states([2, 0], 3, "onehot").tolist()
    ([[2.0], [0.0]], [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    """
    _check_encoding(encoding)
    states = np.asarray(states, np.int64).reshape(-1)
    if states.size and (states.min() < 0 or states.max() >= n_states):
        raise ValueError(f"state ids must lie in [0, {n_states}), got {states.min()}.."
                         f"{states.max()}")
    if encoding == "codes":
        return states[:, None].astype(np.float32)
    return np.eye(n_states, dtype=np.float32)[states]


def encode_minigrid(image: Any, direction: Any, encoding: str) -> np.ndarray:
    """MiniGrid's egocentric view ``image [n, W, H, 3]`` (object, colour, state ids per cell)
    and ``direction [n]`` as flat features: ``codes`` = the ``W·H·3`` ids in the image's
    row-major order then the direction (148 for the 7×7 view); ``onehot`` = per cell one
    indicator block of 11 objects, 6 colours and 3 states, then 4 directions (984).

    >>> image = np.array([[[[2, 5, 0]], [[8, 1, 0]]]])       # one 2x1 view: grey wall, green goal
    >>> encode_minigrid(image, [3], "codes").tolist()
    [[2.0, 5.0, 0.0, 8.0, 1.0, 0.0, 3.0]]
    >>> np.flatnonzero(encode_minigrid(image, [3], "onehot")).tolist()  # 2, 11+5, 17+0; 20+8, ...
    [2, 16, 17, 28, 32, 37, 43]
    """
    _check_encoding(encoding)
    image = np.asarray(image, np.int64)
    direction = np.asarray(direction, np.int64).reshape(-1)
    if image.ndim != 4 or image.shape[-1] != 3 or len(direction) != len(image):
        raise ValueError(f"need image [n, W, H, 3] and direction [n], got {image.shape} and "
                         f"{direction.shape}")
    sizes = np.array(MINIGRID_CHANNELS)
    if (image < 0).any() or (image >= sizes).any() or not (
            (0 <= direction) & (direction < MINIGRID_DIRECTIONS)).all():
        raise ValueError(f"MiniGrid ids out of range: channels take {MINIGRID_CHANNELS} values, "
                         f"directions {MINIGRID_DIRECTIONS}")
    n = len(image)
    cells = image.reshape(n, -1, 3)
    if encoding == "codes":
        return np.concatenate([cells.reshape(n, -1), direction[:, None]], 1).astype(np.float32)
    block = int(sizes.sum())
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    hot = (np.arange(cells.shape[1])[None, :, None] * block + cells + offsets).reshape(n, -1)
    onehot = np.zeros((n, cells.shape[1] * block + MINIGRID_DIRECTIONS), np.float32)
    np.put_along_axis(onehot, hot, 1.0, axis=1)
    onehot[np.arange(n), cells.shape[1] * block + direction] = 1.0
    return onehot


def require_gymnasium() -> Any:
    try:
        import gymnasium
    except ImportError as error:
        raise ImportError(f"gymnasium environments need gymnasium: {RL_EXTRA}") from error
    return gymnasium


def _make_probe(gym: Any, env_id: str, env_kwargs: dict[str, Any]) -> Any:
    if env_id.startswith("MiniGrid"):
        try:
            import minigrid  # noqa: F401  (registers the MiniGrid-* ids)
        except ImportError as error:
            raise ImportError(f"{env_id} needs minigrid: {MINIGRID_EXTRA}") from error
    try:
        return gym.make(env_id, **env_kwargs)
    except gym.error.Error as error:
        raise ValueError(f"env {env_id!r} is not a gymnasium env here: {error}") from None
    except TypeError as error:
        raise ValueError(f"env {env_id!r} refuses env_kwargs {env_kwargs}: {error}") from None


class GymVectorEnv:
    """``n_envs`` copies of a gymnasium env with a ``Discrete`` action space in a
    ``SyncVectorEnv`` (same-step autoreset), each observation encoded to a flat float32 row:
    ``Box`` observations flattened (``encoding`` does not apply), ``Discrete`` ones (FrozenLake,
    Taxi) by :func:`encode_states` and MiniGrid's dict (its ``image`` and ``direction``; the
    constant ``mission`` is dropped) by :func:`encode_minigrid`, as ``encoding`` says
    (``codes`` or ``onehot``). ``n_actions`` keeps the first actions only (MiniGrid's first 3
    are left, right, forward); ``None`` keeps all. ``env_kwargs`` go to ``gym.make``
    (``{"is_slippery": False}``). ``is_categorical`` says whether the
    features are category codes (a tree may split on them by equality)."""

    def __init__(self, env_id: str, n_envs: int = 8, encoding: str = "onehot",
                 n_actions: int | None = None, env_kwargs: dict[str, Any] | None = None) -> None:
        gym = require_gymnasium()
        if not isinstance(n_envs, int) or n_envs < 1:
            raise ValueError(f"n_envs must be a positive integer, got {n_envs!r}")
        _check_encoding(encoding)
        env_kwargs = dict(env_kwargs or {})
        probe = _make_probe(gym, env_id, env_kwargs)
        action_space, obs_space = probe.action_space, probe.observation_space
        first_obs, _ = probe.reset(seed=0)  # a real one: a Box(0, 255) image samples junk ids
        probe.close()
        if not isinstance(action_space, gym.spaces.Discrete):
            raise ValueError(f"env {env_id!r} has action space {action_space}: PPO here needs a "
                             "Discrete one")
        if n_actions is not None and not (isinstance(n_actions, int)
                                          and 2 <= n_actions <= action_space.n):
            raise ValueError(f"n_actions must be an integer in [2, {action_space.n}] (the env's "
                             f"first actions) or None for all, got {n_actions!r}")
        self.obs_type, transform = self._transform(gym, env_id, obs_space, encoding)
        self.is_categorical = self.obs_type != "box" and encoding == "codes"
        self.env_id, self.num_envs, self.encoding = env_id, n_envs, encoding
        self.n_actions = int(n_actions or action_space.n)
        self.n_features = len(transform(first_obs))
        box = gym.spaces.Box(-np.inf, np.inf, (self.n_features,), np.float32)

        def make() -> Any:
            return gym.wrappers.TransformObservation(gym.make(env_id, **env_kwargs), transform,
                                                     box)

        self._envs = gym.vector.SyncVectorEnv(
            [make for _ in range(n_envs)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)

    @staticmethod
    def _transform(gym: Any, env_id: str, space: Any, encoding: str) -> tuple[str, Any]:
        if isinstance(space, gym.spaces.Discrete):
            n = int(space.n)
            return "discrete", lambda obs: encode_states(obs, n, encoding)[0]
        if isinstance(space, gym.spaces.Box):
            return "box", lambda obs: np.asarray(obs, np.float32).reshape(-1)
        if isinstance(space, gym.spaces.Dict) and {"image", "direction"} <= set(space.spaces):
            return "minigrid", lambda obs: encode_minigrid(obs["image"][None], obs["direction"],
                                                           encoding)[0]
        raise ValueError(f"env {env_id!r} has observation space {space}: use a Box, a Discrete "
                         "or MiniGrid's dict (image, direction) one")

    def reset(self, seed: int) -> np.ndarray:
        obs, _ = self._envs.reset(seed=seed)
        self._envs.action_space.seed(seed)
        return np.asarray(obs, np.float32)

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, ...]:
        obs, reward, terminated, truncated, info = self._envs.step(np.asarray(actions))
        X = np.asarray(obs, np.float32)
        final = X.copy()
        if "_final_obs" in info:
            for i in np.flatnonzero(info["_final_obs"]):
                final[i] = info["final_obs"][i]
        return X, np.asarray(reward, np.float64), terminated, truncated, final

    def close(self) -> None:
        self._envs.close()
