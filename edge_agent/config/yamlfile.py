"""Reading the YAML file: the YAML 1.2 core schema, duplicate keys refused."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, ClassVar

import yaml

from edge_agent.config.errors import ConfigError, Problem
from edge_agent.config.fieldtypes import key_list, kind_of
from edge_agent.config.schema import AgentConfig


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    try:
        # YAML 1.2: "0755" is decimal 755, not octal; only 0o/0x prefixes change the base.
        return int(text, 0) if text[:2].lower() in ("0o", "0x") else int(text, 10)
    except ValueError as exc:
        raise yaml.constructor.ConstructorError(None, None, f"invalid integer {text!r}", node.start_mark) from exc


def _construct_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    text = str(loader.construct_scalar(node))
    special = {".inf": math.inf, "+.inf": math.inf, "-.inf": -math.inf, ".nan": math.nan}
    try:
        return special[text.lower()] if text.lower() in special else float(text)
    except ValueError as exc:
        raise yaml.constructor.ConstructorError(None, None, f"invalid number {text!r}", node.start_mark) from exc


# PyYAML speaks YAML 1.1, where `yes`/`on` are booleans, `1:30` is 90 and `2024-01-01` a date;
# these are replaced by the YAML 1.2 core schema so that a value means what it looks like.
_REPLACED_TAGS = {f"tag:yaml.org,2002:{name}" for name in ("bool", "int", "float", "timestamp", "value")}
_YAML12_RESOLVERS = (
    ("tag:yaml.org,2002:bool", r"^(?:true|True|TRUE|false|False|FALSE)$", "tTfF"),
    ("tag:yaml.org,2002:int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", "-+0123456789"),
    (
        "tag:yaml.org,2002:float",
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
        "-+.0123456789",
    ),
)


def _yaml12_resolvers() -> dict[str, list[tuple[str, re.Pattern[str]]]]:
    table = {
        first: [(tag, regexp) for tag, regexp in entries if tag not in _REPLACED_TAGS]
        for first, entries in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    for tag, pattern, firsts in _YAML12_RESOLVERS:
        for first in firsts:
            table.setdefault(first, []).append((tag, re.compile(pattern)))
    return table


class StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core scalars that rejects duplicate keys (PyYAML keeps the last silently)."""

    yaml_implicit_resolvers = _yaml12_resolvers()
    yaml_constructors: ClassVar[dict[str | None, Any]] = {
        **yaml.SafeLoader.yaml_constructors,
        "tag:yaml.org,2002:int": _construct_int,
        "tag:yaml.org,2002:float": _construct_float,
    }

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> dict[str, Any]:
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(where, "no such file", "a YAML config file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError([Problem(where, f"an unreadable file ({reason})", "a readable UTF-8 YAML file")]) from None
    try:
        data = yaml.load(text, Loader=StrictLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([Problem(where, f"invalid YAML{at} ({reason})", "a valid YAML document")]) from None
    if data is None:  # an empty (or all-comments) file means all defaults
        return {}
    if not isinstance(data, dict):
        raise ConfigError([Problem(where, f"{kind_of(data)} at the top level", f"a mapping with keys {key_list(AgentConfig)}")])
    return data

