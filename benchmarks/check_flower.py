"""murmura's federated server rules against Flower's strategies on the same inputs (a check).

    python benchmarks/check_flower.py                  # needs flwr in this Python
    python benchmarks/check_flower.py --rounds 20 --clients 30 --json out.json

Flower is a benchmark-only dependency (``pip install 'flwr[simulation]'``, the ``bench`` extra);
without it the script says how to install it and exits 0. It exits 1 when any check fails.

**Server rules** (FedAvgM, FedAdam, FedYogi, FedAdagrad; FedProx's server, which is FedAvg's):
both sides start from the same initial model and get the same sequence of client results, several
rounds of random client models (a drifting centre plus per-client noise) from a random subset of
the clients, each with its number of examples. Flower's strategy gets them as
``aggregate_fit(server_round, [(ClientProxy, FitRes)], [])``, the objects its server builds
(``FitRes`` carrying ``ndarrays_to_parameters`` of the model's layers, ``Status(Code.OK)``), and
its returned parameters are the new global model. murmura gets them twice:

* ``rule fp64``: the named algorithm's own server rule (``make_algorithm(name, ...).server``)
  and its communication rule's plan (``ServerOptimize`` with ``weighting="samples"``: the
  ``ServerStep`` weights from the clients' sample counts), with the weighted mean computed as the
  engine computes it, all in float64 (Flower's numpy follows its inputs' dtype), so any
  difference beyond rounding is a difference of formula;
* ``engine fp32``: a real ``Simulation`` (synthetic data whose per-node sample counts are the
  ``num_examples``; MLP 60-16-10): the clients' models are written into their rows and the
  engine executes the plan (``Simulation.communicate``), so the weighted mean, the server rule and
  the broadcast are the engine's own float32 path.

Each setting runs with murmura's defaults (handed to Flower explicitly) and with other values, so
a parameter mapped to the wrong place cannot agree by chance. Agreement is the largest absolute
difference of the global models over all rounds and coordinates, against 1e-10 (fp64) and 1e-5
(fp32; models have entries of order 1).

**FedProx** (Flower's ``FedProx`` is FedAvg on the server; its clients add
``mu/2 ||w - w_global||²`` to their loss): (1) the server aggregation as above; (2) Flower's
``configure_fit`` hands ``proximal_mu`` to every sampled client; (3) murmura's ``ProxSGD`` step
on a small MLP implies the gradient ``∇(loss + mu/2 ||w - w_global||²)`` computed by autograd
(float64); (4) end to end: murmura's engine runs ``fedprox`` for a few rounds while Flower-style
clients (``torch.optim.SGD`` on the proximal loss, full batches so minibatch order cannot
differ) train from the same global model and Flower's ``FedProx.aggregate_fit`` averages them;
the global models must agree to float32 rounding. Flower's ``FedProx`` docstring writes the
proximal term as ``(w - w_global).norm(2)`` unsquared; its paper and Flower's baselines square
it, which is the convention checked here.

What this does not show: Flower's client-side training loops, sampling, failures or metrics
aggregation (only the server update is compared), or anything of Flower's simulation engine.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

INSTALL_HINT = (
    "Flower is not installed in this Python ({exe}); it is a benchmark-only dependency.\n"
    "Install it (in a separate environment if you like) with:\n"
    "    python -m venv /tmp/flwr-venv && /tmp/flwr-venv/bin/pip install torch==2.13.0 "
    "'flwr[simulation]>=1.42' && /tmp/flwr-venv/bin/pip install -e .\n"
    "then run:  /tmp/flwr-venv/bin/python benchmarks/check_flower.py"
)
TOL = {"rule fp64": 1e-10, "engine fp32": 1e-5}
FEATURES, HIDDEN, CLASSES = 60, 16, 10
# every client fits every round it is given; Flower warns when minimum counts disagree
QUIET = {"fraction_fit": 1.0, "min_fit_clients": 1, "min_evaluate_clients": 1,
         "min_available_clients": 1}

# (label, murmura algorithm, murmura kwargs, Flower strategy, Flower kwargs)
SETTINGS = [
    ("FedAvgM", "fedavgm", {}, "FedAvgM",
     {"server_learning_rate": 1.0, "server_momentum": 0.9}),
    ("FedAvgM", "fedavgm", {"server_lr": 0.5, "server_momentum": 0.7}, "FedAvgM",
     {"server_learning_rate": 0.5, "server_momentum": 0.7}),
    ("FedAdam", "fedadam", {}, "FedAdam",
     {"eta": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-9}),
    ("FedAdam", "fedadam", {"server_lr": 0.03, "beta1": 0.8, "beta2": 0.95, "tau": 1e-4},
     "FedAdam", {"eta": 0.03, "beta_1": 0.8, "beta_2": 0.95, "tau": 1e-4}),
    ("FedYogi", "fedyogi", {}, "FedYogi",
     {"eta": 0.01, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}),
    ("FedYogi", "fedyogi", {"server_lr": 0.05, "beta1": 0.8, "beta2": 0.95, "tau": 1e-4},
     "FedYogi", {"eta": 0.05, "beta_1": 0.8, "beta_2": 0.95, "tau": 1e-4}),
    # Flower's FedAdagrad has no beta_1: it passes beta_1=0.0 to FedOpt (m_t = delta_t)
    ("FedAdagrad", "fedadagrad", {}, "FedAdagrad", {"eta": 0.1, "tau": 1e-9}),
    ("FedAdagrad", "fedadagrad", {"server_lr": 0.03, "tau": 1e-4}, "FedAdagrad",
     {"eta": 0.03, "tau": 1e-4}),
    ("FedProx", "fedprox", {"mu": 0.1}, "FedProx", {"proximal_mu": 0.1}),
]


def flower_missing() -> str | None:
    if importlib.util.find_spec("flwr") is None:
        return INSTALL_HINT.format(exe=sys.executable)
    return None


# --------------------------------------------------------------------------------- Flower side


def make_proxy(cid: str):
    """A ``ClientProxy`` as Flower's server holds one per client (its RPCs are never called:
    the check hands ``aggregate_fit`` the results directly)."""
    from flwr.server.client_proxy import ClientProxy

    class Proxy(ClientProxy):
        def get_properties(self, ins, timeout, group_id):
            raise NotImplementedError

        def get_parameters(self, ins, timeout, group_id):
            raise NotImplementedError

        def fit(self, ins, timeout, group_id):
            raise NotImplementedError

        def evaluate(self, ins, timeout, group_id):
            raise NotImplementedError

        def reconnect(self, ins, timeout, group_id):
            raise NotImplementedError

    proxy = Proxy(cid)
    proxy.node_id = int(cid)
    return proxy


def fit_res(arrays: list[np.ndarray], num_examples: int):
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    return FitRes(status=Status(code=Code.OK, message="Success"),
                  parameters=ndarrays_to_parameters(arrays), num_examples=int(num_examples),
                  metrics={})


def flower_strategy(name: str, kwargs: dict, initial: list[np.ndarray]):
    import flwr.server.strategy as strategies
    from flwr.common import ndarrays_to_parameters

    cls = getattr(strategies, name)
    return cls(initial_parameters=ndarrays_to_parameters(initial), **QUIET, **kwargs)


def layers_of(row: np.ndarray, spec) -> list[np.ndarray]:
    """A flat model row as Flower's list of layer arrays (murmura's parameter order)."""
    return [row[o:o + k].reshape(s).copy() for o, k, s in zip(spec.offsets, spec.numels,
                                                             spec.shapes)]


def flat_of(parameters) -> np.ndarray:
    from flwr.common import parameters_to_ndarrays

    return np.concatenate([a.ravel() for a in parameters_to_ndarrays(parameters)])


def run_flower(name: str, kwargs: dict, spec, initial: np.ndarray, rounds: list, sizes,
               proxies) -> list[np.ndarray]:
    """The global model after each round, as Flower's ``aggregate_fit`` returns it."""
    strategy = flower_strategy(name, kwargs, layers_of(initial, spec))
    out = []
    for server_round, (ids, models) in enumerate(rounds, start=1):
        results = [(proxies[i], fit_res(layers_of(models[j], spec), sizes[i]))
                   for j, i in enumerate(ids)]
        parameters, _ = strategy.aggregate_fit(server_round, results, [])
        out.append(flat_of(parameters))
    return out


