"""The `murmura` command end to end on digits: run, resume, sweep, demo, list, compare, report."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from murmura.cli import main
from murmura.config import Experiment
from murmura.runner import RunDirectory, run_experiment

REPO = Path(__file__).resolve().parents[1]

TINY = """
name = "tiny"
seed = 1
rounds = {rounds}

[data]
dataset = "digits"
nodes = 8
partition = {{ name = "dirichlet", alpha = 0.5 }}

[model]
name = "mlp"
hidden = [16]

[topology]
name = "random_regular"
k = 4

[algorithm]
name = "dsgd"
lr = 0.1
momentum = 0.9
local_steps = 2
batch_size = 16

[evaluation]
every = {every}
node_samples = 100

[engine]
threads = 1

[output]
checkpoint_every = {checkpoint_every}
plots = {plots}
report = {plots}
"""

COMPARED = ["test_accuracy", "test_loss", "consensus_distance", "node_accuracy_mean",
            "node_accuracy_min", "bytes_sent_total", "bytes_received_per_node_max"]


def tiny(tmp_path: Path, rounds=6, every=2, checkpoint_every=2, plots="false", name="tiny.toml"):
    path = tmp_path / name
    path.write_text(TINY.format(rounds=rounds, every=every, checkpoint_every=checkpoint_every,
                                plots=plots))
    return path


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "murmura", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)


def test_run_writes_a_complete_run_directory(tmp_path, capsys):
    config = tiny(tmp_path, plots="true")
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--set", "algorithm.lr=0.05"]) == 0
    for name in ("config.toml", "metrics.csv", "metrics.jsonl", "summary.json",
                 "topology.json", "report.html"):
        assert (out / name).is_file(), name
    assert (out / "checkpoints" / "round_000006.safetensors").is_file()
    assert {p.name for p in (out / "plots").glob("*.png")} >= {"accuracy.png", "loss.png",
                                                              "topology.png"}
    resolved = Experiment.from_toml(out / "config.toml")
    assert resolved.algorithm.params["lr"] == 0.05  # the override is what was run
    assert resolved.provenance["murmura_version"]
    with (out / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["round"]) for r in rows] == list(range(6))
    assert rows[0]["test_accuracy"] == "" and rows[1]["test_accuracy"] != ""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_done"] == 6
    assert summary["final"]["test_accuracy"] == pytest.approx(float(rows[-1]["test_accuracy"]))
    assert "accuracy of the average model" in capsys.readouterr().out


def test_console_script_runs_and_bad_config_is_one_clear_message(tmp_path):
    config = tiny(tmp_path, rounds=2)
    done = cli("run", str(config), "--out", str(tmp_path / "ok"), "--quiet")
    assert done.returncode == 0, done.stderr
    bad = cli("run", str(config), "--set", "algorithm.lr=fast")
    assert bad.returncode == 2
    assert "algorithm" in bad.stderr and "'fast'" in bad.stderr
    assert "Traceback" not in bad.stderr + bad.stdout
    missing = cli("run", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "no config file" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_out_directory_that_exists_is_refused_without_losing_it(tmp_path, capsys):
    config = tiny(tmp_path, rounds=2)
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--quiet"]) == 0
    before = (out / "metrics.csv").read_text()
    assert main(["run", str(config), "--out", str(out), "--quiet"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (out / "metrics.csv").read_text() == before


LONG = dict(rounds=200, every=50, checkpoint_every=10)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """Final metrics of the long run done in one go (what a resumed run must end with)."""
    folder = tmp_path_factory.mktemp("reference")
    config = tiny(folder, **LONG)
    result = run_experiment(Experiment.from_toml(config), folder / "run", progress=False)
    assert result.status == "completed"
    return result.final


def start_run(config: Path, run_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "murmura", "run", str(config), "--out", str(run_dir), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_for_checkpoint(proc: subprocess.Popen, run_dir: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if RunDirectory(run_dir).checkpoints():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before a checkpoint: {proc.stderr.read()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("no checkpoint appeared")


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted):
    rounds = LONG["rounds"]
    config = tiny(tmp_path, **LONG)
    run_dir = tmp_path / "killed"
    proc = start_run(config, run_dir)
    try:
        _wait_for_checkpoint(proc, run_dir)
        proc.kill()  # SIGKILL: no handler runs, as when a machine dies
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    done_at_kill = RunDirectory(run_dir).checkpoints()[-1][0]
    assert done_at_kill < rounds  # the kill really interrupted the run
    resumed = cli("run", "--resume", str(run_dir), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert f"from round {done_at_kill}" in resumed.stderr
    final = json.loads((run_dir / "summary.json").read_text())["final"]
    for key in COMPARED:
        assert final[key] == uninterrupted[key], key
    rows = RunDirectory(run_dir).records()
    assert [r["round"] for r in rows] == list(range(rounds))


def test_ctrl_c_stops_cleanly_and_resume_finishes(tmp_path, uninterrupted):
    rounds = LONG["rounds"]
    config = tiny(tmp_path, **LONG)
    run_dir = tmp_path / "stopped"
    proc = start_run(config, run_dir)
    try:
        _wait_for_checkpoint(proc, run_dir)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "murmura run --resume" in err and "Traceback" not in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    stopped = summary["rounds_done"]
    assert 0 < stopped < rounds
    assert RunDirectory(run_dir).checkpoints()[-1][0] == stopped  # a checkpoint of that round
    with (run_dir / "metrics.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == stopped
    assert main(["run", "--resume", str(run_dir), "--quiet"]) == 0
    final = json.loads((run_dir / "summary.json").read_text())["final"]
    for key in COMPARED:
        assert final[key] == uninterrupted[key], key


def test_resume_refuses_extra_arguments_and_non_runs(tmp_path, capsys):
    config = tiny(tmp_path, rounds=2)
    assert main(["run", str(config), "--resume", str(tmp_path)]) == 2
    assert main(["run", "--resume", str(tmp_path / "nothing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_sweep_runs_the_product_and_summarizes(tmp_path, capsys):
    config = tiny(tmp_path, rounds=2, every=1, checkpoint_every=0)
    out = tmp_path / "sweep"
    code = main(["sweep", str(config), "--grid", "algorithm.lr=0.05,0.2", "--seeds", "0,1",
                 "--out", str(out)])
    assert code == 0
    with (out / "sweep.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"completed"}
    assert {(r["algorithm.lr"], r["seed"]) for r in rows} == {
        ("0.05", "0"), ("0.05", "1"), ("0.2", "0"), ("0.2", "1")}
    summary = json.loads((out / "sweep_summary.json").read_text())["settings"]
    assert len(summary) == 2 and all(s["completed"] == 2 for s in summary)
    for setting in summary:
        accs = [float(r["test_accuracy"]) for r in rows
                if float(r["algorithm.lr"]) == setting["algorithm.lr"]]
        assert setting["test_accuracy_mean"] == pytest.approx(sum(accs) / 2)
    for lr in ("0.05", "0.2"):
        for seed in (0, 1):
            run = Experiment.from_toml(out / f"algorithm.lr={lr}" / f"seed{seed}" / "config.toml")
            assert run.seed == seed and run.algorithm.params["lr"] == float(lr)
    assert "mean ± std" in capsys.readouterr().err


def test_sweep_with_worker_processes(tmp_path):
    config = tiny(tmp_path, rounds=2, every=1, checkpoint_every=0)
    out = tmp_path / "sweep"
    assert main(["sweep", str(config), "--grid", "model.hidden=[8],[16]", "--out", str(out),
                 "--workers", "2"]) == 0
    with (out / "sweep.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == 2


def test_sweep_bad_grid_fails_before_running(tmp_path, capsys):
    config = tiny(tmp_path, rounds=2)
    out = tmp_path / "sweep"
    assert main(["sweep", str(config), "--grid", "algorithm.lr=0.1,oops", "--out", str(out)]) == 2
    assert "oops" in capsys.readouterr().err
    assert not out.exists()
    assert main(["sweep", str(config), "--grid", "algorithm.lr", "--out", str(out)]) == 2
    assert main(["sweep", str(config), "--seeds", "a,b", "--out", str(out)]) == 2


@pytest.mark.parametrize("kind", ["algorithms", "topologies", "datasets", "partitions",
                                  "models", "weights"])
def test_list(kind, capsys):
    assert main(["list", kind]) == 0
    out = capsys.readouterr().out
    expected = {"algorithms": "fedavg", "topologies": "ring", "datasets": "digits",
                "partitions": "dirichlet", "models": "mlp", "weights": "metropolis"}[kind]
    assert expected in out


def test_list_unknown_kind(capsys):
    assert main(["list", "algoritms"]) == 2
    assert "did you mean 'algorithms'" in capsys.readouterr().err


def test_compare_and_report(tmp_path, capsys):
    runs = []
    for name, algorithm in (("a", "dsgd"), ("b", "dsgd_final_merge")):
        config = tiny(tmp_path, rounds=3, every=1, name=f"{name}.toml")
        out = tmp_path / name
        assert main(["run", str(config), "--out", str(out), "--quiet",
                     "--set", f"algorithm.name={algorithm}"]) == 0
        runs.append(out)
    capsys.readouterr()
    target = tmp_path / "cmp"
    assert main(["compare", *map(str, runs), "--out", str(target)]) == 0
    printed = capsys.readouterr().out
    assert "comparison" in printed
    assert (target / "comparison.html").is_file()
    assert list(target.glob("*.png"))
    report = runs[0] / "report.html"
    assert not report.exists()  # plots and report were off in this config
    assert main(["report", str(runs[0])]) == 0
    assert report.is_file() and "data:image/png;base64," in report.read_text()
    assert main(["report", str(tmp_path)]) == 2
    assert main(["compare", str(runs[0]), str(tmp_path / "nothing"), "--out", str(target)]) == 2


def test_demo_writes_runs_and_comparison(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--rounds", "2", "--nodes", "8", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "FedAvg" in printed and "final merge" in printed
    for arm in ("fedavg", "ring-dsgd", "ring-dsgd-merge"):
        assert (out / arm / "report.html").is_file()
    assert (out / "comparison.html").is_file()


@pytest.mark.parametrize("command", ["run", "sweep", "demo", "list", "compare", "report"])
def test_help_of_every_command(command, capsys):
    assert main([command, "--help"]) == 0
    assert "Usage" in capsys.readouterr().out


def test_installed_console_script():
    script = Path(sys.executable).with_name("murmura")
    assert script.is_file(), "the murmura console script is not installed (pip install -e .)"
    done = subprocess.run([str(script), "list", "models"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0 and "mlp" in done.stdout


def test_missing_dataset_is_a_clear_error_and_leaves_no_run(tmp_path, capsys, monkeypatch):
    import murmura.data.datasets as datasets

    real = datasets._fashion_candidates
    monkeypatch.setattr(datasets, "_fashion_candidates", lambda root: real(root)[:2])
    config = tiny(tmp_path, rounds=2)
    out = tmp_path / "run"
    code = main(["run", str(config), "--out", str(out), "--set", "data.root=" + str(tmp_path),
                 "--set", 'data.dataset={name = "fashion_mnist", download = false}'])
    assert code == 2
    err = capsys.readouterr().err
    assert "fashion" in err.lower() and str(tmp_path) in err
    assert not out.exists()


def test_second_ctrl_c_mid_round_keeps_the_last_whole_checkpoint(tmp_path, monkeypatch,
                                                                  uninterrupted):
    from murmura.swarm.engine import Simulation

    config = tiny(tmp_path, **LONG)
    run_dir = tmp_path / "run"
    real = Simulation.communicate

    def interrupted_at_round_15(self, plan):
        if self.round == 15:  # trained, not yet communicated: a half-done round
            raise KeyboardInterrupt
        return real(self, plan)

    monkeypatch.setattr(Simulation, "communicate", interrupted_at_round_15)
    result = run_experiment(Experiment.from_toml(config), run_dir, progress=False)
    assert result.status == "interrupted"
    assert RunDirectory(run_dir).checkpoints()[-1][0] == 10  # not the half-done round 15
    monkeypatch.setattr(Simulation, "communicate", real)
    resumed = run_experiment(RunDirectory(run_dir).experiment(), run_dir, resume=True,
                             progress=False)
    for key in COMPARED:
        assert resumed.final[key] == uninterrupted[key], key


def test_plugin_module_beside_the_config_is_found_by_the_console_script(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "my_plugin_models.py").write_text(
        "from torch import nn\n"
        "from murmura.models import MODELS\n\n"
        "@MODELS.register('plugin_linear', 'a plugin model', overwrite=True)\n"
        "def plugin_linear(input_shape, num_classes):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))\n"
    )
    config = tmp_path / "conf" / "exp.toml"
    config.write_text(
        'imports = ["my_plugin_models"]\nrounds = 1\n[data]\nnodes = 4\n'
        '[model]\nname = "plugin_linear"\n[algorithm]\nname = "fedavg"\nlocal_steps = 1\n'
        '[output]\nplots = false\nreport = false\n'
    )
    script = Path(sys.executable).with_name("murmura")
    done = subprocess.run([str(script), "run", str(config), "--out", str(tmp_path / "run"),
                           "--quiet"], capture_output=True, text=True, timeout=120,
                          cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr
    listed = subprocess.run([str(script), "list", "models", "--import", "my_plugin_models"],
                            capture_output=True, text=True, timeout=120,
                            cwd=tmp_path / "conf", check=False)
    assert listed.returncode == 0 and "plugin_linear" in listed.stdout, listed.stderr


def test_error_messages_keep_square_brackets(tmp_path, capsys):
    config = tiny(tmp_path, rounds=2)
    assert main(["run", str(config), "--set", "data.nodse=3"]) == 2
    assert "keys allowed in [data]" in capsys.readouterr().err.replace("\n", " ")


# a tool's example, shrunk to seconds
QUICK_KINDS = {
    "online": ["rounds=2", "kind.horizon=200"],
    "fewshot": ["kind.tasks=20", "kind.batch=10"],
    "gbnn": ["kind.n_units=6"],
    "blackbox": ["kind.budget=60", "kind.starts=2"],
    "metainf": ['kind.selectors=["global_best", "random"]'],
    "gbrl": ["kind.total_steps=2048"],
    "fed_blackbox": ["rounds=2", "kind.dim=10", "kind.local_iters=2"],
}


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.toml")), ids=lambda p: p.name)
def test_every_example_runs(path, tmp_path):
    """Each example, shrunk to digits and two rounds (its structure is what is tested)."""
    exp = Experiment.from_toml(path)
    if exp.kind is not None and exp.kind.name != "swarm":
        quick = ["output.plots=false", "output.report=false", *QUICK_KINDS[exp.kind.name]]
        result = run_experiment(exp.with_overrides(quick), tmp_path / "run", progress=False)
        assert result.status == "completed" and len(result.history) >= 2, result.summary
        return
    overrides = ["rounds=2", "evaluation.every=1", "data.nodes=16", "output.plots=false",
                 "output.report=false"]
    if exp.data.dataset.name == "fashion_mnist":
        overrides.append("data.dataset=digits")
    if exp.model.name == "cnn":  # digits are flat 8x8 features
        overrides.append('model={name = "mlp", hidden = [16]}')
    if exp.data.partition.name == "natural":
        overrides.append("data.partition=iid")
    result = run_experiment(exp.with_overrides(overrides), tmp_path / "run", progress=False)
    assert result.status == "completed" and len(result.history) == 2


def test_demo_never_empties_a_folder_it_did_not_write(tmp_path, capsys):
    (tmp_path / "fedavg").mkdir()
    (tmp_path / "fedavg" / "notes.txt").write_text("mine")
    assert main(["demo", "--rounds", "1", "--nodes", "4", "--out", str(tmp_path)]) == 2
    assert "did not write" in capsys.readouterr().err
    assert (tmp_path / "fedavg" / "notes.txt").read_text() == "mine"
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["demo", "--rounds", "1", "--nodes", "4", "--out", str(afile)]) == 2


def test_paths_that_are_files_are_clear_errors(tmp_path, capsys):
    config = tiny(tmp_path, rounds=1)
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["run", str(config), "--out", str(afile)]) == 2
    assert main(["run", str(config), "--out", str(afile / "sub")]) == 2
    assert main(["sweep", str(config), "--out", str(afile)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "afile" in err


def test_resume_refuses_a_config_edited_after_the_checkpoints(tmp_path, capsys):
    config = tiny(tmp_path, rounds=4, checkpoint_every=2)
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--quiet"]) == 0
    edited = (out / "config.toml").read_text().replace("lr = 0.1", "lr = 0.5")
    (out / "config.toml").write_text(edited)
    assert main(["run", "--resume", str(out), "--quiet"]) == 2
    assert "algorithm.lr" in capsys.readouterr().err


def test_resume_skips_a_truncated_checkpoint(tmp_path, uninterrupted):
    config = tiny(tmp_path, **LONG)
    run_dir = tmp_path / "run"
    run_experiment(Experiment.from_toml(config), run_dir, progress=False)
    checkpoints = RunDirectory(run_dir).checkpoints()
    assert [r for r, _ in checkpoints] == [190, 200]
    checkpoints[-1][1].write_bytes(checkpoints[-1][1].read_bytes()[:100])  # cut short
    resumed = run_experiment(RunDirectory(run_dir).experiment(), run_dir, resume=True,
                             progress=False)
    for key in COMPARED:
        assert resumed.final[key] == uninterrupted[key], key


def test_a_killed_runs_report_shows_the_rounds_it_finished(tmp_path):
    from murmura.report import load_run

    config = tiny(tmp_path, rounds=6, checkpoint_every=4)
    run_dir = tmp_path / "run"
    run_experiment(Experiment.from_toml(config), run_dir, progress=False)
    (run_dir / "metrics.csv").unlink()
    assert len(load_run(run_dir).metrics["round"]) == 6  # from metrics.jsonl


def test_divergence_is_caught_before_a_checkpoint(tmp_path):
    config = tiny(tmp_path, rounds=30, every=0, checkpoint_every=5)
    exp = Experiment.from_toml(config).with_overrides(["algorithm.lr=1e20"])
    result = run_experiment(exp, tmp_path / "run", progress=False)
    assert result.status == "failed" and "NaN" in result.summary["message"]
    for _, path in RunDirectory(tmp_path / "run").checkpoints():
        tensors, _ = RunDirectory(tmp_path / "run").load_checkpoint(path)
        assert bool(tensors["params"].isfinite().all())


def test_sweep_records_a_broken_run_and_keeps_the_others(tmp_path, monkeypatch):
    import murmura.runner.run as run_module  # the sweep's worker looks it up at each run

    original = run_module.run_experiment

    def flaky(exp, run_dir, **kwargs):
        if exp.algorithm.params["lr"] == 0.2:
            raise RuntimeError("boom")
        return original(exp, run_dir, **kwargs)

    monkeypatch.setattr(run_module, "run_experiment", flaky)
    config = tiny(tmp_path, rounds=1, checkpoint_every=0)
    out = tmp_path / "sweep"
    assert main(["sweep", str(config), "--grid", "algorithm.lr=0.05,0.2", "--out", str(out)]) == 1
    with (out / "sweep.csv").open() as fh:
        rows = {r["algorithm.lr"]: r["status"] for r in csv.DictReader(fh)}
    assert rows == {"0.05": "completed", "0.2": "failed"}
    assert main(["sweep", str(config), "--grid", "algorithm.lr=0.3", "--out", str(out)]) == 2


def test_sweep_folder_names_never_collide():
    from murmura.runner.sweep import _folder_name

    assert _folder_name('description=a b') != _folder_name('description=a/b')
    long_a, long_b = "x" * 150 + "a", "x" * 150 + "b"
    assert _folder_name(long_a) != _folder_name(long_b)
    assert _folder_name("algorithm.lr=0.1") == "algorithm.lr=0.1"


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("murmura ")
