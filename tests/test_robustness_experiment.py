"""The robustness experiment (issue 13): its grid's cells and graph, and a smoke run of
``experiments/robustness/run.py --quick``."""

import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_run():
    spec = importlib.util.spec_from_file_location(
        "robustness_run", REPO / "experiments" / "robustness" / "run.py")
    run = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = run  # the process pool's workers find run_one by its module
    spec.loader.exec_module(run)
    return run


def test_the_dumbbell_is_two_cliques_whose_bridge_the_attackers_hold():
    run = load_run()
    graph = run.dumbbell(32, bridges=3)
    assert graph.number_of_edges() == 2 * (16 * 15 // 2) + 3
    assert sorted(graph.neighbors(0)) == list(range(1, 16)) + [16]
    from murmura.robust import Adversary
    from murmura.topology import StaticTopology

    topology = StaticTopology.from_graph(graph)
    bad = Adversary("sign_flip", count=6, placement="betweenness").place(32, 0, topology)
    assert bad.nonzero().flatten().tolist() == [0, 1, 2, 16, 17, 18]


def test_server_cells_leave_out_graph_only_rules_and_per_link_attacks():
    run = load_run()
    grid = run.cells(("average", "bridge"), ("sign_flip", "dissensus"))
    assert sorted(c for c in grid if c[0] == "server") == [("server", "average", "sign_flip")]
    assert len([c for c in grid if c[0] == "regular"]) == 4
    assert run.aggregator_spec("krum", 3) == {"name": "krum", "f": 3}
    assert run.aggregator_spec("median", 3) == {"name": "median"}


def test_the_quick_mode_runs_every_cell(tmp_path):
    run = load_run()
    assert run.main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "quick.json").read_text())
    assert result["ran"] == result["runs"] == 2 * 2 + 2 * 3 * 3  # server: no scc, no dissensus
    worst = {(w["setting"], w["aggregator"]): w for w in result["worst_case"]}
    assert set(worst) == {("server", "average"), ("server", "trimmed_mean")} | {
        (s, a) for s in ("regular", "dumbbell")
        for a in ("average", "trimmed_mean", "self_centered_clipping")}
    for entry in worst.values():
        assert entry["status"] == "ok" and 0.0 <= entry["worst"] <= 1.0
        assert entry["worst_attack"] != "none"
    assert "| trimmed_mean |" in result["headline"]
    assert (tmp_path / "quick_worst_case.png").exists()
    assert len((tmp_path / "cells.jsonl").read_text().splitlines()) == result["runs"]
