"""TOML configuration, loaded once into frozen, validated objects.

The shape is the predecessor's (`clash-host-agent`) so its config files load
unchanged; keys added here are documented in docs/configuration.md. Loading
collects every problem, each naming its key, and raises one `ConfigError`.
Unknown keys are errors. Keys the predecessor had that have no effect here are
accepted and reported in `Config.warnings`, never dropped silently.

One module per section, all read with the field readers in `fields`.
"""

from host_agent.config.adapters import (
    BinariesConfig,
    ExecConfig,
    GitConfig,
    PctConfig,
    SystemdConfig,
    ZfsConfig,
)
from host_agent.config.agents import AgentProfile, Autonomy, PatternRule, Rule
from host_agent.config.approval import ApprovalConfig, Person, Secret
from host_agent.config.audit import AuditConfig
from host_agent.config.document import Config, load_config, parse_config, read_document
from host_agent.config.metrics import MetricsConfig
from host_agent.config.rate_limit import Limit, RateLimitConfig
from host_agent.config.runner import RunnerConfig
from host_agent.config.server import ConnectionLimits, ServerConfig

__all__ = [
    "AgentProfile",
    "ApprovalConfig",
    "AuditConfig",
    "Autonomy",
    "BinariesConfig",
    "Config",
    "ConnectionLimits",
    "ExecConfig",
    "GitConfig",
    "Limit",
    "MetricsConfig",
    "PatternRule",
    "PctConfig",
    "Person",
    "RateLimitConfig",
    "Rule",
    "RunnerConfig",
    "Secret",
    "ServerConfig",
    "SystemdConfig",
    "ZfsConfig",
    "load_config",
    "parse_config",
    "read_document",
]
