"""GBNN: a one-hidden-layer network trained stage by stage with gradient boosting.

Emami and Martínez-Muñoz, "Sequential Training of Neural Networks with Gradient Boosting"
(arXiv 1909.12098, IEEE Access 2023); spec ``federated.md`` section 12, update rules read from
the official ``gbnn/GBNN.py``. Start from a constant ``F_0``; at each of ``T`` stages fit a tiny
MLP with ``J`` hidden units (L-BFGS on squared error) to the pseudo-residuals on a subsample,
scale it by ``learning_rate`` times a Newton step and add it. The sum is one network with
``T * J`` hidden units (:meth:`to_sequential`); dropping the last stages is anytime inference
(``n_stages=`` on the predict methods, :meth:`staged_predict`).

Differences from the official code: the subsample is drawn from the estimator's seed (the code
ignores ``random_state`` there), the stages are fitted by ``torch.optim.LBFGS`` (strong Wolfe)
in float64 on sklearn's ``MLPRegressor`` objective (half mean squared error plus
``alpha / 2n`` times the squared weights, Glorot-uniform initialisation), and a stage whose Newton
denominator vanishes gets ``rho = 0`` instead of a NaN.

>>> import numpy as np
>>> X = np.array([[0.0], [1.0], [2.0], [3.0]])
>>> clf = GBNNClassifier(n_units=4, units_per_stage=2, subsample=1.0, seed=0).fit(X, [0, 0, 1, 1])
>>> clf.predict(X).tolist()
[0, 0, 1, 1]
>>> net = clf.to_sequential(dtype=torch.float64)
>>> bool(np.allclose(net(torch.as_tensor(X)).softmax(1).detach().numpy(), clf.predict_proba(X)))
True
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import NotFittedError

ACTIVATIONS = {"logistic": torch.nn.Sigmoid, "tanh": torch.nn.Tanh, "relu": torch.nn.ReLU,
               "identity": torch.nn.Identity}


def _stage_seed(seed: int, stage: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + stage)


def fit_stage(X: torch.Tensor, R: torch.Tensor, hidden: int, activation: str, max_iter: int,
              alpha: float, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """One base learner ``(W1 [d, J], b1 [J], W2 [J, K], b2 [K])`` fitted to residuals ``R``."""
    d, k = X.shape[1], R.shape[1]
    factor = 2.0 if activation == "logistic" else 6.0  # sklearn's Glorot bound per activation
    params = []
    for fan_in, fan_out in ((d, hidden), (hidden, k)):
        bound = (factor / (fan_in + fan_out)) ** 0.5
        params.append((torch.rand(fan_in, fan_out, generator=generator, dtype=X.dtype) * 2 - 1)
                      * bound)
        params.append((torch.rand(fan_out, generator=generator, dtype=X.dtype) * 2 - 1) * bound)
    for p in params:
        p.requires_grad_(True)
    act = ACTIVATIONS[activation]()
    n = X.shape[0]
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, history_size=10,
                                  tolerance_grad=1e-12, tolerance_change=1e-15,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        w1, b1, w2, b2 = params
        out = act(X @ w1 + b1) @ w2 + b2
        loss = ((out - R) ** 2).mean() / 2 + alpha / (2 * n) * ((w1 ** 2).sum() + (w2 ** 2).sum())
        loss.backward()
        return loss

    optimizer.step(closure)
    return tuple(p.detach() for p in params)


class _GBNN(BaseEstimator):
    def __init__(self, n_units: int = 200, units_per_stage: int = 1, learning_rate: float = 1.0,
                 subsample: float = 0.5, max_iter: int = 200, activation: str = "logistic",
                 alpha: float = 1e-4, seed: int = 0) -> None:
        self.n_units = n_units
        self.units_per_stage = units_per_stage
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.max_iter = max_iter
        self.activation = activation
        self.alpha = alpha
        self.seed = seed

    # --- validation -------------------------------------------------------------------------
    def _check_params(self) -> int:
        j = self.units_per_stage
        if not isinstance(j, (int, np.integer)) or j < 1:
            raise ValueError(f"units_per_stage must be a positive integer, got {j!r}")
        if not isinstance(self.n_units, (int, np.integer)) or self.n_units < 1:
            raise ValueError(f"n_units must be a positive integer, got {self.n_units!r}")
        if self.n_units % j:
            raise ValueError(f"n_units ({self.n_units}) must be a multiple of units_per_stage "
                             f"({j})")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not 0 < self.subsample <= 1:
            raise ValueError(f"subsample must be in (0, 1], got {self.subsample!r}")
        if not isinstance(self.max_iter, (int, np.integer)) or self.max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, "
                             f"got {self.activation!r}")
        if not self.alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha!r}")
        return self.n_units // j

    @staticmethod
    def _as_X(X: Any) -> torch.Tensor:
        X = torch.as_tensor(np.asarray(X, dtype=np.float64))
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D [n_samples, n_features], got shape {tuple(X.shape)}")
        if X.shape[0] == 0 or X.shape[1] == 0:
            raise ValueError(f"X is empty (shape {tuple(X.shape)})")
        if not torch.isfinite(X).all():
            raise ValueError("X contains NaN or infinite values")
        return X

    def _check_X(self, X: Any) -> torch.Tensor:
        if not hasattr(self, "stages_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted: call fit first")
        X = self._as_X(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, the model was fitted on "
                             f"{self.n_features_in_}")
        return X

    # --- boosting ---------------------------------------------------------------------------
    def _boost(self, X: torch.Tensor, y: torch.Tensor) -> None:
        """``y`` is the loss's target: values, ±1 labels or one-hot rows."""
        n_stages = self._check_params()
        n = X.shape[0]
        size = int(self.subsample * n)
        if size < 1:
            raise ValueError(f"subsample={self.subsample} of {n} samples leaves no sample")
        self.n_features_in_ = X.shape[1]
        self.init_ = self._init_score(y)
        F = self.init_.expand(n, -1).clone()
        self.stages_: list[tuple[torch.Tensor, ...]] = []
        self.steps_: list[float] = []
        self.train_loss_: list[float] = []
        act = ACTIVATIONS[self.activation]()
        for t in range(n_stages):
            R = self._residuals(y, F)
            gen = _stage_seed(self.seed, t)
            if size < n:
                rows = torch.randperm(n, generator=gen)[:size]
                Xs, Rs = X[rows], R[rows]
            else:
                Xs, Rs = X, R
            w1, b1, w2, b2 = fit_stage(Xs, Rs, self.units_per_stage, self.activation,
                                       self.max_iter, self.alpha, gen)
            H = act(X @ w1 + b1) @ w2 + b2
            rho = self.learning_rate * self._newton(y, R, H, F)
            F = F + rho * H
            self.stages_.append((w1, b1, w2, b2))
            self.steps_.append(rho)
            self.train_loss_.append(float(self._loss(y, F)))

    def _raw(self, X: torch.Tensor, n_stages: int | None = None) -> torch.Tensor:
        *_, last = self._staged_raw(X, n_stages)
        return last

    def _staged_raw(self, X: torch.Tensor, n_stages: int | None = None) -> Iterator[torch.Tensor]:
        """``F`` after each of the first ``n_stages`` stages (all by default); ``[n, K]``."""
        total = len(self.stages_)
        if n_stages is None:
            n_stages = total
        if not isinstance(n_stages, (int, np.integer)) or not 0 <= n_stages <= total:
            raise ValueError(f"n_stages must be an integer in [0, {total}], got {n_stages!r}")
        act = ACTIVATIONS[self.activation]()
        F = self.init_.expand(X.shape[0], -1).clone()
        if n_stages == 0:
            yield F
        for (w1, b1, w2, b2), rho in zip(self.stages_[:n_stages], self.steps_[:n_stages]):
            F = F + rho * (act(X @ w1 + b1) @ w2 + b2)
            yield F

    @property
    def n_stages_(self) -> int:
        return len(self.stages_)

    def _sequential(self, scale: torch.Tensor, n_stages: int | None,
                    dtype: torch.dtype) -> torch.nn.Sequential:
        """Stages concatenated: output ``(F_0 + Σ ρ_t h_t(x)) @ scale``."""
        if not hasattr(self, "stages_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted: call fit first")
        n_stages = len(self.stages_) if n_stages is None else n_stages
        if not isinstance(n_stages, (int, np.integer)) or not 1 <= n_stages <= len(self.stages_):
            raise ValueError(f"n_stages must be an integer in [1, {len(self.stages_)}], "
                             f"got {n_stages!r}")
        stages, steps = self.stages_[:n_stages], self.steps_[:n_stages]
        w1 = torch.cat([s[0] for s in stages], 1)
        b1 = torch.cat([s[1] for s in stages])
        w2 = torch.cat([rho * s[2] for s, rho in zip(stages, steps)], 0) @ scale
        b2 = (self.init_[0] + sum(rho * s[3] for s, rho in zip(stages, steps))) @ scale
        first = torch.nn.Linear(w1.shape[0], w1.shape[1], dtype=dtype)
        second = torch.nn.Linear(w2.shape[0], w2.shape[1], dtype=dtype)
        with torch.no_grad():
            first.weight.copy_(w1.T)
            first.bias.copy_(b1)
            second.weight.copy_(w2.T)
            second.bias.copy_(b2)
        return torch.nn.Sequential(first, ACTIVATIONS[self.activation](), second)


