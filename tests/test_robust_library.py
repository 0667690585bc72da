"""Pre-aggregators (NNM, bucketing, clipping, ARC), their chaining before an aggregator, the
library API (murmura.robust.aggregate / preaggregate / attack), and the cross-check against
ByzFL: every case of byzfl_reference.json through the library, and, when byzfl is installed
(``pip install --no-deps byzfl==0.0.11``), murmura against ByzFL's own classes on random
inputs. Hand-computed cases and hypothesis properties for the pre-aggregators."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import math
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import vmap

from murmura.config import ConfigError, Experiment
from murmura.robust import (
    AGGREGATORS,
    ARC,
    ATTACKS,
    NNM,
    PREAGGREGATORS,
    Bucketing,
    Chained,
    Clipping,
    aggregate,
    attack,
    make_aggregator,
    make_preaggregator,
    preaggregate,
)
from murmura.robust.aggregators import Median, TrimmedMean, check_messages
from murmura.robust.library import BYZFL_NAMES

# ByzFL 0.0.11's own outputs, copied from shared/specs/byzfl_reference.json
REFERENCE = Path(__file__).resolve().parent / "data" / "byzfl_reference.json"
REF = json.loads(REFERENCE.read_text()) if REFERENCE.exists() else None
X = np.array([[1., 2., 3.], [4., 5., 6.], [7., 8., 9.], [.5, -1., 2.], [10., -10., 0.],
              [2., 2., 2.], [-3., 1., 4.]])
ONES = torch.ones(7, dtype=torch.float64)
FEW = settings(max_examples=30, deadline=None)

OWNER = {"aggregator": "helper A1's aggregators", "attack": "helper B's attacks",
         "pre-aggregator": "the pre-aggregators", "composition": "the aggregators"}


def registered(name: str, kind: str) -> str:
    """murmura's name for a ByzFL class; skip (with the reason) while it is not registered."""
    murmura_name = BYZFL_NAMES[name]
    registry = {"aggregator": AGGREGATORS, "pre-aggregator": PREAGGREGATORS,
                "attack": ATTACKS}[kind]
    if murmura_name not in registry:
        pytest.skip(f"{kind} {murmura_name!r} (ByzFL's {name}) is not registered yet "
                    f"({OWNER[kind]})")
    return murmura_name


def t64(rows) -> torch.Tensor:
    return torch.as_tensor(np.asarray(rows), dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# ByzFL's reference outputs through the library API


def parse_call(text: str) -> dict:
    """``"TrMean(f=2)"`` -> ``{"name": "TrMean", "f": 2}`` (the reference's agg strings)."""
    call = ast.parse(text, mode="eval").body
    return {"name": call.func.id, **{k.arg: ast.literal_eval(k.value) for k in call.keywords}}


def reference_cases() -> list:
    if REF is None:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"{REFERENCE} is missing"))]
    return [pytest.param(case, id=f"{i}-{case['name']}") for i, case in enumerate(REF["cases"])]


def run_case(case: dict, inputs: np.ndarray | torch.Tensor):
    kind, params = case["kind"], dict(case["params"])
    if kind == "composition":  # "TrMean(f=2) after NNM(f=2)"
        outer, f_outer, inner, f_inner = re.fullmatch(
            r"(\w+)\(f=(\d+)\) after (\w+)\(f=(\d+)\)", case["name"]).groups()
        registered(outer, "aggregator")
        return aggregate(outer, inputs, f=int(f_outer),
                         pre_agg_list=[{"name": inner, "parameters": {"f": int(f_inner)}}])
    name = registered(case["name"], kind)
    if kind == "aggregator":
        return aggregate(case["name"], inputs, **params)
    if kind == "pre-aggregator":
        return preaggregate(name, inputs, **params)
    if "agg" in params:
        registered(parse_call(params["agg"])["name"], "aggregator")
        params["agg"] = parse_call(params["agg"])
    return attack(case["name"], inputs, **params)


@pytest.mark.parametrize("case", reference_cases())
def test_every_byzfl_reference_case_through_the_library(case):
    atol = REF["tolerance"]["atol"]
    inputs = np.array(REF["inputs"][case["input"]])
    out = run_case(case, inputs)  # numpy float64 in: numpy float64 out
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_allclose(out, np.array(case["output"]), atol=atol, rtol=0)
    as_torch = run_case(case, torch.tensor(inputs, dtype=torch.float32))  # ByzFL's torch path
    assert isinstance(as_torch, torch.Tensor) and as_torch.dtype == torch.float32
    np.testing.assert_allclose(as_torch.numpy(), np.array(case["output"]), atol=atol,
                               rtol=1e-6)


def test_the_reference_covers_every_class_it_names():
    if REF is None:
        pytest.skip(f"{REFERENCE} is missing")
    named = {c["name"] for c in REF["cases"] if c["kind"] != "composition"}
    assert named <= set(BYZFL_NAMES)
    assert set(REF["not_covered"]["classes"]) <= set(BYZFL_NAMES)


# ---------------------------------------------------------------------------------------------
# hand-computed pre-aggregators


