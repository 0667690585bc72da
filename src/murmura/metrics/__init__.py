"""Evaluation, consensus distance, communication accounting and per-round histories."""

from murmura.metrics.evaluation import consensus_distance, evaluate_model, evaluate_nodes
from murmura.metrics.history import COLUMNS, History

__all__ = ["COLUMNS", "History", "consensus_distance", "evaluate_model", "evaluate_nodes"]
