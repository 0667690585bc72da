"""Scale: 100,000 logistic-regression nodes gossiping, and 10,000 MLP nodes, on one machine.

1. 100,000 nodes of logistic regression (784 -> 10) on Fashion-MNIST, D-SGD on a random
   4-regular graph, one local step of minibatch 8 and one gossip per round. Reported against its
   memory-traffic floor: the state read and written once by the local step and once by the
   gossip (the least any implementation can do) and the minibatches read once, at the copy
   bandwidth measured in the same process; peak memory against the state's size.
2. 10,000 nodes of an MLP 784-200-10 with plain SGD (FedAvg, one local step of batch 32): does it
   fit, and its peak memory.

Fashion-MNIST has 60,000 training images, fewer than 100,000 nodes: each node gets 16 images
drawn at random (nodes overlap), which is what the per-node work needs, a minibatch of 8.
Each case runs in its own process so peak memory (max RSS) is its own.

    python benchmarks/scale.py            # a few minutes, about 8 GB of memory at peak
    python benchmarks/scale.py --quick    # 10,000 and 1,000 nodes
    python benchmarks/scale.py --device cuda    # on a GPU (PYTHONPATH=src if not installed)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def copy_bandwidth(nbytes: int = 512 << 20, device: str = "cpu", repeat: int = 3) -> float:
    """Bytes per second of a large tensor copy (read + write counted), best of ``repeat``."""
    import torch

    a = torch.empty(nbytes // 4, device=device)
    a.fill_(1.0)
    b = torch.empty_like(a)
    b.copy_(a)
    best = float("inf")
    for _ in range(repeat):
        synchronize(device)
        start = time.perf_counter()
        b.copy_(a)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * nbytes / best


def synchronize(device) -> None:
    """Wait for the device's queued work (a no-op on the CPU); ``device``: a name or device."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gb(device: str) -> float:
    """Peak resident memory of this process (CPU), or peak allocated GPU memory (CUDA)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def overlapping_split(num_nodes: int, per_node: int, seed: int = 0):
    import numpy as np

    from murmura.data import FederatedData, load_dataset

    dataset = load_dataset("fashion_mnist", download=False)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, dataset.num_train, size=(num_nodes, per_node))
    return FederatedData.from_parts(dataset, list(picks))


def case_logreg(num_nodes: int, rounds: int, device: str = "cpu") -> dict:
    import torch

    from murmura.swarm import Evaluation, Simulation

    data = overlapping_split(num_nodes, 16)
    start = time.perf_counter()
    sim = Simulation(data, "logreg", "dsgd", "random_regular", topology_kwargs={"k": 4},
                     algorithm_kwargs={"lr": 0.05, "local_steps": 1, "batch_size": 8},
                     evaluation=Evaluation(every=0), seed=0, device=device)
    setup = time.perf_counter() - start
    times, train, gossip = [], [], []
    for _ in range(rounds):
        record = sim.step(rounds)
        times.append(record["round_seconds"])
        train.append(record["train_seconds"])
        gossip.append(record["comm_seconds"])
    n, d = sim.params.shape
    state = n * d * 4
    # read before the bandwidth probe below allocates buffers of its own
    peak = peak_memory_gb(device)
    bandwidth = copy_bandwidth(device=device)
    feature = 784 * 4
    # step: read x, write x (the update); gossip: read x, write x; minibatches: 8 samples per
    # node read once
    traffic = 2 * state + 2 * state + n * 8 * feature
    floor = traffic / bandwidth
    best_at = min(range(1, len(times)), key=times.__getitem__) if len(times) > 1 else 0
    best = times[best_at]
    return {
        "case": f"logreg D-SGD, {num_nodes:,} nodes, random 4-regular, batch 8, 1 step + gossip",
        "nodes": n, "parameters": d, "state_gb": state / 1e9, "setup_seconds": setup,
        "round_seconds": times, "best_round_seconds": best,
        "best_round_train_seconds": train[best_at], "best_round_gossip_seconds": gossip[best_at],
        "bandwidth_gb_s": bandwidth / 1e9, "floor_seconds": floor, "ratio_to_floor": best / floor,
        "peak_rss_gb": peak, "device": device,
        "torch_threads": torch.get_num_threads(),
    }


def case_mlp(num_nodes: int, rounds: int, device: str = "cpu") -> dict:
    from murmura.swarm import Evaluation, Simulation

    data = overlapping_split(num_nodes, 64)
    start = time.perf_counter()
    sim = Simulation(data, "mlp", "fedavg", model_kwargs={"hidden": [200]},
                     algorithm_kwargs={"lr": 0.05, "local_steps": 1, "batch_size": 32},
                     evaluation=Evaluation(every=0), seed=0, device=device)
    setup = time.perf_counter() - start
    times = [sim.step(rounds)["round_seconds"] for _ in range(rounds)]
    n, d = sim.params.shape
    return {
        "case": f"MLP 784-200-10 FedAvg, {num_nodes:,} nodes, batch 32, 1 step",
        "nodes": n, "parameters": d, "state_gb": n * d * 4 / 1e9, "setup_seconds": setup,
        "round_seconds": times, "best_round_seconds": min(times[1:] or times),
        "peak_rss_gb": peak_memory_gb(device), "device": device,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--device", default="cpu",
                        help="cpu or cuda (on CUDA, peak memory is the GPU's peak allocation and "
                        "the step/gossip split is not synchronized)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case here
    args = parser.parse_args()
    if args.case:
        name, nodes, rounds = args.case.split(":")
        case = case_logreg if name == "logreg" else case_mlp
        result = case(int(nodes), int(rounds), args.device)
        print("RESULT " + json.dumps(result))
        return
    cases = [("logreg", 10_000 if args.quick else 100_000, 4),
             ("mlp", 1_000 if args.quick else 10_000, 3)]
    results = []
    for name, nodes, rounds in cases:
        done = subprocess.run([sys.executable, __file__, "--case", f"{name}:{nodes}:{rounds}",
                               "--device", args.device],
                              capture_output=True, text=True, env=os.environ.copy(), check=False)
        line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
        if done.returncode != 0 or line is None:
            print(f"{name} with {nodes} nodes failed (exit {done.returncode}):\n"
                  f"{done.stderr[-2000:]}")
            continue
        result = json.loads(line[len("RESULT "):])
        results.append(result)
        print(result["case"])
        print(f"  state {result['state_gb']:.2f} GB, peak memory {result['peak_rss_gb']:.2f} GB "
              f"({result['peak_rss_gb'] / result['state_gb']:.2f}x the state), set-up "
              f"{result['setup_seconds']:.1f} s")
        rounds_text = ", ".join(f"{t:.2f}" for t in result["round_seconds"])
        print(f"  seconds per round: {rounds_text} (best after the first: "
              f"{result['best_round_seconds']:.2f})")
        if "best_round_train_seconds" in result:
            print(f"  that round: local step {result['best_round_train_seconds']:.2f} s, gossip "
                  f"{result['best_round_gossip_seconds']:.2f} s")
        if "floor_seconds" in result:
            print(f"  memory-traffic floor {result['floor_seconds']:.2f} s at "
                  f"{result['bandwidth_gb_s']:.1f} GB/s: {result['ratio_to_floor']:.2f}x the floor")
    if args.json:
        args.json.write_text(json.dumps({"cpus": os.cpu_count(), "results": results},
                                        indent=2) + "\n")


if __name__ == "__main__":
    main()
