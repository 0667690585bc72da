"""Optional trackers: called with every round's numbers; a missing package is a clear error."""

from __future__ import annotations

import importlib.util
import sys
import types

import pytest

from murmura.config import ConfigError, Experiment
from murmura.runner import run_experiment
from murmura.runner.loggers import flat_config, numeric

BASE = {"rounds": 3, "data": {"dataset": "digits", "nodes": 4},
        "algorithm": {"name": "fedavg", "local_steps": 1},
        "output": {"plots": False, "report": False, "checkpoint_every": 0}}


def _with_loggers(*names: str) -> Experiment:
    return Experiment.from_dict({**BASE, "output": {**BASE["output"], "loggers": list(names)}})


def test_wandb_receives_config_and_every_round(monkeypatch, tmp_path):
    calls: dict[str, list] = {"init": [], "log": [], "finish": []}

    class Run:
        def log(self, metrics, step):
            calls["log"].append((step, metrics))

        def finish(self):
            calls["finish"].append(True)

    def init(**kwargs):
        calls["init"].append(kwargs)
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    run_experiment(_with_loggers("wandb"), tmp_path / "run", progress=False)
    assert calls["init"][0]["config"]["algorithm"]["name"] == "fedavg"
    assert [step for step, _ in calls["log"]] == [0, 1, 2]
    assert "test_accuracy" in calls["log"][-1][1] and calls["finish"] == [True]


def test_mlflow_receives_flat_params_and_metrics(monkeypatch, tmp_path):
    calls: dict[str, list] = {"params": [], "metrics": [], "end": []}
    fake = types.SimpleNamespace(
        set_tracking_uri=lambda uri: calls.setdefault("uri", []).append(uri),
        start_run=lambda run_name: calls.setdefault("run", []).append(run_name),
        log_params=lambda p: calls["params"].append(p),
        log_metrics=lambda m, step: calls["metrics"].append((step, m)),
        end_run=lambda: calls["end"].append(True),
    )
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_experiment(_with_loggers("mlflow"), tmp_path / "run", progress=False)
    assert calls["params"][0]["algorithm.name"] == "fedavg"
    assert calls["uri"][0].startswith("file:") and calls["uri"][0].endswith("mlruns")
    assert [s for s, _ in calls["metrics"]] == [0, 1, 2] and calls["end"] == [True]


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None,
                    reason="tensorboard is installed: the missing-package message cannot show")
def test_missing_tracker_package_is_a_clear_error_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"pip install 'murmura\[tensorboard\]'"):
        run_experiment(_with_loggers("tensorboard"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_numeric_and_flat_config():
    assert numeric({"round": 3, "a": 1, "b": float("nan"), "c": "x", "d": True}) == {"a": 1.0}
    assert flat_config({"a": {"b": 1, "c": [1, 2]}}) == {"a.b": 1, "a.c": "[1, 2]"}
