"""What one evaluation costs next to a training round, murmura's against the straightforward
vectorized one, measured in the same run (a benchmark, never a test).

An evaluation (every round by default: ``evaluation.every = 1``) measures the average model x̄ on
the test set, the consensus distance (1/n) sum_i ||x_i - x̄||², and every node's own model on a
shared subset of 500 test samples. The straightforward version sums the state in float64
(``X.sum(0, dtype=float64)``, which copies it to float64 first), takes the consensus distance with
``vector_norm(dtype=float64)`` and evaluates the nodes with ``vmap`` over node blocks. murmura
sums float32 blocks of rows into float64 and, for logistic-regression-like models (a first layer
of at most 64 outputs), runs every node's first layer as one GEMM on the shared samples
(``murmura.swarm.fused.node_accuracy_shared_input``). The two must give the same figures.

    python benchmarks/evaluation.py [--json FILE]        # about a minute
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine import timed  # noqa: E402  (median seconds after a warm-up, as the engine benchmark)

CASES = [
    dict(label="D-SGD, logreg, random 4-regular, 10,000 nodes", nodes=10_000, model="logreg"),
    dict(label="D-SGD, MLP 784-200-10, random 4-regular, 1,000 nodes", nodes=1_000, model="mlp"),
]


@torch.no_grad()
def straightforward(sim) -> dict[str, float]:
    from murmura.metrics.evaluation import evaluate_model, evaluate_nodes

    data = sim.data.dataset
    mean = (sim.params.sum(dim=0, dtype=torch.float64) / sim.num_nodes).to(torch.float32)
    accuracy, loss = evaluate_model(sim.model, sim.spec, mean, data.test_x, data.test_y)
    total = 0.0
    for start in range(0, sim.num_nodes, 1024):
        block = sim.params[start : start + 1024] - mean
        total += float(torch.linalg.vector_norm(block, dim=1, dtype=torch.float64).square().sum())
    subset = sim._node_eval_subset
    nodes = evaluate_nodes(sim.model, sim.spec, sim.params, data.test_x[subset],
                           data.test_y[subset], sim.buffers, sim._eval_chunk_size(len(subset)))
    return {"test_accuracy": accuracy, "consensus_distance": total / sim.num_nodes,
            "node_accuracy_mean": float(nodes.mean())}


def run_case(case: dict, root: str | None) -> dict:
    from murmura.data import federate
    from murmura.swarm import Evaluation, Simulation

    data = federate("fashion_mnist", num_nodes=case["nodes"], partition="iid", seed=0, root=root)
    sim = Simulation(data, case["model"], "dsgd", "random_regular", topology_kwargs={"k": 4},
                     algorithm_kwargs=dict(lr=0.05, local_steps=1, batch_size=8),
                     evaluation=Evaluation(every=0), seed=0)
    round_s = timed(lambda: sim.step(100), 3)
    ours = sim.evaluate()
    reference = straightforward(sim)
    for key, value in reference.items():
        if abs(ours[key] - value) > 1e-6 * max(1.0, abs(value)):
            raise SystemExit(f"{case['label']}: {key} differs: murmura {ours[key]!r}, "
                             f"straightforward {value!r}")
    result = dict(case, round_s=round_s, evaluate_s=timed(sim.evaluate, 3),
                  straightforward_s=timed(lambda: straightforward(sim), 3))
    result["speedup"] = result["straightforward_s"] / result["evaluate_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shared = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fashion-mnist"
    default_root = os.environ.get("MURMURA_DATA") or (str(shared) if shared.exists() else None)
    parser.add_argument("--root", default=default_root, help="Fashion-MNIST folder")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    results = []
    for case in CASES:
        r = run_case(case, args.root)
        results.append(r)
        print(f"{r['label']}: training round {r['round_s']:.3f} s; evaluation "
              f"{r['evaluate_s']:.3f} s, straightforward {r['straightforward_s']:.3f} s "
              f"({r['speedup']:.1f}x)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
