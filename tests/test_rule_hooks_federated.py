"""The contract's hooks for the federated seed methods, each against a hand-computed case: a
per-node step before local training (FedAMD's roles), a gradient that reads node state (its
variance-reduced steps), one key per round, the node's label counts in the task's batch
(FedGELA, KAFAL), a server rule that reads every upload and broadcasts one row per node
(OCFL's clusters), and each node's own held-out test split (personal accuracy)."""

from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from murmura.algorithms import SGD, Algorithm, FullParticipation, LocalWork
from murmura.algorithms.plans import NodeState, ServerStep
from murmura.algorithms.rules import Every
from murmura.data import federate
from murmura.swarm.engine import Simulation
from murmura.swarm.random import key_uniform
from murmura.tasks import Classification


@dataclass(frozen=True)
class NoTalk:
    needs_topology: bool = False

    def plan(self, ctx, participants, topology, sizes):
        return None


def simulation(local_rule, communication=None, steps=1, n=4, model="logreg", **extra):
    data = extra.pop("data", None) or federate("digits", num_nodes=n, partition="iid", seed=0)
    parts = {"participation": FullParticipation(), **extra.pop("algorithm", {})}
    algo = Algorithm(name="probe", local_rule=local_rule,
                     local_work=LocalWork(batch_size=4, steps=steps),
                     communication=communication or NoTalk(), schedule=Every(1), **parts)
    return Simulation(data, model=model, algorithm=algo, seed=0, same_init=False, **extra)


@dataclass(frozen=True)
class Still:
    """Takes no step (the probes look at what the other hooks do)."""

    state_names: tuple = ()

    def gradient(self, loss):
        return lambda params, x, y: {k: torch.zeros_like(v) for k, v in params.items()}

    def update(self, param, grad, state, active):
        pass


@dataclass(frozen=True)
class Doubling:
    """Before local training: ``start <- 2 x`` and ``node <- node id`` (in every coordinate)."""

    node_state: dict = field(default_factory=lambda: {"start": NodeState(),
                                                      "who": NodeState()})

    def __call__(self, params, state, node, key):
        return {"start": 2 * params, "who": torch.zeros_like(params) + node}


def test_a_before_local_step_runs_per_node_before_training():
    sim = simulation(Still(), algorithm={"before_local": Doubling()})
    before = sim.params.clone()
    sim.run(rounds=1)
    assert torch.equal(sim.node_state["start"], 2 * before)
    assert torch.equal(sim.node_state["who"][:, 0], torch.arange(4.0))


@dataclass(frozen=True)
class StepTowardsStart:
    """``x <- x - start`` each step, where the gradient reads the round's start model."""

    lr: float = 1.0
    state_names: tuple = ()
    node_state: dict = field(default_factory=lambda: {"start": NodeState("params", "round")})
    gradient_state: tuple = ("start",)

    def gradient(self, loss):
        def g(params, x, y, state):
            return {k: state["start"][k] for k in params}
        return g

    def update(self, param, grad, state, active):
        param.sub_(self.lr * grad)


def test_a_gradient_reads_the_node_state_it_names():
    sim = simulation(StepTowardsStart(), steps=2)
    x0 = sim.params.clone()
    sim.run(rounds=1)
    assert torch.allclose(sim.params, -x0)  # x0 - x0 - x0


@dataclass(frozen=True)
class KeyedDrift:
    needs_key: object = True
    state_names: tuple = ()

    def gradient(self, loss):
        def g(params, x, y, key):
            return {k: key_uniform(key, v.shape, i) for i, (k, v) in enumerate(params.items())}
        return g

    def update(self, param, grad, state, active):
        param.sub_(grad)


@pytest.mark.parametrize("per_round", [True, False])
def test_a_round_key_is_the_same_at_every_step(per_round):
    moves = []
    for steps in (1, 2):
        sim = simulation(KeyedDrift("round" if per_round else True), steps=steps)
        x0 = sim.params.clone()
        sim.run(rounds=1)
        moves.append(x0 - sim.params)
    assert torch.allclose(moves[1], 2 * moves[0]) == per_round


