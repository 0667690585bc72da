"""The algorithm-selection table of MetaInf (spec ``federated.md`` section 15): tasks x methods
-> log throughput, its loading from the committed decoder timings, and the held-out metrics.

A *task* is a row of numeric features (the paper embeds model card, hardware and data with an
LLM text encoder; offline, the numbers themselves are the features). ``performance`` is
``[n_tasks, n_methods]``, larger is better (log tokens/s here). A selector's choice is a method
index per task; it is scored against the true best:

>>> import numpy as np
>>> perf = np.log([[100.0, 200.0], [300.0, 150.0], [50.0, 50.0]])
>>> chosen = np.array([1, 1, 0])
>>> selection_accuracy(perf, chosen)           # right on tasks 0 and 2 (a tie counts)
0.6666666666666666
>>> round(mean_regret(perf, chosen), 4)          # log 2 lost on task 1, over 3 tasks
0.231
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DATA = Path(__file__).resolve().parent / "data" / "decoder_timings.csv"
TASK_COLUMNS = ("batch", "prompt", "shared", "gen", "layers", "width", "threads", "dtype")
# sizes enter as log2 (throughput scales multiplicatively in them); dtype as a 0/1 flag
FEATURE_NAMES = ("log2_batch", "log2_prompt", "shared", "log2_gen", "layers", "log2_width",
                 "threads", "bfloat16")


@dataclass(frozen=True)
class TimingTable:
    """Tasks (``raw`` column values and encoded ``features``) x ``methods``: ``log_tps`` (natural
    log of tokens/s), ``seconds``, and per task the ``tokens`` generated and the hardware
    ``price`` (cores used: a cost is core-seconds)."""

    raw: dict[str, np.ndarray]
    features: np.ndarray
    methods: tuple[str, ...]
    log_tps: np.ndarray
    seconds: np.ndarray

    @property
    def tokens(self) -> np.ndarray:
        return self.raw["batch"] * self.raw["gen"]

    @property
    def price(self) -> np.ndarray:
        return self.raw["threads"].astype(float)

    def __len__(self) -> int:
        return len(self.features)

    def subset(self, index: np.ndarray) -> TimingTable:
        return TimingTable({k: v[index] for k, v in self.raw.items()}, self.features[index],
                           self.methods, self.log_tps[index], self.seconds[index])


def encode_tasks(raw: dict[str, np.ndarray]) -> np.ndarray:
    """The numeric feature matrix ``[n, 8]`` (:data:`FEATURE_NAMES`) of raw task columns."""
    missing = [c for c in TASK_COLUMNS if c not in raw]
    if missing:
        raise ValueError(f"task columns {missing} missing: need {', '.join(TASK_COLUMNS)}")
    f = {c: np.asarray(raw[c], dtype=float) for c in TASK_COLUMNS if c != "dtype"}
    return np.stack([np.log2(f["batch"]), np.log2(f["prompt"]), f["shared"], np.log2(f["gen"]),
                     f["layers"], np.log2(f["width"]), f["threads"],
                     (np.asarray(raw["dtype"]) == "bfloat16").astype(float)], 1)


def load_timings(path: str | Path | None = None) -> TimingTable:
    """The committed decoder timings (or ``path``, a CSV of :func:`timings.write_csv`) as a
    task x method table; every task must have every method."""
    path = Path(path) if path is not None else DATA
    if not path.exists():
        raise ValueError(f"no timings at {path}: write them with python -m "
                         "murmura.select.timings --out FILE")
    with path.open() as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    methods = tuple(dict.fromkeys(r["method"] for r in rows))
    cells: dict[tuple, dict[str, tuple[float, float]]] = {}
    for r in rows:
        cells.setdefault(tuple(r[c] for c in TASK_COLUMNS), {})[r["method"]] = (
            float(r["tokens_per_s"]), float(r["seconds"]))
    incomplete = [k for k, v in cells.items() if len(v) != len(methods)]
    if incomplete:
        raise ValueError(f"{len(incomplete)} tasks in {path} lack some of {methods}, "
                         f"e.g. {incomplete[0]}")
    keys = list(cells)
    raw: dict[str, Any] = {c: np.array([k[i] for k in keys]) for i, c in enumerate(TASK_COLUMNS)}
    for c in TASK_COLUMNS:
        if c == "shared":
            raw[c] = raw[c].astype(float)
        elif c != "dtype":
            raw[c] = raw[c].astype(int)
    tps = np.array([[cells[k][m][0] for m in methods] for k in keys])
    secs = np.array([[cells[k][m][1] for m in methods] for k in keys])
    return TimingTable(raw, encode_tasks(raw), methods, np.log(tps), secs)


def check_table(tasks: Any, methods: Any, performance: Any,
                allow_missing: bool = False) -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
    """Validate a training table: ``tasks [n, d]``, ``methods`` (>= 2 distinct names),
    ``performance [n, len(methods)]`` finite (NaN = not measured, where allowed)."""
    X = np.asarray(tasks, dtype=float)
    if X.ndim != 2 or len(X) == 0:
        raise ValueError(f"tasks must be a non-empty 2-D array [n_tasks, n_features], got shape "
                         f"{X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("tasks has NaN or infinite features: impute or drop those tasks")
    names = tuple(str(m) for m in methods)
    if len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"methods {names} must be >= 2 distinct names")
    P = np.asarray(performance, dtype=float)
    if P.shape != (len(X), len(names)):
        raise ValueError(f"performance has shape {P.shape}: need [n_tasks, n_methods] = "
                         f"{(len(X), len(names))}")
    if np.isinf(P).any() or (np.isnan(P).any() and not allow_missing):
        raise ValueError("performance has NaN or infinite entries: this selector needs every "
                         "method measured on every training task")
    return X, names, P


def check_features(X: Any, n_features: int) -> np.ndarray:
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or X.shape[1] != n_features:
        raise ValueError(f"tasks must be [n_tasks, {n_features}] like the training tasks, got "
                         f"shape {X.shape}")
    return X


def budgeted_argmax(predicted: np.ndarray, cost: np.ndarray, budget: float) -> np.ndarray:
    """Per task, the best-predicted method among those whose cost fits ``budget``; where none
    fits, the cheapest (serving something beats refusing the request)."""
    predicted, cost = np.asarray(predicted, float), np.asarray(cost, float)
    if predicted.shape != cost.shape:
        raise ValueError(f"predicted {predicted.shape} and cost {cost.shape} differ in shape")
    if not budget > 0:
        raise ValueError(f"budget={budget} must be > 0 (a cost, e.g. core-seconds)")
    fits = cost <= budget
    choice = np.where(fits, predicted, -np.inf).argmax(1)
    return np.where(fits.any(1), choice, cost.argmin(1))


def selection_accuracy(performance: np.ndarray, chosen: np.ndarray) -> float:
    """Fraction of tasks whose chosen method is (one of) the best."""
    P = np.asarray(performance, float)
    picked = P[np.arange(len(P)), np.asarray(chosen)]
    return float(np.mean(picked >= P.max(1)))


def regrets(performance: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    P = np.asarray(performance, float)
    return P.max(1) - P[np.arange(len(P)), np.asarray(chosen)]


def mean_regret(performance: np.ndarray, chosen: np.ndarray) -> float:
    """Mean of (best - chosen) performance; in log throughput, the log of the slow-down."""
    return float(regrets(performance, chosen).mean())


def speedup(performance: np.ndarray, chosen: np.ndarray, reference: int) -> float:
    """Geometric-mean speed-up of the chosen methods over method ``reference``."""
    P = np.asarray(performance, float)
    return float(np.exp(np.mean(P[np.arange(len(P)), np.asarray(chosen)] - P[:, reference])))


def split_tasks(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random (train, test) split of task indices keyed by ``seed``."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction} must be in (0, 1)")
    order = np.random.default_rng(seed).permutation(n)
    cut = n - max(1, round(test_fraction * n))
    if cut < 1:
        raise ValueError(f"{n} tasks cannot be split into train and test")
    return np.sort(order[:cut]), np.sort(order[cut:])
