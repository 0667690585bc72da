"""The fused linear-SGD step against torch.func's gradient and the generic SGD rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from murmura.algorithms.rules import SGD
from murmura.data import federate
from murmura.metrics.evaluation import evaluate_nodes
from murmura.swarm import Evaluation, Simulation
from murmura.swarm.fused import fused_step_for, linear_stack, node_accuracy_shared_input
from murmura.swarm.params import ParamSpec


def reference_step(model, spec, X, x, y, weight, rule, buffer=None):
    """vmap(grad) of the engine's losses, then the generic SGD rule: what the engine did before."""

    def loss(params, xb, yb, wb):
        out = functional_call(model, params, (xb,))
        losses = nn.functional.cross_entropy(out, yb, reduction="none")
        if wb is None:
            return losses.mean()
        return (losses * wb).sum() / wb.sum().clamp_min(1.0)

    views = spec.views(X)
    buffers = {} if buffer is None else spec.views(buffer)
    if weight is None:
        grads = vmap(grad(lambda p, a, b: loss(p, a, b, None)))(views, x, y)
        active = None
    else:
        grads = vmap(grad(loss))(views, x, y, weight)
        active = (weight.sum(dim=1) > 0).float()
    with torch.no_grad():
        for name in spec.names:
            p = views[name]
            a = None if active is None else active.view(-1, *(1,) * (p.dim() - 1))
            state = {"momentum": buffers[name]} if buffers else {}
            rule.update(p, grads[name], state, a)


def stack(*hidden_activations, features=6, classes=4, bias=True):
    layers: list[nn.Module] = [nn.Flatten()]
    width = features
    for size, activation in hidden_activations:
        layers.append(nn.Linear(width, size, bias=bias))
        if activation is not None:
            layers.append(activation())
        width = size
    layers.append(nn.Linear(width, classes, bias=bias))
    return nn.Sequential(*layers)


MODELS = {
    "logreg": lambda: stack(),
    "relu": lambda: stack((5, nn.ReLU)),
    "tanh-sigmoid": lambda: stack((5, nn.Tanh), (3, nn.Sigmoid)),
    "no-activation-no-bias": lambda: stack((5, None), bias=False),
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_one_fused_step_matches_vmap_grad_and_the_sgd_rule(name, masked, weight_decay, momentum):
    torch.manual_seed(0)
    model = MODELS[name]()
    spec = ParamSpec.from_module(model)
    rule = SGD(lr=0.3, weight_decay=weight_decay, momentum=momentum)
    step = fused_step_for(model, spec, rule)
    assert step is not None
    nodes, batch = 7, 5
    X = torch.randn(nodes, spec.dim)
    B = torch.randn(nodes, spec.dim) if momentum else None  # a momentum buffer mid-training
    x, y = torch.randn(nodes, batch, 2, 3), torch.randint(0, 4, (nodes, batch))
    weight = None
    if masked:  # some samples out, and nodes 2 and 5 with no sample at all this step
        weight = (torch.rand(nodes, batch) > 0.4).float()
        weight[2] = weight[5] = 0.0
    expected = X.clone()
    expected_b = None if B is None else B.clone()
    reference_step(model, spec, expected, x, y, weight, rule, expected_b)
    fused = X.clone()
    fused_b = None if B is None else B.clone()
    step.scratch_bytes = 4 * 3 * 6 * 5  # rows of the state updated through a scratch of 3 nodes
    step(spec.views(fused), x, y, weight, None if B is None else spec.views(fused_b))
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-6)
    assert not torch.equal(fused, X)
    if B is not None:
        torch.testing.assert_close(fused_b, expected_b, rtol=1e-5, atol=1e-6)
    if masked:  # idle nodes: bit for bit unchanged, weight decay and momentum included
        assert torch.equal(fused[2], X[2]) and torch.equal(fused[5], X[5])
        if B is not None:
            assert torch.equal(fused_b[2], B[2]) and torch.equal(fused_b[5], B[5])


def test_a_momentum_step_needs_its_buffers():
    model = MODELS["relu"]()
    spec = ParamSpec.from_module(model)
    step = fused_step_for(model, spec, SGD(momentum=0.5))
    with pytest.raises(ValueError, match="momentum buffers"):
        step(spec.views(torch.zeros(2, spec.dim)), torch.randn(2, 3, 6),
             torch.randint(0, 4, (2, 3)), None)


