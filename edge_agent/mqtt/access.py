"""How every MQTT client of the agent logs in: mqtt.username with its password, and mqtt.tls.

The agent's transport, the bridge and a group member's MQTT output each open a connection to
the same broker; all of them go through ``apply_access`` so that none of them talks in clear
or anonymously to a broker the configuration secures.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping

import paho.mqtt.client as paho

from edge_agent.config import AgentConfig, ConfigError, Problem, mqtt_password
from edge_agent.config.secrets import unreadable_tls_files


def apply_access(client: paho.Client, cfg: AgentConfig, env: Mapping[str, str]) -> None:
    """The user name and password, and TLS (the broker's certificate verified; mutual TLS with cert and key)."""
    m = cfg.mqtt
    if m.username is not None:
        client.username_pw_set(m.username, mqtt_password(cfg, env))
    if not m.tls.enabled:
        return
    tls = m.tls
    problems = unreadable_tls_files("mqtt.tls", tls)
    if problems:
        raise ConfigError(problems)
    try:
        client.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file, cert_reqs=ssl.CERT_REQUIRED)
    except (OSError, ValueError) as e:  # ssl.SSLError is an OSError: not PEM, key not matching the certificate
        raise ConfigError([Problem("mqtt.tls", "certificate files that do not load", f"PEM certificates and a matching key ({e})")]) from None
    client.tls_insecure_set(not tls.check_hostname)
