"""The buffered (FedBuff-like) schedule on the clock: hand-computed staleness, determinism,
the vectorized window path against the one-event loop, mid-task dropout, the event log's
round trip and summaries, and the benchmark at a tiny size."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from murmura.clock import (
    BufferedSchedule,
    EventKind,
    EventLog,
    IntervalAvailability,
    Links,
    LognormalCompute,
    MarkovChurn,
    TraceCompute,
    simulate_buffered,
)
from murmura.clock.links import ConstantDraw, LognormalDraw
from murmura.clock.reference import reference_buffered

REPO = Path(__file__).resolve().parents[1]


def three_clients(buffer: int) -> BufferedSchedule:
    """Clients take 1, 2 and 3 s per task; every transfer takes 0.25 s; stop at 7.5 s."""
    return BufferedSchedule(3, TraceCompute(torch.tensor([1.0, 2.0, 3.0])),
                            Links(latency=ConstantDraw(0.25)), steps=1, buffer=buffer, until=7.5)


# Worked by hand. Client i finishes a task, uploads (0.25 s), downloads (0.25 s) and starts
# again, so client 0 arrives at 1.25, 2.75, 4.25, 5.75, 7.25; client 1 at 2.25, 4.75, 7.25;
# client 2 at 3.25, 6.75. With K = 1 every arrival is a new version, and an update's
# staleness is the version at its arrival minus the version its client started from (the
# one it downloaded after its previous arrival). At 7.25 the tie goes to client 0 (node order).
ARRIVALS = [(1.25, 0), (2.25, 1), (2.75, 0), (3.25, 2), (4.25, 0), (4.75, 1), (5.75, 0),
            (6.75, 2), (7.25, 0), (7.25, 1)]
STARTED_FROM = {1: [0, 0, 1, 0, 3, 2, 5, 4, 7, 6], 2: [0, 0, 0, 0, 1, 1, 2, 2, 3, 3]}
STALENESS = {1: [0, 1, 1, 3, 1, 3, 1, 3, 1, 3], 2: [0, 0, 1, 1, 1, 1, 1, 1, 1, 1]}
FINAL_VERSION = {1: 10, 2: 5}


def uploads(log: EventLog) -> dict[str, list]:
    cols = log.columns()
    keep = cols["kind"] == int(EventKind.UPLOAD_ARRIVAL)
    return {name: cols[name][keep].tolist() for name in ("time", "node", "version", "staleness")}


@pytest.mark.parametrize("buffer", [1, 2])
@pytest.mark.parametrize("path", ["window", "reference"])
def test_staleness_on_a_hand_computed_three_client_schedule(buffer, path):
    s = three_clients(buffer)
    run = simulate_buffered(s) if path == "window" else reference_buffered(s)
    got = uploads(run.log)
    assert list(zip(got["time"], got["node"])) == ARRIVALS
    assert got["version"] == STARTED_FROM[buffer]
    assert got["staleness"] == STALENESS[buffer]
    assert run.version == FINAL_VERSION[buffer]
    counts = {}
    for s_ in STALENESS[buffer]:
        counts[s_] = counts.get(s_, 0) + 1
    assert run.log.staleness_counts() == counts


def test_idle_time_and_log_round_trip(tmp_path):
    run = simulate_buffered(three_clients(1))
    # Busy: client 0 computes 5 x 1 s and transfers 9 x 0.25 s before 7.5; client 1 computes
    # 3 x 2 s and transfers 5 x 0.25 s; client 2 computes 2 x 3 s and transfers 4 x 0.25 s (its
    # third task, in flight at the horizon, is not in the log and counts as idle).
    assert run.log.busy_time(3).tolist() == [7.25, 7.25, 7.0]
    from murmura.clock import AlwaysOnline

    assert run.log.idle_time(AlwaysOnline(), 3, horizon=7.5).tolist() == [0.25, 0.25, 0.5]
    path = run.log.write(tmp_path / "run")
    assert path.name == "events.csv" and path.read_text().startswith("time,kind,node,")
    back = EventLog.read(path)
    assert back.rows() == run.log.rows()  # bit for bit, floats included
    assert list(back.replay()) == list(run.log.replay())
    replayed = list(back.replay())
    assert [(e.time, e.kind, e.node) for e in replayed[:4]] == [
        (0.0, EventKind.TASK_START, 0), (0.0, EventKind.TASK_START, 1),
        (0.0, EventKind.TASK_START, 2), (1.0, EventKind.TASK_FINISH, 0)]
    assert replayed[3].payload["duration"] == 1.0


def test_event_log_rejects_bad_files(tmp_path):
    (tmp_path / "bad.csv").write_text("time,kind\n1.0,task_start\n")
    with pytest.raises(ValueError, match="expected the header"):
        EventLog.read(tmp_path / "bad.csv")
    header = "time,kind,node,version,staleness,nbytes,duration,sequence\n"
    (tmp_path / "kind.csv").write_text(header + "1.0,task_begin,0,0,0,0,0.0,0\n")
    with pytest.raises(ValueError, match="kind.csv:2: .*not an event kind"):
        EventLog.read(tmp_path / "kind.csv")
    with pytest.raises(ValueError, match="does not exist"):
        EventLog.read(tmp_path / "none.csv")
    with pytest.raises(ValueError, match="one value or one per event"):
        EventLog().record(torch.tensor([1.0, 2.0]), EventKind.TASK_START, torch.tensor([0]))


def churny(nodes: int = 12, **limits) -> BufferedSchedule:
    links = Links(latency=LognormalDraw(math.log(0.05), 0.5, per="link", jitter=0.3),
                  up=2e6, down=8e6, seed=9)
    return BufferedSchedule(nodes, LognormalCompute(math.log(0.02), 0.6, jitter=0.3, seed=9),
                            links, MarkovChurn(2.0, 1.0, seed=9), steps=5, buffer=3,
                            nbytes=100_000, **limits)


def test_same_seed_same_log_and_window_path_equals_the_one_event_loop():
    s = churny(until=4.0)
    a, b = simulate_buffered(s), simulate_buffered(churny(until=4.0))
    assert a.log.rows() == b.log.rows()  # same seed, fresh models: the same log, bit for bit
    kinds = set(a.log.columns()["kind"].tolist())
    assert int(EventKind.NODE_OFFLINE) in kinds  # churn did cut tasks short
    ref = reference_buffered(churny(until=4.0))
    assert ref.log.rows() == a.log.rows()  # one node per event vs vectorized windows
    assert ref.version == a.version
    # Continuing from a saved state gives what one uninterrupted run gives.
    first = simulate_buffered(churny(until=2.0))
    second = simulate_buffered(churny(until=4.0), state=first.state)
    assert first.log.rows() + second.log.rows() == a.log.rows()


def test_wider_windows_keep_each_node_in_time_order():
    run = simulate_buffered(churny(40, until=3.0), width=0.05)
    exact = simulate_buffered(churny(40, until=3.0))
    assert run.windows < exact.windows / 3
    cols = run.log.columns()
    for node in range(40):
        times = cols["time"][cols["node"] == node]
        assert bool((times[1:] >= times[:-1]).all())


def test_a_node_that_leaves_mid_task_loses_its_work():
    # Online on [0, 3) and from 4 on: the 5 s task started at 0 is lost at 3 and restarted at 4,
    # although the node is online both when the task starts and when it would have ended.
    avail = IntervalAvailability([[(0.0, 3.0), (4.0, 1000.0)]])
    assert avail.online_at(0, 0.0).item() and avail.online_at(0, 5.0).item()
    s = BufferedSchedule(1, TraceCompute(torch.tensor([1.0])), Links(latency=0.25), avail,
                         steps=5, buffer=1, until=10.0)
    for run in (simulate_buffered(s), reference_buffered(s)):
        rows = [(t, k, d) for t, k, _, _, _, _, d, _ in run.log.rows()]
        assert rows == [(0.0, "task_start", 0.0), (3.0, "node_offline", 3.0),
                        (4.0, "task_start", 0.0), (9.0, "task_finish", 5.0),
                        (9.25, "upload_arrival", 0.25), (9.5, "download_arrival", 0.25)]


def test_schedule_bad_inputs():
    with pytest.raises(ValueError, match="until .* or max_events"):
        BufferedSchedule(3, TraceCompute(torch.ones(3)), Links())
    with pytest.raises(ValueError, match="buffer"):
        BufferedSchedule(3, TraceCompute(torch.ones(3)), Links(), buffer=0, until=1.0)
    with pytest.raises(ValueError, match="compute must be a ComputeModel"):
        BufferedSchedule(3, "lognormal", Links(), until=1.0)
    run = simulate_buffered(three_clients(1))
    with pytest.raises(ValueError, match="state has 3 clients"):
        simulate_buffered(churny(until=1.0), state=run.state)


def test_benchmark_runs_at_a_tiny_size(tmp_path):
    spec = importlib.util.spec_from_file_location("clock_benchmark", REPO / "benchmarks/clock.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "clock.json"
    threads = torch.get_num_threads()
    try:
        results = bench.main(["--quick", "--nodes", "20", "--events", "200",
                              "--reference-events", "60", "--check", "40", "--widths", "0.005",
                              "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert out.exists()
    (r,) = results
    assert r["nodes"] == 20 and r["width0_matches_reference"]
    assert r["window_events"] >= 200 and r["reference_events"] == 60
