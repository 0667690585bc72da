"""The ByzFL aggregators (murmura.robust: aggregators, distance_rules, spectral_rules) against
ByzFL's own outputs, hand-computed cases, line-by-line transcripts of ByzFL's random rules (same
seed, same draws), and properties: padding never matters, vmap equals the per-receiver loop,
permutation invariance, translation equivariance, and each rule's bound for f below its
breakdown point."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from murmura.data import federate
from murmura.robust import (
    CAF,
    MDA,
    SMEA,
    Average,
    CenteredClipping,
    GeometricMedian,
    Krum,
    Meamed,
    Median,
    MoNNA,
    MultiKrum,
    TrimmedMean,
    aggregate,
    make_aggregator,
)
from murmura.robust.aggregators import check_messages
from murmura.swarm import Evaluation, Simulation

# ByzFL 0.0.11's own outputs, copied from shared/specs/byzfl_reference.json
REFERENCE = Path(__file__).resolve().parent / "data" / "byzfl_reference.json"
BYZFL = {"Average": Average, "Median": Median, "TrMean": TrimmedMean,
         "GeometricMedian": GeometricMedian, "Krum": Krum, "MultiKrum": MultiKrum,
         "CenteredClipping": CenteredClipping, "MDA": MDA, "MoNNA": MoNNA, "Meamed": Meamed,
         "CAF": CAF, "SMEA": SMEA}
PROPERTY = settings(max_examples=25, deadline=None, derandomize=True, database=None)


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def call(rule, rows: torch.Tensor, mask: torch.Tensor | None = None, own=None, key=None):
    mask = torch.ones(len(rows)) if mask is None else mask
    own = rows[0] if own is None else own
    return rule(own, rows, mask) if key is None else rule(own, rows, mask, key)


def one_d(*values: float) -> torch.Tensor:
    return t([[v] for v in values])


# ---------------------------------------------------------------------------------------------
# ByzFL's own outputs (byzfl==0.0.11, shared/specs/byzfl_reference.json)


def reference_cases() -> list[dict]:
    spec = json.loads(REFERENCE.read_text())
    return [{**c, "rows": spec["inputs"][c["input"]], "atol": spec["tolerance"]["atol"]}
            for c in spec["cases"] if c["kind"] == "aggregator"]


@pytest.mark.skipif(not REFERENCE.exists(), reason="shared/specs/byzfl_reference.json not found")
def test_every_byzfl_aggregator_reference_case_matches():
    cases = reference_cases()
    assert len(cases) == 12 and {c["name"] for c in cases} <= set(BYZFL)
    for case in cases:
        rows = t(case["rows"])
        # ByzFL's pivots: MoNNA's x_idx; CenteredClipping's first call starts from zeros
        own = (torch.zeros(rows.shape[1]) if case["name"] == "CenteredClipping"
               else rows[case["params"].get("idx", 0)])
        out = BYZFL[case["name"]](**case["params"])(own, rows, torch.ones(len(rows)))
        np.testing.assert_allclose(out.numpy(), case["output"], atol=case["atol"], rtol=0,
                                   err_msg=f"{case['name']}({case['params']})")
        # the same through the library, under ByzFL's class name and parameters
        lib = aggregate(case["name"], np.array(case["rows"]), **case["params"])
        np.testing.assert_allclose(lib, case["output"], atol=case["atol"], rtol=0)


def test_registry_names_and_byzfl_defaults():
    names = ["average", "median", "trimmed_mean", "geometric_median", "krum", "multi_krum",
             "centered_clipping", "mda", "monna", "meamed", "caf", "smea"]
    for name in names:
        rule = make_aggregator({"name": name, "f": 1} if name == "trimmed_mean" else name)
        assert callable(rule), name
    assert GeometricMedian() == GeometricMedian(nu=0.1, T=3, start="zero")
    assert CenteredClipping() == CenteredClipping(L=1, tau=100.0)
    for cls in (Krum, MultiKrum, MDA, MoNNA, Meamed, CAF, SMEA):
        assert cls().f == 0, cls
    assert MoNNA().idx == 0
    assert not MDA.vectorized and not CAF.vectorized and not SMEA.vectorized
    assert CAF.needs_key and SMEA.needs_key


# ---------------------------------------------------------------------------------------------
# hand-computed cases


def test_krum_and_multi_krum_by_hand():
    # points 0, 1, 2, 10, 11 with f = 1: each scored by its 3 nearest others' squared distances
    # 0: 1+4+100 = 105, 1: 1+1+81 = 83, 2: 1+4+64 = 69, 10: 1+64+81 = 146, 11: 1+81+100 = 182
    x = one_d(0, 1, 2, 10, 11)
    assert call(Krum(f=1), x).tolist() == [2.0]
    assert call(MultiKrum(f=1), x).tolist() == [3.25]  # mean of 2, 1, 0, 10
    assert call(MultiKrum(f=0), x).item() == pytest.approx(4.8)  # every vector


def test_meamed_mda_monna_by_hand():
    # median 2; the 4 values nearest it: 2, 1, 0 (distance 2) and 10 (8) -> 13 / 4
    assert call(Meamed(f=1), one_d(0, 1, 2, 10, 11)).tolist() == [3.25]
    # triples of 0, 1, 3, 10, 11: {0, 1, 3} has the smallest diameter (3; {3, 10, 11}: 8)
    assert call(MDA(f=2), one_d(0, 1, 3, 10, 11)).item() == pytest.approx(4 / 3)
    # the 4 nearest own = 10: 10, 11, 2, 1 -> 6, whatever the first row is
    assert call(MoNNA(f=1), one_d(0, 1, 2, 10, 11), own=t([10.0])).tolist() == [6.0]


def test_geometric_median_and_centered_clipping_by_hand():
    x = t([[3.0, 4.0], [0.0, 0.0]])
    # from z = 0: beta = (max(nu, 5), max(nu, 0)) = (5, 0.1): z = (x_0 / 5) / (1/5 + 10)
    out = call(GeometricMedian(nu=0.1, T=1), x)
    torch.testing.assert_close(out, t([3.0, 4.0]) / 5 / 10.2)
    # start = "mean": z_0 = (1.5, 2), both 2.5 away: one step stays at the mean
    torch.testing.assert_close(call(GeometricMedian(T=1, start="mean"), x), t([1.5, 2.0]))
    # centered clipping from own = 0, tau = 1: (3, 4) is clipped to (0.6, 0.8), (0, 1) is not
    y = t([[3.0, 4.0], [0.0, 1.0]])
    v1 = (t([0.6, 0.8]) + t([0.0, 1.0])) / 2
    torch.testing.assert_close(call(CenteredClipping(tau=1.0), y, own=torch.zeros(2)), v1)
    d0, d1 = y[0] - v1, y[1] - v1  # the second step: |d0| > 1 is clipped, |d1| < 1 is not
    v2 = v1 + (d0 / d0.norm() + d1) / 2
    torch.testing.assert_close(call(CenteredClipping(L=2, tau=1.0), y, own=torch.zeros(2)), v2)
    assert call(CenteredClipping(L=0), y, own=t([7.0, 7.0])).tolist() == [7.0, 7.0]


def test_smea_and_caf_exact_by_hand():
    # SMEA(f=1) on 0, 1, 2, 10: {0, 1, 2} has the flattest scatter (2) -> mean 1
    x = one_d(0, 1, 2, 10)
    assert call(SMEA(f=1, power_iterations=None), x).tolist() == [1.0]
    # CAF in one dimension: the eigenvector is +-1, tau_i = (x_i - mu)^2; a plain transcript
    values = np.array([0.0, 1.0, 2.0, 10.0])
    c, best, smallest = np.ones(4), None, math.inf
    while c.sum() > 4 - 2:
        mu = (c * values).sum() / c.sum()
        lam = (c * (values - mu) ** 2).sum() / c.sum()
        if lam < smallest:
            best, smallest = mu, lam
        tau = (values - mu) ** 2
        c = c * (1 - tau / tau.max())
    out = call(CAF(f=1, power_iterations=None), x.double())
    assert out.item() == pytest.approx(best, rel=1e-9)
    assert 0.9 < best < 1.2  # the outlier went at the first step
    # where ByzFL returns None (f = 0: no filtering; identical vectors: a 0/0 direction)
    assert call(CAF(f=0), x).tolist() == [3.25]
    same = t([[1.0, 2.0]] * 5)
    for rule in (CAF(f=2), CAF(f=2, power_iterations=None), SMEA(f=2)):
        assert call(rule, same, key=torch.tensor(0)).tolist() == [1.0, 2.0]


# ---------------------------------------------------------------------------------------------
# ByzFL's random rules: a transcript of its torch path, drawing from the same seed


def byzfl_caf(vectors: torch.Tensor, f: int) -> torch.Tensor:
    """byzfl/aggregators/aggregators.py::CAF.__call__ (torch path), max_iters = 1."""
    n, dimension = vectors.shape
    c = torch.ones(n)
    c_sum, eigen_val, best_mu_c = c.sum(), float("inf"), None
    while c_sum > n - 2 * f:
        current_mu_c = (c[:, None] * vectors).sum(0) / c_sum
        diffs = vectors - current_mu_c
        vector = torch.randn(dimension)
        vector = vector / torch.linalg.norm(vector)
        dot_products = diffs @ vector
        weighted_sum = (c[:, None] * diffs * dot_products[:, None]).sum(0) / c.sum()
        max_eigen_vec = weighted_sum / torch.linalg.norm(weighted_sum)
        max_eigen_val = max_eigen_vec @ weighted_sum
        if max_eigen_val < eigen_val:
            eigen_val, best_mu_c = max_eigen_val, current_mu_c
        tau = (diffs @ max_eigen_vec) ** 2
        c = c * (1 - tau / tau.max())
        c_sum = c.sum()
    return best_mu_c


def byzfl_smea(vectors: torch.Tensor, f: int) -> torch.Tensor:
    """byzfl/aggregators/aggregators.py::SMEA.__call__ (torch path), max_iters = 1."""
    n, dimension = vectors.shape
    min_eigenvalue, min_subset = float("inf"), None
    for subset in itertools.combinations(range(n), n - f):
        grads = vectors[torch.tensor(subset)]
        diffs = grads - grads.mean(0)
        vector = torch.randn(dimension)
        vector = vector / torch.linalg.norm(vector)
        weighted_sum = (diffs * (diffs @ vector)[:, None]).sum(0)
        value = (weighted_sum / torch.linalg.norm(weighted_sum)) @ weighted_sum
        if value < min_eigenvalue:
            min_eigenvalue, min_subset = value, subset
    return vectors[torch.tensor(min_subset)].mean(0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_caf_and_smea_draw_as_byzfl_does(seed):
    """No key: torch's global generator, one ``randn(d)`` per eigenvalue in ByzFL's order, so
    the same ``torch.manual_seed`` gives ByzFL's output."""
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(seed))
    x[:2] += 3.0
    for rule, transcript in ((CAF(f=2), byzfl_caf), (SMEA(f=2), byzfl_smea)):
        torch.manual_seed(100 + seed)
        expected = transcript(x, 2)
        torch.manual_seed(100 + seed)
        out = call(rule, x)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_a_key_seeds_caf_and_smea():
    x = torch.randn(8, 30, generator=torch.Generator().manual_seed(3))
    for rule in (CAF(f=2), SMEA(f=2)):
        a = call(rule, x, key=torch.tensor(11))
        assert torch.equal(a, call(rule, x, key=torch.tensor(11)))
        torch.manual_seed(0)  # the key, not torch's generator, decides
        assert torch.equal(a, call(rule, x, key=torch.tensor(11)))
    draws = {tuple(call(SMEA(f=3), x, key=torch.tensor(k)).tolist()) for k in range(6)}
    assert len(draws) > 1  # one noisy power step per subset: different keys, other choices
    exact = SMEA(f=3, power_iterations=None)
    assert torch.equal(call(exact, x, key=torch.tensor(1)), call(exact, x, key=torch.tensor(2)))


