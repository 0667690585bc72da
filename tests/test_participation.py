"""Participation models: per-client probabilities, Bernoulli, cyclic and Markov patterns keyed
by (seed, client, round), and FedAvg over them (a round with nobody is skipped)."""

import pytest
import torch

from murmura.algorithms import make_algorithm
from murmura.algorithms.base import RoundContext
from murmura.algorithms.participation import (
    MarkovParticipation,
    client_probabilities,
    make_participation,
)
from murmura.data import federate
from murmura.swarm.engine import Simulation


def ctx(t, n, seed=0):
    return RoundContext(t, 100, seed, n, torch.device("cpu"))


def rounds(model, n, count, seed=0):
    out = torch.zeros(count, n)
    for t in range(count):
        out[t, model.select(ctx(t, n, seed))] = 1.0
    return out


def test_probabilities_given_constant_or_drawn():
    assert client_probabilities(0.3, 4, 0).tolist() == [0.3] * 4
    assert client_probabilities([0.1, 0.2], 2, 0).tolist() == [0.1, 0.2]
    drawn = client_probabilities({"name": "uniform", "low": 0.2, "high": 0.4}, 1000, 1)
    assert 0.2 <= float(drawn.min()) and float(drawn.max()) <= 0.4
    assert torch.equal(drawn, client_probabilities({"name": "uniform", "low": 0.2, "high": 0.4},
                                                   1000, 1))
    beta = client_probabilities({"name": "beta", "a": 2.0, "b": 8.0}, 4000, 0)
    assert abs(float(beta.mean()) - 0.2) < 0.01  # Beta(2, 8) has mean 0.2
    for bad, match in ((0.0, "lie in"), ([0.5], "one per client"), ({"name": "normal"}, "one of"),
                       ({"name": "uniform", "lo": 0.1}, "no parameter")):
        with pytest.raises(ValueError, match=match):
            client_probabilities(bad, 3, 0)


def test_bernoulli_frequencies_follow_each_clients_probability():
    model = make_participation({"name": "bernoulli", "p": [0.1, 0.5, 0.9]})
    freq = rounds(model, 3, 2000).mean(dim=0)
    assert torch.allclose(freq, torch.tensor([0.1, 0.5, 0.9]), atol=0.04)
    assert torch.equal(model.select(ctx(7, 3)), model.select(ctx(7, 3)))


def test_cyclic_is_active_round_cp_consecutive_rounds_of_each_cycle():
    model = make_participation({"name": "cyclic", "p": [0.3, 0.5], "cycle": 10})
    seen = rounds(model, 2, 40)
    for client, active in ((0, 3), (1, 5)):
        column = seen[:, client]
        assert all(int(column[s : s + 10].sum()) == active for s in range(0, 31, 10))
        on = torch.nonzero(column).flatten()
        runs = int(((on[1:] - on[:-1]) > 1).sum()) + 1
        assert runs in (4, 5)  # one block per cycle (a block may straddle two windows)


def test_markov_has_the_stationary_probability_and_is_sticky():
    model = MarkovParticipation(p=[0.2] * 300, to_active=0.05)
    seen = torch.stack([model.state(0, t, 300) for t in range(400)]).float()
    assert abs(float(seen.mean()) - 0.2) < 0.02
    switches = (seen[1:] != seen[:-1]).float().mean()
    assert float(switches) < 0.1  # a Bernoulli(0.2) client would switch 32 % of the time
    fresh = MarkovParticipation(p=[0.2] * 300, to_active=0.05)
    assert torch.equal(fresh.state(0, 250, 300), model.state(0, 250, 300))  # no hidden history
    assert torch.equal(model.state(0, 10, 300), seen[10].bool())  # asked again, out of order


def test_fedavg_over_a_participation_model_skips_empty_rounds():
    data = federate("digits", num_nodes=6, partition="iid", seed=0)
    sim = Simulation(data, "logreg", seed=0, algorithm="fedavg", algorithm_kwargs={
        "local_steps": 2, "participation": {"name": "cyclic", "p": 0.2, "cycle": 10}})
    model = sim.algorithm.participation
    empty = [t for t in range(10) if len(model.select(ctx(t, 6))) == 0]
    assert empty  # six clients active 2 of 10 rounds each leave some rounds empty
    sim.run(rounds=10)
    for t in empty:
        assert sim.history.records[t]["bytes_sent"] == 0
    assert 0 <= sim.history.final["test_accuracy"] <= 1
    with pytest.raises(ValueError, match="cannot both apply"):
        make_algorithm("fedavg", fraction=0.5, participation={"name": "bernoulli"})
    with pytest.raises(ValueError, match="name must be one of"):
        make_algorithm("fedavg", participation={"name": "poisson"})


@pytest.mark.parametrize("name", ["fedprox", "scaffold", "fedavgm", "fedadam"])
def test_the_federated_baselines_take_a_participation_model(name):
    data = federate("digits", num_nodes=8, partition="iid", seed=0)
    sim = Simulation(data, "logreg", seed=0, algorithm=name, algorithm_kwargs={
        "local_steps": 1, "participation": {"name": "bernoulli", "p": 0.3}})
    model = sim.algorithm.participation
    sim.run(rounds=4)
    for t, record in enumerate(sim.history.records):
        came = len(model.select(ctx(t, 8)))
        assert record["bytes_sent"] == came * sim.message_bytes * (2 if name == "scaffold" else 1)
    sim.check_finite()


def test_a_participation_section_in_a_config_reaches_the_algorithm():
    from murmura.config import ConfigError, Experiment

    values = {"rounds": 2, "data": {"dataset": "digits", "nodes": 10},
              "algorithm": {"name": "fedavg", "local_steps": 1},
              "participation": {"name": "markov", "p": [0.2] * 10, "to_active": 0.1}}
    exp = Experiment.model_validate(values).check()
    assert exp.algorithm_params()["participation"] == {"name": "markov", "p": [0.2] * 10,
                                                       "to_active": 0.1}
    with pytest.raises(ConfigError, match="takes no participation model"):
        Experiment.model_validate({**values, "algorithm": {"name": "dsgd"},
                                   "topology": "ring"}).check()
    with pytest.raises(ConfigError, match="set it in one place"):
        Experiment.model_validate({**values, "algorithm": {
            "name": "fedavg", "participation": {"name": "bernoulli"}}}).check()
    with pytest.raises(Exception, match="bernoulli"):
        Experiment.model_validate({**values, "participation": {"name": "poisson"}})
