"""Transductive few-shot inference (murmura.learners.fewshot) on hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from murmura.learners.fewshot import (
    cl2n,
    infer,
    kmeans,
    knn_affinity,
    sample_tasks,
    simpleshot,
    slk,
)


def one_d(values):
    return torch.tensor(values, dtype=torch.float32)[:, None]


def test_clustering_with_the_shift_fixes_what_the_nearest_mean_gets_wrong():
    # support A at 0, B at 10; queries of A at 6 and 6.2, of B at 9 and 9.4.
    # SimpleShot: all four are nearer 10 -> B. Shifted by mean(S) - mean(Q) = 5 - 7.65, the
    # queries are 3.35, 3.55, 6.35, 6.75: the first two now start in A, and the prototypes
    # (0, 3.35, 3.55) -> 2.3 and (10, 6.35, 6.75) -> 7.7 keep them there.
    support, labels, query = one_d([0.0, 10.0]), torch.tensor([0, 1]), one_d([6, 6.2, 9, 9.4])
    assert simpleshot(support, labels, query, 2).tolist() == [1, 1, 1, 1]
    assert kmeans(support, labels, query, 2).tolist() == [0, 0, 1, 1]
    assert slk(support, labels, query, 2, knn=1).tolist() == [0, 0, 1, 1]


def test_knn_affinity_by_hand():
    W = knn_affinity(one_d([0.0, 1.0, 3.0, 10.0]), 1)
    assert W.tolist() == [[0, 1, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]


def test_cl2n_centres_and_normalizes():
    z = cl2n(torch.tensor([[3.0, 4.0], [1.0, 1.0]]), torch.tensor([0.0, 1.0]))
    assert torch.allclose(z, torch.tensor([[3 / 18 ** 0.5, 3 / 18 ** 0.5], [1.0, 0.0]]))


def test_kmeans_ends_at_a_fixed_point_and_batches_equal_single_tasks():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    points = torch.randn(60, 4, generator=g) + 3 * torch.nn.functional.one_hot(labels, 4)
    s, sl, q, _ = sample_tasks(labels, [0, 1, 2], ways=3, shot=2, queries=5, tasks=4,
                               generator=g)
    batch = infer("kmeans", points[s], sl, points[q], 3)
    for t in range(4):
        assert batch[t].tolist() == kmeans(points[s[t]], sl[t], points[q[t]], 3).tolist()
        # a fixed point: each shifted query is nearest its own cluster's mean
        shifted = points[q[t]] + points[s[t]].mean(0) - points[q[t]].mean(0)
        every = torch.cat([points[s[t]], shifted])
        assigned = torch.cat([sl[t], batch[t]])
        means = torch.stack([every[assigned == k].mean(0) for k in range(3)])
        assert torch.cdist(shifted, means).argmin(1).tolist() == batch[t].tolist()
    for method in ("simpleshot", "slk"):
        batch = infer(method, points[s], sl, points[q], 3)
        single = simpleshot if method == "simpleshot" else slk
        assert batch[1].tolist() == single(points[s[1]], sl[1], points[q[1]], 3).tolist()


def test_sample_tasks_draws_disjoint_support_and_query():
    labels = torch.arange(100) % 10
    s, sl, q, ql = sample_tasks(labels, [5, 6, 7, 8, 9], ways=5, shot=1, queries=3, tasks=7,
                                generator=torch.Generator().manual_seed(1))
    assert s.shape == (7, 5) and q.shape == (7, 15) and sl.tolist()[0] == [0, 1, 2, 3, 4]
    for t in range(7):
        assert not set(s[t].tolist()) & set(q[t].tolist())
        classes = labels[s[t]]  # the same novel class behind each way, in support and query
        assert (labels[q[t]] == classes[ql[t]]).all()
    with pytest.raises(ValueError, match="fewer than shot"):
        sample_tasks(labels, [5], ways=1, shot=5, queries=10, tasks=1,
                     generator=torch.Generator())


def test_bad_inputs_are_named():
    s, q = torch.zeros(1, 2, 3), torch.zeros(1, 4, 3)
    with pytest.raises(ValueError, match="unknown few-shot method"):
        infer("nearest", s, torch.tensor([[0, 1]]), q, 2)
    with pytest.raises(ValueError, match="every one of its k classes"):
        infer("kmeans", s, torch.tensor([[0, 0]]), q, 2)
    with pytest.raises(ValueError, match="support labels must be in 0..1"):
        infer("kmeans", s, torch.tensor([[0, 2]]), q, 2)
    with pytest.raises(ValueError, match="disagree"):
        infer("kmeans", s, torch.tensor([[0, 1]]), torch.zeros(1, 4, 5), 2)
    with pytest.raises(ValueError, match="knn must be smaller"):
        infer("slk", s, torch.tensor([[0, 1]]), q, 2, knn=6)


def test_the_fewshot_kind_runs_from_a_config(tmp_path):
    from murmura.config import Experiment
    from murmura.runner import run_experiment

    exp = Experiment.from_dict({"seed": 2, "rounds": 2, "kind": {
        "name": "fewshot", "features": "pca", "shot": 5, "tasks": 20, "batch": 10},
        "output": {"plots": False, "report": False}})
    result = run_experiment(exp, tmp_path / "run", progress=False)
    assert result.status == "completed" and [r["tasks"] for r in result.history] == [10, 20]
    last = result.history.records[-1]
    assert last["test_accuracy"] == last["slk_accuracy"]
    assert 0.5 < last["simpleshot_accuracy"] <= 1.0


def test_the_fewshot_kind_reads_a_runs_model_features(tmp_path):
    from murmura.config import Experiment
    from murmura.learners.fewshot import run_features
    from murmura.runner import run_experiment
    from murmura.runner.trained import load_run_model

    swarm = Experiment.from_dict({
        "rounds": 2, "data": {"dataset": "digits", "nodes": 2, "partition": "iid"},
        "model": {"name": "mlp", "hidden": [16]}, "algorithm": {"name": "fedavg", "lr": 0.3},
        "output": {"plots": False, "report": False, "checkpoint_every": 0}})
    assert run_experiment(swarm, tmp_path / "swarm", progress=False).status == "completed"
    z, y = run_features(str(tmp_path / "swarm"))
    model, _, dataset = load_run_model(tmp_path / "swarm")
    assert z.shape == (dataset.num_train + dataset.num_test, 16) and len(y) == len(z)
    # the penultimate layer: ReLU(W1 x + b1), then CL2N on the base classes' mean
    x = torch.cat([dataset.train_x, dataset.test_x])
    h = model[:-1](x)
    expected = cl2n(h, h[y < 5].mean(0))
    assert torch.allclose(z, expected, atol=1e-5)
    exp = Experiment.from_dict({"seed": 0, "rounds": 1, "kind": {
        "name": "fewshot", "run_dir": str(tmp_path / "swarm"), "tasks": 10, "batch": 10},
        "output": {"plots": False, "report": False}})
    result = run_experiment(exp, tmp_path / "run", progress=False)
    assert result.status == "completed" and 0.2 < result.history.records[-1]["test_accuracy"]
