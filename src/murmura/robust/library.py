"""murmura's robust rules outside a simulation, called as ByzFL's users call its classes.

``aggregate(name, vectors, **params)`` returns the aggregate ``[d]`` of ``[n, d]`` vectors,
``preaggregate(name, vectors, **params)`` the pre-aggregated ``[n', d]`` vectors, and
``attack(name, honest, **params)`` the attacker's vector ``[d]``. ``vectors`` may be a torch
tensor, a numpy array, or a list of either (as in ByzFL); the result has the same type (numpy
for numpy input, the input's float dtype; integer input becomes float64 / float32). Nothing
is written in place (ByzFL's ``Clipping`` and ``ARC`` clip numpy input in place).

Names are murmura's registry names (``murmura list``) or ByzFL's class names (``"TrMean"``,
``"Optimal_ALittleIsEnough"``, ...); parameters keep ByzFL's names: ``f``, ``tau``, ``nu``,
``T``, ``L``, ``c``, ``s``, ``epsilon``, ``idx``, ``agg``, ``pre_agg_list`` (names, ``{"name":
..., **params}``, ByzFL's ``{"name": ..., "parameters": {...}}``, murmura's rules, or ByzFL's
own objects such as ``byzfl.Clipping(2.0)``, translated by class name). The rules behind
the names are the ones a simulation runs, each written for one receiver: this module builds
the full mask and the receiver's ``own`` vector (ByzFL's ``idx`` pivot, ``CenteredClipping``'s
``m``) and checks the count of vectors a rule needs, which a vmapped rule cannot do itself.

>>> import numpy as np
>>> x = np.array([[1., 2., 3.], [4., 5., 6.], [7., 8., 9.], [.5, -1., 2.], [10., -10., 0.],
...               [2., 2., 2.], [-3., 1., 4.]])       # byzfl_reference.json's X
>>> aggregate("TrMean", x, f=2).round(6)             # ByzFL: [2.333333, 1.666667, 3.0]
array([2.333333, 1.666667, 3.      ])
>>> aggregate("trimmed_mean", x, f=2, pre_agg_list=[{"name": "nnm", "f": 2}]).round(6)
array([1.566667, 1.8     , 3.4     ])
>>> attack("SignFlipping", x[:5])
array([-4.5, -0.8, -4. ])
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from murmura.registry import Registry
from murmura.robust.aggregators import AGGREGATORS, make_aggregator
from murmura.robust.attacks import ATTACKS, make_attack
from murmura.robust.preaggregators import PREAGGREGATORS, Chained, make_preaggregator
from murmura.swarm.random import hash_keys

Tensor = torch.Tensor

#: ByzFL 0.0.11's class names -> murmura's registry names.
BYZFL_NAMES: dict[str, str] = {
    "Average": "average", "Median": "median", "TrMean": "trimmed_mean",
    "GeometricMedian": "geometric_median", "Krum": "krum", "MultiKrum": "multi_krum",
    "CenteredClipping": "centered_clipping", "MDA": "mda", "MoNNA": "monna", "Meamed": "meamed",
    "CAF": "caf", "SMEA": "smea",
    "NNM": "nnm", "Bucketing": "bucketing", "Clipping": "clipping", "ARC": "arc",
    "SignFlipping": "sign_flip", "InnerProductManipulation": "ipm", "ALittleIsEnough": "alie",
    "Optimal_InnerProductManipulation": "optimal_ipm", "Optimal_ALittleIsEnough": "optimal_alie",
    "Mimic": "mimic", "Inf": "inf", "Gaussian": "gaussian", "LabelFlipping": "label_flip",
}


def _name(name: Any, registry: Registry) -> str:
    if not isinstance(name, str):
        article = "an" if registry.kind[0] in "aeiou" else "a"
        raise ValueError(f"name must be the name of {article} {registry.kind} (a string), got "
                         f"{name!r}")
    return BYZFL_NAMES.get(name, name) if name not in registry else name


def _spec(spec: Any, registry: Registry) -> Any:
    """A registry spec from a name or dict in murmura's or ByzFL's form, or from one of ByzFL's
    own objects (``byzfl.TrMean(2)``: its class name and the attributes murmura's rule
    accepts); murmura's rules pass through."""
    kind = type(spec)
    if kind.__module__.split(".")[0] == "byzfl" and kind.__name__ in BYZFL_NAMES:
        name = BYZFL_NAMES[kind.__name__]
        accepted = inspect.signature(registry.get(name)).parameters
        return {"name": name, **{k: v for k, v in vars(spec).items() if k in accepted}}
    if isinstance(spec, str):
        return {"name": _name(spec, registry)}
    if isinstance(spec, dict) and "name" in spec:
        params = {k: v for k, v in spec.items() if k not in ("name", "parameters")}
        return {"name": _name(spec["name"], registry), **spec.get("parameters", {}), **params}
    return spec