def test_byzfls_one_step_eigenvalue_misleads_smea_where_the_exact_one_does_not():
    """Documented, not a murmura defect: with many subsets, one random power step per subset
    lets some subset holding outliers look flat; the exact eigenvalue never does."""
    x = torch.randn(12, 3, generator=torch.Generator().manual_seed(0))
    x[:3] += 30.0
    honest = x[3:].mean(0)
    exact = call(SMEA(f=3, power_iterations=None), x)
    torch.testing.assert_close(exact, honest)
    noisy = [call(SMEA(f=3), x, key=torch.tensor(k)) for k in range(10)]
    assert any(float((v - honest).norm()) > 1.0 for v in noisy)


def test_caf_filters_far_outliers_statistically():
    """ByzFL's form (one random power step): over 20 keys CAF lands near the honest mean."""
    gen = torch.Generator().manual_seed(5)
    errors = []
    for k in range(20):
        x = torch.randn(12, 20, generator=gen)
        x[:3] += 25.0
        errors.append(float((call(CAF(f=3), x, key=torch.tensor(k)) - x[3:].mean(0)).norm()))
    assert np.median(errors) < 1.0 and max(errors) < 5.0  # the outliers sit 25 * sqrt(20) away


# ---------------------------------------------------------------------------------------------
# padding, vmap, clamping, non-finite messages

