"""A clocked run does not depend on the process: the same seed in a fresh interpreter gives the
same event log and the same parameters, bit for bit; with another torch thread count the log
is still identical and the parameters equal to float tolerance (a matmul's reduction order
follows the threads)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = r'''
import sys, torch
torch.set_num_threads(int(sys.argv[2]))
from murmura.clock.federated import ClockedFederation
from murmura.clock.gossip import ClockedGossip
from murmura.data import federate
from murmura.swarm import Simulation

out = sys.argv[1]
fed = Simulation(federate("digits", num_nodes=8, seed=0), "logreg", "fedavg", seed=3,
                 algorithm_kwargs={"local_steps": 2})
run = ClockedFederation(fed, {"name": "fedbuff", "K": 3},
                        compute={"name": "lognormal", "mu": -1.0, "sigma": 0.5},
                        availability={"name": "markov", "mean_on": 5.0, "mean_off": 2.0})
run.run(until=6.0, eval_every=3.0)
run.log.write(out, "federated.csv")
torch.save(fed.params, f"{out}/federated.pt")
dec = Simulation(federate("digits", num_nodes=8, seed=0), "logreg", "dsgd", "ring", seed=3,
                 algorithm_kwargs={"local_steps": 1})
gossip = ClockedGossip(dec, "pairwise", rate=1.0, drop=0.2, window=0.1)
gossip.run(until=4.0, eval_every=2.0)
gossip.log.write(out, "gossip.csv")
torch.save(dec.params, f"{out}/gossip.pt")
'''


def _run(out: Path, threads: int) -> None:
    out.mkdir()
    subprocess.run([sys.executable, "-c", SCRIPT, str(out), str(threads)], check=True,
                   timeout=300)


def test_fresh_processes_give_the_same_run(tmp_path):
    import torch

    for folder, threads in (("a", 1), ("b", 1), ("c", 2)):
        _run(tmp_path / folder, threads)
    for name in ("federated", "gossip"):
        log_a = (tmp_path / "a" / f"{name}.csv").read_text()
        assert log_a.count("\n") > 10
        params = {f: torch.load(tmp_path / f / f"{name}.pt") for f in "abc"}
        assert log_a == (tmp_path / "b" / f"{name}.csv").read_text()
        assert torch.equal(params["a"], params["b"])
        assert log_a == (tmp_path / "c" / f"{name}.csv").read_text()
        assert torch.allclose(params["a"], params["c"], atol=1e-5)
