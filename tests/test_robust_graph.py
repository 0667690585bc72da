"""The graph rules of murmura.robust.graph_rules against hand-computed cases, ByzFL's centred
clipping outputs, a loop-by-loop numpy Bulyan, and properties (the order of the messages,
translation, the honest bounds); their errors, the neighbour counts they need, and D-SGD runs
with an adversary on a graph."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from murmura.data import federate
from murmura.robust import Adversary, make_aggregator
from murmura.robust.graph_rules import (
    BridgeTrimmedMean,
    Bulyan,
    SelfCenteredClipping,
    bridge,
    clipping_radius,
    closest_to_median_mean,
    minimum_neighbours,
)
from murmura.swarm import Evaluation, Simulation

REFERENCE = Path(__file__).resolve().parent / "data" / "byzfl_reference.json"  # ByzFL's outputs
PROPERTY = dict(max_examples=25, deadline=None, derandomize=True, database=None)


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def ones(k: int) -> torch.Tensor:
    return torch.ones(k)


# ---------------------------------------------------------------------------------------------
# self-centred clipping (ClippedGossip): hand cases


def test_a_far_neighbour_is_clipped_to_the_radius_and_the_others_pass():
    own = t([0.0, 0.0])
    received = t([[0, 0], [1, 0], [0, 1], [30, 40]])  # own first; the last at distance 50
    out = SelfCenteredClipping(tau=1.0)(own, received, ones(4), torch.full((4,), 0.25))
    # 0.25 * ((1, 0) + (0, 1) + (30, 40) * 1 / 50)
    torch.testing.assert_close(out, t([0.4, 0.45]))
    weights = t([0.4, 0.2, 0.2, 0.2])  # the receiver's mixing weights W[i, .], itself first
    out = SelfCenteredClipping(tau=1.0)(own, received, ones(4), weights)
    torch.testing.assert_close(out, t([0.2 * 1.6, 0.2 * 1.8]))


def test_the_rule_is_centred_on_the_receiver():
    own = t([10.0, 10.0])
    received = own + t([[0, 0], [3, 4], [0, -2]])
    out = SelfCenteredClipping(tau=2.5)(own, received, ones(3), t([0.5, 0.25, 0.25]))
    # (3, 4) has norm 5: clipped to (1.5, 2); (0, -2) passes
    torch.testing.assert_close(out, own + 0.25 * t([1.5, 0.0]))


def test_no_clipping_is_the_weighted_average():
    rng = np.random.default_rng(0)
    received = t(rng.normal(size=(5, 4)))
    weights = t(rng.dirichlet(np.ones(5)))
    out = SelfCenteredClipping(tau=math.inf)(received[0], received, ones(5), weights)
    torch.testing.assert_close(out, weights @ received, atol=1e-6, rtol=1e-6)


# a receiver at 0 with neighbours at distances 1, 2, 5 and 10
HAND_OWN = t([0.0, 0.0])
HAND = t([[0, 0], [1, 0], [0, 2], [3, 4], [6, 8]])
HAND_DIST = torch.linalg.vector_norm(HAND, dim=1)


@pytest.mark.parametrize("f,tau", [(0, 10.0), (1, 5.0), (2, 2.0), (3, 1.0), (4, 0.0), (9, 0.0)])
def test_the_adaptive_radius_clips_the_f_farthest_to_the_next_distance(f, tau):
    radius = clipping_radius(HAND_DIST, torch.full((5,), 0.2), ones(5), f=f)
    assert float(radius) == pytest.approx(tau)


@pytest.mark.parametrize("delta,tau", [(0.0, 10.0), (0.15, 5.0), (0.2, 2.0), (0.4, 2.0),
                                       (0.41, 1.0), (0.7, 1.0), (0.71, 0.0), (0.9, 0.0)])
def test_the_adaptive_radius_from_a_weight_budget(delta, tau):
    # weights: itself 0.2, then 0.1, 0.3, 0.25 and 0.15 (the farthest)
    weights = t([0.2, 0.1, 0.3, 0.25, 0.15])
    radius = clipping_radius(HAND_DIST, weights, ones(5), delta=delta)
    assert float(radius) == pytest.approx(tau)


def test_the_adaptive_rule_on_a_hand_neighbourhood():
    weights = torch.full((5,), 0.2)
    # f = 1 (the default, the official code's second-largest distance): (6, 8) -> (3, 4)
    out = SelfCenteredClipping()(HAND_OWN, HAND, ones(5), weights)
    torch.testing.assert_close(out, 0.2 * t([1 + 0 + 3 + 3, 0 + 2 + 4 + 4]))
    # f = 2: radius 2, so (3, 4) and (6, 8) both count as (1.2, 1.6)
    out = SelfCenteredClipping(f=2)(HAND_OWN, HAND, ones(5), weights)
    torch.testing.assert_close(out, 0.2 * t([1 + 0 + 1.2 + 1.2, 0 + 2 + 1.6 + 1.6]))
    # a budget covering every neighbour: radius 0, the node keeps its model
    out = SelfCenteredClipping(f=4)(HAND_OWN, HAND, ones(5), weights)
    torch.testing.assert_close(out, HAND_OWN)


def test_padding_and_non_finite_messages_add_nothing():
    weights = torch.full((7,), 0.2)
    weights[5:] = 7.0  # the engine sends 0 at padding; garbage must not matter either
    padded = torch.cat([HAND, t([[1e6, -1e6], [3.0, 3.0]])])
    mask = t([1, 1, 1, 1, 1, 0, 0])
    for rule in (SelfCenteredClipping(tau=1.0), SelfCenteredClipping(f=1),
                 SelfCenteredClipping(delta=0.3)):
        torch.testing.assert_close(rule(HAND_OWN, padded, mask, weights),
                                   rule(HAND_OWN, HAND, ones(5), weights[:5]))
    inf_row = torch.cat([HAND, t([[math.inf, math.inf]]), t([[math.nan, 0.0]])])
    weights = torch.full((7,), 1 / 7)
    out = SelfCenteredClipping(f=3)(HAND_OWN, inf_row, ones(7), weights)
    # the two broken rows rank farthest and add nothing; f = 3 clips them and (6, 8), to the
    # fourth farthest distance, 5
    torch.testing.assert_close(out, (1 / 7) * t([1 + 0 + 3 + 3, 0 + 2 + 4 + 4]))


def test_without_weights_the_valid_rows_weigh_alike():
    out = SelfCenteredClipping(tau=1.0)(HAND_OWN, HAND, ones(5))
    weighted = SelfCenteredClipping(tau=1.0)(HAND_OWN, HAND, ones(5), torch.full((5,), 0.2))
    torch.testing.assert_close(out, weighted)


@pytest.mark.skipif(not REFERENCE.exists(), reason="shared/specs/byzfl_reference.json not found")
def test_at_a_server_it_is_byzfls_centered_clipping_one_iteration_at_a_time():
    """With equal weights and the previous aggregate as the centre, the rule is one iteration
    of ByzFL's CenteredClipping: L = 3 iterations from m = 0 reproduce ByzFL's output."""
    spec = json.loads(REFERENCE.read_text())
    rows = t(spec["inputs"]["X"])
    for case in spec["cases"]:
        if case["name"] != "CenteredClipping":
            continue
        v = torch.zeros(rows.shape[1])
        for _ in range(case["params"]["L"]):
            v = SelfCenteredClipping(tau=case["params"]["tau"])(v, rows, ones(len(rows)))
        np.testing.assert_allclose(v.numpy(), case["output"], atol=spec["tolerance"]["atol"],
                                   rtol=0)


# ---------------------------------------------------------------------------------------------
# Bulyan: hand cases and a loop-by-loop reference


# 1-D: a cluster of five and two far vectors, shuffled; f = 1, n = 7 = 4f + 3, theta = 5
BULYAN_ROWS = t([[1000, 0], [2.5, 0], [9, 0], [-1000, 0], [2.8, 0], [4, 0], [3, 0]])


def test_bulyan_selects_the_cluster_then_averages_the_values_nearest_the_median():
    rule = Bulyan(f=1)
    assert rule.select(BULYAN_ROWS, ones(7)).tolist() == [0, 1, 1, 0, 1, 1, 1]
    # S = {2.5, 2.8, 3, 4, 9}: median 3; beta = 3 nearest: 3, 2.8, 2.5
    out = rule(BULYAN_ROWS[0], BULYAN_ROWS, ones(7))
    torch.testing.assert_close(out, t([(3 + 2.8 + 2.5) / 3, 0.0]))
    # BRIDGE-B's last stage: drop the smallest and the largest of S: 2.8, 3, 4
    out = Bulyan(f=1, final="trimmed_mean")(BULYAN_ROWS[0], BULYAN_ROWS, ones(7))
    torch.testing.assert_close(out, t([(2.8 + 3 + 4) / 3, 0.0]))


def test_bulyan_with_f_0_is_the_mean():
    rows = t(np.random.default_rng(1).normal(size=(6, 3)))
    torch.testing.assert_close(Bulyan(f=0)(rows[0], rows, ones(6)), rows.mean(0))


def bulyan_numpy(rows: np.ndarray, f: int, final: str = "median") -> np.ndarray:
    """El Mhamdi et al.'s Bulyan written out: theta = n - 2f Krum winners (ByzFL's score: the
    r - f - 1 nearest others; ties to the smaller total distance), then per coordinate the mean
    of the beta = theta - 2f values nearest the median (or the f-trimmed mean)."""
    x = rows.astype(np.float64)
    n = len(x)
    dist = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    remaining, chosen = list(range(n)), []
    for _ in range(n - 2 * f):
        r = len(remaining)
        score = {i: sum(sorted(dist[i, j] for j in remaining if j != i)[: max(r - f - 1, 0)])
                 for i in remaining}
        low = min(score.values())
        tied = [i for i in remaining if score[i] == low]
        best = min(tied, key=lambda i: sum(dist[i, j] for j in remaining))
        chosen.append(best)
        remaining.remove(best)
    s = x[chosen]
    if final == "trimmed_mean":
        return np.sort(s, axis=0)[f : len(s) - f].mean(0)
    beta = len(s) - 2 * f
    median = np.median(s, axis=0)
    nearest = np.take_along_axis(s, np.argsort(np.abs(s - median), axis=0, kind="stable"), 0)
    return nearest[:beta].mean(0)


@pytest.mark.parametrize("n,f", [(3, 0), (7, 1), (8, 1), (10, 1), (11, 2), (12, 2)])
@pytest.mark.parametrize("final", ["median", "trimmed_mean"])
def test_bulyan_is_the_loop_by_loop_definition(n, f, final):
    rng = np.random.default_rng(10 * n + f)
    rows = rng.normal(size=(n, 5))
    rows[:f] = rng.normal(size=(f, 5)) * 20 + 3  # f of them far off
    got = Bulyan(f=f, final=final)(t(rows[0]), t(rows), ones(n))
    np.testing.assert_allclose(got.numpy(), bulyan_numpy(rows, f, final), rtol=1e-5, atol=1e-5)


def test_the_nearest_to_median_mean_on_byzfls_meamed_input():
    """ByzFL's Meamed(f=2) on X keeps the 5 values nearest each column's median: [2.9, 1.8,
    2.2]. Columns 0 and 2 have a tie at the cut (7 and -3 both 5 from the median 2; 6 and 0
    both 3 from 3), which ByzFL's argpartition breaks one way, then the other; this rule keeps
    the lower value in both. Column 1 has no tie at the cut and agrees."""
    rows = t([[1, 2, 3], [4, 5, 6], [7, 8, 9], [0.5, -1, 2], [10, -10, 0], [2, 2, 2],
              [-3, 1, 4]])
    out = closest_to_median_mean(rows, torch.ones(7, dtype=torch.bool), torch.tensor(5.0))
    expected = [(1 + 4 + 0.5 + 2 - 3) / 5, (2 + 5 - 1 + 2 + 1) / 5, (3 + 2 + 0 + 2 + 4) / 5]
    torch.testing.assert_close(out, t(expected))
    if REFERENCE.exists():
        case = next(c for c in json.loads(REFERENCE.read_text())["cases"]
                    if c["name"] == "Meamed")
        np.testing.assert_allclose(out[1:].numpy(), case["output"][1:], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# BRIDGE


def test_bridge_t_trims_the_neighbours_and_keeps_the_node_itself():
    own = t([200.0])
    received = t([[200.0], [1.0], [2.0], [3.0], [100.0], [-100.0]])  # own first
    out = BridgeTrimmedMean(f=1)(own, received, ones(6))
    torch.testing.assert_close(out, t([(200 + 1 + 2 + 3) / 4]))
    # a trimmed mean over the node and its neighbours alike would trim the node itself
    plain = make_aggregator({"name": "trimmed_mean", "f": 1})(own, received, ones(6))
    torch.testing.assert_close(plain, t([(1 + 2 + 3 + 100) / 4]))
    # with fewer than 2f + 1 neighbours nothing is left: the node keeps its value
    torch.testing.assert_close(BridgeTrimmedMean(f=2)(own, received[:5], ones(5)), own)


def test_bridge_names_its_four_screenings():
    assert bridge() == BridgeTrimmedMean(f=0)
    assert make_aggregator({"name": "bridge", "f": 2}) == BridgeTrimmedMean(f=2)
    assert type(make_aggregator({"name": "bridge", "screening": "median"})).__name__ == "Median"
    krum = make_aggregator({"name": "bridge", "screening": "krum", "f": 1})
    assert type(krum).__name__ == "Krum" and krum.f == 1
    assert (make_aggregator({"name": "bridge", "screening": "bulyan", "f": 1})
            == Bulyan(f=1, final="trimmed_mean"))


# ---------------------------------------------------------------------------------------------
# padding, vmap over receivers


RULES = {
    "scc_tau": SelfCenteredClipping(tau=0.8),
    "scc_f": SelfCenteredClipping(f=1),
    "scc_delta": SelfCenteredClipping(delta=0.25),
    "bulyan": Bulyan(f=1),
    "bridge_b": Bulyan(f=1, final="trimmed_mean"),
    "bridge_t": BridgeTrimmedMean(f=1),
}


def call(rule, own, received, mask, weights):
    if getattr(rule, "needs_weights", False):
        return rule(own, received, mask, weights)
    return rule(own, received, mask)


@pytest.mark.parametrize("name", sorted(RULES))
def test_vmapped_over_receivers_equals_one_call_each_on_the_unpadded_rows(name):
    rule = RULES[name]
    rng = np.random.default_rng(5)
    counts = [7, 9, 8, 11, 7]  # Bulyan(f=1) needs 7
    width, d = max(counts), 6
    received = np.zeros((len(counts), width, d), dtype=np.float32)
    mask = np.zeros((len(counts), width), dtype=np.float32)
    weights = np.zeros((len(counts), width), dtype=np.float32)
    for b, count in enumerate(counts):
        received[b, :count] = rng.normal(size=(count, d)) + 2.0
        received[b, 1] *= 15.0  # a far neighbour
        mask[b, :count] = 1.0
        weights[b, :count] = rng.dirichlet(np.ones(count))
    rows, m, w = torch.from_numpy(received), torch.from_numpy(mask), torch.from_numpy(weights)
    if getattr(rule, "needs_weights", False):
        out = torch.vmap(rule)(rows[:, 0], rows, m, w)
    else:
        out = torch.vmap(rule)(rows[:, 0], rows, m)
    for b, count in enumerate(counts):
        alone = call(rule, rows[b, 0], rows[b, :count], m[b, :count], w[b, :count])
        torch.testing.assert_close(out[b], alone, atol=1e-5, rtol=1e-5)
        garbage = rows[b].clone()
        garbage[count:] = 1e4  # padding that is not zero must not matter either
        torch.testing.assert_close(call(rule, rows[b, 0], garbage, m[b], w[b]), alone,
                                   atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# properties


def neighbourhood(seed: int, k: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    return t(rng.normal(size=(k, d)) * rng.uniform(0.5, 3.0)), t(rng.dirichlet(np.ones(k)))


@settings(**PROPERTY)
@given(data=st.data(), k=st.integers(3, 12), d=st.integers(1, 4),
       seed=st.integers(0, 2**32 - 1))
def test_the_order_of_the_neighbours_does_not_matter(data, k, d, seed):
    received, weights = neighbourhood(seed, k, d)
    own = received[0]
    order = [0] + list(data.draw(st.permutations(range(1, k))))  # own stays first
    f = (k - 3) // 4
    rules = [SelfCenteredClipping(tau=1.0), SelfCenteredClipping(f=min(f + 1, k - 1)),
             SelfCenteredClipping(delta=0.3), BridgeTrimmedMean(f=(k - 2) // 2),
             Bulyan(f=f), Bulyan(f=f, final="trimmed_mean")]
    everything = list(data.draw(st.permutations(range(k))))  # Bulyan treats no row apart
    for rule in rules:
        straight = call(rule, own, received, ones(k), weights)
        perm = everything if isinstance(rule, Bulyan) else order
        shuffled = call(rule, own, received[perm], ones(k), weights[perm])
        torch.testing.assert_close(shuffled, straight, atol=1e-5, rtol=1e-5, msg=repr(rule))


@settings(**PROPERTY)
@given(k=st.integers(3, 12), d=st.integers(1, 4), seed=st.integers(0, 2**32 - 1),
       shift=st.floats(-50, 50))
def test_a_translation_moves_the_result_alike(k, d, seed, shift):
    received, weights = neighbourhood(seed, k, d)
    offset = torch.linspace(-1.0, 1.0, d) * shift
    f = (k - 3) // 4
    for rule in (SelfCenteredClipping(tau=1.0), SelfCenteredClipping(f=1),
                 SelfCenteredClipping(delta=0.3), BridgeTrimmedMean(f=(k - 2) // 2),
                 Bulyan(f=f), Bulyan(f=f, final="trimmed_mean")):
        straight = call(rule, received[0], received, ones(k), weights)
        moved = call(rule, received[0] + offset, received + offset, ones(k), weights)
        torch.testing.assert_close(moved, straight + offset, atol=2e-4, rtol=1e-5,
                                   msg=repr(rule))


def attacked(seed: int, honest: int, byzantine: int, d: int, scale: float
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The receiver (first) and ``honest - 1`` honest neighbours, then ``byzantine`` rows
    anywhere (far, or planted inside the honest spread); returns (rows, is_honest)."""
    rng = np.random.default_rng(seed)
    good = rng.normal(size=(honest, d))
    bad = rng.normal(size=(byzantine, d)) * scale + rng.choice([-1, 1], size=(byzantine, 1))
    rows = t(np.concatenate([good, bad]))
    return rows, torch.arange(len(rows)) < honest


