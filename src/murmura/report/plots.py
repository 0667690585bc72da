"""Figures of one run (``RUN_DIR/plots/*.png``) and of several runs overlaid."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from murmura.report.kind_plots import own_columns, own_columns_figure
from murmura.report.run import Run, load_run

__all__ = ["FIGURES", "make_plots", "planned_figures", "plot_comparison", "stale_figures"]

DPI = 110
MAX_DRAWN_NODES = 300
MAX_DRAWN_CLIENTS = 64

# What each figure shows, for captions in the HTML report.
FIGURES: dict[str, str] = {
    "accuracy.png": (
        "Test accuracy of the average model x̄ = mean of the node models (whole test set) and "
        "the mean over nodes of each node's own accuracy (test subset), against rounds and "
        "against the data each node sent."
    ),
    "loss.png": "Test loss (cross-entropy) of the average model x̄, against rounds and data sent.",
    "consensus.png": (
        "Consensus distance (1/n) Σᵢ ‖xᵢ − x̄‖² after communication: how far the node models are "
        "from their average."
    ),
    "node_spread.png": "Spread of the node models' own accuracies: worst, mean and best node.",
    "topology.png": "Who talks to whom.",
    "metrics.png": (
        "Every other number the run recorded, each against rounds (a tool's own columns: "
        "regret, returns, a selector's accuracy, ...)."
    ),
}

# Fractions as percentages without trailing zeros: 17.5%, 18%, 18.5%.
PERCENT = FuncFormatter(lambda v, _: f"{v * 100:.2f}".rstrip("0").rstrip(".") + "%")

BLUE, ORANGE, GREEN, RED, GREY = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#7f7f7f"
RC = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "figure.titlesize": 12,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "savefig.facecolor": "white",
}


def make_plots(
    run_dir: str | os.PathLike[str] | Run, names: Iterable[str] | None = None
) -> list[Path]:
    """Write the run's figures into ``RUN_DIR/plots/`` and return their paths.

    A figure whose data the run lacks (evaluation off, no topology.json) is left out, and an
    earlier version of it is deleted so that the folder matches the run. ``names`` limits the
    drawing to those figures (e.g. the :func:`stale_figures`)."""
    run = run_dir if isinstance(run_dir, Run) else load_run(run_dir)
    out = run.path / "plots"
    out.mkdir(parents=True, exist_ok=True)
    plan = dict(_plan(run))
    for name in FIGURES:
        if name not in plan:
            (out / name).unlink(missing_ok=True)
    wanted = set(plan) if names is None else set(names)
    written = []
    with matplotlib.rc_context(RC):
        for name, draw in plan.items():
            if name not in wanted:
                continue
            path = out / name
            try:
                draw(run).savefig(path, dpi=DPI)
            except Exception as err:  # noqa: BLE001
                # One figure of odd data must not cost the whole report (often drawn at the end
                # of a long run): leave it out and say why.
                path.unlink(missing_ok=True)
                warnings.warn(f"{path}: not drawn ({type(err).__name__}: {err})", stacklevel=2)
                continue
            written.append(path)
    return written


def planned_figures(run: Run) -> list[str]:
    """The file names :func:`make_plots` writes for this run."""
    return [name for name, _ in _plan(run)]


def stale_figures(run: Run) -> list[str]:
    """The planned figures that are missing or older than a run file they are drawn from."""
    stale = []
    for name in planned_figures(run):
        path = run.path / "plots" / name
        inputs = [run.path / f for f in _inputs(name) if (run.path / f).is_file()]
        newest = max((p.stat().st_mtime for p in inputs), default=0.0)
        if not path.is_file() or path.stat().st_mtime < newest:
            stale.append(name)
    return stale


def _inputs(name: str) -> tuple[str, ...]:
    # The run name (config.toml, else summary.json) is in every title.
    if name == "topology.png":
        return ("config.toml", "summary.json", "topology.json")
    return ("config.toml", "summary.json", "metrics.csv")


def _plan(run: Run) -> list[tuple[str, Callable[[Run], Figure]]]:
    plan: list[tuple[str, Callable[[Run], Figure]]] = []
    if run.has("test_accuracy") or run.has("node_accuracy_mean"):
        plan.append(("accuracy.png", _accuracy_figure))
    if run.has("test_loss"):
        plan.append(("loss.png", _loss_figure))
    if run.has("consensus_distance"):
        plan.append(("consensus.png", _consensus_figure))
    if _spread(run)[0]:
        plan.append(("node_spread.png", _spread_figure))
    if run.topology:
        plan.append(("topology.png", _topology_figure))
    if run.kind != "swarm" and own_columns(run):
        plan.append(("metrics.png", own_columns_figure))
    return plan


# ---------------------------------------------------------------- helpers


def _bytes_unit(largest: float) -> tuple[float, str]:
    for scale, unit in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if largest >= scale:
            return scale, unit
    return 1.0, "bytes"


def _has_bytes(run: Run) -> bool:
    return run.has("bytes_sent_per_node_mean")


def _style(ax: Any, xlabel: str, ylabel: str, title: str | None = None) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3, linewidth=0.8)


def _marker(n: int) -> dict[str, Any]:
    # Markers show single evaluations (and a one-point series at all); dense series read better
    # as plain lines.
    return {"marker": "o", "markersize": 4} if n <= 40 else {}


def _note(ax: Any, text: str) -> None:
    ax.text(
        0.5,
        0.5,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize=10,
        color="#444444",
        bbox={"boxstyle": "round,pad=0.5", "facecolor": "#f4f4f4", "edgecolor": "#cccccc"},
    )


def _round_axis(ax: Any) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _widen(ax: Any, rounds: bool, percent: bool) -> None:
    """Limits for one point (or a flat series) that do not zoom into rounding noise."""
    (x0, y0), (x1, y1) = ax.dataLim.get_points()
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        return
    if rounds and x1 - x0 < 2:
        ax.set_xlim(x0 - 1, x1 + 1)
    elif not rounds and x1 == x0:
        ax.set_xlim((0, 2 * x0) if x0 > 0 else (-1, 1))
    if percent and y1 - y0 < 0.02:
        middle = (y0 + y1) / 2
        ax.set_ylim(middle - 0.02, middle + 0.02)


def _new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def _metric_figure(
    run: Run,
    columns: Sequence[tuple[str, str, str]],
    ylabel: str,
    what: str,
    percent: bool,
) -> Figure:
    """One panel against rounds and, when bytes were counted, one against MB sent per node."""
    panels = 2 if _has_bytes(run) else 1
    fig = _new_figure(5.6 * panels, 4.0)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    scale, unit = _bytes_unit(max(run.series("bytes_sent_per_node_mean")[1], default=0.0))
    for col, label, color in columns:
        xs, ys = run.series(col)
        if not xs:
            continue
        axes[0].plot(xs, ys, color=color, label=label, **_marker(len(xs)))
        if panels == 2:
            xs, ys = run.series(col, x="bytes_sent_per_node_mean")
            axes[1].plot([x / scale for x in xs], ys, color=color, label=label, **_marker(len(xs)))
    _style(axes[0], "round", ylabel, f"{what} vs round")
    _round_axis(axes[0])
    if panels == 2:
        _style(
            axes[1], f"{unit} sent per node (mean, cumulative)", ylabel, f"{what} vs data sent"
        )
        if not any(run.column("bytes_sent_per_node_mean")):
            _note(axes[1], "the nodes sent nothing")
    for i, ax in enumerate(axes):
        _widen(ax, rounds=i == 0, percent=percent)
        if percent:
            ax.yaxis.set_major_formatter(PERCENT)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best")
    fig.suptitle(f"{run.name}: {what}")
    return fig


# ---------------------------------------------------------------- one run


def _accuracy_figure(run: Run) -> Figure:
    return _metric_figure(
        run,
        [
            ("test_accuracy", "average model x̄ (test set)", BLUE),
            ("node_accuracy_mean", "node models, mean (test subset)", ORANGE),
        ],
        "accuracy",
        "test accuracy",
        percent=True,
    )


def _loss_figure(run: Run) -> Figure:
    return _metric_figure(
        run,
        [("test_loss", "average model x̄ (test set)", BLUE)],
        "cross-entropy loss",
        "test loss",
        percent=False,
    )


def _consensus_figure(run: Run) -> Figure:
    fig = _new_figure(6.4, 4.0)
    ax = fig.subplots()
    xs, ys = run.series("consensus_distance")
    ax.plot(xs, ys, color=GREEN, label="consensus distance", **_marker(len(xs)))
    _style(
        ax,
        "round",
        r"consensus distance  $\frac{1}{n}\sum_i \|x_i - \bar{x}\|^2$",
        "distance of the node models from their average, after communication",
    )
    _round_axis(ax)
    _widen(ax, rounds=True, percent=False)
    if all(y == 0 for y in ys):
        ax.set_ylim(-0.05, 1.0)
        _note(ax, "all nodes identical (0) at every evaluation:\nthe node models are equal")
    elif all(y > 0 for y in ys):
        # Gossip shrinks disagreement geometrically: a log scale shows the rate as a slope.
        ax.set_yscale("log")
    fig.suptitle(f"{run.name}: consensus distance")
    return fig


def _spread(run: Run) -> tuple[list[float], list[float], list[float], list[float]]:
    rows = [
        (r, lo, mean, hi)
        for r, lo, mean, hi in zip(
            run.column("round"),
            run.column("node_accuracy_min"),
            run.column("node_accuracy_mean"),
            run.column("node_accuracy_max"),
        )
        if all(isinstance(v, float) for v in (r, lo, mean, hi))
    ]
    return (
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        [r[3] for r in rows],
    )


def _spread_figure(run: Run) -> Figure:
    rounds, lo, mean, hi = _spread(run)
    fig = _new_figure(6.4, 4.0)
    ax = fig.subplots()
    if len(rounds) == 1:
        # A band over one round has no width: an error bar shows the same range.
        ax.errorbar(
            rounds, mean, yerr=[[mean[0] - lo[0]], [hi[0] - mean[0]]], fmt="o", capsize=8,
            color=ORANGE, label="mean over nodes, bar: min–max",
        )
    else:
        ax.fill_between(rounds, lo, hi, color=ORANGE, alpha=0.22, label="min–max over nodes")
        ax.plot(rounds, lo, color=ORANGE, linewidth=0.8, alpha=0.7)
        ax.plot(rounds, hi, color=ORANGE, linewidth=0.8, alpha=0.7)
        ax.plot(rounds, mean, color=ORANGE, label="mean over nodes", **_marker(len(rounds)))
    xs, ys = run.series("test_accuracy")
    if xs:
        ax.plot(xs, ys, color=BLUE, linestyle="--", label="average model x̄", **_marker(len(xs)))
    _style(ax, "round", "accuracy", "node models' own test accuracy")
    _round_axis(ax)
    _widen(ax, rounds=True, percent=True)
    ax.yaxis.set_major_formatter(PERCENT)
    ax.legend(loc="best")
    fig.suptitle(f"{run.name}: spread over nodes")
    return fig


# ---------------------------------------------------------------- topology


def _topology_figure(run: Run) -> Figure:
    topo = run.topology
    kind = topo.get("kind")
    n = topo.get("num_nodes")
    n = int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) else run.num_nodes or 0
    label = str(topo.get("label") or run.topology_label or kind or "topology")
    if kind == "server":
        return _server_figure(run, n, label)
    if kind == "none":
        return _isolated_figure(run, n, label)
    edges = topo.get("edges")
    if kind != "graph" or not isinstance(edges, list):
        fig = _new_figure(6.4, 3.2)
        ax = fig.subplots()
        ax.set_axis_off()
        if kind == "graph":
            text = f"{n:,} nodes: the edge list was not stored\n(graphs of more than 20 000 edges)"
        else:
            text = f"topology kind {kind!r}: nothing to draw"
        _note(ax, text)
        fig.suptitle(f"{run.name}: {label}")
        return fig
    src, dst = _edge_arrays(edges)
    n = max(n, int(max(src.max(initial=-1), dst.max(initial=-1))) + 1)
    degrees = np.bincount(src, minlength=n) + np.bincount(dst, minlength=n)
    note = "time-varying: round 0 shown" if topo.get("time_varying") else None
    if n > MAX_DRAWN_NODES:
        return _degree_figure(run, degrees, len(src), label, note)
    return _graph_figure(run, src, dst, degrees, label, note)


def _edge_arrays(edges: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    pairs = []
    for e in edges:
        try:
            i, j = int(e[0]), int(e[1])
        except (TypeError, ValueError, IndexError):
            continue
        if i != j and 0 <= i and 0 <= j:
            pairs.append((i, j))
    arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def _degree_text(degrees: np.ndarray) -> str:
    if degrees.size == 0:
        return "no nodes"
    lo, hi = int(degrees.min()), int(degrees.max())
    if lo == hi:
        return f"degree {lo}"
    return f"degree {lo}–{hi} (mean {degrees.mean():.1f})"


def _gap_text(run: Run) -> str:
    gap = run.simulation.get("spectral_gap")
    return f", spectral gap {gap:.3g}" if isinstance(gap, (int, float)) else ""


def _layout(src: np.ndarray, dst: np.ndarray, n: int) -> np.ndarray:
    """Node positions, one row per node; components are laid out apart and packed in rows,
    since a force layout would fling small components to the corners."""
    import networkx as nx

    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(zip(src.tolist(), dst.tolist()))
    xy = np.zeros((n, 2))
    components = sorted(nx.connected_components(graph), key=lambda c: (-len(c), min(c)))
    if len(components) == 1:
        nodes = sorted(components[0])
        xy[nodes] = _component_layout(graph, nodes)
        return xy
    pad = 1.0
    boxes = []
    for comp in components:
        nodes = sorted(comp)
        pos = _component_layout(graph.subgraph(nodes), nodes)
        pos -= pos.min(axis=0)
        span = pos.max()
        if span > 0:
            pos *= math.sqrt(len(nodes)) / span
        boxes.append((nodes, pos, pos.max(axis=0)))
    area = sum((w + pad) * (h + pad) for _, _, (w, h) in boxes)
    row_width = max(max(w for _, _, (w, _) in boxes), 1.3 * math.sqrt(area))
    x = y = row_height = 0.0
    for nodes, pos, (w, h) in boxes:
        if x > 0 and x + w > row_width:
            x, y, row_height = 0.0, y - row_height - pad, 0.0
        xy[nodes] = pos + np.array([x, y - h])
        x += w + pad
        row_height = max(row_height, h)
    return xy


def _component_layout(graph: Any, nodes: list[int]) -> np.ndarray:
    import networkx as nx

    k = len(nodes)
    degrees = np.array([graph.degree(v) for v in nodes])
    if k == 1:
        return np.zeros((1, 2))
    if k <= 4 or bool((degrees == 2).all()) or bool((degrees == k - 1).all()):
        pos = nx.circular_layout(graph)  # rings and cliques
    elif k <= 100:
        # Deterministic, and shows grids as the meshes they are.
        pos = nx.kamada_kawai_layout(graph)
    else:
        # A fixed seed: the same run always gives the same picture.
        pos = nx.spring_layout(graph, seed=0, iterations=100)
    return np.array([pos[v] for v in nodes], dtype=float)


def _graph_figure(
    run: Run,
    src: np.ndarray,
    dst: np.ndarray,
    degrees: np.ndarray,
    label: str,
    note: str | None,
) -> Figure:
    n = degrees.size
    xy = _layout(src, dst, n)
    fig = _new_figure(6.0, 6.3)
    ax = fig.subplots()
    small = n <= 40
    segments = np.stack([xy[src], xy[dst]], axis=1) if src.size else np.zeros((0, 2, 2))
    ax.add_collection(
        LineCollection(
            segments,
            colors="#555555",
            linewidths=1.3 if small else 0.5,
            alpha=0.7 if small else 0.35,
            zorder=1,
        )
    )
    size = float(np.clip(4000 / max(n, 1), 12, 420))
    ax.scatter(
        xy[:, 0], xy[:, 1], s=size, c=BLUE, edgecolors="white", linewidths=0.8, zorder=2
    )
    if n <= 30:
        for i, (x, y) in enumerate(xy):
            ax.text(x, y, str(i), ha="center", va="center", fontsize=8, color="white", zorder=3)
    ax.set_aspect("equal", adjustable="datalim")
    ax.margins(0.08)
    ax.set_axis_off()
    ax.set_title(
        f"{n:,} nodes, {src.size:,} edges, {_degree_text(degrees)}{_gap_text(run)}", fontsize=10
    )
    if note:
        ax.text(0.5, -0.02, note, transform=ax.transAxes, ha="center", va="top", color=RED)
    fig.suptitle(f"{run.name}: {label}")
    return fig


def _degree_figure(
    run: Run, degrees: np.ndarray, num_edges: int, label: str, note: str | None
) -> Figure:
    fig = _new_figure(6.4, 4.2)
    ax = fig.subplots()
    lo, hi = int(degrees.min()), int(degrees.max())
    if hi - lo <= 60:
        bins = np.arange(lo - 0.5, hi + 1.5)
    else:
        bins = 40
    _, _, bars = ax.hist(degrees, bins=bins, color=BLUE, edgecolor="white")
    if isinstance(bins, np.ndarray) and len(bins) <= 25:
        # Few bars: the counts show the rare degrees a bar's height hides.
        ax.bar_label(bars, labels=[f"{int(b.get_height()):,}" for b in bars], fontsize=8)
    _style(ax, "degree (neighbours of a node)", "nodes", None)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(
        f"{degrees.size:,} nodes (too many to draw), {num_edges:,} edges, "
        f"{_degree_text(degrees)}",
        fontsize=10,
    )
    if note:
        ax.text(0.99, 0.97, note, transform=ax.transAxes, ha="right", va="top", color=RED)
    fig.suptitle(f"{run.name}: {label}, degree distribution")
    return fig


def _server_figure(run: Run, n: int, label: str) -> Figure:
    fig = _new_figure(6.0, 6.3)
    ax = fig.subplots()
    shown = min(n, MAX_DRAWN_CLIENTS)
    angles = np.linspace(0, 2 * np.pi, shown, endpoint=False) + np.pi / 2
    xy = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    ax.add_collection(
        LineCollection(
            [[(0.0, 0.0), (x, y)] for x, y in xy],
            colors="#888888",
            linewidths=1.0,
            alpha=0.6,
            zorder=1,
        )
    )
    size = float(np.clip(3000 / max(shown, 1), 20, 380))
    ax.scatter(xy[:, 0], xy[:, 1], s=size, c=BLUE, edgecolors="white", zorder=2, label="client")
    ax.scatter([0], [0], s=900, c=ORANGE, marker="s", edgecolors="white", zorder=3, label="server")
    ax.text(0, 0, "server", ha="center", va="center", fontsize=8, color="white", zorder=4)
    if shown <= 30:
        for i, (x, y) in enumerate(xy):
            ax.text(x, y, str(i), ha="center", va="center", fontsize=8, color="white", zorder=3)
    ax.set_aspect("equal", adjustable="datalim")
    ax.margins(0.1)
    ax.set_axis_off()
    detail = f"{n:,} clients and a server"
    if shown < n:
        detail += f" ({shown} of {n:,} clients drawn)"
    ax.set_title(detail, fontsize=10)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, -0.06), ncol=2, markerscale=0.5)
    fig.suptitle(f"{run.name}: {label} (star through a server)")
    return fig


def _isolated_figure(run: Run, n: int, label: str) -> Figure:
    fig = _new_figure(6.0, 4.2)
    ax = fig.subplots()
    shown = min(n, MAX_DRAWN_NODES)
    if shown:
        cols = math.ceil(math.sqrt(shown * 1.6))
        idx = np.arange(shown)
        size = float(np.clip(2500 / shown, 10, 300))
        ax.scatter(idx % cols, -(idx // cols), s=size, c=GREY, edgecolors="white")
        ax.margins(0.15)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_axis_off()
    text = f"{n:,} nodes, no communication: each node trains alone"
    if shown < n:
        text += f" ({shown} drawn)"
    ax.set_title(text, fontsize=10)
    fig.suptitle(f"{run.name}: {label}")
    return fig


# ---------------------------------------------------------------- several runs


def plot_comparison(
    runs: Sequence[Run], labels: Sequence[str], out_dir: str | os.PathLike[str]
) -> list[Path]:
    """Overlay the runs' accuracy and loss in ``out_dir``; figures no run has data for are
    left out."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with matplotlib.rc_context(RC):
        for name, column, ylabel, what, percent in (
            ("compare_accuracy.png", "test_accuracy", "accuracy", "test accuracy of x̄", True),
            ("compare_node_accuracy.png", "node_accuracy_mean", "accuracy",
             "nodes' own accuracy (mean)", True),
            ("compare_loss.png", "test_loss", "cross-entropy loss", "test loss of x̄", False),
        ):
            if not any(run.has(column) for run in runs):
                (out / name).unlink(missing_ok=True)
                continue
            fig = _comparison_figure(runs, labels, column, ylabel, what, percent)
            fig.savefig(out / name, dpi=DPI)
            written.append(out / name)
    return written


