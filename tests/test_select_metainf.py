"""MetaInf (spec federated.md section 15): the metrics by hand, each baseline where its answer
is known, the budget rule, MetaInf learning a clear rule, the committed timings, the timing
harness, refused inputs, the kind through the runner and the experiment's quick mode."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import murmura.select  # noqa: F401  (registers the metainf kind)
from murmura.select import (
    ALORS,
    ISAC,
    METHODS,
    BestMethodClassifier,
    GlobalBest,
    MetaInf,
    RandomChoice,
    budgeted_argmax,
    evaluate,
    load_timings,
    make_selector,
    mean_regret,
    measure,
    selection_accuracy,
    speedup,
    split_tasks,
)
from murmura.select.timings import COLUMNS, Decoder, generate

PERF = np.log([[100.0, 200.0], [300.0, 150.0], [50.0, 50.0]])


def test_metrics_by_hand():
    assert selection_accuracy(PERF, [1, 0, 1]) == 1.0          # a tie counts as right
    assert selection_accuracy(PERF, [0, 0, 0]) == pytest.approx(2 / 3)
    assert mean_regret(PERF, [0, 1, 0]) == pytest.approx((np.log(2) + np.log(2)) / 3)
    assert mean_regret(PERF, [1, 0, 0]) == 0.0
    # chosen over method 0: 2x, 1x, 1x -> geometric mean 2^(1/3)
    assert speedup(PERF, [1, 0, 0], reference=0) == pytest.approx(2 ** (1 / 3))


def test_global_best_by_mean_and_by_wins():
    X = np.zeros((3, 1))
    perf = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 10.0]])
    assert GlobalBest("mean").fit(X, "ab", perf).select(X).tolist() == [1, 1, 1]
    assert GlobalBest("wins").fit(X, "ab", perf).select(X).tolist() == [0, 0, 0]


def test_isac_gives_each_cluster_its_best_method():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 0.1, (20, 2)), rng.normal(5, 0.1, (20, 2))])
    perf = np.where(np.arange(40)[:, None] < 20, [[1.0, 0.0, 0.5]], [[0.0, 0.2, 1.0]])
    isac = ISAC(clusters=2).fit(X, ["a", "b", "c"], perf)
    assert isac.select([[0.1, -0.1], [4.9, 5.2]]).tolist() == [0, 2]


def test_classifiers_and_alors_learn_a_threshold():
    X = np.linspace(-1, 1, 41)[:, None]
    perf = np.where(X > 0, [[0.0, 1.0]], [[1.0, 0.0]]) + X   # same rule, shifted per task
    expected = [0, 0, 1, 1]
    grid = [[-0.8], [-0.3], [0.3], [0.8]]
    for selector in (BestMethodClassifier("random_forest"),
                     BestMethodClassifier("gradient_boosting"), ALORS(rank=1)):
        assert selector.fit(X, "ab", perf).select(grid).tolist() == expected, selector.name


def test_random_choice_is_seeded_and_uses_every_method():
    X = np.zeros((200, 1))
    perf = np.zeros((200, 3))
    a = RandomChoice(seed=1).fit(X, "abc", perf).select(X)
    assert (a == RandomChoice(seed=1).fit(X, "abc", perf).select(X)).all()
    assert set(a.tolist()) == {0, 1, 2}


def test_budgeted_argmax_by_hand():
    predicted = np.array([[3.0, 2.0, 1.0]])
    cost = np.array([[10.0, 5.0, 1.0]])
    assert budgeted_argmax(predicted, cost, 100.0).tolist() == [0]
    assert budgeted_argmax(predicted, cost, 6.0).tolist() == [1]      # method 0 too dear
    assert budgeted_argmax(predicted, cost, 0.5).tolist() == [2]      # none fits: cheapest


def clear_rule_table(n=160, seed=0):
    """Three methods; the best is 0 if x0 < 0, else 1 if x1 > 0, else 2; a task-level scale
    (x2) moves all methods alike, as hardware and model size do."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (n, 3))
    best = np.where(X[:, 0] < 0, 0, np.where(X[:, 1] > 0, 1, 2))
    perf = 3.0 * X[:, 2:3] + np.where(np.arange(3) == best[:, None], 1.0, 0.0)
    return X, perf, best


