"""Reports of run directories: figures, the HTML page, comparisons and their edge cases.

The run directories are real: a tiny simulation runs once per module, then its history, summary,
topology and config are written as `murmura run` writes them (the run-directory contract)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from PIL import Image

from murmura.metrics.history import EVALUATED_COLUMNS
from murmura.report import (
    ReportError,
    Run,
    build_comparison_report,
    build_report,
    compare_runs,
    load_run,
    make_plots,
)
from murmura.report.compare import run_labels
from murmura.report.plots import FIGURES, planned_figures, stale_figures

ALL_FIGURES = ["accuracy.png", "loss.png", "consensus.png", "node_spread.png", "topology.png"]
EVAL_COLUMNS = list(EVALUATED_COLUMNS)
IMG_TAG = '<img src="data:image/png;base64,'


def write_run(
    run_dir: Path,
    *,
    name: str = "ring-dsgd",
    algorithm: str = "dsgd",
    topology: str | None = "ring",
    rounds: int = 6,
    every: int = 2,
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Run a tiny simulation and write the run-directory files from it."""
    from murmura.data import federate
    from murmura.swarm import Evaluation, Simulation

    data = federate("digits", num_nodes=8, partition="dirichlet", alpha=0.5, seed=0)
    algorithm_kwargs = {"lr": 0.1, "local_steps": 2}
    sim = Simulation(
        data,
        "mlp",
        algorithm,
        topology,
        seed=0,
        model_kwargs={"hidden": [16]},
        algorithm_kwargs=algorithm_kwargs,
        evaluation=Evaluation(every=every),
    )
    history = sim.run(rounds)

    run_dir.mkdir(parents=True)
    history.to_csv(run_dir / "metrics.csv")
    evaluated = [r for r in history if "test_accuracy" in r]
    summary = {
        "name": name,
        "status": "completed",
        "rounds_done": len(history),
        "total_rounds": rounds,
        "final": dict(evaluated[-1]) if evaluated else {},
        "simulation": sim.summary(),
        "seconds": history.final["wall_seconds"],
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if sim.topology is None:
        topo = {"kind": "server" if algorithm == "fedavg" else "none", "label": algorithm,
                "num_nodes": sim.num_nodes, "time_varying": False, "edges": None}
    else:
        graph = sim.topology.graph_at(0)
        topo = {"kind": "graph", "label": sim.topology.label, "num_nodes": sim.num_nodes,
                "time_varying": sim.topology.time_varying,
                "edges": sorted([min(e), max(e)] for e in graph.edges())}
    (run_dir / "topology.json").write_text(json.dumps(topo))
    config: dict[str, Any] = {
        "name": name,
        "seed": 0,
        "rounds": rounds,
        "data": {"dataset": "digits", "nodes": 8, "partition": "dirichlet", "alpha": 0.5},
        "model": {"name": "mlp", "hidden": [16]},
        "algorithm": {"name": algorithm, **algorithm_kwargs},
        "evaluation": {"every": every},
        "output": {"dir": str(run_dir.parent)},
        "provenance": {
            "murmura_version": "0.1.0",
            "git_commit": "0123456789abcdef",
            "created": "2025-01-01T00:00:00+00:00",
            "command": ["murmura", "run", "experiment.toml", "--set", "rounds=6"],
        },
    }
    if topology is not None:
        config["topology"] = {"name": topology}
    config.update(extra_config or {})
    (run_dir / "config.toml").write_text(tomli_w.dumps(config))
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Pristine run directories; tests copy them before writing into them."""
    root = tmp_path_factory.mktemp("runs")
    return {
        "ring": write_run(
            root / "ring", extra_config={"notes": "<script>alert('x')</script> & more"}
        ),
        "fedavg": write_run(root / "fedavg", name="fedavg", algorithm="fedavg", topology=None),
    }


@pytest.fixture(scope="module")
def plotted(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """The ring run after make_plots: (run directory, what make_plots returned, what
    stale_figures said before and after)."""
    run_dir = copy_run(runs["ring"], tmp_path_factory.mktemp("reported") / "ring")
    stale_before = stale_figures(load_run(run_dir))
    paths = make_plots(run_dir)
    return run_dir, paths, stale_before, stale_figures(load_run(run_dir))


@pytest.fixture(scope="module")
def reported(plotted) -> Path:
    """The ring run with its report built once; tests only read it, or copy it."""
    build_report(plotted[0])
    return plotted[0]


def copy_run(src: Path, dst: Path) -> Path:
    """A copy with the same file times, so figures copied along stay fresh."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("report.html"))
    return dst


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def write_rows(run_dir: Path, rows: list[dict[str, str]], columns: list[str] | None = None):
    columns = columns or list(rows[0])
    with (run_dir / "metrics.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def check_png(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    assert path.stat().st_size > 8_000, f"{path} is suspiciously small"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        width, height = img.size
        assert 400 <= width <= 2000 and 250 <= height <= 1500, (path, img.size)
        # A blank or near-blank image would have a handful of colours.
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50, path


def check_html(page: str, run_dir: Path) -> None:
    figures = sorted(p.name for p in (run_dir / "plots").glob("*.png"))
    assert page.count(IMG_TAG) == len(figures)
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower()


# ---------------------------------------------------------------- one run


def test_make_plots_writes_every_figure(plotted):
    run_dir, paths, stale_before, stale_after = plotted
    assert stale_before == ALL_FIGURES and stale_after == []
    assert [p.name for p in paths] == ALL_FIGURES
    assert all(p.parent == run_dir / "plots" for p in paths)
    for path in paths:
        check_png(path)


def test_report_is_self_contained_and_escaped(reported):
    run_dir = reported
    page = (run_dir / "report.html").read_text()
    assert sorted(p.name for p in (run_dir / "plots").glob("*.png")) == sorted(ALL_FIGURES)
    check_html(page, run_dir)
    assert page.count(IMG_TAG) == len(ALL_FIGURES)
    assert "<title>ring-dsgd" in page and "<h1>ring-dsgd" in page
    # The config value holding markup is shown as text.
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page
    summary = json.loads((run_dir / "summary.json").read_text())
    final = summary["final"]
    assert f"{final['test_accuracy'] * 100:.2f} %" in page
    assert f"{summary['simulation']['spectral_gap']:.4f}" in page
    assert "git_commit" not in page and "0123456789abcdef" in page  # provenance table
    assert "murmura run experiment.toml --set rounds=6" in page
    # Last rounds: all 6 rows, the round index in the first column.
    table = page.split("<h2>Last rounds</h2>")[1].split("</table>")[0]
    assert table.count("<tr>") == 1 + 6


def test_report_redraws_only_stale_figures(reported, tmp_path):
    run_dir = copy_run(reported, tmp_path / "ring")
    before = {p.name: p.stat().st_mtime_ns for p in (run_dir / "plots").iterdir()}
    assert stale_figures(load_run(run_dir)) == []
    build_report(run_dir)  # fresh: nothing redrawn
    assert {p.name: p.stat().st_mtime_ns for p in (run_dir / "plots").iterdir()} == before
    # A topology figure older than topology.json is the only stale one.
    past = (run_dir / "topology.json").stat().st_mtime - 100
    os.utime(run_dir / "plots" / "topology.png", (past, past))
    before["topology.png"] = (run_dir / "plots" / "topology.png").stat().st_mtime_ns
    assert stale_figures(load_run(run_dir)) == ["topology.png"]
    build_report(run_dir)
    after = {p.name: p.stat().st_mtime_ns for p in (run_dir / "plots").iterdir()}
    assert [name for name in after if after[name] != before[name]] == ["topology.png"]
    assert stale_figures(load_run(run_dir)) == []


def test_server_run_notes_identical_nodes(runs, tmp_path):
    run_dir = copy_run(runs["fedavg"], tmp_path / "fedavg")
    page = build_report(run_dir).read_text()
    check_html(page, run_dir)
    run = load_run(run_dir)
    assert run.topology["kind"] == "server"
    assert set(run.series("consensus_distance")[1]) == {0.0}
    for name in ALL_FIGURES:
        check_png(run_dir / "plots" / name)


# ---------------------------------------------------------------- edge cases


def _single_plain_row(run_dir: Path) -> None:
    write_rows(run_dir, read_rows(run_dir)[:1])
    edit_json(run_dir / "summary.json", status="interrupted", rounds_done=1, final={})


def _single_evaluated_row(run_dir: Path) -> None:
    rows = [r for r in read_rows(run_dir) if r["test_accuracy"]]
    write_rows(run_dir, rows[:1])


def _evaluation_empty(run_dir: Path) -> None:
    rows = read_rows(run_dir)
    for row in rows:
        row.update({c: "" for c in EVAL_COLUMNS})
    write_rows(run_dir, rows)
    edit_json(run_dir / "summary.json", final={})


def _evaluation_absent(run_dir: Path) -> None:
    rows = read_rows(run_dir)
    write_rows(run_dir, rows, [c for c in rows[0] if c not in EVAL_COLUMNS])
    edit_json(run_dir / "summary.json", final={})


def _interrupted(run_dir: Path) -> None:
    write_rows(run_dir, read_rows(run_dir)[:3])
    edit_json(run_dir / "summary.json", status="interrupted", rounds_done=3, total_rounds=6)


def _header_only(run_dir: Path) -> None:
    write_rows(run_dir, [], list(read_rows(run_dir)[0]))
    edit_json(run_dir / "summary.json", status="failed", rounds_done=0, final={})


def _extra_column(run_dir: Path) -> None:
    rows = read_rows(run_dir)
    for i, row in enumerate(rows):
        row["mystery"] = "abc" if i % 2 else str(i)
    write_rows(run_dir, rows)


def _topology(**topo: Any):
    def edit(run_dir: Path) -> None:
        (run_dir / "topology.json").write_text(json.dumps(topo))

    return edit


def _no_side_files(run_dir: Path) -> None:
    for name in ("topology.json", "config.toml", "summary.json"):
        (run_dir / name).unlink()


# A ring with chords on 1000 nodes: too many nodes to draw, so a degree histogram.
BIG = [[i, (i + 1) % 1000] for i in range(1000)] + [[i, (i + 7) % 1000] for i in range(0, 1000, 3)]

EDGE_CASES = {
    "single_plain_row": (_single_plain_row, ["topology.png"]),
    "single_evaluated_row": (_single_evaluated_row, ALL_FIGURES),
    "evaluation_empty": (_evaluation_empty, ["topology.png"]),
    "evaluation_absent": (_evaluation_absent, ["topology.png"]),
    "interrupted": (_interrupted, ALL_FIGURES),
    "header_only": (_header_only, ["topology.png"]),
    "extra_column": (_extra_column, ALL_FIGURES),
    "topology_none": (
        _topology(kind="none", label="local_sgd", num_nodes=8, time_varying=False, edges=None),
        ALL_FIGURES,
    ),
    "topology_large": (
        _topology(kind="graph", label="chords", num_nodes=1000, time_varying=False, edges=BIG),
        ALL_FIGURES,
    ),
    "topology_edges_null": (
        _topology(kind="graph", label="complete", num_nodes=5000, time_varying=False, edges=None),
        ALL_FIGURES,
    ),
    "topology_time_varying": (
        _topology(
            kind="graph",
            label="random_matching",
            num_nodes=40,
            time_varying=True,
            edges=[[2 * i, 2 * i + 1] for i in range(20)],
        ),
        ALL_FIGURES,
    ),
    "no_side_files": (_no_side_files, ALL_FIGURES[:-1]),
}


@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_edge_cases_do_not_crash(reported, tmp_path, case):
    edit, expected = EDGE_CASES[case]
    # Starting from drawn figures: only those the edit makes stale are drawn again (fast).
    run_dir = copy_run(reported, tmp_path / case)
    edit(run_dir)
    # Deleted files leave no newer time behind: draw everything.
    if case == "no_side_files":
        shutil.rmtree(run_dir / "plots")
    run = load_run(run_dir)
    assert planned_figures(run) == expected
    page = build_report(run).read_text()
    assert sorted(p.name for p in (run_dir / "plots").glob("*.png")) == sorted(expected)
    check_html(page, run_dir)
    for name in expected:
        check_png(run_dir / "plots" / name)
    if case == "interrupted":
        assert "interrupted" in page and "3 of 6 rounds" in page
    if case == "no_side_files":
        assert "<h1>no_side_files" in page  # the folder's name stands in for the run's


def test_figures_of_a_previous_state_are_removed(reported, tmp_path):
    run_dir = copy_run(reported, tmp_path / "ring")
    _evaluation_absent(run_dir)
    assert [p.name for p in make_plots(run_dir)] == ["topology.png"]
    assert [p.name for p in (run_dir / "plots").glob("*.png")] == ["topology.png"]


def test_a_figure_that_fails_is_left_out_with_a_warning(reported, tmp_path, monkeypatch):
    from murmura.report import plots

    def broken(run):
        raise ValueError("odd data")

    monkeypatch.setattr(plots, "_loss_figure", broken)
    run_dir = copy_run(reported, tmp_path / "ring")
    (run_dir / "plots" / "loss.png").unlink()
    with pytest.warns(UserWarning, match="loss.png: not drawn.*odd data"):
        page = build_report(run_dir).read_text()
    assert not (run_dir / "plots" / "loss.png").exists()
    assert page.count(IMG_TAG) == len(ALL_FIGURES) - 1


def test_figure_captions_cover_every_figure():
    assert set(FIGURES) == set(ALL_FIGURES) | {"metrics.png"}  # metrics.png: kinds' runs


# ---------------------------------------------------------------- several runs


def test_compare_runs_table_matches_final_metrics(runs, tmp_path):
    rows, paths = compare_runs([runs["ring"], runs["fedavg"]], tmp_path / "cmp")
    assert [p.name for p in paths] == ["compare_accuracy.png", "compare_node_accuracy.png",
                                       "compare_loss.png"]
    for path in paths:
        check_png(path)
    for row, key in zip(rows, ["ring", "fedavg"]):
        summary = json.loads((runs[key] / "summary.json").read_text())
        final = summary["final"]
        assert row["name"] == summary["name"] == row["label"]
        assert row["test_accuracy"] == final["test_accuracy"]
        assert row["node_accuracy_mean"] == final["node_accuracy_mean"]
        assert row["mb_sent_per_node"] == final["bytes_sent_per_node_mean"] / 1e6
        assert row["seconds"] == summary["seconds"]
        assert row["rounds_done"] == 6 and row["nodes"] == 8
        assert row["algorithm"] == summary["simulation"]["algorithm"]
    assert rows[0]["topology"] == "ring" and rows[1]["topology"] == "server"


def test_comparison_report(runs, tmp_path):
    out = build_comparison_report([runs["ring"], runs["fedavg"]], tmp_path / "cmp")
    assert out == tmp_path / "cmp" / "comparison.html"
    page = out.read_text()
    assert page.count(IMG_TAG) == 3
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "ring-dsgd" in page and "fedavg" in page


def test_runs_sharing_a_name_get_distinct_labels(runs, tmp_path):
    a = copy_run(runs["ring"], tmp_path / "a" / "seed1")
    b = copy_run(runs["ring"], tmp_path / "b" / "seed2")
    labels = run_labels([load_run(p) for p in (a, b, a, runs["fedavg"])])
    assert labels == [
        "ring-dsgd (a/seed1)", "ring-dsgd (b/seed2)", "ring-dsgd (a/seed1) #2", "fedavg"
    ]


# ---------------------------------------------------------------- errors


def test_not_a_run_directory(tmp_path, runs):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReportError, match=re.escape(str(empty)) + ".*no metrics.csv"):
        load_run(empty)
    with pytest.raises(ReportError, match="does not exist"):
        build_report(tmp_path / "missing")
    with pytest.raises(ReportError, match="not a directory"):
        load_run(runs["ring"] / "metrics.csv")
    # A folder of runs: the message names them.
    parent = runs["ring"].parent
    with pytest.raises(ReportError, match="it holds run directories.*fedavg, ring"):
        compare_runs([parent], tmp_path / "cmp")
    assert isinstance(ReportError("x"), ValueError)


def test_unreadable_files_name_the_file(runs, tmp_path):
    run_dir = copy_run(runs["ring"], tmp_path / "ring")
    (run_dir / "summary.json").write_text("{not json")
    with pytest.raises(ReportError, match=re.escape(str(run_dir / "summary.json"))):
        load_run(run_dir)


def test_load_run_reads_metrics(runs):
    run = load_run(runs["ring"])
    assert isinstance(run, Run)
    assert run.name == "ring-dsgd" and run.path == runs["ring"]
    assert run.metrics["round"] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert run.metrics["communicated"] == ["communicate"] * 6
    # Evaluated every 2 rounds: rounds 1, 3, 5.
    assert [a is None for a in run.metrics["test_accuracy"]] == [True, False] * 3
    assert run.series("test_accuracy")[0] == [1.0, 3.0, 5.0]
    assert run.config["algorithm"]["name"] == "dsgd" and run.topology["kind"] == "graph"


def test_config_text_is_compact_and_still_toml():
    from murmura.report.html import _compact_arrays
    from murmura.report.run import tomllib  # tomli on Python 3.10

    config = {
        "model": {"name": "mlp", "hidden": [16, 32]},
        "nested": [[1, 2], [3]],
        "tricky": ["a]", "b,", "c"],
        "empty": [],
        "long": list(range(60)),
    }
    text = _compact_arrays(tomli_w.dumps(config))
    assert tomllib.loads(text) == config
    assert "hidden = [16, 32]" in text and "nested = [[1, 2], [3]]" in text
    assert 'tricky = ["a]", "b,", "c"]' in text
    assert "long = [\n" in text  # too long for one line: left as tomli_w wrote it
