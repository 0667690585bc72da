"""The v2 rule contract, with small rules written here: declared node state and its resets, keyed
local rules, the after-local hook, the errors a rule's author meets, and the sharded backend on
the v2 algorithms."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from murmura.algorithms import (
    SGD,
    Algorithm,
    Every,
    Exchange,
    FullParticipation,
    LocalWork,
    Mix,
    NodeState,
    SampledParticipation,
    SendModel,
    ServerStep,
    TakeReceived,
)
from murmura.algorithms.rules import NoCommunication
from murmura.config import Experiment
from murmura.data import federate
from murmura.runner import run_experiment
from murmura.swarm import Evaluation, Simulation
from murmura.swarm.random import key_uniform, node_keys

NO_EVAL = Evaluation(every=0)


def digits(nodes: int = 8):
    return federate("digits", num_nodes=nodes, partition="dirichlet", alpha=0.5, seed=0)


def algorithm(local_rule=None, communication=None, *, participation=None, work=None,
              after_local=None, server=None) -> Algorithm:
    return Algorithm(
        name="probe",
        local_rule=local_rule or SGD(0.1),
        local_work=work or LocalWork(batch_size=16, steps=1),
        communication=communication or NoCommunication(),
        schedule=Every(1),
        participation=participation or FullParticipation(),
        after_local=after_local,
        server=server,
    )


# ---------------------------------------------------------------------------------------------
# node state resets


@dataclass(frozen=True)
class MarkedSGD(SGD):
    """SGD that declares state of each kind (and never reads it)."""

    node_state: dict = field(default_factory=lambda: {
        "start": NodeState("params", "round"), "scratch": NodeState("zeros", "round"),
        "kept": NodeState("params", "never")})


@pytest.mark.parametrize("sampled", [True, False])
def test_round_state_is_reset_for_the_participants_only(sampled):
    participation = SampledParticipation(count=3) if sampled else FullParticipation()
    sim = Simulation(digits(), "logreg", algorithm(MarkedSGD(0.1), participation=participation),
                     evaluation=NO_EVAL, same_init=False)
    assert torch.equal(sim.node_state["start"], sim.params)  # init "params": a copy
    assert torch.equal(sim.node_state["kept"], sim.params)
    assert not torch.equal(sim.node_state["start"][0], sim.node_state["start"][1])
    assert torch.equal(sim.node_state["scratch"], torch.zeros_like(sim.params))
    for _round_index in range(2):
        for name in ("start", "scratch", "kept"):
            sim.node_state[name].fill_(-7.0)
        before = sim.params.clone()
        chosen = sim.algorithm.participation.select(sim.context(2))
        sim.step(2)
        taking_part = torch.zeros(8, dtype=torch.bool)
        taking_part[slice(None) if chosen is None else chosen] = True
        assert int(taking_part.sum()) == (3 if sampled else 8)
        start, scratch = sim.node_state["start"], sim.node_state["scratch"]
        # participants: the model the round started from, and zeros
        assert torch.equal(start[taking_part], before[taking_part])
        assert torch.equal(scratch[taking_part], torch.zeros_like(before[taking_part]))
        # everyone else keeps what they held; "never" is never reset
        assert bool((start[~taking_part] == -7.0).all())
        assert bool((scratch[~taking_part] == -7.0).all())
        assert bool((sim.node_state["kept"] == -7.0).all())
        assert not torch.equal(sim.params[taking_part], before[taking_part])  # they trained
        assert torch.equal(sim.params[~taking_part], before[~taking_part])


# ---------------------------------------------------------------------------------------------
# keyed local rules


@dataclass(frozen=True)
class NoiseStep(SGD):
    """A "gradient" drawn from the node's key alone: what the node computes depends on nothing
    but (seed, node, round, step)."""

    needs_key: bool = True

    def gradient(self, loss):
        def fn(params, *args):
            key = args[-1]  # (params, x, y[, w], key)
            return {name: key_uniform(key, p.shape, salt=i)
                    for i, (name, p) in enumerate(params.items())}
        return fn


@pytest.mark.parametrize("work", [LocalWork(batch_size=16, steps=3),
                                  LocalWork(batch_size=16, epochs=1.0)])
def test_a_keyed_rule_gets_the_same_key_whatever_the_blocking(work):
    """Per-node keys from (seed, 'local', node, round, step): identical for every chunk size;
    with epochs over unequal partitions (nodes sorted by size, masked steps) too."""
    data, lr, seed = digits(), 0.1, 5
    finals = []
    for chunk in (1, 3, None):
        sim = Simulation(data, "logreg", algorithm(NoiseStep(lr), work=work), seed=seed,
                         evaluation=NO_EVAL, chunk_size=chunk, fused=False)
        start = sim.params.clone()
        sim.run(2)
        finals.append(sim.params.clone())
    assert torch.equal(finals[0], finals[1]) and torch.equal(finals[0], finals[2])
    # by hand: x_i - lr sum over (round, step) of the node's draws
    steps = [sim.sampler.num_steps(torch.tensor([i])) for i in range(8)]
    if work.epochs is not None:
        assert len(set(steps)) > 1  # unequal partitions: unequal numbers of steps
    expected = start.clone()
    for node in range(8):
        for round_index in range(2):
            for step in range(steps[node]):
                key = node_keys(seed, "local", torch.tensor([node]), round_index, step)[0]
                views = sim.spec.views(expected[node])
                for i, name in enumerate(sim.spec.names):
                    views[name].sub_(lr * key_uniform(key, views[name].shape, salt=i))
    torch.testing.assert_close(finals[0], expected, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# the after-local hook


@dataclass(frozen=True)
class CountSteps:
    node_state: dict = field(default_factory=lambda: {"steps_seen": NodeState(),
                                                      "node_seen": NodeState()})

    def __call__(self, params, state, node, steps):
        zeros = torch.zeros_like(params)
        return {"steps_seen": zeros + steps, "node_seen": zeros + node}


@pytest.mark.parametrize("chunk", [None, 2])
@pytest.mark.parametrize("sampled", [False, True])
def test_after_local_sees_each_nodes_own_number_of_steps(chunk, sampled):
    data = digits()
    participation = SampledParticipation(count=5) if sampled else FullParticipation()
    work = LocalWork(batch_size=16, epochs=1.0)
    sim = Simulation(data, "logreg", algorithm(work=work, after_local=CountSteps(),
                                               participation=participation),
                     evaluation=NO_EVAL, chunk_size=chunk)
    chosen = sim.algorithm.participation.select(sim.context(1))
    sim.step(1)
    expected = torch.tensor([math.ceil(int(s) / 16) for s in data.sizes], dtype=torch.float32)
    assert len(set(expected.tolist())) > 1
    taking_part = torch.zeros(8, dtype=torch.bool)
    taking_part[slice(None) if chosen is None else chosen] = True
    steps_seen = sim.node_state["steps_seen"]
    node_seen = sim.node_state["node_seen"]
    assert torch.equal(steps_seen[taking_part, 0], expected[taking_part])
    assert torch.equal(node_seen[taking_part, 0], torch.arange(8.0)[taking_part])
    assert bool((steps_seen[~taking_part] == 0).all())  # who did not train was not called
    assert bool((steps_seen == steps_seen[:, :1]).all())  # the whole row


# ---------------------------------------------------------------------------------------------
# errors a rule's author meets


@dataclass(frozen=True)
class DeclaresZeros(SGD):
    node_state: dict = field(default_factory=lambda: {"shared": NodeState("zeros")})


@dataclass(frozen=True)
class DeclaresParams:
    node_state: dict = field(default_factory=lambda: {"shared": NodeState("params")})

    def __call__(self, params, state, node, steps):
        return {}


def test_conflicting_node_state_declarations_are_an_error():
    with pytest.raises(ValueError, match=r"node state 'shared' is declared as .* and as .* "
                                         r"\(by DeclaresParams\)"):
        Simulation(digits(), "logreg",
                   algorithm(DeclaresZeros(0.1), after_local=DeclaresParams()),
                   evaluation=NO_EVAL)

    @dataclass(frozen=True)
    class DeclaresTheModel(SGD):
        node_state: dict = field(default_factory=lambda: {"params": NodeState()})

    with pytest.raises(ValueError, match="'params' is the model, not a state name"):
        Simulation(digits(), "logreg", algorithm(DeclaresTheModel(0.1)), evaluation=NO_EVAL)
    with pytest.raises(ValueError, match="init must be 'zeros', 'params' or a number"):
        NodeState("ones")
    with pytest.raises(ValueError, match="reset must be 'never' or 'round'"):
        NodeState("zeros", "epoch")


@dataclass(frozen=True)
class GhostEncoder:
    """Declares its state on itself only: the algorithm's rules do not."""

    node_state: dict = field(default_factory=lambda: {"ghost": NodeState()})

    def encode(self, params, state, key):
        return {"params": params}, {"ghost": params}

    def nbytes(self, dim):
        return 4 * dim


