"""Clocked runs from a TOML file: `murmura run` with a [clock] section (issue 14)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from murmura.cli import main
from murmura.clock import EventLog
from murmura.config import ConfigError, Experiment
from murmura.runner import RunError, run_experiment

REPO = Path(__file__).resolve().parents[1]
FEDBUFF, GOSSIP = REPO / "examples" / "clock_fedbuff.toml", REPO / "examples" / "clock_gossip.toml"
MODEST = REPO / "examples" / "clock_modest.toml"
# the examples' structure, at half their simulated time (two evaluations), on one thread
QUICK = ["clock.until=10.0", "clock.eval_every=5.0", "engine.threads=1"]
SUMMARY_KEYS = {"name", "status", "rounds_done", "total_rounds", "final", "simulation", "seconds"}
CLOCK_KEYS = {"simulated_seconds", "events", "staleness", "busy_seconds", "idle_seconds"}


@pytest.fixture(autouse=True)
def _keep_threads():
    """engine.threads sets torch's threads for the process: give the other tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def header(path: Path) -> list[str]:
    with path.open(newline="") as fh:
        return next(csv.reader(fh))


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def check_run_directory(run_dir: Path, nodes: int, clock_columns: set[str]) -> dict:
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.toml", "metrics.csv", "metrics.jsonl", "summary.json", "events.csv",
            "topology.json", "plots"} <= names
    assert "checkpoints" not in names and "report.html" not in names  # no resume, no report
    assert (run_dir / "plots" / "curves.png").is_file()
    columns = header(run_dir / "metrics.csv")
    assert columns[0] == "time"
    assert {"test_accuracy", "test_loss", "bytes_sent_total", "bytes_sent_per_node_mean",
            "bytes_received_total"} | clock_columns <= set(columns)
    assert [float(r["time"]) for r in rows(run_dir / "metrics.csv")] == [5.0, 10.0]
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    summary = json.loads((run_dir / "summary.json").read_text())
    assert SUMMARY_KEYS | CLOCK_KEYS <= set(summary)
    assert summary["status"] == "completed" and summary["rounds_done"] == 2
    assert summary["total_rounds"] == 2 and summary["simulated_seconds"] == 10.0
    assert summary["final"]["time"] == 10.0 and 0.0 < summary["final"]["test_accuracy"] <= 1.0
    assert len(summary["busy_seconds"]) == len(summary["idle_seconds"]) == nodes
    log = EventLog.read(run_dir / "events.csv")
    assert len(log) == summary["events"] > 0
    assert Experiment.from_toml(run_dir / "config.toml").clock is not None
    return summary


def test_fedbuff_example_runs_and_the_cli_repeats_it_exactly(tmp_path, capsys):
    exp = Experiment.from_toml(FEDBUFF, QUICK)
    result = run_experiment(exp, tmp_path / "run", progress=False)
    assert result.status == "completed" and len(result.history) == 2
    summary = check_run_directory(tmp_path / "run", exp.data.nodes,
                                  {"version", "updates_applied", "staleness_mean",
                                   "server_bytes_sent_total"})
    arrived = sum(summary["staleness"].values())
    assert arrived == summary["final"]["updates_applied"] > 0
    assert summary["final"]["version"] == arrived // 4  # K = 4, nothing dropped
    # the same experiment through the command line, with a rounds that a clocked run ignores
    args = ["run", str(FEDBUFF), "--out", str(tmp_path / "again"), "--quiet", "--set",
            "rounds=3"] + [a for item in QUICK for a in ("--set", item)]
    assert main(args) == 0
    assert "completed: 10 simulated seconds" in capsys.readouterr().out
    for name in ("metrics.csv", "events.csv"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "run" / name).read_bytes()


