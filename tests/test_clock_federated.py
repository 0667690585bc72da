"""Federated learning on the virtual clock: the server modes against hand-computed cases, and
the runner's schedules, staleness, dropout and determinism."""

from __future__ import annotations

import math

import pytest
import torch

from murmura.clock import EventKind
from murmura.clock.federated import ClockedFederation
from murmura.clock.modes import Arrivals, FedAsync, FedBuff, FedFix, Synchronous, make_mode
from murmura.data import federate
from murmura.swarm import Simulation


def arrivals(models, starts, seconds=None, weights=None, sent=None) -> Arrivals:
    models = torch.tensor(models, dtype=torch.float32).reshape(len(models), -1)
    sent = torch.zeros_like(models) if sent is None else torch.tensor(sent).reshape_as(models)
    m = len(models)
    return Arrivals(torch.arange(m), models, models - sent, torch.tensor(starts),
                    torch.tensor(seconds or [1.0] * m, dtype=torch.float64),
                    torch.tensor(weights or [1.0 / m] * m, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# the modes


def test_fedasync_equals_mixing_the_arrivals_in_one_by_one():
    rule = FedAsync(alpha=0.6, staleness="polynomial", a=0.5)
    batch = arrivals([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]], starts=[0, 0, 2])
    state, stale = rule.aggregate({"params": torch.tensor([1.0, 1.0]), "version": 2}, batch)
    x, version = torch.tensor([1.0, 1.0], dtype=torch.float64), 2
    for k in range(3):
        tau = version - int(batch.start_versions[k])
        a = 0.6 * (1 + tau) ** -0.5
        x, version = (1 - a) * x + a * batch.models[k].double(), version + 1
    assert stale.tolist() == [2, 3, 2]
    assert torch.allclose(state["params"].double(), x, atol=1e-6) and state["version"] == 5


def test_fedbuff_flushes_every_K_updates_and_later_arrivals_meet_the_new_version():
    rule = FedBuff(K=2, server_lr=1.0, staleness="constant")
    batch = arrivals([[2.0], [4.0], [6.0]], starts=[0, 0, 0])
    state, stale = rule.aggregate({"params": torch.zeros(1), "version": 0}, batch)
    # (2 + 4) / 2 = 3 after the first two (version 1); the third waits in the buffer, stale 1
    assert state["params"].tolist() == [3.0] and state["version"] == 1
    assert stale.tolist() == [0, 0, 1] and state["count"] == 1
    assert state["buffer"].tolist() == [6.0]
    state, stale = rule.aggregate(state, arrivals([[8.0]], starts=[1]))
    assert state["params"].tolist() == [3.0 + (6.0 + 8.0) / 2] and state["version"] == 2
    sqrt = FedBuff(K=1, staleness="sqrt").aggregate({"params": torch.zeros(1), "version": 3},
                                                    arrivals([[4.0]], starts=[0]))[0]
    assert sqrt["params"].tolist() == [2.0]  # 4 / sqrt(1 + 3)


def test_fedbuff_drops_updates_staler_than_its_bound():
    rule = FedBuff(K=2, staleness="constant", max_staleness=1)
    batch = arrivals([[2.0], [100.0], [4.0]], starts=[5, 0, 5])
    state, stale = rule.aggregate({"params": torch.zeros(1), "version": 5}, batch)
    assert state["params"].tolist() == [3.0] and stale.tolist() == [0, 5, 0]


def test_fedfix_weighs_slow_clients_by_their_intervals():
    rule = FedFix(dt=0.5)
    batch = arrivals([[1.0], [1.0]], starts=[0, 0], seconds=[0.4, 1.2], weights=[0.5, 0.5])
    state, _ = rule.aggregate({"params": torch.zeros(1), "version": 0}, batch)
    assert state["params"].tolist() == [0.5 * 1 + 0.5 * 3]  # ceil(0.4/0.5) = 1, ceil(2.4) = 3


def test_modes_refuse_bad_parameters():
    with pytest.raises(ValueError, match="alpha must be a number in"):
        FedAsync(alpha=0.0)
    with pytest.raises(ValueError, match="K must be an integer"):
        FedBuff(K=0)
    with pytest.raises(ValueError, match="staleness must be one of"):
        FedBuff(staleness="linear")
    with pytest.raises(ValueError, match="over_selection"):
        Synchronous(over_selection=0.5)
    with pytest.raises(ValueError, match="needs a name"):
        make_mode({"K": 3})
    with pytest.raises(ValueError, match="unexpected keyword"):
        make_mode({"name": "fedbuff", "k": 3})


# ---------------------------------------------------------------------------------------------
# the runner


def simulation(num_nodes=6, **kwargs):
    data = federate("digits", num_nodes=num_nodes, partition="dirichlet", alpha=0.5, seed=0)
    return Simulation(data, "logreg", "fedavg", seed=0,
                      algorithm_kwargs={"local_steps": 2, "batch_size": 16, **kwargs})


def test_synchronous_rounds_on_the_clock_are_fedavgs_rounds():
    engine = simulation()
    engine.run(rounds=3)
    clocked = ClockedFederation(simulation(), "sync")
    clocked.run(until=3.0, eval_every=1.0)  # one second per step, 2 steps: 2 s a round
    assert clocked.state["version"] == 2
    engine2 = simulation()
    engine2.run(rounds=2)
    assert torch.allclose(clocked.state["params"], engine2.params[0], atol=1e-5)


def test_staleness_on_a_hand_computed_schedule():
    # step times 1, 2, 3 s, 2 steps: tasks of 2, 4, 6 s. FedAsync, one version per arrival:
    # t = 2: node 0 (started at v0, meets v0: 0); it restarts from v1
    # t = 4: node 0 (v1 meets v1: 0), then node 1 (v0 meets v2: 2); both restart from v3
    # t = 6: node 0 (v3 meets v3: 0), then node 2 (v0 meets v4: 4)
    sim = simulation(num_nodes=3)
    run = ClockedFederation(sim, {"name": "fedasync", "staleness": "constant"},
                            compute={"name": "trace", "step_seconds": [1.0, 2.0, 3.0]})
    run.run(until=6.0, eval_every=6.0)
    cols = run.log.columns()
    up = cols["kind"] == int(EventKind.UPLOAD_ARRIVAL)
    assert cols["time"][up].tolist() == [2.0, 4.0, 4.0, 6.0, 6.0]
    assert cols["node"][up].tolist() == [0, 0, 1, 0, 2]
    assert cols["staleness"][up].tolist() == [0, 0, 2, 0, 4]
    assert run.state["version"] == 5


def test_a_client_that_leaves_mid_task_loses_its_work():
    # node 1 is offline during [1, 3): its first task (0 to 2 s) is lost, it restarts at 3
    availability = {"name": "trace",
                    "intervals": [[[0.0, 100.0]], [[0.0, 1.0], [3.0, 100.0]]]}
    run = ClockedFederation(simulation(num_nodes=2), {"name": "fedasync"},
                            availability=availability)
    run.run(until=5.0, eval_every=5.0)
    cols = run.log.columns()
    up = cols["kind"] == int(EventKind.UPLOAD_ARRIVAL)
    node1 = cols["time"][up & (cols["node"] == 1)].tolist()
    assert node1 == [5.0]  # its task from 3 s, not one ending at 2 s
    starts = cols["time"][(cols["kind"] == int(EventKind.TASK_START)) & (cols["node"] == 1)]
    assert starts.tolist() == [0.0, 3.0, 5.0]  # lost at 1 s, back at 3, done and again at 5


def test_same_seed_same_log_and_a_narrow_window_changes_nothing():
    compute = {"name": "lognormal", "mu": -1.0, "sigma": 0.5}
    logs = []
    for window in (0.0, 1e-9, 0.0):
        run = ClockedFederation(simulation(), {"name": "fedbuff", "K": 3}, compute=compute,
                                window=window, concurrency=4)
        run.run(until=4.0, eval_every=2.0)
        logs.append((run.log.rows(), run.state["params"].clone()))
    assert logs[0][0] == logs[2][0] and torch.equal(logs[0][1], logs[2][1])
    assert logs[0][0] == logs[1][0] and torch.equal(logs[0][1], logs[1][1])
    busy = [r for r in logs[0][0] if r[1] == "task_start"]
    assert len(busy) > 4  # clients were drawn again as others returned


def test_fedfix_aggregates_on_its_ticks_and_restarts_the_returned_there():
    run = ClockedFederation(simulation(num_nodes=3), {"name": "fedfix", "dt": 3.0},
                            compute={"name": "trace", "step_seconds": [1.0, 2.0, 4.0]})
    run.run(until=9.0, eval_every=9.0)
    cols = run.log.columns()
    up = cols["kind"] == int(EventKind.UPLOAD_ARRIVAL)
    # tasks of 2, 4, 8 s, each restarted at the tick after it returns: node 0 returns at 2, 5,
    # 8 (ticks 3, 6, 9); node 1 at 4 (tick 6), then 10; node 2 at 8 (tick 9)
    assert cols["time"][up].tolist() == [3.0, 6.0, 6.0, 9.0, 9.0]
    assert cols["node"][up].tolist() == [0, 1, 0, 0, 2]  # in the order they returned
    assert cols["duration"][up].tolist() == [2.0, 4.0, 2.0, 2.0, 8.0]
    assert run.state["version"] == 3


def test_the_synchronous_deadline_keeps_the_first_k_of_the_over_selected():
    compute = {"name": "trace", "step_seconds": [1.0, 2.0, 3.0, 4.0]}  # tasks of 2, 4, 6, 8 s
    for deadline in (100.0, 3.0):
        run = ClockedFederation(simulation(num_nodes=4),
                                {"name": "sync", "clients": 2, "over_selection": 1.5,
                                 "deadline": deadline}, compute=compute)
        run.run(until=12.0, eval_every=12.0)
        cols = run.log.columns()
        start = cols["kind"] == int(EventKind.TASK_START)
        up = cols["kind"] == int(EventKind.UPLOAD_ARRIVAL)
        chosen = sorted(cols["node"][start & (cols["time"] == 0)].tolist())
        assert len(chosen) == 3  # ceil(1.5 x 2)
        finish = {node: 2.0 * (node + 1) for node in chosen}
        kept = [node for node in sorted(chosen, key=finish.get)[:2] if finish[node] <= deadline]
        first = cols["node"][up][: len(kept)].tolist()
        assert first == kept and cols["time"][up][: len(kept)].tolist() == [finish[k]
                                                                            for k in kept]
        end = max(finish[k] for k in kept) if len(kept) == 2 else deadline
        second = cols["time"][start & (cols["time"] > 0)]
        assert second.min().item() == end  # the next round starts when this one ends
    assert not math.isnan(run.records[-1]["test_accuracy"])


def test_fraboni_async_weighs_each_arrival_by_its_task_time():
    from murmura.clock.modes import AsyncFedAvg

    rule = AsyncFedAvg(weights="weight").bind(torch.tensor([1.0, 0.5], dtype=torch.float64))
    batch = arrivals([[1.0], [1.0]], starts=[0, 0], seconds=[1.0, 0.5], weights=[0.5, 0.5])
    state, stale = rule.aggregate({"params": torch.zeros(1), "version": 0}, batch)
    # sum_j 1 / tau_j = 3: d = 3 x 1 x 0.5 = 1.5 and 3 x 0.5 x 0.5 = 0.75
    assert state["params"].tolist() == [2.25] and stale.tolist() == [0, 1]
    same = AsyncFedAvg(weights="identical").aggregate({"params": torch.zeros(1), "version": 0},
                                                      batch)[0]
    assert same["params"].tolist() == [2.0]
    with pytest.raises(ValueError, match="needs the clients' task times"):
        AsyncFedAvg().aggregate({"params": torch.zeros(1), "version": 0}, batch)


def test_the_runner_scores_the_training_objective_when_asked():
    run = ClockedFederation(simulation(num_nodes=3), "async", train_loss=True)
    records = run.run(until=2.0, eval_every=2.0)
    assert records[0]["train_loss"] > 0 and 0 <= records[0]["train_accuracy"] <= 1
    assert records[0]["updates_applied"] == 3  # one task of 2 s each


def test_the_async_experiment_runs_in_quick_mode(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "experiments/async/run.py"
    done = subprocess.run([sys.executable, str(script), "--quick", "--workers", "1", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = (tmp_path / "results.json").read_text()
    assert '"FedFix-0.5"' in report and (tmp_path / "async.png").is_file()


def test_a_clocked_run_writes_its_log_metrics_and_summary(tmp_path):
    import json

    from murmura.clock import EventLog
    from murmura.clock.output import write_run

    run = ClockedFederation(simulation(num_nodes=3), {"name": "fedasync"},
                            compute={"name": "trace", "step_seconds": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="call run.run"):
        write_run(run, tmp_path)
    run.run(until=6.0, eval_every=3.0)
    write_run(run, tmp_path)
    assert EventLog.read(tmp_path / "events.csv").rows() == run.log.rows()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["staleness"] == {"0": 3, "2": 1, "4": 1}  # the hand-computed schedule
    # node 0 computed 2 s per task, 3 tasks done by 6 s: busy 6, idle 0; node 2: 6 and 0
    assert summary["busy_seconds"] == [6.0, 4.0, 6.0]
    assert summary["idle_seconds"] == [0.0, 2.0, 0.0]
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("time,") and len(lines) == 3
    assert (tmp_path / "curves.png").is_file()