@dataclass(frozen=True)
class GhostCombiner:
    node_state: dict = field(default_factory=lambda: {"ghost": NodeState()})

    def combine(self, params, state, received):
        return {"params": received["params"], "ghost": received["params"]}


@dataclass(frozen=True)
class PlanOf:
    """A communication rule that returns what it was given (``make`` builds it per round)."""

    make: object
    needs_topology: bool = True

    def plan(self, ctx, participants, topology, sizes):
        return self.make(topology.mixing_at(ctx.round, device=ctx.device))


@pytest.mark.parametrize("make", [
    lambda m: Exchange(m, GhostEncoder(), TakeReceived()),
    lambda m: Exchange(m, SendModel(), GhostCombiner()),
    lambda m: [Mix(m), Exchange(m, GhostEncoder(), GhostCombiner())],
])
def test_writing_an_undeclared_state_is_a_clear_key_error(make):
    sim = Simulation(digits(), "logreg", algorithm(communication=PlanOf(make)), "ring",
                     evaluation=NO_EVAL)
    # the message names the state, says no rule declares it, and where to declare it
    with pytest.raises(KeyError, match=r"update for 'ghost'.* node state .*declare.*node_state"):
        sim.step(1)


@dataclass(frozen=True)
class GhostServer:
    def init(self, params):
        return {"params": params.clone()}

    def update(self, state, aggregate, ctx):
        return {"params": aggregate["params"], "ghost": aggregate["params"]}, state


