"""load_config: the file, then environment variables, then --set overrides, validated together."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from edge_agent.config.errors import Problem
from edge_agent.config.fieldtypes import (
    dataclass_fields,
    describe,
    field_default,
    is_section,
    join_path,
    optional_inner,
    show,
)
from edge_agent.config.schema import AgentConfig
from edge_agent.config.validation import unknown_key, validated
from edge_agent.config.yamlfile import StrictLoader, read_yaml

_ENV_PREFIX = "EDGE_AGENT__"
_NULL_WORDS = ("", "~", "null", "Null", "NULL")


def _parse_value(text: str, tp: Any, path: str) -> tuple[Any, Problem | None]:
    """An override's text as a YAML scalar or flow collection, read for the type it is going to."""
    inner, _ = optional_inner(tp)
    try:
        value = yaml.load(text, Loader=StrictLoader)
    except yaml.YAMLError as exc:
        if inner is str:
            return text.strip(), None
        reason = getattr(exc, "problem", None) or "invalid YAML"
        return None, Problem(path, show(text), f"{describe(tp, {})} written as YAML ({reason})")
    # A shell user writing agent_id=123, topic={sensor}/x or topic=# means the string, not a
    # number, a mapping or a comment; only an explicit null (or nothing) clears the key.
    if inner is str and not isinstance(value, str) and text.strip() not in _NULL_WORDS:
        return text.strip(), None
    return value, None


def _apply_override(
    data: dict[str, Any], parts: Sequence[str], text: str, *, fold_case: bool
) -> tuple[str, Problem | None]:
    """Set the value at ``parts`` (field names, list indexes, a trailing dict key) in the raw ``data``.

    Returns the key path set, and the problem when the path or the value is unusable. Missing
    sections and lists are filled in from the defaults first, so ``sources.0.topic`` works
    without any ``sources`` in the file.
    """
    holder: Any = {"": data}
    key: Any = ""
    tp: Any = AgentConfig
    path = ""
    for i, part in enumerate(parts):
        current = holder[key]
        inner, _ = optional_inner(tp)
        origin = get_origin(inner)
        if is_section(inner):
            if current is None:
                current = holder[key] = {}
            if not isinstance(current, dict):
                return path, None  # the section itself is malformed; validation reports it
            name = part.lower() if fold_case else part
            fields = dataclass_fields(inner)
            if name not in fields:
                return join_path(path, name), unknown_key(inner, name, join_path(path, name))
            if name not in current:
                current[name] = field_default(fields[name])
            holder, key, tp, path = current, name, get_type_hints(inner)[name], join_path(path, name)
        elif origin is list:
            if current is None:
                current = holder[key] = []
            if not isinstance(current, list):
                return path, None
            if not part.isdigit() or int(part) > len(current):
                expected = f"a list index from 0 to {len(current)} ({len(current)} appends an item)"
                return path, Problem(f"{path}[{part}]", show(part), expected)
            index = int(part)
            if index == len(current):
                current.append(None)
            holder, key, tp, path = current, index, get_args(inner)[0], f"{path}[{index}]"
        elif origin is dict:
            if current is None:
                current = holder[key] = {}
            if not isinstance(current, dict):
                return path, None
            entry = ".".join(parts[i:])  # dict keys (sensor globs) may themselves contain dots
            holder, key, tp, path = current, entry, get_args(inner)[1], f"{path}[{entry!r}]"
            break
        else:
            return path, Problem(join_path(path, ".".join(parts[i:])), "a key below a single value", f"a path ending at {path}")
    value, problem = _parse_value(text, tp, path)
    if problem is None:
        holder[key] = value
    return path, problem


def _env_overrides(env: Mapping[str, str]) -> list[tuple[str, list[str], str]]:
    """(variable, path parts, text) for each EDGE_AGENT__SECTION__KEY variable, shorter paths first."""
    found = [
        (name, name[len(_ENV_PREFIX):].split("__"), text)
        for name, text in env.items()
        if name.upper().startswith(_ENV_PREFIX)
    ]
    # Sorted so that EDGE_AGENT__SOURCES applies before EDGE_AGENT__SOURCES__0__TOPIC refines it.
    return sorted(found, key=lambda item: item[0].upper())


def load_config(
    path: str | Path | None,
    overrides: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> AgentConfig:
    """Read, override and validate the agent configuration; raise ConfigError listing every problem.

    Precedence, lowest first: dataclass defaults < the YAML file at ``path`` (None: no file) <
    ``EDGE_AGENT__SECTION__KEY`` environment variables (``__`` separates levels, names are
    case-insensitive, list items by index: ``EDGE_AGENT__SOURCES__0__TOPIC``) < ``overrides``
    (``--set section.key=value``, later ones win). Override values are YAML scalars or flow
    collections (``sources=[{topic: "tele/{sensor}/SENSOR"}]``); for string keys the text is
    taken literally unless it is quoted or null. ``env`` defaults to ``os.environ``.
    """
    data = read_yaml(Path(path)) if path is not None else {}
    environment = os.environ if env is None else env
    problems: list[Problem] = []
    origins: dict[str, str] = {}

    def apply(parts: Sequence[str], text: str, origin: str, fold_case: bool) -> None:
        set_path, problem = _apply_override(data, parts, text, fold_case=fold_case)
        if problem is not None:
            problems.append(dataclasses.replace(problem, origin=origin))
            return
        for earlier in [p for p in origins if p.startswith((set_path + ".", set_path + "["))]:
            del origins[earlier]  # replaced wholesale by this override
        origins[set_path] = origin

    for name, parts, text in _env_overrides(environment):
        apply(parts, text, name, fold_case=True)
    for item in overrides:
        dotted, equals, text = item.partition("=")
        if not equals or not dotted.strip():
            problems.append(Problem("--set", show(dotted), "KEY=VALUE with a dotted key, e.g. mqtt.port=1884"))
            continue
        # Only the key is named as origin: the value could be a secret typed in the wrong place.
        apply(dotted.strip().split("."), text, f"--set {dotted.strip()}", fold_case=False)
    return validated(data, problems, origins)

