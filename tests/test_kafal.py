"""KAFAL (murmura.active): the KCFU loss, KSAS and the baselines' scores against hand-computed
cases, the NaN guards for absent classes, the top-b pick, the active-learning loop's pools,
determinism, errors, and the experiment's smoke run."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import functional_call, grad

from murmura.active import KCFU, KSAS, Entropy, FinalRoundAll, Random, run_active_learning
from murmura.active.acquisition import make_acquisition, top_b
from murmura.active.kcfu import (
    balanced_cross_entropy,
    beta_2_2,
    distillation,
    mixup,
    permutation,
    weak_class_weights,
)
from murmura.active.loop import choose, initial_pools
from murmura.algorithms import make_algorithm
from murmura.algorithms.base import RoundContext
from murmura.algorithms.rules import SampledParticipation
from murmura.data import FederatedData, federate
from murmura.swarm import Evaluation, Simulation

REPO = Path(__file__).resolve().parents[1]
INF = math.inf


def small_data(seed=0, n=4):
    return federate("digits", n, "dirichlet", alpha=0.3, seed=seed)


# ---------------------------------------------------------------------------------------------
# KCFU


def test_balanced_softmax_masks_absent_classes_without_nan():
    logits = torch.tensor([[1.0, 2.0, 9.0], [0.0, 1.0, -3.0]], requires_grad=True)
    counts = torch.tensor([2.0, 1.0, 0.0])
    loss = balanced_cross_entropy(logits, torch.tensor([0, 1]), counts)
    # by hand: class 2 is absent, so each sample is a 2-class softmax of (z0 + log 2, z1)
    first = math.log(2 * math.e + math.e**2) - (1 + math.log(2))
    second = math.log(2 * math.e**0 + math.e**1) - 1
    assert float(loss.detach()) == pytest.approx((first + second) / 2, rel=1e-6)
    (g,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(g).all() and torch.equal(g[:, 2], torch.zeros(2))
    # a label of an absent class (never in a client's own labelled set) counts 0, not inf
    masked = balanced_cross_entropy(logits, torch.tensor([2, 1]), counts)
    assert float(masked.detach()) == pytest.approx(second / 2, rel=1e-6)
    (g,) = torch.autograd.grad(masked, logits)
    assert torch.isfinite(g).all()
    # padding (weight 0) is left out of the mean; no labels at all is plain cross-entropy
    weighted = balanced_cross_entropy(logits, torch.tensor([0, 1]), counts,
                                      torch.tensor([1.0, 0.0]))
    assert float(weighted.detach()) == pytest.approx(first, rel=1e-6)
    plain = balanced_cross_entropy(logits, torch.tensor([0, 1]), torch.zeros(3))
    assert float(plain.detach()) == pytest.approx(float(torch.nn.functional.cross_entropy(
        logits.detach(), torch.tensor([0, 1]))), rel=1e-6)


def test_weak_class_weights_favour_rare_classes_and_zero_absent_ones():
    r = weak_class_weights(torch.tensor([3.0, 1.0, 0.0, 4.0]))
    # Σn = 8: (8/3, 8, 0, 2) / (38/3)
    assert r.tolist() == pytest.approx([8 / 38, 24 / 38, 0.0, 6 / 38], rel=1e-6)
    assert weak_class_weights(torch.zeros(3)).tolist() == [0.0, 0.0, 0.0]


def test_beta_2_2_is_the_median_of_three_keyed_uniforms_and_permutations_are_permutations():
    from murmura.swarm.random import key_uniform

    key = torch.tensor(12345)
    u = key_uniform(key, (5, 3), 7)
    assert torch.equal(beta_2_2(key, 5, salt=7), u.sort(-1).values[:, 1])
    draws = beta_2_2(key, 40000).double()
    assert float(draws.mean()) == pytest.approx(0.5, abs=0.01)  # Beta(2, 2): mean 1/2,
    assert float(draws.var()) == pytest.approx(0.05, abs=0.003)  # variance 1/20
    perm = permutation(key, 64, salt=1)
    assert sorted(perm.tolist()) == list(range(64)) and perm.tolist() != list(range(64))


def test_distillation_on_a_hand_case():
    teacher = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    student = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    beta, perm, r = torch.tensor([0.25, 0.5]), torch.tensor([1, 0]), torch.tensor([0.2, 0.8])
    # teacher labels (0, 1): w = (0.25·0.2 + 0.75·0.8, 0.5·0.8 + 0.5·0.2) = (0.65, 0.5)
    pt = [[math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)],
          [1 / (1 + math.e), math.e / (1 + math.e)]]
    ps = [[0.5, 0.5], [math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)]]
    kl = [sum(pt[i][c] * math.log(pt[i][c] / ps[i][c]) for c in range(2)) / 2 for i in range(2)]
    expected = (0.65 * kl[0] + 0.5 * kl[1]) / 2
    assert float(distillation(student, teacher, beta, perm, r)) == pytest.approx(expected,
                                                                                rel=1e-6)
    u = torch.tensor([[1.0, 0.0], [0.0, 4.0]])
    assert mixup(u, beta, perm).tolist() == [[0.25, 3.0], [0.5, 2.0]]


def linear(params, x):
    return x @ params["w"]


def test_the_kcfu_loss_distils_only_from_a_received_model_on_mixed_unlabelled_samples():
    task = KCFU(unlabelled_batch=2)
    params = {"w": torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, -0.5]])}
    initial = {"w": torch.zeros(2, 3)}
    teacher = {"w": torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])}
    counts = torch.tensor([1.0, 3.0, 0.0])
    key = torch.tensor(99)
    u = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    batch = {"x": torch.tensor([[1.0, 1.0]]), "y": torch.tensor([1]), "label_counts": counts,
             "key": key, "unlabelled": {"x": u}, "state": {"teacher": initial,
                                                          "initial": initial}}
    # first round of a cycle (the received model is the initial one): balanced softmax only
    z = [1.0, 1.0]  # class 2 absent; logits + (log 1, log 3)
    bal = math.log(math.exp(z[0]) + 3 * math.exp(z[1])) - (z[1] + math.log(3))
    assert float(task.loss(linear, params, batch)[0]) == pytest.approx(bal, rel=1e-6)
    # later rounds: + the weighted distillation from the received model on mixed-up u
    batch["state"] = {"teacher": teacher, "initial": initial}
    beta, perm = beta_2_2(key, 2, salt=0), permutation(key, 2, salt=1)
    b0, b1 = float(beta[0]), float(beta[1])
    mixed = [[b0 * u[0, j] + (1 - b0) * u[int(perm[0]), j] for j in range(2)],
             [b1 * u[1, j] + (1 - b1) * u[int(perm[1]), j] for j in range(2)]]
    r = [0.75, 0.25, 0.0]  # Σn/n = (4, 4/3, -) normalized
    total = 0.0
    labels = []
    rows = []
    for m in mixed:
        t = [float(m[0]) * teacher["w"][0, c] + float(m[1]) * teacher["w"][1, c]
             for c in range(3)]
        s = [float(m[0]) * params["w"][0, c] + float(m[1]) * params["w"][1, c]
             for c in range(3)]
        labels.append(max(range(3), key=lambda c: float(t[c])))
        rows.append((t, s))
    for i, (t, s) in enumerate(rows):
        w = [b0, b1][i] * r[labels[i]] + (1 - [b0, b1][i]) * r[labels[int(perm[i])]]
        lt = torch.log_softmax(torch.tensor(t), 0)
        ls = torch.log_softmax(torch.tensor(s), 0)
        total += w * float((lt.exp() * (lt - ls)).mean())
    expected = bal + total / 2
    loss = task.loss(linear, params, batch)[0]
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    g = grad(lambda p: task.loss(linear, p, batch)[0])(params)
    assert torch.isfinite(g["w"]).all()


def test_kcfu_waits_for_the_second_round_and_trains_without_nan_on_absent_classes():
    data = federate("digits", 4, "dirichlet", alpha=0.1, seed=3)
    assert bool((data.label_counts() == 0).any())  # some client misses some class
    pools = [p[::2] for p in data.parts]
    labelled = FederatedData.from_parts(data.dataset, [p[1::2] for p in data.parts])
    fed = labelled.with_pool("unlabelled", pools)
    kwargs = {"local_steps": 2, "batch_size": 8}
    params = {}
    for task in ("kcfu", "balanced_softmax"):
        sims = [Simulation(fed, "mlp", "kafal", seed=1, model_kwargs={"hidden": [8]},
                           algorithm_kwargs=kwargs, task=task, evaluation=Evaluation(every=0))
                for _ in range(2)]
        sims[0].run(rounds=1)
        sims[1].run(rounds=2)
        params[task] = [s.params.clone() for s in sims]
        assert all(torch.isfinite(p).all() for p in params[task])
    assert torch.equal(params["kcfu"][0], params["balanced_softmax"][0])  # round 1: no L_dist
    assert not torch.allclose(params["kcfu"][1], params["balanced_softmax"][1])
    with pytest.raises(ValueError, match="with_pool"):
        Simulation(labelled, "mlp", "kafal", task="kcfu")
    with pytest.raises(ValueError, match="unlabelled_batch"):
        KCFU(unlabelled_batch=0)


# ---------------------------------------------------------------------------------------------
# the algorithm


def test_kafal_keeps_each_clients_local_model_and_averages_by_labelled_sizes():
    data = small_data()
    sim = Simulation(data, "mlp", "kafal", seed=0, model_kwargs={"hidden": [8]},
                     algorithm_kwargs={"local_steps": 2}, evaluation=Evaluation(every=0))
    sim.run(rounds=1)
    local, sizes = sim.node_state["local"], data.sizes.to(torch.float32)
    assert not torch.allclose(local[0], local[1])
    assert torch.allclose(sim.params[0], sizes @ local / sizes.sum(), atol=1e-6)


def test_the_last_round_takes_every_client():
    who = FinalRoundAll(SampledParticipation(fraction=0.5))
    ctx = RoundContext(round=3, total_rounds=5, seed=0, num_nodes=10, device=torch.device("cpu"))
    assert len(who.select(ctx)) == 5 and who.how_many(10) == 5
    last = RoundContext(round=4, total_rounds=5, seed=0, num_nodes=10,
                        device=torch.device("cpu"))
    assert who.select(last) is None
    assert isinstance(make_algorithm("kafal", fraction=0.8).participation, FinalRoundAll)
    plain = make_algorithm("kafal", fraction=0.8, final_round_all=False).participation
    assert isinstance(plain, SampledParticipation)
    for bad in ({"lr": 0}, {"momentum": -1}, {"final_round_all": "yes"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            make_algorithm("kafal", **bad)


# ---------------------------------------------------------------------------------------------
# acquisition


def test_ksas_is_the_symmetric_kl_of_the_adjusted_predictions_with_absent_classes_left_out():
    local = torch.tensor([[1.0, 0.0, 3.0], [0.0, 0.0, 0.0]])
    glob = torch.tensor([[0.0, 1.0, -2.0], [0.0, 0.0, 5.0]])
    counts = torch.tensor([1.0, 2.0, 0.0])
    scores = KSAS()(local, glob, counts, None)
    assert torch.isfinite(scores).all()
    # by hand, sample 0: classes 0 and 1 with logits + (0, log 2)
    pl = [math.e / (math.e + 2), 2 / (math.e + 2)]
    pg = [1 / (1 + 2 * math.e), 2 * math.e / (1 + 2 * math.e)]
    kl = lambda p, q: sum(a * math.log(a / b) for a, b in zip(p, q))  # noqa: E731
    assert float(scores[0]) == pytest.approx(0.5 * (kl(pg, pl) + kl(pl, pg)), rel=1e-5)
    assert float(scores[1]) == pytest.approx(0.0, abs=1e-7)  # the same on the present classes
    # without the adjustment the scores differ: the counts sharpen the frequent class
    assert not torch.allclose(KSAS()(local, glob, torch.ones(3), None), scores)


def test_entropy_and_random_scores():
    scores = Entropy()(torch.zeros(2, 4), torch.tensor([[0.0] * 4, [50.0, 0, 0, 0]]),
                       torch.ones(4), None)
    assert scores.tolist() == pytest.approx([math.log(4), 0.0], abs=1e-6)
    key = torch.tensor(5)
    a, b = Random()(torch.zeros(6, 2), None, None, key), Random()(torch.zeros(6, 2), None, None,
                                                                 key)
    assert torch.equal(a, b) and len(set(a.tolist())) == 6
    with pytest.raises(ValueError, match="acquisition"):
        make_acquisition("margin")


def test_top_b_picks_each_clients_highest_valid_scores():
    scores = torch.tensor([[0.1, 0.9, 0.5, 7.0], [3.0, 1.0, 2.0, 0.0]])
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    chosen = torch.vmap(top_b)(scores, valid, torch.tensor([2, 1]))
    assert chosen.tolist() == [[False, True, True, False], [True, False, False, False]]


def test_the_acquisition_labels_the_top_ksas_samples_of_each_client():
    data = small_data()
    labelled, unlabelled = initial_pools(data, 0.1, seed=0)
    fed = FederatedData.from_parts(data.dataset, labelled).with_pool("unlabelled", unlabelled)
    sim = Simulation(fed, "mlp", "kafal", seed=0, model_kwargs={"hidden": [8]},
                     algorithm_kwargs={"local_steps": 3}, evaluation=Evaluation(every=0))
    sim.run(rounds=2)
    budgets = torch.tensor([3, 1, 2, 4])
    chosen = choose(sim, KSAS(), budgets, seed=0, cycle=0)
    counts = fed.label_counts()
    for k in range(4):
        x = data.dataset.train_x[torch.as_tensor(unlabelled[k])]
        z_l = functional_call(sim.model, (sim.spec.views(sim.node_state["local"][k]), {}), (x,))
        z_g = functional_call(sim.model, (sim.spec.views(sim.params[0]), {}), (x,))
        prior = torch.where(counts[k] > 0, counts[k].clamp_min(1).log(), -INF)
        p_l, p_g = torch.softmax(z_l + prior, 1), torch.softmax(z_g + prior, 1)
        present = counts[k] > 0
        p_l, p_g = p_l[:, present], p_g[:, present]
        score = 0.5 * ((p_g * (p_g.log() - p_l.log())).sum(1)
                       + (p_l * (p_l.log() - p_g.log())).sum(1))
        top = set(torch.topk(score, int(budgets[k])).indices.tolist())
        assert set(torch.nonzero(chosen[k]).flatten().tolist()) == top
    with pytest.raises(ValueError, match="local model"):
        plain = Simulation(fed, "mlp", "fedavg", seed=0, model_kwargs={"hidden": [8]},
                           algorithm_kwargs={"local_steps": 1}, evaluation=Evaluation(every=0))
        choose(plain, KSAS(), budgets, seed=0, cycle=0)


# ---------------------------------------------------------------------------------------------
# the loop


def test_pools_stay_disjoint_and_grow_by_the_budget_each_cycle():
    data = small_data(seed=1)
    result = run_active_learning(data, acquisition="entropy", task="classification",
                                 cycles=3, rounds=1, model_kwargs={"hidden": [8]},
                                 algorithm_kwargs={"local_steps": 1})
    sizes = [len(p) for p in data.parts]
    first = [math.ceil(0.1 * s - 1e-9) for s in sizes]
    budget = [math.ceil(0.05 * s - 1e-9) for s in sizes]
    got = [r["labelled_per_client"] for r in result.records]
    assert got == [[f + c * b for f, b in zip(first, budget)] for c in range(3)]
    for part, lab, unl in zip(data.parts, result.labelled, result.unlabelled):
        assert not set(lab.tolist()) & set(unl.tolist())
        assert sorted(lab.tolist() + unl.tolist()) == part.tolist()
    assert result.final["labelled_total"] == sum(got[-1])
    assert all(0 <= r["test_accuracy"] <= 1 for r in result.records)


def test_the_loop_is_deterministic_and_the_seed_matters():
    data = small_data()
    kwargs = dict(acquisition="ksas", cycles=2, rounds=2, model_kwargs={"hidden": [8]},
                  algorithm_kwargs={"local_steps": 2, "batch_size": 8})
    a = run_active_learning(data, seed=0, **kwargs)
    b = run_active_learning(data, seed=0, **kwargs)
    c = run_active_learning(data, seed=1, **kwargs)
    def strip(records):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in records]

    assert strip(a.records) == strip(b.records) and strip(a.records) != strip(c.records)
    assert all(np.array_equal(x, y) for x, y in zip(a.labelled, b.labelled))
    assert not all(np.array_equal(x, y) for x, y in zip(a.labelled, c.labelled))


def test_bad_loop_arguments_are_refused_by_name():
    data = small_data()
    for bad, word in (({"cycles": 0}, "cycles"), ({"rounds": 1.5}, "rounds"),
                      ({"initial_fraction": 1.0}, "initial_fraction"),
                      ({"budget_fraction": -0.1}, "budget_fraction"),
                      ({"acquisition": "margin"}, "acquisition")):
        with pytest.raises(ValueError, match=word):
            run_active_learning(data, **bad)
    tiny = FederatedData.from_parts(data.dataset, [np.arange(4), np.arange(4, 40)])
    with pytest.raises(ValueError, match="client 0 holds 4 samples"):
        run_active_learning(tiny, cycles=4)
    with pytest.raises(ValueError, match="FederatedData"):
        run_active_learning(data.parts)


# ---------------------------------------------------------------------------------------------
# the experiment


def test_kafal_quick_mode_runs_every_arm(tmp_path):
    path = REPO / "experiments" / "kafal" / "run.py"
    spec = importlib.util.spec_from_file_location("experiment_kafal", path)
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    assert run.main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "quick.json").read_text())
    summary = result["results"]["digits"]["summary"]
    assert set(summary["accuracy"]) == set(run.SPEC_ARMS)
    assert len(summary["accuracy"]["kafal"]) == 2 and (tmp_path / "kafal_quick.png").exists()
    assert summary["criteria"]["kafal_beats_random_by_2_points"] in (True, False)