VECTORIZED = {
    "average": Average(), "median": Median(), "trimmed_mean": TrimmedMean(f=1),
    "meamed": Meamed(f=1), "geometric_median": GeometricMedian(), "krum": Krum(f=1),
    "multi_krum": MultiKrum(f=1), "monna": MoNNA(f=1), "centered_clipping": CenteredClipping(
        L=2, tau=1.0), "gm_mean": GeometricMedian(T=5, start="mean"),
}
UNVECTORIZED = {"mda": MDA(f=1), "caf": CAF(f=1), "smea": SMEA(f=1),
                "caf_exact": CAF(f=1, power_iterations=None),
                "smea_exact": SMEA(f=1, power_iterations=None)}
ALL = {**VECTORIZED, **UNVECTORIZED}


def keyed(rule, own, rows, mask):
    key = torch.tensor(7) if getattr(rule, "needs_key", False) else None
    return call(rule, rows, mask, own=own, key=key)


@pytest.mark.parametrize("name", sorted(ALL))
def test_padded_rows_never_change_the_result(name):
    rule = ALL[name]
    gen = torch.Generator().manual_seed(1)
    for k in (3, 4, 6):
        rows = torch.randn(k, 5, generator=gen) + 2.0
        base = keyed(rule, rows[0], rows, torch.ones(k))
        for pad in (torch.zeros(3, 5), 1e4 * torch.randn(3, 5, generator=gen),
                    t([[math.inf] * 5, [math.nan] * 5, [-math.inf, 1, 2, 3, 4]])):
            for where in ("end", "middle"):
                stack = torch.cat([rows, pad]) if where == "end" else torch.cat(
                    [rows[:1], pad, rows[1:]])
                mask = (torch.cat([torch.ones(k), torch.zeros(3)]) if where == "end" else
                        torch.cat([torch.ones(1), torch.zeros(3), torch.ones(k - 1)]))
                out = keyed(rule, rows[0], stack, mask)
                torch.testing.assert_close(out, base, atol=1e-5, rtol=1e-5,
                                           msg=f"{name}, k={k}, padding {where}")


