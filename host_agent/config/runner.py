"""[runner]: how adapters reach the wrappers (sudo, the service account, limits)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from host_agent.config.fields import Table, between, check_unix_name


@dataclass(frozen=True)
class RunnerConfig:
    sudo: Path
    wrapper_dir: Path
    service_user: str | None
    timeout_seconds: float
    max_output_bytes: int


def read_runner(t: Table) -> RunnerConfig:
    config = RunnerConfig(
        sudo=t.path("sudo", default="/usr/bin/sudo"),
        wrapper_dir=t.path("wrapper_dir", default="/usr/local/libexec/host-agent"),
        service_user=t.optional("service_user", str, check=check_unix_name),
        timeout_seconds=float(
            t.get("timeout_seconds", (int, float), 60, check=between(0.1, 24 * 3600))
        ),
        max_output_bytes=t.get("max_output_bytes", int, 1048576, check=between(1024, 2**28)),
    )
    t.finish()
    return config
