"""Proxmox containers through the `host-agent-pct` wrapper."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from host_agent.adapters.base import Adapter, Call


class PctAdapter(Adapter):
    kind = "pct"
    wrapper = "host-agent-pct"
    commands: ClassVar[Mapping[str, bool]] = {
        "status": False,
        "start": True,
        "stop": True,
        "destroy": True,
    }

    def validate(self, call: Call) -> tuple[str, ...]:
        raise NotImplementedError  # being written
