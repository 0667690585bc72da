"""The contract's hooks for the seed methods: keyed combiners, joint and unvectorized
aggregators (with the receiver's own samples), rules bound to the model's layout, hosted server
steps and control traffic, each against a hand-computed case."""

from dataclasses import dataclass, field

import torch

from murmura.algorithms import SGD, Algorithm, Exchange, FullParticipation, LocalWork
from murmura.algorithms.base import ModelLayout
from murmura.algorithms.plans import Average, Control
from murmura.algorithms.rules import Every, Gossip
from murmura.data import federate
from murmura.swarm.engine import Simulation
from murmura.swarm.random import key_uniform
from murmura.topology import make_topology


@dataclass(frozen=True)
class Fixed:
    """Communicate the plan given (built from the simulation's own tensors in the test)."""

    plans: list = field(default_factory=list)
    needs_topology: bool = True
    node_state: dict = field(default_factory=dict)

    def plan(self, ctx, participants, topology, sizes):
        return self.plans[0](topology) if self.plans else None


def simulation(communication, n=4, same_init=False, topology="ring"):
    data = federate("digits", num_nodes=n, partition="iid", seed=0)
    algo = Algorithm(name="probe", local_rule=SGD(0.01),
                     local_work=LocalWork(batch_size=4, steps=1), communication=communication,
                     schedule=Every(1), participation=FullParticipation())
    return Simulation(data, model="logreg", algorithm=algo,
                      topology=topology if communication.needs_topology else None, seed=0,
                      same_init=same_init)


@dataclass(frozen=True)
class KeyedNoise:
    node_state: dict = field(default_factory=dict)
    needs_key: bool = True

    def combine(self, params, state, received, key):
        return {"params": key_uniform(key, params.shape)}


def test_a_keyed_combiner_gets_a_key_per_node_and_round():
    def plan(topology):
        return Exchange(topology.mixing_at(0), combiner=KeyedNoise())

    sim = simulation(Fixed([plan]))
    sim.run(rounds=1)
    rows = sim.params.clone()
    assert len({tuple(r.tolist()[:5]) for r in rows}) == 4  # every node its own draw
    again = simulation(Fixed([plan]))
    again.run(rounds=1)
    assert torch.equal(rows, again.params)  # the same keys give the same draws


@dataclass(frozen=True)
class ScoreWeighted:
    """Joint: average of the neighbourhood's models weighted by softmax(-score)."""

    joint: bool = True

    def __call__(self, own, received, mask):
        logits = torch.where(mask > 0, -received["score"][:, 0], -torch.inf)
        w = torch.softmax(logits, dim=0)
        return {"params": w @ received["params"], "score": own["score"]}


@dataclass(frozen=True)
class SendScore:
    node_state: dict = field(default_factory=dict)

    def encode(self, params, state, key):
        return {"params": params, "score": params[:1] * 0 + params.sum()}, {}

    def nbytes(self, dim):
        return 4 * (dim + 1)


def test_a_joint_aggregator_reads_every_payload_name():
    def plan(topology):
        return Exchange(topology.mixing_at(0), encoder=SendScore(), aggregator=ScoreWeighted())

    sim = simulation(Fixed([plan]))
    sim.train(None, 0)
    x = sim.params.clone()
    sim.communicate(plan(sim.topology))
    score = x.sum(dim=1)
    for i in range(4):
        hood = [i, (i - 1) % 4, (i + 1) % 4]
        w = torch.softmax(-score[hood], dim=0)
        assert torch.allclose(sim.params[i], w @ x[hood], atol=1e-5)
    assert sim.bytes_sent[0] == 2 * 4 * (sim.spec.dim + 1)


@dataclass(frozen=True)
class OwnDataMean:
    """Not vectorized: returns the mean of the receiver's own sample features, padded."""

    vectorized: bool = False
    needs_data: int = 7
    calls: list = field(default_factory=list)

    def __call__(self, own, received, mask, batch):
        self.calls.append((int(mask.sum()), tuple(batch["x"].shape)))
        out = torch.zeros_like(own)
        out[: batch["x"].shape[1]] = batch["x"].mean(dim=0)
        return out


def test_an_unvectorized_aggregator_runs_per_receiver_on_its_own_samples():
    rule = OwnDataMean()

    def plan(topology):
        return Exchange(topology.mixing_at(0), aggregator=rule)

    sim = simulation(Fixed([plan]))
    sim.communicate(plan(sim.topology))
    assert rule.calls == [(3, (7, 64))] * 4
    table, sizes = sim.data.index_table, sim.data.sizes
    for i in range(4):  # the features seen are node i's own
        own = sim.data.dataset.train_x[table[i, : sizes[i]]]
        seen = sim.params[i, :64]
        assert own.min() <= seen.min() and seen.max() <= own.max()


@dataclass(frozen=True)
class Layered:
    """Records the layout it was bound to."""

    names: tuple = ()
    needs_topology: bool = True

    def bind(self, layout: ModelLayout):
        return Layered(layout.spec.names)

    def plan(self, ctx, participants, topology, sizes):
        return None


def test_rules_are_bound_to_the_model_layout():
    sim = simulation(Layered())
    assert sim.algorithm.communication.names == ("1.weight", "1.bias")
    bound = simulation(Gossip(aggregator=Layered()))  # a field of a rule is bound too
    assert bound.algorithm.communication.aggregator.names == ("1.weight", "1.bias")


def test_hosted_average_counts_bytes_at_the_hosts():
    sim = simulation(Fixed(needs_topology=False), n=6, same_init=True)
    size = sim.message_bytes
    weights = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0]) / 3
    receivers = torch.tensor([False, False, False, True, True, True])
    hosts = torch.tensor([3, 4])  # two aggregators, both receivers of the next round
    sim.communicate(Average(weights, receivers=receivers, hosts=hosts))
    # uploaders 0-2 send to both hosts; hosts 3, 4 send to the other receivers (not themselves)
    assert sim.bytes_sent.tolist() == [2 * size] * 3 + [2 * size, 2 * size, 0.0]
    # hosts get 3 uploads each and the other host's result; node 5 gets it from both hosts
    assert sim.bytes_received.tolist() == [0.0] * 3 + [4 * size, 4 * size, 2 * size]
    assert sim.server_bytes_sent == 0.0
    assert torch.equal(sim.params[5], sim.params[0])


def test_control_traffic_is_added_as_given():
    sim = simulation(Fixed(needs_topology=False), n=4, same_init=True)
    sim.communicate(Control(torch.tensor([64.0, 0, 0, 128]), torch.tensor([0.0, 64, 64, 0])))
    assert sim.bytes_sent.tolist() == [64.0, 0, 0, 128]
    assert sim.bytes_received.tolist() == [0.0, 64, 64, 0]


def test_gossip_steps_and_final_steps():
    from murmura.algorithms.base import RoundContext

    topology = make_topology("ring", 5)
    ctx = RoundContext(0, 10, 0, 5, torch.device("cpu"))
    assert len(Gossip(steps=3).plan(ctx, None, topology, None)) == 3
    last = RoundContext(9, 10, 0, 5, torch.device("cpu"))
    assert len(Gossip(final_steps=4).plan(last, None, topology, None)) == 4
    assert not isinstance(Gossip(final_steps=4).plan(ctx, None, topology, None), list)
    sim = simulation(Gossip(steps=2), n=5, topology="ring")
    sim.run(rounds=1)
    assert float(sim.bytes_sent[0]) == 2 * 2 * sim.message_bytes  # two neighbours, two steps

