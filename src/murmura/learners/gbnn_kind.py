"""The ``gbnn`` kind (:mod:`murmura.learners.gbnn` on an sklearn dataset), apart from the
learner so that ``import murmura`` registers it without loading scikit-learn."""

from __future__ import annotations


def _register_kind() -> None:
    from murmura.runner.kinds import KINDS

    @KINDS.register("gbnn", "GBNN, a network boosted stage by stage, on an sklearn dataset: "
                    "test accuracy after each stage", overwrite=True)
    def gbnn_kind(context, dataset: str = "digits", n_units: int = 20,
                  units_per_stage: int = 2, learning_rate: float = 0.5, subsample: float = 0.5,
                  test_fraction: float = 0.25):
        """Fit :class:`GBNNClassifier` on a stratified split of ``dataset`` (``digits`` or
        ``breast_cancer``, scikit-learn's, offline), keyed by the experiment's seed, and record
        the test accuracy after each stage (``round`` = stage, ``units`` used so far)."""
        from sklearn import datasets
        from sklearn.model_selection import train_test_split
        from sklearn.preprocessing import StandardScaler

        from murmura.learners.gbnn import GBNNClassifier

        loaders = {"digits": datasets.load_digits, "breast_cancer": datasets.load_breast_cancer}
        if dataset not in loaders:
            raise ValueError(f"dataset {dataset!r}: choose one of {', '.join(loaders)}")
        X, y = loaders[dataset](return_X_y=True)
        X_train, X_test, y_train, y_test = train_test_split(
            X, y, test_size=test_fraction, stratify=y, random_state=context.seed)
        scaler = StandardScaler().fit(X_train)
        model = GBNNClassifier(n_units=n_units, units_per_stage=units_per_stage,
                               learning_rate=learning_rate, subsample=subsample,
                               seed=context.seed)
        model.fit(scaler.transform(X_train), y_train)
        for stage, accuracy in enumerate(model.staged_score(scaler.transform(X_test), y_test)):
            yield {"round": stage, "units": (stage + 1) * units_per_stage,
                   "test_accuracy": accuracy}
        return {"dataset": dataset, "train_samples": len(y_train)}


_register_kind()
