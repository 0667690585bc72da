"""The vectorized engine against plain per-node PyTorch, and its invariants."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from murmura.algorithms import ALGORITHMS, make_algorithm
from murmura.data import federate
from murmura.swarm import Evaluation, ParamSpec, Simulation

NO_EVAL = Evaluation(every=0)


def digits(nodes=8, partition="dirichlet", seed=0, **kw):
    if partition == "dirichlet":
        kw.setdefault("alpha", 0.5)
    return federate("digits", num_nodes=nodes, partition=partition, seed=seed, **kw)


def loop_reference(sim: Simulation, rounds_params, lr, momentum, weight_decay, steps_of):
    """Train each node alone with torch.optim.SGD on the batches the sampler gives it."""
    data = sim.data.dataset
    rows = []
    for node in range(sim.num_nodes):
        model = copy.deepcopy(sim.model)
        with torch.no_grad():
            for name, view in sim.spec.views(rounds_params[node]).items():
                model.get_parameter(name).copy_(view)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                              weight_decay=weight_decay)
        ids = torch.tensor([node])
        for step in range(steps_of(node)):
            batch = sim.sampler.batch(ids, 0, step)
            if batch.active is not None and not bool(batch.active[0]):
                break
            index = batch.index[0]
            if batch.weight is not None:
                index = index[batch.weight[0] > 0]
            opt.zero_grad()
            F.cross_entropy(model(data.train_x[index]), data.train_y[index]).backward()
            opt.step()
        rows.append(ParamSpec.from_module(model).flatten(model))
    return torch.stack(rows)


@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.9, 5e-4)])
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_vmapped_local_epoch_equals_per_node_loop(momentum, weight_decay, chunk_size):
    data = digits(nodes=6)  # unequal partitions: masked steps and partial batches
    lr = 0.1
    sim = Simulation(data, "mlp", "local_sgd", model_kwargs={"hidden": [16]},
                     algorithm_kwargs=dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                           local_epochs=1.0, batch_size=16),
                     evaluation=NO_EVAL, same_init=False, chunk_size=chunk_size)
    start = sim.params.clone()
    sim.train(None, 0)
    sizes = data.sizes
    expected = loop_reference(sim, start, lr, momentum, weight_decay,
                              lambda i: -(-int(sizes[i]) // 16))
    assert not torch.equal(sim.params, start)
    torch.testing.assert_close(sim.params, expected, atol=1e-5, rtol=1e-5)


def final_params_by_block_size(chunks, rounds, *args, **kwargs):
    """The final state of the same simulation run with each block size."""
    finals = []
    for chunk in chunks:
        sim = Simulation(*args, **kwargs, evaluation=NO_EVAL, chunk_size=chunk)
        sim.run(rounds)
        finals.append(sim.params)
    return finals


def test_results_do_not_depend_on_chunking():
    finals = final_params_by_block_size(
        (1, 5, None), 3, digits(nodes=10), "logreg", "dsgd", "ring",
        algorithm_kwargs=dict(lr=0.1, local_steps=3, batch_size=8))
    torch.testing.assert_close(finals[0], finals[1], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(finals[0], finals[2], atol=1e-6, rtol=1e-6)


def test_same_seed_same_run_different_seed_differs():
    def final(seed):
        sim = Simulation(digits(nodes=6, seed=0), "logreg", "dsgd", "ring", seed=seed,
                         algorithm_kwargs=dict(lr=0.1, local_steps=2), evaluation=NO_EVAL)
        sim.run(2)
        return sim.params
    assert torch.equal(final(1), final(1))
    assert not torch.equal(final(1), final(2))


def test_fedavg_with_one_node_equals_centralized_sgd():
    data = digits(nodes=1, partition="iid")
    sim = Simulation(data, "mlp", "fedavg", model_kwargs={"hidden": [16]},
                     algorithm_kwargs=dict(lr=0.05, local_steps=4, batch_size=32),
                     evaluation=NO_EVAL)
    model = copy.deepcopy(sim.model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = data.dataset.train_x, data.dataset.train_y
    for round_index in range(3):
        for step in range(4):
            index = sim.sampler.batch(torch.tensor([0]), round_index, step).index[0]
            opt.zero_grad()
            F.cross_entropy(model(x[index]), y[index]).backward()
            opt.step()
    sim.run(3)
    torch.testing.assert_close(sim.params[0], sim.spec.flatten(model), atol=1e-5, rtol=1e-5)


def test_identical_data_and_models_stay_identical():
    data = digits(nodes=6, partition="iid")
    first = data.index_table[0].clone()
    data.index_table[:] = first  # every node holds the same samples
    data.sizes[:] = data.sizes[0]
    # One full batch per round: the shuffle order cannot matter.
    sim = Simulation(data, "mlp", "dsgd", "ring", model_kwargs={"hidden": [16]},
                     algorithm_kwargs=dict(lr=0.1, local_epochs=1.0,
                                           batch_size=int(data.sizes[0])),
                     evaluation=NO_EVAL)
    sim.run(4)
    spread = (sim.params - sim.params[0]).abs().max()
    assert float(spread) < 1e-6
    assert not torch.equal(sim.params[0], sim.spec.flatten(sim.model))  # it did train


def test_gossip_round_preserves_the_average_and_counts_ring_bytes():
    data = digits(nodes=8)
    sim = Simulation(data, "logreg", "dsgd", "ring", algorithm_kwargs=dict(lr=0.1, local_steps=1),
                     evaluation=NO_EVAL, same_init=False)
    before = sim.params.mean(0)
    plan = sim.algorithm.communication.plan(sim.context(1), None, sim.topology, data.sizes)
    sim.communicate(plan)
    torch.testing.assert_close(sim.params.mean(0), before, atol=1e-6, rtol=1e-5)
    d = sim.spec.dim
    assert torch.equal(sim.bytes_sent, torch.full((8,), 2.0 * 4 * d, dtype=torch.float64))
    assert torch.equal(sim.bytes_received, sim.bytes_sent)


def test_fedavg_round_equals_weighted_average_and_counts_bytes():
    data = digits(nodes=5)
    sim = Simulation(data, "logreg", "fedavg", algorithm_kwargs=dict(lr=0.1, local_steps=2),
                     evaluation=NO_EVAL)
    sim.train(None, 0)
    w = data.sizes.to(torch.float64) / data.sizes.sum()
    expected = (w.unsqueeze(1) * sim.params.to(torch.float64)).sum(0).to(torch.float32)
    sim.communicate(sim.algorithm.communication.plan(sim.context(1), None, None, data.sizes))
    for row in sim.params:
        torch.testing.assert_close(row, expected, atol=1e-6, rtol=1e-5)
    assert float(sim.bytes_sent.sum()) == 5 * 4 * sim.spec.dim
    assert sim.server_bytes_sent == 5 * 4 * sim.spec.dim


def test_partial_participation_trains_only_the_sampled():
    data = digits(nodes=10)
    sim = Simulation(data, "logreg", "fedavg", algorithm_kwargs=dict(
        lr=0.1, local_steps=2, clients_per_round=3), evaluation=NO_EVAL)
    participants = sim.algorithm.participation.select(sim.context(1))
    assert participants is not None and len(participants) == 3
    start = sim.params.clone()
    sim.train(participants, 0)
    changed = (sim.params != start).any(dim=1)
    assert changed.nonzero().flatten().tolist() == participants.tolist()
    sim.communicate(sim.algorithm.communication.plan(sim.context(1), participants, None,
                                                     data.sizes))
    assert int((sim.bytes_sent > 0).sum()) == 3
    other = sim.algorithm.participation.select(
        type(sim.context(1))(1, 1, sim.seed, 10, sim.device))
    assert not torch.equal(other, participants)  # a fresh sample each round


def test_final_merge_makes_every_node_the_average():
    sim = Simulation(digits(nodes=6), "logreg", "dsgd_final_merge", "ring",
                     algorithm_kwargs=dict(lr=0.1, local_steps=2), evaluation=Evaluation(every=1))
    history = sim.run(3)
    assert [r["communicated"] for r in history] == ["communicate", "communicate", "merge"]
    assert history.final["consensus_distance"] < 1e-10
    assert history[0]["consensus_distance"] > 0


def test_history_records_and_writers(tmp_path):
    sim = Simulation(digits(nodes=4), "logreg", "fedavg",
                     algorithm_kwargs=dict(lr=0.1, local_steps=1))
    history = sim.run(2)
    for key in ("test_accuracy", "test_loss", "node_accuracy_mean", "node_accuracy_min",
                "node_accuracy_max", "consensus_distance", "bytes_sent_total", "wall_seconds"):
        assert key in history.final
    assert 0 <= history.final["node_accuracy_min"] <= history.final["node_accuracy_max"] <= 1
    text = history.to_csv(tmp_path / "m.csv").read_text().splitlines()
    assert len(text) == 3 and text[0].startswith("round,")
    assert len((tmp_path / "m.jsonl").write_text("") or history.to_jsonl(
        tmp_path / "m.jsonl").read_text().splitlines()) == 2


def test_nan_is_caught_with_a_clear_error():
    sim = Simulation(digits(nodes=4), "logreg", "dsgd", "ring",
                     algorithm_kwargs=dict(lr=0.1, local_steps=1))
    sim.step(4)
    sim.step(4)
    sim.params[1, 0] = float("nan")  # as a diverging node would
    expected = r"after round 2: the parameters of nodes \[0, 1, 2\] are NaN"
    with pytest.raises(FloatingPointError, match=expected):
        sim.run(4)
    assert len(sim.history) == 2  # what was computed is kept


def test_divergence_without_evaluation_is_caught_at_the_end_of_run():
    sim = Simulation(digits(nodes=4), "logreg", "fedavg", evaluation=NO_EVAL,
                     algorithm_kwargs=dict(lr=1e38, local_steps=3))
    with pytest.raises(FloatingPointError, match="after round 2"):
        sim.run(3)
    assert len(sim.history) == 3


def test_run_keeps_the_total_it_started_with():
    sim = Simulation(digits(nodes=4), "logreg", "dsgd_final_merge", "ring", evaluation=NO_EVAL,
                     algorithm_kwargs=dict(local_steps=1))
    sim.run(3)
    sim.run(3)  # already done: nothing more
    assert [r["communicated"] for r in sim.history] == ["communicate", "communicate", "merge"]
    with pytest.raises(ValueError, match="started for 3 rounds"):
        sim.run(6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(algorithm="nope"), "unknown algorithm 'nope'"),
    (dict(algorithm="dsgd"), "pass a topology"),
    (dict(algorithm="fedavg", algorithm_kwargs=dict(lr=-1.0)), "lr must be"),
    (dict(algorithm="fedavg", algorithm_kwargs=dict(learning_rate=0.1)), "no parameter"),
    (dict(algorithm="fedavg", algorithm_kwargs=dict(fraction=1.5)), "fraction"),
    (dict(algorithm="fedavg", algorithm_kwargs=dict(clients_per_round=50)), "exceeds"),
    (dict(algorithm="fedavg", algorithm_kwargs=dict(momentum=1.0)), "momentum"),
    (dict(algorithm="fedavg", algorithm_kwargs=dict(batch_size=0)), "batch_size"),
    (dict(algorithm="fedavg", model="nope"), "unknown model"),
    (dict(algorithm="dsgd", topology="nope"), "unknown topology 'nope'"),
    (dict(algorithm="fedavg", topology="ring"), "would be ignored"),
    (dict(algorithm="fedavg", chunk_size=0), "chunk_size"),
    (dict(algorithm="fedavg", chunk_size=-3), "chunk_size"),
    (dict(algorithm="fedavg", model="mlp", model_kwargs=dict(hidden=[0])), "hidden"),
    (dict(algorithm="dsgd", topology="ring", topology_kwargs=dict(k=3)), "accepted"),
    (dict(algorithm="fedavg", algorithm_kwargs=dict(local_steps=0)), "steps"),
    (dict(algorithm="fedavg", algorithm_kwargs=dict(lr="0.1")), "lr must be a number"),
    (dict(algorithm="fedavg", algorithm_kwargs=dict(weight_decay=float("inf"))), "finite"),
    (dict(algorithm="fedavg", model_kwargs=dict(hiden=[4])), "no parameter(s) hiden"),
    (dict(algorithm="fedavg", seed=-1), "seed"),
    (dict(algorithm="fedavg", seed=1.7), "seed"),
    (dict(algorithm="fedavg", model=nn.Linear(64, 5)), "[batch, 10]"),
    (dict(algorithm="fedavg", model=nn.Linear(30, 10)), "cannot run on this dataset"),
    (dict(algorithm="fedavg", model=nn.Sequential(nn.Linear(64, 10), nn.Dropout(0.5))),
     "Dropout"),
])
def test_bad_input_gets_a_clear_error(kwargs, match):
    kwargs.setdefault("evaluation", NO_EVAL)
    with pytest.raises((ValueError, KeyError)) as info:
        Simulation(digits(nodes=6), **kwargs)  # refused when built, before any training
    assert match in str(info.value)


def test_float64_user_module_is_copied_and_run_in_float32():
    model = nn.Linear(64, 10).double()
    sim = Simulation(digits(nodes=4), model, "fedavg", algorithm_kwargs=dict(local_steps=1),
                     evaluation=NO_EVAL)
    sim.run(1)
    assert sim.params.dtype == torch.float32
    assert model.weight.dtype == torch.float64  # the user's module is left alone


def test_disconnected_topology_object_is_refused():
    from murmura.topology import make_topology

    with pytest.raises(ValueError, match="connected components"):
        Simulation(digits(nodes=6), "logreg", "dsgd", make_topology("isolated", 6))


def test_block_size_accounts_for_activations(monkeypatch):
    monkeypatch.setattr(Simulation, "_memory_budget", lambda self: 8 << 20)
    data = federate("digits", num_nodes=200, partition="iid", seed=0)
    narrow = Simulation(data, "mlp", "fedavg", model_kwargs={"hidden": [8]}, evaluation=NO_EVAL)
    deep = Simulation(data, "mlp", "fedavg", model_kwargs={"hidden": [8] * 40},
                      evaluation=NO_EVAL)
    assert deep._activations_per_sample > 5 * narrow._activations_per_sample
    before = narrow._auto_chunk_size()
    narrow._activations_per_sample *= 100  # a model with far larger activations, same size
    assert narrow._auto_chunk_size() < before / 10
    assert narrow._eval_chunk_size(500) < narrow._auto_chunk_size()


@pytest.mark.parametrize("kwargs,match", [
    (dict(every=-1), "every"), (dict(every=1.5), "every"), (dict(node_samples=-1), "node_samples"),
    (dict(test_batch_size=0), "test_batch_size"),
])
def test_bad_evaluation_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Evaluation(**kwargs)


def test_raw_dataset_instead_of_federated_data_is_refused():
    from murmura.data import load_dataset

    with pytest.raises(TypeError, match="federate"):
        Simulation(load_dataset("digits"), "logreg", "fedavg")


def test_batchnorm_is_refused_with_advice():
    model = nn.Sequential(nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Linear(8, 10))
    with pytest.raises(ValueError, match="GroupNorm"):
        Simulation(digits(nodes=4), model, "fedavg")


def test_user_module_and_user_registered_algorithm():
    from murmura.algorithms import SGD, Algorithm, Every, FullParticipation, Gossip, LocalWork

    @ALGORITHMS.register("test_heavy_ball_gossip", "test-only", overwrite=True)
    def heavy(lr: float = 0.05) -> Algorithm:
        return Algorithm("test_heavy_ball_gossip", SGD(lr, momentum=0.5), LocalWork(steps=2),
                         Gossip(), Every(1), FullParticipation())

    model = nn.Sequential(nn.Linear(64, 12), nn.LayerNorm(12), nn.Tanh(), nn.Linear(12, 10))
    sim = Simulation(digits(nodes=4), model, "test_heavy_ball_gossip", "complete",
                     evaluation=NO_EVAL)
    sim.run(2)
    assert "momentum" in sim.local_state
    assert make_algorithm("test_heavy_ball_gossip").local_rule.momentum == 0.5


def test_final_merge_is_the_uniform_average_dsgd_would_have():
    kwargs = dict(lr=0.1, local_steps=3, batch_size=8)
    plain = Simulation(digits(nodes=7), "logreg", "dsgd", "ring", algorithm_kwargs=kwargs,
                       evaluation=NO_EVAL)
    merged = Simulation(digits(nodes=7), "logreg", "dsgd_final_merge", "ring",
                        algorithm_kwargs=kwargs, evaluation=NO_EVAL)
    plain.run(3)
    merged.run(3)
    # Ring Metropolis gossip is doubly stochastic: it keeps x̄, so the merge must land on it.
    for row in merged.params:
        torch.testing.assert_close(row, plain.params.mean(0), atol=1e-6, rtol=1e-5)


def test_disconnected_graph_is_refused_where_gossip_needs_connectivity():
    with pytest.raises(ValueError, match="connected"):
        Simulation(digits(nodes=6), "logreg", "dsgd", "isolated", evaluation=NO_EVAL)
    # A final merge makes isolated training meaningful: allowed.
    sim = Simulation(digits(nodes=6), "logreg", "dsgd_final_merge", "isolated",
                     algorithm_kwargs=dict(local_steps=1), evaluation=NO_EVAL)
    sim.run(2)
    assert float(sim.bytes_sent.sum()) == 6 * 4 * sim.spec.dim  # only the merge's uploads


@pytest.mark.parametrize("kwargs,expected", [
    (dict(communicate_every=3), ["skip", "skip", "communicate", "skip", "skip", "communicate"]),
    (dict(late_fraction=0.5), ["skip", "skip", "skip", "communicate", "communicate",
                               "communicate"]),
    (dict(communicate_every=2, final_merge=True), ["skip", "communicate", "skip",
                                                   "communicate", "skip", "merge"]),
])
def test_communication_schedules(kwargs, expected):
    sim = Simulation(digits(nodes=4), "logreg", "dsgd", "ring",
                     algorithm_kwargs=dict(lr=0.1, local_steps=1, **kwargs),
                     evaluation=NO_EVAL)
    history = sim.run(6)
    assert [r["communicated"] for r in history] == expected
    sent = [r["bytes_sent"] for r in history]
    assert all((s > 0) == (a != "skip") for s, a in zip(sent, expected))


def test_user_registered_dataset_partition_model_and_topology_work_by_name():
    import networkx as nx
    import numpy as np

    from murmura.data import DATASETS, PARTITIONERS, Dataset
    from murmura.models import MODELS
    from murmura.topology import TOPOLOGIES

    @DATASETS.register("test_blobs", "two gaussian blobs", overwrite=True)
    def blobs(seed: int = 0) -> Dataset:
        g = torch.Generator().manual_seed(seed)
        y = torch.arange(400) % 2
        x = torch.randn(400, 5, generator=g) + 2.0 * y.unsqueeze(1)
        return Dataset("test_blobs", x[:300], y[:300], x[300:], y[300:], num_classes=2)

    @PARTITIONERS.register("test_halves", "first half / second half", overwrite=True)
    def halves(labels, num_nodes, *, seed):
        return [np.asarray(p, dtype=np.int64) for p in np.array_split(np.arange(len(labels)),
                                                                      num_nodes)]

    @MODELS.register("test_tiny", "one linear layer", overwrite=True)
    def tiny(input_shape, num_classes):
        return nn.Linear(input_shape[0], num_classes)

    @TOPOLOGIES.register("test_path", "a path graph", overwrite=True)
    def path(n: int, *, seed: int = 0):
        return nx.path_graph(n)

    data = federate("test_blobs", num_nodes=3, partition="test_halves")
    sim = Simulation(data, "test_tiny", "dsgd", "test_path",
                     algorithm_kwargs=dict(lr=0.5, local_steps=5), evaluation=Evaluation(every=5))
    history = sim.run(5)
    assert history.final["test_accuracy"] > 0.9
    assert sim.bytes_sent.tolist() == [4 * sim.spec.dim * 5 * k for k in (1, 2, 1)]


def test_fedavg_epochs_over_unequal_partitions_match_across_block_sizes():
    runs = final_params_by_block_size(
        (2, 4, None), 2, digits(nodes=9, alpha=0.2), "mlp", "fedavg",
        model_kwargs={"hidden": [8]},
        algorithm_kwargs=dict(lr=0.05, local_epochs=1.0, batch_size=16, fraction=0.7))
    torch.testing.assert_close(runs[0], runs[1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(runs[0], runs[2], atol=1e-6, rtol=1e-5)


def test_summary_reports_the_spectral_gap():
    import math

    sim = Simulation(digits(nodes=8), "logreg", "dsgd", "ring", evaluation=NO_EVAL)
    summary = sim.summary()
    assert summary["spectral_gap"] == pytest.approx(1 - (1 + 2 * math.cos(2 * math.pi / 8)) / 3)
    assert summary["num_nodes"] == 8 and summary["message_bytes"] == 4 * sim.spec.dim
    assert Simulation(digits(nodes=8), "logreg", "fedavg").summary()["spectral_gap"] is None


@pytest.mark.parametrize("name", ["one_peer_exponential", "random_matching"])
def test_time_varying_gossip_keeps_the_average_and_counts_one_peer(name):
    sim = Simulation(digits(nodes=8), "logreg", "dsgd", name, same_init=False,
                     algorithm_kwargs=dict(lr=0.1, local_steps=1), evaluation=NO_EVAL)
    for round_index in range(3):
        sim.round = round_index
        before = sim.params.mean(0)
        plan = sim.algorithm.communication.plan(sim.context(3), None, sim.topology,
                                                sim.data.sizes)
        sim.communicate(plan)
        torch.testing.assert_close(sim.params.mean(0), before, atol=1e-6, rtol=1e-5)
    # each node sends its model to at most one peer per round
    assert float(sim.bytes_sent.max()) <= 3 * 4 * sim.spec.dim
    assert float(sim.bytes_sent.sum()) == float(sim.bytes_received.sum()) > 0


def test_late_fraction_and_communicate_every_cannot_both_apply():
    import pytest as _pytest

    from murmura.algorithms import make_algorithm

    with _pytest.raises(ValueError, match="set one"):
        make_algorithm("dsgd", late_fraction=0.5, communicate_every=2)
