"""Tasks: the per-node loss as a rule, and the next_token task on Python's own manual."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from murmura.config import ConfigError, Experiment
from murmura.data import Dataset, federate, load_dataset
from murmura.data.text import VOCAB, decode, encode
from murmura.swarm import Evaluation, Simulation
from murmura.tasks import TASKS, Classification, NextToken, make_task


def test_next_token_loss_and_metrics_by_hand():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]]])  # batch 1, 2 positions, 3 symbols
    batch = {"x": torch.zeros(1, 2, dtype=torch.long), "y": torch.tensor([[0, 2]])}
    task = NextToken()
    loss, aux = task.loss(lambda p, x: logits, {}, batch)
    first = -math.log(math.exp(2) / (math.exp(2) + 2))
    second = -math.log(1 / (math.exp(3) + 2))
    assert aux == {}
    assert math.isclose(float(loss), (first + second) / 2, rel_tol=1e-6)
    sums = task.metrics(lambda p, x: logits, {}, batch)
    assert float(sums["correct"]) == 1.0 and float(sums["count"]) == 2.0
    assert math.isclose(float(sums["loss"]), first + second, rel_tol=1e-6)


def test_weighted_next_token_loss_ignores_padding():
    logits = torch.randn(3, 4, 5)
    y = torch.randint(0, 5, (3, 4))
    task = NextToken()
    full, _ = task.loss(lambda p, x: logits[:2], {}, {"x": None, "y": y[:2]})
    padded, _ = task.loss(lambda p, x: logits, {}, {"x": None, "y": y,
                                                     "weight": torch.tensor([1.0, 1.0, 0.0])})
    assert torch.allclose(full, padded)


def test_classification_task_is_plain_cross_entropy():
    out = torch.randn(6, 4)
    y = torch.randint(0, 4, (6,))
    loss, _ = Classification().loss(lambda p, x: out, {}, {"x": None, "y": y})
    assert torch.allclose(loss, F.cross_entropy(out, y))


def test_python_docs_windows_are_shifted_by_one_and_split_by_topic():
    ds = load_dataset("python_docs", num_nodes=5, context=12)
    assert ds.task == "next_token" and ds.num_classes == VOCAB
    assert torch.equal(ds.train_x[:, 1:], ds.train_y[:, :-1])
    assert sum(len(p) for p in ds.natural_partition) == len(ds.train_x)
    assert all(len(p) > 0 for p in ds.natural_partition)
    assert decode(encode("for x in range(3):\n\tpass")) == "for x in range(3):\n pass"
    with pytest.raises(ValueError, match="topics"):
        load_dataset("python_docs", num_nodes=500)


def test_sequence_targets_are_validated():
    x = torch.zeros(4, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\[N, positions\]"):
        Dataset("bad", x, torch.zeros(4, dtype=torch.long), x, torch.zeros(4, dtype=torch.long),
                num_classes=2, task="next_token")
    with pytest.raises(ValueError, match="float tensor"):
        Dataset("bad", x, torch.zeros(4, dtype=torch.long), x, torch.zeros(4, dtype=torch.long),
                num_classes=2)


@pytest.mark.parametrize("algorithm,topology", [("fedavg", None), ("dsgd", "ring")])
def test_a_char_model_learns_by_fedavg_and_dsgd(algorithm, topology):
    data = federate("python_docs", num_nodes=8, partition="natural", seed=0,
                    dataset_params={"context": 16})
    sim = Simulation(data, "char_cnn", algorithm, topology,
                     model_kwargs={"embed": 16, "channels": 32, "layers": 1},
                     algorithm_kwargs={"lr": 0.5, "local_steps": 8, "batch_size": 16},
                     evaluation=Evaluation(every=1, node_samples=100))
    assert sim._fused is None and isinstance(sim.task, NextToken)
    history = sim.run(rounds=4)
    losses = history.column("test_loss")
    assert losses[0] < math.log(VOCAB)  # better than uniform after one round
    assert losses[-1] < losses[0]
    assert 0.1 < history.final["test_accuracy"] < 1.0
    assert 0.0 < history.final["node_accuracy_mean"] <= 1.0


def test_a_model_with_the_wrong_output_for_its_task_is_a_clear_error():
    data = federate("python_docs", num_nodes=4, partition="natural", seed=0)
    with pytest.raises(ValueError, match="next_token model must map"):
        Simulation(data, torch.nn.Sequential(torch.nn.Embedding(VOCAB, 4), torch.nn.Flatten(),
                                             torch.nn.Linear(4 * 32, VOCAB)), "fedavg")


def test_the_task_is_chosen_by_name_and_checked_in_configs(tmp_path):
    assert isinstance(make_task(None, load_dataset("digits")), Classification)
    assert "next_token" in TASKS
    with pytest.raises(ConfigError, match="next_token"):
        Experiment.from_dict({"data": {"dataset": "digits", "nodes": 4}, "task": "nxt_token"})


def test_a_config_sets_a_tasks_parameters():
    from murmura.runner import build_simulation

    exp = Experiment.from_dict({"task": {"name": "balanced_softmax"}})
    assert exp.task.name == "balanced_softmax" and exp.task.params == {}
    assert Experiment.from_dict({"task": "balanced_softmax"}) == exp  # the short form
    exp = Experiment.from_dict({"task": {"name": "fedgela", "adapt": False},
                                "data": {"dataset": "digits", "nodes": 2},
                                "model": {"name": "etf_mlp"}, "algorithm": "fedgela"})
    assert Experiment.from_toml_text(exp.to_toml()) == exp
    assert build_simulation(exp.check()).task.adapt is False
    with pytest.raises(ConfigError, match="has no parameter 'amplitud'"):
        Experiment.from_dict({"task": {"name": "rastrigin", "amplitud": 5.0}})
    with pytest.raises(ConfigError, match="not a valid"):
        Experiment.from_dict({"task": {"name": "rastrigin", "amplitude": "big"}})


def test_label_skew_partitions_of_sequences_use_the_last_target():
    ds = load_dataset("python_docs", num_nodes=4, context=8)
    data = federate(ds, 4, "dirichlet", alpha=0.5, seed=0)
    assert int(data.sizes.sum()) == len(ds.train_x)
    assert np.array_equal(ds.partition_labels.numpy(), ds.train_y[:, -1].numpy())


def test_a_task_that_draws_noise_gets_keys_independent_of_blocking():
    from dataclasses import dataclass

    from murmura.swarm.random import key_normal

    @dataclass(frozen=True)
    class NoisyInputs(Classification):
        """Cross-entropy on inputs perturbed by N(0, 0.1²) noise drawn from the node's key."""

        needs_key: bool = True

        def loss(self, forward, params, batch):
            noisy = batch["x"] + 0.1 * key_normal(batch["key"], batch["x"].shape)
            return super().loss(forward, params, {**batch, "x": noisy})

    def run(chunk_size, task):
        data = federate("digits", num_nodes=6, partition="iid", seed=0)
        sim = Simulation(data, "logreg", "dsgd", "ring", task=task, chunk_size=chunk_size,
                         algorithm_kwargs={"local_steps": 3}, evaluation=Evaluation(every=0))
        sim.run(rounds=2)
        return sim.params

    noisy = run(6, NoisyInputs())
    assert torch.allclose(noisy, run(2, NoisyInputs()), atol=1e-6)
    assert not torch.allclose(noisy, run(6, Classification()), atol=1e-4)  # the noise is used