def test_nnm_by_hand_with_padding_that_never_counts():
    x = torch.tensor([[0.], [1.], [2.], [30.], [-99.], [55.]])  # the last two are padding
    mask = torch.tensor([1., 1., 1., 1., 0., 0.])
    rows, out_mask = NNM(f=1)(x, mask)
    # each row: the mean of its 3 nearest (itself included): {0,1,2} x3, {30,2,1}
    assert rows.flatten().tolist() == [1., 1., 1., 11., 0., 0.]
    assert torch.equal(out_mask, mask)
    full, _ = NNM(f=0)(x, mask)  # f = 0: every valid row becomes the mean
    assert full.flatten().tolist() == [8.25] * 4 + [0., 0.]


def test_nnm_matches_the_reference_rows():
    rows, _ = NNM(f=2)(t64(X), ONES)
    expected = [[.9, 1.8, 3.4], [2.9, 3.2, 4.4], [2.9, 3.2, 4.4], [.9, 1.8, 3.4],
                [3.5, -.4, 2.6], [.9, 1.8, 3.4], [.9, 1.8, 3.4]]
    np.testing.assert_allclose(rows.numpy(), expected, atol=1e-12)


def test_clipping_by_hand_and_never_in_place():
    x = torch.tensor([[3., 4.], [0., 1.], [2., 0.], [0., 0.], [7., 7.]])
    before = x.clone()
    rows, _ = Clipping(c=2.0)(x, torch.tensor([1., 1., 1., 1., 0.]))
    # norm 5 -> scaled by 2/5; norm 1 and norm exactly c untouched; zero stays zero; padding 0
    np.testing.assert_allclose(rows.numpy(), [[1.2, 1.6], [0., 1.], [2., 0.], [0., 0.], [0., 0.]],
                               rtol=1e-6)
    assert torch.equal(x, before)
    zero, _ = Clipping(c=0)(x, torch.ones(5))
    assert torch.equal(zero, torch.zeros_like(x))  # c = 0: everything to 0, no NaN


def test_arc_clips_the_2f_n_minus_f_over_n_longest_to_the_next_norm():
    # norms 1, 2, 3, 10: f = 1 clips floor(2 * 1 / 4 * 3) = 1 vector, to the 3rd norm (3)
    x = torch.tensor([[1., 0.], [0., 2.], [3., 0.], [6., 8.], [100., 100.]])
    mask = torch.tensor([1., 1., 1., 1., 0.])
    rows, _ = ARC(f=1)(x, mask)
    np.testing.assert_allclose(rows.numpy(), [[1., 0.], [0., 2.], [3., 0.], [1.8, 2.4], [0., 0.]],
                               rtol=1e-6)
    unchanged, _ = ARC(f=0)(x, mask)  # f = 0 clips nothing
    assert torch.equal(unchanged[:4], x[:4])


@pytest.mark.parametrize("n,f", [(7, 2), (9, 3), (10, 1), (5, 2), (4, 2), (12, 5), (6, 6)])
def test_arc_clips_as_many_as_byzfls_float_expression(n, f):
    # distinct norms 1..n, shuffled: exactly int(2 * f / n * (n - f)) rows change
    rng = np.random.default_rng(n * 10 + f)
    norms = rng.permutation(np.arange(1.0, n + 1))
    x = torch.tensor(norms[:, None] * np.ones((n, 3)) / math.sqrt(3))
    rows, _ = ARC(f=f)(x, torch.ones(n, dtype=torch.float64))
    changed = (rows - x).abs().sum(1) > 1e-12
    expected = int(2 * f / n * (n - f))
    assert int(changed.sum()) == expected
    if expected:  # the longest ones, clipped to the (n - expected)-th norm
        assert set(norms[changed.numpy()]) == set(np.arange(n - expected + 1.0, n + 1))
        np.testing.assert_allclose(torch.linalg.vector_norm(rows[changed], dim=1).numpy(),
                                   n - expected)


def values_of(rows: torch.Tensor, mask: torch.Tensor) -> list[float]:
    return sorted(rows[mask > 0].flatten().tolist())


def test_bucketing_averages_a_random_partition_into_buckets_of_s():
    # distinct powers of two: a bucket's sum tells exactly which rows it holds
    x = torch.tensor([[1.], [2.], [4.], [8.], [16.], [1000.]], dtype=torch.float64)
    mask = torch.tensor([1., 1., 1., 1., 1., 0.], dtype=torch.float64)
    seen = set()
    for key in range(12):
        rows, out = Bucketing(s=2)(x, mask, torch.tensor(key))
        assert rows.shape == (3, 1) and out.tolist() == [1., 1., 1.]  # ceil(5 / 2) buckets
        sums = (rows.flatten() * torch.tensor([2., 2., 1.], dtype=torch.float64)).tolist()
        assert sum(sums) == 31.0  # every valid row once, the padded 1000 never
        members = [{b for b in range(5) if int(s) >> b & 1} for s in sums]
        assert [len(m) for m in members] == [2, 2, 1]
        seen.add(tuple(int(s) for s in sums))
        again, _ = Bucketing(s=2)(x, mask, torch.tensor(key))
        assert torch.equal(rows, again)  # a pure function of the key
    assert len(seen) > 6  # different keys, different partitions


def test_bucketing_with_s_1_permutes_and_each_position_is_uniform():
    x = torch.arange(5, dtype=torch.float64).unsqueeze(1) + 1.0
    mask = torch.ones(5, dtype=torch.float64)
    rows, out = vmap(Bucketing(s=1), in_dims=(None, None, 0))(x, mask, torch.arange(4000))
    assert torch.equal(out, torch.ones(4000, 5, dtype=torch.float64))
    assert torch.equal(rows.sort(1).values, x.expand(4000, 5, 1))  # a permutation each time
    first = torch.bincount(rows[:, 0, 0].long() - 1, minlength=5) / 4000.0
    assert float((first - 0.2).abs().max()) < 0.03  # 4000 draws: sd 0.006


