"""The baselines MetaInf is compared with (spec ``federated.md`` section 15): the globally best
method, a random choice, a per-task classifier of the best method (random forest, gradient
boosting), ISAC and ALORS.

Every selector has ``fit(tasks, methods, performance)``, ``predict(tasks) -> [n, n_methods]``
(a score per method, larger is better: predicted performance, or a class probability for the
classifiers) and ``select(tasks)`` (the argmax, a method index per task).

* ISAC (Kadioglu, Malitsky, Sellmann, Tierney, ECAI 2010): cluster the tasks' standardised
  features (k-means; ISAC's g-means picks ``k`` itself, here it is a parameter) and give a new
  task the best method (by mean performance) of its nearest cluster.
* ALORS (Mısır and Sebag, Artificial Intelligence 244, 2017): factor the task x method matrix
  (here the truncated SVD of each task's performance minus its mean: only relative
  performance matters for the choice), learn a random-forest map from task features to the
  task's latent factors, and score a new task's methods by its predicted factors times the
  methods' factors.

>>> import numpy as np
>>> X = np.array([[0.0], [1.0], [2.0]])
>>> perf = np.array([[1.0, 2.0], [1.0, 3.0], [2.0, 1.0]])
>>> GlobalBest().fit(X, ["a", "b"], perf).select(X).tolist()   # b has the best mean
[1, 1, 1]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from murmura.select.table import check_features, check_table


class Selector:
    """The shared interface: fit on a table, score and pick methods for new tasks."""

    name = "selector"

    def fit(self, tasks: Any, methods: Any, performance: Any) -> Selector:
        self.features_, self.methods_, P = check_table(tasks, methods, performance)
        self._fit(self.features_, P)
        return self

    def _fit(self, X: np.ndarray, P: np.ndarray) -> None:
        raise NotImplementedError

    def _check(self, tasks: Any) -> np.ndarray:
        if not hasattr(self, "methods_"):
            raise ValueError(f"{type(self).__name__} is not fitted: call fit(tasks, methods, "
                             "performance) first")
        return check_features(tasks, self.features_.shape[1])

    def predict(self, tasks: Any) -> np.ndarray:
        """A score per (task, method), ``[n_tasks, n_methods]``; larger is better."""
        raise NotImplementedError

    def select(self, tasks: Any) -> np.ndarray:
        """The chosen method's index per task."""
        return self.predict(tasks).argmax(1)


class GlobalBest(Selector):
    """Always the method with the best mean training performance (``rule="mean"``), or the one
    best on the most training tasks (``rule="wins"``)."""

    name = "global_best"

    def __init__(self, rule: str = "mean"):
        if rule not in ("mean", "wins"):
            raise ValueError(f"rule={rule!r}: choose 'mean' or 'wins'")
        self.rule = rule

    def _fit(self, X: np.ndarray, P: np.ndarray) -> None:
        self.scores_ = (P.mean(0) if self.rule == "mean"
                        else np.bincount(P.argmax(1), minlength=P.shape[1]).astype(float))

    def predict(self, tasks: Any) -> np.ndarray:
        X = self._check(tasks)
        return np.tile(self.scores_, (len(X), 1))


class RandomChoice(Selector):
    """A uniformly random method per task (seeded)."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def _fit(self, X: np.ndarray, P: np.ndarray) -> None:
        self._rng = np.random.default_rng(self.seed)

    def predict(self, tasks: Any) -> np.ndarray:
        X = self._check(tasks)
        return self._rng.random((len(X), len(self.methods_)))


class BestMethodClassifier(Selector):
    """A classifier from task features to the best method's index: ``model="random_forest"``
    or ``"gradient_boosting"`` (scikit-learn, default settings but the seed)."""

    def __init__(self, model: str = "random_forest", seed: int = 0):
        if model not in ("random_forest", "gradient_boosting"):
            raise ValueError(f"model={model!r}: choose 'random_forest' or 'gradient_boosting'")
        self.model, self.seed, self.name = model, seed, model

    def _fit(self, X: np.ndarray, P: np.ndarray) -> None:
        from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier

        best = P.argmax(1)
        self.classes_ = np.unique(best)
        if len(self.classes_) == 1:  # sklearn's boosting refuses one class
            self.classifier_ = None
            return
        cls = RandomForestClassifier if self.model == "random_forest" else \
            GradientBoostingClassifier
        self.classifier_ = cls(random_state=self.seed).fit(X, best)

    def predict(self, tasks: Any) -> np.ndarray:
        X = self._check(tasks)
        scores = np.zeros((len(X), len(self.methods_)))
        if self.classifier_ is None:
            scores[:, self.classes_[0]] = 1.0
        else:
            scores[:, self.classes_] = self.classifier_.predict_proba(X)
        return scores


def _standardise(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = X.std(0)
    return X.mean(0), np.where(scale > 0, scale, 1.0)


class ISAC(Selector):
    """Instance-specific algorithm configuration: k-means clusters of the standardised task
    features, the best method (mean performance) per cluster."""

    name = "isac"

    def __init__(self, clusters: int = 8, seed: int = 0):
        if int(clusters) < 1:
            raise ValueError(f"clusters={clusters} must be >= 1")
        self.clusters, self.seed = int(clusters), seed

    def _fit(self, X: np.ndarray, P: np.ndarray) -> None:
        from sklearn.cluster import KMeans

        self.center_, self.scale_ = _standardise(X)
        k = min(self.clusters, len(np.unique(X, axis=0)))
        self.kmeans_ = KMeans(k, n_init=10, random_state=self.seed).fit(
            (X - self.center_) / self.scale_)
        labels = self.kmeans_.labels_
        self.cluster_scores_ = np.stack([P[labels == c].mean(0) for c in range(k)])

    def predict(self, tasks: Any) -> np.ndarray:
        X = self._check(tasks)
        return self.cluster_scores_[self.kmeans_.predict((X - self.center_) / self.scale_)]


class ALORS(Selector):
    """Low-rank factorisation of the (row-centred) task x method matrix and a random-forest
    regressor from task features to the latent task factors."""

    name = "alors"

    def __init__(self, rank: int = 3, seed: int = 0):
        if int(rank) < 1:
            raise ValueError(f"rank={rank} must be >= 1")
        self.rank, self.seed = int(rank), seed

    def _fit(self, X: np.ndarray, P: np.ndarray) -> None:
        from sklearn.ensemble import RandomForestRegressor

        centred = P - P.mean(1, keepdims=True)
        U, S, Vt = np.linalg.svd(centred, full_matrices=False)
        r = min(self.rank, len(S))
        self.method_factors_ = Vt[:r]                   # [r, m]
        latent = U[:, :r] * S[:r]                       # [n, r]: centred = latent @ Vt[:r]
        self.regressor_ = RandomForestRegressor(random_state=self.seed).fit(
            X, latent[:, 0] if r == 1 else latent)

    def predict(self, tasks: Any) -> np.ndarray:
        X = self._check(tasks)
        latent = self.regressor_.predict(X).reshape(len(X), len(self.method_factors_))
        return latent @ self.method_factors_