@pytest.mark.parametrize("name", sorted(VECTORIZED))
def test_vmap_over_receivers_equals_the_per_receiver_loop(name):
    rule = VECTORIZED[name]
    counts = [3, 4, 7, 5, 3, 6]
    gen = torch.Generator().manual_seed(2)
    stack = torch.randn(len(counts), 7, 4, generator=gen)
    mask = torch.zeros(len(counts), 7)
    for b, count in enumerate(counts):
        mask[b, :count] = 1.0
        stack[b, count:] = 0.0  # the engine pads with zeros
    own = stack[:, 0] + 0.1
    out = torch.vmap(rule)(own, stack, mask)
    for b, count in enumerate(counts):
        alone = call(rule, stack[b, :count], own=own[b])
        torch.testing.assert_close(out[b], alone, atol=1e-5, rtol=1e-5, msg=f"receiver {b}")


@pytest.mark.parametrize("cls", [TrimmedMean, Meamed, Krum, MultiKrum, MoNNA, MDA,
                                 lambda f: SMEA(f=f, power_iterations=None),
                                 lambda f: CAF(f=f, power_iterations=None)])
def test_a_receiver_with_too_few_messages_uses_the_largest_f_it_can(cls):
    """ByzFL raises on 2f >= n; a vmapped rule cannot, so it uses min(f, (n - 1) // 2), which
    the engine and the library refuse beforehand (check_messages, aggregate)."""
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(4))
    mask = t([1, 1, 1, 0, 0])  # n = 3: f = 3 acts as f = 1
    out = cls(f=3)(x[0], x, mask)
    torch.testing.assert_close(out, call(cls(f=1), x[:3]))