def _pre_list(pre_agg_list: Any) -> tuple:
    if pre_agg_list is None:
        return ()
    items = [pre_agg_list] if isinstance(pre_agg_list, (str, dict)) else list(pre_agg_list)
    return tuple(make_preaggregator(_spec(p, PREAGGREGATORS)) for p in items)


def _matrix(vectors: Any, what: str) -> tuple[Tensor, Callable[[Tensor], Any]]:
    """``vectors`` as a float ``[n, d]`` tensor and the function that turns a result back into
    the input's type (numpy for numpy, torch for torch)."""
    if isinstance(vectors, (list, tuple)) and len(vectors) and all(
            isinstance(v, np.ndarray) for v in vectors):
        vectors = np.stack(vectors)
    elif isinstance(vectors, (list, tuple)) and len(vectors) and all(
            isinstance(v, Tensor) for v in vectors):
        vectors = torch.stack(list(vectors))
    if isinstance(vectors, np.ndarray):
        array = vectors if np.issubdtype(vectors.dtype, np.floating) else vectors.astype(
            np.float64)
        x = torch.from_numpy(np.ascontiguousarray(array))
        back: Callable[[Tensor], Any] = lambda t: t.detach().cpu().numpy()  # noqa: E731
    elif isinstance(vectors, Tensor):
        x = vectors if vectors.is_floating_point() else vectors.float()
        back = lambda t: t  # noqa: E731
    else:
        raise ValueError(
            f"{what} must be a torch tensor, a numpy array, or a list of either (one vector "
            f"each), got {type(vectors).__name__}"
        )
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"{what} must be [n, d] with n >= 1 vectors, got shape "
                         f"{tuple(x.shape)}")
    return x, back


_MAKERS: dict[str, Callable[[Any], Any]] = {
    "aggregator": make_aggregator, "pre-aggregator": make_preaggregator, "attack": make_attack,
}


def _build(registry: Registry, name: str, params: dict, known: tuple[str, ...] = ()) -> Any:
    """The rule ``name`` with ``params``, except the ``known`` ones its constructor does not
    accept (those are the library's to use, e.g. ``idx`` as the pivot)."""
    accepted = inspect.signature(registry.get(name)).parameters
    given = {k: v for k, v in params.items() if k in accepted or k not in known}
    return _MAKERS[registry.kind]({"name": name, **given})


def _key(key: Any, device: torch.device) -> Tensor:
    """A random key: ``key`` as an int64 scalar, or a fresh draw from torch's generator (so
    ``torch.manual_seed`` makes a random rule repeatable, as in ByzFL's torch path)."""
    if key is None:
        key = int(torch.randint(0, 2**62, ()))
    if isinstance(key, bool) or not isinstance(key, (int, Tensor)):
        raise ValueError(f"key must be an integer (or an int64 scalar tensor), got {key!r}")
    return torch.as_tensor(key, dtype=torch.int64, device=device).reshape(())


def _check_count(rule: Any, n: int, name: str, params: dict) -> None:
    need = int(getattr(rule, "min_messages", lambda: 1)())
    if n < need:
        shown = ", ".join(f"{k}={v!r}" for k, v in params.items() if k in ("f", "s"))
        raise ValueError(
            f"{name}({shown}) needs at least {need} vectors, got {n}: pass more vectors or a "
            "smaller f"
        )