@pytest.fixture(scope="module")
def clear_rule_model():
    X, perf, _ = clear_rule_table()
    return MetaInf(seed=0).fit(X, ["a", "b", "c"], perf)


def test_metainf_recovers_the_best_method_of_a_clear_rule(clear_rule_model):
    X, perf, _ = clear_rule_table()
    X_test, perf_test, best = clear_rule_table(100, seed=1)
    model = clear_rule_model
    assert model.predict(X_test).shape == (100, 3)
    assert np.mean(model.select(X_test) == best) >= 0.9
    assert mean_regret(perf_test, model.select(X_test)) < 0.1
    # runs never made (NaN) are left out of the regression, not fatal
    holes = perf.copy()
    holes[::3, 1] = np.nan
    sparse = MetaInf(seed=0).fit(X, ["a", "b", "c"], holes)
    assert np.mean(sparse.select(X_test) == best) >= 0.85


def test_metainf_budget_filters_methods_by_predicted_cost(clear_rule_model):
    model = clear_rule_model
    task = np.array([[-0.5, 0.5, 0.0]])       # method a best, predicted log-tps about 1
    predicted = model.predict(task)[0]
    assert predicted.argmax() == 0
    price = np.array([[100.0, 1.0, 1.0]])      # method a runs on dear hardware
    runtime = 10.0 / np.exp(predicted)
    budget = float(runtime[1:].max() * 1.01)    # fits b and c, not a
    assert model.select(task).tolist() == [0]
    choice = model.select(task, budget=budget, work=[10.0], price=price)
    assert choice.tolist() == [1 + int(predicted[2] > predicted[1])]


def test_committed_timings_load_complete_and_no_method_wins_everywhere():
    import csv

    path = Path(murmura.select.__file__).parent / "data" / "decoder_timings.csv"
    lines = path.read_text().splitlines()
    assert lines[0].startswith("#") and "CPU" in lines[0]
    header = next(csv.reader([next(line for line in lines if not line.startswith("#"))]))
    assert tuple(header) == COLUMNS
    table = load_timings()
    assert table.methods == METHODS and len(table) >= 300
    assert np.isfinite(table.log_tps).all() and (table.seconds > 0).all()
    assert np.isfinite(table.features).all()
    wins = np.bincount(table.log_tps.argmax(1), minlength=len(METHODS))
    assert wins.max() < len(table) and (wins > 0).sum() >= 2


def test_measure_runs_a_tiny_grid_and_the_caches_are_exact():
    task = {"batch": 2, "prompt": 40, "shared": 0.5, "gen": 3, "layers": 1, "width": 32,
            "threads": 1, "dtype": "float32"}
    rows = measure([task, {**task, "dtype": "bfloat16"}], repeats=1)
    assert len(rows) == 2 * len(METHODS)
    assert all(r["tokens_per_s"] > 0 and r["seconds"] > 0 for r in rows)
    assert set(rows[0]) == set(COLUMNS)
    torch.manual_seed(0)
    model = Decoder(2, 32).double().eval()
    prompts = torch.randint(512, (3, 70))                    # 70 > chunk: 3 chunks
    prompts[:, :40] = prompts[0, :40].clone()
    with torch.inference_mode():
        outs = [generate(model, prompts, 5, m, shared=40) for m in METHODS]
    for out in outs[1:]:
        assert torch.equal(out, outs[0])