def test_too_few_messages_are_refused_before_any_rule_runs():
    for rule, need in ((TrimmedMean(f=2), 5), (Meamed(f=2), 5), (MDA(f=2), 5), (MoNNA(f=2), 5),
                       (CAF(f=2), 5), (SMEA(f=2), 5), (Krum(f=2), 7), (MultiKrum(f=2), 7)):
        assert rule.min_messages() == need
        check_messages(rule, need, "a receiver gets")
        with pytest.raises(ValueError, match=f"needs at least {need} messages"):
            check_messages(rule, need - 1, "a receiver gets")
    with pytest.raises(ValueError, match=r"mda\(f=3\) needs at least 7 vectors, got 6"):
        aggregate("mda", np.ones((6, 2)), f=3)


@pytest.mark.parametrize("name", sorted(set(ALL) - {"average"}))
def test_non_finite_messages_never_reach_the_result(name):
    rule = ALL[name]
    honest = torch.randn(6, 4, generator=torch.Generator().manual_seed(6))
    for bad in (math.inf, -math.inf, math.nan):
        rows = torch.cat([honest, torch.full((1, 4), bad)])
        out = keyed(rule, honest[0], rows, torch.ones(7))
        assert torch.isfinite(out).all(), (name, bad)
        assert (out - honest.mean(0)).abs().max() < 3.0, (name, bad)


def test_many_messages_far_from_the_origin_keep_their_small_distances():
    """Above 25 rows cdist's Gram form loses distances small against the norms; the rules
    measure relative to own, so Krum and Multi-Krum choose as exact float64 arithmetic does."""
    gen = torch.Generator().manual_seed(0)
    x = 1e-2 * torch.randn(40, 2000, generator=gen) + 300.0
    x[:5] += 0.5
    exact = torch.cdist(x.double(), x.double(), compute_mode="donot_use_mm_for_euclid_dist")
    scores = torch.sort(exact**2, dim=1).values[:, 1:40 - 5].sum(1)
    assert torch.equal(call(Krum(f=5), x, own=x[10]), x[int(torch.argmin(scores))])
    best = torch.topk(scores, 35, largest=False).indices
    torch.testing.assert_close(call(MultiKrum(f=5), x, own=x[10]), x[best].mean(0))
    gm = call(GeometricMedian(nu=1e-6, T=50, start="mean"), x[5:])
    assert float((gm - x[5:].mean(0)).norm()) < 0.1  # not thrown off by rounding


def test_brute_force_rules_refuse_too_many_subsets():
    x = torch.zeros(30, 2)
    for rule, name in ((MDA(f=6), "mda"), (SMEA(f=6), "smea")):
        with pytest.raises(ValueError, match=rf"{name}: a brute force over C\(n=30, f=6\) = "
                                             r"593775 subsets exceeds max_subsets=100000"):
            call(rule, x)
    call(MDA(f=6, max_subsets=600_000), x[:12])  # a raised limit, a smaller n


