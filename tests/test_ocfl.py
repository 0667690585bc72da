"""OCFL (one-shot clustered FL): the temperature, its trigger, the one clustering, the
per-cluster FedAvg step and its bytes, against hand-computed cases; the ``label_groups``
partitioner; the experiment's quick mode."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from murmura.algorithms import make_algorithm
from murmura.algorithms.base import RoundContext
from murmura.algorithms.ocfl import (
    Clusterer,
    OCFLServer,
    cosine_distances,
    temperature,
)
from murmura.data import federate, partition
from murmura.swarm import Evaluation, Simulation

REPO = Path(__file__).resolve().parents[1]
E = torch.eye(6, dtype=torch.float64)


def ctx(round_: int, n: int) -> RoundContext:
    return RoundContext(round_, 10, 0, n, torch.device("cpu"))


def uploads(updates: torch.Tensor, weights=None) -> dict:
    m = len(updates)
    w = torch.full((m,), 1.0 / m, dtype=torch.float64) if weights is None else weights
    return {"update": updates, "clients": torch.arange(m), "weights": w}


def groups(*directions, size=3, noise=0.05, seed=0) -> torch.Tensor:
    """``size`` noisy copies of each direction, group after group."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([d + noise * torch.randn(size, len(d), generator=g, dtype=torch.float64)
                      for d in directions])


# --------------------------------------------------------------------------- the temperature


def test_the_temperature_of_three_hand_updates():
    # cos(u1, u2) = 0, cos(u1, u3) = -1, cos(u2, u3) = 0  ->  D = [[0,1,2],[1,0,1],[2,1,0]]
    u = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    d = cosine_distances(u)
    assert torch.allclose(d, torch.tensor([[0.0, 1, 2], [1, 0, 1], [2, 1, 0]],
                                          dtype=torch.float64))
    # ||D||_F = sqrt(2 (1 + 4 + 1)) = sqrt(12); T = sqrt(12) / sqrt(3 * 2 * 4) = sqrt(1/2)
    assert temperature(d) == pytest.approx(math.sqrt(0.5))
    assert temperature(cosine_distances(torch.ones(4, 3))) == pytest.approx(0.0, abs=1e-7)
    # a zero update has cosine 0 to the others (scipy's cosine would give NaN)
    assert cosine_distances(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))[0, 1] == 1.0


def test_the_trigger_fires_once_at_the_first_rise():
    server = OCFLServer(Clusterer("kmeans", num_clusters=2))
    state = server.init(torch.zeros(6, dtype=torch.float64))
    spread = {0: 0.3, 1: 0.1, 2: 1.0, 3: 3.0}  # T falls at round 1, rises at 2, and at 3
    heat = []
    for t, s in spread.items():
        u = groups(E[0] + s * E[1], E[0] - s * E[1], noise=0.01, seed=t)
        heat.append(temperature(cosine_distances(u)))
        _, state = server.update(state, uploads(u), ctx(t, 6))
        # measured until the clustering, not after it
        assert float(state["temperature"]) == pytest.approx(heat[min(t, 2)])
        assert int(state["fired_round"]) == (-1 if t < 2 else 2)
    assert heat[1] < heat[0] < heat[2] < heat[3]
    assert state["labels"].tolist() in ([0, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0])
    assert len(state["models"]) == 2  # round 3's rise does not cluster again


def test_before_the_first_rise_it_is_fedavg_with_a_tracked_temperature():
    data = federate("digits", num_nodes=6, partition="class_disjoint", groups=3, seed=0)
    kwargs = dict(lr=0.05, local_steps=3, batch_size=16)
    runs = {}
    for name, extra in (("ocfl", {"clusterer": "none"}), ("fedavg", {"weighting": "uniform"})):
        sim = Simulation(data, "logreg", name, seed=0, algorithm_kwargs={**kwargs, **extra},
                         evaluation=Evaluation(every=0))
        sim.run(3)
        runs[name] = sim
    assert torch.allclose(runs["ocfl"].params, runs["fedavg"].params, atol=1e-5)
    state = runs["ocfl"].server_state
    assert int(state["fired_round"]) == -1 and 0 < float(state["temperature"]) < 1
    assert runs["ocfl"].bytes_sent.tolist() == runs["fedavg"].bytes_sent.tolist()
    assert runs["ocfl"].server_bytes_sent == runs["fedavg"].server_bytes_sent


# --------------------------------------------------------------------------- the clustering


