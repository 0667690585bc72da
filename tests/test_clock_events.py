"""The clock's events: total order, tie-breaking, windows, counters (hand-made cases)."""

import math

import pytest
import torch

from murmura.clock import SERVER, Event, EventKind, EventQueue, NodeCounters

K = EventKind


def test_event_order_is_time_kind_node_sequence():
    events = [
        Event(1.0, K.TASK_START, 0, 0),
        Event(1.0, K.UPLOAD_ARRIVAL, 5, 1),
        Event(0.5, K.TASK_START, 9, 2),
        Event(1.0, K.UPLOAD_ARRIVAL, 2, 3),
        Event(1.0, K.UPLOAD_ARRIVAL, 2, 4, {"ignored": 1}),
        Event(1.0, K.NODE_OFFLINE, 1, 5),
    ]
    ordered = sorted(events)
    assert [(e.time, e.kind, e.node, e.sequence) for e in ordered] == [
        (0.5, K.TASK_START, 9, 2),
        (1.0, K.UPLOAD_ARRIVAL, 2, 3),
        (1.0, K.UPLOAD_ARRIVAL, 2, 4),
        (1.0, K.UPLOAD_ARRIVAL, 5, 1),
        (1.0, K.NODE_OFFLINE, 1, 5),
        (1.0, K.TASK_START, 0, 0),
    ]
    # The payload never takes part in the order or in equality.
    assert Event(1.0, K.TASK_START, 0, 0, {"a": 1}) == Event(1.0, K.TASK_START, 0, 0)


def test_kind_priorities_follow_the_documented_rule():
    # Completions, then leaving, then joining, then the server's timer, wake-ups, starts last.
    order = [K.TASK_FINISH, K.UPLOAD_ARRIVAL, K.DOWNLOAD_ARRIVAL, K.NODE_OFFLINE, K.NODE_ONLINE,
             K.SERVER_TICK, K.GOSSIP_WAKE, K.GRADIENT_WAKE, K.TASK_START]
    assert [int(k) for k in order] == list(range(len(K)))


def test_queue_pops_ties_by_kind_node_then_insertion():
    q = EventQueue()
    q.push(2.0, K.TASK_START, 0)
    q.push(2.0, K.SERVER_TICK, SERVER)
    q.push(2.0, K.UPLOAD_ARRIVAL, 3)
    q.push(2.0, K.UPLOAD_ARRIVAL, 1)
    q.push(1.0, "task_finish", 7, {"version": 4})
    q.push(2.0, K.UPLOAD_ARRIVAL, 1)  # same (time, kind, node): the later push goes second
    popped = [q.pop() for _ in range(len(q))]
    assert [(e.time, e.kind.name, e.node, e.sequence) for e in popped] == [
        (1.0, "TASK_FINISH", 7, 4),
        (2.0, "UPLOAD_ARRIVAL", 1, 3),
        (2.0, "UPLOAD_ARRIVAL", 1, 5),
        (2.0, "UPLOAD_ARRIVAL", 3, 2),
        (2.0, "SERVER_TICK", -1, 1),
        (2.0, "TASK_START", 0, 0),
    ]
    assert popped[0].payload == {"version": 4}


def test_pop_window_widths():
    q = EventQueue()
    times = torch.tensor([1.0, 0.0, 0.3, 0.1, 0.3, 0.5], dtype=torch.float64)
    seqs = q.push_many(times, K.TASK_FINISH, torch.tensor([5, 4, 3, 2, 1, 0]))
    assert seqs.tolist() == [0, 1, 2, 3, 4, 5]
    w = q.pop_window(0.35)  # [0, 0.35)
    assert w.start == 0.0
    assert w.times.tolist() == [0.0, 0.1, 0.3, 0.3]
    assert w.nodes.tolist() == [4, 2, 1, 3]  # the two at 0.3 by node
    assert w.sequences.tolist() == [1, 3, 4, 2]
    assert w.kinds.tolist() == [0, 0, 0, 0]
    assert q.now == 0.0
    w = q.pop_window(0.35, until=0.9)  # [0.5, 0.85)
    assert w.times.tolist() == [0.5] and q.now == 0.5
    assert len(q.pop_window(10.0, until=1.0)) == 0  # the 1.0 event is not before `until`
    assert q.pop_window(0.0).times.tolist() == [1.0]
    assert len(q.pop_window(0.0)) == 0  # empty queue: empty window


def test_pop_window_zero_width_takes_exactly_the_earliest_time():
    q = EventQueue()
    q.push_many(torch.tensor([0.3, 0.3, 0.30000000000000004, 0.5], dtype=torch.float64),
                K.UPLOAD_ARRIVAL,
                torch.tensor([1, 0, 2, 3]))
    w = q.pop_window(0.0)
    assert w.times.tolist() == [0.3, 0.3] and w.nodes.tolist() == [0, 1]
    assert len(q) == 2


