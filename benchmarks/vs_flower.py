"""The same FedAvg experiment in Flower and in murmura, timed side by side in one run (a benchmark,
never a test).

    python benchmarks/vs_flower.py                          # 100 and 1,000 clients, 5 rounds
    python benchmarks/vs_flower.py --quick                  # 100 clients, 2 rounds: a smoke run
    python benchmarks/vs_flower.py --clients 100 --rounds 3 --json out.json

Flower is a benchmark-only dependency: ``pip install 'flwr[simulation]'`` (Flower with Ray).

**The experiment.** Fashion-MNIST, IID split, MLP 784-200-10, SGD lr 0.05 (no momentum), batch
32, 1 local epoch, every client every round, FedAvg weighted by the clients' numbers of samples.
Both frameworks train client i on exactly ``federate("fashion_mnist", N, "iid", seed=0).parts[i]``
from the same initial model (murmura's ``Simulation(..., seed=0)`` template, handed to Flower as
its initial parameters; both runs report a fingerprint of it and of the split, and the script
checks they agree), and both evaluate the global model on the whole test set after every round
(and once before the first). Only the shuffling differs: murmura draws each node's epoch order
from its counter-based generator, Flower's clients from a torch generator seeded by (round,
client). The two accuracy curves must agree within 1 point at every round.

**Flower** runs its Ray simulation with the legacy API a Flower user writes: a ``NumPyClient``
whose ``fit`` is a plain PyTorch loop (one shuffled epoch over the client's tensors, batch 32,
``torch.optim.SGD``), a ``ClientApp(client_fn=...)``, a ``ServerApp`` with the standard
``FedAvg`` strategy and a central ``evaluate_fn``, ``run_simulation`` with one CPU per client
(``client_resources = {"num_cpus": 1, "num_gpus": 0.0}``) on a Ray instance given all the
machine's cores, so as many clients train at once as there are cores, each in a Ray actor with one
torch thread. Each actor loads the dataset once (module-level cache, as Flower's examples do with
``flwr-datasets``) and slices its client's partition from it. **murmura** runs
``Simulation(data, "mlp", "fedavg", ...)`` with torch's default threads.

**Timing.** Each framework runs in its own fresh process. Per-round times exclude evaluation in
both: murmura's are the history's ``train_seconds + comm_seconds``; Flower's are the gaps between
the end of one ``evaluate_fn`` call and the start of the next (timestamps taken inside
``evaluate_fn``, so they cover everything Flower does in a round: sampling, messaging through its
in-memory SuperLink and Ray, client training, aggregation). Times with evaluation are recorded
too. Round 1 carries one-off costs (Ray starting its actors, which then import torch and load the
data; murmura's first vmapped step), so the headline s/round is the mean of rounds 2..R and round
1 is reported apart. Start-up is reported separately: murmura's is loading and splitting the data
and building the ``Simulation``; Flower's is ``ray.init`` plus ``run_simulation``'s own start
until the initial evaluation, and the wall time of the whole ``run_simulation`` call is reported
as well.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib.util
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

HERE = Path(__file__).resolve().parent
LR, BATCH, EPOCHS, HIDDEN, SEED = 0.05, 32, 1.0, 200, 0
TARGETS = {100: 4.0, 1000: 15.0}  # the speed-up targets (Flower s/round / murmura s/round)
MARK = "VS_FLOWER_RESULT "
INSTALL_HINT = (
    "Flower is not installed in this Python ({exe}): it is a benchmark-only dependency.\n"
    "Install it with its Ray simulation extra:  pip install 'flwr[simulation]'"
)


def flower_missing() -> str | None:
    """Why Flower's simulation cannot run here (None when it can)."""
    for name in ("flwr", "ray"):
        if importlib.util.find_spec(name) is None:
            return INSTALL_HINT.format(exe=sys.executable)
    return None


# --------------------------------------------------------------------------------- shared


def load_federation(num_clients: int):
    """The split both frameworks use: client i trains on ``parts[i]``."""
    from murmura.data import federate

    return federate("fashion_mnist", num_nodes=num_clients, partition="iid", seed=SEED,
                    root=os.environ.get("MURMURA_DATA") or None,
                    dataset_params={"download": False})