def test_only_linear_stacks_with_sgd_are_fused():
    spec_of = ParamSpec.from_module
    mlp = stack((5, nn.ReLU))
    assert fused_step_for(mlp, spec_of(mlp), SGD()) is not None
    assert fused_step_for(mlp, spec_of(mlp), SGD(weight_decay=1e-4)) is not None
    assert fused_step_for(mlp, spec_of(mlp), SGD(momentum=0.9)) is not None
    assert fused_step_for(mlp, spec_of(mlp), SGD(momentum=0.9, nesterov=True)) is None

    class MySGD(SGD):  # a subclass may change the update: not ours to fuse
        pass

    assert fused_step_for(mlp, spec_of(mlp), MySGD()) is None
    rejected = [
        nn.Sequential(nn.Linear(6, 4), nn.ReLU()),  # logits through an activation
        nn.Sequential(nn.ReLU(), nn.Linear(6, 4)),  # activation before the first layer
        nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.ReLU(), nn.Linear(5, 4)),
        nn.Sequential(nn.Linear(6, 5), nn.GELU(), nn.Linear(5, 4)),  # not a covered activation
        nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 4)),
        nn.Sequential(nn.Flatten(start_dim=0), nn.Linear(6, 4)),
        nn.Sequential(nn.Linear(6, 5), nn.Flatten(), nn.Linear(5, 4)),
        nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 4)),
        nn.Linear(6, 4),  # not a Sequential
        nn.Sequential(),
    ]
    for model in rejected:
        try:
            spec = spec_of(model)
        except ValueError:  # no parameters
            continue
        assert fused_step_for(model, spec, SGD()) is None, model
    frozen = stack((5, nn.ReLU))
    frozen[1].bias.requires_grad_(False)
    assert fused_step_for(frozen, spec_of(frozen), SGD()) is None


CASES = {
    # epochs over a Dirichlet split: unequal steps, masked last batches, nodes sorted by size
    "fedavg-epochs-uneven": dict(algorithm="fedavg", topology=None, partition="dirichlet",
                                 algorithm_kwargs=dict(lr=0.1, local_epochs=1.5, batch_size=16,
                                                       weight_decay=0.01)),
    # sampled clients: blocks gathered from scattered rows and written back
    "fedavg-sampled": dict(algorithm="fedavg", topology=None, partition="iid",
                           algorithm_kwargs=dict(lr=0.1, local_steps=3, batch_size=8,
                                                 clients_per_round=5)),
    # several steps: a contiguous working copy per block; one step: the state's rows in place
    "dsgd-steps": dict(algorithm="dsgd", topology="ring", partition="iid",
                       algorithm_kwargs=dict(lr=0.1, local_steps=2, batch_size=8)),
    "dsgd-one-step": dict(algorithm="dsgd", topology="ring", partition="iid",
                          algorithm_kwargs=dict(lr=0.1, local_steps=1, batch_size=8,
                                                weight_decay=0.01)),
    # momentum: buffers carried across rounds (D-SGD) or reset each round (FedAvg), copied with
    # the block or updated in the state's rows, masked on uneven epochs
    "dsgd-momentum-one-step": dict(algorithm="dsgd", topology="ring", partition="iid",
                                   algorithm_kwargs=dict(lr=0.05, local_steps=1, batch_size=8,
                                                         momentum=0.9, weight_decay=0.01)),
    "dsgd-momentum-steps": dict(algorithm="dsgd", topology="ring", partition="iid",
                                algorithm_kwargs=dict(lr=0.05, local_steps=3, batch_size=8,
                                                      momentum=0.9)),
    "fedavg-momentum-uneven-sampled": dict(
        algorithm="fedavg", topology=None, partition="dirichlet",
        algorithm_kwargs=dict(lr=0.05, local_epochs=1.0, batch_size=16, momentum=0.9,
                              clients_per_round=7)),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("model", ["mlp", "logreg"])
def test_simulation_fused_and_generic_paths_agree(case, model):
    spec = CASES[case]
    kwargs = dict(alpha=0.5) if spec["partition"] == "dirichlet" else {}
    data = federate("digits", num_nodes=12, partition=spec["partition"], seed=0, **kwargs)
    results = []
    for fused in (True, False):
        sim = Simulation(data, model, spec["algorithm"], spec["topology"],
                         model_kwargs={"hidden": [16]} if model == "mlp" else None,
                         algorithm_kwargs=spec["algorithm_kwargs"], chunk_size=5,
                         evaluation=Evaluation(every=0), fused=fused, seed=3)
        assert (sim._fused is not None) is fused
        sim.run(3)
        results.append((sim.params.clone(), {k: v.clone() for k, v in sim.local_state.items()}))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-4, atol=1e-5)
    for name, buffer in results[0][1].items():
        torch.testing.assert_close(buffer, results[1][1][name], rtol=1e-4, atol=1e-5)


