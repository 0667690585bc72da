"""The `online` kind: murmura run's records are run_online's numbers."""

from __future__ import annotations

import pytest

from murmura.config import Experiment
from murmura.optim import OOMD, SEASequence, run_online
from murmura.runner import run_experiment


def test_online_kind_records_the_regret_run_online_computes(tmp_path):
    exp = Experiment.from_dict({"seed": 4, "rounds": 4, "kind": {
        "name": "online", "learner": "oomd", "schedule": "switching", "sigma": 0.1,
        "horizon": 400}, "output": {"plots": False, "report": False}})
    result = run_experiment(exp, tmp_path / "run", progress=False)
    assert result.status == "completed"
    assert [r["t"] for r in result.history] == [100, 200, 300, 400]
    c, xi = SEASequence(dim=10, schedule="switching", sigma=0.1, scale=0.5, seed=4).draw(400)
    direct = run_online(OOMD(radius=1.0, delta=1.0, smoothness=1.0), c, xi,
                        checkpoints=[100, 200, 300, 400])
    assert [r["regret"] for r in result.history] == pytest.approx(direct["regret"].tolist())
    assert result.summary["simulation"]["learner"] == "oomd"


def test_online_kind_refuses_bad_settings(tmp_path):
    exp = Experiment.from_dict({"rounds": 2, "kind": {"name": "online", "learner": "adam"},
                                "output": {"plots": False, "report": False}})
    result = run_experiment(exp, tmp_path / "run", progress=False)
    assert result.status == "failed" and "choose one of oomd" in result.summary["message"]
    exp = Experiment.from_dict({"rounds": 5, "kind": {"name": "online", "horizon": 3},
                                "output": {"plots": False, "report": False}})
    result = run_experiment(exp, tmp_path / "run2", progress=False)
    assert result.status == "failed" and "shorter than" in result.summary["message"]