def make_simulation(data, evaluation):
    from murmura.swarm import Simulation

    return Simulation(
        data, "mlp", "fedavg", seed=SEED, model_kwargs={"hidden": [HIDDEN]},
        algorithm_kwargs=dict(lr=LR, local_epochs=EPOCHS, batch_size=BATCH),
        evaluation=evaluation,
    )


def fingerprint(named: dict[str, np.ndarray] | list[np.ndarray]) -> str:
    """A short hash of arrays (by name order when named): same model, same split."""
    items = sorted(named.items()) if isinstance(named, dict) else enumerate(named)
    h = hashlib.sha256()
    for name, array in items:
        h.update(str(name).encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:16]


def make_net() -> nn.Module:
    """The MLP as a Flower user writes it; its state-dict keys match murmura's 'mlp'."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 10))


def set_weights(net: nn.Module, arrays: list[np.ndarray]) -> None:
    keys = list(net.state_dict().keys())
    net.load_state_dict({k: torch.from_numpy(np.asarray(a)) for k, a in zip(keys, arrays)},
                        strict=True)


def get_weights(net: nn.Module) -> list[np.ndarray]:
    return [v.detach().cpu().numpy().copy() for v in net.state_dict().values()]


@torch.no_grad()
def test_metrics(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Accuracy and mean cross-entropy on the whole test set (batches of 4096, as murmura)."""
    net.eval()
    correct, loss = 0, 0.0
    for s in range(0, len(y), 4096):
        out = net(x[s : s + 4096])
        loss += float(F.cross_entropy(out, y[s : s + 4096], reduction="sum"))
        correct += int((out.argmax(1) == y[s : s + 4096]).sum())
    return correct / len(y), loss / len(y)


# --------------------------------------------------------------------------------- murmura


def murmura_worker(num_clients: int, rounds: int) -> dict:
    from murmura.swarm import Evaluation

    t0 = time.perf_counter()
    data = load_federation(num_clients)
    sim = make_simulation(data, Evaluation(every=1, node_samples=0))
    setup = time.perf_counter() - t0
    init = {k: v.numpy() for k, v in sim._cpu_template.state_dict().items()}
    before = sim.evaluate()  # the initial model, as Flower's evaluate_fn(0, ...)
    history = sim.run(rounds)
    records = list(history.records)
    return dict(
        setup_s=setup,
        threads=torch.get_num_threads(),
        chunk_size=sim.chunk_size,
        init_fingerprint=fingerprint(init),
        split_fingerprint=fingerprint(list(data.parts)),
        accuracy=[before["test_accuracy"]] + [r["test_accuracy"] for r in records],
        loss=[before["test_loss"]] + [r["test_loss"] for r in records],
        round_s=[r["train_seconds"] + r["comm_seconds"] for r in records],
        round_with_eval_s=[r["round_seconds"] for r in records],
    )


# --------------------------------------------------------------------------------- Flower
# The client side lives at module level of this file imported as ``vs_flower`` (Ray's workers
# import it by that name), so each actor process keeps its loaded data between clients.

_DATA_CACHE: dict[int, tuple[torch.Tensor, torch.Tensor, list[np.ndarray]]] = {}


def client_data(partition: int, num_partitions: int) -> tuple[torch.Tensor, torch.Tensor]:
    if num_partitions not in _DATA_CACHE:
        data = load_federation(num_partitions)
        _DATA_CACHE[num_partitions] = (data.dataset.train_x, data.dataset.train_y, data.parts)
    train_x, train_y, parts = _DATA_CACHE[num_partitions]
    idx = torch.from_numpy(parts[partition])
    return train_x[idx], train_y[idx]


@functools.cache
def client_class():
    from flwr.client import NumPyClient

    class TorchClient(NumPyClient):
        """A plain PyTorch client: one shuffled epoch of SGD over its own tensors."""

        def __init__(self, partition: int, x: torch.Tensor, y: torch.Tensor) -> None:
            self.partition, self.x, self.y = partition, x, y

        def fit(self, parameters, config):
            net = make_net()
            set_weights(net, parameters)
            net.train()
            optimizer = torch.optim.SGD(net.parameters(), lr=LR)
            gen = torch.Generator().manual_seed(1_000_003 * int(config["round"]) + self.partition)
            order = torch.randperm(len(self.y), generator=gen)
            for s in range(0, len(order), BATCH):
                idx = order[s : s + BATCH]
                optimizer.zero_grad()
                F.cross_entropy(net(self.x[idx]), self.y[idx]).backward()
                optimizer.step()
            metrics = {"pid": os.getpid(), "threads": torch.get_num_threads()}
            return get_weights(net), len(self.y), metrics

    return TorchClient