def test_bucketing_needs_a_key():
    with pytest.raises(ValueError, match="bucketing draws a random permutation: pass key"):
        Bucketing(s=2)(torch.ones(3, 2), torch.ones(3))


@pytest.mark.parametrize("spec,message", [
    ({"name": "nnm", "f": -1}, "nnm: f must be an integer >= 0"),
    ({"name": "nnm", "f": 1.5}, "nnm: f must be an integer >= 0"),
    ({"name": "arc", "f": True}, "arc: f must be an integer >= 0"),
    ({"name": "nnm", "f": float("inf")}, "nnm: f must be an integer >= 0"),
    ({"name": "bucketing", "s": 0}, "bucketing: s must be an integer >= 1"),
    ({"name": "clipping", "c": -1.0}, "clipping: c must be a number >= 0"),
    ({"name": "clipping", "c": float("nan")}, "clipping: c must be a number >= 0"),
    ({"name": "clipping", "tau": 1.0}, "has no parameter"),
    ({"name": "nmm"}, "Did you mean 'nnm'"),
])
def test_bad_pre_aggregator_arguments_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        make_preaggregator(spec)


# ---------------------------------------------------------------------------------------------
# vmap, padding, properties


PRE = [NNM(f=1), NNM(f=0), Clipping(c=1.5), ARC(f=1), ARC(f=2), Bucketing(s=2), Bucketing(s=3)]