def test_gossip_example_runs_and_repeats_exactly(tmp_path):
    exp = Experiment.from_toml(GOSSIP, QUICK)
    first = run_experiment(exp, tmp_path / "a", progress=False)
    summary = check_run_directory(tmp_path / "a", exp.data.nodes,
                                  {"exchanges", "dropped", "wakes", "consensus_distance"})
    final = summary["final"]
    assert 0 < final["dropped"] < final["exchanges"] < final["wakes"]  # drops and churn
    assert json.loads((tmp_path / "a" / "topology.json").read_text())["kind"] == "graph"
    second = run_experiment(exp, tmp_path / "b", progress=False)
    assert second.history.records == first.history.records
    for name in ("metrics.csv", "events.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_modest_example_runs_as_clocked_modest_does(tmp_path):
    from murmura.clock.modest import ClockedModest
    from murmura.runner import build_simulation

    exp = Experiment.from_toml(MODEST, QUICK)
    result = run_experiment(exp, tmp_path / "run", progress=False)
    assert result.status == "completed" and len(result.history) == 2
    summary = check_run_directory(tmp_path / "run", exp.data.nodes,
                                  {"round", "aggregations", "dropped_rounds", "late_models"})
    assert summary["final"]["aggregations"] > 0
    # the same protocol built by hand around the same simulation
    sim = build_simulation(exp.check(), "local")
    direct = ClockedModest(sim, 6, 2, 0.8, min_models=3, ping_timeout=1.0,
                           aggregation_timeout=10.0, compute=exp.clock.compute,
                           availability=exp.clock.availability)
    records = direct.run(10.0, 5.0)
    assert [r["test_accuracy"] for r in records] == [r["test_accuracy"] for r in result.history]
    assert [r["round"] for r in records] == [r["round"] for r in result.history]


def test_resume_of_a_clocked_run_is_a_clear_error(tmp_path, capsys):
    run_dir = tmp_path / "run"
    exp = Experiment.from_toml(FEDBUFF, ["data.nodes=8", "clock.until=1.0",
                                         "clock.eval_every=1.0", "engine.threads=1",
                                         "output.plots=false"])
    assert run_experiment(exp, run_dir, progress=False).status == "completed"
    assert main(["run", "--resume", str(run_dir), "--quiet"]) == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert "clocked run" in err and "cannot be resumed" in err and "Traceback" not in err
    with pytest.raises(RunError, match="not checkpointed"):
        run_experiment(exp, run_dir, resume=True, progress=False)


def test_ctrl_c_keeps_the_evaluations_so_far(tmp_path, monkeypatch):
    import murmura.runner.clocked as clocked

    class SecondEvaluation(clocked._StopFlag):
        """Ctrl-C pressed during the second evaluation period."""

        checks = 0

        @property
        def requested(self) -> bool:
            SecondEvaluation.checks += 1
            return SecondEvaluation.checks >= 2

        @requested.setter
        def requested(self, value: bool) -> None:
            pass

    monkeypatch.setattr(clocked, "_StopFlag", SecondEvaluation)
    exp = Experiment.from_toml(FEDBUFF, ["data.nodes=8", "clock.until=3.0",
                                         "clock.eval_every=1.0", "engine.threads=1"])
    result = run_experiment(exp, tmp_path / "run", progress=False)
    assert result.status == "interrupted" and len(result.history) == 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["rounds_done"] == 1
    assert summary["total_rounds"] == 3 and summary["simulated_seconds"] == 1.0
    assert [float(r["time"]) for r in rows(tmp_path / "run" / "metrics.csv")] == [1.0]
    assert len(EventLog.read(tmp_path / "run" / "events.csv")) > 0


FED = {"data": {"dataset": "digits", "nodes": 8}, "algorithm": {"name": "fedavg"}}
DEC = {"data": {"dataset": "digits", "nodes": 8}, "algorithm": {"name": "dsgd"},
       "topology": "ring"}
TIME = {"until": 10.0, "eval_every": 5.0}

# (experiment, [clock] table, words the message must contain)
BAD_CLOCKS = [
    (FED, {**TIME, "mode": "fedbuf"}, ["clock.mode", "fedbuff", "Available", "fedasync"]),
    (FED, {**TIME, "mode": {"name": "fedbuff", "k": 4}}, ["clock.mode", "did you mean 'K'"]),
    (FED, {**TIME, "mode": {"name": "fedbuff", "K": 0}}, ["clock.mode", "K must be"]),
    (FED, {**TIME, "mode": {"K": 4}}, ["clock.mode", "name"]),
    (FED, {**TIME, "mode": [4]}, ["clock.mode", "a name or a table"]),
    (FED, TIME, ["clock", "mode", "protocol"]),
    (FED, {**TIME, "mode": "fedasync", "protocol": "pairwise"}, ["clock.protocol", "mode"]),
    (FED, {**TIME, "protocol": "pairwise"}, ["clock.protocol", "'fedavg'", "clock.mode"]),
    (DEC, {**TIME, "mode": "fedasync"}, ["clock.mode", "'dsgd'", "clock.protocol"]),
    ({**DEC, "topology": None}, {**TIME, "protocol": "pairwise"}, ["topology", "dsgd"]),
    ({**DEC, "topology": "random_matching"}, {**TIME, "protocol": "push"},
     ["clock.protocol", "static"]),
    (DEC, {**TIME, "protocol": "gossip"}, ["clock.protocol", "pairwise"]),
    (DEC, {**TIME, "protocol": "push", "compute": "lognormal"}, ["clock.compute", "gossip"]),
    (DEC, {**TIME, "protocol": "push", "concurrency": 2}, ["clock.concurrency", "gossip"]),
    (FED, {**TIME, "mode": "fedasync", "drop": 0.1}, ["clock.drop", "federated"]),
    (FED, {**TIME, "mode": "fedasync", "concurrency": 9}, ["clock.concurrency", "8"]),
    (FED, {"until": 10.0, "eval_every": 20.0, "mode": "sync"}, ["clock.eval_every", "until"]),
    (FED, {"until": 0.0, "eval_every": 1.0, "mode": "sync"}, ["clock.until", "> 0"]),
    (FED, {"eval_every": 1.0, "mode": "sync"}, ["clock.until", "missing"]),
    (FED, {**TIME, "mode": "sync", "compute": {"name": "lognormal", "muu": -2.0}},
     ["clock.compute", "muu"]),
    (FED, {**TIME, "mode": "sync", "compute": "gpu"}, ["clock.compute", "lognormal"]),
    (FED, {**TIME, "mode": "sync", "links": {"bandwith": 1e6}}, ["clock.links", "bandwidth"]),
    (DEC, {**TIME, "protocol": "push", "availability": {"name": "markov"}},
     ["clock.availability", "mean_on"]),
    (DEC, {**TIME, "protocol": "push", "drop": 1.0}, ["clock.drop", "< 1"]),
    (FED, {**TIME, "mode": "sync", "colour": 1}, ["clock.colour", "unknown key"]),
    ({**FED, "algorithm": {"name": "fedavg", "fraction": 0.5}}, {**TIME, "mode": "sync"},
     ["algorithm.fraction", "clock"]),
    ({**FED, "participation": {"name": "bernoulli"}}, {**TIME, "mode": "sync"},
     ["participation", "clock"]),
    ({**FED, "engine": {"backend": "dist"}}, {**TIME, "mode": "sync"}, ["engine.backend"]),
    (FED, {**TIME, "modest": {}}, ["clock.modest", "'fedavg'", "modest"]),
    (FED, {**TIME, "mode": "sync", "modest": {}}, ["clock.modest", "keep one"]),
    (FED, {**TIME, "modest": {"ping_timout": 1.0}}, ["clock.modest", "ping_timeout"]),
    (FED, {**TIME, "modest": {"ping_timeout": 0}}, ["clock.modest", "> 0"]),
    (FED, {**TIME, "modest": {}, "concurrency": 2}, ["clock.concurrency", "no server"]),
    (FED, {**TIME, "modest": {}, "rate": 2.0}, ["clock.rate", "MoDeST"]),
    (FED, {**TIME, "modest": {}, "window": 0.5}, ["window", "MoDeST"]),
    ({**FED, "algorithm": {"name": "modest", "sample_size": 3, "offline_fraction": 0.2}},
     {**TIME, "modest": {}}, ["offline_fraction", "availability"]),
]


@pytest.mark.parametrize("values,clock,words", BAD_CLOCKS, ids=lambda v: str(v)[:50])
def test_bad_clock_configs_name_the_field(values, clock, words):
    config = {k: v for k, v in {**values, "clock": clock}.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        Experiment.from_dict(config).check()
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} missing from: {message}"
    assert "Traceback" not in message and "pydantic" not in message.lower()


def test_a_bad_clock_on_the_command_line_is_one_message(tmp_path, capsys):
    assert main(["run", str(GOSSIP), "--out", str(tmp_path / "run"), "--set",
                 "clock.mode=fedbuff"]) == 2
    err = capsys.readouterr().err
    assert "clock.protocol" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_clocked_configs_round_trip_and_count_their_evaluations():
    for path in (FEDBUFF, GOSSIP):
        exp = Experiment.from_toml(path).check()
        assert Experiment.from_toml_text(exp.to_toml()) == exp
        assert exp.clock.evaluations() == 2
    clock = Experiment.from_dict({**FED, "clock": {"until": 1.0, "eval_every": 0.1,
                                                   "mode": "fedasync"}}).clock
    assert clock.evaluations() == 10  # 0.1 added ten times is 0.9999999999999999
    assert clock.runner_kwargs()["weighting"] == "samples"


def test_a_real_ctrl_c_stops_at_the_next_evaluation(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    run_dir = tmp_path / "run"
    settings = ["data.nodes=8", "clock.until=1000.0", "clock.eval_every=0.5",
                "engine.threads=1", "output.plots=false"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "murmura", "run", str(FEDBUFF), "--out", str(run_dir), "--quiet",
         *[a for item in settings for a in ("--set", item)]],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        jsonl = run_dir / "metrics.jsonl"
        if jsonl.is_file() and jsonl.read_text().count("\n") >= 1:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "cannot be resumed" in err.replace("\n", " ") and "Traceback" not in err
    summary = json.loads((run_dir / "summary.json").read_text())
    written = rows(run_dir / "metrics.csv")
    assert summary["status"] == "interrupted" and 1 <= len(written) == summary["rounds_done"]
    assert summary["simulated_seconds"] == float(written[-1]["time"]) < 1000.0
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == len(written)
    assert len(EventLog.read(run_dir / "events.csv")) > 0