@dataclass(frozen=True)
class ToServer:
    needs_topology: bool = False

    def plan(self, ctx, participants, topology, sizes):
        return ServerStep(torch.full((ctx.num_nodes,), 1.0 / ctx.num_nodes))


def test_a_server_broadcasting_an_undeclared_state_is_a_clear_key_error():
    sim = Simulation(digits(), "logreg", algorithm(communication=ToServer(), server=GhostServer()),
                     evaluation=NO_EVAL)
    with pytest.raises(KeyError, match=r"the server broadcast 'ghost'.* node state .*declare"):
        sim.step(1)


@pytest.mark.parametrize("make", [lambda m: "mix", lambda m: [Mix(m), object()]])
def test_an_unknown_plan_type_is_a_clear_type_error(make):
    sim = Simulation(digits(), "logreg", algorithm(communication=PlanOf(make)), "ring",
                     evaluation=NO_EVAL)
    with pytest.raises(TypeError, match=r"unknown communication plan (str|object): a rule's "
                                        r"plan\(\) returns Mix, Average, Exchange, ServerStep"):
        sim.step(1)


# ---------------------------------------------------------------------------------------------
# the sharded backend (one torchrun launch for all the cases)

BASE = """
seed = 1
rounds = 3
[data]
dataset = "digits"
nodes = 16
partition = {{ name = "dirichlet", alpha = 0.5 }}
[model]
name = "logreg"
{topology}
[algorithm]
lr = 0.1
local_steps = 2
{algorithm}
[evaluation]
every = 1
node_samples = 100
[engine]
threads = 1
[output]
checkpoint_every = 0
plots = false
report = false
"""
TOPOLOGY = '[topology]\nname = "random_regular"\nk = 4'
CASES = {
    "choco": (TOPOLOGY, 'name = "choco"\ngamma = 0.5\n'
                        'compressor = { name = "random_k", ratio = 0.3 }'),
    "scaffold": ("", 'name = "scaffold"\nclients_per_round = 6'),
    "robust": (TOPOLOGY, 'name = "dsgd"\naggregator = { name = "median" }'),
}
SCRIPT = '''
import sys
from pathlib import Path

import torch.distributed as dist

from murmura.config import Experiment
from murmura.runner import run_experiment

dist.init_process_group("gloo")  # one group for every run: run_experiment joins it
out = Path(sys.argv[1])
for config in sys.argv[2:]:
    name = Path(config).stem
    try:
        run_experiment(Experiment.from_toml(config), out / name, progress=False, backend="dist")
        outcome = "ok"
    except Exception as error:  # noqa: BLE001 (reported to the test)
        outcome = f"{type(error).__name__}: {error}".replace("\\n", " ")
    if dist.get_rank() == 0:
        print(f"RESULT {name} {outcome}", flush=True)
    dist.barrier()
dist.destroy_process_group()
'''
COUNTED = ["bytes_sent", "bytes_received", "bytes_sent_total", "bytes_sent_per_node_max",
           "bytes_received_per_node_max", "server_bytes_sent_total"]
EVALUATED = ["test_accuracy", "test_loss", "node_accuracy_mean", "node_accuracy_min",
             "node_accuracy_max", "consensus_distance"]


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """Every case run by 2 gloo processes in one torchrun launch: the outcome line of each,
    and the folder the runs were written to."""
    folder = tmp_path_factory.mktemp("sharded")
    configs = []
    for name, (topology, algo) in CASES.items():
        path = folder / f"{name}.toml"
        path.write_text(BASE.format(topology=topology, algorithm=algo))
        configs.append(str(path))
    script = folder / "launch.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", str(script), str(folder / "two"), *configs]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"torchrun did not finish in 240 s: {err[-2000:]}") from None
    assert proc.returncode == 0, err[-3000:]
    results = dict(line.split(" ", 2)[1:] for line in out.splitlines()
                   if line.startswith("RESULT "))
    return folder, results


