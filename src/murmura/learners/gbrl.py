"""GBRL: gradient-boosted trees as the function approximator of an actor-critic.

Fuhrer, Tessler and Dalal, "Gradient Boosting Reinforcement Learning" (ICML 2025, arXiv
2407.08250); spec ``federated.md`` section 13, update rules read from the official
``gbrl/models/gbt.py`` (``step``), its C++ fitter (leaf value = mean gradient) and
``gbrl_sb3/algos/ppo.py`` (``train``). The ensemble's outputs ``θ(s) = bias - Σ_k lr ⊙ tree_k(s)``
are trained by functional gradient descent: :meth:`GradientBoostedTrees.step` fits ONE tree
(depth ≤ 4) to the per-sample gradients ``G_i = ∂L/∂θ(s_i) · B`` of a loss with respect to the
outputs, each leaf holding the mean gradient of its samples, and adds it scaled by a
learning rate per output. :class:`TreeActorCritic` shares one tree structure between the policy
logits and the value, with separate learning rates (the spec's shared actor-critic); the PPO
loop around it is :func:`murmura.learners.ppo.train_ppo`.

Two backends. ``"gbrl"`` is NVIDIA's library (``pip install --no-deps gbrl``): quantile
candidate thresholds (``n_bins``), ``oblivious`` or ``greedy`` growth, ``cosine`` or ``L2``
split score, and equality splits on categorical codes (``categorical=True``, gbrl's
string-feature path). ``"sklearn"`` is native: a multi-output ``DecisionTreeRegressor``
(greedy, exact thresholds, squared-error = L2 split score); it does NOT reproduce gbrl's
cosine score, oblivious trees, binning or equality splits, so the two backends grow different
trees from the same gradients.

>>> import numpy as np
>>> X = np.array([[0.0], [1.0], [2.0], [3.0]])
>>> trees = GradientBoostedTrees(n_features=1, output_dim=1, learning_rate=0.5, max_depth=1)
>>> trees.step(X, np.array([[1.0], [3.0], [-2.0], [-4.0]]))   # leaves: means 2 and -3
>>> trees.predict(X)[:, 0].tolist()
[-1.0, -1.0, 1.5, 1.5]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

BACKENDS = ("sklearn", "gbrl")
GBRL_MISSING = ("backend='gbrl' needs the gbrl library: pip install --no-deps gbrl==1.1.9 (its CPU "
                "wheel imports with numpy, scipy and torch alone; its declared shap, cmake, "
                "pybind11 are not needed), or use backend='sklearn'")


def gbrl_available() -> bool:
    """Whether the ``gbrl`` library imports (its C++ extension included)."""
    try:
        import gbrl.models  # noqa: F401
    except ImportError:
        return False
    return True


def clip_per_sample(grads: np.ndarray, max_norm: float | None) -> np.ndarray:
    """Rescale each row of ``grads`` whose L2 norm exceeds ``max_norm`` onto that norm
    (gbrl's ``clip_grad_norm``: per sample, not over the batch); ``None`` or 0 leaves them."""
    if not max_norm:
        return grads
    norms = np.linalg.norm(grads, axis=1, keepdims=True)
    return np.where(norms > max_norm, grads * (max_norm / np.maximum(norms, 1e-30)), grads)


def _as_matrix(name: str, value: Any, n_cols: int | None = None) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n_samples, n_columns], got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError(f"{name} has no rows")
    if n_cols is not None and array.shape[1] != n_cols:
        raise ValueError(f"{name} has {array.shape[1]} columns, expected {n_cols}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


class GradientBoostedTrees:
    """A tree ensemble ``F(X) = bias - Σ_k lr ⊙ tree_k(X)`` grown one tree per :meth:`step`.

    ``learning_rate`` is one float or one per output (a shared tree with separate leaf scales,
    as GBRL's actor-critic uses for policy and value). ``split_score``, ``grow_policy`` and
    ``n_bins`` only exist in the ``gbrl`` backend beyond ``L2`` / ``greedy`` / exact;
    ``categorical = True`` (``gbrl`` only) reads every feature as a non-negative integer
    category code and splits it by equality, through gbrl's categorical-feature path (string
    inputs; candidates: up to ``n_bins`` categories per feature ranked by mean gradient norm).
    """

    def __init__(self, n_features: int, output_dim: int,
                 learning_rate: float | Sequence[float], max_depth: int = 4,
                 backend: str = "sklearn", bias: Sequence[float] | None = None,
                 min_samples_leaf: int = 1, split_score: str = "L2",
                 grow_policy: str = "greedy", n_bins: int = 256, categorical: bool = False,
                 seed: int = 0) -> None:
        for name, value in (("n_features", n_features), ("output_dim", output_dim),
                            ("max_depth", max_depth), ("min_samples_leaf", min_samples_leaf)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        lrs = np.asarray(learning_rate, dtype=np.float64)
        if lrs.ndim == 0:
            lrs = np.full(output_dim, float(lrs))
        if lrs.shape != (output_dim,) or not (lrs > 0).all():
            raise ValueError(f"learning_rate must be > 0, one float or {output_dim} of them, "
                             f"got {learning_rate!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        if split_score not in ("L2", "cosine") or grow_policy not in ("greedy", "oblivious"):
            raise ValueError(f"split_score must be 'L2' or 'cosine' and grow_policy 'greedy' or "
                             f"'oblivious', got {split_score!r}, {grow_policy!r}")
        if backend == "sklearn" and categorical:
            raise ValueError("the sklearn backend splits on thresholds only: use backend='gbrl' "
                             "for categorical (equality) splits, or categorical=False")
        if backend == "sklearn" and (split_score, grow_policy) != ("L2", "greedy"):
            raise ValueError("the sklearn backend grows greedy trees on the L2 score only: use "
                             "backend='gbrl' for split_score='cosine' or grow_policy='oblivious'")
        self.n_features, self.output_dim, self.max_depth = n_features, output_dim, max_depth
        self.learning_rates, self.backend, self.seed = lrs, backend, seed
        self.bias = np.zeros(output_dim) if bias is None else np.asarray(bias, np.float64)
        if self.bias.shape != (output_dim,):
            raise ValueError(f"bias must have {output_dim} values, got shape {self.bias.shape}")
        self.min_samples_leaf, self.categorical = min_samples_leaf, categorical
        self._n_trees = 0
        self._code_strings = np.zeros(0, "S128")
        if backend == "gbrl":
            self._model = self._gbrl_model(split_score, grow_policy, n_bins)
        else:
            self._width = 2 ** (max_depth + 1) - 1  # nodes of a full tree
            self._grow(16)

    def _gbrl_model(self, split_score: str, grow_policy: str, n_bins: int) -> Any:
        try:
            from gbrl.models import GBTModel
        except ImportError as error:
            raise ImportError(GBRL_MISSING) from error
        # one SGD optimizer per run of equal learning rates: gbrl scales leaves per slice
        optimizers, start = [], 0
        for stop in range(1, self.output_dim + 1):
            if stop == self.output_dim or self.learning_rates[stop] != self.learning_rates[start]:
                optimizers.append({"algo": "SGD", "lr": float(self.learning_rates[start]),
                                   "start_idx": start, "stop_idx": stop})
                start = stop
        model = GBTModel(
            tree_struct={"max_depth": self.max_depth, "grow_policy": grow_policy,
                         # gbrl_sb3's 0 for sklearn's 1 (a leaf is never empty)
                         "n_bins": n_bins, "min_data_in_leaf": self.min_samples_leaf - 1,
                         "par_th": 2},
            input_dim=self.n_features, output_dim=self.output_dim, optimizers=optimizers,
            params={"split_score_func": split_score, "generator_type": "Quantile",
                    "control_variates": False})
        model.set_bias(self.bias.astype(np.float32))
        return model

    def _gbrl_inputs(self, X: np.ndarray) -> np.ndarray:
        """float32 features, or with ``categorical`` the codes as byte strings: gbrl treats a
        string column as categorical and splits it by equality (``x == c``), one category
        against the rest."""
        if not self.categorical:
            return X.astype(np.float32)
        codes = X.astype(np.int64)
        if (codes != X).any() or (codes < 0).any():
            raise ValueError("categorical features must be non-negative integer codes")
        if codes.max() >= len(self._code_strings):  # a lookup table beats np.char per call
            self._code_strings = np.array([str(c).encode() for c in range(codes.max() + 1)],
                                          "S128")
        return self._code_strings[codes]

    @property
    def n_trees(self) -> int:
        return self._n_trees

    def step(self, X: Any, grads: Any) -> None:
        """Fit one tree to the per-sample output gradients ``grads [n, output_dim]`` at
        ``X [n, n_features]`` (leaf = mean gradient) and add it: ``F ← F - lr ⊙ tree``."""
        X = _as_matrix("X", X, self.n_features)
        grads = _as_matrix("grads", grads, self.output_dim)
        if grads.shape[0] != X.shape[0]:
            raise ValueError(f"grads has {grads.shape[0]} rows, X has {X.shape[0]}")
        if self.backend == "gbrl":
            self._model.step(self._gbrl_inputs(X), grads.astype(np.float32))
        else:
            self._append_sklearn_tree(X, grads)
        self._n_trees += 1

    def _append_sklearn_tree(self, X: np.ndarray, grads: np.ndarray) -> None:
        from sklearn.tree import DecisionTreeRegressor

        tree = DecisionTreeRegressor(max_depth=self.max_depth,
                                     min_samples_leaf=self.min_samples_leaf,
                                     random_state=self.seed * 100_003 + self._n_trees)
        t = tree.fit(X, grads).tree_
        # each tree padded to a full one, leaves pointing at themselves, so that predict
        # walks every tree max_depth levels at once
        n, width, k = t.node_count, self._width, self._n_trees
        if k == len(self._feature) // width:
            self._grow(2 * k)
        is_leaf = t.children_left < 0
        own = np.arange(n) + k * width  # node ids are global: tree k's nodes follow tree k-1's
        at = slice(k * width, k * width + n)
        self._feature[at] = np.where(is_leaf, 0, t.feature)
        self._threshold[at] = np.where(is_leaf, np.inf, t.threshold)
        self._left[at] = np.where(is_leaf, own, t.children_left + k * width)
        self._right[at] = np.where(is_leaf, own, t.children_right + k * width)
        self._leaf[at] = -self.learning_rates * t.value[:, :, 0]

    def _grow(self, capacity: int) -> None:
        """Room for ``capacity`` trees in the flat node arrays (doubling keeps appends cheap)."""
        size = capacity * self._width
        fresh = {"_feature": np.zeros(size, np.int64), "_threshold": np.full(size, np.inf),
                 "_left": np.zeros(size, np.int64), "_right": np.zeros(size, np.int64),
                 "_leaf": np.zeros((size, self.output_dim))}
        for name, array in fresh.items():
            if hasattr(self, name):
                old = getattr(self, name)
                array[:len(old)] = old
            setattr(self, name, array)

    def predict(self, X: Any) -> np.ndarray:
        """``F(X) = bias - Σ_k lr ⊙ tree_k(X)``, ``[n, output_dim]`` float64."""
        X = _as_matrix("X", X, self.n_features)
        if self.backend == "gbrl":
            out = self._model(self._gbrl_inputs(X), requires_grad=False, tensor=False)
            return np.asarray(out, np.float64).reshape(X.shape[0], self.output_dim)
        out = np.broadcast_to(self.bias, (X.shape[0], self.output_dim)).copy()
        if self._n_trees == 0:
            return out
        n, d = X.shape
        X32 = X.astype(np.float32).ravel()  # sklearn splits on float32 features
        cells = (np.arange(n) * d)[None, :]
        node = np.repeat((np.arange(self._n_trees) * self._width)[:, None], n, 1)
        for _ in range(self.max_depth):
            goes_left = X32[cells + self._feature[node]] <= self._threshold[node]
            node = np.where(goes_left, self._left[node], self._right[node])
        return out + self._leaf[node.ravel()].reshape(self._n_trees, n, -1).sum(0)


class TreeActorCritic:
    """GBRL's shared actor-critic: one ensemble with outputs ``[logits (n_actions) | value]``,
    learning rate ``policy_lr`` on the logits and ``value_lr`` on the value, and the per-sample
    gradient clipping of ``gbrl_sb3`` (``max_policy_grad_norm`` on the logit rows,
    ``max_value_grad_norm`` on the value) before each tree is fitted.

    :func:`murmura.learners.ppo.train_ppo` calls :meth:`forward` on a minibatch, computes the
    loss's gradient with respect to those outputs and hands it to :meth:`apply`.

    >>> import numpy as np, torch
    >>> ac = TreeActorCritic(n_features=2, n_actions=2, policy_lr=0.1, value_lr=0.01)
    >>> X = np.array([[0.0, 1.0], [1.0, 0.0]])
    >>> out = ac.forward(X)
    >>> ac.apply(X, out, torch.tensor([[1.0, -1.0, 2.0], [1.0, -1.0, 2.0]]))
    >>> [round(v, 4) for v in ac.forward(X).detach()[0].tolist()]
    [-0.1, 0.1, -0.02]
    """

    def __init__(self, n_features: int, n_actions: int, policy_lr: float = 0.029,
                 value_lr: float = 0.015, max_depth: int = 4, backend: str = "sklearn",
                 max_policy_grad_norm: float | None = None,
                 max_value_grad_norm: float | None = None, seed: int = 0,
                 **tree_options: Any) -> None:
        if not isinstance(n_actions, (int, np.integer)) or n_actions < 2:
            raise ValueError(f"n_actions must be an integer >= 2, got {n_actions!r}")
        self.n_actions = n_actions
        self.max_policy_grad_norm, self.max_value_grad_norm = (max_policy_grad_norm,
                                                               max_value_grad_norm)
        self.trees = GradientBoostedTrees(
            n_features, n_actions + 1, [policy_lr] * n_actions + [value_lr],
            max_depth=max_depth, backend=backend, seed=seed, **tree_options)

    def forward(self, X: np.ndarray) -> torch.Tensor:
        """Outputs ``[n, n_actions + 1]`` as a leaf tensor whose gradient :meth:`apply` reads."""
        return torch.as_tensor(self.trees.predict(X), dtype=torch.float32).requires_grad_()

    def apply(self, X: np.ndarray, outputs: torch.Tensor, output_grads: torch.Tensor) -> None:
        """One boosting step on the per-sample output gradients ``[n, n_actions + 1]``."""
        grads = output_grads.detach().double().numpy()
        policy = clip_per_sample(grads[:, :-1], self.max_policy_grad_norm)
        value = clip_per_sample(grads[:, -1:], self.max_value_grad_norm)
        self.trees.step(X, np.concatenate([policy, value], 1))

    @property
    def size(self) -> int:
        return self.trees.n_trees


def _register_kind() -> None:
    from murmura.runner.kinds import KINDS

    @KINDS.register("gbrl", "GBRL: PPO with a gradient-boosted-trees actor-critic (or an MLP) "
                    "on a gymnasium discrete-action env: mean return per rollout",
                    overwrite=True)
    def gbrl_kind(context, env: str = "CartPole-v1", learner: str = "trees",
                  backend: str = "sklearn", total_steps: int = 20_000, n_envs: int = 8,
                  n_steps: int = 128, batch_size: int = 64, n_epochs: int = 1,
                  gamma: float = 0.98, gae_lambda: float = 0.8, clip_range: float = 0.2,
                  ent_coef: float = 0.0, vf_coef: float = 0.87, normalize_reward: bool = True,
                  policy_lr: float = 0.029, value_lr: float = 0.015, max_depth: int = 4,
                  max_policy_grad_norm: float = 100.0, max_value_grad_norm: float = 10.0,
                  split_score: str = "L2", grow_policy: str = "greedy", n_bins: int = 256,
                  mlp_lr: float = 1e-3, mlp_hidden: list[int] | None = None,
                  mlp_max_grad_norm: float = 0.5, obs_encoding: str = "auto",
                  categorical_splits: bool = True, n_actions: int | None = None):
        """PPO (:func:`~murmura.learners.ppo.train_ppo`) on ``env`` (a gymnasium id with a
        discrete action space, ``n_envs`` copies in a ``SyncVectorEnv``) for ``total_steps``
        environment steps, keyed by the experiment's seed; ``learner = "trees"`` is GBRL's
        shared tree actor-critic (``backend`` ``sklearn`` or ``gbrl``), ``"mlp"`` a 64-64 tanh
        actor and critic trained by Adam (``mlp_lr``, global gradient clipping
        ``mlp_max_grad_norm``). One record per rollout (``round`` = rollout).

        ``obs_encoding`` encodes categorical observations (a ``Discrete`` state id: FrozenLake,
        Taxi; MiniGrid's view and direction, ``pip install minigrid``): ``codes`` (integer ids)
        or ``onehot``; ``auto`` = codes for trees, onehot for the MLP. With ``backend = "gbrl"``
        on codes, ``categorical_splits`` splits them by equality (gbrl's categorical path)
        rather than by threshold. ``n_actions`` keeps the env's first actions only (3 =
        MiniGrid's left, right, forward); ``None`` keeps all."""
        from murmura.learners.ppo import MLPActorCritic, PPOConfig, train_ppo
        from murmura.learners.rl_envs import ENCODINGS, GymVectorEnv

        if learner not in ("trees", "mlp"):
            raise ValueError(f"learner {learner!r}: choose trees or mlp")
        if obs_encoding not in ("auto", *ENCODINGS):
            raise ValueError(f"obs_encoding {obs_encoding!r}: choose auto (codes for trees, "
                             "onehot for the MLP), codes or onehot")
        encoding = obs_encoding if obs_encoding != "auto" else (
            "codes" if learner == "trees" else "onehot")
        if learner == "trees" and backend == "gbrl" and not gbrl_available():
            raise RuntimeError(GBRL_MISSING)
        try:
            envs = GymVectorEnv(env, n_envs, encoding=encoding, n_actions=n_actions)
        except ImportError as error:
            raise RuntimeError(str(error)) from None
        if obs_encoding != "auto" and envs.obs_type == "box":
            envs.close()
            raise ValueError(f"obs_encoding={obs_encoding!r} applies to Discrete and MiniGrid "
                             f"observations; {env} has Box ones: leave it auto")
        config = PPOConfig(n_steps=n_steps, batch_size=batch_size, n_epochs=n_epochs,
                           gamma=gamma, gae_lambda=gae_lambda, clip_range=clip_range,
                           ent_coef=ent_coef, vf_coef=vf_coef, normalize_reward=normalize_reward)
        if learner == "trees":
            model: Any = TreeActorCritic(
                envs.n_features, envs.n_actions, policy_lr=policy_lr, value_lr=value_lr,
                max_depth=max_depth, backend=backend, max_policy_grad_norm=max_policy_grad_norm,
                max_value_grad_norm=max_value_grad_norm, seed=context.seed,
                split_score=split_score, grow_policy=grow_policy, n_bins=n_bins,
                categorical=backend == "gbrl" and envs.is_categorical and categorical_splits)
        else:
            model = MLPActorCritic(envs.n_features, envs.n_actions,
                                   hidden=tuple(mlp_hidden or (64, 64)), lr=mlp_lr,
                                   max_grad_norm=mlp_max_grad_norm, seed=context.seed)
        try:
            summary = yield from train_ppo(envs, model, config, total_steps, seed=context.seed)
        finally:
            envs.close()
        return {"env": env, "learner": learner, "backend": backend if learner == "trees" else None,
                "obs_encoding": envs.encoding if envs.obs_type != "box" else None, **summary}


_register_kind()