@pytest.mark.parametrize("build,message", [
    (lambda: Krum(f=-1), "krum: f must be an integer >= 0, got -1"),
    (lambda: MultiKrum(f=1.5), "multi_krum: f must be an integer >= 0"),
    (lambda: MDA(f=True), "mda: f must be an integer >= 0"),
    (lambda: Meamed(f="2"), "meamed: f must be an integer >= 0"),
    (lambda: MoNNA(idx=-1), "monna: idx must be an integer >= 0"),
    (lambda: GeometricMedian(nu=0.0), "geometric_median: nu must be a number > 0"),
    (lambda: GeometricMedian(T=-1), "geometric_median: T must be an integer >= 0"),
    (lambda: GeometricMedian(start="median"), "start must be 'zero' .ByzFL. or 'mean'"),
    (lambda: CenteredClipping(tau=-1.0), "centered_clipping: tau must be a number >= 0"),
    (lambda: CenteredClipping(L=-2), "centered_clipping: L must be an integer >= 0"),
    (lambda: CAF(power_iterations=0), "caf: power_iterations must be >= 1"),
    (lambda: SMEA(max_subsets=-1), "smea: max_subsets must be an integer >= 0"),
    (lambda: make_aggregator({"name": "multi_krum", "f": -3}), "f must be an integer >= 0"),
])
def test_bad_arguments_are_clear_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


# ---------------------------------------------------------------------------------------------
# properties (hypothesis)

# every rule but the two whose choice depends on the subset order of their random draws
PERMUTABLE = sorted(set(ALL) - {"smea"})
# translation-equivariant: all but the geometric median from z0 = 0 (ByzFL's start)
EQUIVARIANT = sorted(set(ALL) - {"geometric_median", "smea"})


def honest_and_byzantine(seed: int, h: int, f: int, d: int, scale: float):
    gen = torch.Generator().manual_seed(seed)
    honest = torch.randn(h, d, generator=gen, dtype=torch.float64)
    byzantine = scale * torch.randn(f, d, generator=gen, dtype=torch.float64) + scale
    return honest, byzantine