class GBNNRegressor(RegressorMixin, _GBNN):
    """Gradient-boosted one-hidden-layer network for regression (squared loss, ``rho = eta``).

    >>> import numpy as np
    >>> X = np.linspace(-1, 1, 20)[:, None]
    >>> reg = GBNNRegressor(n_units=6, units_per_stage=2, subsample=1.0).fit(X, X[:, 0] ** 2)
    >>> reg.n_stages_, reg.score(X, X[:, 0] ** 2) > 0.9
    (3, True)
    """

    def fit(self, X: Any, y: Any) -> GBNNRegressor:
        """Fit on ``X [n, d]`` and real targets ``y [n]``; returns ``self``."""
        X = self._as_X(X)
        y = np.asarray(y, dtype=np.float64)
        if y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise ValueError(f"y must be 1-D with {X.shape[0]} values, got shape {y.shape}")
        if not np.isfinite(y).all():
            raise ValueError("y contains NaN or infinite values")
        self._boost(X, torch.as_tensor(y)[:, None])
        return self

    @staticmethod
    def _init_score(y: torch.Tensor) -> torch.Tensor:
        return y.mean(0, keepdim=True)

    @staticmethod
    def _residuals(y: torch.Tensor, F: torch.Tensor) -> torch.Tensor:
        return y - F

    @staticmethod
    def _newton(y: torch.Tensor, R: torch.Tensor, H: torch.Tensor, F: torch.Tensor) -> float:
        return 1.0

    @staticmethod
    def _loss(y: torch.Tensor, F: torch.Tensor) -> torch.Tensor:
        return ((y - F) ** 2).mean()

    def predict(self, X: Any, n_stages: int | None = None) -> np.ndarray:
        """``F(x)`` from the first ``n_stages`` stages (all by default); ``[n]``."""
        return self._raw(self._check_X(X), n_stages)[:, 0].numpy()

    def staged_predict(self, X: Any) -> Iterator[np.ndarray]:
        """The prediction after each stage: switching off the last-trained units."""
        for F in self._staged_raw(self._check_X(X)):
            yield F[:, 0].numpy()

    def to_sequential(self, n_stages: int | None = None,
                      dtype: torch.dtype = torch.float32) -> torch.nn.Sequential:
        """The equivalent Linear-activation-Linear network; output ``[n, 1]`` = predict."""
        return self._sequential(torch.ones(1, 1, dtype=torch.float64), n_stages, dtype)


