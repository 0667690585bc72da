"""Reports of runs (finished, interrupted or failed): PNG figures, a self-contained HTML page,
and comparisons of several runs.

Usage::

    from murmura.report import build_comparison_report, build_report

    build_report("runs/ring")  # writes runs/ring/plots/*.png and runs/ring/report.html
    build_comparison_report(["runs/ring", "runs/torus"], "runs/compare")
"""

from murmura.report.compare import compare_runs
from murmura.report.html import build_comparison_report, build_report
from murmura.report.plots import make_plots
from murmura.report.run import ReportError, Run, load_run

__all__ = [
    "ReportError",
    "Run",
    "build_comparison_report",
    "build_report",
    "compare_runs",
    "load_run",
    "make_plots",
]
