"""SGD variants that add node-state terms to the gradient (FedProx, SCAFFOLD, gradient tracking)
take the fused step and match ``vmap(grad)`` + their own update rule."""

import pytest
import torch

from murmura.algorithms import (
    Algorithm,
    Every,
    FullParticipation,
    LocalWork,
    make_algorithm,
)
from murmura.algorithms.federated import ProxSGD, ServerOptimize
from murmura.algorithms.plans import ServerAverageRule
from murmura.data import federate
from murmura.swarm import Evaluation, Simulation

CASES = [
    ("fedprox", None, {"mu": 0.3, "local_steps": 3, "clients_per_round": 4}),
    ("fedprox", None, {"mu": 0.3, "local_epochs": 1.0}),  # unequal epochs: masked steps
    ("scaffold", None, {"local_steps": 3, "clients_per_round": 4}),
    ("scaffold", None, {"local_steps": 1}),  # one step: the scratch-block path
    ("gradient_tracking", "ring", {"local_steps": 3}),
    ("gradient_tracking", "ring", {"local_epochs": 1.0}),
]


def run(name, topology, params, fused, model="mlp"):
    data = federate("digits", num_nodes=8, partition="dirichlet", alpha=0.5, seed=0)
    sim = Simulation(data, model, name, topology, fused=fused, model_kwargs={"hidden": [16]},
                     algorithm_kwargs={"lr": 0.1, "batch_size": 16, **params},
                     evaluation=Evaluation(every=0))
    sim.run(rounds=3)
    return sim


@pytest.mark.parametrize("name,topology,params", CASES, ids=lambda c: str(c))
def test_fused_variant_equals_the_generic_step(name, topology, params):
    fused = run(name, topology, params, fused=True)
    generic = run(name, topology, params, fused=False)
    assert fused._fused is not None and generic._fused is None
    assert torch.allclose(fused.params, generic.params, atol=2e-5)
    for key in fused.node_state:
        assert torch.allclose(fused.node_state[key], generic.node_state[key], atol=2e-4), key


def test_fused_prox_with_momentum_and_weight_decay():
    def build(fused):
        algorithm = Algorithm(
            name="prox_momentum", local_rule=ProxSGD(0.1, momentum=0.9, weight_decay=0.01,
                                                     mu=0.2),
            local_work=LocalWork(batch_size=16, steps=3, reset_state_each_round=True),
            communication=ServerOptimize("samples"), schedule=Every(1),
            participation=FullParticipation(), server=ServerAverageRule())
        data = federate("digits", num_nodes=6, partition="iid", seed=0)
        sim = Simulation(data, "mlp", algorithm, fused=fused, model_kwargs={"hidden": [16]},
                         evaluation=Evaluation(every=0))
        sim.run(rounds=2)
        return sim.params

    assert torch.allclose(build(True), build(False), atol=2e-5)


def test_the_correction_is_used():
    """A mutation guard: the fused step with the correction dropped differs."""
    algorithm = make_algorithm("scaffold", lr=0.1, local_steps=3)
    assert algorithm.local_rule.fused_terms()[1]
    prox = make_algorithm("fedprox", mu=0.5, lr=0.1, local_steps=3)
    a = run("fedprox", None, {"mu": 0.5, "local_steps": 3}, fused=True).params
    b = run("fedavg", None, {"local_steps": 3}, fused=True).params
    assert prox.local_rule.fused_terms()[0] == 0.5
    assert not torch.allclose(a, b, atol=1e-4)
