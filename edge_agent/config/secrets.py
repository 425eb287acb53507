"""Secrets and derived names: the broker password and HTTP token (never from the YAML), the client id."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from edge_agent.config.errors import ConfigError, Problem
from edge_agent.config.fieldtypes import show
from edge_agent.config.schema import AgentConfig


def mqtt_password(cfg: AgentConfig, env: Mapping[str, str]) -> str | None:
    """The broker password: the variable named by mqtt.password_env, else mqtt.password_file's content.

    An empty variable counts as unset, an empty file as no password. The value is never logged
    and never part of an error message.
    """
    from_env = env.get(cfg.mqtt.password_env)
    if from_env:
        return from_env
    if cfg.mqtt.password_file is None:
        return None
    try:
        content = Path(cfg.mqtt.password_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError([Problem("mqtt.password_file", show(cfg.mqtt.password_file), f"a readable file ({reason})")]) from None
    return content or None


_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")


def http_token(cfg: AgentConfig, env: Mapping[str, str]) -> str | None:
    """The bearer token /predict requires: the variable named by http.token_env, else http.token_file's content.

    None means no token is required. Like the broker password, it is never logged.
    """
    from_env = env.get(cfg.http.token_env)
    if from_env:
        token, where, source = from_env, "http.token_env", f"the variable {cfg.http.token_env}"
    elif cfg.http.token_file is None:
        return None
    else:
        where, source = "http.token_file", show(cfg.http.token_file)
        try:
            token = Path(cfg.http.token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise ConfigError([Problem(where, source, f"a readable file ({reason})")]) from None
        if not token:
            # An empty secret file is a deployment mistake, not a wish to leave /predict open.
            raise ConfigError([Problem(where, source, "a file holding the token (it is empty)")])
    if not _TOKEN_CHARS.fullmatch(token):
        # The token itself is never shown, only where it came from.
        raise ConfigError([Problem(where, source, "a token of printable ASCII characters without spaces (it goes in an HTTP header)")])
    return token


def client_id(cfg: AgentConfig) -> str:
    """The MQTT client id: mqtt.client_id, or one derived from agent_id (stable across restarts)."""
    return cfg.mqtt.client_id or f"edge-agent-{cfg.agent_id}"

