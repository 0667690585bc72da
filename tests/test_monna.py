"""MoNNA (monna_dl): the paper's momentum half-step, the "first n - f messages" communication
model, and one whole round against a hand computation of NNA; its errors; a short robustness
run; the experiment's quick mode."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from murmura.algorithms import make_algorithm
from murmura.algorithms.base import RoundContext
from murmura.algorithms.monna import NearestNeighbourMixing, first_arrivals
from murmura.data import FederatedData, federate
from murmura.robust import Adversary, MoNNA
from murmura.swarm import Evaluation, Simulation
from murmura.topology import make_topology

ROOT = Path(__file__).resolve().parents[1]
NO_EVAL = Evaluation(every=0)


def swarm(n_h: int, f: int, seed: int = 0) -> FederatedData:
    """digits split among ``n_h`` honest nodes (Dirichlet 1); the ``f`` attackers appended
    after them hold copies of the first honest parts (their own training is never used)."""
    honest = federate("digits", n_h, "dirichlet", alpha=1.0, seed=seed)
    return FederatedData.from_parts(honest.dataset, list(honest.parts) + list(honest.parts[:f]))


# ---------------------------------------------------------------------------------------------
# the local step


def test_the_local_step_is_polyak_momentum_with_dampening_beta():
    """m <- beta m + (1 - beta) g;  x <- x - lr m, by hand: x0 = 1, g = 2 then 4, beta = 0.5,
    lr = 0.2: m1 = 1, x1 = 0.8; m2 = 0.5 + 2 = 2.5, x2 = 0.8 - 0.5 = 0.3."""
    rule = make_algorithm("monna_dl", lr=0.2, momentum=0.5).local_rule
    x, state = torch.tensor([1.0]), {"momentum": torch.zeros(1)}
    for g in (2.0, 4.0):
        rule.update(x, torch.tensor([g]), state, None)
    assert torch.allclose(x, torch.tensor([0.3])) and rule.state_names == ("momentum",)
    plain = make_algorithm("monna_dl", lr=0.2, momentum=0.0).local_rule  # beta = 0: plain SGD
    y = torch.tensor([1.0])
    plain.update(y, torch.tensor([2.0]), {}, None)
    assert torch.allclose(y, torch.tensor([0.6]))


# ---------------------------------------------------------------------------------------------
# who a node hears


def test_first_arrivals_hear_the_adversary_first_then_a_keyed_sample_of_the_others():
    n, wait, bad = 8, 5, (6, 7)
    mixing = make_topology("complete", n).mixing_at(0)
    heard = first_arrivals(mixing, wait, bad, seed=3, round=0).dense() > 0
    assert heard.diagonal().all()
    assert heard[:6].sum(1).tolist() == [wait] * 6  # own + both attackers + 2 honest others
    assert heard[:6, 6:].all() and heard[6:].all()  # the adversary hears everyone
    again = first_arrivals(mixing, wait, bad, seed=3, round=0).dense() > 0
    later = first_arrivals(mixing, wait, bad, seed=3, round=1).dense() > 0
    assert torch.equal(heard, again) and not torch.equal(heard, later)
    # over rounds every honest other is heard equally often: 2 of 5 others, 0.4
    rate = sum((first_arrivals(mixing, wait, bad, seed=0, round=r).dense() > 0)[:6, :6].float()
               for r in range(300)) / 300
    off = rate[~torch.eye(6, dtype=torch.bool)]
    assert abs(float(off.mean()) - 0.4) < 1e-6 and float((off - 0.4).abs().max()) < 0.12


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 12), data=st.data())
def test_first_arrivals_never_hear_beyond_the_graph_or_more_than_wait(n, data):
    wait = data.draw(st.integers(1, n))
    bad = data.draw(st.lists(st.integers(0, n - 1), max_size=n - 1, unique=True))
    mixing = make_topology("ring", n).mixing_at(0) if n > 3 else make_topology(
        "complete", n).mixing_at(0)
    links = mixing.dense() > 0
    heard = first_arrivals(mixing, wait, bad, seed=0, round=data.draw(st.integers(0, 9)))
    mask = heard.dense() > 0
    assert not (mask & ~links).any()  # only along the graph's links
    assert torch.allclose(heard.dense().sum(1), torch.ones(n))
    first = torch.zeros(n, dtype=torch.bool)
    first[bad] = True
    degree = links.sum(1)  # self included
    expected = torch.where(first, degree, torch.minimum(degree, torch.tensor(wait)))
    assert mask.sum(1).tolist() == expected.tolist()
    # a receiver that hears fewer than all attackers among its neighbours hears only them
    short = (~first) & ((links & first.unsqueeze(0)).sum(1) - first.long() >= wait - 1)
    assert not (mask[short] & ~first.unsqueeze(0) & ~torch.eye(n, dtype=torch.bool)[short]).any()


def test_the_plan_counts_every_link_of_the_graph_but_aggregates_what_was_heard():
    rule = NearestNeighbourMixing(MoNNA(f=1), wait=4, delivered_first=(5,))
    topology = make_topology("complete", 6)
    plan = rule.plan(RoundContext(2, 10, 0, 6, torch.device("cpu")), None, topology, None)
    assert plan.routes.num_messages == 30 and plan.matrix.num_messages == 5 * 3 + 5
    with pytest.raises(ValueError, match="delivered_first"):
        NearestNeighbourMixing(MoNNA(f=1), wait=4, delivered_first=(9,)).plan(
            RoundContext(0, 10, 0, 6, torch.device("cpu")), None, topology, None)


# ---------------------------------------------------------------------------------------------
# one round, by hand


def nna(own: np.ndarray, received: np.ndarray, f: int) -> np.ndarray:
    """The mean of the len(received) - f rows nearest own (own among them)."""
    order = np.argsort(np.linalg.norm(received - own, axis=1), kind="stable")
    return received[order[: len(received) - f]].mean(0)


def test_one_round_is_half_steps_then_nna_over_the_first_n_minus_f_messages():
    n_h, f, lr, beta = 7, 2, 0.5, 0.9
    n = n_h + f
    data, bad = swarm(n_h, f), tuple(range(n_h, n))
    kwargs = {"f": f, "lr": lr, "momentum": beta, "wait": n - f, "delivered_first": list(bad)}
    sim = Simulation(data, "logreg", "monna_dl", "complete", algorithm_kwargs=kwargs,
                     adversary=Adversary("sign_flip", nodes=bad), seed=0, evaluation=NO_EVAL)
    sim.run(rounds=1)
    # the half-steps: the same local step alone (same seed: same initial model and batches)
    alone = Simulation(data, "logreg", "local_sgd", None, seed=0, evaluation=NO_EVAL,
                       algorithm_kwargs={"lr": lr * (1 - beta), "momentum": beta,
                                         "local_steps": 1, "batch_size": 25})
    alone.run(rounds=1)
    half = alone.params.double().numpy()
    sent = half.copy()
    sent[n_h:] = -half[:n_h].mean(0)  # sign flip of the honest half-steps, from every attacker
    heard = first_arrivals(make_topology("complete", n).mixing_at(0), n - f, bad, 0, 0).dense()
    for i in range(n_h):
        others = [j for j in range(n) if heard[i, j] > 0 and j != i]
        assert len(others) == n - f - 1 and set(bad) <= set(others)
        expected = nna(half[i], np.concatenate([half[i : i + 1], sent[others]]), f)
        np.testing.assert_allclose(sim.params[i].double().numpy(), expected, atol=2e-6)


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("kwargs,words", [
    ({"f": 3, "wait": 6}, ["wait=6", "2 f + 1 = 7"]),
    ({"wait": 7, "f": 2, "aggregator": {"name": "krum", "f": 3}}, ["wait=7", "Krum", "9"]),
    ({"f": -1}, ["f", "integer >= 0"]),
    ({"delivered_first": [1]}, ["delivered_first", "set wait"]),
    ({"wait": 5, "delivered_first": [1, 1]}, ["delivered_first", "twice"]),
    ({"wait": 5, "delivered_first": 3}, ["delivered_first", "list of node ids"]),
    ({"momentum": 1.0}, ["momentum", "[0, 1)"]),
    ({"lr": 0}, ["lr", "(0, inf)"]),
    ({"local_steps": 0}, ["local_steps", ">= 1"]),
])
def test_bad_parameters_are_clear_errors(kwargs, words):
    with pytest.raises(ValueError) as error:
        make_algorithm("monna_dl", **kwargs)
    assert all(w in str(error.value) for w in words)


def test_waiting_for_more_messages_than_there_are_nodes_is_refused():
    sim = Simulation(swarm(5, 0), "logreg", "monna_dl", "complete", evaluation=NO_EVAL,
                     algorithm_kwargs={"wait": 6})
    with pytest.raises(ValueError, match="wait=6 must be at most the 5 nodes"):
        sim.run(rounds=1)


# ---------------------------------------------------------------------------------------------
# robustness, briefly


def test_nna_survives_gaussian_vectors_that_break_the_plain_average():
    n_h, f = 13, 3
    bad = tuple(range(n_h, n_h + f))
    final = {}
    for rule in ("monna", "average"):
        kwargs = {"f": f, "wait": n_h, "delivered_first": list(bad)}
        if rule == "average":
            kwargs["aggregator"] = "average"
        sim = Simulation(swarm(n_h, f), "logreg", "monna_dl", "complete", seed=0,
                         algorithm_kwargs=kwargs, adversary=Adversary("gaussian", nodes=bad),
                         evaluation=Evaluation(every=40))
        final[rule] = sim.run(rounds=40).final["honest_node_accuracy_mean"]
    assert final["monna"] > 0.85 and final["monna"] > final["average"] + 0.4


# ---------------------------------------------------------------------------------------------
# the experiment


def test_the_experiment_quick_mode_runs(tmp_path):
    spec = importlib.util.spec_from_file_location("monna_run", ROOT / "experiments/monna/run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    assert run.main(["--quick", "--out", str(tmp_path), "--workers", "1"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"table", "criteria"} <= set(results["digits"])
    assert (tmp_path / "monna.png").stat().st_size > 0
