"""Each robust aggregator's time per communication round, through murmura's engine, against
ByzFL's own implementation where one exists (a benchmark, never a test).

    MURMURA_DATA=/path/to/fashion-mnist .venv/bin/python benchmarks/robust_aggregators.py
    .venv/bin/python benchmarks/robust_aggregators.py --repeats 5 --json out.json
    .venv/bin/python benchmarks/robust_aggregators.py --only krum median   # some rules

Two settings, MLP 784-200-10 (d = 159,010), nodes from their own random initialization
(``same_init=False``, so no aggregate is trivial); the data only sizes the model:

**graph**: D-SGD on a random 6-regular graph of 32 nodes, ``aggregator = {name, f = 2}`` over
each node's neighbourhood, itself included (7 models). murmura: the round's communication as
``Simulation.step`` runs it (``plan = communication.plan(...)``, ``sim.communicate(plan)``: the
vmapped, or per-receiver, aggregator over every node, and the write-back). ByzFL: what a ByzFL
user writes for the same round, a loop over the 32 nodes calling ByzFL's class on the node's
stacked 7 rows (``torch`` inputs, its torch path).

**server**: FedAvg with 100 clients (their rows: the server's model plus N(0, 0.01^2) noise),
``aggregator = {name, f = 10}`` over the 100 uploaded models. murmura: ``sim.communicate(plan)``
of the server step (aggregate, server update, broadcast to the 100 clients); ByzFL: one call
of its class on the ``[100, d]`` stack.

Both sides run in this process with one torch thread, on the same inputs (restored before every
run); each runs once cold, then ``--repeats`` timed passes; the figure is the median. A rule
whose ``C(n, f)`` subsets exceed its ``max_subsets`` (MDA, SMEA at the server) is refused by
murmura before it starts and is not run on ByzFL's side either (it enumerates the same subsets).
ByzFL's CAF and SMEA start their power iterations from a random vector; the others are compared
for equality (max abs difference) on the first node / the server.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import json
import os
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "fashion-mnist"
RULES = ("average", "median", "trimmed_mean", "geometric_median", "krum", "multi_krum",
         "centered_clipping", "mda", "monna", "meamed", "caf", "smea", "bulyan", "flag",
         "self_centered_clipping", "bridge")
GRAPH_ONLY = ("self_centered_clipping", "bridge")
TAKES_F = ("trimmed_mean", "krum", "multi_krum", "mda", "monna", "meamed", "caf", "smea",
           "bulyan", "self_centered_clipping", "bridge")
BYZFL = {"average": "Average", "median": "Median", "trimmed_mean": "TrMean",
         "geometric_median": "GeometricMedian", "krum": "Krum", "multi_krum": "MultiKrum",
         "centered_clipping": "CenteredClipping", "mda": "MDA", "monna": "MoNNA",
         "meamed": "Meamed", "caf": "CAF", "smea": "SMEA"}
SETTINGS = {"graph": {"nodes": 32, "f": 2}, "server": {"nodes": 100, "f": 10}}


def load_byzfl() -> Any:
    """ByzFL's aggregators module without its package ``__init__`` (which imports torchvision),
    or None when byzfl is not installed (``pip install --no-deps byzfl==0.0.11``)."""
    spec = importlib.util.find_spec("byzfl")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = types.ModuleType("byzfl")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["byzfl"] = package
    return importlib.import_module("byzfl.aggregators.aggregators")


def simulation(setting: str, rule: str) -> Any:
    """The setting's simulation; at a server the clients' rows differ (a server starts every
    client from its model, so ``same_init=False`` does not apply there)."""
    import torch

    from murmura.data import federate
    from murmura.swarm import Evaluation, Simulation

    conf = SETTINGS[setting]
    spec: dict[str, Any] = {"name": rule}
    if rule in TAKES_F:
        spec["f"] = conf["f"]
    data = federate("fashion_mnist", num_nodes=conf["nodes"], partition="iid", seed=0)
    if setting == "graph":
        return Simulation(data, "mlp", "dsgd", "random_regular", topology_kwargs={"k": 6},
                          model_kwargs={"hidden": [200]}, algorithm_kwargs={"aggregator": spec},
                          same_init=False, seed=0, evaluation=Evaluation(every=0))
    sim = Simulation(data, "mlp", "fedavg", model_kwargs={"hidden": [200]},
                     algorithm_kwargs={"aggregator": spec}, seed=0, evaluation=Evaluation(every=0))
    # the clients' uploads after a round of training: the server's model plus a spread
    noise = torch.randn(sim.params.shape, generator=torch.Generator().manual_seed(0))
    sim.params.add_(0.01 * noise.to(sim.params.dtype))
    return sim


def timed(fn: Any, restore: Any, repeats: int) -> tuple[float, float, Any]:
    """(cold seconds, median of ``repeats`` warm runs, the cold result)."""
    restore()
    start = time.perf_counter()
    result = fn()
    cold = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        restore()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return cold, statistics.median(times), result


def bench(setting: str, rule: str, byzfl: Any, repeats: int) -> dict[str, Any]:
    import torch

    row: dict[str, Any] = {"setting": setting, "rule": rule}
    try:
        sim = simulation(setting, rule)
    except ValueError as error:
        row["murmura"] = f"refused: {str(error).split(';')[0]}"
        return row
    start_params = sim.params.clone()
    start_server = copy.deepcopy(sim.server_state)
    plan = sim.algorithm.communication.plan(sim.context(1), None, sim.topology, sim.data.sizes)

    def restore() -> None:
        sim.params.copy_(start_params)
        sim.server_state.clear()
        sim.server_state.update(copy.deepcopy(start_server))

    def ours() -> torch.Tensor:
        sim.communicate(plan)
        return sim.params[0].clone()

    try:
        cold, warm, mine = timed(ours, restore, repeats)
    except ValueError as error:  # e.g. too many subsets for a brute force
        row["murmura"] = f"refused: {str(error).split(';')[0]}"
        row["byzfl"] = "not run (same subsets)" if rule in ("mda", "smea") else ""
        return row
    row.update(murmura_s=warm, murmura_cold_s=cold)
    name = BYZFL.get(rule)
    if byzfl is None or name is None:
        row["byzfl"] = "not installed" if byzfl is None else "no ByzFL rule"
        return row
    f = SETTINGS[setting]["f"]
    params = {"f": f} if rule in TAKES_F else {}
    if setting == "graph":
        matrix = sim.topology.mixing_at(0).matrix.to_dense()
        hoods = [[i] + [j for j in torch.nonzero(matrix[i]).flatten().tolist() if j != i]
                 for i in range(sim.num_nodes)]

        def theirs() -> torch.Tensor:
            out = torch.empty_like(start_params)
            for i, hood in enumerate(hoods):
                agg = getattr(byzfl, name)(**params)  # stateful rules: one per node
                if rule == "monna":
                    agg = getattr(byzfl, name)(f=f, idx=0)
                out[i] = agg(start_params[hood])
            return out[0]
    else:
        def theirs() -> torch.Tensor:
            return getattr(byzfl, name)(**params)(start_params)
    try:
        cold, warm, their = timed(theirs, lambda: None, repeats)
    except Exception as error:  # noqa: BLE001 - a benchmark reports what ByzFL says
        row["byzfl"] = f"{type(error).__name__}: {error}"[:80]
        return row
    row.update(byzfl_s=warm, byzfl_cold_s=cold)
    if rule not in ("caf", "smea"):
        if setting == "graph":
            row["max_abs_diff"] = float((mine - their).abs().max())
        else:  # the server's new model = the aggregate (server lr 1)
            row["max_abs_diff"] = float((sim.server_state["params"] - their).abs().max()
                                        if "params" in sim.server_state else float("nan"))
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| setting | aggregator | murmura (s/round) | ByzFL (s/round) | ByzFL / murmura |"
             " max abs diff |", "|---|---|---|---|---|---|"]
    for r in rows:
        ours = f"{r['murmura_s']:.4f}" if "murmura_s" in r else r.get("murmura", "")
        theirs = f"{r['byzfl_s']:.4f}" if "byzfl_s" in r else r.get("byzfl", "")
        ratio = (f"{r['byzfl_s'] / r['murmura_s']:.1f}x"
                 if "byzfl_s" in r and "murmura_s" in r else "")
        diff = f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else ""
        lines.append(f"| {r['setting']} | {r['rule']} | {ours} | {theirs} | {ratio} | {diff} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=None, help="these rules only")
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if "MURMURA_DATA" not in os.environ and DEFAULT_DATA.is_dir():
        os.environ["MURMURA_DATA"] = str(DEFAULT_DATA)
    import torch

    torch.set_num_threads(1)
    byzfl = load_byzfl()
    rows = []
    for setting in args.settings:
        for rule in args.only or RULES:
            if setting == "server" and rule in GRAPH_ONLY:
                continue
            rows.append(bench(setting, rule, byzfl, args.repeats))
            print(rows[-1], flush=True)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"threads": 1, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