def test_char_cnn_on_float_features_says_what_it_needs():
    data = federate("digits", num_nodes=4, partition="iid", seed=0)
    with pytest.raises(ValueError, match="integer symbols"):
        Simulation(data, "char_cnn", "fedavg")
    with pytest.raises(ValueError, match="one label per sample"):
        Simulation(data, "mlp", "fedavg", task="next_token")


def test_a_task_reads_the_node_state_it_declares():
    """A proximal loss written as a task: ``CE + mu/2 ||x - x_start||²`` with ``x_start`` the
    model the round started from, equal to FedProx's local rule."""
    from dataclasses import dataclass, field

    from murmura.algorithms import NodeState

    @dataclass(frozen=True)
    class ProximalLoss(Classification):
        mu: float = 0.5
        state_names: tuple = ("anchor",)
        node_state: dict = field(default_factory=lambda: {"anchor": NodeState("params", "round")})

        def loss(self, forward, params, batch):
            plain, aux = super().loss(forward, params, batch)
            start = batch["state"]["anchor"]
            pull = sum(((params[k] - start[k]) ** 2).sum() for k in params)
            return plain + 0.5 * self.mu * pull, aux

    data = federate("digits", num_nodes=4, partition="iid", seed=0)
    kwargs = dict(algorithm_kwargs={"local_steps": 3, "lr": 0.1}, evaluation=Evaluation(every=0))
    as_task = Simulation(data, "logreg", "fedavg", task=ProximalLoss(), **kwargs)
    as_rule = Simulation(data, "logreg", "fedprox", **{**kwargs, "algorithm_kwargs": {
        "local_steps": 3, "lr": 0.1, "mu": 0.5}})
    as_task.run(rounds=2)
    as_rule.run(rounds=2)
    assert torch.allclose(as_task.params, as_rule.params, atol=1e-6)
    plain = Simulation(data, "logreg", "fedavg", **kwargs)
    plain.run(rounds=2)
    assert not torch.allclose(as_task.params, plain.params, atol=1e-4)