def test_which_simulations_take_the_fused_step():
    data = federate("digits", num_nodes=4, partition="iid", seed=0)
    assert Simulation(data, "mlp", "fedavg")._fused is not None
    assert Simulation(data, "logreg", "dsgd", "ring",
                      algorithm_kwargs=dict(momentum=0.9))._fused is not None
    assert Simulation(data, "mlp", "fedavg", fused=False)._fused is None


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("with_scratch", [False, True])
def test_node_accuracy_on_shared_samples_matches_per_node_evaluation(name, with_scratch):
    torch.manual_seed(1)
    model = MODELS[name]()
    spec = ParamSpec.from_module(model)
    layers = linear_stack(model, spec)
    X = torch.randn(9, spec.dim)
    x, y = torch.randn(40, 2, 3), torch.randint(0, 4, (40,))
    scratch = torch.empty(40 * 9 * 6) if with_scratch else None
    fast = node_accuracy_shared_input(layers, spec.views(X), x, y, scratch)
    expected = evaluate_nodes(model, spec, X, x, y, chunk_size=4)
    torch.testing.assert_close(fast, expected)
    assert len(set(expected.tolist())) > 1  # the nodes differ: a real comparison


def test_evaluation_reductions_match_float64():
    data = federate("digits", num_nodes=40, partition="dirichlet", alpha=0.3, seed=0)
    for fused in (True, False):
        sim = Simulation(data, "logreg", "dsgd", "ring", evaluation=Evaluation(node_samples=200),
                         algorithm_kwargs=dict(lr=0.5, local_steps=3), fused=fused, seed=2)
        record = sim.run(2)[-1]
        P = sim.params.double()
        mean = P.mean(dim=0)
        expected = float(((P - mean) ** 2).sum(dim=1).mean())
        assert record["consensus_distance"] == pytest.approx(expected, rel=1e-6)
        torch.testing.assert_close(sim.average_params().double(), mean, rtol=0, atol=1e-6)
        subset = sim._node_eval_subset
        test = sim.data.dataset
        accuracies = evaluate_nodes(sim.model, sim.spec, sim.params, test.test_x[subset],
                                    test.test_y[subset])
        assert record["node_accuracy_mean"] == pytest.approx(float(accuracies.mean()), abs=1e-6)
        assert record["node_accuracy_min"] == pytest.approx(float(accuracies.min()))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_step_from_identical_rows_can_share_the_forward_pass(name):
    torch.manual_seed(2)
    model = MODELS[name]()
    spec = ParamSpec.from_module(model)
    step = fused_step_for(model, spec, SGD(lr=0.2, momentum=0.5))
    X = torch.randn(1, spec.dim).repeat(6, 1)  # every node holds the same model
    x, y = torch.randn(6, 4, 6), torch.randint(0, 4, (6, 4))
    per_node, shared = X.clone(), X.clone()
    B1, B2 = torch.zeros_like(X), torch.zeros_like(X)
    step(spec.views(per_node), x, y, None, spec.views(B1))
    step(spec.views(shared), x, y, None, spec.views(B2), shared=True)
    torch.testing.assert_close(shared, per_node, rtol=1e-5, atol=1e-6)
    assert not torch.equal(shared[0], shared[1])  # the nodes' own data made them differ


def test_rows_edited_after_a_server_average_are_not_taken_as_identical():
    """A server average makes every row the same model (the fused step then broadcasts one row
    and shares the first forward pass); a caller editing the state between rounds voids that."""
    data = federate("digits", num_nodes=8, partition="iid", seed=0)
    results = []
    for fused in (True, False):
        sim = Simulation(data, "mlp", "fedavg", model_kwargs={"hidden": [16]}, fused=fused,
                         algorithm_kwargs=dict(lr=0.1, local_steps=3, batch_size=8),
                         evaluation=Evaluation(every=0), seed=1)
        sim.step(3)
        assert sim._rows_identical()
        with torch.no_grad():
            sim.params[3] += 0.05  # e.g. a test or an attack touching one node between rounds
        assert not sim._rows_identical()
        sim.step(3)
        results.append(sim.params.clone())
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-5)
