"""Secrets and derived names: the broker password, the HTTP token and the NATS password or token (never from the YAML), the client id."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from edge_agent.config.errors import ConfigError, Problem
from edge_agent.config.fieldtypes import show
from edge_agent.config.schema import AgentConfig, NatsTLSConfig, TLSConfig


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
    return read_secret_file(cfg.mqtt.password_file, "mqtt.password_file") or None


def read_secret_file(path: str, key: str) -> str:
    """A secret file's content, stripped; a ConfigError naming ``key`` (never the content) when unreadable."""
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise ConfigError([Problem(key, show(path), f"a readable file ({reason})")]) from None


def unreadable_tls_files(section: str, tls: TLSConfig | NatsTLSConfig) -> list[Problem]:
    """A problem naming each of the section's ca_file, cert_file and key_file that is set and cannot be opened."""
    problems = []
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, key)
        if path is not None:
            try:
                with open(path, "rb"):
                    pass
            except OSError as e:
                problems.append(Problem(f"{section}.{key}", repr(path), f"a readable PEM file ({e.strerror or e})"))
    return problems


def nats_password(cfg: AgentConfig, env: Mapping[str, str]) -> str | None:
    """The NATS user's password: the variable named by nats.password_env, else nats.password_file's content.

    None when neither holds one. Like the broker password, never logged nor shown in an error.
    """
    n = cfg.nats
    from_env = env.get(n.password_env)
    if from_env:
        return from_env
    if n.password_file is None:
        return None
    content = read_secret_file(n.password_file, "nats.password_file")
    if not content:
        # An empty secret file is a deployment mistake: say so rather than send an empty password.
        raise ConfigError([Problem("nats.password_file", show(n.password_file), "a file holding the password (it is empty)")])
    return content


def nats_token(cfg: AgentConfig, env: Mapping[str, str]) -> tuple[str, str] | None:
    """The NATS token and the key it came from (nats.token_env or nats.token_file); None when neither holds one."""
    n = cfg.nats
    from_env = env.get(n.token_env)
    if from_env:
        return from_env, "nats.token_env"
    if n.token_file is None:
        return None
    content = read_secret_file(n.token_file, "nats.token_file")
    if not content:
        raise ConfigError([Problem("nats.token_file", show(n.token_file), "a file holding the token (it is empty)")])
    return content, "nats.token_file"


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
        token = read_secret_file(cfg.http.token_file, where)
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


def publisher_id(cfg: AgentConfig) -> str:
    """The client id of the agent's publishing connection (verdicts out): the client id with ``-out``."""
    return f"{client_id(cfg)}-out"

