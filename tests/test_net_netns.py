"""Peers at separate addresses in network namespaces, and a cut link that heals.

The test creates two namespaces joined by a veth pair (``ip netns``, root only) and
removes them afterwards; it is skipped, with the reason, where that is not permitted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid

import pytest

from murmura.config import Experiment
from murmura.net.launch import Launch
from murmura.net.peer import PeerSettings

CONFIG = """
name = "partition"
seed = 0
rounds = 80
[data]
dataset = "digits"
nodes = 4
partition = "iid"
[model]
name = "mlp"
hidden = [16]
[topology]
name = "ring"
[algorithm]
name = "dsgd"
lr = 0.1
local_steps = 3
[evaluation]
every = 20
[output]
plots = false
report = false
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _namespaces_or_skip() -> tuple[str, str]:
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2) to create network namespaces")
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    tag = uuid.uuid4().hex[:6]
    a, b = f"mrm-a-{tag}", f"mrm-b-{tag}"
    try:
        _ip("netns", "add", a)
    except subprocess.CalledProcessError as error:
        pytest.skip(f"`ip netns add` is not permitted here: {error.stderr.decode().strip()}")
    try:
        _ip("netns", "add", b)
        _ip("link", "add", f"va{tag}", "type", "veth", "peer", "name", f"vb{tag}")
        _ip("link", "set", f"va{tag}", "netns", a)
        _ip("link", "set", f"vb{tag}", "netns", b)
        for ns, dev, addr in ((a, f"va{tag}", "10.231.0.1/24"), (b, f"vb{tag}", "10.231.0.2/24")):
            _ip("-n", ns, "addr", "add", addr, "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
    except subprocess.CalledProcessError as error:
        _remove(a, b)
        pytest.skip(f"cannot build the veth link: {error.stderr.decode().strip()}")
    return a, b


def _remove(*namespaces: str) -> None:
    for ns in namespaces:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def test_peers_in_two_namespaces_survive_a_cut_link_and_heal(tmp_path):
    a, b = _namespaces_or_skip()
    tag = a.rsplit("-", 1)[1]
    try:
        path = tmp_path / "partition.toml"
        path.write_text(CONFIG)
        exp = Experiment.from_toml(path)
        # ring 0-1-2-3-0: peers 0 and 1 on one side, 2 and 3 on the other; the links
        # 1-2 and 3-0 cross the veth pair
        side = {"0": a, "1": a, "2": b, "3": b}
        hosts = {p: "10.231.0.1" if ns == a else "10.231.0.2" for p, ns in side.items()}
        run = Launch(exp, tmp_path / "run", settings=PeerSettings(deadline_s=0.5, pace_s=0.1),
                     hosts=hosts, prefix={p: ["ip", "netns", "exec", ns]
                                          for p, ns in side.items()})
        run.start()
        end = time.monotonic() + 120
        while min(run.rounds_done().values()) < 10 and time.monotonic() < end:
            time.sleep(0.1)
        _ip("-n", a, "link", "set", f"va{tag}", "down")  # the partition
        time.sleep(2.5)
        _ip("-n", a, "link", "set", f"va{tag}", "up")  # heals
        codes = run.wait(240)
        assert all(code == 0 for code in codes.values()), codes
        result = run.gather()
        assert result.status == "completed"
        records = {p: [json.loads(line) for line in
                       (run.folder(p) / "metrics.jsonl").read_text().splitlines()]
                   for p in side}
        # the cut was felt across it ...
        assert records["1"][-1]["net_missing"] > 0 and records["2"][-1]["net_missing"] > 0
        # ... and healed: the last rounds miss nothing
        for p, rows in records.items():
            assert rows[-6]["net_missing"] == rows[-1]["net_missing"], (p, rows[-6:])
    finally:
        _remove(a, b)