@settings(**PROPERTY)
@given(f=st.integers(0, 3), byzantine=st.integers(0, 3), extra=st.integers(0, 3),
       d=st.integers(1, 3), seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([0.5, 1e3]))
def test_below_the_breakdown_point_the_result_stays_within_the_honest_bounds(
        f, byzantine, extra, d, seed, scale):
    byzantine = min(byzantine, f)
    # BRIDGE-T and BRIDGE-B: within the honest vectors' bounding box
    for rule, n in ((BridgeTrimmedMean(f=f), 2 * f + 2 + extra),
                    (Bulyan(f=f, final="trimmed_mean"), 4 * f + 3 + extra)):
        rows, honest = attacked(seed, n - byzantine, byzantine, d, scale)
        out = rule(rows[0], rows, ones(n))
        low, high = rows[honest].min(0).values, rows[honest].max(0).values
        assert bool(((out >= low - 1e-5) & (out <= high + 1e-5)).all()), (rule, out, low, high)
    # Bulyan (the median form): within one width of the box (its median lies in the box and
    # the beta values nearest it are no farther than the farthest honest one)
    n = 4 * f + 3 + extra
    rows, honest = attacked(seed, n - byzantine, byzantine, d, scale)
    out = Bulyan(f=f)(rows[0], rows, ones(n))
    low, high = rows[honest].min(0).values, rows[honest].max(0).values
    width = high - low
    assert bool(((out >= low - width - 1e-5) & (out <= high + width + 1e-5)).all())
    # self-centred clipping, f adaptive: no farther from the node than its farthest honest
    # neighbour (the radius is at most that distance)
    n = f + 2 + extra
    rows, honest = attacked(seed, n - byzantine, byzantine, d, scale)
    weights = t(np.random.default_rng(seed).dirichlet(np.ones(n)))
    distance = torch.linalg.vector_norm(rows - rows[0], dim=1)
    farthest = float(distance[honest].max())
    assert float(clipping_radius(distance, weights, ones(n), f=f)) <= farthest + 1e-5
    out = SelfCenteredClipping(f=f)(rows[0], rows, ones(n), weights)
    assert float(torch.linalg.vector_norm(out - rows[0])) <= farthest + 1e-5


