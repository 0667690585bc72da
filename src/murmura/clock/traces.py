"""Device and behaviour traces: a one-time converter from FedScale's pickles to JSON, and
loaders that read only that JSON.

FedScale ships two traces (``benchmark/dataset/data/device_info/README.md`` in
SymbioticLab/FedScale), both pickled dicts keyed by client id:

* ``client_device_capacity``: ``{client_id: {"computation": float, "communication": float}}``,
  read by ``Aggregator.load_client_profile`` (``fedscale/cloud/aggregation/aggregator.py``).
  ``computation`` is a model's inference latency in ms per sample and ``communication`` a
  bandwidth in kbit/s, as ``get_completion_time`` uses them
  (``fedscale/cloud/internal/client_metadata.py``: compute ``3 * batch * steps * computation /
  1000`` seconds, communication ``(upload + download) / communication`` with sizes in kbit,
  where FedScale's kbit is ``bytes * 8 / 1024``);
* ``client_behave_trace``: ``{client_id: {"active": [s, ...], "inactive": [s, ...],
  "finish_time": s, "duration": s, "model": str}}``, read by ``clientManager``
  (``fedscale/cloud/client_manager.py``, ``args.device_avail_file``); a client is active at
  ``t`` when ``active[i] <= t mod finish_time <= inactive[i]`` for some ``i``
  (``ClientMetadata.is_active``).

:func:`convert_fedscale` turns either into the JSON schemas of ``docs/clock.md``; murmura never
unpickles at run time. Clients are sorted by id (numerically when every id is an integer) and
node ``i`` of a run uses the ``i``-th client, cycling when the run has more nodes (as FedScale
maps client ids onto its profiles modulo their number).

>>> import json, tempfile, pathlib
>>> from murmura.clock.traces import load_behaviour_trace
>>> path = pathlib.Path(tempfile.mkdtemp()) / "behaviour.json"
>>> _ = path.write_text(json.dumps({"schema": "murmura.clock.behaviour_trace", "version": 1,
...     "clients": [{"id": "7", "intervals": [[0, 50], [80, 100]], "period": 100}]}))
>>> trace = load_behaviour_trace(path)
>>> trace.ids, trace.intervals[0], trace.periods
(['7'], [(0.0, 50.0), (80.0, 100.0)], [100.0])
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["BEHAVIOUR_SCHEMA", "DEVICE_SCHEMA", "BehaviourTrace", "DeviceTrace",
           "convert_fedscale", "load_behaviour_trace", "load_device_trace"]

DEVICE_SCHEMA = "murmura.clock.device_trace"
BEHAVIOUR_SCHEMA = "murmura.clock.behaviour_trace"
VERSION = 1
KBIT_BYTES = 1024 / 8
"""Bytes in one of FedScale's kbit (its sizes are ``bytes * 8 / 1024``)."""


@dataclass(frozen=True, eq=False)
class DeviceTrace:
    """Per-client compute latency (ms per sample, inference) and bandwidth (kbit/s)."""

    ids: list[str]
    compute_ms_per_sample: torch.Tensor
    bandwidth_kbit_per_s: torch.Tensor

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def bandwidth_bytes_per_s(self) -> torch.Tensor:
        """Bandwidth in bytes per second (FedScale's kbit is 1024 bits)."""
        return self.bandwidth_kbit_per_s * KBIT_BYTES


@dataclass(frozen=True)
class BehaviourTrace:
    """Per-client online intervals ``[start, end)`` in seconds, repeating every ``period``
    seconds (``None``: no repetition), and the device model string where known."""

    ids: list[str]
    intervals: list[list[tuple[float, float]]]
    periods: list[float | None]
    models: list[str | None]

    def __len__(self) -> int:
        return len(self.ids)


def _sorted_ids(keys: list[Any]) -> list[Any]:
    try:
        return sorted(keys, key=lambda k: int(k))
    except (TypeError, ValueError):
        return sorted(keys, key=str)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{where} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{where} must be finite, got {value!r}")
    return v