@pytest.mark.parametrize("name", ["hdbscan", "kmeans"])
def test_the_clusterers_recover_three_separated_groups(name):
    from sklearn.metrics import adjusted_rand_score

    u = groups(E[0], E[1], E[2], size=5, noise=0.01)
    labels = Clusterer(name, min_cluster_size=3, num_clusters=3).labels(cosine_distances(u), 0)
    assert adjusted_rand_score(np.repeat([0, 1, 2], 5), labels.numpy()) == 1.0
    assert sorted(set(labels.tolist())) == [0, 1, 2]


def test_hdbscan_noise_becomes_a_cluster_of_its_own():
    u = torch.cat([groups(E[0], E[1], E[3]), -(E[0] + E[1]).unsqueeze(0)])  # 9 + 1 outlier
    labels = Clusterer("hdbscan", min_cluster_size=3).labels(cosine_distances(u), 0)
    assert labels[-1] == 0  # the noise label -1 sorts first
    assert sorted(set(labels[:-1].tolist())) == [1, 2, 3]
    server = OCFLServer(Clusterer("hdbscan", min_cluster_size=3))
    state = server.init(torch.zeros(6, dtype=torch.float64))
    state["temperature"] = torch.tensor(0.0, dtype=torch.float64)  # any rise fires
    _, state = server.update(state, uploads(u), ctx(0, 10))
    assert len(state["models"]) == 4
    assert torch.allclose(state["models"][0], u[-1])  # the outlier is its cluster's mean


def test_each_cluster_takes_its_members_mean_update():
    server = OCFLServer(server_lr=0.5)
    models = torch.tensor([[0.0, 0.0], [10.0, 10.0]], dtype=torch.float64)
    state = {"params": models.mean(0), "models": models, "labels": torch.tensor([0, 1, 0, 1]),
             "temperature": torch.tensor(0.3, dtype=torch.float64),
             "fired_round": torch.tensor(0)}
    delta = torch.tensor([[2.0, 0.0], [0.0, 4.0], [4.0, 2.0], [2.0, 0.0]], dtype=torch.float64)
    weights = torch.tensor([1.0, 1.0, 3.0, 1.0], dtype=torch.float64)
    broadcast, new = server.update(state, uploads(delta, weights), ctx(5, 4))
    # cluster 0: (1 * [2, 0] + 3 * [4, 2]) / 4 = [3.5, 1.5]; cluster 1: ([0, 4] + [2, 0]) / 2
    expected = torch.tensor([[1.75, 0.75], [10.5, 11.0]], dtype=torch.float64)
    assert torch.allclose(new["models"], expected)
    assert torch.allclose(broadcast["params"], expected[[0, 1, 0, 1]])
    assert torch.allclose(new["params"], expected.mean(0))
    assert float(new["temperature"]) == 0.3  # no longer measured once clustered
    with pytest.raises(ValueError, match="all 5 clients must upload"):
        server.update(state, uploads(delta, weights), ctx(5, 5))


# --------------------------------------------------------------------------- in the engine


def test_ocfl_clusters_the_disjoint_digits_groups_with_fedavgs_bytes():
    data = federate("digits", num_nodes=6, partition="class_disjoint", groups=3, seed=0)
    sim = Simulation(data, "logreg", "ocfl", seed=0, evaluation=Evaluation(every=0),
                     algorithm_kwargs=dict(min_cluster_size=2, local_steps=4, lr=0.1))
    sim.run(3)
    state = sim.server_state
    assert int(state["fired_round"]) == 1  # T_1 > T_0: the first round that can fire
    labels = state["labels"].tolist()
    assert labels[0] == labels[1] and labels[2] == labels[3] and labels[4] == labels[5]
    assert len(set(labels)) == 3
    rows = sim.params
    for c in range(3):
        members = rows[state["labels"] == c]
        assert torch.equal(members, state["models"][c].expand_as(members))
    d = sim.spec.dim
    assert sim.bytes_sent.tolist() == [3 * 4 * d] * 6  # Δ up, 3 rounds
    assert sim.server_bytes_sent == 3 * 6 * 4 * d  # each client's cluster model down


def test_a_resumed_ocfl_run_equals_a_straight_one():
    data = federate("digits", num_nodes=6, partition="class_disjoint", groups=3, seed=0)

    def build():
        return Simulation(data, "logreg", "ocfl", seed=0, evaluation=Evaluation(every=0),
                          algorithm_kwargs=dict(clusterer="kmeans", local_steps=2))

    straight = build()
    straight.run(4)
    first = build()
    first.total_rounds = 4
    first.step(4)
    tensors, values = first.state_dict()
    resumed = build()
    resumed.load_state_dict({k: v.clone() for k, v in tensors.items()}, values)
    resumed.run(4)
    assert torch.equal(resumed.params, straight.params)
    for key, value in straight.server_state.items():
        assert torch.equal(resumed.server_state[key], value), key


