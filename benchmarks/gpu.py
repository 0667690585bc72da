"""The engine on a GPU: one 10,000-node FedAvg round, its achieved FLOP/s against the device's
fp32 matmul rate measured in the same run.

FedAvg on Fashion-MNIST, MLP 784-200-10, one local epoch of batch 32 over 64 images per node
(drawn at random, nodes overlapping: the training set has 60,000 images), plain SGD. FLOPs per
sample: 2x the weights forward, 2x for the weight gradients, 2x all but the first layer's for the
input gradients. TF32 is off, so the comparison is fp32 against fp32.

Also against a floor: the FLOPs at that rate plus the round's minimum memory traffic (each local
step reads and writes the state once, minibatches read once, the server average reads and writes
the state once) at the device's copy bandwidth, measured in the same run.

The round is timed twice in the same run: with the fused linear-SGD step (the default for this
model and rule, ``murmura.swarm.fused``) and with the generic ``vmap(grad)`` step. Before timing,
a check: 300 nodes for 2 rounds, fused against generic on the device and the device against the
CPU (maximum absolute difference of the parameters; both should be float32 rounding).

    python benchmarks/gpu.py                    # needs CUDA
    python benchmarks/gpu.py --device cpu --nodes 500    # the same measurement on the CPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import mlp_step_flops  # noqa: E402  (the engine benchmark's FLOP count)
from scale import copy_bandwidth, synchronize  # noqa: E402  (the scale benchmark's probes)


def matmul_rate(device: torch.device, size: int) -> float:
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    out = torch.empty(size, size, device=device)
    torch.mm(a, b, out=out)
    synchronize(device)
    times = []
    for _ in range(10):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", action="store_true",
                        help="also print where one fused round spends its time (torch profiler)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"no CUDA device (torch {torch.__version__}): run this on a GPU "
                         "machine, or pass --device cpu")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    import numpy as np

    from murmura.data import FederatedData, load_dataset
    from murmura.swarm import Evaluation, Simulation

    dataset = load_dataset("fashion_mnist", download=False)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "nodes": args.nodes, "torch": torch.__version__}

    def simulation(nodes: int, on: torch.device, fused: bool) -> Simulation:
        picks = np.random.default_rng(0).integers(0, dataset.num_train, size=(nodes, 64))
        data = FederatedData.from_parts(dataset, list(picks))
        return Simulation(data, "mlp", "fedavg", model_kwargs={"hidden": [200]}, device=on,
                          algorithm_kwargs={"lr": 0.05, "local_epochs": 1.0, "batch_size": 32},
                          evaluation=Evaluation(every=0), seed=0, fused=fused)

    finals = {}
    for on, fused in ((device, True), (device, False), (torch.device("cpu"), True)):
        sim = simulation(300, on, fused)
        sim.run(2)
        finals[(on.type, fused)] = sim.params.cpu()
    result["check_fused_vs_generic_max_abs"] = float(
        (finals[(device.type, True)] - finals[(device.type, False)]).abs().max())
    result["check_device_vs_cpu_max_abs"] = float(
        (finals[(device.type, True)] - finals[("cpu", True)]).abs().max())
    print(f"check, 300 nodes x 2 rounds: fused vs generic max |diff| "
          f"{result['check_fused_vs_generic_max_abs']:.2e}, {device.type} vs cpu "
          f"{result['check_device_vs_cpu_max_abs']:.2e}", flush=True)
    # the other paths on the device: a sparse gossip product, momentum in the fused step (one
    # step: the state's rows; two: the same on CUDA), the generic step of a CNN
    checks = (("logreg dsgd ring", "logreg", {}), ("logreg dsgd ring momentum", "logreg",
              {"momentum": 0.9, "local_steps": 1}), ("mlp dsgd ring momentum", "mlp",
              {"momentum": 0.9, "weight_decay": 1e-3}), ("cnn dsgd ring", "cnn", {}))
    for label, model, extra in checks:
        rows = {}
        for on, fused in ((device, True), (device, False), (torch.device("cpu"), True)):
            picks = np.random.default_rng(1).integers(0, dataset.num_train, size=(64, 64))
            kwargs = {"lr": 0.05, "local_steps": 2, "batch_size": 16, **extra}
            sim = Simulation(FederatedData.from_parts(dataset, list(picks)), model, "dsgd",
                             "ring", device=on, evaluation=Evaluation(every=0), seed=0,
                             algorithm_kwargs=kwargs, fused=fused)
            sim.run(2)
            rows[(on.type, fused)] = sim.params.cpu()
        key = label.replace(" ", "_")
        vs_cpu = float((rows[(device.type, True)] - rows[("cpu", True)]).abs().max())
        vs_generic = float((rows[(device.type, True)] - rows[(device.type, False)]).abs().max())
        result[f"check_{key}_device_vs_cpu_max_abs"] = vs_cpu
        result[f"check_{key}_fused_vs_generic_max_abs"] = vs_generic
        print(f"check, {label}, 64 nodes x 2 rounds: {device.type} vs cpu max |diff| "
              f"{vs_cpu:.2e}, fused vs generic {vs_generic:.2e}", flush=True)

    peak = matmul_rate(device, 8192 if device.type == "cuda" else 2048)
    result["matmul_fp32_flop_s"] = peak
    bandwidth = copy_bandwidth((1 << 30) if device.type == "cuda" else (256 << 20), str(device),
                               repeat=10)
    result["copy_bandwidth_bytes_s"] = bandwidth
    print(f"{result['device']}: FedAvg MLP 784-200-10, {args.nodes:,} nodes, 1 epoch of 64 "
          f"samples, batch 32; fp32 matmul {peak / 1e12:.2f} TFLOP/s", flush=True)
    for label, fused in (("fused", True), ("generic", False)):
        sim = simulation(args.nodes, device, fused)
        times = []
        for _ in range(args.rounds):
            synchronize(device)
            start = time.perf_counter()
            sim.step(args.rounds)
            synchronize(device)
            times.append(time.perf_counter() - start)
        best = min(times[1:] or times)
        samples = int(sim.data.sizes.sum())  # one epoch: every node's samples once
        flops = samples * mlp_step_flops([784, 200, 10])
        # the memory floor: every local step reads and writes the state once, every minibatch
        # is read once, the server average reads the state and writes it back once
        state = sim.params.numel() * 4
        traffic = sim.sampler.num_steps() * 2 * state + samples * 784 * 4 + 2 * state
        floor = flops / peak + traffic / bandwidth
        result[label] = {
            "floor_seconds": floor, "ratio_to_floor": best / floor, "traffic_bytes": traffic,
            "round_seconds": times, "best_round_seconds": best, "round_flops": flops,
            "achieved_flop_s": flops / best, "fraction_of_matmul_rate": flops / best / peak,
            "chunk_size": sim.chunk_size,
        }
        print(f"  {label:8s} seconds per round: {', '.join(f'{t:.3f}' for t in times)} (best "
              f"after the first {best:.3f}; {statistics.median(times):.3f} median): "
              f"{flops / best / 1e12:.2f} TFLOP/s = {100 * flops / best / peak:.1f} % of the "
              f"matmul rate, {best / floor:.2f}x the floor ({floor:.3f} s: the FLOPs at the "
              f"matmul rate + {traffic / 1e9:.1f} GB at {bandwidth / 1e12:.2f} TB/s), blocks of "
              f"{sim.chunk_size} nodes", flush=True)
        if args.profile and fused:
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU]
            if device.type == "cuda":
                activities.append(ProfilerActivity.CUDA)
            with profile(activities=activities) as prof:
                sim.step(args.rounds)
                synchronize(device)
            key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
            print(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=40))
        del sim
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result["fused_speedup"] = (result["generic"]["best_round_seconds"]
                               / result["fused"]["best_round_seconds"])
    print(f"  fused step {result['fused_speedup']:.2f}x the generic one")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