def client_fn(context):
    partition = int(context.node_config["partition-id"])
    x, y = client_data(partition, int(context.node_config["num-partitions"]))
    return client_class()(partition, x, y).to_client()


def flower_worker(num_clients: int, rounds: int) -> dict:
    import logging

    import ray
    import vs_flower  # this file as an importable module: Ray's actors import the client by name
    from flwr.client import ClientApp
    from flwr.common import ndarrays_to_parameters
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation

    # The driver's own set-up, not timed as Flower's: the test set for evaluate_fn, the split's
    # fingerprint, and murmura's initial model (a 1-node Simulation: the template depends only
    # on the seed and the model).
    from murmura.data import FederatedData
    from murmura.swarm import Evaluation

    data = load_federation(num_clients)
    one = FederatedData.from_parts(data.dataset, [data.parts[0]])
    template = make_simulation(one, Evaluation(every=0))._cpu_template
    init = {k: v.numpy().copy() for k, v in template.state_dict().items()}
    net = make_net()
    set_weights(net, list(init.values()))
    test_x, test_y = data.dataset.test_x, data.dataset.test_y

    evals: list[dict] = []
    workers: list[list[tuple[int, int]]] = []

    def evaluate_fn(server_round, arrays, config):
        start = time.perf_counter()
        set_weights(net, arrays)
        acc, loss = test_metrics(net, test_x, test_y)
        evals.append(dict(round=server_round, start=start, end=time.perf_counter(),
                          accuracy=acc, loss=loss))
        return loss, {"accuracy": acc}

    def fit_metrics(results):
        workers.append(sorted({(int(m["pid"]), int(m["threads"])) for _, m in results}))
        return {}

    def server_fn(context):
        strategy = FedAvg(
            fraction_fit=1.0, fraction_evaluate=0.0,
            min_fit_clients=num_clients, min_available_clients=num_clients,
            initial_parameters=ndarrays_to_parameters(list(init.values())),
            evaluate_fn=evaluate_fn, on_fit_config_fn=lambda r: {"round": r},
            fit_metrics_aggregation_fn=fit_metrics,
        )
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds))

    cores = os.cpu_count() or 1
    init_args = dict(num_cpus=cores, include_dashboard=False, logging_level=logging.WARNING)
    # Ray is started here rather than inside run_simulation (which would do the same with these
    # init_args) only so that its start-up is timed apart: run_simulation reuses it, and shuts
    # it down at the end.
    pythonpath = os.pathsep.join([str(HERE), *sys.path])
    t0 = time.perf_counter()
    ray.init(runtime_env={"env_vars": {"PYTHONPATH": pythonpath,
                                       "MURMURA_DATA": os.environ.get("MURMURA_DATA", "")}},
             **init_args)
    ray_init = time.perf_counter() - t0
    t1 = time.perf_counter()
    run_simulation(
        server_app=ServerApp(server_fn=server_fn),
        client_app=ClientApp(client_fn=vs_flower.client_fn),
        num_supernodes=num_clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                        "init_args": init_args},
    )
    t2 = time.perf_counter()
    if ray.is_initialized():
        ray.shutdown()
    if len(evals) != rounds + 1:
        raise RuntimeError(f"expected {rounds + 1} evaluations, Flower made {len(evals)}")
    return dict(
        ray_init_s=ray_init,
        to_first_eval_s=evals[0]["start"] - t1,
        run_simulation_s=t2 - t1,
        teardown_s=t2 - evals[-1]["end"],
        eval_s=[e["end"] - e["start"] for e in evals],
        init_fingerprint=fingerprint(init),
        split_fingerprint=fingerprint(list(data.parts)),
        accuracy=[e["accuracy"] for e in evals],
        loss=[e["loss"] for e in evals],
        round_s=[evals[r]["start"] - evals[r - 1]["end"] for r in range(1, rounds + 1)],
        round_with_eval_s=[evals[r]["end"] - evals[r - 1]["end"] for r in range(1, rounds + 1)],
        actors=workers,
    )