# ---------------------------------------------------------------------------------------------
# errors, and the neighbours each rule needs


@pytest.mark.parametrize("kwargs,message", [
    (dict(tau=0.0), "tau must be a number > 0"),
    (dict(tau=-1.0), "tau must be a number > 0"),
    (dict(tau="big"), "tau must be a number > 0"),
    (dict(tau=1.0, f=1), "fixed tau, or f or delta"),
    (dict(f=1, delta=0.2), "f .* or delta .*, not both"),
    (dict(f=-1), "f must be an integer >= 0"),
    (dict(f=1.5), "f must be an integer >= 0"),
    (dict(delta=1.0), r"delta .* must lie in \[0, 1\)"),
    (dict(delta=-0.1), r"delta .* must lie in \[0, 1\)"),
])
def test_self_centered_clipping_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SelfCenteredClipping(**kwargs)


@pytest.mark.parametrize("spec,message", [
    ({"name": "bulyan", "f": -1}, "bulyan: f must be an integer >= 0"),
    ({"name": "bulyan", "f": 0.5}, "bulyan: f must be an integer >= 0"),
    ({"name": "bulyan", "final": "mean"}, "final must be 'median'"),
    ({"name": "bulyan", "b": 1}, "has no parameter"),
    ({"name": "bridge", "screening": "mean"}, "screening must be one of trimmed_mean, median"),
    ({"name": "bridge", "f": True}, "bridge: f must be an integer >= 0"),
    ({"name": "self_centered_clipping", "tau": 0}, "tau must be a number > 0"),
])
def test_bad_graph_rule_specs_are_refused(spec, message):
    with pytest.raises(ValueError, match=message):
        make_aggregator(spec)


