"""The figure of a kind's own columns: a tool around training (``online``, ``gbnn``, ...)
records numbers the swarm figures do not know (regret, returns, a selector's accuracy), and its
report should show them without each kind drawing its own plots."""

from __future__ import annotations

import math

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from murmura.report.run import Run

# Drawn by the swarm figures already, or bookkeeping rather than results.
SHOWN_ELSEWHERE = frozenset({
    "round", "test_accuracy", "test_loss", "node_accuracy_mean", "consensus_distance",
    "wall_seconds", "bytes_sent_per_node_mean",
})
MAX_PANELS = 12


def own_columns(run: Run) -> list[str]:
    """The numeric columns of ``metrics.csv`` the other figures leave out, in file order, at
    most :data:`MAX_PANELS`."""
    names = [name for name in run.metrics if name not in SHOWN_ELSEWHERE and run.has(name)]
    return names[:MAX_PANELS]


def own_columns_figure(run: Run) -> Figure:
    """One small panel per column of :func:`own_columns`, against ``round``."""
    names = own_columns(run)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(3.6 * cols, 2.8 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        xs, ys = run.series(name)
        ax.plot(xs, ys, color="#1f77b4", **({"marker": "o", "markersize": 3}
                                             if len(xs) <= 40 else {}))
        ax.set_title(name)
        ax.set_xlabel("round")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3, linewidth=0.8)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.suptitle(f"{run.name}: {run.kind}")
    return fig