# -------------------------------------------------------------------------------- murmura side


def synthetic_data(clients: int, seed: int, quantity_skew: float, samples: int = 60):
    from murmura.data import federate

    return federate("synthetic", clients, "natural", seed=seed,
                    dataset_params={"num_features": FEATURES, "num_classes": CLASSES,
                                    "samples_per_node": samples,
                                    "quantity_skew": quantity_skew})


def make_sim(data, algorithm: str, kwargs: dict):
    from murmura.swarm import Evaluation, Simulation

    return Simulation(data, "mlp", algorithm, model_kwargs={"hidden": [HIDDEN]},
                      algorithm_kwargs=kwargs, evaluation=Evaluation(every=0), seed=0)


def run_murmura_rule(algorithm: str, kwargs: dict, initial: np.ndarray, rounds: list, sizes
                     ) -> list[np.ndarray]:
    """The named algorithm's server rule on its own plan's sample weights, in float64."""
    from murmura.algorithms import RoundContext, make_algorithm

    algo = make_algorithm(algorithm, **kwargs)
    server = algo.server
    state = server.init(torch.from_numpy(initial).double())
    sizes_t = torch.as_tensor(sizes)
    out = []
    for r, (ids, models) in enumerate(rounds):
        participants = torch.as_tensor(ids, dtype=torch.int64)
        ctx = RoundContext(r, len(rounds), 0, len(sizes), torch.device("cpu"))
        plan = algo.communication.plan(ctx, participants, None, sizes_t)
        weights = plan.weights.double()  # the engine: .to(params.dtype), then normalized
        weights = weights / weights.sum()
        stack = torch.from_numpy(models).double()
        mean = weights[participants] @ stack
        ctx = RoundContext(r, len(rounds), 0, len(sizes), torch.device("cpu"),
                           uploaders=len(ids))
        _, state = server.update(state, {"params": mean}, ctx)
        out.append(state["params"].numpy().copy())
    return out


