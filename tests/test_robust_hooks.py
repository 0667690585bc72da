"""The engine's hooks for robustness rules, each against a hand-computed case: aggregators that
read the mixing weights or draw from a key, attacks that send a different message over each
link (dissensus, equivocation), attacks that adapt to the defence (the optimal ALIE / IPM),
and label flipping at the data."""

from dataclasses import dataclass, field, replace

import networkx as nx
import pytest
import torch

from murmura.algorithms import SGD, Algorithm, FullParticipation, Gossip, LocalWork
from murmura.algorithms.rules import Every
from murmura.data import federate
from murmura.robust import Adversary
from murmura.swarm.engine import Simulation
from murmura.swarm.random import key_uniform
from murmura.topology import make_topology


def gossip(aggregator=None, **work):
    return Algorithm(name="probe", local_rule=SGD(0.1),
                     local_work=LocalWork(batch_size=4, steps=work.get("steps", 1)),
                     communication=Gossip(aggregator=aggregator), schedule=Every(1),
                     participation=FullParticipation())


def ring(algorithm, n=5, **kwargs):
    data = kwargs.pop("data", None) or federate("digits", num_nodes=n, partition="iid", seed=0)
    return Simulation(data, "logreg", algorithm, "ring", seed=0, same_init=False, **kwargs)


@dataclass(frozen=True)
class WeightedSum:
    needs_weights: bool = True

    def __call__(self, own, received, mask, weights):
        return (weights.unsqueeze(1) * received * mask.unsqueeze(1)).sum(0)


def test_an_aggregator_with_needs_weights_gets_the_receivers_mixing_weights():
    plain, weighted = ring(gossip()), ring(gossip(WeightedSum()))
    plain.run(rounds=2)
    weighted.run(rounds=2)
    assert torch.allclose(plain.params, weighted.params, atol=1e-6)  # = the linear mix


@dataclass(frozen=True)
class KeyedPick:
    needs_key: bool = True

    def __call__(self, own, received, mask, key):
        return own + key_uniform(key, own.shape)


def test_an_aggregator_with_needs_key_draws_per_receiver_and_round():
    sim, again = ring(gossip(KeyedPick())), ring(gossip(KeyedPick()))
    sim.run(rounds=1)
    again.run(rounds=1)
    assert torch.equal(sim.params, again.params)
    keep = ring(gossip(lambda own, received, mask: own))
    keep.run(rounds=1)
    noise = sim.params - keep.params  # U[0, 1) draws, one per receiver and coordinate
    assert 0 <= float(noise.min()) and float(noise.max()) < 1
    assert not torch.allclose(noise[0], noise[1])


@dataclass(frozen=True)
class TargetPlusOne:
    """Sends each receiver its own message + 1 (a different message over each link)."""

    per_target: bool = True
    seen: list = field(default_factory=list)

    def __call__(self, own, target, honest, weights, byzantine_weight, mask, key):
        return target + 1.0


def test_a_per_target_attack_sends_each_receiver_its_own_message():
    n = 5
    bad = Adversary(TargetPlusOne(), nodes=(0,))
    sim = ring(gossip(), n=n, adversary=bad)
    honest = ring(gossip(), n=n)
    sim.train(None, 0)
    honest.train(None, 0)
    x = sim.params.clone()
    sim.communicate(gossip().communication.plan(sim.context(1), None, sim.topology, None))
    W = sim.topology.mixing_at(0).matrix.to_dense()
    expected = W @ x
    for i in (1, n - 1):  # node 0's ring neighbours get x_i + 1 from it
        expected[i] = expected[i] - W[i, 0] * x[0] + W[i, 0] * (x[i] + 1.0)
    assert torch.allclose(sim.params[1:], expected[1:], atol=1e-5)


@dataclass(frozen=True)
class Dissensus:
    """Cancel the honest pull on the target exactly: x_i − Σ_honest w_ij (x_j − x_i) / w_byz."""

    per_target: bool = True

    def __call__(self, own, target, honest, weights, byzantine_weight, mask, key):
        pull = (weights.unsqueeze(1) * (honest - target) * mask.unsqueeze(1)).sum(0)
        return target - pull / byzantine_weight


def test_a_dissensus_attack_freezes_its_target():
    sim = ring(gossip(), n=6, adversary=Adversary(Dissensus(), nodes=(0,)))
    sim.train(None, 0)
    x = sim.params.clone()
    sim.communicate(gossip().communication.plan(sim.context(1), None, sim.topology, None))
    assert torch.allclose(sim.params[1], x[1], atol=1e-5)  # its neighbours did not move
    assert torch.allclose(sim.params[5], x[5], atol=1e-5)
    assert not torch.allclose(sim.params[3], x[3], atol=1e-5)  # the far side did