@PROPERTY
@given(data=st.data(), k=st.integers(3, 7), d=st.integers(1, 4), seed=st.integers(0, 2**31))
def test_permutation_of_received_messages_does_not_matter(data, k, d, seed):
    rows = torch.randn(k, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    order = torch.tensor(data.draw(st.permutations(range(k))))
    for name in PERMUTABLE:
        if name == "krum" and k < 4:  # one neighbour scored: mutual nearest rows tie
            continue
        rule = ALL[name]
        straight = keyed(rule, rows[0], rows, torch.ones(k))
        shuffled = keyed(rule, rows[0], rows[order], torch.ones(k))
        torch.testing.assert_close(shuffled, straight, atol=1e-9, rtol=1e-9, msg=name)


@PROPERTY
@given(k=st.integers(3, 7), d=st.integers(1, 4), seed=st.integers(0, 2**31),
       shift=st.floats(-50, 50))
def test_translation_equivariance(k, d, seed, shift):
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(k, d, generator=gen, dtype=torch.float64)
    move = shift * torch.randn(d, generator=gen, dtype=torch.float64)
    for name in EQUIVARIANT:
        rule = ALL[name]
        moved = keyed(rule, rows[0] + move, rows + move, torch.ones(k))
        torch.testing.assert_close(moved, keyed(rule, rows[0], rows, torch.ones(k)) + move,
                                   atol=1e-7, rtol=1e-7, msg=name)


@PROPERTY
@given(h=st.integers(3, 8), f=st.integers(1, 3), d=st.integers(1, 4), seed=st.integers(0, 2**31),
       scale=st.sampled_from([3.0, 100.0, 1e6]))
def test_below_the_breakdown_point_the_output_stays_near_the_honest_vectors(h, f, d, seed,
                                                                            scale):
    """f Byzantine rows anywhere, h honest ones: each rule's guarantee, derived in its comment
    (lo/hi: the honest bounding box, D: the honest diameter)."""
    honest, byzantine = honest_and_byzantine(seed, h, f, d, scale)
    rows = torch.cat([byzantine, honest])  # attackers first: own-free rules must not care
    n = h + f
    lo, hi = honest.min(0).values, honest.max(0).values
    diameter = float(torch.cdist(honest, honest).max())
    mean = honest.mean(0)
    eps = 1e-6

    def inside(out, margin):
        return bool((out >= lo - margin - eps).all() and (out <= hi + margin + eps).all())

    if h > f:  # a coordinate's median and an f-trimmed mean lie between honest values
        assert inside(call(Median(), rows), 0.0)
        assert inside(call(TrimmedMean(f=f), rows), 0.0)
        # Meamed keeps values within R = max honest |v - med| of a median inside the box
        assert inside(call(Meamed(f=f), rows), hi - lo)
        # MDA: the chosen n - f rows hold an honest one and are within D of it
        assert inside(call(MDA(f=f), rows), diameter)
        # MoNNA around an honest own: a kept row is no farther than the farthest honest one
        own = honest[0]
        radius = float((honest - own).norm(dim=1).max())
        assert float((call(MoNNA(f=f), rows, own=own) - own).norm()) <= radius + eps
        # SMEA (exact): |mu_S - mu_H| <= 2 sqrt(f lambda_H) / (n - 2 f), lambda_H the top
        # eigenvalue of the honest scatter (S and H share n - 2f rows, lambda_S <= lambda_H)
        scatter = (honest - mean).T @ (honest - mean)
        bound = 2 * math.sqrt(f * float(torch.linalg.eigvalsh(scatter)[-1])) / (n - 2 * f)
        out = call(SMEA(f=f, power_iterations=None), rows)
        assert float((out - mean).norm()) <= bound + eps
        # geometric median (Minsker 2015, Lemma 2.1): |z - c| <= C_a r with a = f / n,
        # C_a = (1 - a) / sqrt(1 - 2a), r = max honest |x - c|; smoothed Weiszfeld, 1 % slack
        a = f / n
        r = float((honest - mean).norm(dim=1).max())
        gm = call(GeometricMedian(nu=1e-9, T=300, start="mean"), rows)
        assert float((gm - mean).norm()) <= 1.01 * (1 - a) / math.sqrt(1 - 2 * a) * r + 1e-3
    if h >= f + 3:  # Krum: the chosen rows' scores are <= an honest row's, (n - f - 1) D^2,
        # and each has an honest row among its n - f - 1 nearest: within sqrt(n - f - 1) D
        margin = math.sqrt(n - f - 1) * diameter
        assert inside(call(Krum(f=f), rows), margin)
        assert inside(call(MultiKrum(f=f), rows), margin)
    # centered clipping: L steps of at most tau each; with L = 1 the f attackers move the
    # honest update by at most f tau / n
    own = mean + 0.5
    for L, tau in ((1, 0.7), (3, 2.0)):
        out = call(CenteredClipping(L=L, tau=tau), rows, own=own)
        assert float((out - own).norm()) <= L * tau + eps
    diffs = honest - own
    norms = diffs.norm(dim=1, keepdim=True)
    honest_step = (diffs * torch.clamp(0.7 / norms, max=1.0)).sum(0) / n
    out = call(CenteredClipping(L=1, tau=0.7), rows, own=own)
    assert float((out - own - honest_step).norm()) <= f * 0.7 / n + eps


# ---------------------------------------------------------------------------------------------
# in a simulation: at a server (own = the server's model) and on a graph (unvectorized rules)


@pytest.mark.parametrize("aggregator", [
    {"name": "multi_krum", "f": 1}, {"name": "centered_clipping", "tau": 1.0},
    {"name": "mda", "f": 1}, {"name": "smea", "f": 1}, {"name": "caf", "f": 1},
])
def test_rules_run_at_a_server_and_on_a_graph(aggregator):
    data = federate("digits", num_nodes=8, partition="iid", seed=0)
    kwargs = dict(lr=0.1, local_steps=1, aggregator=aggregator)
    none = Evaluation(every=0)
    server = Simulation(data, "logreg", "fedavg", seed=0, algorithm_kwargs=kwargs,
                        evaluation=none)
    server.run(2)
    assert torch.isfinite(server.params).all()
    graph = Simulation(data, "logreg", "dsgd", "random_regular", topology_kwargs={"k": 4},
                       seed=0, algorithm_kwargs=kwargs, evaluation=none)
    graph.run(1)
    assert torch.isfinite(graph.params).all()
    again = Simulation(data, "logreg", "dsgd", "random_regular", topology_kwargs={"k": 4},
                       seed=0, algorithm_kwargs=kwargs, evaluation=none)
    again.run(1)
    assert torch.equal(graph.params, again.params)  # keyed draws: the same run twice
