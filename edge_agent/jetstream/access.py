"""How the agents and the bridge prove themselves to NATS: a user and password, a token or a creds file, and TLS.

Built from the config and the environment before anything connects, so that a missing secret or
an unreadable file is a ConfigError naming its key (at start and in ``check-config``), not a
connection that fails later. It imports no nats-py: ``check-config`` runs without that extra.
The secrets are held here for nats-py only; ``summary`` says where they come from, never what they are.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field

from edge_agent.config import AgentConfig, ConfigError, Problem, nats_password, nats_token
from edge_agent.config.fieldtypes import show
from edge_agent.config.secrets import read_secret_file, unreadable_tls_files

# What `nsc generate creds` writes around the user's JWT and its NKey seed.
_CREDS_MARKERS = ("BEGIN NATS USER JWT", "BEGIN USER NKEY SEED")


@dataclass(frozen=True)
class NatsAccess:
    """The credentials and TLS context every NATS connection of this process uses."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    creds_file: str | None = None
    tls: ssl.SSLContext | None = None
    tls_only: bool = False  # nats.tls.enabled: refuse a server that does not require TLS
    summary: str = "no authentication"


def nats_access(cfg: AgentConfig, env: Mapping[str, str]) -> NatsAccess:
    """The NATS credentials and TLS of ``cfg``; raises ConfigError naming the key that is wrong."""
    n = cfg.nats
    token = nats_token(cfg, env)
    if token is not None and (n.user is not None or n.creds_file is not None):
        where = f"the variable {n.token_env}" if token[1] == "nats.token_env" else show(n.token_file)
        other = "nats.user" if n.user is not None else "nats.creds_file"
        raise ConfigError([Problem(token[1], where, f"no token, since {other} is set: one kind of NATS authentication at a time")])
    tls, tls_text = _tls_context(cfg)
    if n.user is not None:
        password = nats_password(cfg, env)
        if password is None:
            raise ConfigError([Problem("nats.user", show(n.user), f"a password as well, in the variable {n.password_env} "
                                       "or in nats.password_file")])
        source = n.password_env if env.get(n.password_env) else n.password_file
        return NatsAccess(user=n.user, password=password, tls=tls, tls_only=n.tls.enabled,
                          summary=f"user {n.user!r} (password from {source}){tls_text}")
    if token is not None:
        source = n.token_env if token[1] == "nats.token_env" else str(n.token_file)
        return NatsAccess(token=token[0], tls=tls, tls_only=n.tls.enabled, summary=f"token (from {source}){tls_text}")
    if n.creds_file is not None:
        content = read_secret_file(n.creds_file, "nats.creds_file")
        if not all(marker in content for marker in _CREDS_MARKERS):
            raise ConfigError([Problem("nats.creds_file", show(n.creds_file), "a NATS user credentials file: "
                                       "a JWT and an NKey seed, as nsc generate creds writes it")])
        if not nkeys_installed():
            # nats-py signs the server's nonce with the seed through nkeys, imported only then: say so now.
            raise ConfigError([Problem("nats.creds_file", show(n.creds_file), "the nkeys package installed as well, "
                                       "which signs with the file's seed: pip install 'nats-py[nkeys]'")])
        return NatsAccess(creds_file=n.creds_file, tls=tls, tls_only=n.tls.enabled,
                          summary=f"credentials file {n.creds_file}{tls_text}")
    return NatsAccess(tls=tls, tls_only=n.tls.enabled, summary=f"no authentication{tls_text}")


def nkeys_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("nkeys") is not None


def _tls_context(cfg: AgentConfig) -> tuple[ssl.SSLContext | None, str]:
    """The TLS context (None: nats-py's default, used only if a server requires TLS) and how it reads in a summary."""
    tls = cfg.nats.tls
    if not tls.enabled and tls.ca_file is None and tls.cert_file is None and tls.check_hostname:
        return None, ""
    problems = unreadable_tls_files("nats.tls", tls)
    if problems:
        raise ConfigError(problems)
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
        if tls.cert_file is not None and tls.key_file is not None:
            context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ValueError) as e:  # ssl.SSLError is an OSError: not PEM, key not matching the certificate
        raise ConfigError([Problem("nats.tls", "certificate files that do not load",
                                   f"PEM certificates and a matching key ({e})")]) from None
    context.check_hostname = tls.check_hostname
    parts = [f"CA {tls.ca_file}" if tls.ca_file else "system CAs"]
    if tls.cert_file:
        parts.append("client certificate")
    if not tls.check_hostname:
        parts.append("host names not checked")
    return context, f", {'TLS only' if tls.enabled else 'TLS if the server asks'} ({', '.join(parts)})"