def test_minimum_neighbours_by_rule():
    assert minimum_neighbours({"name": "trimmed_mean", "f": 2}) == 5
    assert minimum_neighbours({"name": "bridge", "f": 2}) == 5
    assert minimum_neighbours("median") is None  # no f of its own
    assert minimum_neighbours("median", f=1) == 3
    assert minimum_neighbours({"name": "krum", "f": 1}) == 4
    assert minimum_neighbours({"name": "bulyan", "f": 1}) == 6
    assert minimum_neighbours(Bulyan(f=1), f=2) == 10
    assert minimum_neighbours("self_centered_clipping") == 2  # f = 1 by default
    assert minimum_neighbours({"name": "self_centered_clipping", "tau": 1.0}) is None
    assert minimum_neighbours({"name": "self_centered_clipping", "tau": 1.0}, f=2) is None
    assert minimum_neighbours({"name": "self_centered_clipping", "delta": 0.2}) is None
    assert minimum_neighbours({"name": "self_centered_clipping", "delta": 0.2}, f=2) == 3
    assert minimum_neighbours("average") is None
    with pytest.raises(ValueError, match="f must be an integer >= 0"):
        minimum_neighbours("median", f=-1)
    assert Bulyan(f=1).min_messages() == 7 and BridgeTrimmedMean(f=1).min_messages() == 4