@dataclass(frozen=True)
class Adaptive:
    defence: object = None
    f: int = 0

    def bind_defence(self, aggregator, f):
        return replace(self, defence=aggregator, f=f)

    def __call__(self, own, honest, mask, key):
        return own


def test_an_attack_learns_the_defence_and_f():
    from murmura.robust.aggregators import Average, Median

    sim = ring(gossip(Median()), adversary=Adversary(Adaptive(), count=2))
    assert isinstance(sim.adversary.attack.defence, Median) and sim.adversary.attack.f == 2
    sim = ring(gossip(), adversary=Adversary(Adaptive(), count=1))
    assert isinstance(sim.adversary.attack.defence, Average)


@dataclass(frozen=True)
class FlipLabels:
    flips_labels: bool = True

    def __call__(self, own, honest, mask, key):
        return own


def test_label_flipping_trains_the_malicious_nodes_on_flipped_labels():
    data = federate("digits", num_nodes=4, partition="iid", seed=0)
    flipped_y = data.dataset.train_y.clone()
    part = torch.as_tensor(data.parts[2])
    flipped_y[part] = 9 - flipped_y[part]
    flipped = replace(data, dataset=replace(data.dataset, train_y=flipped_y))
    for fused in (True, False):
        attacked = Simulation(data, "logreg", "local_sgd", seed=0, fused=fused,
                              adversary=Adversary(FlipLabels(), nodes=(2,)))
        by_hand = Simulation(flipped, "logreg", "local_sgd", seed=0, fused=fused)
        attacked.run(rounds=2)
        by_hand.run(rounds=2)
        assert torch.allclose(attacked.params, by_hand.params, atol=1e-6)


class Path:
    """0 - 1 - 2 - 3 - 4: the middle node is the bottleneck."""

    def graph_at(self, round):
        return nx.path_graph(5)


def test_attackers_can_sit_at_the_hubs_or_the_bridges():
    star = make_topology("star", 6)
    assert Adversary("sign_flip", count=1, placement="degree").place(
        6, seed=0, topology=star).nonzero().flatten().tolist() == [0]
    assert Adversary("sign_flip", count=1, placement="betweenness").place(
        5, seed=0, topology=Path()).nonzero().flatten().tolist() == [2]
    with pytest.raises(ValueError, match="placement"):
        Adversary("sign_flip", count=1, placement="degree").place(6, seed=0)


@dataclass(frozen=True)
class ScalarScaled:
    """An attack that cannot be vmapped (it reads a value with .item())."""

    vectorized: bool = False

    def __call__(self, own, honest, mask, key):
        return -float(mask.sum().item()) * own


def test_an_unvectorized_attack_runs_once_per_attacker():
    data = federate("digits", num_nodes=6, partition="iid", seed=0)
    sim = Simulation(data, "logreg", "fedavg", seed=0,
                     adversary=Adversary(ScalarScaled(), count=2))
    assert sim.run(rounds=1).final["bytes_sent_total"] > 0


@dataclass(frozen=True)
class SendInf:
    def __call__(self, own, honest, mask, key):
        return torch.full_like(own, float("inf"))


def test_an_attackers_own_nonfinite_model_does_not_stop_the_run():
    # each node keeps its own message: the attacker's row becomes its own inf
    sim = ring(gossip(lambda own, received, mask: own), n=7,
               adversary=Adversary(SendInf(), nodes=(0,)))
    final = sim.run(rounds=2).final
    assert not torch.isfinite(sim.params[0]).all()  # the attacker took its own inf
    assert torch.isfinite(sim.params[1:]).all()
    assert 0 <= final["honest_node_accuracy_min"] <= 1


def test_thin_neighbourhoods_are_warned_and_reported():
    from murmura.robust.aggregators import TrimmedMean

    data = federate("digits", num_nodes=8, partition="iid", seed=0)
    with pytest.warns(UserWarning, match="fewer neighbours than TrimmedMean"):
        sim = Simulation(data, "logreg", gossip(TrimmedMean(f=1)), "ring", seed=0,
                         adversary=Adversary("sign_flip", nodes=(0,)))
    # a ring gives every node 2 neighbours; tolerating f = 1 needs 2f + 1 = 3
    assert len(sim.robustness_warnings) == 1 and "7 honest node(s)" in sim.robustness_warnings[0]
    assert "(2 < 3)" in sim.robustness_warnings[0]
    assert sim.summary()["robustness_warnings"] == sim.robustness_warnings
    # two attackers on a complete graph: every honest node sees 2 > f = 1
    with pytest.warns(UserWarning, match="more malicious neighbours"):
        sim = Simulation(data, "logreg", gossip(TrimmedMean(f=1)), "complete", seed=0,
                         adversary=Adversary("sign_flip", nodes=(0, 1)))
    assert sim.robustness_warnings == [
        "6 honest node(s) have more malicious neighbours than TrimmedMean's f = 1: "
        "2 (2), 3 (2), 4 (2), 5 (2), 6 (2)"]
