"""Typed agent configuration.

- schema: the sections and their fields (defaults, descriptions, bounds);
- loading: the YAML file, environment variables and --set overrides, validated (validation, yamlfile);
- secrets: the broker password, the HTTP token, the client id;
- reference: the generated docs/configuration.md.
"""

from edge_agent.config.errors import ConfigError, Problem
from edge_agent.config.loading import load_config
from edge_agent.config.reference import config_reference_markdown, config_reference_page
from edge_agent.config.schema import (
    AgentConfig,
    DecisionConfig,
    HomeAssistantConfig,
    HTTPConfig,
    LearningConfig,
    ModelsConfig,
    MQTTConfig,
    NatsConfig,
    NatsTLSConfig,
    PipelineConfig,
    SourceConfig,
    TLSConfig,
    TopicsConfig,
)
from edge_agent.config.secrets import client_id, http_token, mqtt_password, nats_password, nats_token, publisher_id
from edge_agent.config.validation import parse_config

__all__ = [
    "AgentConfig",
    "ConfigError",
    "DecisionConfig",
    "HTTPConfig",
    "HomeAssistantConfig",
    "LearningConfig",
    "MQTTConfig",
    "ModelsConfig",
    "NatsConfig",
    "NatsTLSConfig",
    "PipelineConfig",
    "Problem",
    "SourceConfig",
    "TLSConfig",
    "TopicsConfig",
    "client_id",
    "config_reference_markdown",
    "config_reference_page",
    "http_token",
    "load_config",
    "mqtt_password",
    "nats_password",
    "nats_token",
    "parse_config",
    "publisher_id",
]
