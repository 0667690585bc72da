"""GBNN (spec federated.md section 12): hand-computed first stages, the Newton step with its
shrinkage, staged predictions, the assembled network and the refused inputs."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from murmura.learners.gbnn import GBNNClassifier, GBNNRegressor, fit_stage

X3 = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 2.0]])


def stage_output(model, X, t):
    w1, b1, w2, b2 = model.stages_[t]
    return torch.sigmoid(torch.as_tensor(X) @ w1 + b1) @ w2 + b2


def test_squared_loss_first_stage_by_hand():
    reg = GBNNRegressor(n_units=1, units_per_stage=1, learning_rate=0.5, subsample=1.0)
    reg.fit(X3, [1.0, 2.0, 6.0])
    assert reg.init_.item() == pytest.approx(3.0)
    F0 = reg.init_.expand(3, 1)
    assert reg._residuals(torch.tensor([[1.0], [2.0], [6.0]], dtype=torch.float64),
                          F0).flatten().tolist() == pytest.approx([-2.0, -1.0, 3.0])
    assert reg.steps_ == [0.5]  # Newton step 1 for squared loss, times the learning rate
    h = stage_output(reg, X3, 0)[:, 0].numpy()
    np.testing.assert_allclose(reg.predict(X3), 3.0 + 0.5 * h, atol=1e-12)


def test_log_loss_first_stage_by_hand():
    clf = GBNNClassifier(n_units=1, learning_rate=0.3, subsample=1.0).fit(X3, ["a", "b", "b"])
    # ȳ = 1/3 in ±1 coding: F0 = ½ log((4/3)/(2/3)) = ½ log 2
    assert clf.init_.item() == pytest.approx(0.5 * math.log(2))
    y = torch.tensor([[-1.0], [1.0], [1.0]], dtype=torch.float64)
    R = clf._residuals(y, clf.init_.expand(3, 1))
    assert R.flatten().tolist() == pytest.approx([-4 / 3, 2 / 3, 2 / 3])
    H = stage_output(clf, X3, 0).numpy()
    r, yy = R.numpy(), y.numpy()
    newton = (r * H).sum() / (r * H * H * (2 * yy - r)).sum()
    assert clf.steps_[0] == pytest.approx(0.3 * newton, rel=1e-10)
    F = 0.5 * math.log(2) + clf.steps_[0] * H[:, 0]
    np.testing.assert_allclose(clf.decision_function(X3), F, atol=1e-12)
    p1 = 1 / (1 + np.exp(-2 * F))
    np.testing.assert_allclose(clf.predict_proba(X3), np.stack([1 - p1, p1], 1), atol=1e-12)


def test_multiclass_first_stage_by_hand():
    clf = GBNNClassifier(n_units=2, units_per_stage=2, learning_rate=0.7, subsample=1.0)
    clf.fit(X3, [2, 0, 1])
    assert clf.init_.tolist() == [[0.0, 0.0, 0.0]]
    Y = torch.eye(3, dtype=torch.float64)[[2, 0, 1]]
    R = clf._residuals(Y, torch.zeros(3, 3, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(R, Y.numpy() - 1 / 3, atol=1e-12)
    H = stage_output(clf, X3, 0).numpy()
    newton = (H * R).sum() / (H * H * (1 / 3) * (2 / 3)).sum()
    assert clf.steps_[0] == pytest.approx(0.7 * newton, rel=1e-10)
    np.testing.assert_allclose(clf.decision_function(X3), clf.steps_[0] * H, atol=1e-12)


def test_stage_fits_its_residuals():
    X = torch.linspace(-1, 1, 30, dtype=torch.float64)[:, None]
    R = 0.5 * X
    w1, b1, w2, b2 = fit_stage(X, R, 2, "logistic", 200, 0.0, torch.Generator().manual_seed(0))
    assert ((torch.sigmoid(X @ w1 + b1) @ w2 + b2 - R) ** 2).mean() < 1e-6


@pytest.fixture(scope="module")
def digits_model():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = X[:400] / 16.0
    y = y[:400]
    return GBNNClassifier(n_units=16, units_per_stage=2, learning_rate=0.5, max_iter=50,
                          seed=1).fit(X, y), X, y


def test_staged_predictions_end_at_predict_and_learn(digits_model):
    clf, X, y = digits_model
    staged = list(clf.staged_predict(X))
    assert len(staged) == clf.n_stages_ == 8
    np.testing.assert_array_equal(staged[-1], clf.predict(X))
    np.testing.assert_array_equal(staged[2], clf.predict(X, n_stages=3))
    scores = clf.staged_score(X, y)
    assert scores[-1] == pytest.approx(clf.score(X, y)) and scores[-1] > 0.8
    assert clf.train_loss_[-1] < clf.train_loss_[0]


def test_to_sequential_equals_boosted_scores(digits_model):
    clf, X, _ = digits_model
    net = clf.to_sequential(dtype=torch.float64)
    assert net[0].out_features == 16 and net[2].out_features == 10
    out = net(torch.as_tensor(X)).detach().numpy()
    np.testing.assert_allclose(out, clf.decision_function(X), atol=1e-5)
    out32 = clf.to_sequential()(torch.as_tensor(X, dtype=torch.float32)).detach().numpy()
    np.testing.assert_allclose(out32, clf.decision_function(X), atol=1e-4)
    half = clf.to_sequential(n_stages=4, dtype=torch.float64)
    np.testing.assert_allclose(half(torch.as_tensor(X)).detach().numpy(),
                               clf.decision_function(X, n_stages=4), atol=1e-5)


def test_to_sequential_binary_and_regression():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    clf = GBNNClassifier(n_units=6, units_per_stage=3, max_iter=30).fit(X, X[:, 0] > 0)
    logits = clf.to_sequential(dtype=torch.float64)(torch.as_tensor(X)).detach()
    F = clf.decision_function(X)
    np.testing.assert_allclose(logits.numpy(), np.stack([-F, F], 1), atol=1e-5)
    np.testing.assert_allclose(logits.softmax(1).numpy(), clf.predict_proba(X), atol=1e-10)
    reg = GBNNRegressor(n_units=4, max_iter=30).fit(X, X[:, 1] * 2)
    out = reg.to_sequential(dtype=torch.float64)(torch.as_tensor(X)).detach().numpy()[:, 0]
    np.testing.assert_allclose(out, reg.predict(X), atol=1e-5)
    np.testing.assert_allclose(list(reg.staged_predict(X))[-1], reg.predict(X))


def test_deterministic_given_seed():
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(30, 2)), rng.integers(0, 3, 30)
    a = GBNNClassifier(n_units=4, max_iter=20, seed=3).fit(X, y).decision_function(X)
    b = GBNNClassifier(n_units=4, max_iter=20, seed=3).fit(X, y).decision_function(X)
    c = GBNNClassifier(n_units=4, max_iter=20, seed=4).fit(X, y).decision_function(X)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("kwargs, message", [
    ({"n_units": 5, "units_per_stage": 2}, "multiple of units_per_stage"),
    ({"n_units": 0}, "n_units must be a positive integer"),
    ({"units_per_stage": 0}, "units_per_stage must be"),
    ({"learning_rate": 0.0}, "learning_rate must be > 0"),
    ({"subsample": 1.5}, r"subsample must be in \(0, 1\]"),
    ({"max_iter": 0}, "max_iter must be"),
    ({"activation": "gelu"}, "activation must be one of"),
    ({"alpha": -1.0}, "alpha must be >= 0"),
    ({"subsample": 0.1}, "leaves no sample"),
])
def test_bad_hyperparameters_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GBNNClassifier(**kwargs).fit(X3, [0, 1, 1])


def test_bad_inputs_refused():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(ValueError, match="2-D"):
        GBNNClassifier().fit(np.zeros(3), [0, 1, 1])
    with pytest.raises(ValueError, match="empty"):
        GBNNClassifier().fit(np.zeros((0, 2)), [])
    with pytest.raises(ValueError, match="1-D with 3"):
        GBNNClassifier().fit(X3, [0, 1])
    with pytest.raises(ValueError, match="at least two classes"):
        GBNNClassifier().fit(X3, [1, 1, 1])
    with pytest.raises(ValueError, match="NaN"):
        GBNNRegressor().fit(X3, [0.0, np.nan, 1.0])
    with pytest.raises(NotFittedError):
        GBNNClassifier().predict(X3)
    clf = GBNNClassifier(n_units=2, max_iter=5, subsample=1.0).fit(X3, [0, 1, 1])
    with pytest.raises(ValueError, match="3 features, the model was fitted on 2"):
        clf.predict(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"n_stages must be an integer in \[0, 2\]"):
        clf.predict(X3, n_stages=3)


def test_experiment_quick_mode(tmp_path):
    path = Path(__file__).resolve().parents[1] / "experiments" / "gbnn" / "run.py"
    spec = importlib.util.spec_from_file_location("experiment_gbnn", path)
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    assert run.main(["--quick", "--out", str(tmp_path)]) == 0
    import json

    result = json.loads((tmp_path / "results" / "gbnn_quick.json").read_text())
    assert set(result["table"]["breast_cancer"]) == {"gbnn", *run.MLPS}
    assert (tmp_path / "gbnn_quick.png").exists()


def test_the_gbnn_kind_records_the_staged_accuracy(tmp_path):
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    from murmura.config import Experiment
    from murmura.learners.gbnn import GBNNClassifier
    from murmura.runner import run_experiment

    exp = Experiment.from_dict({"seed": 1, "rounds": 3, "kind": {
        "name": "gbnn", "dataset": "breast_cancer", "n_units": 6, "units_per_stage": 2},
        "output": {"plots": False, "report": False}})
    result = run_experiment(exp, tmp_path / "run", progress=False)
    assert result.status == "completed" and [r["units"] for r in result.history] == [2, 4, 6]
    X, y = load_breast_cancer(return_X_y=True)
    a, b, ya, yb = train_test_split(X, y, test_size=0.25, stratify=y, random_state=1)
    scaler = StandardScaler().fit(a)
    model = GBNNClassifier(n_units=6, units_per_stage=2, learning_rate=0.5, subsample=0.5,
                           seed=1).fit(scaler.transform(a), ya)
    assert [r["test_accuracy"] for r in result.history] == model.staged_score(
        scaler.transform(b), yb)
