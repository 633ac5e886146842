"""[metrics]: the optional plain-HTTP /metrics listener."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from host_agent.config.fields import Table, check_bind
from host_agent.config.server import Listener


@dataclass(frozen=True)
class MetricsConfig(Listener):
    """The optional plain-HTTP /metrics listener, meant for loopback."""

    enabled: bool
    bind: str


def read_metrics(t: Table) -> MetricsConfig:
    config = MetricsConfig(
        enabled=t.get("enabled", bool, False),
        bind=t.get("bind", str, "127.0.0.1:19090", check=check_bind),
    )
    if config.enabled and not _is_loopback(config.host):
        t.reader.warn(
            f"{t.key('bind')}: {config.bind} is not a loopback address; the metrics "
            "listener is plain HTTP without authentication"
        )
    t.finish()
    return config


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
