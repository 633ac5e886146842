"""[audit]: where the log is (its rotation is logrotate's), its seal key, and its
checkpoints' key and witnesses ([audit.checkpoints])."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path

from host_agent.config.fields import Table, between, one_of


@dataclass(frozen=True)
class CheckpointConfig:
    """Signed checkpoints of the log's head, shipped to witnesses off the host."""

    key_file: Path
    # The key's name and the checkpoints' origin: this host's log.
    name: str
    every_seconds: int
    # The latest checkpoint and what each witness has taken (see audit/witness.py).
    outbox_file: Path
    postgres_url: str | None
    postgres_password_file: Path | None
    # A remote syslog collector, RFC 5424 over TLS: "host:port".
    syslog: str | None
    syslog_ca: Path | None
    syslog_cert: Path | None
    syslog_key: Path | None
    # Mutating operations get 503 once a witness has lacked a checkpoint this long
    # (0: never).
    fail_closed_after_seconds: int
    # The latest checkpoint sent to the approvers over Signal this often (0: never).
    signal_digest_seconds: int = 86400


@dataclass(frozen=True)
class AuditConfig:
    log_path: Path
    rotation: str
    retention_days: int
    # Forward-secure seals (audit/seal.py): the current epoch's key, where
    # `host-agent audit seal-init` puts it; no sealing when unset.
    seal_key_file: Path | None = None
    # How long an epoch lasts, for seal-init (a running sequence keeps its own).
    seal_epoch_seconds: int = 900
    checkpoints: CheckpointConfig | None = None


def read_audit(t: Table) -> AuditConfig:
    config = AuditConfig(
        log_path=t.path("log_path", required=True),
        rotation=t.get("rotation", str, "daily", check=one_of("daily", "hourly", "never")),
        retention_days=t.get("retention_days", int, 90, check=between(1, 36500)),
        seal_key_file=t.optional_path("seal_key_file"),
        seal_epoch_seconds=t.get("seal_epoch_seconds", int, 900, check=between(1, 86400)),
        checkpoints=_read_checkpoints(t.table("checkpoints")),
    )
    shipped = {"rotation": "daily", "retention_days": 90}  # what logrotate/host-agent does
    for key, value in shipped.items():
        if getattr(config, key) != value:
            t.reader.warn(
                f"{t.key(key)} = {getattr(config, key)!r} is not applied by the agent: "
                "logrotate rotates the audit log (/etc/logrotate.d/host-agent: daily, "
                "90 kept); change it there"
            )
    t.finish()
    return config


def _read_checkpoints(t: Table) -> CheckpointConfig | None:
    key_file = t.optional_path("key_file")
    default_name = f"host-agent/{socket.gethostname()}/audit"
    config = CheckpointConfig(
        key_file=key_file or Path(),
        name=t.get("name", str, default_name, check=_key_name),
        every_seconds=t.get("every_seconds", int, 300, check=between(1, 86400)),
        outbox_file=t.optional_path("outbox_file")
        or Path(f"{key_file or 'checkpoint.key'}.outbox.json"),
        postgres_url=t.optional("postgres_url", str),
        postgres_password_file=t.optional_path("postgres_password_file"),
        syslog=t.optional("syslog", str, check=_host_port),
        syslog_ca=t.optional_path("syslog_ca"),
        syslog_cert=t.optional_path("syslog_cert"),
        syslog_key=t.optional_path("syslog_key"),
        fail_closed_after_seconds=t.get(
            "fail_closed_after_seconds", int, 0, check=between(0, 30 * 86400)
        ),
        signal_digest_seconds=t.get(
            "signal_digest_seconds", int, 86400, check=between(0, 30 * 86400)
        ),
    )
    if key_file is None and t.data:
        t.reader.problem(t.key("key_file"), "is required for checkpoints")
    if config.syslog is not None and config.syslog_ca is None:
        t.reader.problem(t.key("syslog_ca"), "is required with syslog (the collector's CA)")
    t.finish()
    return None if key_file is None else config


def _key_name(value: str) -> str | None:
    return None if re.fullmatch(r"[^\s+]+", value) else "no spaces or '+'"


def _host_port(value: str) -> str | None:
    host, _, port = value.rpartition(":")
    ok = host and port.isdigit() and 0 < int(port) < 65536
    return None if ok else "must be HOST:PORT"
