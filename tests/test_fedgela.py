"""FedGELA: the simplex ETF, the client's class shares E_k, the client-adapted loss and
personal scores, one round of clipped SGD + sample-weighted averaging, all against hand
computations; the ETF is a shared buffer; and the experiment's quick mode."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from murmura.algorithms.fedgela import ClientAdaptedLoss, adapted_logits, class_shares
from murmura.data import FederatedData, federate, load_dataset
from murmura.models import build_model
from murmura.models.etf import simplex_etf
from murmura.swarm import Evaluation, Simulation

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("dim,classes,seed", [(32, 10, 0), (10, 10, 3), (5, 3, 1)])
def test_the_etf_has_unit_columns_at_equal_angles(dim, classes, seed):
    m = simplex_etf(dim, classes, seed).double()
    assert m.shape == (dim, classes)
    gram = m.T @ m
    expected = torch.full((classes, classes), -1.0 / (classes - 1), dtype=torch.float64)
    expected.fill_diagonal_(1.0)
    assert torch.allclose(gram, expected, atol=1e-5)  # unit norms, cos = -1/(C-1)
    assert torch.allclose(m.sum(1), torch.zeros(dim, dtype=torch.float64), atol=1e-5)
    assert torch.equal(simplex_etf(dim, classes, seed), simplex_etf(dim, classes, seed))
    assert not torch.equal(simplex_etf(dim, classes, seed), simplex_etf(dim, classes, seed + 1))


def test_the_etf_needs_room_for_every_class():
    with pytest.raises(ValueError, match="feature_dim"):
        simplex_etf(8, 10)
    with pytest.raises(ValueError, match="feature_dim"):
        build_model("etf_mlp", (64,), 10, feature_dim=8)


def test_class_shares_by_hand():
    # C = 4 classes, n = 8 samples: 2 of class 0, 6 of class 2 -> 4*2/8, 0, 4*6/8, 0
    e = class_shares(torch.tensor([2.0, 0.0, 6.0, 0.0]))
    assert e.tolist() == [1.0, 0.0, 3.0, 0.0]
    assert float(e.sum()) == 4.0
    stacked = class_shares(torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 5.0]]))
    assert stacked.tolist() == [[1.5, 1.5, 0.0], [0.0, 0.0, 3.0]]


def test_the_local_loss_by_hand():
    out = torch.tensor([[1.0, 2.0, 3.0, 0.5], [2.0, -1.0, 0.0, 4.0]])  # h·M/τ of 2 samples
    counts = torch.tensor([2.0, 0.0, 6.0, 0.0])  # E = [1, 0, 3, 0]
    y = torch.tensor([2, 0])
    task = ClientAdaptedLoss()
    # sample 0: logits [1, 0, 9, 0], y = 2; sample 1: logits [2, 0, 0, 0], y = 0
    l0 = math.log(math.exp(1) + 2 + math.exp(9)) - 9
    l1 = math.log(math.exp(2) + 3) - 2
    batch = {"x": torch.zeros(2, 1), "y": y, "label_counts": counts}
    loss, _ = task.loss(lambda p, x: out, {}, batch)
    assert float(loss) == pytest.approx((l0 + l1) / 2, abs=1e-6)
    weighted, _ = task.loss(lambda p, x: out, {}, {**batch, "weight": torch.tensor([1.0, 0.0])})
    assert float(weighted) == pytest.approx(l0, abs=1e-6)  # a padded sample does not count
    plain, _ = ClientAdaptedLoss(adapt=False).loss(lambda p, x: out, {}, batch)
    assert float(plain) == pytest.approx(float(F.cross_entropy(out, y)), rel=1e-6)


def test_personal_scores_are_the_global_scores_scaled_by_the_class_shares():
    out = torch.tensor([[0.5, -1.0, -0.2, 0.9]])  # the global argmax is class 3, absent here
    counts = torch.tensor([3.0, 0.0, 1.0, 0.0])  # E = [3, 0, 1, 0]
    batch = {"x": torch.zeros(1, 1), "y": torch.tensor([0]), "label_counts": counts}
    scores = ClientAdaptedLoss().personal_scores(lambda p, x: out, {}, batch)
    assert torch.allclose(scores, torch.tensor([[1.5, 0.0, -0.2, 0.0]]))
    assert int(out.argmax()) == 3 and int(scores.argmax()) == 0
    metrics = ClientAdaptedLoss().metrics(lambda p, x: out, {}, batch)
    assert float(metrics["correct"]) == 0.0  # the global view scores h·M itself
    assert torch.equal(adapted_logits(out, counts), scores)


def test_the_etf_is_a_buffer_shared_by_every_node_and_seed():
    data = federate("digits", num_nodes=4, partition="iid", seed=0)
    sims = [Simulation(data, "etf_mlp", "fedgela", task="fedgela", seed=s,
                       algorithm_kwargs={"local_steps": 1}, evaluation=Evaluation(every=0))
            for s in (0, 1)]
    first, second = sims
    etf = first.buffers["head.etf"]
    assert torch.equal(etf, simplex_etf(32, 10, 0)) and torch.equal(etf, second.buffers["head.etf"])
    assert not any("etf" in name for name in first.spec.names)
    trainable = sum(p.numel() for p in build_model("etf_mlp", (64,), 10).parameters())
    assert first.spec.dim == trainable == 64 * 64 + 64 + 64 * 32 + 32 + 2 * 32
    assert not torch.equal(first.params, second.params)  # different inits, one ETF
    first.run(rounds=2)
    assert torch.equal(first.buffers["head.etf"], etf)  # never trained
    assert set(first.buffers) == {"head.etf"}  # one tensor, read by every node's forward


def _two_clients():
    ds = load_dataset("digits")
    y = ds.train_y.numpy()
    parts = [np.concatenate([np.flatnonzero(y == 0)[:3], np.flatnonzero(y == 1)[:3]]),
             np.concatenate([np.flatnonzero(y == c)[:k] for c, k in ((2, 5), (3, 4), (4, 1))])]
    return ds, FederatedData.from_parts(ds, parts)


@pytest.mark.parametrize("clip", [None, 1.0])
def test_one_round_is_clipped_sgd_on_the_adapted_loss_then_a_sample_weighted_mean(clip):
    ds, data = _two_clients()
    lr = 0.1
    # one epoch in one batch of 16: each client takes one full-batch step (the smaller padded)
    sim = Simulation(data, "etf_mlp", "fedgela", task="fedgela", seed=0,
                     algorithm_kwargs={"lr": lr, "momentum": 0.0, "weight_decay": 0.0,
                                       "local_epochs": 1, "batch_size": 16, "clip_norm": clip},
                     evaluation=Evaluation(every=0))
    x0 = sim.params[0].clone()
    model = build_model("etf_mlp", (64,), 10)
    buffers = dict(model.named_buffers())
    shares = [torch.tensor([5.0, 5.0] + [0.0] * 8),  # 10 * 3 / 6 for classes 0 and 1
              torch.tensor([0.0, 0.0, 5.0, 4.0, 1.0] + [0.0] * 5)]  # 10 * (5, 4, 1) / 10
    moved = []
    for part, e in zip(data.parts, shares):
        x, y = ds.train_x[torch.as_tensor(part)], ds.train_y[torch.as_tensor(part)]
        params = {k: v.clone().requires_grad_(True) for k, v in sim.spec.views(x0).items()}
        out = functional_call(model, (params, buffers), (x,))
        F.cross_entropy(out * e, y).backward()
        g = torch.cat([params[k].grad.reshape(-1) for k in sim.spec.names])
        norm = float(g.norm())
        if clip is not None:
            assert norm > clip  # the clip is active in this case
            g = g * clip / (norm + 1e-6)
        moved.append(x0 - lr * g)
    expected = (6 * moved[0] + 10 * moved[1]) / 16  # FedAvg weighted by samples
    sim.run(rounds=1)
    assert torch.allclose(sim.params[0], expected, atol=1e-5)
    assert torch.allclose(sim.params[1], expected, atol=1e-5)


def test_personal_accuracy_uses_the_clients_adapted_etf():
    data = federate("digits", num_nodes=5, partition="pathological", classes_per_node=2, seed=0,
                    local_test_fraction=0.3)
    sim = Simulation(data, "etf_mlp", "fedgela", task="fedgela", seed=0,
                     algorithm_kwargs={"local_steps": 2, "batch_size": 8},
                     evaluation=Evaluation(every=1))
    record = sim.run(rounds=1).records[-1]
    counts = data.label_counts()
    personal, plain = [], []
    for i, test in enumerate(data.test_parts):
        idx = torch.as_tensor(test)
        out = sim._forward(sim.spec.views(sim.params[i]), data.dataset.train_x[idx])
        y = data.dataset.train_y[idx]
        personal.append(float(((out * class_shares(counts[i])).argmax(1) == y).float().mean()))
        plain.append(float((out.argmax(1) == y).float().mean()))
    assert record["personal_accuracy_mean"] == pytest.approx(np.mean(personal), abs=1e-6)
    assert np.mean(personal) > np.mean(plain)  # after one round, masking absent classes helps


def test_fedgela_refuses_the_wrong_model_task_or_values():
    data = federate("digits", num_nodes=3, partition="iid", seed=0)
    with pytest.raises(ValueError, match="etf_mlp"):
        Simulation(data, "mlp", "fedgela", task="fedgela")
    sim = Simulation(data, "etf_mlp", "fedgela", algorithm_kwargs={"local_steps": 1},
                     evaluation=Evaluation(every=0))
    with pytest.raises(ValueError, match="task='fedgela'"):
        sim.run(rounds=1)
    with pytest.raises(ValueError, match="clip_norm"):
        Simulation(data, "etf_mlp", "fedgela", task="fedgela",
                   algorithm_kwargs={"clip_norm": -1.0})
    for kwargs, word in (({"head": "cosine"}, "head"), ({"norm": "batch"}, "norm"),
                         ({"temperature": 0.0}, "temperature"),
                         ({"head": "linear", "temperature": 0.1}, "temperature")):
        with pytest.raises(ValueError, match=word):
            build_model("etf_mlp", (64,), 10, **kwargs)


def test_the_quick_experiment_runs_every_arm(tmp_path):
    spec = importlib.util.spec_from_file_location("fedgela_run",
                                                  REPO / "experiments" / "fedgela" / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    assert run.main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "quick.json").read_text())
    assert set(result["table"]) == {"digits/fedavg", "digits/fedgela", "digits/fedgela_tau0.1"}
    assert (tmp_path / "fedgela_quick.png").exists()
    # the experiment's split: every client holds exactly 3 classes, all of them in its test
    labels = np.repeat(np.arange(10), 30)
    parts = run.class_per(labels, 20, 3, seed=0)
    assert all(len(set(labels[p])) == 3 for p in parts)
    assert sorted(np.concatenate(parts).tolist()) == list(range(300))