# --------------------------------------------------------------------------------- processes


def in_subprocess(kind: str, num_clients: int, rounds: int, root: str | None) -> dict:
    """Run one framework in a fresh process (its own session, so nothing it starts outlives
    it) and return its result."""
    env = dict(os.environ, FLWR_TELEMETRY_ENABLED="0", RAY_USAGE_STATS_ENABLED="0",
               PYTHONUNBUFFERED="1")
    if root:
        env["MURMURA_DATA"] = root
    if kind == "flower":
        env["MURMURA_TUNE_MALLOC"] = "0"  # the Flower driver keeps glibc's default allocator
    args = [sys.executable, __file__, "--worker", kind, str(num_clients), str(rounds)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate()
    finally:
        try:  # anything the worker left behind in its session (Ray's daemons, actors)
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    lines = [line for line in out.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the {kind} worker failed (exit {proc.returncode}):\n{out[-4000:]}")
    return json.loads(lines[-1][len(MARK):])


def summarize(n: int, rounds: int, m: dict, f: dict) -> dict:
    def steady(times: list[float]) -> float:
        return statistics.mean(times[1:] if len(times) > 1 else times)

    gaps = [abs(a - b) * 100 for a, b in zip(f["accuracy"], m["accuracy"])]
    result = dict(
        clients=n, rounds=rounds,
        same_initial_model=m["init_fingerprint"] == f["init_fingerprint"],
        same_split=m["split_fingerprint"] == f["split_fingerprint"],
        flower_s_per_round=steady(f["round_s"]), murmura_s_per_round=steady(m["round_s"]),
        flower_s_per_round_with_eval=steady(f["round_with_eval_s"]),
        murmura_s_per_round_with_eval=steady(m["round_with_eval_s"]),
        flower_round1_s=f["round_s"][0], murmura_round1_s=m["round_s"][0],
        flower_startup_s=f["ray_init_s"] + f["to_first_eval_s"], murmura_startup_s=m["setup_s"],
        accuracy_gap_points=gaps, max_accuracy_gap_points=max(gaps[1:]),
        flower_final_accuracy=f["accuracy"][-1], murmura_final_accuracy=m["accuracy"][-1],
        flower=f, murmura=m,
    )
    result["speedup"] = result["flower_s_per_round"] / result["murmura_s_per_round"]
    result["speedup_with_eval"] = (result["flower_s_per_round_with_eval"]
                                   / result["murmura_s_per_round_with_eval"])
    target = TARGETS.get(n)
    result["target_speedup"] = target
    result["target_met"] = None if target is None else result["speedup"] >= target
    return result


def print_curves(r: dict) -> None:
    f, m = r["flower"], r["murmura"]
    print(f"  {r['clients']} clients: round | Flower acc  murmura acc  gap (points) | "
          f"Flower s  murmura s (without evaluation)")
    for i, gap in enumerate(r["accuracy_gap_points"]):
        times = "" if i == 0 else f" | {f['round_s'][i - 1]:8.2f}  {m['round_s'][i - 1]:9.3f}"
        label = "init" if i == 0 else str(i)
        print(f"  {label:>5} | {f['accuracy'][i]:10.4f}  {m['accuracy'][i]:11.4f}  "
              f"{gap:12.2f}{times}")


def print_table(results: list[dict]) -> None:
    head = (f"{'clients':>7} {'rounds':>6} {'Flower s/round':>14} {'murmura s/round':>15} "
            f"{'ratio':>7} {'target':>7} {'max acc gap':>11} {'final acc F / m':>16}")
    print(head)
    print("-" * len(head))
    for r in results:
        target = "-" if r["target_speedup"] is None else (
            f"{r['target_speedup']:.0f}x " + ("met" if r["target_met"] else "MISSED"))
        print(f"{r['clients']:>7} {r['rounds']:>6} {r['flower_s_per_round']:>14.3f} "
              f"{r['murmura_s_per_round']:>15.3f} {r['speedup']:>6.1f}x {target:>7} "
              f"{r['max_accuracy_gap_points']:>8.2f} pt "
              f"{r['flower_final_accuracy']:>7.4f} / {r['murmura_final_accuracy']:.4f}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind, num_clients, rounds = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        worker = murmura_worker if kind == "murmura" else flower_worker
        result = worker(num_clients, rounds)
        print(MARK + json.dumps(result), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default=None,
                        help="comma-separated client counts (default 100,1000; --quick: 100)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 5; --quick: 2)")
    shared = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fashion-mnist"
    default_root = os.environ.get("MURMURA_DATA") or (str(shared) if shared.exists() else None)
    parser.add_argument("--root", default=default_root, help="Fashion-MNIST folder")
    parser.add_argument("--quick", action="store_true", help="100 clients, 2 rounds: a smoke run")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    missing = flower_missing()
    if missing:
        sys.exit(missing)
    clients = [int(c) for c in (args.clients or ("100" if args.quick else "100,1000")).split(",")]
    rounds = args.rounds or (2 if args.quick else 5)
    if rounds < 1 or any(c < 1 for c in clients):
        sys.exit("--rounds and --clients must be positive")

    import flwr
    import ray

    machine = dict(machine=platform.machine(), cores=os.cpu_count(),
                   torch_threads=torch.get_num_threads(), python=platform.python_version(),
                   torch=torch.__version__, flwr=flwr.__version__, ray=ray.__version__)
    print(f"machine: {machine['machine']}, {machine['cores']} cores; torch {machine['torch']} "
          f"({machine['torch_threads']} threads), flwr {machine['flwr']}, ray {machine['ray']}")
    print("FedAvg, Fashion-MNIST IID, MLP 784-200-10, SGD lr 0.05, batch 32, 1 local epoch, all "
          f"clients every round, {rounds} rounds; s/round = mean of rounds 2..{rounds}, "
          "without evaluation", flush=True)
    results = []
    for n in clients:
        m = in_subprocess("murmura", n, rounds, args.root)
        print(f"murmura, {n} clients: set-up {m['setup_s']:.1f} s, rounds "
              + ", ".join(f"{t:.3f}" for t in m["round_s"]) + " s", flush=True)
        f = in_subprocess("flower", n, rounds, args.root)
        print(f"Flower,  {n} clients: ray.init {f['ray_init_s']:.1f} s, run_simulation to the "
              f"initial evaluation {f['to_first_eval_s']:.1f} s, rounds "
              + ", ".join(f"{t:.2f}" for t in f["round_s"])
              + f" s, whole run_simulation {f['run_simulation_s']:.1f} s; actors (pid, torch "
              f"threads): {f['actors'][-1]}", flush=True)
        r = summarize(n, rounds, m, f)
        if not (r["same_initial_model"] and r["same_split"]):
            print(f"  WARNING: the runs differ in initial model ({r['same_initial_model']}) or "
                  f"split ({r['same_split']}): the comparison is not like for like")
        results.append(r)
        print_curves(r)
    print()
    print_table(results)
    print()
    for r in results:
        fair = "fair (curves within 1 point)" if r["max_accuracy_gap_points"] <= 1.0 else (
            "NOT within 1 point")
        print(f"{r['clients']} clients: start-up Flower {r['flower_startup_s']:.1f} s "
              f"(ray.init {r['flower']['ray_init_s']:.1f} s), murmura "
              f"{r['murmura_startup_s']:.1f} s; round 1 Flower {r['flower_round1_s']:.2f} s, "
              f"murmura {r['murmura_round1_s']:.3f} s; with evaluation "
              f"{r['flower_s_per_round_with_eval']:.3f} vs {r['murmura_s_per_round_with_eval']:.3f}"
              f" s/round ({r['speedup_with_eval']:.1f}x); {fair}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            dict(setting=dict(dataset="fashion_mnist", partition="iid", model="mlp 784-200-10",
                              lr=LR, batch_size=BATCH, local_epochs=EPOCHS, seed=SEED,
                              rounds=rounds, timing="s/round: mean of rounds 2..R, without "
                              "evaluation (murmura: train_seconds + comm_seconds; Flower: end of "
                              "one evaluate_fn call to the start of the next)"),
                 machine=machine, results=results), indent=2))


if __name__ == "__main__":
    main()
