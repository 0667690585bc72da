"""Sharded simulation: rounds per second with 1 and 2 processes, and what crosses between them.

A compute-bound setting: D-SGD with a CNN on 1,000 nodes of Fashion-MNIST (digits when its files
are not found), one local step per round, gossip on a random 4-regular graph and on a ring. Each
configuration runs as a real launch (``torchrun ... -m murmura run CFG --backend dist``, or the
local backend), and seconds per round come from the run's own metrics (round 0, the warm-up, is
left out). Inter-rank bytes are what the ranks actually sent each other in a round, against what
a full all-gather of the state would move.

    python benchmarks/dist.py            # about 3 minutes on 2 cores
    python benchmarks/dist.py --quick    # 200 nodes, a smoke run
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIG = """
name = "dist-bench"
seed = 0
rounds = {rounds}

[data]
dataset = {dataset}
nodes = {nodes}
partition = {{ name = "dirichlet", alpha = 0.5 }}

[model]
name = "{model}"

[topology]
name = "{topology}"
{topology_params}

[algorithm]
name = "dsgd"
lr = 0.05
local_steps = 1
batch_size = {batch}

[evaluation]
every = 0

[engine]
threads = {threads}

[output]
checkpoint_every = 0
plots = false
report = false
"""


def fashion_mnist_available() -> bool:
    from murmura.demo import fashion_mnist_root

    return fashion_mnist_root() is not False


def run(config: Path, out: Path, processes: int | None) -> dict:
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"}
    if processes is None:
        command = [sys.executable, "-m", "murmura", "run", str(config), "--out", str(out),
                   "--quiet"]
    else:
        env["OMP_NUM_THREADS"] = "1"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={processes}", "-m", "murmura", "run", str(config),
                   "--out", str(out), "--quiet", "--backend", "dist"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    with (out / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))[1:]  # round 0 warms up
    summary = json.loads((out / "summary.json").read_text())
    inter = [float(r["inter_rank_bytes"]) for r in rows if r.get("inter_rank_bytes")]
    return {
        "seconds_per_round": statistics.median(float(r["round_seconds"]) for r in rows),
        "inter_rank_bytes_per_round": statistics.mean(inter) if inter else 0.0,
        "parameters": summary["simulation"]["model_parameters"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 nodes, fewer rounds")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    fmnist = fashion_mnist_available()
    nodes = 200 if args.quick else 1000
    rounds = 3 if args.quick else 4
    dataset = '{ name = "fashion_mnist", download = false }' if fmnist else '"digits"'
    model = "cnn" if fmnist else "mlp"  # digits are flat features: no convolution
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for topology, params in (("random_regular", "k = 4"), ("ring", "")):
            for label, processes, threads in (("local, 1 process x 2 threads", None, 2),
                                              ("dist, 1 process x 1 thread", 1, 1),
                                              ("dist, 2 processes x 1 thread", 2, 1)):
                config = Path(tmp) / f"{topology}-{processes}.toml"
                config.write_text(CONFIG.format(
                    rounds=rounds, dataset=dataset, nodes=nodes, model=model, batch=8,
                    topology=topology, topology_params=params, threads=threads))
                out = Path(tmp) / f"{topology}-{processes}"
                measured = run(config, out, processes)
                state_bytes = nodes * measured["parameters"] * 4
                all_gather = (processes or 1) - 1
                measured.update(
                    topology=topology, setup=label, nodes=nodes, model=model,
                    dataset="fashion_mnist" if fmnist else "digits",
                    all_gather_bytes_per_round=all_gather * state_bytes,
                )
                results.append(measured)
                print(f"{topology:15s} {label:32s} {measured['seconds_per_round']:7.3f} s/round"
                      f"  inter-rank {measured['inter_rank_bytes_per_round'] / 1e6:8.2f} MB"
                      f"  (all-gather {measured['all_gather_bytes_per_round'] / 1e6:8.2f} MB)",
                      flush=True)
    for topology in ("random_regular", "ring"):
        rows = {r["setup"]: r for r in results if r["topology"] == topology}
        one = rows["dist, 1 process x 1 thread"]["seconds_per_round"]
        two = rows["dist, 2 processes x 1 thread"]["seconds_per_round"]
        local = rows["local, 1 process x 2 threads"]["seconds_per_round"]
        print(f"{topology}: speed-up of 2 processes over 1: {one / two:.2f}x; "
              f"over the local backend with 2 threads: {local / two:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"machine": os.uname().machine, "cpus": os.cpu_count(),
                                         "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