def _comparison_figure(
    runs: Sequence[Run],
    labels: Sequence[str],
    column: str,
    ylabel: str,
    what: str,
    percent: bool,
) -> Figure:
    fig = _new_figure(11.2, 4.4 + 0.22 * math.ceil(len(runs) / 3))
    left, right = fig.subplots(1, 2)
    largest = max(
        (max(run.series("bytes_sent_per_node_mean")[1], default=0.0) for run in runs),
        default=0.0,
    )
    scale, unit = _bytes_unit(largest)
    colors = matplotlib.colormaps["tab10" if len(runs) <= 10 else "tab20"].colors
    styles = ["-", "--", ":", "-."]
    for i, (run, label) in enumerate(zip(runs, labels)):
        style = {
            "color": colors[i % len(colors)],
            "linestyle": styles[(i // len(colors)) % len(styles)],
        }
        xs, ys = run.series(column)
        if not xs:
            label += " (not evaluated)"
        left.plot(xs, ys, label=label, **style, **_marker(len(xs)))
        xs, ys = run.series(column, x="bytes_sent_per_node_mean")
        right.plot([x / scale for x in xs], ys, **style, **_marker(len(xs)))
    _style(left, "round", ylabel, f"{what} vs round")
    _round_axis(left)
    _style(right, f"{unit} sent per node (mean, cumulative)", ylabel, f"{what} vs data sent")
    for ax, rounds in ((left, True), (right, False)):
        _widen(ax, rounds=rounds, percent=percent)
        if percent:
            ax.yaxis.set_major_formatter(PERCENT)
    fig.legend(loc="outside lower center", ncol=min(len(runs), 3), frameon=False)
    fig.suptitle(f"{len(runs)} runs: {what}")
    return fig