def run_murmura_engine(sim, rounds: list) -> list[np.ndarray]:
    """The engine's ``ServerStep`` on the clients' models written into their rows (float32)."""
    out = []
    for ids, models in rounds:
        participants = torch.as_tensor(ids, dtype=torch.int64)
        sim.params[participants] = torch.from_numpy(models)
        plan = sim.algorithm.communication.plan(sim.context(len(rounds)), participants,
                                                sim.topology, sim.data.sizes)
        sim.communicate(plan)
        glob = sim.server_state["params"]
        if not torch.equal(sim.params, glob.expand_as(sim.params)):
            raise AssertionError("the engine did not broadcast the server's model to every row")
        out.append(glob.numpy().copy())
        sim.round += 1
    return out


def client_rounds(initial: np.ndarray, clients: int, rounds: int, seed: int) -> list:
    """Per round: the sorted ids of a random subset of clients and their models (float32)."""
    rng = np.random.default_rng(seed)
    centre = initial.astype(np.float64)
    out = []
    for _ in range(rounds):
        m = int(rng.integers(max(2, clients // 4), clients + 1))
        ids = np.sort(rng.choice(clients, size=m, replace=False))
        centre = centre + 0.05 * rng.standard_normal(centre.shape)
        models = centre + 0.1 * rng.standard_normal((m, centre.size))
        out.append((ids.tolist(), models.astype(np.float32)))
    return out


# ----------------------------------------------------------------------------------- checks


def check_servers(args) -> list[dict]:
    data = synthetic_data(args.clients, args.seed, quantity_skew=1.0)
    sizes = [int(s) for s in data.sizes]
    proxies = [make_proxy(str(i)) for i in range(args.clients)]
    rows = []
    for label, algorithm, kwargs, flower_name, flower_kwargs in SETTINGS:
        sim = make_sim(data, algorithm, kwargs)
        spec = sim.spec
        initial32 = sim.server_state["params"].numpy().copy()
        rounds32 = client_rounds(initial32, args.clients, args.rounds, args.seed)
        rounds64 = [(ids, models.astype(np.float64)) for ids, models in rounds32]
        initial64 = initial32.astype(np.float64)

        diffs = {}
        flower64 = run_flower(flower_name, flower_kwargs, spec, initial64, rounds64, sizes,
                              proxies)
        ours64 = run_murmura_rule(algorithm, kwargs, initial64, rounds64, sizes)
        diffs["rule fp64"] = max_diff(flower64, ours64)
        flower32 = run_flower(flower_name, flower_kwargs, spec, initial32, rounds32, sizes,
                              proxies)
        ours32 = run_murmura_engine(sim, rounds32)
        diffs["engine fp32"] = max_diff(flower32, ours32)
        moved = float(np.abs(flower64[-1] - initial64).max())
        ok = all(diffs[k] <= TOL[k] for k in TOL)
        rows.append({"check": label, "murmura": f"{algorithm}({fmt_kwargs(kwargs)})",
                     "flower": f"{flower_name}({fmt_kwargs(flower_kwargs)})",
                     "rounds": args.rounds, "max_abs_diff": diffs, "tolerance": TOL,
                     "global_moved": moved, "ok": ok})
    return rows


def check_fedprox_config(args) -> dict:
    """Flower's FedProx hands ``proximal_mu`` to every client it samples in ``configure_fit``."""
    from flwr.common import ndarrays_to_parameters
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.strategy import FedProx

    mu = 0.1
    initial = [np.zeros((3, 2), np.float32), np.zeros(3, np.float32)]
    manager = SimpleClientManager()
    for i in range(args.clients):
        manager.register(make_proxy(str(i)))
    strategy = FedProx(proximal_mu=mu, initial_parameters=ndarrays_to_parameters(initial),
                       **QUIET)
    pairs = strategy.configure_fit(1, ndarrays_to_parameters(initial), manager)
    mus = [ins.config.get("proximal_mu") for _, ins in pairs]
    ok = len(pairs) == args.clients and all(m == mu for m in mus)
    return {"check": "FedProx configure_fit", "detail": f"{len(pairs)} clients sampled, "
            f"proximal_mu={sorted(set(mus))}", "rounds": 1,
            "max_abs_diff": {"config": 0.0 if ok else float("inf")}, "ok": ok}


def check_prox_gradient(args) -> dict:
    """``ProxSGD.update`` implies ``∇(CE + mu/2 ||w - w_global||²)`` (autograd, float64)."""
    from torch.func import functional_call, grad

    from murmura.algorithms import make_algorithm
    from murmura.models import build_model
    from murmura.swarm.params import ParamSpec

    mu, lr = 0.3, 0.1
    torch.manual_seed(args.seed)
    net = build_model("mlp", (FEATURES,), CLASSES, hidden=[HIDDEN]).double()
    spec = ParamSpec.from_module(net)
    anchor = spec.flatten(net).clone()
    w = anchor + 0.1 * torch.randn_like(anchor)
    x = torch.randn(32, FEATURES, dtype=torch.float64)
    y = torch.randint(0, CLASSES, (32,))

    def loss(params):
        return F.cross_entropy(functional_call(net, params, (x,)), y)

    # Flower's client: loss + mu/2 * sum over layers of ||w - w_global||²
    wr = w.clone().requires_grad_(True)
    views, global_views = spec.views(wr), spec.views(anchor)
    proximal = sum(torch.square((views[n] - global_views[n]).norm(2)) for n in spec.names)
    (loss(views) + mu / 2 * proximal).backward()
    expected = wr.grad

    rule = make_algorithm("fedprox", mu=mu, lr=lr).local_rule
    grads = grad(loss)({n: v.detach() for n, v in spec.views(w.clone()).items()})
    stepped = w.clone().unsqueeze(0)  # the engine calls update on [nodes, ...] slices
    for name in spec.names:
        param = spec.views(stepped)[name]
        rule.update(param, grads[name].unsqueeze(0).clone(),
                    {"anchor": spec.views(anchor.unsqueeze(0))[name]}, None)
    implied = (w - stepped[0]) / lr
    diff = float((implied - expected).abs().max())
    return {"check": "FedProx ProxSGD gradient",
            "detail": f"mu={mu}, MLP {FEATURES}-{HIDDEN}-{CLASSES}, fp64, |grad| max "
            f"{float(expected.abs().max()):.3g}", "rounds": 1,
            "max_abs_diff": {"rule fp64": diff}, "tolerance": {"rule fp64": 1e-12},
            "ok": diff <= 1e-12}


def check_fedprox_end_to_end(args) -> dict:
    """murmura's fedprox through the engine against Flower-style proximal clients and Flower's
    ``FedProx.aggregate_fit``, same data, same initial model, full-batch local steps."""
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedProx

    mu, lr, steps, clients, rounds = 0.5, 0.05, 5, min(args.clients, 10), min(args.rounds, 5)
    data = synthetic_data(clients, args.seed, quantity_skew=0.0, samples=40)
    batch = int(data.sizes[0])  # every node has the same count: each step is a full batch
    sim = make_sim(data, "fedprox", {"mu": mu, "lr": lr, "local_steps": steps,
                                     "batch_size": batch})
    spec = sim.spec
    glob = sim.server_state["params"].numpy().copy()
    strategy = FedProx(proximal_mu=mu, initial_parameters=ndarrays_to_parameters(
        layers_of(glob, spec)), **QUIET)
    proxies = [make_proxy(str(i)) for i in range(clients)]
    x_all, y_all = data.dataset.train_x, data.dataset.train_y
    worst, moved = 0.0, 0.0
    for server_round in range(1, rounds + 1):
        results = []
        for i in range(clients):
            net = copy.deepcopy(sim._cpu_template)
            with torch.no_grad():
                for p, layer in zip(net.parameters(), layers_of(glob, spec)):
                    p.copy_(torch.from_numpy(layer))
            global_params = [p.detach().clone() for p in net.parameters()]
            optimizer = torch.optim.SGD(net.parameters(), lr=lr)
            part = torch.as_tensor(data.parts[i])
            x, y = x_all[part], y_all[part]
            for _ in range(steps):
                optimizer.zero_grad()
                proximal = sum(torch.square((p - g).norm(2))
                               for p, g in zip(net.parameters(), global_params))
                (F.cross_entropy(net(x), y) + mu / 2 * proximal).backward()
                optimizer.step()
            arrays = [p.detach().numpy().copy() for p in net.parameters()]
            results.append((proxies[i], fit_res(arrays, len(part))))
        parameters, _ = strategy.aggregate_fit(server_round, results, [])
        new = np.concatenate([a.ravel() for a in parameters_to_ndarrays(parameters)])
        sim.step(rounds)
        ours = sim.server_state["params"].numpy()
        worst = max(worst, float(np.abs(new - ours).max()))
        moved = max(moved, float(np.abs(new - glob).max()))
        glob = new
    return {"check": "FedProx end to end", "detail": f"{clients} clients x {steps} full-batch "
            f"steps, lr {lr}, mu={mu}", "global_moved": moved, "rounds": rounds,
            "max_abs_diff": {"engine fp32": worst}, "tolerance": {"engine fp32": 1e-5},
            "ok": worst <= 1e-5}


def max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max())
               for x, y in zip(a, b, strict=True))


def fmt_kwargs(kwargs: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in kwargs.items()) or "defaults"


def print_table(rows: list[dict]) -> None:
    print(f"{'check':<26} {'setting':<54} {'rounds':>6}  {'max |diff|':<34} result")
    for row in rows:
        setting = row.get("detail") or row["murmura"]
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in row["max_abs_diff"].items())
        print(f"{row['check']:<26} {setting:<54} {row['rounds']:>6}  {diffs:<34} "
              f"{'OK' if row['ok'] else 'FAIL'}")
        if "flower" in row:
            print(f"{'':<26}   vs Flower {row['flower']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    missing = flower_missing()
    if missing:
        print(missing)
        return 0
    import logging

    import flwr

    logging.getLogger("flwr").setLevel(logging.ERROR)  # "No fit_metrics_aggregation_fn"
    torch.set_num_threads(1)
    rows = check_servers(args)
    rows += [check_fedprox_config(args), check_prox_gradient(args),
             check_fedprox_end_to_end(args)]
    print(f"flwr {flwr.__version__}, torch {torch.__version__}, numpy {np.__version__}; "
          f"{args.clients} clients, seed {args.seed}")
    print_table(rows)
    failed = [r["check"] for r in rows if not r["ok"]]
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    if args.json:
        args.json.write_text(json.dumps({"flwr": flwr.__version__, "torch": torch.__version__,
                                         "rows": rows}, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
