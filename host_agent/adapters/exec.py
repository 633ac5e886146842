"""Allowlisted commands and Ansible playbooks through the `host-agent-exec` wrapper."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from host_agent.adapters.base import Adapter, Call
from host_agent.config import ExecConfig


class ExecAdapter(Adapter):
    kind = "exec"
    wrapper = "host-agent-exec"
    commands: ClassVar[Mapping[str, bool]] = {"run": True}

    def __init__(self, config: ExecConfig) -> None:
        self.config = config

    def validate(self, call: Call) -> tuple[str, ...]:
        raise NotImplementedError  # being written
