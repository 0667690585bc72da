"""FedScale trace conversion (from tiny pickles the tests make) and the JSON loaders."""

import json
import pickle

import pytest
import torch

from murmura.clock import (
    SERVER,
    IntervalAvailability,
    Links,
    TraceCompute,
    make_availability,
    make_compute,
    make_links,
)
from murmura.clock.traces import convert_fedscale, load_behaviour_trace, load_device_trace

# FedScale's layouts (benchmark/dataset/data/device_info/README.md): dicts keyed by client id.
DEVICE = {3: {"computation": 20.0, "communication": 800.0},
          1: {"computation": 10.0, "communication": 1600.0}}
BEHAVIOUR = {
    12: {"duration": 100, "inactive": [30, 100], "finish_time": 100, "active": [0, 60],
         "model": "Pixel 3"},
    4: {"duration": 100, "inactive": [80], "finish_time": 100, "active": [20], "model": "SM-G"},
}


def write_pickle(path, obj):
    path.write_bytes(pickle.dumps(obj))
    return path


def test_device_trace_round_trip(tmp_path):
    src = write_pickle(tmp_path / "client_device_capacity", DEVICE)
    out = convert_fedscale(src, tmp_path / "device.json")
    doc = json.loads(out.read_text())
    assert doc["schema"] == "murmura.clock.device_trace" and doc["version"] == 1
    assert doc["clients"] == {"id": ["1", "3"], "compute_ms_per_sample": [10.0, 20.0],
                              "bandwidth_kbit_per_s": [1600.0, 800.0]}
    trace = load_device_trace(out)
    assert trace.ids == ["1", "3"] and len(trace) == 2
    assert trace.bandwidth_bytes_per_s.tolist() == [1600 * 128.0, 800 * 128.0]
    # FedScale: a step costs 3 x batch x ms-per-sample; node i takes client i mod 2.
    compute = TraceCompute.from_trace(trace, num_nodes=3, batch_size=20)
    assert compute.step_time(torch.arange(3)).tolist() == pytest.approx([0.6, 1.2, 0.6])
    links = Links.from_trace(trace, num_nodes=3)
    assert links.transfer_time(1, SERVER, 102400.0).item() == pytest.approx(1.0)
    same = make_compute({"name": "trace", "path": str(out), "batch_size": 20}, num_nodes=3)
    assert torch.equal(same.step_seconds, compute.step_seconds)
    config = make_links({"up": {"name": "trace", "path": str(out)}}, num_nodes=3)
    assert config.bandwidth(torch.tensor([0, 1]), SERVER).tolist() == [204800.0, 102400.0]


def test_behaviour_trace_round_trip(tmp_path):
    src = write_pickle(tmp_path / "client_behave_trace", BEHAVIOUR)
    out = convert_fedscale(src, tmp_path / "behaviour.json")
    trace = load_behaviour_trace(out)
    assert trace.ids == ["4", "12"]
    assert trace.intervals == [[(20.0, 80.0)], [(0.0, 30.0), (60.0, 100.0)]]
    assert trace.periods == [100.0, 100.0] and trace.models == ["SM-G", "Pixel 3"]
    avail = IntervalAvailability.from_trace(trace, num_nodes=3)  # node 2 follows client "4"
    nodes = torch.tensor([0, 1, 2])
    assert avail.online_at(nodes, 125.0).tolist() == [True, True, True]
    assert avail.online_at(nodes, 150.0).tolist() == [True, False, True]
    assert avail.next_offline(nodes, 170.0).tolist() == [180.0, 230.0, 180.0]  # 1 wraps
    same = make_availability({"name": "trace", "path": str(out)}, num_nodes=3)
    assert torch.equal(same.online_at(nodes, 150.0), avail.online_at(nodes, 150.0))


def test_converter_rejects_what_it_cannot_read(tmp_path):
    bad = write_pickle(tmp_path / "odd", {1: {"speed": 3}})
    with pytest.raises(ValueError, match="neither computation/communication"):
        convert_fedscale(bad, tmp_path / "x.json")
    unpaired = write_pickle(tmp_path / "unpaired", {1: {"active": [0, 5], "inactive": [3]}})
    with pytest.raises(ValueError, match="must pair up"):
        convert_fedscale(unpaired, tmp_path / "x.json")
    with pytest.raises(ValueError, match="kind must be"):
        convert_fedscale(write_pickle(tmp_path / "d", DEVICE), tmp_path / "x.json", kind="cpu")
    with pytest.raises(ValueError, match="non-empty dict"):
        convert_fedscale(write_pickle(tmp_path / "e", []), tmp_path / "x.json")


def test_loaders_never_unpickle_and_validate(tmp_path):
    src = write_pickle(tmp_path / "client_device_capacity", DEVICE)
    with pytest.raises(ValueError, match="not JSON"):
        load_device_trace(src)  # a pickle is refused, never loaded
    with pytest.raises(ValueError, match="does not exist"):
        load_device_trace(tmp_path / "missing.json")
    out = convert_fedscale(src, tmp_path / "device.json")
    with pytest.raises(ValueError, match="expected schema 'murmura.clock.behaviour_trace'"):
        load_behaviour_trace(out)
    doc = json.loads(out.read_text())
    doc["clients"]["bandwidth_kbit_per_s"] = [1.0]
    (tmp_path / "short.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="equal length"):
        load_device_trace(tmp_path / "short.json")
    doc["clients"]["bandwidth_kbit_per_s"] = [1.0, 0.0]
    (tmp_path / "zero.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="bandwidth_kbit_per_s must be > 0"):
        load_device_trace(tmp_path / "zero.json")
    doc["version"] = 9
    (tmp_path / "v9.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="unsupported version"):
        load_device_trace(tmp_path / "v9.json")
    behaviour = {"schema": "murmura.clock.behaviour_trace", "version": 1,
                 "clients": [{"id": "1", "intervals": [[5, 2]]}]}
    (tmp_path / "b.json").write_text(json.dumps(behaviour))
    with pytest.raises(ValueError, match=r"clients\[0\].intervals\[0\]"):
        load_behaviour_trace(tmp_path / "b.json")
