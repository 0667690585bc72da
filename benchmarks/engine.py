"""Seconds per round of murmura's engine against a naive per-node PyTorch loop and the machine's
floor, all measured in the same run.

    python benchmarks/engine.py                 # both regimes, default sizes
    python benchmarks/engine.py --quick         # smaller sizes, for a smoke run
    python benchmarks/engine.py --regime overhead --nodes 10000

The floor of a round is (its FLOPs at the measured fp32 matmul rate) + (its minimum memory
traffic at the measured copy bandwidth), both measured here, now. Minimum traffic:

* a local step reads and writes every participating node's parameters once (a fused
  forward/backward/update could do no less), and reads its minibatch once;
* FedAvg's averaging reads every row once and writes every row once;
* gossip on a k-regular graph reads each row k+1 times (once per receiver, as a row-wise
  sparse product must on a random graph whose state is far larger than cache) and writes once.

FLOPs of an MLP/logistic-regression step per sample: 2 * (weights) forward, 2 * (weights) for the
weight gradients, 2 * (weights of all but the first layer) for the input gradients.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from murmura.data import federate  # noqa: E402
from murmura.swarm import Evaluation, Simulation  # noqa: E402


def timed(fn, repeat: int) -> float:
    """Median seconds of ``fn()`` over ``repeat`` runs (after one warm-up run)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_rate() -> float:
    a = torch.randn(2048, 2048)
    b = torch.randn(2048, 2048)
    out = torch.empty(2048, 2048)
    seconds = timed(lambda: torch.mm(a, b, out=out), 5)
    return 2 * 2048**3 / seconds


def memory_bandwidth() -> float:
    """Bytes per second of a large copy (one read + one write per element)."""
    src = torch.ones(64 << 20)  # 256 MB
    dst = torch.empty_like(src)
    seconds = timed(lambda: dst.copy_(src), 5)
    return 2 * src.numel() * 4 / seconds


def mlp_step_flops(sizes: list[int]) -> int:
    weights = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    return 2 * sum(weights) + 2 * sum(weights) + 2 * sum(weights[1:])


# --------------------------------------------------------------------------------- naive loop


