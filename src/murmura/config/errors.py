"""Config problems as sentences: the key's path, what is wrong, what is allowed."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """One or more problems in an experiment's configuration, each naming its key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(self.__str__())

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return f"invalid configuration: {self.problems[0]}"
        lines = "\n".join(f"  - {p}" for p in self.problems)
        return f"invalid configuration ({len(self.problems)} problems):\n{lines}"


def _path(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text or "(top level)"


def _model_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The section class that owns the key at ``loc`` (for listing its allowed keys)."""
    model: Any = root
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        model = _unwrap(field.annotation)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    for arg in getattr(annotation, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return annotation


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe_validation_error(error: ValidationError, root: type[BaseModel]) -> list[str]:
    problems = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        kind = item["type"]
        message = item["msg"]
        if kind == "extra_forbidden":
            owner = _model_at(root, loc[:-1])
            allowed = list(owner.model_fields) if owner is not None else []
            key = str(loc[-1])
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            where = f"[{_path(loc[:-1])}]" if loc[:-1] else "the top level"
            problems.append(
                f"{_path(loc)}: unknown key{hint}; keys allowed in {where}: {', '.join(allowed)}"
            )
            continue
        if message.startswith("Value error, "):
            problems.append(f"{_path(loc)}: {message[len('Value error, '):]}")
            continue
        if kind == "missing":
            problems.append(f"{_path(loc)}: required key is missing")
            continue
        message = message.replace("Input should be", "must be")
        for words, symbol in (("greater than or equal to", ">="), ("less than or equal to", "<="),
                              ("greater than", ">"), ("less than", "<")):
            message = message.replace(words, symbol)
        if kind in {"model_type", "dict_type", "model_attributes_type"}:
            message = "must be a table (a [section] or { key = value })"
        problems.append(f"{_path(loc)}: {message}, got {_shown(item.get('input'))}")
    return problems
