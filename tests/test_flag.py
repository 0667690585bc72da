"""The Flag Aggregator (murmura.robust.flag): hand-computed cases, a literal transcription of the
official code (``hamidralmasi/FlagAggregator``'s ``flag.aggregate`` + ``irls_flag``) on random
inputs, masks, the spec's properties, the engine (server and graph), and the experiment's
quick mode."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import vmap

from murmura.robust import FlagAggregator, aggregate, make_aggregator
from murmura.robust.flag import initial_basis

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


def official(grads: torch.Tensor, r: int = 1, lam: float = 0.0, n_its: int = 1,
             seed: int = 1, eps: float = 1e-7) -> torch.Tensor:
    """The code's ``flag.aggregate`` (its ``irls_flag``, ``flag_mean_iteration`` and
    ``calc_error_1_2``), transcribed literally: the hstack of weighted columns and its SVD."""
    data = [F.normalize(g, p=2.0, dim=0)[:, None] for g in grads]
    n, p = data[0].shape[0], len(data)

    def err_of(y):
        return sum(torch.sqrt(torch.clamp(1 - torch.trace(y.T @ x @ x.T @ y), min=0))
                   for x in data)

    def step(y0):
        columns = [(torch.abs(1 - torch.trace(y0.T @ x @ x.T @ y0)) + eps) ** -0.25 * x
                   for x in data]
        if lam > 0:
            for i, x in enumerate(data):
                for j, z in enumerate(data):
                    if i != j:
                        s = torch.abs(1 - torch.trace(y0.T @ (x - z) @ (x - z).T @ y0))
                        columns.append((s + eps) ** -0.25 * lam / (p * (p - 1)) * (x - z))
        return torch.linalg.svd(torch.hstack(columns), full_matrices=False)[0][:, :r]

    torch.manual_seed(seed)
    y = torch.linalg.qr(torch.rand(n, r) - 0.5)[0][:, :r].to(grads.dtype)
    err, itr, diff = [err_of(y)], 1, 1.0
    y0 = y
    while itr <= n_its and diff > 1e-10 and err[itr - 1] > 1e-10:
        y0 = y.clone()
        y = step(y)
        err.append(err_of(y))
        diff = err[itr - 1] - err[itr]
        itr += 1
    final = y if diff > 0 else y0
    return sum(final @ (final.T @ x) for x in data)[:, 0] / r


def fa(x: torch.Tensor, mask: torch.Tensor | None = None, **params) -> torch.Tensor:
    rule = FlagAggregator(relative_to_own=False, **params)
    return rule(x[0], x, torch.ones(len(x), dtype=x.dtype) if mask is None else mask)


# --------------------------------------------------------------------------- hand cases


def test_identical_messages_give_p_times_their_direction_over_r():
    g = torch.tensor([3.0, -4.0, 0.0, 0.0])
    x = g.repeat(5, 1)
    assert torch.allclose(fa(x), 5 * g / 5.0, atol=1e-6)  # 5 unit vectors (0.6, -0.8, 0, 0)
    assert torch.allclose(fa(x, r=2), 5 * g / 5.0 / 2, atol=1e-6)  # rank 1: the sum over r = 2
    assert torch.allclose(fa(x, scale=0.05), 0.05 * g, atol=1e-7)


def test_one_outlier_direction_is_projected_away_by_hand():
    # 2-D: two messages along e1, one (huge) along e2. Y0 = (u1, u2) from the seed; the
    # weights are w(e1) = (u2^2 + eps)^(-1/4), w(e2) = (u1^2 + eps)^(-1/4), so M M^T =
    # diag(2 w(e1)^2, w(e2)^2) and Y1 = e1 iff 2 |u1| > |u2|; obj(e1) = 1 < obj(Y0) =
    # 2 |u2| + |u1| accepts it; FA = e1 e1^T (e1 + e1 + e2) = (2, 0).
    x = torch.tensor([[1.0, 0.0], [5.0, 0.0], [0.0, -100.0]], dtype=torch.float64)
    u1, u2 = initial_basis(2, 1, 1, torch.float64)[:, 0].abs().tolist()
    assert 2 * u1 > u2 and 2 * u2 + u1 > 1  # this seed's start, so the case below holds
    assert torch.allclose(fa(x), torch.tensor([2.0, 0.0], dtype=torch.float64), atol=1e-12)


def test_a_rejected_step_keeps_the_previous_subspace_as_the_code_does(monkeypatch):
    # x = 3 x e1 and e2 in 2-D; force every flag-mean step to return Y = e2 (coefficients
    # picking the 4th unit message): obj(e2) = 3 > obj(Y0) = 3 |u2| + |u1|, so the step is
    # rejected and FA projects onto the random start: Y0 (Y0^T sum_i x_i).
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.5, 0.0], [0.0, 3.0]], dtype=torch.float64)
    y0 = initial_basis(2, 1, 1, torch.float64)[:, 0]
    u1, u2 = y0.abs().tolist()
    assert 3 * u2 + u1 < 3
    to_e2 = torch.tensor([[0.0], [0.0], [0.0], [1.0]], dtype=torch.float64)
    monkeypatch.setattr(FlagAggregator, "_flag_mean", lambda self, *args: to_e2)
    expected = y0 * float(3 * y0[0] + y0[1])
    assert torch.allclose(fa(x), expected, atol=1e-12)
    assert torch.allclose(fa(x, n_its=3), expected, atol=1e-12)
    # a step to e1 (obj 1) is accepted; a second step back to e2 is then rejected
    steps = iter([torch.tensor([[1.0], [0.0], [0.0], [0.0]], dtype=torch.float64), to_e2])
    monkeypatch.setattr(FlagAggregator, "_flag_mean", lambda self, *args: next(steps))
    assert torch.allclose(fa(x, n_its=2), torch.tensor([3.0, 0.0], dtype=torch.float64),
                          atol=1e-12)


def test_the_seed_is_the_codes_torch_manual_seed():
    torch.manual_seed(1)
    raw = torch.rand(7, 2) - 0.5
    assert torch.equal(initial_basis(7, 2, 1), torch.linalg.qr(raw)[0][:, :2])
    state = torch.get_rng_state()
    initial_basis(9, 1, 3)
    assert torch.equal(torch.get_rng_state(), state)  # torch's generator is left alone


# --------------------------------------------------------------------------- the code


@pytest.mark.parametrize("r,lam,n_its", [(1, 0.0, 1), (2, 0.0, 1), (3, 0.0, 3), (1, 0.5, 1),
                                         (2, 2.0, 2), (1, 1.0, 5), (8, 0.0, 1)])
def test_matches_the_official_code_on_random_inputs(r, lam, n_its):
    gen = torch.Generator().manual_seed(100 * r + n_its)
    for _ in range(4):
        k, d = int(torch.randint(3, 9, (), generator=gen)), int(torch.randint(9, 30, (),
                                                                              generator=gen))
        shift = torch.randn(d, generator=gen, dtype=torch.float64) * 2
        x = torch.randn(k, d, generator=gen, dtype=torch.float64) + shift
        assert torch.allclose(fa(x, r=r, lam=lam, n_its=n_its), official(x, r, lam, n_its),
                              atol=1e-9)


def test_float32_matches_the_code_within_float32_precision():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(15, 650, generator=gen) + 0.3
    assert torch.allclose(fa(x), official(x.double()).float(), atol=1e-4)


# --------------------------------------------------------------------------- masks, inputs


def test_padded_non_finite_and_zero_rows_take_no_part():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 12, generator=gen, dtype=torch.float64) + 1.0
    expected = fa(x, lam=0.5)
    padded = torch.cat([x[:2], torch.full((1, 12), 7.0, dtype=torch.float64), x[2:],
                        torch.full((1, 12), torch.inf, dtype=torch.float64),
                        torch.zeros(1, 12, dtype=torch.float64)])
    mask = torch.tensor([1, 1, 0, 1, 1, 1, 1, 1], dtype=torch.float64)  # row 2 padding
    assert torch.allclose(fa(padded, mask, lam=0.5), expected, atol=1e-10)
    nothing = torch.zeros(3, 12, dtype=torch.float64)
    assert torch.equal(fa(nothing, torch.ones(3, dtype=torch.float64)), torch.zeros(12,
                                                                               dtype=torch.float64))


def test_relative_to_own_steps_from_own_along_the_displacements():
    gen = torch.Generator().manual_seed(3)
    own = torch.randn(10, generator=gen, dtype=torch.float64) * 4
    deltas = torch.randn(6, 10, generator=gen, dtype=torch.float64) + 0.5
    rule = FlagAggregator(scale=0.1)
    out = rule(own, own + deltas, torch.ones(6, dtype=torch.float64))
    assert torch.allclose(out, own + 0.1 * official(deltas), atol=1e-10)
    # on a graph own's message is first in received: its zero displacement adds nothing
    with_own = torch.cat([own[None], own + deltas])
    assert torch.allclose(rule(own, with_own, torch.ones(7, dtype=torch.float64)), out,
                          atol=1e-10)


def test_the_library_call_and_the_registry():
    x = np.random.default_rng(0).normal(size=(6, 8)) + 1.0
    out = aggregate("flag", x, own=np.zeros(8), r=2)
    assert isinstance(out, np.ndarray)
    assert np.allclose(out, official(torch.from_numpy(x), r=2).numpy(), atol=1e-9)
    rule = make_aggregator({"name": "flag", "r": 2, "lam": 0.5, "scale": 0.025})
    assert rule == FlagAggregator(r=2, lam=0.5, scale=0.025)


@pytest.mark.parametrize("params,word", [
    ({"r": 0}, "r must"), ({"r": 1.5}, "r must"), ({"n_its": 0}, "n_its"),
    ({"lam": -1.0}, "lam"), ({"eps": 0.0}, "eps"), ({"scale": 0.0}, "scale"),
    ({"scale": float("nan")}, "scale"), ({"seed": "one"}, "seed"),
    ({"relative_to_own": 1}, "relative_to_own"),
])
def test_bad_parameters_are_named(params, word):
    with pytest.raises(ValueError, match=word):
        FlagAggregator(**params)


def test_r_above_the_dimension_is_refused():
    with pytest.raises(ValueError, match="lower r"):
        fa(torch.ones(4, 3), r=4)


# --------------------------------------------------------------------------- properties

rows = st.integers(2, 7)
dims = st.integers(3, 10)


def _draw(seed: int, k: int, d: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(k, d, generator=gen, dtype=torch.float64) + torch.randn(
        d, generator=gen, dtype=torch.float64)


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(st.integers(0, 10_000), rows, dims, st.integers(1, 3), st.sampled_from([0.0, 0.7]))
def test_permutation_invariance_and_the_norm_bound(seed, k, d, r, lam):
    x = _draw(seed, k, d)
    out = fa(x, r=r, lam=lam)
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
    assert torch.allclose(fa(x[perm], r=r, lam=lam), out, atol=1e-8)
    assert float(out.norm()) <= k / r + 1e-9  # the spec: ||FA|| <= p / r
    # FA reads directions only: blind to a positive rescale, odd in the sign
    assert torch.allclose(fa(3.7 * x, r=r, lam=lam), out, atol=1e-8)
    assert torch.allclose(fa(-x, r=r, lam=lam), -out, atol=1e-8)


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(st.integers(0, 10_000), rows, dims)
def test_relative_to_own_is_translation_equivariant(seed, k, d):
    x = _draw(seed, k + 1, d)
    shift = _draw(seed + 1, 1, d)[0] * 10
    rule = FlagAggregator(scale=0.3)
    mask = torch.ones(k, dtype=torch.float64)
    out = rule(x[0], x[1:], mask)
    assert torch.allclose(rule(x[0] + shift, x[1:] + shift, mask), out + shift, atol=1e-8)


@settings(max_examples=30, deadline=None, derandomize=True, database=None)
@given(st.integers(0, 10_000), st.integers(4, 9), st.integers(6, 12))
def test_a_minority_direction_is_suppressed(seed, honest, d):
    # honest messages near e1 (any lengths), one attacker far along another axis: the output
    # is the honest directions' sum, the attacker's axis projected away
    gen = torch.Generator().manual_seed(seed)
    e1 = torch.zeros(d, dtype=torch.float64)
    e1[0] = 1.0
    good = (e1 + 0.05 * torch.randn(honest, d, generator=gen, dtype=torch.float64)) * (
        1 + 9 * torch.rand(honest, 1, generator=gen, dtype=torch.float64))
    bad = torch.zeros(1, d, dtype=torch.float64)
    bad[0, 1] = -1e3
    out = fa(torch.cat([good, bad]))
    direction = F.normalize(good, dim=1).mean(0)
    assert float(F.cosine_similarity(out, direction, dim=0)) > 0.99
    assert float(out.norm()) > 0.9 * honest  # ~ the honest unit vectors' sum


# --------------------------------------------------------------------------- the engine


def test_vmapped_over_receivers_equals_one_call_each():
    gen = torch.Generator().manual_seed(4)
    own = torch.randn(5, 20, generator=gen)
    received = torch.randn(5, 6, 20, generator=gen) + 1.0
    mask = torch.ones(5, 6)
    mask[1, 4:] = 0
    mask[3, 2] = 0
    rule = FlagAggregator(r=2, lam=0.5).prepare(20)
    batched = vmap(rule)(own, received, mask)
    for i in range(5):
        assert torch.allclose(batched[i], rule(own[i], received[i], mask[i]), atol=1e-5)


def test_a_server_and_a_graph_run_fa_through_the_engine():
    from murmura.data import federate
    from murmura.robust import Adversary
    from murmura.swarm import Evaluation, Simulation

    data = federate("digits", 8, "iid", seed=0)
    server = Simulation(data, "logreg", "fedavg", seed=0, evaluation=Evaluation(every=20),
                        algorithm_kwargs={"lr": 0.5, "local_steps": 1, "aggregator": {
                            "name": "flag", "scale": 0.5}},
                        adversary=Adversary("sign_flip", count=2))
    record = server.run(20).records[-1]
    assert record["test_accuracy"] > 0.6
    graph = Simulation(data, "logreg", "dsgd", "ring", seed=0, evaluation=Evaluation(every=10),
                       algorithm_kwargs={"lr": 0.3, "local_steps": 1, "aggregator": {
                           "name": "flag", "scale": 0.3}})
    assert graph.run(10).records[-1]["node_accuracy_mean"] > 0.4


def test_the_quick_experiment_runs(tmp_path):
    spec = importlib.util.spec_from_file_location("flag_run",
                                                  REPO / "experiments" / "flag" / "run.py")
    run = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = run  # its dataclasses resolve their module by name
    spec.loader.exec_module(run)
    assert run.main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "quick.json").read_text())
    assert set(result["table"]) == {"none/f=0", "random/f=6", "reverse/f=3"}
    assert set(result["table"]["reverse/f=3"]) == set(run.AGGREGATORS)
    assert (tmp_path / "flag_quick.png").exists()
    # the experiment's parameter server (updates uploaded, x <- x + FA(Δ)) is fedavg with one
    # local step and FA relative to the server's model (models uploaded), step for step
    from murmura.data import federate
    from murmura.swarm import Evaluation, Simulation

    data = federate("digits", 6, "iid", seed=1)
    rule = {"name": "flag", "scale": 0.025, "lam": 0.3}
    ps = Simulation(data, "logreg", run.parameter_server(make_aggregator(rule)), seed=1,
                    evaluation=Evaluation(every=0))
    fedavg = Simulation(data, "logreg", "fedavg", seed=1, evaluation=Evaluation(every=0),
                        algorithm_kwargs={"lr": run.LR, "local_steps": 1, "batch_size": 32,
                                          "aggregator": rule})
    ps.run(5)
    fedavg.run(5)
    assert torch.allclose(ps.server_state["params"], fedavg.server_state["params"], atol=1e-5)
    # the experiment's attacks, by hand: reverse sends -10 x its own update, random -lr U[0,1)
    own = torch.tensor([1.0, -2.0])
    assert run.Reverse()(own, own[None], torch.ones(1), torch.tensor(0)).tolist() == [-10., 20.]
    noise = run.UniformGradient(0.5)(torch.zeros(1000), own[None], torch.ones(1),
                                     torch.tensor(3))
    assert -0.5 <= float(noise.min()) and float(noise.max()) <= 0 and abs(
        float(noise.mean()) + 0.25) < 0.03


def test_an_unprepared_start_under_vmap_is_a_clear_error():
    rule = FlagAggregator(seed=987_654)  # a start no other test has drawn
    with pytest.raises(ValueError, match="prepare"):
        vmap(rule)(torch.zeros(2, 5), torch.ones(2, 3, 5), torch.ones(2, 3))
    rule.prepare(5)
    assert vmap(rule)(torch.zeros(2, 5), torch.ones(2, 3, 5), torch.ones(2, 3)).shape == (2, 5)


def test_the_library_aggregates_the_vectors_themselves():
    from murmura.robust import aggregate

    g = torch.tensor([[1.0, 0.0], [1.0, 0.1], [1.0, -0.1]])
    direct = aggregate("flag", g)
    relative_to_nothing = aggregate("flag", g, own=torch.zeros(2))
    assert torch.allclose(direct, relative_to_nothing)
    assert float(direct[0]) > 0.5 and abs(float(direct[1])) < 0.1  # the common direction


def test_an_attacker_aggregating_its_own_inf_does_not_stop_the_run():
    from murmura.data import federate
    from murmura.robust import Adversary
    from murmura.swarm import Simulation

    data = federate("digits", 12, seed=0)
    sim = Simulation(data, "logreg", "dsgd", "random_regular", topology_kwargs={"k": 4},
                     algorithm_kwargs={"aggregator": "flag", "local_steps": 1},
                     adversary=Adversary("inf", count=2), seed=0)
    assert 0 <= sim.run(rounds=2).final["honest_node_accuracy_mean"] <= 1
