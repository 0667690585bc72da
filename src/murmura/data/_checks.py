"""Argument checks shared by datasets and partitioners.

Every check raises ``ValueError`` whose message names the parameter, shows the bad value and says
how to fix it, so a typo in a config fails before any work is done.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np


def check_int(name: str, value: Any, *, minimum: int | None = None, hint: str = "") -> int:
    """``value`` as a Python int, or ValueError naming ``name``.

    >>> check_int("num_nodes", 4, minimum=1)
    4
    """
    # bool is an int subclass, but True nodes is always a mistake; 2.0 is rejected too because
    # silently truncating 2.5 would hide a bug in whatever computed it.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"{name} must be an integer, got {value!r} ({type(value).__name__})"
            + (f"; {hint}" if hint else "")
        )
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(
            f"{name} must be >= {minimum}, got {value}" + (f"; {hint}" if hint else "")
        )
    return value


def check_float(
    name: str,
    value: Any,
    *,
    positive: bool = False,
    nonnegative: bool = False,
    hint: str = "",
) -> float:
    """``value`` as a finite Python float, or ValueError naming ``name``.

    >>> check_float("alpha", 0.5, positive=True)
    0.5
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"{name} must be a real number, got {value!r} ({type(value).__name__})"
            + (f"; {hint}" if hint else "")
        )
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}" + (f"; {hint}" if hint else ""))
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}" + (f"; {hint}" if hint else ""))
    if nonnegative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}" + (f"; {hint}" if hint else ""))
    return value


def check_seed(seed: Any) -> int:
    """A seed for ``numpy.random.default_rng``: a non-negative integer."""
    return check_int("seed", seed, minimum=0, hint="use a non-negative integer seed such as 0")


def check_labels(labels: Any) -> np.ndarray:
    """Labels as a non-empty 1-D array of non-negative integer class ids (a view when possible).

    >>> check_labels([0, 2, 1]).tolist()
    [0, 2, 1]
    """
    if hasattr(labels, "detach"):  # a torch tensor, possibly on an accelerator
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(
            f"labels must be a 1-D array of class ids, got shape {arr.shape}; "
            f"pass one label per sample, e.g. dataset.train_y"
        )
    if arr.size == 0:
        raise ValueError("labels is empty: there are no samples to partition")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"labels must hold integer class ids, got dtype {arr.dtype}; convert with "
            f"labels.astype(np.int64)"
        )
    if arr.min() < 0:
        raise ValueError(f"labels must be >= 0, got a label {int(arr.min())}")
    return arr


def check_num_nodes(num_nodes: Any, num_samples: int) -> int:
    n = check_int("num_nodes", num_nodes, minimum=1, hint="use at least one node")
    if n > num_samples:
        raise ValueError(
            f"num_nodes={n} is more than the number of samples ({num_samples}): some node "
            f"would get no data; use at most {num_samples} nodes or a larger dataset"
        )
    return n


def check_kwargs(
    fn: Callable[..., Any],
    kwargs: Mapping[str, Any],
    *,
    what: str,
    fixed: Iterable[str] = (),
) -> None:
    """Raise ValueError when ``fn`` does not accept a key of ``kwargs`` or one of its required
    keyword parameters is missing; ``fixed`` names parameters the caller supplies itself."""
    sig = inspect.signature(fn)
    fixed = set(fixed)
    params = [
        p
        for p in sig.parameters.values()
        if p.name not in fixed
        and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    accepted = [p.name for p in params]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    unknown = [k for k in kwargs if k not in accepted and (k in fixed or not takes_any)]
    if unknown:
        listed = ", ".join(accepted) if accepted else "none"
        raise ValueError(
            f"{what} got unexpected parameter(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {listed}"
        )
    missing = [
        p.name for p in params if p.default is inspect.Parameter.empty and p.name not in kwargs
    ]
    if missing:
        raise ValueError(
            f"{what} needs parameter(s) {', '.join(missing)}; pass e.g. "
            + ", ".join(f"{m}=..." for m in missing)
        )
