"""[server]: the mTLS listener, its files, and what peers can make it hold."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from host_agent.config.fields import Table, between, check_bind


class Listener:
    """A `host:port` bind (IPv6 in brackets) with its parts."""

    bind: str

    @property
    def host(self) -> str:
        return self.bind.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.bind.rpartition(":")[2])


@dataclass(frozen=True)
class ConnectionLimits:
    """What peers can make the listener hold (invariant 12): time per phase, and how many
    connections overall, per source address before the handshake, and per CN after it."""

    handshake_timeout_seconds: float = 5.0
    # Keep-alive idle time, which also bounds how long a request's head may take.
    idle_timeout_seconds: float = 15.0
    body_timeout_seconds: float = 10.0
    # Lowered at start to half the process's descriptor limit (see tls_server).
    max_connections: int = 512
    max_handshakes: int = 128
    max_handshakes_per_address: int = 8
    max_connections_per_cn: int = 64
    h2_max_concurrent_streams: int = 16


@dataclass(frozen=True)
class ServerConfig(Listener):
    bind: str
    cert: Path
    key: Path
    client_ca: Path
    crl_file: Path | None
    max_body_bytes: int
    # Scanned for grants to the service account broader than the wrappers.
    sudoers_file: Path = Path("/etc/sudoers")
    limits: ConnectionLimits = ConnectionLimits()


def read_server(t: Table) -> ServerConfig:
    config = ServerConfig(
        bind=t.get("bind", str, "127.0.0.1:18443", check=check_bind),
        cert=t.path("cert", required=True),
        key=t.path("key", required=True),
        client_ca=t.path("client_ca", required=True),
        crl_file=t.optional_path("crl_file"),
        max_body_bytes=t.get("max_body_bytes", int, 65536, check=between(1024, 16 * 2**20)),
        sudoers_file=t.path("sudoers_file", default="/etc/sudoers"),
        limits=_connection_limits(t),
    )
    t.finish()
    return config


def _connection_limits(t: Table) -> ConnectionLimits:
    """[server]'s timeouts and connection caps; each key is optional."""
    defaults = ConnectionLimits()

    def seconds(key: str, default: float) -> float:
        return float(t.get(key, (int, float), default, check=between(0.5, 3600)))

    def count(key: str, default: int) -> int:
        return int(t.get(key, int, default, check=between(1, 1_000_000)))

    limits = ConnectionLimits(
        handshake_timeout_seconds=seconds(
            "handshake_timeout_seconds", defaults.handshake_timeout_seconds
        ),
        idle_timeout_seconds=seconds("idle_timeout_seconds", defaults.idle_timeout_seconds),
        body_timeout_seconds=seconds("body_timeout_seconds", defaults.body_timeout_seconds),
        max_connections=count("max_connections", defaults.max_connections),
        max_handshakes=count("max_handshakes", defaults.max_handshakes),
        max_handshakes_per_address=count(
            "max_handshakes_per_address", defaults.max_handshakes_per_address
        ),
        max_connections_per_cn=count("max_connections_per_cn", defaults.max_connections_per_cn),
        h2_max_concurrent_streams=count(
            "h2_max_concurrent_streams", defaults.h2_max_concurrent_streams
        ),
    )
    if limits.max_handshakes > limits.max_connections:
        t.reader.problem(t.key("max_handshakes"), "must not be above max_connections")
    return limits