def aggregate(name: str, vectors: Any, *, pre_agg_list: Any = None, own: Any = None,
              key: Any = None, weights: Any = None, batch: dict | None = None, **params: Any
              ) -> Any:
    """The aggregate ``[d]`` of ``vectors [n, d]`` by the aggregator ``name`` (ByzFL's
    ``RobustAggregator``: ``pre_agg_list`` in order, then the rule), same type as the input.

    ``own`` is the receiver's vector for self-centred rules; by default ByzFL's: MoNNA's pivot
    is the (pre-aggregated) vector ``idx`` (0), CenteredClipping starts from ``m`` (zeros, its
    first call), and any other rule gets ``vectors[0]`` (a graph node's own message comes
    first). ``key`` seeds random rules (drawn from torch's generator if omitted); ``weights``
    are the mixing weights of a rule that reads them (uniform by default); ``batch`` the
    training samples of a rule with ``needs_data``. ``sybilwall`` keeps per-peer histories in a
    simulation; here ``vectors[0]`` is the receiver's model and the others its neighbours',
    weighted by FoolsGold on ``histories`` (``[n, d]``, one per row; the vectors themselves by
    default) and mixed with the own model at weight 1."""
    x, back = _matrix(vectors, "vectors")
    name = _name(name, AGGREGATORS)
    if name == "sybilwall":
        return back(_sybilwall(x, params))
    rule = _build(AGGREGATORS, name, params, known=("idx", "m"))
    if getattr(rule, "joint", False):
        raise ValueError(f"{name} reads several payloads at once (joint); the library "
                         "aggregates one [n, d] matrix: call the rule itself with dicts")
    pres = _pre_list(pre_agg_list)
    chained = Chained(pres, rule) if pres else rule
    _check_count(chained, x.shape[0], name, params)
    mask = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    random_key = _key(key, x.device) if getattr(chained, "needs_key", False) else None
    rows, rows_mask = chained.preaggregate(x, mask, random_key) if pres else (x, mask)
    extra: list[Tensor] = []
    if getattr(rule, "needs_weights", False):
        extra.append(rows_mask / rows_mask.sum() if weights is None
                     else torch.as_tensor(weights, dtype=x.dtype, device=x.device))
    if getattr(rule, "needs_key", False):  # the chain's key for its last stage
        extra.append(hash_keys(random_key, len(pres)) if pres else random_key)
    pivot = _own(name, x, rows, rows_mask, own, params)
    return back(rule(pivot, rows, rows_mask, *extra, **({} if batch is None else
                                                          {"batch": batch})))


def _sybilwall(x: Tensor, params: dict) -> Tensor:
    from murmura.robust.sybilwall import foolsgold_weights

    histories = params.pop("histories", None)
    if params:
        raise ValueError(f"sybilwall in the library takes histories only, got {sorted(params)}")
    h = x if histories is None else _matrix(histories, "histories")[0].to(x)
    if h.shape != x.shape:
        raise ValueError(f"sybilwall: histories must be one per vector, {tuple(x.shape)}; got "
                         f"{tuple(h.shape)}")
    w = foolsgold_weights(h[1:], torch.ones(len(x) - 1, dtype=x.dtype, device=x.device))
    return (x[0] + w @ x[1:]) / (1.0 + w.sum())


