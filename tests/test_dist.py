"""Sharded simulation: 1 and 2 gloo processes launched by torchrun give the same run."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from murmura.cli import main
from murmura.config import Experiment
from murmura.dist import halo_plan, owner_of, shard_bounds
from murmura.metrics.history import EVALUATED_COLUMNS
from murmura.runner import RunDirectory, run_experiment
from murmura.topology import make_topology

CONFIG = """
name = "{name}"
seed = 3
rounds = 6

[data]
dataset = "digits"
nodes = 64
partition = {{ name = "dirichlet", alpha = 0.5 }}

[model]
name = "mlp"
hidden = [16]

{topology}

[algorithm]
{algorithm}
lr = 0.1
momentum = 0.9
local_steps = 3

[evaluation]
every = 2
node_samples = 200

[engine]
threads = 1

[output]
checkpoint_every = 2
plots = false
report = false
"""

ARMS = {
    "dsgd": ('[topology]\nname = "random_regular"\nk = 4', 'name = "dsgd"'),
    "fedavg": ("", 'name = "fedavg"\nclients_per_round = 20'),
}
# without an adversary the honest-only columns are not written
# the config measures neither honest nodes apart nor personal test splits (nor few-shot)
EVALUATED = [c for c in EVALUATED_COLUMNS if not c.startswith(("honest_", "personal_", "fewshot_"))]
COUNTED = ["bytes_sent", "bytes_received", "bytes_sent_total", "bytes_sent_per_node_max",
           "bytes_received_per_node_max", "server_bytes_sent_total"]


def config_file(folder: Path, arm: str) -> Path:
    topology, algorithm = ARMS[arm]
    path = folder / f"{arm}.toml"
    path.write_text(CONFIG.format(name=arm, topology=topology, algorithm=algorithm))
    return path


def torchrun(processes: int, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """The standard launcher, as a user runs it; the whole process group is killed on timeout."""
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={processes}", "-m", "murmura", *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"torchrun did not finish in {timeout} s: {err[-2000:]}") from None
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("arm", ["dsgd", "fedavg"])
def test_two_processes_equal_one(arm, tmp_path):
    config = config_file(tmp_path, arm)
    single = run_experiment(Experiment.from_toml(config), tmp_path / "one", progress=False)
    assert single.status == "completed"
    done = torchrun(2, "run", str(config), "--out", str(tmp_path / "two"), "--quiet",
                    "--backend", "dist")
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = read_rows(tmp_path / "one"), read_rows(tmp_path / "two")
    assert len(one) == len(two) == 6
    for a, b in zip(one, two):
        assert a["communicated"] == b["communicated"]
        for key in COUNTED:  # bytes are counted, not computed: exactly equal
            assert float(a[key]) == float(b[key]), key
        for key in EVALUATED:  # columns a run does not measure are absent from both
            if a.get(key, "") == "":
                assert b.get(key, "") == "", key
                continue
            assert math.isclose(float(a[key]), float(b[key]), rel_tol=1e-6, abs_tol=1e-9), key
    summary = RunDirectory(tmp_path / "two").summary()
    assert summary["simulation"]["world_size"] == 2
    assert summary["simulation"]["shard_bounds"] == [0, 32, 64]
    # only rank 0 wrote: one complete run directory, checkpoints holding all 64 nodes
    tensors, values = RunDirectory(tmp_path / "two").load_checkpoint(
        RunDirectory(tmp_path / "two").checkpoints()[-1][1])
    assert tensors["params"].shape[0] == 64 and values["round"] == 6


def test_a_sharded_checkpoint_resumes_in_one_process(tmp_path):
    config = config_file(tmp_path, "dsgd")
    reference = run_experiment(Experiment.from_toml(config), tmp_path / "ref", progress=False)
    done = torchrun(2, "run", str(config), "--out", str(tmp_path / "run"), "--quiet",
                    "--backend", "dist")
    assert done.returncode == 0, done.stderr[-3000:]
    run = RunDirectory(tmp_path / "run")
    for rounds, path in run.checkpoints():
        if rounds > 4:
            path.unlink()  # as if the sharded run had died after round 4
    resumed = run_experiment(run.experiment(), run.path, resume=True, progress=False)
    for key in EVALUATED:
        assert math.isclose(resumed.final[key], reference.final[key], rel_tol=1e-6), key


def test_dist_backend_without_torchrun_is_a_clear_error(tmp_path, capsys, monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    config = config_file(tmp_path, "dsgd")
    assert main(["run", str(config), "--backend", "dist", "--out", str(tmp_path / "r")]) == 2
    assert "torchrun --nproc-per-node" in capsys.readouterr().err
    assert main(["run", str(config), "--backend", "mpi"]) == 2


def test_shard_bounds():
    assert shard_bounds(10, 3) == [0, 4, 7, 10]
    assert shard_bounds(4, 4) == [0, 1, 2, 3, 4]
    assert [owner_of(i, [0, 4, 7, 10]) for i in (0, 3, 4, 9)] == [0, 0, 1, 2]
    with pytest.raises(ValueError, match="fewer processes"):
        shard_bounds(3, 4)


def _dense(matrix) -> np.ndarray:
    return matrix.to_dense().numpy()


@pytest.mark.parametrize("topology,params", [("ring", {}), ("random_regular", {"k": 4}),
                                             ("erdos_renyi", {"p": 0.2})])
def test_halo_plan_reproduces_the_global_product(topology, params):
    n, world = 30, 3
    mixing = make_topology(topology, n, seed=1, **params).mixing_at(0)
    W = sp.csr_matrix(mixing.to_scipy()).toarray()
    X = np.random.default_rng(0).normal(size=(n, 5)).astype(np.float32)
    bounds = shard_bounds(n, world)
    plans = [halo_plan(mixing, bounds, r, device="cpu") for r in range(world)]
    for r, plan in enumerate(plans):
        lo, hi = bounds[r], bounds[r + 1]
        # what r receives from s is exactly what s sends to r, in r's column order
        halo = [X[bounds[s] + plans[s].send[r].numpy()] for s in sorted(plan.receive)]
        for s, count in plan.receive.items():
            assert len(plans[s].send[r]) == count
        extended = np.concatenate([X[lo:hi], *halo]) if halo else X[lo:hi]
        np.testing.assert_allclose(_dense(plan.local_matrix) @ extended, (W @ X)[lo:hi],
                                   rtol=1e-5, atol=1e-6)


def test_only_the_rows_a_neighbouring_block_needs_are_sent():
    n, world = 1000, 2
    bounds = shard_bounds(n, world)
    ring = make_topology("ring", n).mixing_at(0)
    ring_rows = sum(len(rows) for r in range(world)
                    for rows in halo_plan(ring, bounds, r, "cpu").send.values())
    assert ring_rows == 4  # a ring cut in two places: one row each way per cut
    # a random graph is an expander: most nodes have a neighbour across the cut, so the halo
    # approaches (never exceeds) an all-gather; it is exactly the distinct cross-cut neighbours
    mixing = make_topology("random_regular", n, seed=0, k=4).mixing_at(0)
    W = sp.coo_matrix(mixing.to_scipy())
    block = np.searchsorted(bounds, np.arange(n), side="right") - 1
    cross = block[W.row] != block[W.col]
    expected = len(set(zip(block[W.row[cross]].tolist(), W.col[cross].tolist())))
    sent_rows = sum(len(rows) for r in range(world)
                    for rows in halo_plan(mixing, bounds, r, "cpu").send.values())
    assert sent_rows == expected <= (world - 1) * n