@dataclass(frozen=True)
class CountsLoss(Classification):
    """loss = <x, label_counts>: its gradient is the node's label counts."""

    needs_label_counts: bool = True

    def loss(self, forward, params, batch):
        return (forward(params, batch["x"])[0] * batch["label_counts"]).sum(), {}


def test_the_task_gets_each_nodes_label_counts():
    data = federate("digits", num_nodes=3, partition="dirichlet", alpha=0.3, seed=1)
    counts = torch.stack([torch.bincount(data.dataset.train_y[torch.as_tensor(p)],
                                         minlength=10).float() for p in data.parts])
    assert torch.equal(data.label_counts(), counts)
    sim = simulation(SGD(1.0), data=data, model="vector", model_kwargs={"dim": 10},
                     task=CountsLoss())
    x0 = sim.params.clone()
    sim.run(rounds=1)
    assert torch.allclose(x0 - sim.params, counts)


@dataclass(frozen=True)
class EchoServer:
    """Sends each uploader its own upload back; the others keep theirs (a row per node)."""

    needs_uploads: bool = True
    seen: list = field(default_factory=list)

    def init(self, params):
        return {"params": params.clone()}

    def update(self, state, aggregate, ctx):
        self.seen.append((aggregate["clients"].tolist(), aggregate["weights"].tolist()))
        rows = torch.zeros(ctx.num_nodes, aggregate["params"].shape[1])
        rows[aggregate["clients"]] = 10 * aggregate["params"]
        return {"params": rows}, {"params": rows[0]}


@dataclass(frozen=True)
class Upload:
    needs_topology: bool = False

    def plan(self, ctx, participants, topology, sizes):
        return ServerStep(torch.tensor([1.0, 0.0, 2.0, 1.0]))


def test_a_server_rule_reads_every_upload_and_sends_each_node_its_row():
    server = EchoServer()
    sim = simulation(Still(), Upload(), algorithm={"server": server})
    x0 = sim.params.clone()
    sim.step(1)
    assert server.seen == [([0, 2, 3], [1.0, 2.0, 1.0])]
    assert torch.equal(sim.params[[0, 2, 3]], 10 * x0[[0, 2, 3]])
    assert torch.equal(sim.params[1], torch.zeros_like(x0[1]))
    d = sim.spec.dim
    assert sim.server_bytes_sent == 3 * 4 * d  # each receiver downloads its own row
    assert sim.bytes_sent.tolist() == [4 * d, 0, 4 * d, 4 * d]


def test_personal_accuracy_scores_each_node_on_its_own_held_out_samples():
    data = federate("digits", num_nodes=3, partition="dirichlet", alpha=0.3, seed=0,
                    local_test_fraction=0.3)
    for part, test in zip(data.parts, data.test_parts):
        assert not set(part.tolist()) & set(test.tolist())
    sim = simulation(SGD(0.1), data=data, steps=3)
    record = sim.run(rounds=2).records[-1]
    own = []
    for i, test in enumerate(data.test_parts):
        idx = torch.as_tensor(test)
        out = sim._forward(sim.spec.views(sim.params[i]), data.dataset.train_x[idx])
        own.append(float((out.argmax(1) == data.dataset.train_y[idx]).float().mean()))
    assert record["personal_accuracy_mean"] == pytest.approx(sum(own) / 3, abs=1e-6)
    assert record["personal_accuracy_min"] == pytest.approx(min(own), abs=1e-6)


def test_bad_local_test_fractions_are_refused():
    with pytest.raises(ValueError, match="local_test_fraction"):
        federate("digits", num_nodes=3, local_test_fraction=1.5)