class GBNNClassifier(ClassifierMixin, _GBNN):
    """Gradient-boosted one-hidden-layer network classifier.

    Two classes: labels ``y ∈ {-1, +1}``, ``F_0 = ½ log((1+ȳ)/(1−ȳ))``, residuals
    ``2y / (1 + exp(2yF))``, ``P(class 1) = sigmoid(2F)``. More classes: one-hot ``Y``,
    ``F_0 = 0``, residuals ``Y − softmax(F)``, one Newton step for all ``K`` outputs.
    :meth:`decision_function` is ``F`` (``[n]`` for two classes, ``[n, K]`` otherwise);
    :meth:`to_sequential` outputs ``K`` logits (``[−F, F]`` for two classes) whose softmax is
    :meth:`predict_proba`.

    >>> import numpy as np
    >>> X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]] * 3)
    >>> y = [0, 1, 2, 2] * 3
    >>> clf = GBNNClassifier(n_units=6, units_per_stage=2, subsample=1.0).fit(X, y)
    >>> clf.predict(X[:4]).tolist(), len(list(clf.staged_predict(X)))
    ([0, 1, 2, 2], 3)
    """

    def fit(self, X: Any, y: Any) -> GBNNClassifier:
        """Fit on ``X [n, d]`` and labels ``y [n]`` (at least two classes); returns ``self``."""
        X = self._as_X(X)
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise ValueError(f"y must be 1-D with {X.shape[0]} labels, got shape {y.shape}")
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"y needs at least two classes, got {self.classes_.tolist()}")
        codes = torch.as_tensor(codes.reshape(-1))
        if len(self.classes_) == 2:
            target = (2.0 * codes - 1.0).to(torch.float64)[:, None]
        else:
            target = torch.nn.functional.one_hot(codes, len(self.classes_)).to(torch.float64)
        self._boost(X, target)
        return self

    @property
    def _binary(self) -> bool:
        return len(self.classes_) == 2

    def _init_score(self, y: torch.Tensor) -> torch.Tensor:
        if self._binary:
            m = y.mean()
            return (0.5 * torch.log((1 + m) / (1 - m))).reshape(1, 1)
        return torch.zeros(1, y.shape[1], dtype=y.dtype)

    def _residuals(self, y: torch.Tensor, F: torch.Tensor) -> torch.Tensor:
        if self._binary:
            return 2.0 * y / (1.0 + torch.exp(2.0 * y * F))
        return y - F.softmax(1)

    def _newton(self, y: torch.Tensor, R: torch.Tensor, H: torch.Tensor, F: torch.Tensor) -> float:
        if self._binary:
            num, den = (R * H).sum(), (R * H * H * (2.0 * y - R)).sum()
        else:
            p = F.softmax(1)
            num, den = (H * R).sum(), (H * H * p * (1 - p)).sum()
        return float(num / den) if den > 1e-300 else 0.0

    def _loss(self, y: torch.Tensor, F: torch.Tensor) -> torch.Tensor:
        if self._binary:
            return torch.nn.functional.softplus(-2.0 * y * F).mean()
        return (torch.logsumexp(F, 1) - (y * F).sum(1)).mean()

    def _proba(self, F: torch.Tensor) -> torch.Tensor:
        if self._binary:
            p = torch.sigmoid(2.0 * F)
            return torch.cat([1 - p, p], 1)
        return F.softmax(1)

    def decision_function(self, X: Any, n_stages: int | None = None) -> np.ndarray:
        """The boosted score ``F`` from the first ``n_stages`` stages (all by default)."""
        F = self._raw(self._check_X(X), n_stages)
        return (F[:, 0] if self._binary else F).numpy()

    def predict_proba(self, X: Any, n_stages: int | None = None) -> np.ndarray:
        """Class probabilities ``[n, K]`` (columns in ``classes_`` order)."""
        return self._proba(self._raw(self._check_X(X), n_stages)).numpy()

    def predict(self, X: Any, n_stages: int | None = None) -> np.ndarray:
        """The most probable class from the first ``n_stages`` stages (all by default)."""
        proba = self.predict_proba(X, n_stages)  # checks fitted before classes_ is read
        return self.classes_[proba.argmax(1)]

    def staged_predict(self, X: Any) -> Iterator[np.ndarray]:
        """The prediction after each stage: switching off the last-trained units."""
        for F in self._staged_raw(self._check_X(X)):
            yield self.classes_[self._proba(F).argmax(1).numpy()]

    def staged_score(self, X: Any, y: Any) -> list[float]:
        """Accuracy after each stage (the official ``staged_score``)."""
        y = np.asarray(y)
        return [float(np.mean(p == y)) for p in self.staged_predict(X)]

    def to_sequential(self, n_stages: int | None = None,
                      dtype: torch.dtype = torch.float32) -> torch.nn.Sequential:
        """The equivalent single wide MLP with ``K`` logits; softmax of them = predict_proba."""
        k = 1 if self._binary else len(self.classes_)
        scale = (torch.tensor([[-1.0, 1.0]], dtype=torch.float64) if self._binary
                 else torch.eye(k, dtype=torch.float64))
        return self._sequential(scale, n_stages, dtype)
