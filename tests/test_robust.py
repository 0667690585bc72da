"""Robust aggregators and attacks (murmura.robust) against numpy's definitions and ByzFL's own
outputs; the adversary's placement; the errors a robust configuration can meet."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import trim_mean

from murmura.config import ConfigError, Experiment
from murmura.data import federate
from murmura.robust import (
    Adversary,
    Average,
    Gaussian,
    Krum,
    Median,
    SignFlip,
    TrimmedMean,
    make_aggregator,
    make_attack,
)
from murmura.robust.aggregators import check_messages
from murmura.swarm import Evaluation, Simulation
from murmura.swarm.random import key_normal, node_keys

NO_EVAL = Evaluation(every=0)
# ByzFL 0.0.11's own outputs, copied from shared/specs/byzfl_reference.json
REFERENCE = Path(__file__).resolve().parent / "data" / "byzfl_reference.json"


def stack(rng: np.random.Generator, k: int, d: int, offset: float = 5.0) -> np.ndarray:
    # away from zero, so zero padding counted as data would move every statistic
    return (rng.normal(size=(k, d)) + offset).astype(np.float32)


def call(aggregator, rows: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    received = torch.from_numpy(rows)
    mask_t = torch.ones(len(rows)) if mask is None else torch.from_numpy(mask)
    return aggregator(received[0], received, mask_t).numpy()


def krum_numpy(rows: np.ndarray, f: int) -> np.ndarray:
    """ByzFL's Krum: score each vector by the sum (equivalently the mean) of its squared
    distances to its n - f - 1 nearest other vectors; return the best-scored vector."""
    x = rows.astype(np.float64)
    n = len(x)
    dist = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    scores = []
    for i in range(n):
        others = np.sort(np.delete(dist[i], i))
        scores.append(others[: n - f - 1].sum())
    return rows[int(np.argmin(scores))]


def trimmed_numpy(rows: np.ndarray, f: int) -> np.ndarray:
    return np.sort(rows.astype(np.float64), axis=0)[f : len(rows) - f].mean(axis=0)


# ---------------------------------------------------------------------------------------------
# numpy's definitions, padding, vmap


@pytest.mark.parametrize("k", [1, 2, 3, 6, 7])
def test_median_is_numpys_median(k):
    rng = np.random.default_rng(k)
    rows = stack(rng, k, 9)
    np.testing.assert_allclose(call(Median(), rows), np.median(rows, axis=0), rtol=1e-6)


@pytest.mark.parametrize("k,f", [(3, 1), (5, 1), (6, 2), (9, 3), (10, 0)])
def test_trimmed_mean_with_a_count_is_sort_and_slice(k, f):
    rows = stack(np.random.default_rng(10 * k + f), k, 7)
    np.testing.assert_allclose(call(TrimmedMean(f=f), rows), trimmed_numpy(rows, f), rtol=1e-6)


@pytest.mark.parametrize("k,fraction", [(4, 0.25), (5, 0.2), (7, 0.3), (10, 0.1), (11, 0.45),
                                        (3, 0.0), (9, 0.49)])
def test_trimmed_mean_with_a_fraction_is_scipys_trim_mean(k, fraction):
    rows = stack(np.random.default_rng(k), k, 6)
    np.testing.assert_allclose(call(TrimmedMean(fraction=fraction), rows),
                               trim_mean(rows.astype(np.float64), fraction, axis=0), rtol=1e-6)


@pytest.mark.parametrize("k,f", [(4, 1), (6, 1), (7, 2), (9, 3)])
def test_krum_is_byzfls_definition(k, f):
    rows = stack(np.random.default_rng(k + f), k, 5, offset=0.0)
    np.testing.assert_array_equal(call(Krum(f=f), rows), krum_numpy(rows, f))


AGGREGATORS = {
    "average": Average(),
    "median": Median(),
    "trimmed_f1": TrimmedMean(f=1),
    "trimmed_fraction": TrimmedMean(fraction=0.25),
    "krum": Krum(f=1),
}


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
@pytest.mark.parametrize("padding", ["zeros", "garbage"])
def test_padded_rows_do_not_change_the_result(name, padding):
    aggregator = AGGREGATORS[name]
    rng = np.random.default_rng(3)
    for k in (3, 4, 5, 8):
        rows = stack(rng, k, 6, offset=1.0)
        pad = (np.zeros((3, 6)) if padding == "zeros" else rng.normal(size=(3, 6)) * 1e3)
        padded = np.concatenate([rows, pad.astype(np.float32)])
        mask = np.concatenate([np.ones(k), np.zeros(3)]).astype(np.float32)
        np.testing.assert_allclose(call(aggregator, padded, mask), call(aggregator, rows),
                                   rtol=1e-6, atol=1e-6)


def numpy_reference(name: str, rows: np.ndarray) -> np.ndarray:
    if name == "average":
        return rows.astype(np.float64).mean(axis=0)
    if name == "median":
        return np.median(rows, axis=0)
    if name == "trimmed_f1":
        return trimmed_numpy(rows, 1)
    if name == "trimmed_fraction":
        return trim_mean(rows.astype(np.float64), 0.25, axis=0)
    return krum_numpy(rows, 1)


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_vmapped_over_receivers_with_different_neighbourhood_sizes(name):
    """What the engine does on a graph: one padded stack per receiver, vmapped."""
    rng = np.random.default_rng(7)
    counts = [3, 4, 5, 8, 6, 3]  # Krum(f=1) needs at least 3 to be defined, trimmed f=1 too
    width, d = max(counts), 5
    received = rng.normal(size=(len(counts), width, d)).astype(np.float32)
    mask = np.zeros((len(counts), width), dtype=np.float32)
    for b, count in enumerate(counts):
        mask[b, :count] = 1.0
        received[b, count:] = 0.0  # the engine pads with zeros
    received_t = torch.from_numpy(received)
    out = torch.vmap(AGGREGATORS[name])(received_t[:, 0], received_t, torch.from_numpy(mask))
    for b, count in enumerate(counts):
        np.testing.assert_allclose(out[b].numpy(), numpy_reference(name, received[b, :count]),
                                   rtol=1e-5, atol=1e-6, err_msg=f"receiver {b}")


# ---------------------------------------------------------------------------------------------
# ByzFL's own outputs


def byzfl_cases() -> list[dict]:
    spec = json.loads(REFERENCE.read_text())
    wanted = {"Average": Average(), "Median": Median(), "TrMean": TrimmedMean(f=2),
              "Krum": Krum(f=2), "SignFlipping": SignFlip()}
    cases = []
    for case in spec["cases"]:
        if case["name"] in wanted:
            if case["name"] in ("TrMean", "Krum"):
                assert case["params"] == {"f": 2}
            cases.append({**case, "rule": wanted[case["name"]],
                          "rows": spec["inputs"][case["input"]],
                          "atol": spec["tolerance"]["atol"]})
    return cases


@pytest.mark.skipif(not REFERENCE.exists(), reason="shared/specs/byzfl_reference.json not found")
def test_matches_byzfl_reference_outputs():
    cases = byzfl_cases()
    assert sorted(c["name"] for c in cases) == ["Average", "Krum", "Median", "SignFlipping",
                                                "TrMean"]
    for case in cases:
        rows = torch.tensor(case["rows"], dtype=torch.float32)
        mask = torch.ones(len(rows))
        if case["kind"] == "aggregator":
            out = case["rule"](rows[0], rows, mask)
        else:  # an attack sees the honest vectors H
            out = case["rule"](rows[0], rows, mask, torch.tensor(0))
        np.testing.assert_allclose(out.numpy(), np.array(case["output"]), atol=case["atol"],
                                   rtol=0, err_msg=case["name"])


# ---------------------------------------------------------------------------------------------
# a property: the order of the received messages does not matter


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(data=st.data(), k=st.integers(1, 7), pad=st.integers(0, 3), d=st.integers(1, 4),
       seed=st.integers(0, 2**32 - 1), integers=st.booleans())
def test_permutation_of_received_messages_does_not_matter(data, k, pad, d, seed, integers):
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(k + pad, d))
    if integers:  # many ties: sort-based rules must still not care
        rows = np.round(rows * 2)
    rows = rows.astype(np.float32)
    mask = np.concatenate([np.ones(k), np.zeros(pad)]).astype(np.float32)
    rows[k:] = 0.0
    order = np.array(data.draw(st.permutations(range(k + pad))))
    names = ["average", "median", "trimmed_f1", "trimmed_fraction"]
    # Krum breaks ties by position, so only where scores are distinct: not with ties in the
    # data, nor with a single neighbour scored (k - f - 1 = 1: mutual nearest vectors tie)
    if not integers and k >= 4:
        names.append("krum")
    for name in names:
        aggregator = AGGREGATORS[name]
        straight = call(aggregator, rows, mask)
        shuffled = call(aggregator, rows[order], mask[order])
        np.testing.assert_allclose(shuffled, straight, rtol=1e-6, atol=1e-6, err_msg=name)


# ---------------------------------------------------------------------------------------------
# attacks


def test_sign_flip_is_minus_the_mean_of_the_honest_messages_it_sees():
    honest = torch.tensor([[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]])
    mask = torch.tensor([1.0, 1.0, 0.0])  # the third row is padding
    out = SignFlip()(honest[0], honest, mask, torch.tensor(0))
    assert out.tolist() == [-2.0, -3.0]


def test_gaussian_draws_differ_per_key_and_are_reproducible():
    attack = Gaussian(mu=1.0, std=2.0)
    own = torch.zeros(20000)
    honest, mask = torch.zeros(2, 20000), torch.ones(2)
    a = attack(own, honest, mask, torch.tensor(11))
    assert torch.equal(a, attack(own, honest, mask, torch.tensor(11)))
    b = attack(own, honest, mask, torch.tensor(12))
    assert not torch.equal(a, b)
    assert float((a - b).abs().mean()) > 1.0  # independent draws, not a shifted copy
    assert abs(float(a.mean()) - 1.0) < 0.05
    assert abs(float(a.std()) - 2.0) < 0.05
    keys = torch.tensor([11, 12, 13])
    batched = torch.vmap(attack, in_dims=(0, None, None, 0))(own.expand(3, -1), honest, mask,
                                                             keys)
    assert torch.equal(batched[0], a) and torch.equal(batched[1], b)
    with pytest.raises(ValueError, match="std must be >= 0"):
        Gaussian(std=-1.0)


def test_each_attacker_at_a_server_sends_its_own_gaussian_draw():
    """fedavg with a plain mean at the server: the aggregate is the honest clients' models and
    one N(mu, std^2) vector per attacker, drawn from (seed, 'attack', node, round, plan)."""
    data = federate("digits", num_nodes=6, partition="iid", seed=0)
    kwargs = dict(lr=0.1, local_steps=2, aggregator="average")
    adversary = Adversary({"name": "gaussian", "mu": 0.5, "std": 3.0}, count=2)
    attacked = Simulation(data, "logreg", "fedavg", seed=3, algorithm_kwargs=kwargs,
                          adversary=adversary, evaluation=NO_EVAL)
    honest = Simulation(data, "logreg", "fedavg", seed=3, algorithm_kwargs=kwargs,
                        evaluation=NO_EVAL)
    honest.train(None, 0)
    messages = honest.params.clone()
    bad = torch.nonzero(attacked.malicious).flatten()
    assert len(bad) == 2
    keys = node_keys(3, "attack", bad, 0, 0)
    for node, key in zip(bad.tolist(), keys):
        messages[node] = 0.5 + 3.0 * key_normal(key, (attacked.spec.dim,))
    assert not torch.allclose(messages[bad[0]], messages[bad[1]])
    attacked.step(1)
    torch.testing.assert_close(attacked.params[0], messages.mean(0), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# the adversary


def test_placement_is_drawn_from_the_seed():
    adversary = Adversary("sign_flip", count=3)
    first = adversary.place(12, seed=4)
    assert first.dtype == torch.bool and int(first.sum()) == 3
    assert torch.equal(first, adversary.place(12, seed=4))
    placements = {tuple(adversary.place(12, seed=s).nonzero().flatten().tolist())
                  for s in range(8)}
    assert len(placements) > 1  # other seeds, other nodes
    assert int(Adversary("sign_flip", fraction=0.25).place(8, seed=0).sum()) == 2
    assert int(Adversary("sign_flip", fraction=0.01).place(8, seed=0).sum()) == 1  # at least 1


def test_given_nodes_are_the_malicious_ones():
    mask = Adversary("sign_flip", nodes=(1, 4)).place(6, seed=0)
    assert mask.tolist() == [False, True, False, False, True, False]
    with pytest.raises(ValueError, match=r"nodes must lie in \[0, 6\)"):
        Adversary("sign_flip", nodes=(2, 6)).place(6, seed=0)


def test_a_simulation_places_the_adversary_by_its_seed():
    data = federate("digits", num_nodes=8, partition="iid", seed=0)
    adversary = Adversary("sign_flip", fraction=0.25)
    sims = [Simulation(data, "logreg", "dsgd", "complete", seed=seed, adversary=adversary,
                       algorithm_kwargs=dict(lr=0.1, local_steps=1), evaluation=NO_EVAL)
            for seed in (5, 5)]
    assert torch.equal(sims[0].malicious, adversary.place(8, 5))
    assert torch.equal(sims[0].malicious, sims[1].malicious)


@pytest.mark.parametrize("kwargs,message", [
    (dict(fraction=0.9), "leaves no honest node"),  # round(0.9 * 4) = 4 of 4
    (dict(count=4), "leaves no honest node"),
    (dict(nodes=(0, 1, 2, 3)), "leaves no honest node"),
])
def test_an_adversary_leaving_no_honest_node_is_an_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Adversary("sign_flip", **kwargs).place(4, seed=0)


@pytest.mark.parametrize("kwargs,message", [
    (dict(), "exactly one of fraction, count or nodes"),
    (dict(fraction=0.2, count=1), "exactly one of fraction, count or nodes"),
    (dict(fraction=1.0), r"fraction must lie in \(0, 1\)"),
    (dict(count=0), "count must be a positive integer"),
    (dict(count=1, placement="hubs"), "unknown placement 'hubs'"),
])
def test_adversary_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Adversary("sign_flip", **kwargs)


# ---------------------------------------------------------------------------------------------
# clear errors


def test_unknown_names_suggest_the_closest():
    with pytest.raises(KeyError, match="Did you mean 'median'"):
        make_aggregator("medain")
    with pytest.raises(KeyError, match="Did you mean 'trimmed_mean'"):
        make_aggregator({"name": "trimmed_maen", "f": 1})
    with pytest.raises(KeyError, match="Did you mean 'sign_flip'"):
        make_attack("sign_flp")
    with pytest.raises(ValueError, match="needs an attack"):
        make_attack(None)


@pytest.mark.parametrize("kwargs,message", [
    (dict(fraction=0.5), r"fraction must lie in \[0, 0.5\)"),
    (dict(fraction=-0.1), r"fraction must lie in \[0, 0.5\)"),
    (dict(), "exactly one of f"),
    (dict(f=1, fraction=0.1), "exactly one of f"),
    (dict(f=-1), "f must be an integer >= 0"),
    (dict(f=1.5), "f must be an integer >= 0"),
])
def test_trimmed_mean_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrimmedMean(**kwargs)


def test_krum_needs_more_than_2f_plus_2_messages():
    assert [Krum(f=f).min_messages() for f in (0, 1, 2)] == [3, 5, 7]
    check_messages(Krum(f=1), 5, "a receiver gets")
    with pytest.raises(ValueError, match="Krum needs at least 5 messages"):
        check_messages(Krum(f=1), 4, "a receiver gets")
    with pytest.raises(ValueError, match="f must be an integer >= 0"):
        Krum(f=-1)


def test_krum_with_too_few_neighbours_fails_at_construction():
    data = federate("digits", num_nodes=8, partition="iid", seed=0)

    def build(topology, **topology_kwargs):
        return Simulation(data, "logreg", "dsgd", topology, topology_kwargs=topology_kwargs,
                          algorithm_kwargs=dict(lr=0.1, local_steps=1,
                                                aggregator={"name": "krum", "f": 1}),
                          evaluation=NO_EVAL)

    # a ring node aggregates itself and 2 neighbours: 3 < 2 f + 3
    with pytest.raises(ValueError, match=r"Krum needs at least 5 messages .* fewest neighbours "
                                         r"gets 3"):
        build("ring")
    build("random_regular", k=4)  # 5 messages: enough
    # at a server: one upload per client of the round
    for clients, ok in ((4, False), (5, True)):
        kwargs = dict(lr=0.1, local_steps=1, clients_per_round=clients,
                      aggregator={"name": "krum", "f": 1})
        if ok:
            Simulation(data, "logreg", "fedavg", algorithm_kwargs=kwargs, evaluation=NO_EVAL)
        else:
            with pytest.raises(ValueError, match="Krum needs at least 5 messages"):
                Simulation(data, "logreg", "fedavg", algorithm_kwargs=kwargs,
                           evaluation=NO_EVAL)


def experiment(algorithm: dict, topology: dict | None = None, **extra) -> Experiment:
    values = {"rounds": 2, "data": {"dataset": "digits", "nodes": 8},
              "model": {"name": "logreg"}, "algorithm": {"lr": 0.1, **algorithm}, **extra}
    if topology is not None:
        values["topology"] = topology
    return Experiment.from_dict(values)


def test_experiment_check_refuses_krum_with_too_few_neighbours():
    krum = {"name": "krum", "f": 1}
    with pytest.raises(ConfigError, match="algorithm.aggregator: aggregator Krum needs at least "
                                          "5 messages"):
        experiment({"name": "dsgd", "aggregator": krum}, {"name": "ring"}).check()
    experiment({"name": "dsgd", "aggregator": krum}, {"name": "random_regular", "k": 4}).check()
    with pytest.raises(ConfigError, match="Krum needs at least 5 messages"):
        experiment({"name": "fedavg", "clients_per_round": 4, "aggregator": krum}).check()
    experiment({"name": "fedavg", "clients_per_round": 5, "aggregator": krum}).check()


def test_experiment_check_names_unknown_aggregators_and_bad_adversaries():
    with pytest.raises(ConfigError, match="Did you mean 'median'"):
        experiment({"name": "fedavg", "aggregator": "meadian"}).check()
    with pytest.raises(ConfigError, match="adversary: .*leaves no honest node"):
        experiment({"name": "fedavg"}, adversary={"attack": "sign_flip", "count": 8}).check()


def test_robust_rule_with_an_adversary_at_a_server_reports_honest_metrics():
    data = federate("digits", num_nodes=8, partition="iid", seed=0)
    sim = Simulation(data, "logreg", "fedavg", seed=1,
                     algorithm_kwargs=dict(lr=0.1, local_steps=2, aggregator="median"),
                     adversary=Adversary("sign_flip", count=2),
                     evaluation=Evaluation(every=1, node_samples=50))
    history = sim.run(2)
    final = history.records[-1]
    for key in ("honest_test_accuracy", "honest_consensus_distance",
                "honest_node_accuracy_mean", "honest_node_accuracy_min"):
        assert math.isfinite(final[key]), key
    assert final["honest_consensus_distance"] == 0.0  # every node holds the server's model


def test_an_adversary_listing_a_node_twice_is_refused():
    from murmura.robust import Adversary

    with pytest.raises(ValueError, match="twice"):
        Adversary("sign_flip", nodes=(1, 1))