@dataclass(frozen=True)
class EasiestFirst:
    """Reads only the node's lowest-loss sample at every step (the pool of size 1)."""

    scoring: str = "global"

    def positions(self, losses, size, first, total, key, *, steps, batch):
        return torch.argsort(losses)[:1].expand(steps, batch)


def test_a_data_order_chooses_the_samples_each_step_reads():
    data = federate("digits", num_nodes=3, partition="iid", seed=0)
    work = dict(batch_size=4, steps=2)
    sim = Simulation(data, "logreg", Algorithm(
        name="probe", local_rule=SGD(0.1), local_work=LocalWork(**work, order=EasiestFirst()),
        communication=NoTalk(), schedule=Every(1), participation=FullParticipation()),
        seed=0, same_init=False)
    x0 = sim.params.clone()
    losses = sim._sample_losses(x0, torch.arange(3))
    easiest = [int(data.index_table[i, int(losses[i].argmin())]) for i in range(3)]
    plain = Simulation(data, "logreg", Algorithm(
        name="probe", local_rule=SGD(0.1), local_work=LocalWork(batch_size=1, steps=1),
        communication=NoTalk(), schedule=Every(1), participation=FullParticipation()),
        seed=0, same_init=False)
    sim.run(rounds=1)
    # by hand: two SGD steps on four copies of the easiest sample = two steps on it alone
    x = x0.clone()
    for _ in range(2):
        for i in range(3):
            idx = torch.tensor([easiest[i]])
            g = torch.func.grad(plain._loss)(plain.spec.views(x[i]), data.dataset.train_x[idx],
                                             data.dataset.train_y[idx])
            x[i] -= 0.1 * torch.cat([g[k].reshape(-1) for k in plain.spec.names])
    assert torch.allclose(sim.params, x, atol=1e-6)


@dataclass(frozen=True)
class HardestClients:
    needs_losses: bool = True
    seen: list = field(default_factory=list)

    def select(self, ctx, losses):
        self.seen.append(losses.clone())
        return torch.sort(torch.topk(losses, 2).indices).values


def test_a_participation_rule_can_rank_clients_by_their_loss():
    data = federate("digits", num_nodes=4, partition="dirichlet", alpha=0.3, seed=0)
    chooser = HardestClients()
    sim = simulation(SGD(0.1), data=data, algorithm={"participation": chooser})
    x0 = sim.params.clone()
    sim.step(1)
    losses = sim._sample_losses(x0, torch.arange(4))
    by_hand = torch.where(torch.isfinite(losses), losses, 0).sum(1) / data.sizes
    assert torch.allclose(chooser.seen[0], by_hand)
    moved = (sim.params != x0).any(dim=1)
    assert moved.tolist() == [bool(i in torch.topk(by_hand, 2).indices) for i in range(4)]


@dataclass(frozen=True)
class PullTowardsPool(Classification):
    """loss = -<x, mean of the pool batch>: a step of lr 1 adds the batch mean to x."""

    extra_batches: dict = field(default_factory=lambda: {"unlabelled": 3})

    def loss(self, forward, params, batch):
        point = forward(params, batch["x"])[0]
        return -(point * batch["unlabelled"]["x"].mean(0)).sum(), {}

    def check_output(self, out, dataset, batch):
        pass  # the point, not class scores


def test_a_task_reads_batches_of_another_pool_of_the_nodes_samples():
    base = federate("digits", num_nodes=2, partition="iid", seed=0)
    data = base.with_pool("unlabelled", [np.array([1000]), np.array([1001])])
    sim = simulation(SGD(1.0), data=data, model="vector", model_kwargs={"dim": 64},
                     task=PullTowardsPool())
    x0 = sim.params.clone()
    sim.run(rounds=1)
    assert torch.allclose(sim.params - x0, data.dataset.train_x[[1000, 1001]])
    with pytest.raises(ValueError, match="with_pool"):
        simulation(SGD(1.0), data=base, model="vector", model_kwargs={"dim": 64},
                   task=PullTowardsPool())
