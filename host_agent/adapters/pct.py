"""Proxmox containers through the `host-agent-pct` wrapper.

Requests (the predecessor's shape):
    {"kind": "pct", "resource": "101", "args": ["status"]}
    {"kind": "pct", "resource": "101", "args": ["start"]}

The wrapper runs `pct status|start|stop|destroy VMID`. With `[pct] allowed_vmids`
set, start/stop/destroy act only on the VMIDs it matches (both layers).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

from host_agent.adapters.base import (
    Adapter,
    Call,
    Failure,
    check_text,
    expect_args,
    integer_pattern,
    parameters_schema,
    require_listed,
    text_schema,
)
from host_agent.adapters.pct_create import (
    CREATE_FLAGS,
    check_settings,
    check_template,
    create_args_schema,
    example_template,
)
from host_agent.config import PctConfig
from host_agent.errors import ValidationError
from host_agent.operations import ApprovalNeed, Operation
from host_agent.runner import RunResult

# Proxmox reserves IDs below 100; the predecessor capped them at 999999.
MIN_VMID = 100
MAX_VMID = 999_999
# Digits without a leading zero, so one VMID has exactly one spelling.
VMID_RE = re.compile(r"[1-9][0-9]*")
# Long enough to say "out of range" rather than "too long" for near misses.
_MAX_VMID_TEXT = 16
_DONE = {"start": "started", "stop": "stopped", "destroy": "destroyed", "create": "created"}


class PctAdapter(Adapter):
    kind = "pct"
    wrapper = "host-agent-pct"
    commands: ClassVar[Mapping[str, bool]] = {
        "status": False,
        "start": True,
        "stop": True,
        "destroy": True,
        "create": True,
    }
    summaries: ClassVar[Mapping[str, str]] = {
        "status": "Show whether a Proxmox container is running.",
        "start": "Start a Proxmox container.",
        "stop": "Stop a Proxmox container.",
        "destroy": "Destroy a Proxmox container and its disks.",
        "create": "Create an unprivileged Proxmox container from an allowed template, "
        "with allowed NAME=VALUE settings (hostname, memory, net0, ...).",
    }
    # pve-container's messages: "Configuration file 'nodes/N/lxc/101.conf' does
    # not exist", "CT is locked (backup)", "unable to destroy CT 101 - container
    # is running", "CT 101 already running", "CT 101 not running", ...
    stderr_failures = (
        ("does not exist", Failure(404, "not_found", "no such container on this node")),
        ("is locked", Failure(409, "busy", "the container is locked by another task")),
        ("can't lock file", Failure(409, "busy", "the container's config lock is held")),
        (
            "container is running",
            Failure(409, "container_running", "a running container cannot be destroyed"),
        ),
        ("protection mode enabled", Failure(409, "protected", "the container is protected")),
        ("already running", Failure(409, "already_running", "the container is already running")),
        ("already exists", Failure(409, "already_exists", "a container with this VMID exists")),
        ("not running", Failure(409, "not_running", "the container is not running")),
        ("please run as root", Failure(403, "permission_denied", "pct must run as root")),
        ("permission check failed", Failure(403, "permission_denied", "permission denied")),
        ("permission denied", Failure(403, "permission_denied", "permission denied")),
    )

    def __init__(self, config: PctConfig) -> None:
        self.config = config
        self.allowed_vmids = config.allowed_vmids

    def validate(self, call: Call) -> tuple[str, ...]:
        if call.command == "create":
            expect_args(call, least=1, most=1 + len(CREATE_FLAGS))
        else:
            expect_args(call, most=0)
        number = vmid("resource", call.resource)
        if self.commands[call.command] and self.allowed_vmids is not None:
            require_listed(
                number,
                self.allowed_vmids,
                f"container {number}",
                "[pct] allowed_vmids",
                "vmid_not_allowed",
            )
        if call.command == "create":
            template = check_template(call.args[0], self.config.allowed_ostemplates)
            settings = check_settings(call.args[1:], self.config.allowed_create_flags)
            return (number, template, *settings)
        return (number,)

    def tool_parameters(self, command: str, *, recursive: bool = True) -> dict[str, Any] | None:
        if self.commands[command] and self.allowed_vmids == ():
            return None  # no container is allowed
        container = text_schema(
            f"Container ID (VMID), {MIN_VMID} to {MAX_VMID}, e.g. 101",
            max_length=_MAX_VMID_TEXT,
            pattern=integer_pattern(MIN_VMID, MAX_VMID),
        )
        if command != "create":
            return parameters_schema(resource=container, examples=[{"resource": "101"}])
        if not self.config.allowed_ostemplates:
            return None  # no template is allowed
        example = {"resource": "101", "args": [example_template(self.config)]}
        return parameters_schema(
            resource=container, args=create_args_schema(self.config), examples=[example]
        )

    def forced_approval(self, command: str) -> ApprovalNeed:
        """Destroying a container is never left to configuration alone; creating one
        (a new machine on the host) needs a human unless create_requires_approval = false."""
        if command == "destroy" or (command == "create" and self.config.create_requires_approval):
            return ApprovalNeed.ALWAYS
        return ApprovalNeed.NEVER

    def interpret(self, operation: Operation, result: RunResult) -> dict[str, Any]:
        number = int(operation.resource)
        if operation.command == "status":
            return {"vmid": number, "status": parse_status(result.stdout)}
        return {_DONE[operation.command]: number}


def vmid(field: str, value: str) -> str:
    """A container ID: digits, no leading zero, MIN_VMID..MAX_VMID."""
    check_text(field, value, max_length=_MAX_VMID_TEXT, pattern=VMID_RE, what="VMID")
    if not MIN_VMID <= int(value) <= MAX_VMID:
        raise ValidationError(
            field, f"VMID must be between {MIN_VMID} and {MAX_VMID}", code="vmid_out_of_range"
        )
    return value


def parse_status(text: str) -> str | None:
    """The state from `pct status` (`status: running`), None if it printed none."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "status":
            return value.strip() or None
    return None