def _own(name: str, x: Tensor, rows: Tensor, mask: Tensor, own: Any, params: dict) -> Tensor:
    """The receiver's own vector: ``own``; else ByzFL's pivot ``rows[idx]`` (after the
    pre-aggregators, as ByzFL's MoNNA sees them); else CenteredClipping's start ``m`` (zeros
    on its first call); zeros for ``flag`` (the paper's FA on the vectors as given); else
    ``vectors[0]``."""
    if own is not None:
        return _matrix(_as_rows(own), "own")[0][0].to(x)
    if "idx" in params or name == "monna":
        idx, count = params.get("idx", 0), int(mask.sum())
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < count:
            raise ValueError(f"idx must be the index of one of the {count} (pre-aggregated) "
                             f"vectors, got {idx!r}")
        return rows[idx]
    if name == "centered_clipping" or "m" in params:
        m = params.get("m")
        return torch.zeros_like(x[0]) if m is None else _matrix(_as_rows(m), "m")[0][0].to(x)
    if name == "flag":  # the paper's FA aggregates the vectors themselves (gradients)
        return torch.zeros_like(x[0])
    return x[0]


def _as_rows(value: Any) -> Any:
    """A single vector as a one-row matrix (numpy, torch or a list of numbers)."""
    if isinstance(value, (list, tuple)) and value and not isinstance(value[0], (np.ndarray,
                                                                                 Tensor)):
        value = np.asarray(value, dtype=np.float64)
    if isinstance(value, (np.ndarray, Tensor)) and value.ndim == 1:
        return value[None]
    return value


def preaggregate(name: str, vectors: Any, *, key: Any = None, **params: Any) -> Any:
    """The pre-aggregated vectors ``[n', d]`` of ``vectors [n, d]`` (``n' = n`` except for
    bucketing's ``ceil(n / s)``), same type as the input; ``key`` seeds bucketing."""
    x, back = _matrix(vectors, "vectors")
    name = _name(name, PREAGGREGATORS)
    rule = _build(PREAGGREGATORS, name, params)
    _check_count(rule, x.shape[0], name, params)
    mask = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
    if getattr(rule, "needs_key", False):
        rows, out_mask = rule(x, mask, _key(key, x.device))
    else:
        rows, out_mask = rule(x, mask)
    return back(rows[out_mask > 0])


def attack(name: str, honest: Any, *, own: Any = None, key: Any = None, target: Any = None,
           weights: Any = None, byzantine_weight: float | None = None, **params: Any) -> Any:
    """The attacker's vector ``[d]`` from the honest vectors ``honest [h, d]`` (ByzFL's
    attacks return one vector, which its Byzantine clients all send), same type as the input.

    ``agg`` and ``pre_agg_list`` (optimal attacks) may be names or specs, murmura's or ByzFL's.
    ``own`` is the attacker's own message (default: the honest mean, so ``label_flip`` returns
    ByzFL's "mean of the vectors it is given"); ``key`` seeds random attacks. A per-target graph
    attack (``dissensus``) also takes the receiver's ``target`` message (default
    ``honest[0]``: its own comes first), the receiver's ``weights`` of the honest rows and the
    total ``byzantine_weight`` it gives its Byzantine neighbours."""
    h, back = _matrix(honest, "honest")
    name = _name(name, ATTACKS)
    if "agg" in params and params["agg"] is not None:
        params["agg"] = make_aggregator(_spec(params["agg"], AGGREGATORS))
    if "pre_agg_list" in params and params["pre_agg_list"] is not None:
        params["pre_agg_list"] = _pre_list(params["pre_agg_list"])
    rule = _build(ATTACKS, name, params)
    mask = torch.ones(h.shape[0], dtype=h.dtype, device=h.device)
    mine = h.mean(0) if own is None else _matrix(_as_rows(own), "own")[0][0].to(h)
    random_key = _key(key, h.device)
    if getattr(rule, "per_target", False):
        if weights is None or byzantine_weight is None:
            raise ValueError(
                f"{name} is a per-target graph attack: pass weights (the receiver's mixing "
                "weights of the honest rows) and byzantine_weight (its total weight of "
                "Byzantine neighbours)"
            )
        goal = h[0] if target is None else _matrix(_as_rows(target), "target")[0][0].to(h)
        w = torch.as_tensor(weights, dtype=h.dtype, device=h.device)
        b = torch.as_tensor(byzantine_weight, dtype=h.dtype, device=h.device)
        return back(rule(mine, goal, h, w, b, mask, random_key))
    return back(rule(mine, h, mask, random_key))
