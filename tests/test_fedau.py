"""FedAU: the participation intervals and the 1/N-normalized, interval-weighted server step,
against hand-computed cases."""

from dataclasses import dataclass

import pytest
import torch

from murmura.algorithms import make_algorithm
from murmura.algorithms.fedau import ParticipationIntervals
from murmura.data import federate
from murmura.swarm.engine import Simulation


@dataclass(frozen=True)
class Scripted:
    """Round t's participants from a fixed list (p for known_prob)."""

    schedule: tuple
    p: tuple = (0.5, 0.25, 1.0)

    def select(self, ctx):
        return torch.tensor(self.schedule[ctx.round % len(self.schedule)], dtype=torch.int64)


def test_intervals_by_hand():
    # client 0 every other round, client 1 at rounds 1 and 5, client 2 never
    schedule = ((0,), (1,), (0,), (), (0,), (1,))
    track = ParticipationIntervals(Scripted(schedule))
    assert track.weights(0, 0, 3).tolist() == [1.0, 1.0, 1.0]  # nothing recorded yet
    # after rounds 0..5: client 0 intervals 1, 2, 2 -> 5/3; client 1: 2, 4 -> 3; client 2: none
    w = track.weights(0, 6, 3)
    assert torch.allclose(w, torch.tensor([5 / 3, 3.0, 1.0], dtype=torch.float64))
    fresh = ParticipationIntervals(Scripted(schedule))
    assert torch.equal(fresh.weights(0, 6, 3), w)  # the cache changes nothing
    assert torch.equal(track.weights(0, 3, 3), fresh.weights(0, 3, 3))  # nor going back
    cut = ParticipationIntervals(Scripted(schedule), cutoff=2)
    # client 2 records the interval 2 every second round: 3 of them by round 6 -> mean 2
    assert float(cut.weights(0, 6, 3)[2]) == 2.0


def test_the_server_step_is_x_plus_eta_over_n_sum_of_weighted_deltas():
    data = federate("digits", num_nodes=3, partition="iid", seed=0)
    schedule = ((0, 1), (0,), (0, 1, 2))
    algo = make_algorithm("fedau", lr=0.1, local_steps=2, batch_size=8, server_lr=0.7)
    from murmura.algorithms.fedau import FedAUAggregation, FedAUServer

    aggregation = FedAUAggregation(ParticipationIntervals(Scripted(schedule)))
    algo = type(algo)(**{**algo.__dict__, "participation": aggregation.intervals.participation,
                         "communication": aggregation,
                         "server": FedAUServer(aggregation, 0.7)})
    sim = Simulation(data, "logreg", algo, seed=0)
    sim.run(rounds=3)
    x = sim.server_state["params"].clone()
    # after rounds 0-2: client 0 intervals 1, 1, 1; client 1: 1, 2; client 2: 3
    omega = aggregation.intervals.weights(0, 3, 3)
    assert omega.tolist() == [1.0, 1.5, 3.0]
    came = torch.tensor([0, 1])  # round 3 = schedule[0]
    sim.round = 3
    sim.train(came, 3)
    deltas = (sim.params - x)[came]
    sim.communicate(aggregation.plan(sim.context(4), came, None, data.sizes))
    expected = x + 0.7 / 3 * (omega[came].to(x.dtype) @ deltas)
    assert torch.allclose(sim.server_state["params"], expected, atol=1e-6)


def test_known_prob_weighs_by_the_true_inverse_probability():
    algo = make_algorithm("fedau", participation={"name": "bernoulli", "p": [0.5, 0.25]},
                          known_prob=True)
    from murmura.algorithms.base import RoundContext

    ctx = RoundContext(0, 10, 0, 2, torch.device("cpu"))
    assert algo.communication.omega(ctx).tolist() == [2.0, 4.0]


def test_fedau_runs_and_refuses_bad_values():
    data = federate("digits", num_nodes=10, partition="dirichlet", alpha=0.5, seed=0)
    sim = Simulation(data, "logreg", "fedau", seed=0,
                     algorithm_kwargs={"participation": {"name": "markov", "p": 0.3}})
    sim.run(rounds=5)
    assert 0 <= sim.history.final["test_accuracy"] <= 1
    with pytest.raises(ValueError, match="cutoff"):
        make_algorithm("fedau", cutoff=0)
    with pytest.raises(ValueError, match="server_lr"):
        make_algorithm("fedau", server_lr=-1)