@pytest.mark.parametrize(("kwargs", "word"), [
    ({"clusterer": "dbscan"}, "unknown clusterer"),
    ({"min_cluster_size": 1}, "min_cluster_size"),
    ({"num_clusters": 0}, "num_clusters"),
    ({"num_clusters": 2.5}, "num_clusters"),
    ({"server_lr": 0.0}, "server_lr"),
    ({"weighting": "size"}, "weighting"),
    ({"lr": -1.0}, "lr"),
])
def test_bad_parameters_are_refused(kwargs, word):
    with pytest.raises(ValueError, match=word):
        make_algorithm("ocfl", **kwargs)


def test_too_few_clients_for_the_clusterer_are_refused_at_the_first_round():
    data = federate("digits", num_nodes=4, partition="iid", seed=0)
    for kwargs, word in (({"min_cluster_size": 5}, "min_cluster_size=5 exceeds the 4"),
                         ({"clusterer": "kmeans", "num_clusters": 5}, "num_clusters=5")):
        sim = Simulation(data, "logreg", "ocfl", seed=0, evaluation=Evaluation(every=0),
                         algorithm_kwargs={**kwargs, "local_steps": 1})
        with pytest.raises(ValueError, match=word):
            sim.run(1)


# --------------------------------------------------------------------------- label_groups


OVERLAP = [[0, 1, 2, 3, 4, 5], [3, 4, 5, 6, 7, 8], [0, 1, 2, 7, 8, 9]]


def test_label_groups_share_overlapping_labels_among_their_holders():
    y = np.repeat(np.arange(10), 30)
    parts = partition("label_groups", y, 6, seed=0, groups=OVERLAP)
    for node, part in enumerate(parts):
        assert set(y[part].tolist()) == set(OVERLAP[node // 2])
    flat = np.concatenate(parts)
    assert len(flat) == len(set(flat.tolist())) == 300  # every label is held: all used, once
    # label 0 has 2 groups x 2 nodes = 4 holders: 30 samples -> 8, 8, 7, 7; label 6 has 2
    counts = np.array([[int((y[p] == c).sum()) for c in range(10)] for p in parts])
    assert sorted(counts[:, 0][counts[:, 0] > 0].tolist()) == [7, 7, 8, 8]
    assert counts[:, 6].tolist() == [0, 0, 15, 15, 0, 0]
    for c in range(10):
        held = counts[:, c][counts[:, c] > 0]
        assert held.sum() == 30 and held.max() - held.min() <= 1


def test_label_groups_disjoint_equals_class_disjoints_groups_and_leaves_unheld_labels_out():
    data = federate("digits", num_nodes=15, partition="label_groups",
                    groups=[[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]], seed=0)
    disjoint = federate("digits", num_nodes=15, partition="class_disjoint", groups=3, seed=0)
    assert torch.equal(data.label_counts() > 0, disjoint.label_counts() > 0)
    y = np.repeat(np.arange(4), 5)
    parts = partition("label_groups", y, 2, seed=0, groups=[[0], [1, 2]])
    assert sorted(np.concatenate(parts).tolist()) == list(range(15))  # label 3: nobody's


@pytest.mark.parametrize(("groups_", "word"), [
    ([], "non-empty list"),
    ("0123", "non-empty list"),
    ([[0, 1], []], r"groups\[1\]"),
    ([[0, 0, 1]], "twice"),
    ([[0, 12]], "label"),
    ([[0], [1], [2], [3], [4]], "num_nodes=4"),
    ([[0, 1.5]], "integer"),
])
def test_label_groups_refuses_bad_groups(groups_, word):
    y = np.repeat(np.arange(10), 4)
    with pytest.raises(ValueError, match=word):
        partition("label_groups", y, 4, seed=0, groups=groups_)


def test_label_groups_refuses_a_node_left_without_samples():
    with pytest.raises(ValueError, match="no sample"):
        partition("label_groups", np.array([0, 1, 1, 1, 1, 1]), 4, seed=0, groups=[[0], [1]])


# --------------------------------------------------------------------------- the experiment


def test_the_experiment_quick_mode_runs(tmp_path):
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("ocfl_run", REPO / "experiments" / "ocfl"
                                                  / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:  # in this process: a second interpreter would import torch again
        assert module.main(["--quick", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    summary = json.loads((tmp_path / "quick.json").read_text())
    digits = summary["table"]["digits"]
    assert set(digits) == {"ocfl_hdbscan", "ocfl_kmeans", "fedavg"}
    assert digits["ocfl_kmeans"]["fired_round"]["mean"] >= 1
    assert (tmp_path / "ocfl_quick.png").exists()
