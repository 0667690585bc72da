"""Experiment kinds: `kind` in the TOML picks what `murmura run` runs, into a run directory."""

from __future__ import annotations

import json

import pytest

from murmura.cli import main
from murmura.config import ConfigError, Experiment
from murmura.runner import run_experiment
from murmura.runner.kinds import KINDS


@pytest.fixture
def toy_kind():
    @KINDS.register("toy_steps", "a test kind: a decreasing loss, one record per step",
                    overwrite=True)
    def toy(context, steps: int = 4, rate: float = 0.5, fail_at: int = -1):
        for step in range(steps):
            if step == fail_at:
                raise ValueError(f"step {step} went wrong")
            yield {"round": step, "loss": rate ** step, "seed": context.seed}
        return {"steps_run": steps}

    yield "toy_steps"
    KINDS._entries.pop("toy_steps", None)


def test_swarm_is_the_default_and_listed(capsys):
    assert Experiment.from_dict({}).kind is None
    assert Experiment.from_dict({"kind": "swarm"}).kind.name == "swarm"
    assert main(["list", "kinds"]) == 0
    assert "swarm" in capsys.readouterr().out


def test_a_kind_runs_into_a_run_directory(tmp_path, toy_kind):
    exp = Experiment.from_dict({"name": "t", "seed": 3, "rounds": 4,
                                "kind": {"name": toy_kind, "steps": 4, "rate": 0.5},
                                "output": {"plots": False, "report": False}})
    result = run_experiment(exp, tmp_path / "run", progress=False)
    assert result.status == "completed"
    assert [r["loss"] for r in result.history] == [1.0, 0.5, 0.25, 0.125]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["simulation"] == {"kind": toy_kind, "kind_params": {"steps": 4, "rate": 0.5},
                                     "steps_run": 4}
    assert summary["final"]["loss"] == 0.125 and summary["rounds_done"] == 4
    assert (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0] == "round,loss,seed"
    # the resolved config reads back, and runs again
    again = Experiment.from_toml(tmp_path / "run" / "config.toml")
    assert again.kind.name == toy_kind and again.kind.params == {"steps": 4, "rate": 0.5}


def test_a_kinds_own_columns_get_a_figure_in_its_report(tmp_path, toy_kind):
    from murmura.report import load_run
    from murmura.report.kind_plots import own_columns

    exp = Experiment.from_dict({"name": "t", "rounds": 4, "kind": {"name": toy_kind}})
    result = run_experiment(exp, tmp_path / "run", progress=False)
    assert result.status == "completed"
    run = load_run(tmp_path / "run")
    assert run.kind == toy_kind and own_columns(run) == ["loss", "seed"]
    assert sorted(p.name for p in (tmp_path / "run" / "plots").glob("*.png")) == ["metrics.png"]
    page = (tmp_path / "run" / "report.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == 1 and "own columns: regret" in page
    assert ">loss</th>" in page and "<td class=\"num\">0.125</td>" in page  # the rows table


def test_a_sweep_of_a_kind_summarizes_its_own_numbers(tmp_path, toy_kind):
    from murmura.runner.sweep import run_sweep

    exp = Experiment.from_dict({"name": "t", "rounds": 3, "kind": {"name": toy_kind, "steps": 3},
                                "output": {"plots": False, "report": False}})
    runs = run_sweep(exp, {"kind.rate": [0.5, 0.1]}, [0, 1], tmp_path / "sweep")
    rows = (tmp_path / "sweep" / "sweep.csv").read_text().splitlines()
    assert rows[0] == "kind.rate,seed,status,seconds,loss,run_dir"  # the seed is the sweep's
    summary = json.loads((tmp_path / "sweep" / "sweep_summary.json").read_text())["settings"]
    assert [s["loss_mean"] for s in summary] == pytest.approx([0.25, 0.01])
    assert all(r.status == "completed" for r in runs)


def test_a_failing_kind_keeps_what_it_yielded(tmp_path, toy_kind):
    exp = Experiment.from_dict({"kind": {"name": toy_kind, "fail_at": 2},
                                "output": {"plots": False, "report": False}})
    result = run_experiment(exp, tmp_path / "run", progress=False)
    assert result.status == "failed" and len(result.history) == 2
    assert "step 2 went wrong" in result.summary["message"]


def test_kind_errors_are_clear(toy_kind):
    with pytest.raises(ConfigError, match="has no parameter 'stpes'"):
        Experiment.from_dict({"kind": {"name": toy_kind, "stpes": 3}})
    with pytest.raises(ConfigError, match="unknown kind|no kind"):
        Experiment.from_dict({"kind": "no_such_kind"})
    with pytest.raises(ConfigError, match="algorithm: kind 'toy_steps' does not read it"):
        Experiment.from_dict({"kind": toy_kind, "algorithm": {"name": "fedavg"}}).check()


def test_comparing_runs_of_a_kind_shows_their_own_numbers(tmp_path, toy_kind, capsys):
    for rate in (0.5, 0.1):
        exp = Experiment.from_dict({"name": f"r{rate}", "rounds": 3,
                                    "kind": {"name": toy_kind, "steps": 3, "rate": rate},
                                    "output": {"plots": False, "report": False}})
        run_experiment(exp, tmp_path / f"r{rate}", progress=False)
    assert main(["compare", str(tmp_path / "r0.5"), str(tmp_path / "r0.1"), "--out",
                 str(tmp_path / "cmp")]) == 0
    assert "loss" in capsys.readouterr().out
    page = (tmp_path / "cmp" / "comparison.html").read_text()
    assert "<th class=\"num\">loss</th>" in page
    assert "<td class=\"num\">0.25</td>" in page and "<td class=\"num\">0.01</td>" in page
