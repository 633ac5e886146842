"""Unit status, start, stop and restart through the `host-agent-systemd` wrapper."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from host_agent.adapters.base import Adapter, Call


class SystemdAdapter(Adapter):
    kind = "systemd"
    wrapper = "host-agent-systemd"
    commands: ClassVar[Mapping[str, bool]] = {
        "status": False,
        "start": True,
        "stop": True,
        "restart": True,
    }

    def validate(self, call: Call) -> tuple[str, ...]:
        raise NotImplementedError  # being written
