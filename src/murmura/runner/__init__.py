"""Experiments end to end: run directories, checkpoints, resume, sweeps."""

from murmura.runner.run import RunError, RunResult, build_simulation, run_experiment
from murmura.runner.rundir import RunDirectory, final_metrics

__all__ = [
    "RunDirectory", "RunError", "RunResult", "build_simulation", "final_metrics", "run_experiment",
]
