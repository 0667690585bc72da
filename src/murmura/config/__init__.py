"""Experiments as typed objects, read from and written to TOML."""

from murmura.config.errors import ConfigError
from murmura.config.schema import (
    AlgorithmChoice,
    DataConfig,
    DatasetChoice,
    EngineConfig,
    EvaluationConfig,
    Experiment,
    ModelChoice,
    OutputConfig,
    PartitionChoice,
    ScheduleConfig,
    TopologyChoice,
    apply_overrides,
    parse_value,
)

__all__ = [
    "AlgorithmChoice",
    "ConfigError",
    "DataConfig",
    "DatasetChoice",
    "EngineConfig",
    "EvaluationConfig",
    "Experiment",
    "ModelChoice",
    "OutputConfig",
    "PartitionChoice",
    "ScheduleConfig",
    "TopologyChoice",
    "apply_overrides",
    "parse_value",
]