@pytest.mark.parametrize("name", ["choco", "scaffold"])
def test_two_processes_equal_one_on_the_v2_algorithms(sharded, name, tmp_path):
    folder, results = sharded
    assert results[name] == "ok"
    single = run_experiment(Experiment.from_toml(folder / f"{name}.toml"), tmp_path / "one",
                            progress=False)
    assert single.status == "completed"
    one, two = read_rows(tmp_path / "one"), read_rows(folder / "two" / name)
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        for key in COUNTED:  # bytes are counted, not computed: exactly equal
            assert float(a[key]) == float(b[key]), key
        for key in EVALUATED:
            assert math.isclose(float(a[key]), float(b[key]), rel_tol=1e-6, abs_tol=1e-9), key
    assert float(one[-1]["bytes_sent_total"]) > 0


def test_a_robust_aggregator_on_a_graph_is_refused_when_sharded(sharded):
    _, results = sharded
    outcome = results["robust"]
    assert "the aggregator Median" in outcome and "not sharded yet" in outcome
    assert "--backend dist" in outcome


def test_the_sharded_refusal_names_the_aggregator(sharded):
    _, results = sharded
    assert "median" in results["robust"].lower()


def test_exchange_routes_count_messages_that_carry_no_weight():
    """A node that discards what it receives still received it: ``routes`` is counted."""
    from murmura.algorithms import Exchange, FullParticipation, LocalWork
    from murmura.topology import MixingMatrix

    @dataclass(frozen=True)
    class KeepOwnButListen:
        needs_topology: bool = True

        def plan(self, ctx, participants, topology, sizes):
            n = ctx.num_nodes
            keep = MixingMatrix.from_dense(torch.eye(n))  # W = I: every weight off-diagonal is 0
            return Exchange(keep, routes=topology.mixing_at(ctx.round))

    algorithm = Algorithm(name="listen", local_rule=SGD(0.1),
                          local_work=LocalWork(batch_size=8, steps=1),
                          communication=KeepOwnButListen(), schedule=Every(1),
                          participation=FullParticipation())
    data = federate("digits", num_nodes=6, partition="iid", seed=0)
    sim = Simulation(data, "logreg", algorithm, "ring", evaluation=Evaluation(every=0))
    sim.run(rounds=2)
    assert sim.bytes_sent.tolist() == [2 * 2 * 4 * sim.spec.dim] * 6  # 2 rounds, 2 neighbours


def test_a_placement_rule_chooses_the_malicious_nodes():
    from murmura.robust import Adversary

    def hubs(count, num_nodes, seed, topology):
        return list(range(num_nodes - count, num_nodes))

    assert Adversary("sign_flip", count=2, placement=hubs).place(6, seed=0).tolist() == [
        False, False, False, False, True, True]
    with pytest.raises(ValueError, match="distinct node ids"):
        Adversary("sign_flip", count=2, placement=lambda c, n, s, t: [0, 0]).place(6, seed=0)


def test_a_final_merge_of_a_robust_algorithm_screens_the_attackers():
    from murmura.robust import Adversary

    data = federate("digits", num_nodes=8, partition="iid", seed=0)

    def final(final_merge):
        sim = Simulation(data, "logreg", "dsgd", "random_regular", topology_kwargs={"k": 4},
                         algorithm_kwargs={"aggregator": "median", "local_steps": 2,
                                           "final_merge": final_merge},
                         adversary=Adversary({"name": "gaussian", "std": 10.0}, count=1),
                         evaluation=Evaluation(every=3))
        return sim.run(rounds=3).final

    merged, gossiped = final(True), final(False)
    assert merged["consensus_distance"] == 0.0
    # a plain average would take in the attacker's N(0, 10²) vector: a loss of about 30
    assert merged["test_loss"] < 2 * gossiped["test_loss"] < 10


def test_server_algorithms_refuse_different_initial_models():
    data = federate("digits", num_nodes=4, partition="iid", seed=0)
    for name in ("fedavg", "fedadam", "scaffold"):
        with pytest.raises(ValueError, match="same_init"):
            Simulation(data, "logreg", name, same_init=False)
    exp = Experiment.from_dict({"data": {"dataset": "digits", "nodes": 4},
                                "engine": {"same_init": False}})
    from murmura.config import ConfigError
    with pytest.raises(ConfigError, match="same_init"):
        exp.check()
    Simulation(data, "logreg", "dsgd", "ring", same_init=False)  # gossip may start apart