@pytest.mark.parametrize("call, message", [
    (lambda: GlobalBest().fit(np.zeros(3), "ab", np.zeros((3, 2))), "2-D array"),
    (lambda: GlobalBest().fit(np.zeros((3, 1)), "ab", np.zeros((3, 3))), "shape"),
    (lambda: GlobalBest().fit(np.zeros((3, 1)), "aa", np.zeros((3, 2))), "distinct"),
    (lambda: GlobalBest().fit(np.zeros((2, 1)), "ab", [[0.0, np.nan], [1, 1]]), "NaN"),
    (lambda: GlobalBest().predict(np.zeros((2, 1))), "not fitted"),
    (lambda: GlobalBest().fit(np.zeros((2, 1)), "ab", np.zeros((2, 2))).predict(
        np.zeros((2, 3))), r"\[n_tasks, 1\]"),
    (lambda: GlobalBest("median"), "rule"),
    (lambda: BestMethodClassifier("svm"), "model"),
    (lambda: ISAC(clusters=0), "clusters"),
    (lambda: MetaInf(hidden=()), "hidden"),
    (lambda: MetaInf().fit(np.zeros((2, 1)), "ab", np.full((2, 2), np.nan)), "all NaN"),
    (lambda: MetaInf(steps=5).fit(np.zeros((2, 1)), "ab", np.zeros((2, 2))).select(
        np.zeros((2, 1)), budget=1.0), "work"),
    (lambda: budgeted_argmax(np.zeros((1, 2)), np.zeros((1, 2)), 0.0), "budget"),
    (lambda: make_selector("oracle"), "choose one of"),
    (lambda: split_tasks(10, 1.5, 0), "test_fraction"),
    (lambda: measure([{"batch": 1}]), "lacks"),
    (lambda: measure([{"batch": 1, "prompt": 4, "shared": 1.0, "gen": 1, "layers": 1,
                       "width": 8, "threads": 1, "dtype": "float32"}]), "shared"),
    (lambda: measure([], methods=["speculative"]), "unknown methods"),
    (lambda: load_timings("/nonexistent.csv"), "no timings"),
])
def test_bad_input_is_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_the_metainf_kind_records_what_evaluate_computes(tmp_path):
    from murmura.config import Experiment
    from murmura.runner import run_experiment

    exp = Experiment.from_dict({"seed": 2, "rounds": 3, "kind": {
        "name": "metainf", "selectors": ["global_best", "random", "isac"],
        "test_fraction": 0.3}, "output": {"plots": False, "report": False}})
    result = run_experiment(exp, tmp_path / "run", progress=False)
    assert result.status == "completed" and [r["round"] for r in result.history] == [0, 1, 2]
    table = load_timings()
    train, test = (table.subset(i) for i in split_tasks(len(table), 0.3, 2))
    direct = evaluate(make_selector("isac", 2), train, test)
    assert result.history[2]["selection_accuracy"] == pytest.approx(
        direct["selection_accuracy"])
    assert result.history[2]["mean_regret"] == pytest.approx(direct["mean_regret"])
    sim = result.summary["simulation"]
    assert sim["selectors"] == ["global_best", "random", "isac"]
    assert sim["test_tasks"] == len(test)
    bad = Experiment.from_dict({"rounds": 1, "kind": {"name": "metainf",
                                                      "selectors": ["oracle"]},
                                "output": {"plots": False, "report": False}})
    failed = run_experiment(bad, tmp_path / "bad", progress=False)
    assert failed.status == "failed" and "choose from" in failed.summary["message"]


def test_experiment_quick_mode(tmp_path):
    path = Path(__file__).resolve().parents[1] / "experiments" / "metainf" / "run.py"
    spec = importlib.util.spec_from_file_location("experiment_metainf", path)
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    assert run.main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results" / "metainf_quick.json").read_text())
    assert set(result["table"]) == {"metainf", "global_best", "random", "random_forest"}
    assert set(result["criterion"]) >= {"metainf_beats_global_best", "all"}
    assert sum(result["win_counts"]["overall"].values()) == result["tasks"] == 120
    assert (tmp_path / "metainf_quick.png").exists()