def padded_batch(seed: int, blocks: int = 5, k: int = 7, d: int = 4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(blocks, k, d, generator=g, dtype=torch.float64) + 2.0
    counts = torch.randint(3, k + 1, (blocks,), generator=g)
    mask = (torch.arange(k).unsqueeze(0) < counts.unsqueeze(1)).to(torch.float64)
    return x * mask.unsqueeze(-1), mask, torch.arange(blocks) + 7 * seed


@pytest.mark.parametrize("rule", PRE, ids=repr)
def test_vmap_over_receivers_equals_the_loop_and_padding_never_counts(rule):
    x, mask, keys = padded_batch(3)
    rows, out = vmap(rule)(x, mask, keys)
    garbage = x + 50.0 * (1 - mask).unsqueeze(-1) * torch.randn_like(x)
    for b in range(len(x)):
        one, one_mask = rule(x[b], mask[b], keys[b])
        torch.testing.assert_close(rows[b], one)
        assert torch.equal(out[b], one_mask)
        dirty, dirty_mask = rule(garbage[b], mask[b], keys[b])  # padded rows hold garbage
        torch.testing.assert_close(dirty, one)
        assert torch.equal(dirty_mask, one_mask)
        assert bool((one[one_mask == 0] == 0).all())  # padded outputs are zeros


def random_rows(seed: int, k: int, d: int) -> torch.Tensor:
    return torch.tensor(np.random.default_rng(seed).normal(size=(k, d)) * 3.0)


@FEW
@given(seed=st.integers(0, 10**6), k=st.integers(2, 9), d=st.integers(1, 6),
       f=st.integers(0, 4))
def test_nnm_commutes_with_permutations_and_translations(seed, k, d, f):
    f = min(f, k - 1)
    x = random_rows(seed, k, d)
    mask = torch.ones(k, dtype=torch.float64)
    rows, _ = NNM(f=f)(x, mask)
    perm = torch.from_numpy(np.random.default_rng(seed + 1).permutation(k))
    permuted, _ = NNM(f=f)(x[perm], mask)
    torch.testing.assert_close(permuted, rows[perm])
    shift = torch.tensor(np.random.default_rng(seed + 2).normal(size=d) * 5.0)
    moved, _ = NNM(f=f)(x + shift, mask)
    torch.testing.assert_close(moved, rows + shift)


@FEW
@given(seed=st.integers(0, 10**6), k=st.integers(1, 9), d=st.integers(1, 6),
       c=st.floats(0.1, 10.0), f=st.integers(0, 4))
def test_clipping_and_arc_bound_norms_keep_directions_and_commute_with_permutations(
        seed, k, d, c, f):
    x = random_rows(seed, k, d)
    mask = torch.ones(k, dtype=torch.float64)
    perm = torch.from_numpy(np.random.default_rng(seed + 1).permutation(k))
    norms = torch.linalg.vector_norm(x, dim=1)
    for rule, bound in ((Clipping(c=c), torch.full_like(norms, c)),
                        (ARC(f=min(f, k)), None)):
        rows, _ = rule(x, mask)
        torch.testing.assert_close(rule(x[perm], mask)[0], rows[perm])
        out = torch.linalg.vector_norm(rows, dim=1)
        if bound is None:  # ARC: nobody longer than the (n - clipped)-th norm
            clipped = int(2 * rule.f / k * (k - rule.f))
            bound = torch.full_like(norms, float(norms.sort().values[k - clipped - 1]))
        assert bool((out <= bound * (1 + 1e-9)).all())
        assert bool((out <= norms * (1 + 1e-9)).all())
        cosine = (rows * x).sum(1) / (out * norms).clamp_min(1e-300)
        assert bool(((cosine > 1 - 1e-9) | (out == 0)).all())  # same direction
        short = norms <= bound
        torch.testing.assert_close(rows[short], x[short])  # short vectors pass unchanged


@FEW
@given(seed=st.integers(0, 10**6), honest=st.integers(3, 8), f=st.integers(1, 3),
       d=st.integers(1, 5), rule=st.sampled_from(["trimmed_mean", "median"]))
def test_nnm_then_a_robust_rule_returns_the_honest_mean_against_far_outliers(
        seed, honest, f, d, rule):
    # f < n / 2 Byzantine vectors far from the honest ones: every honest row's n - f nearest
    # are the honest vectors, so NNM makes n - f rows equal to the honest mean, which
    # trimmed mean (f) and median (n - f > n / 2 equal values) then return exactly
    f = min(f, honest - 1)
    rng = np.random.default_rng(seed)
    good = rng.normal(size=(honest, d))
    bad = 1e4 * rng.choice([-1.0, 1.0], size=(f, d)) * (1 + rng.random((f, d)))
    rows = torch.tensor(np.concatenate([good, bad]))[rng.permutation(honest + f)]
    spec = {"name": rule, "pre": [{"name": "nnm", "f": f}]}
    if rule == "trimmed_mean":
        spec["f"] = f
    chain = make_aggregator(spec)
    out = chain(rows[0], rows, torch.ones(honest + f, dtype=torch.float64))
    np.testing.assert_allclose(out.numpy(), good.mean(0), atol=1e-8)


@FEW
@given(seed=st.integers(0, 10**6), k=st.integers(1, 10), s=st.integers(1, 4),
       key=st.integers(0, 2**40))
def test_bucketing_keeps_the_weighted_mean_and_counts_buckets(seed, k, s, key):
    x = random_rows(seed, k, 3)
    rows, out = Bucketing(s=s)(x, torch.ones(k, dtype=torch.float64), torch.tensor(key))
    assert int(out.sum()) == math.ceil(k / s)
    sizes = torch.tensor([min(s, k - i * s) for i in range(math.ceil(k / s))],
                         dtype=torch.float64)
    torch.testing.assert_close((rows[out > 0] * sizes.unsqueeze(1)).sum(0) / k, x.mean(0))


# ---------------------------------------------------------------------------------------------
# chaining


def test_make_aggregator_builds_the_chain_of_a_config():
    chain = make_aggregator({"name": "trimmed_mean", "f": 2,
                             "pre": ["nnm", {"name": "clipping", "c": 2.0}]})
    assert isinstance(chain, Chained)
    assert chain.pre == (NNM(f=0), Clipping(c=2.0)) and chain.aggregator == TrimmedMean(f=2)
    # NNM(f=0) turns every row into the mean, clipped to norm 2; a trimmed mean of equal rows
    mean = X.mean(0)
    out = chain(t64(X[0]), t64(X), ONES)
    np.testing.assert_allclose(out.numpy(), mean * 2.0 / np.linalg.norm(mean), atol=1e-12)
    assert make_aggregator({"name": "median", "pre": []}) == Median()
    assert make_aggregator({"name": "median", "pre": "nnm"}).pre == (NNM(f=0),)


def test_the_reference_chain_trimmed_mean_after_nnm_with_padding():
    chain = make_aggregator({"name": "trimmed_mean", "f": 2, "pre": [{"name": "nnm", "f": 2}]})
    rows = torch.cat([t64(X), torch.zeros(3, 3, dtype=torch.float64)])
    mask = torch.cat([ONES, torch.zeros(3, dtype=torch.float64)])
    np.testing.assert_allclose(chain(rows[0], rows, mask).numpy(), [1.566667, 1.8, 3.4],
                               atol=1e-6)


def test_a_chain_with_bucketing_needs_a_key_and_vmaps():
    chain = make_aggregator({"name": "median", "pre": [{"name": "bucketing", "s": 2}, "nnm"]})
    assert chain.needs_key and chain.vectorized
    x, mask, keys = padded_batch(5)
    with pytest.raises(ValueError, match="chained: a part of this chain is random"):
        chain(x[0, 0], x[0], mask[0])
    out = vmap(chain)(x[:, 0], x, mask, keys)
    for b in range(len(x)):
        torch.testing.assert_close(out[b], chain(x[b, 0], x[b], mask[b], keys[b]))
        torch.testing.assert_close(out[b], chain(x[b, 0], x[b], mask[b], key=keys[b]))
    # the chain's key, not the raw one, reaches bucketing (stage 0 gets hash_keys(key, 0))
    assert not torch.equal(out[0], chain(x[0, 0], x[0], mask[0], keys[0] + 1))


def test_chain_min_messages_traces_back_through_bucketing():
    chain = make_aggregator({"name": "trimmed_mean", "f": 1,
                             "pre": [{"name": "nnm", "f": 1}, {"name": "bucketing", "s": 2}]})
    assert chain.min_messages() == 5  # 3 buckets for trimming 1 at each end need 5 messages
    with pytest.raises(ValueError, match="needs at least 5 messages"):
        check_messages(chain, 4, "a server round gets")
    check_messages(chain, 5, "a server round gets")
    assert make_aggregator({"name": "median", "pre": [{"name": "nnm", "f": 3}]}
                           ).min_messages() == 4


@dataclass(frozen=True)
class WeightedSum:
    """A stand-in for a rule that reads mixing weights (ClippedGossip's)."""

    needs_weights = True

    def __call__(self, own, received, mask, weights):
        return (weights * mask) @ received


@dataclass(frozen=True)
class Joint:
    joint = True

    def __call__(self, own, received, mask):
        return own


@dataclass(frozen=True)
class Scaled:
    """A pre-aggregator that binds to the model layout."""

    factor: float = 1.0

    def bind(self, layout):
        return Scaled(factor=float(layout))

    def __call__(self, received, mask):
        return received * self.factor, mask


def test_a_chain_passes_weights_through_row_preserving_pre_aggregators():
    chain = Chained(pre=(Clipping(c=1.0),), aggregator=WeightedSum())
    x = torch.tensor([[3., 4.], [0., 0.5]])
    weights = torch.tensor([0.5, 0.5])
    assert chain.needs_weights and not chain.needs_key
    np.testing.assert_allclose(chain(x[0], x, torch.ones(2), weights).numpy(), [0.3, 0.65])
    np.testing.assert_allclose(chain(x[0], x, torch.ones(2), weights=weights).numpy(),
                               [0.3, 0.65])
    with pytest.raises(ValueError, match="bucketing merges messages"):
        Chained(pre=(Bucketing(s=2),), aggregator=WeightedSum())
    with pytest.raises(ValueError, match="is joint"):
        Chained(pre=("nnm",), aggregator=Joint())
    with pytest.raises(ValueError, match="give the aggregator"):
        Chained(pre=("nnm",))


def test_a_chain_binds_its_parts_and_calls_user_pre_aggregators_without_a_key():
    chain = Chained(pre=(Scaled(),), aggregator="average").bind(3.0)
    assert chain.pre == (Scaled(3.0),)
    np.testing.assert_allclose(chain(None, t64(X), ONES).numpy(), 3.0 * X.mean(0))


def experiment(algorithm: dict, topology: dict | None = None) -> Experiment:
    values = {"rounds": 2, "data": {"dataset": "digits", "nodes": 8},
              "model": {"name": "logreg"}, "algorithm": {"lr": 0.1, **algorithm}}
    if topology is not None:
        values["topology"] = topology
    return Experiment.from_dict(values)


def test_a_config_chain_is_checked_and_runs_at_a_server_and_on_a_graph():
    chain = {"name": "trimmed_mean", "f": 1, "pre": [{"name": "nnm", "f": 1},
                                                     {"name": "clipping", "c": 5.0}]}
    with pytest.raises(ConfigError, match="needs at least 3 messages"):
        experiment({"name": "fedavg", "clients_per_round": 2, "aggregator": chain}).check()
    text = """
rounds = 2
[data]
dataset = "digits"
nodes = 8
[model]
name = "logreg"
[algorithm]
name = "dsgd"
lr = 0.1
local_steps = 1
aggregator = { name = "trimmed_mean", f = 1, pre = ["nnm", { name = "clipping", c = 5.0 }] }
[topology]
name = "random_regular"
k = 4
"""
    Experiment.from_toml_text(text).check()
    from murmura.data import federate
    from murmura.swarm import Evaluation, Simulation

    data = federate("digits", num_nodes=8, partition="iid", seed=0)
    # with bucketing the engine hands each receiver its key (3 buckets of 5 messages or more)
    keyed = {**chain, "pre": [{"name": "bucketing", "s": 2}, *chain["pre"]]}
    for algorithm, topology, kwargs in (("fedavg", None, {}),
                                        ("dsgd", "random_regular", {"k": 4})):
        finals = []
        for rule in (chain, keyed, keyed):
            sim = Simulation(data, "logreg", algorithm, topology, topology_kwargs=kwargs,
                             algorithm_kwargs={"lr": 0.1, "local_steps": 1, "aggregator": rule},
                             evaluation=Evaluation(every=2, node_samples=50))
            finals.append(sim.run(2).final)
            assert 0 <= finals[-1]["test_accuracy"] <= 1
        untimed = [{k: v for k, v in f.items() if "seconds" not in k} for f in finals]
        assert untimed[1] == untimed[2]  # the keys come from the seed: the same run twice


# ---------------------------------------------------------------------------------------------
# the library API


@pytest.mark.parametrize("make,kind,dtype", [
    (lambda: X.copy(), np.ndarray, np.float64),
    (lambda: X.astype(np.float32), np.ndarray, np.float32),
    (lambda: list(X), np.ndarray, np.float64),
    (lambda: X.round().astype(np.int64), np.ndarray, np.float64),
    (lambda: torch.tensor(X, dtype=torch.float32), torch.Tensor, torch.float32),
    (lambda: list(torch.tensor(X)), torch.Tensor, torch.float64),
    (lambda: torch.tensor(X).round().long(), torch.Tensor, torch.float32),
])
def test_the_library_returns_the_input_type(make, kind, dtype):
    out = aggregate("median", make())
    assert isinstance(out, kind) and out.dtype == dtype and tuple(out.shape) == (3,)
    np.testing.assert_allclose(np.asarray(out), np.median(np.asarray(make(), float), 0),
                               rtol=1e-6)
    rows = preaggregate("clipping", make())
    assert isinstance(rows, kind) and rows.dtype == dtype and tuple(rows.shape) == (7, 3)
    vector = attack("sign_flip", make())
    assert isinstance(vector, kind) and tuple(vector.shape) == (3,)


def test_the_library_never_writes_its_input():
    x = X.copy()
    preaggregate("Clipping", x, c=2.0)  # ByzFL clips numpy input in place
    preaggregate("ARC", x, f=2)
    aggregate("average", x, pre_agg_list=["clipping", {"name": "ARC", "parameters": {"f": 2}}])
    assert np.array_equal(x, X)


def test_the_library_bucketing_is_keyed_or_follows_torch_seed():
    a = preaggregate("bucketing", X, s=2, key=11)
    assert a.shape == (4, 3)
    np.testing.assert_allclose(preaggregate("Bucketing", X, s=2, key=11), a)
    np.testing.assert_allclose(a[:3].sum(0) * 2 + a[3], X.sum(0))  # 3 pairs and 1 left over
    torch.manual_seed(0)
    b = preaggregate("bucketing", X, s=3)
    torch.manual_seed(0)
    np.testing.assert_allclose(preaggregate("bucketing", X, s=3), b)
    # the chain draws each stage's key from the one given
    c = aggregate("average", X, pre_agg_list=[{"name": "bucketing", "s": 3}], key=4)
    np.testing.assert_allclose(c, aggregate("average", X, pre_agg_list=[
        {"name": "bucketing", "s": 3}], key=4))


@pytest.mark.parametrize("call,message", [
    (lambda: aggregate("median", "abc"), "vectors must be a torch tensor, a numpy array"),
    (lambda: aggregate("median", X[0]), r"vectors must be \[n, d\]"),
    (lambda: aggregate("median", np.zeros((0, 3))), r"vectors must be \[n, d\] with n >= 1"),
    (lambda: aggregate("trimmed_mean", X[:2], f=1), r"trimmed_mean\(f=1\) needs at least 3 "
                                                     "vectors, got 2"),
    (lambda: aggregate("median", X[:2], pre_agg_list=[{"name": "nnm", "f": 2}]),
     "needs at least 3 vectors"),
    (lambda: preaggregate("nnm", X[:2], f=2), r"nnm\(f=2\) needs at least 3 vectors"),
    (lambda: preaggregate("ARC", X[:2], f=3), "needs at least 3 vectors"),
    (lambda: aggregate("medain", X), "Did you mean 'median'"),
    (lambda: preaggregate("nnm", X, tau=1.0), "has no parameter"),
    (lambda: aggregate(3, X), "name must be the name of an aggregator"),
    (lambda: preaggregate("bucketing", X, key="a"), "key must be an integer"),
    (lambda: aggregate("average", X, pre_agg_list=[{"name": "nnm", "f": 1}], idx=9),
     "idx must be the index of one of the 7"),
])
def test_bad_library_calls_say_what_to_fix(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_the_library_pivot_is_byzfls():
    class Own:
        def __call__(self, own, received, mask):
            return own

    AGGREGATORS.add("_test_own", Own, "returns own", overwrite=True)
    try:
        x = torch.tensor(X)
        assert torch.equal(aggregate("_test_own", x), x[0])  # a node's own message first
        assert torch.equal(aggregate("_test_own", x, own=x[3]), x[3])
        assert torch.equal(aggregate("_test_own", x, idx=2), x[2])
        nnm = preaggregate("nnm", x, f=2)
        torch.testing.assert_close(aggregate("_test_own", x, idx=4, pre_agg_list=[
            {"name": "nnm", "f": 2}]), nnm[4])  # idx names a pre-aggregated vector (ByzFL)
        assert torch.equal(aggregate("_test_own", x, m=None), torch.zeros(3, dtype=x.dtype))
        assert torch.equal(aggregate("_test_own", x, m=[1., 2., 3.]),
                           torch.tensor([1., 2., 3.], dtype=x.dtype))
    finally:
        AGGREGATORS._entries.pop("_test_own")


def test_the_library_passes_uniform_weights_to_a_rule_that_reads_them():
    AGGREGATORS.add("_test_weighted", WeightedSum, "weights", overwrite=True)
    try:
        np.testing.assert_allclose(aggregate("_test_weighted", X), X.mean(0))
        np.testing.assert_allclose(aggregate("_test_weighted", X, weights=[1.] + [0.] * 6), X[0])
    finally:
        AGGREGATORS._entries.pop("_test_weighted")


def test_the_library_per_target_attack_takes_the_receivers_weights():
    if "dissensus" not in ATTACKS:
        pytest.skip("attack 'dissensus' is not registered yet (helper B's attacks)")
    honest = np.array([[0., 0.], [2., 4.]])  # the target's own message first
    out = attack("dissensus", honest, weights=[0.5, 0.25], byzantine_weight=0.25)
    np.testing.assert_allclose(out, [-2., -4.])  # cancels the pull 0.25 * (2, 4)
    with pytest.raises(ValueError, match="per-target graph attack: pass weights"):
        attack("dissensus", honest)


def test_the_library_label_flip_is_byzfls_mean_of_what_it_is_given():
    name = registered("LabelFlipping", "attack")
    np.testing.assert_allclose(attack(name, X[:5]), X[:5].mean(0))


# ---------------------------------------------------------------------------------------------
# murmura against ByzFL itself, on random inputs (when byzfl is installed)


@pytest.fixture(scope="module")
def byzfl():
    """ByzFL's aggregators, pre-aggregators and attacks, loaded without running the package's
    ``__init__`` (which imports ``byzfl.benchmark`` and so torchvision, whose wheels do not
    load with the CPU torch): a bare ``byzfl`` package pointing at the installed files, for
    the duration of the import, then sys.modules restored."""
    spec = importlib.util.find_spec("byzfl")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("byzfl is not installed (pip install --no-deps byzfl==0.0.11)")
    saved = {k: v for k, v in sys.modules.items() if k == "byzfl" or k.startswith("byzfl.")}
    for k in saved:
        del sys.modules[k]
    package = types.ModuleType("byzfl")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["byzfl"] = package
    try:
        return types.SimpleNamespace(
            agg=importlib.import_module("byzfl.aggregators.aggregators"),
            pre=importlib.import_module("byzfl.aggregators.preaggregators"),
            attacks=importlib.import_module("byzfl.attacks.attacks"),
        )
    finally:
        for k in [k for k in sys.modules if k == "byzfl" or k.startswith("byzfl.")]:
            del sys.modules[k]
        sys.modules.update(saved)


SEEDS = range(6)
AGGREGATOR_CASES = [
    ("Average", {}), ("Median", {}), ("TrMean", {"f": 2}), ("TrMean", {"f": 0}),
    ("GeometricMedian", {}), ("GeometricMedian", {"nu": 0.5, "T": 20}),
    ("Krum", {"f": 2}), ("MultiKrum", {"f": 1}), ("MultiKrum", {"f": 3}),
    ("CenteredClipping", {}), ("CenteredClipping", {"L": 3, "tau": 2.0}),
    ("MDA", {"f": 2}), ("MoNNA", {"f": 2, "idx": 0}), ("MoNNA", {"f": 3, "idx": 4}),
    ("Meamed", {"f": 2}),
]


def random_input(seed: int) -> np.ndarray:
    rng = np.random.default_rng(1000 + seed)
    n, d = int(rng.integers(9, 12)), int(rng.integers(2, 12))
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 4.0)
    x[: int(rng.integers(1, 3))] += rng.normal(size=d) * 10.0  # a few outliers
    return x


def both_paths(ours, theirs, x: np.ndarray) -> None:
    """numpy float64 on both sides (tight), and ByzFL's torch float32 path against ours."""
    np.testing.assert_allclose(ours(x.copy()), theirs(x.copy()), rtol=1e-9, atol=1e-9)
    x32 = torch.tensor(x, dtype=torch.float32)
    np.testing.assert_allclose(ours(x32.clone()).numpy(), theirs(x32.clone()).numpy(),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,params", AGGREGATOR_CASES,
                         ids=[f"{n}{p}" for n, p in AGGREGATOR_CASES])
def test_aggregators_match_byzfl_on_random_inputs(byzfl, name, params):
    registered(name, "aggregator")
    for seed in SEEDS:
        x = random_input(seed)
        both_paths(lambda v, params=params: aggregate(name, v, **params),
                   lambda v, params=params: getattr(byzfl.agg, name)(**params)(v), x)


PRE_CASES = [("NNM", {"f": 2}), ("NNM", {"f": 0}), ("Clipping", {"c": 2.0}),
             ("Clipping", {"c": 10.0}), ("ARC", {"f": 2}), ("ARC", {"f": 4}),
             ("ARC", {"f": 0})]


@pytest.mark.parametrize("name,params", PRE_CASES, ids=[f"{n}{p}" for n, p in PRE_CASES])
def test_pre_aggregators_match_byzfl_on_random_inputs(byzfl, name, params):
    for seed in SEEDS:
        x = random_input(seed)
        both_paths(lambda v, params=params: preaggregate(name, v, **params),
                   lambda v, params=params: getattr(byzfl.pre, name)(**params)(v), x)


@pytest.mark.parametrize("s", [1, 2, 3, 4])
def test_bucketing_matches_byzfl_given_the_same_permutation(byzfl, s, monkeypatch):
    for seed in SEEDS:
        x = random_input(seed)
        order = preaggregate("bucketing", np.arange(len(x), dtype=float)[:, None], s=1,
                             key=seed)[:, 0].astype(int)  # our permutation for this key
        monkeypatch.setattr(byzfl.pre, "random_tool", lambda v, order=order: types.SimpleNamespace(
            permutation=lambda rows: rows[order]))
        both_paths(lambda v, seed=seed: preaggregate("bucketing", v, s=s, key=seed),
                   lambda v: byzfl.pre.Bucketing(s)(v), x)


def test_chains_match_byzfls_pre_agg_list(byzfl):
    registered("TrMean", "aggregator")
    for seed in SEEDS:
        x = random_input(seed)
        ours = lambda v: aggregate("TrMean", v, f=2, pre_agg_list=[  # noqa: E731
            {"name": "Clipping", "parameters": {"c": 3.0}}, {"name": "NNM", "f": 2}])

        def theirs(v):
            for pre in (byzfl.pre.Clipping(3.0), byzfl.pre.NNM(2)):
                v = pre(v)
            return byzfl.agg.TrMean(2)(v)

        both_paths(ours, theirs, x)


def test_the_library_takes_byzfls_own_objects_as_agg_and_pre_agg_list(byzfl):
    registered("TrMean", "aggregator")
    ours = aggregate("average", X, pre_agg_list=[byzfl.pre.Clipping(3.0), byzfl.pre.NNM(2)])
    np.testing.assert_allclose(ours, byzfl.agg.Average()(byzfl.pre.NNM(2)(
        byzfl.pre.Clipping(3.0)(X.copy()))), atol=1e-12)
    name = registered("Optimal_InnerProductManipulation", "attack")
    theirs = byzfl.attacks.Optimal_InnerProductManipulation(agg=byzfl.agg.Median(),
                                                            pre_agg_list=[], f=2)
    np.testing.assert_allclose(attack(name, X[:5], agg=byzfl.agg.Median(), pre_agg_list=[], f=2),
                               theirs(X[:5].copy()), atol=1e-9)


def byzfl_defence(byzfl, spec: dict):
    params = {k: v for k, v in spec.items() if k != "name"}
    return getattr(byzfl.agg, spec["name"])(**params)


ATTACK_CASES = [
    ("SignFlipping", {}), ("InnerProductManipulation", {"tau": 3.0}),
    ("ALittleIsEnough", {"tau": 1.5}), ("ALittleIsEnough", {"tau": 0.5}),
    ("Mimic", {"epsilon": 2}), ("LabelFlipping", {}), ("Inf", {}),
    ("Optimal_InnerProductManipulation", {"agg": {"name": "Median"}, "f": 2}),
    ("Optimal_InnerProductManipulation", {"agg": {"name": "TrMean", "f": 2}, "f": 2,
                                          "pre_agg_list": []}),
    ("Optimal_ALittleIsEnough", {"agg": {"name": "TrMean", "f": 2}, "f": 2,
                                 "pre_agg_list": []}),
    ("Optimal_ALittleIsEnough", {"agg": {"name": "Average"}, "f": 1}),  # ByzFL's [Clipping()]
    ("Optimal_ALittleIsEnough", {"agg": {"name": "Median"}, "f": 3,
                                 "pre_agg_list": [{"name": "NNM", "f": 3}]}),
]


@pytest.mark.parametrize("name,params", ATTACK_CASES, ids=[f"{n}{p}" for n, p in ATTACK_CASES])
def test_attacks_match_byzfl_on_random_inputs(byzfl, name, params):
    registered(name, "attack")
    theirs_params = dict(params)
    if "agg" in params:
        registered(params["agg"]["name"], "aggregator")
        theirs_params["agg"] = byzfl_defence(byzfl, params["agg"])
    if "pre_agg_list" in params:
        theirs_params["pre_agg_list"] = [
            getattr(byzfl.pre, p["name"])(**{k: v for k, v in p.items() if k != "name"})
            for p in params["pre_agg_list"]]
    theirs = getattr(byzfl.attacks, name)(**theirs_params)
    for seed in SEEDS:
        honest = random_input(seed)[:7]
        if not name.startswith("Optimal"):
            both_paths(lambda v: attack(name, v, **params), theirs, honest)
            continue
        # The line search's objective ||agg(pre(H + f attacks)) - mean(H)|| is flat once the
        # attack is screened out, and there its comparisons (y' > y) read rounding noise, so
        # the two searches may stop at different tau on a plateau: compare what each achieves
        # (by ByzFL's own defence, in float64); the reference cases pin exact vectors.
        def achieved(vector: np.ndarray, honest=honest) -> float:
            rows = np.concatenate([honest, np.repeat(vector[None], params["f"], 0)])
            for pre in theirs.pre_agg_list:
                rows = pre(rows.copy())
            return float(np.linalg.norm(theirs.agg(rows) - honest.mean(0)))

        best = achieved(theirs(honest.copy()))
        assert achieved(attack(name, honest, **params)) == pytest.approx(best, rel=1e-9)
        x32 = torch.tensor(honest, dtype=torch.float32)
        ours32 = attack(name, x32, **params).double().numpy()
        assert achieved(ours32) == pytest.approx(best, rel=1e-4)


def test_gaussian_attack_draws_byzfls_distribution(byzfl):
    name = registered("Gaussian", "attack")
    honest = np.zeros((3, 40000))
    ours = attack(name, honest, mu=1.0, sigma=2.0, key=5)
    np.random.seed(0)
    theirs = byzfl.attacks.Gaussian(mu=1.0, sigma=2.0)(honest)
    for sample in (ours, theirs):
        assert abs(sample.mean() - 1.0) < 0.05 and abs(sample.std() - 2.0) < 0.05


def test_random_aggregators_caf_and_smea_are_left_to_statistical_tests():
    # ByzFL's CAF and SMEA start their power iterations from numpy's / torch's global random
    # vector, so no seeded comparison is possible; tests/test_robust_aggregators.py checks them
    # by their definitions. Here only the names, when they exist, go through the library.
    for name in ("CAF", "SMEA"):
        if BYZFL_NAMES[name] in AGGREGATORS:
            out = aggregate(name, X, f=1)
            assert np.isfinite(out).all() and out.shape == (3,)


SHARED_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "specs" / "byzfl_reference.json"


@pytest.mark.skipif(not SHARED_REFERENCE.exists(), reason="no shared/specs next to this checkout")
def test_the_reference_copy_is_the_specs_file():
    assert json.loads(REFERENCE.read_text()) == json.loads(SHARED_REFERENCE.read_text())
