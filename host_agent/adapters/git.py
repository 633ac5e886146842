"""Git working trees under `[git] allowed_repos`, as the caller profile's unix_user."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from host_agent.adapters.base import Adapter, Call
from host_agent.config import GitConfig


class GitAdapter(Adapter):
    kind = "git"
    wrapper = "host-agent-git"
    commands: ClassVar[Mapping[str, bool]] = {
        "status": False,
        "log": False,
        "fetch": True,
        "pull": True,
        "checkout": True,
    }

    def __init__(self, config: GitConfig) -> None:
        self.config = config

    def validate(self, call: Call) -> tuple[str, ...]:
        raise NotImplementedError  # being written
