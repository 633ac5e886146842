"""[audit]: where the log is (its rotation is logrotate's), and its seal key."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from host_agent.config.fields import Table, between, one_of


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


def read_audit(t: Table) -> AuditConfig:
    config = AuditConfig(
        log_path=t.path("log_path", required=True),
        rotation=t.get("rotation", str, "daily", check=one_of("daily", "hourly", "never")),
        retention_days=t.get("retention_days", int, 90, check=between(1, 36500)),
        seal_key_file=t.optional_path("seal_key_file"),
        seal_epoch_seconds=t.get("seal_epoch_seconds", int, 900, check=between(1, 86400)),
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
