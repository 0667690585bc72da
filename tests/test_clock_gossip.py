"""Randomized gossip on Poisson clocks: the exchanges by hand, drops, churn, determinism."""

from __future__ import annotations

import pytest

from murmura.clock.gossip import ClockedGossip
from murmura.data import federate
from murmura.swarm import Simulation


def simulation(num_nodes=6, topology="ring"):
    data = federate("digits", num_nodes=num_nodes, seed=0)
    return Simulation(data, "logreg", "dsgd", topology, seed=0,
                      algorithm_kwargs={"local_steps": 1, "batch_size": 8})


@pytest.mark.parametrize("protocol, i_gets, j_gets", [
    ("pairwise", True, True), ("push", False, True), ("pull", True, False)])
def test_an_exchange_averages_the_sides_that_hear(protocol, i_gets, j_gets):
    run = ClockedGossip(simulation(), protocol)
    x = run.sim.params
    x[0], x[1] = 1.0, 3.0
    run._exchange(0, 1, ok=True, lost_there=False, lost_back=False, size=4.0)
    assert float(x[0, 0]) == (2.0 if i_gets else 1.0)
    assert float(x[1, 0]) == (2.0 if j_gets else 3.0)
    sent = run.sim.bytes_sent
    assert float(sent[0]) == (4.0 if j_gets else 0.0) and float(sent[1]) == (4.0 if i_gets
                                                                              else 0.0)


def test_lost_messages_and_offline_peers_change_nothing_they_carry():
    run = ClockedGossip(simulation(), "pairwise")
    x = run.sim.params
    x[0], x[1] = 1.0, 3.0
    run._exchange(0, 1, ok=True, lost_there=True, lost_back=False, size=4.0)
    assert float(x[1, 0]) == 3.0 and float(x[0, 0]) == 2.0 and run.dropped == 1
    x[0], x[1] = 1.0, 3.0
    run._exchange(0, 1, ok=False, lost_there=False, lost_back=False, size=4.0)
    assert float(x[0, 0]) == 1.0 and float(x[1, 0]) == 3.0  # nobody answered


def test_poisson_clocks_tick_at_their_rate_and_the_log_is_the_seeds():
    logs = []
    for _ in range(2):
        run = ClockedGossip(simulation(num_nodes=12, topology="complete"), "push", rate=2.0,
                            drop=0.2)
        run.run(until=10.0, eval_every=10.0)
        logs.append(run.log.rows())
    assert logs[0] == logs[1]
    wakes = len(logs[0])
    assert abs(wakes - 2.0 * 10.0 * 12) < 3 * (240 ** 0.5)  # Poisson(240), within 3 sd
    assert 0.1 < run.dropped / run.exchanges < 0.3


def test_nodes_that_fail_stop_waking_and_answering():
    availability = {"name": "always", "fail_at": 2.0, "fail_nodes": [0, 1, 2]}
    run = ClockedGossip(simulation(), "pairwise", rate=2.0, availability=availability)
    run.run(until=6.0, eval_every=6.0)
    cols = run.log.columns()
    late = cols["time"] >= 2.0
    assert set(cols["node"][late].tolist()) <= {3, 4, 5}
    assert set(cols["node"][~late].tolist()) & {0, 1, 2}


def test_gossip_refuses_bad_settings():
    with pytest.raises(ValueError, match="protocol must be one of"):
        ClockedGossip(simulation(), "broadcast")
    with pytest.raises(ValueError, match="drop must be a number"):
        ClockedGossip(simulation(), drop=1.0)
    data = federate("digits", num_nodes=4, seed=0)
    with pytest.raises(ValueError, match="needs a simulation with a topology"):
        ClockedGossip(Simulation(data, "logreg", "fedavg", seed=0))


def test_the_churn_experiment_runs_in_quick_mode(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "experiments/churn/run.py"
    done = subprocess.run([sys.executable, str(script), "--quick", "--workers", "1", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "training_continues" in (tmp_path / "results.json").read_text()