# ---------------------------------------------------------------------------------------------
# on a graph, through the engine

NO_EVAL = Evaluation(every=0)


def test_clipping_with_no_radius_is_plain_gossip_through_the_engine():
    """The engine hands the rule its mixing weights (``needs_weights``): with tau = inf the
    rule is the linear mix x <- W x, so D-SGD runs exactly as without it."""
    data = federate("digits", num_nodes=6, partition="iid", seed=0)
    runs = []
    for aggregator in (None, {"name": "self_centered_clipping", "tau": math.inf}):
        sim = Simulation(data, "logreg", "dsgd", "ring", seed=2, same_init=False,
                         algorithm_kwargs=dict(lr=0.1, local_steps=1, aggregator=aggregator),
                         evaluation=NO_EVAL)
        sim.run(2)
        runs.append(sim.params.clone())
    torch.testing.assert_close(runs[1], runs[0], atol=1e-5, rtol=1e-5)


def test_bulyan_needs_4f_plus_3_messages_per_node():
    data = federate("digits", num_nodes=12, partition="iid", seed=0)

    def build(k):
        return Simulation(data, "logreg", "dsgd", "random_regular", topology_kwargs=dict(k=k),
                          algorithm_kwargs=dict(lr=0.1, local_steps=1,
                                                aggregator={"name": "bulyan", "f": 1}),
                          evaluation=NO_EVAL)

    with pytest.raises(ValueError, match="Bulyan needs at least 7 messages"):
        build(4)
    build(6)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small simulations: a second thread costs more than it gives
    yield
    torch.set_num_threads(threads)


def test_robust_graph_rules_hold_off_sign_flipping_neighbours(one_thread):
    """D-SGD on a 6-regular graph of 16 nodes, 3 of them sending -mean of what they see: the
    plain average lets the worst honest node fall far behind; each graph rule does not."""
    data = federate("digits", num_nodes=16, partition="iid", seed=0)

    def worst_honest(aggregator):
        sim = Simulation(data, "logreg", "dsgd", "random_regular", topology_kwargs=dict(k=6),
                         seed=1, algorithm_kwargs=dict(lr=0.1, local_steps=2,
                                                       aggregator=aggregator),
                         adversary=Adversary("sign_flip", count=3),
                         evaluation=Evaluation(every=10, node_samples=200))
        final = sim.run(10).records[-1]
        assert math.isfinite(final["honest_node_accuracy_mean"])
        return final["honest_node_accuracy_min"]

    plain = worst_honest("average")
    for aggregator in ({"name": "bridge", "f": 2}, {"name": "bridge", "screening": "bulyan",
                                                     "f": 1},
                       {"name": "bulyan", "f": 1}, {"name": "self_centered_clipping", "f": 2}):
        assert worst_honest(aggregator) > plain + 0.15, aggregator