class NaiveLoop:
    """The straightforward implementation: one nn.Module per node (parameters are views of the
    node's row), autograd per node, torch.optim-style update, communication node by node."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.X = sim.params.clone()
        self.models = []
        import copy

        for i in range(sim.num_nodes):
            model = copy.deepcopy(sim.model)
            views = sim.spec.views(self.X[i])
            for name, view in views.items():
                module_name, _, attr = name.rpartition(".")
                module = model.get_submodule(module_name) if module_name else model
                delattr(module, attr)
                setattr(module, attr, view.requires_grad_(False))
            self.models.append((model, views))

    def round(self, topology_rows=None) -> None:
        sim = self.sim
        data = sim.data.dataset
        lr = sim.algorithm.local_rule.lr
        work = sim.algorithm.local_work
        b = work.batch_size
        gen = torch.Generator().manual_seed(0)
        for i, (model, views) in enumerate(self.models):
            own = sim.data.index_table[i, : int(sim.data.sizes[i])]
            if work.epochs is not None:  # one shuffled epoch, minibatches of b
                order = own[torch.randperm(len(own), generator=gen)]
                batches = [order[s : s + b] for s in range(0, len(order), b)]
            else:
                batches = [own[torch.randint(len(own), (b,), generator=gen)]
                           for _ in range(work.steps)]
            for index in batches:
                params = [v.requires_grad_(True) for v in views.values()]
                loss = F.cross_entropy(model(data.train_x[index]), data.train_y[index])
                grads = torch.autograd.grad(loss, params)
                with torch.no_grad():
                    for p, g in zip(params, grads):
                        p.requires_grad_(False)
                        p.add_(g, alpha=-lr)
        with torch.no_grad():
            if topology_rows is None:  # FedAvg: weighted average, then every node takes it
                w = sim.data.sizes.to(torch.float32) / sim.data.sizes.sum()
                avg = torch.zeros(self.X.shape[1])
                for i in range(sim.num_nodes):
                    avg.add_(self.X[i], alpha=float(w[i]))
                for i in range(sim.num_nodes):
                    self.X[i].copy_(avg)
            else:
                new = torch.empty_like(self.X)
                for i, (cols, vals) in enumerate(topology_rows):
                    new[i] = (self.X[cols] * vals.unsqueeze(1)).sum(0)
                self.X.copy_(new)


def csr_rows(matrix: torch.Tensor):
    crow, col, val = matrix.crow_indices(), matrix.col_indices(), matrix.values()
    return [(col[crow[i] : crow[i + 1]], val[crow[i] : crow[i + 1]]) for i in range(len(crow) - 1)]


# --------------------------------------------------------------------------------- regimes


def compute_bound(nodes: int, root: str | None, rate: float, bandwidth: float, repeat: int):
    data = federate("fashion_mnist", num_nodes=nodes, partition="iid", seed=0, root=root)
    sim = Simulation(data, "mlp", "fedavg", model_kwargs={"hidden": [200]},
                     algorithm_kwargs=dict(lr=0.05, local_epochs=1.0, batch_size=32),
                     evaluation=Evaluation(every=0))
    d = sim.spec.dim
    samples = int(data.sizes.sum())
    steps = sim.sampler.num_steps()
    flops = samples * mlp_step_flops([784, 200, 10])
    traffic = (
        steps * nodes * d * 4 * 2  # each local step: read + write the state
        + samples * 784 * 4  # each sample read once
        + nodes * d * 4 * 2  # averaging: read + write
    )
    floor = flops / rate + traffic / bandwidth
    engine = timed(lambda: sim.step(10**9), repeat)
    naive_sim = NaiveLoop(sim)
    naive = timed(naive_sim.round, max(1, repeat // 2))
    return dict(regime="compute-bound FedAvg MLP 784-200-10, 1 epoch, batch 32", nodes=nodes,
                engine_s=engine, naive_s=naive, floor_s=floor, flops=flops,
                traffic_bytes=traffic, engine_over_floor=engine / floor,
                naive_over_engine=naive / engine, chunk_size=sim.chunk_size)


def overhead_bound(nodes: int, root: str | None, rate: float, bandwidth: float, repeat: int,
                   degree: int = 4, naive: bool = True):
    data = federate("fashion_mnist", num_nodes=nodes, partition="iid", seed=0, root=root)
    sim = Simulation(data, "logreg", "dsgd", "random_regular",
                     topology_kwargs={"k": degree},
                     algorithm_kwargs=dict(lr=0.05, local_steps=1, batch_size=8),
                     evaluation=Evaluation(every=0))
    d = sim.spec.dim
    flops = nodes * 8 * mlp_step_flops([784, 10])
    traffic = (
        nodes * d * 4 * 2  # local step: read + write the state
        + nodes * 8 * 784 * 4  # minibatches read once
        + nodes * d * 4 * (degree + 1 + 1)  # gossip: k+1 row reads, one write
    )
    floor = flops / rate + traffic / bandwidth
    engine = timed(lambda: sim.step(10**9), repeat)
    result = dict(regime=f"overhead-bound D-SGD logreg, batch 8, 1 step, random {degree}-regular",
                  nodes=nodes, engine_s=engine, floor_s=floor, flops=flops,
                  traffic_bytes=traffic, engine_over_floor=engine / floor,
                  chunk_size=sim.chunk_size)
    if naive:
        rows = csr_rows(sim.topology.mixing_at(0).matrix)
        naive_sim = NaiveLoop(sim)
        naive_s = timed(lambda: naive_sim.round(rows), 1)
        result.update(naive_s=naive_s, naive_over_engine=naive_s / engine)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--regime", choices=["compute", "overhead", "both"], default="both")
    parser.add_argument("--nodes", type=int, nargs="*", help="override the node counts")
    shared = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fashion-mnist"
    parser.add_argument("--root", default=str(shared) if shared.exists() else None,
                        help="Fashion-MNIST folder (default: $MURMURA_DATA, or ../shared)")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    rate, bandwidth = matmul_rate(), memory_bandwidth()
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}")
    print(f"fp32 matmul: {rate / 1e9:.1f} GFLOP/s; copy bandwidth: {bandwidth / 1e9:.2f} GB/s")
    results = []
    if args.regime in ("compute", "both"):
        for n in args.nodes or ([16, 64] if args.quick else [100, 1000]):
            results.append(compute_bound(n, args.root, rate, bandwidth, args.repeat))
            print_row(results[-1])
    if args.regime in ("overhead", "both"):
        for n in args.nodes or ([1000] if args.quick else [10000]):
            results.append(overhead_bound(n, args.root, rate, bandwidth, args.repeat))
            print_row(results[-1])
    if args.json:
        Path(args.json).write_text(json.dumps(dict(matmul_flops=rate, bandwidth=bandwidth,
                                                   results=results), indent=2))


def print_row(r: dict) -> None:
    naive = ""
    if "naive_s" in r:
        naive = f"naive {r['naive_s']:.3f} s ({r['naive_over_engine']:.1f}x slower), "
    print(f"{r['regime']}, {r['nodes']} nodes: engine {r['engine_s']:.3f} s/round, {naive}"
          f"floor {r['floor_s']:.3f} s (engine/floor {r['engine_over_floor']:.2f}), "
          f"chunk {r['chunk_size']}", flush=True)


if __name__ == "__main__":
    main()
