"""What a schema field's type accepts, described for error messages and the reference."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any, TypeGuard, Union, get_args, get_origin

from edge_agent.core.durations import Duration


def optional_inner(tp: Any) -> tuple[Any, bool]:
    """(X, True) for ``X | None``, (tp, False) otherwise."""
    if get_origin(tp) in (Union, types.UnionType):
        args = get_args(tp)
        rest = [arg for arg in args if arg is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return rest[0], True
    return tp, False


def is_section(tp: object) -> TypeGuard[type[Any]]:
    """Whether a type hint names a config section (a dataclass type, not an instance)."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def dataclass_fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls)}


def key_list(cls: type) -> str:
    return ", ".join(dataclass_fields(cls))


def range_text(meta: Mapping[str, Any]) -> str:
    low, high = meta.get("min"), meta.get("max")
    if low is not None and high is not None:
        return f" from {low} to {high}"
    if low is not None:
        return f" of at least {low}"
    if high is not None:
        return f" of at most {high}"
    return ""


def _plural(tp: Any) -> str:
    inner, optional = optional_inner(tp)
    text = {bool: "booleans", int: "integers", float: "numbers", str: "non-empty strings"}.get(inner, "mappings")
    return f"{text} or nulls" if optional else text


def describe(tp: Any, meta: Mapping[str, Any]) -> str:
    """What a valid value of this type looks like, e.g. 'an integer from 1 to 65535'."""
    inner, optional = optional_inner(tp)
    origin = get_origin(inner)
    if inner is bool:
        text = "true or false"
    elif inner is Duration:
        low, high = meta.get("min"), meta.get("max")
        text = "a duration such as 90s, 30m, 1h, 2d or 1w (or seconds)"
        if low is not None and high is not None:
            text += f" from {Duration(low)} to {Duration(high)}"
    elif inner is int:
        text = "an integer" + range_text(meta)
    elif inner is float:
        text = "a number" + range_text(meta)
    elif inner is str:
        choices = meta.get("choices")
        text = "one of " + ", ".join(repr(c) for c in choices) if choices else "a non-empty string"
    elif origin is list:
        text = "a list of " + _plural(get_args(inner)[0])
    elif origin is dict:
        text = "a mapping of non-empty strings to " + _plural(get_args(inner)[1])
    elif is_section(inner):
        text = f"a mapping with keys {key_list(inner)}"
    else:
        raise TypeError(f"unsupported config type {tp!r}")
    return f"{text} or null" if optional else text


def kind_of(value: Any) -> str:
    kinds = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return kinds.get(type(value), f"a {type(value).__name__}")


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def join_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def to_raw(value: Any) -> Any:
    """A default value as the plain data YAML would have produced."""
    if isinstance(value, Duration):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [to_raw(item) for item in value]
    if isinstance(value, dict):
        return {key: to_raw(item) for key, item in value.items()}
    return value


def field_default(spec: dataclasses.Field[Any]) -> Any:
    if spec.default_factory is not dataclasses.MISSING:
        return to_raw(spec.default_factory())
    return to_raw(spec.default)