def test_window_select_and_payload_columns():
    q = EventQueue()
    kinds = torch.tensor([int(K.UPLOAD_ARRIVAL), int(K.TASK_START), int(K.UPLOAD_ARRIVAL)])
    q.push_many(torch.zeros(3), kinds, torch.tensor([0, 1, 2]),
                payload={"version": torch.tensor([3, 4, 5])})
    q.push(0.0, K.UPLOAD_ARRIVAL, 3)  # no payload
    w = q.pop_window(0.0)
    ups = w.select(K.UPLOAD_ARRIVAL)
    assert ups.nodes.tolist() == [0, 2, 3]
    assert ups.column("version", default=-1).tolist() == [3.0, 5.0, -1.0]
    assert w.select("task_start").column("version").tolist() == [4.0]
    assert [e.kind for e in w.events()][:3] == [K.UPLOAD_ARRIVAL, K.UPLOAD_ARRIVAL,
                                                K.UPLOAD_ARRIVAL]


def test_queue_rejects_the_past_and_bad_input():
    q = EventQueue()
    q.push(1.0, K.TASK_START, 0)
    q.pop()
    with pytest.raises(ValueError, match="past"):
        q.push(0.5, K.TASK_START, 0)
    with pytest.raises(ValueError, match="past"):
        q.push_many(torch.tensor([2.0, 0.9]), K.TASK_START, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="finite"):
        q.push(math.inf, K.TASK_START, 0)
    with pytest.raises(ValueError, match="NaN"):
        q.push_many(torch.tensor([math.nan]), K.TASK_START, torch.tensor([0]))
    with pytest.raises(ValueError, match="not an event kind"):
        q.push(2.0, "task_begin", 0)
    with pytest.raises(ValueError, match="EventKind"):
        q.push(2.0, 42, 0)
    with pytest.raises(ValueError, match="node"):
        q.push(2.0, K.TASK_START, -2)
    with pytest.raises(ValueError, match="integer node ids"):
        q.push_many(torch.tensor([2.0]), K.TASK_START, torch.tensor([0.5]))
    with pytest.raises(ValueError, match="one entry per event"):
        q.push_many(torch.tensor([2.0, 3.0]), K.TASK_START, torch.tensor([0]))
    with pytest.raises(ValueError, match="one value per event"):
        q.push_many(torch.tensor([2.0]), K.TASK_START, torch.tensor([0]),
                    payload={"v": [1, 2]})
    with pytest.raises(ValueError, match="width"):
        q.pop_window(-1.0)
    with pytest.raises(IndexError):
        EventQueue().pop()


def test_node_counters_count_per_node_and_purpose():
    c = NodeCounters(4)
    assert c.take("task", torch.tensor([3, 1, 3, 3, SERVER])).tolist() == [0, 0, 1, 2, 0]
    assert c.take("task", torch.tensor([3, 0])).tolist() == [3, 0]
    assert c.take("upload", torch.tensor([3])).tolist() == [0]
    assert c.peek("task", torch.tensor([0, 1, 2, 3, SERVER])).tolist() == [1, 1, 0, 4, 1]
    saved = c.state_dict()
    c.take("task", torch.tensor([2]))
    c.load_state_dict(saved)
    assert c.peek("task", torch.tensor([2])).tolist() == [0]
    with pytest.raises(ValueError, match="covers 4 nodes"):
        c.take("task", torch.tensor([4]))
    with pytest.raises(ValueError, match="num_nodes"):
        NodeCounters(0)


def test_queue_checkpoint_restores_the_same_pops():
    q = EventQueue()
    q.push_many(torch.tensor([0.5, 0.2, 0.9], dtype=torch.float64), K.GOSSIP_WAKE,
                torch.tensor([0, 1, 2]), payload={"edge": torch.tensor([4, 5, 6])})
    q.push(0.2, K.SERVER_TICK, SERVER)
    q.pop()
    saved = q.state_dict()
    restored = EventQueue()
    restored.load_state_dict(saved)
    assert restored.now == q.now and restored.pushed == q.pushed
    a = [q.pop() for _ in range(len(q))]
    b = [restored.pop() for _ in range(len(restored))]
    assert [(e.time, e.kind, e.node, e.sequence, e.payload) for e in a] == [
        (e.time, e.kind, e.node, e.sequence, e.payload) for e in b]
    with pytest.raises(ValueError, match="needs"):
        EventQueue().load_state_dict({"times": torch.zeros(1)})


def test_poisson_clock_gaps_are_exponential_and_keyed():
    from murmura.clock.draws import keyed_exponential

    nodes = torch.arange(20000)
    gaps = keyed_exponential(0, "gossip", nodes, 0, rate=4.0)
    assert abs(float(gaps.mean()) - 0.25) < 0.01  # mean 1 / rate
    assert torch.equal(gaps[:10], keyed_exponential(0, "gossip", nodes[:10], 0, rate=4.0))
    assert not torch.equal(gaps[:10], keyed_exponential(0, "gossip", nodes[:10], 1, rate=4.0))
    with pytest.raises(ValueError, match="rate must be > 0"):
        keyed_exponential(0, "gossip", nodes, 0, rate=0.0)
