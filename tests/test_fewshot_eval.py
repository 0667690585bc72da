"""Per-node few-shot evaluation (issue 16, spec federated.md §11): each node labels a few of its
own held-out samples and infers the rest on its model's features."""

import numpy as np
import pytest
import torch
from torch import nn

import murmura
from murmura.config import ConfigError, Experiment
from murmura.learners.fewshot import simpleshot
from murmura.swarm import Evaluation
from murmura.swarm.fewshot_eval import feature_function, fewshot_accuracies, node_task


def test_node_task_keeps_classes_with_a_query_and_relabels_them():
    labels = torch.tensor([5, 5, 5, 7, 7, 9, 3, 3])
    task = node_task(np.array([0, 1, 2, 3, 4, 5]), labels, shots=1, seed=0, node=0)
    assert task.k == 2  # class 9 (one sample) is left out; 3 is not this node's
    assert sorted(labels[task.support].tolist()) == [5, 7]
    assert sorted(labels[task.query].tolist()) == [5, 5, 7]
    # local labels 0..k-1 follow the original classes in order
    assert (labels[task.query] == torch.tensor([5, 7])[task.query_labels]).all()
    assert node_task(np.array([0, 1, 2, 5]), labels, shots=1, seed=0, node=0) is None
    again = node_task(np.array([0, 1, 2, 3, 4, 5]), labels, shots=1, seed=0, node=0)
    assert torch.equal(task.support, again.support)  # fixed for the run


def test_features_are_the_penultimate_layer_of_a_sequential():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 4))
    params = dict(model.named_parameters())
    x = torch.tensor([[1.0, -2.0]])
    expected = torch.relu(model[0](x))
    assert torch.allclose(feature_function(model)(params, x), expected)
    single = nn.Linear(2, 4)
    assert torch.allclose(feature_function(single)(dict(single.named_parameters()), x), single(x))


def test_accuracy_by_hand_on_two_clusters():
    train_x = torch.tensor([[0.0, 1.0], [0.1, 0.9], [1.0, 0.0], [0.9, 0.1], [0.2, 1.0]])
    labels = torch.tensor([0, 0, 1, 1, 0])
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2))
    params = dict(model.named_parameters())
    task = node_task(np.arange(5), labels, shots=1, seed=1, node=0)
    acc = fewshot_accuracies(feature_function(model), [params, params], [task, None], train_x,
                             "simpleshot")
    assert acc[0].item() == 1.0 and acc[1].isnan()
    # the same as SimpleShot on the CL2N features directly
    points = train_x[torch.cat([task.support, task.query])].double()
    points = points - points.mean(0)
    points = points / points.norm(dim=1, keepdim=True)
    guess = simpleshot(points[:2], task.support_labels, points[2:], 2)
    assert (guess == task.query_labels).double().mean().item() == acc[0].item()


def test_a_simulation_reports_each_nodes_fewshot_accuracy():
    data = murmura.federate("digits", num_nodes=4, partition="iid", seed=0).holdout(0.3)
    sim = murmura.Simulation(data, "mlp", "fedavg", algorithm_kwargs={"local_steps": 5},
                             model_kwargs={"hidden": [16]},
                             evaluation=Evaluation(every=1, node_samples=0, fewshot_shots=1,
                                                   fewshot_method="simpleshot"))
    record = sim.run(rounds=2)[-1]
    assert record["fewshot_nodes"] == 4
    assert 0.2 < record["fewshot_accuracy_min"] <= record["fewshot_accuracy_mean"] \
        <= record["fewshot_accuracy_max"] <= 1.0
    # the engine's numbers are the helper's, on each node's own model and held-out samples
    rows = [{k: v[0] for k, v in sim.spec.views(sim.params[i : i + 1]).items()} for i in range(4)]
    tasks = [node_task(data.test_parts[i], data.dataset.train_y, 1, 0, i) for i in range(4)]
    direct = fewshot_accuracies(feature_function(sim.model), rows, tasks, data.dataset.train_x,
                                "simpleshot")
    assert direct.mean().item() == pytest.approx(record["fewshot_accuracy_mean"])
    assert direct.min().item() == pytest.approx(record["fewshot_accuracy_min"])


def test_fewshot_evaluation_refuses_what_it_cannot_do():
    data = murmura.federate("digits", num_nodes=2, partition="iid", seed=0)
    with pytest.raises(ValueError, match="local_test_fraction"):
        murmura.Simulation(data, "logreg", "fedavg", evaluation=Evaluation(fewshot_shots=1))
    with pytest.raises(ValueError, match="choose one of simpleshot"):
        Evaluation(fewshot_shots=1, fewshot_method="knn")
    with pytest.raises(ValueError, match="fewshot_shots"):
        Evaluation(fewshot_shots=-1)
    with pytest.raises(ConfigError, match="local_test_fraction"):
        Experiment.from_dict({"evaluation": {"fewshot_shots": 1}}).check()
