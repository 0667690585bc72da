"""Open registries: every dataset, partitioner, model, topology, mixing rule and algorithm is
found by its name, and a user registers their own from their code exactly like the built-ins.

>>> from murmura.registry import Registry
>>> shapes = Registry("shape")
>>> @shapes.register("square", "four equal sides")
... def square(side: float) -> float:
...     return side * side
>>> shapes.get("square")(3.0)
9.0
>>> shapes.names()
['square']
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError, ValueError):
    """An unknown or duplicate name; the message lists what is available."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str


class Registry(Generic[T]):
    """A name -> object table with one-line descriptions and helpful errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self, name: str, description: str | None = None, *, overwrite: bool = False
    ) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``. The description defaults to the first
        line of the object's docstring."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def decorator(obj: T) -> T:
            self.add(name, obj, description, overwrite=overwrite)
            return obj

        return decorator

    def add(
        self, name: str, obj: T, description: str | None = None, *, overwrite: bool = False
    ) -> None:
        key = name.lower()
        if key in self._entries and not overwrite:
            raise RegistryError(
                f"a {self.kind} named {name!r} is already registered; pass overwrite=True "
                f"to replace it or choose another name"
            )
        if description is None:
            doc = getattr(obj, "__doc__", None) or ""
            description = doc.strip().splitlines()[0] if doc.strip() else ""
        self._entries[key] = Entry(name, obj, description)

    def get(self, name: str) -> T:
        key = name.lower() if isinstance(name, str) else name
        if key not in self._entries:
            raise RegistryError(self._unknown_message(name))
        return self._entries[key].obj

    def _unknown_message(self, name: Any) -> str:
        close = difflib.get_close_matches(str(name).lower(), list(self._entries), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return (
            f"unknown {self.kind} {name!r}.{hint} Available: {', '.join(self.names()) or '(none)'}"
        )

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return sorted(e.name for e in self._entries.values())

    def describe(self) -> dict[str, str]:
        """name -> one-line description, sorted by name."""
        return {e.name: e.description for e in sorted(self._entries.values(), key=lambda e: e.name)}


def build_component(registry: Registry, spec: Any) -> Any:
    """A component from a config value: a name, ``{"name": ..., **params}`` (parameters checked
    against the factory's signature), ``None``, or an already-built component (returned as is).
    """
    import inspect

    if spec is None or (callable(spec) and not isinstance(spec, (str, dict))):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(
            f"{registry.kind} must be a name or {{ name = ..., ... }}, got {spec!r}"
        )
    params = {k: v for k, v in spec.items() if k != "name"}
    factory = registry.get(spec["name"])
    accepted = inspect.signature(factory).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    unknown = sorted(set(params) - set(accepted))
    if unknown and not takes_any:
        raise ValueError(
            f"{registry.kind} {spec['name']!r} has no parameter(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) or 'none'}"
        )
    return factory(**params)