def convert_fedscale(pickle_path: str | Path, out_path: str | Path, kind: str = "auto",
                     source: str | None = None) -> Path:
    """Convert a FedScale ``client_device_capacity`` or ``client_behave_trace`` pickle to
    murmura's JSON trace (``kind``: ``"device"``, ``"behaviour"`` or ``"auto"``, which looks at
    the entries' keys). Returns ``out_path``.

    **Warning: unpickling executes arbitrary code stored in the file.** Run this only on
    pickles you trust (FedScale's own downloads), once, and ship the JSON; this is the only
    place in murmura that unpickles, and the loaders below never do.
    """
    import pickle

    with open(pickle_path, "rb") as f:
        data = pickle.load(f)  # noqa: S301 - trusted files only, see the docstring
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{pickle_path}: expected a non-empty dict of client id -> entry, got "
                         f"{type(data).__name__}")
    first = next(iter(data.values()))
    if kind == "auto":
        if isinstance(first, dict) and {"computation", "communication"} <= set(first):
            kind = "device"
        elif isinstance(first, dict) and {"active", "inactive"} <= set(first):
            kind = "behaviour"
        else:
            raise ValueError(f"{pickle_path}: entries have neither computation/communication "
                             f"(device capacity) nor active/inactive (behaviour) keys; pass kind")
    if kind not in ("device", "behaviour"):
        raise ValueError(f"kind must be 'device', 'behaviour' or 'auto', got {kind!r}")
    ids = _sorted_ids(list(data))
    src = source or f"fedscale:{Path(pickle_path).name}"
    if kind == "device":
        doc: dict[str, Any] = {"schema": DEVICE_SCHEMA, "version": VERSION, "source": src,
                               "clients": {"id": [], "compute_ms_per_sample": [],
                                           "bandwidth_kbit_per_s": []}}
        cols = doc["clients"]
        for cid in ids:
            entry = data[cid]
            if not isinstance(entry, dict) or not {"computation", "communication"} <= set(entry):
                raise ValueError(f"{pickle_path}: client {cid!r} lacks computation/communication")
            cols["id"].append(str(cid))
            cols["compute_ms_per_sample"].append(
                _number(entry["computation"], f"client {cid!r} computation"))
            cols["bandwidth_kbit_per_s"].append(
                _number(entry["communication"], f"client {cid!r} communication"))
    else:
        clients = []
        for cid in ids:
            entry = data[cid]
            if not isinstance(entry, dict) or not {"active", "inactive"} <= set(entry):
                raise ValueError(f"{pickle_path}: client {cid!r} lacks active/inactive")
            active, inactive = list(entry["active"]), list(entry["inactive"])
            if len(active) != len(inactive):
                raise ValueError(f"{pickle_path}: client {cid!r} has {len(active)} active and "
                                 f"{len(inactive)} inactive timestamps; they must pair up")
            finish = entry.get("finish_time")
            clients.append({
                "id": str(cid),
                "intervals": [[_number(a, f"client {cid!r} active"),
                               _number(b, f"client {cid!r} inactive")]
                              for a, b in zip(active, inactive)],
                "period": None if finish is None else _number(finish, f"client {cid!r} "
                                                                      f"finish_time"),
                "model": None if entry.get("model") is None else str(entry["model"]),
            })
        doc = {"schema": BEHAVIOUR_SCHEMA, "version": VERSION, "source": src, "clients": clients}
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc))
    return out


def _read(path: str | Path, schema: str) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise ValueError(f"trace file {p} does not exist; convert FedScale's pickle once with "
                         f"murmura.clock.traces.convert_fedscale")
    try:
        doc = json.loads(p.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{p} is not JSON ({e}); murmura reads traces only as JSON, made by "
                         f"convert_fedscale") from None
    if not isinstance(doc, dict) or doc.get("schema") != schema:
        got = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"{p}: expected schema {schema!r}, got {got!r}")
    if doc.get("version") != VERSION:
        raise ValueError(f"{p}: unsupported version {doc.get('version')!r} (this murmura reads "
                         f"version {VERSION})")
    return doc


def load_device_trace(path: str | Path) -> DeviceTrace:
    """Read a device-capacity JSON (schema ``murmura.clock.device_trace``), validated."""
    doc = _read(path, DEVICE_SCHEMA)
    cols = doc.get("clients")
    names = ("id", "compute_ms_per_sample", "bandwidth_kbit_per_s")
    if not isinstance(cols, dict) or any(not isinstance(cols.get(k), list) for k in names):
        raise ValueError(f"{path}: 'clients' must hold the lists {', '.join(names)}")
    n = len(cols["id"])
    if n == 0 or any(len(cols[k]) != n for k in names):
        raise ValueError(f"{path}: the lists {', '.join(names)} must be non-empty and of equal "
                         f"length, got {[len(cols[k]) for k in names]}")
    compute = [_number(v, f"{path}: compute_ms_per_sample[{i}]")
               for i, v in enumerate(cols["compute_ms_per_sample"])]
    bandwidth = [_number(v, f"{path}: bandwidth_kbit_per_s[{i}]")
                 for i, v in enumerate(cols["bandwidth_kbit_per_s"])]
    if any(v < 0 for v in compute):
        raise ValueError(f"{path}: compute_ms_per_sample must be >= 0")
    if any(v <= 0 for v in bandwidth):
        raise ValueError(f"{path}: bandwidth_kbit_per_s must be > 0")
    return DeviceTrace([str(i) for i in cols["id"]], torch.tensor(compute, dtype=torch.float64),
                       torch.tensor(bandwidth, dtype=torch.float64))


def load_behaviour_trace(path: str | Path) -> BehaviourTrace:
    """Read a behaviour JSON (schema ``murmura.clock.behaviour_trace``), validated."""
    doc = _read(path, BEHAVIOUR_SCHEMA)
    clients = doc.get("clients")
    if not isinstance(clients, list) or not clients:
        raise ValueError(f"{path}: 'clients' must be a non-empty list of "
                         f"{{id, intervals, period, model}}")
    ids, intervals, periods, models = [], [], [], []
    for c, entry in enumerate(clients):
        where = f"{path}: clients[{c}]"
        if not isinstance(entry, dict) or "id" not in entry or "intervals" not in entry:
            raise ValueError(f"{where} must be an object with id and intervals")
        spans = []
        for i, pair in enumerate(entry["intervals"]):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ValueError(f"{where}.intervals[{i}] must be [start, end], got {pair!r}")
            a = _number(pair[0], f"{where}.intervals[{i}][0]")
            b = _number(pair[1], f"{where}.intervals[{i}][1]")
            if a < 0 or b < a:
                raise ValueError(f"{where}.intervals[{i}] = {pair!r} needs 0 <= start <= end")
            spans.append((a, b))
        period = entry.get("period")
        if period is not None:
            period = _number(period, f"{where}.period")
            if period <= 0:
                raise ValueError(f"{where}.period must be > 0 seconds or null")
        ids.append(str(entry["id"]))
        intervals.append(spans)
        periods.append(period)
        models.append(None if entry.get("model") is None else str(entry["model"]))
    return BehaviourTrace(ids, intervals, periods, models)
