"""Optional experiment trackers. None is required; each needs its extra installed.

A logger receives every round's numeric metrics and the experiment's settings::

    [output]
    loggers = ["tensorboard"]     # pip install 'murmura[tensorboard]'
"""

from __future__ import annotations

import importlib
import math
import os
from pathlib import Path
from typing import Any, Protocol

from murmura.config import ConfigError, Experiment

EXTRAS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


class Logger(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def numeric(record: dict[str, Any]) -> dict[str, float]:
    """The record's finite numbers (trackers take nothing else)."""
    out = {}
    for key, value in record.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if key != "round" and math.isfinite(value):
            out[key] = float(value)
    return out


def flat_config(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"algorithm": {"lr": 0.1}}`` -> ``{"algorithm.lr": 0.1}`` (trackers' parameter form)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, name + "."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def _require(module: str, logger: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError([
            f"output.loggers: {logger!r} needs the {module!r} package: "
            f"pip install 'murmura[{EXTRAS[logger]}]' (or remove it from output.loggers)"
        ]) from None


class TensorBoardLogger:
    """Scalars under ``RUN_DIR/tensorboard`` (``tensorboard --logdir RUN_DIR``)."""

    def __init__(self, run_dir: Path, experiment: Experiment) -> None:
        _require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", "```\n" + experiment.to_toml() + "\n```")

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """A Weights & Biases run (project from ``$WANDB_PROJECT``, default "murmura"; offline
    when ``$WANDB_MODE=offline``)."""

    def __init__(self, run_dir: Path, experiment: Experiment) -> None:
        wandb = _require("wandb", "wandb")
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "murmura"),
            name=experiment.name,
            config=experiment.to_dict(),
            dir=str(run_dir),
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowLogger:
    """An MLflow run (tracking URI from ``$MLFLOW_TRACKING_URI``, else ``RUN_DIR/mlruns``)."""

    def __init__(self, run_dir: Path, experiment: Experiment) -> None:
        mlflow = _require("mlflow", "mlflow")
        self.mlflow = mlflow
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
        mlflow.start_run(run_name=experiment.name)
        mlflow.log_params(flat_config(experiment.to_dict()))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(metrics, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


LOGGER_CLASSES = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger, "mlflow": MlflowLogger}


def check_loggers(experiment: Experiment) -> None:
    """Fail before anything is written when a logger's package is missing."""
    for name in experiment.output.loggers:
        _require(EXTRAS[name], name)


def make_loggers(experiment: Experiment, run_dir: Path) -> list[Logger]:
    """The experiment's loggers, each checked for its package before the first round."""
    return [LOGGER_CLASSES[name](run_dir, experiment) for name in experiment.output.loggers]
