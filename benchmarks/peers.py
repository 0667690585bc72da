"""Real peers on loopback: time per round of `murmura launch` with 8 and 32 peers against the
time to move the same bytes at the loopback bandwidth measured in the same run, and the
memory of one peer (a benchmark, never a test).

    python benchmarks/peers.py                      # 8 and 32 peers
    python benchmarks/peers.py --peers 8 --json out.json

**Workload**: D-SGD on digits (sklearn's, offline), an MLP 64 -> 512 -> 10 (38,410 parameters,
153,640 bytes a message), IID split, a ring, 2 local steps of batch 32 a round, 20 rounds,
mutual TLS, Ed25519 on every message. Every peer is its own process (one torch thread).

**Figures**: ``round_s`` is the median over rounds 2..19 of the slowest peer's round (local
steps plus the exchange: sealing, signing, TLS, chunk digests, the receiver's checks);
``bytes_per_round`` the frames all peers sent in a round (from the peers' own counters);
``wire_s`` the time those bytes take at ``loopback_bytes_per_s``, one TCP stream moving 512 MB
through 127.0.0.1 in this process; ``overhead`` = ``round_s / wire_s``. ``compute_s`` is the
median local training time of a round. ``peak_rss_mb`` is each peer process's peak resident
memory (mean and max over peers). On this 2-core machine 32 processes share 2 cores, so the
32-peer round time measures contention as much as the network.
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

CONFIG = """
name = "bench-peers"
seed = 0
rounds = 20
[data]
dataset = "digits"
nodes = {nodes}
partition = "iid"
[model]
name = "mlp"
hidden = [512]
[topology]
name = "ring"
[algorithm]
name = "dsgd"
lr = 0.05
local_steps = 2
[evaluation]
every = 20
[output]
plots = false
report = false
"""


def loopback_bandwidth(total: int = 512 << 20, block: int = 1 << 20) -> float:
    """Bytes per second through one TCP connection on 127.0.0.1."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    received = [0]

    def sink() -> None:
        conn, _ = server.accept()
        while True:
            chunk = conn.recv(1 << 20)
            if not chunk:
                break
            received[0] += len(chunk)
        conn.close()

    thread = threading.Thread(target=sink)
    thread.start()
    client = socket.create_connection(("127.0.0.1", port))
    data = b"\0" * block
    start = time.perf_counter()
    for _ in range(total // block):
        client.sendall(data)
    client.close()
    thread.join()
    seconds = time.perf_counter() - start
    server.close()
    return received[0] / seconds


def one(nodes: int, bandwidth: float) -> dict:
    from murmura.config import Experiment
    from murmura.net.launch import Launch
    from murmura.net.peer import PeerSettings

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.toml"
        path.write_text(CONFIG.format(nodes=nodes))
        exp = Experiment.from_toml(path)
        run = Launch(exp, Path(tmp) / "run", settings=PeerSettings(deadline_s=60.0,
                                                                   hello_timeout_s=300.0))
        start = time.perf_counter()
        run.start()
        codes = run.wait(900)
        elapsed = time.perf_counter() - start
        if any(c != 0 for c in codes.values()):
            raise SystemExit(f"peers failed: {codes}; logs in {run.out}/peers")
        records = run.peer_records()
        summaries = run.peer_summaries()
    rounds = range(2, exp.rounds)
    slowest = [max(records[p][r]["round_seconds"] for p in records) for r in rounds]
    compute = [statistics.median(records[p][r]["train_seconds"] for p in records)
               for r in rounds]
    sent = [sum(records[p][r]["net_sent_bytes"] - records[p][r - 1]["net_sent_bytes"]
                for p in records) for r in rounds]
    rss = [s["peak_rss_bytes"] / 2**20 for s in summaries.values() if "peak_rss_bytes" in s]
    round_s, per_round = statistics.median(slowest), statistics.median(sent)
    wire_s = per_round / bandwidth
    return {"peers": nodes, "round_s": round_s, "compute_s": statistics.median(compute),
            "bytes_per_round": per_round, "wire_s": wire_s, "overhead": round_s / wire_s,
            "peak_rss_mb_mean": statistics.mean(rss), "peak_rss_mb_max": max(rss),
            "launch_to_end_s": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, nargs="*", default=[8, 32])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    bandwidth = loopback_bandwidth()
    print(f"loopback: {bandwidth / 1e9:.2f} GB/s (one TCP stream)")
    results = []
    for n in args.peers:
        r = one(n, bandwidth)
        results.append(r)
        print(f"{n:3d} peers: round {r['round_s'] * 1e3:7.1f} ms (compute "
              f"{r['compute_s'] * 1e3:.1f} ms), {r['bytes_per_round'] / 1e6:.2f} MB/round -> "
              f"{r['wire_s'] * 1e3:.2f} ms at loopback speed ({r['overhead']:.0f}x); "
              f"peak RSS {r['peak_rss_mb_mean']:.0f} MB/peer (max {r['peak_rss_mb_max']:.0f})")
    if args.json:
        args.json.write_text(json.dumps({"machine": platform.platform(),
                                         "cpus": __import__("os").cpu_count(),
                                         "loopback_bytes_per_s": bandwidth,
                                         "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
