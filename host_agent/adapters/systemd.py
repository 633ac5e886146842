"""Unit status, start, stop and restart through the `host-agent-systemd` wrapper.

Requests:
    {"kind": "systemd", "resource": "nginx.service",        "args": ["status"]}
    {"kind": "systemd", "resource": "app@blue.service",     "args": ["restart"]}

The wrapper runs `systemctl show --property=<STATUS_PROPERTIES> -- UNIT` for
status and `systemctl start|stop|restart -- UNIT` otherwise.

start/stop/restart act only on units in `[systemd] allowed_units` and never on a
built-in root-equivalent one (`host_agent.root_equivalent.DENIED_UNITS`). Both
checks, and policy, apply to the requested name and to the unit's canonical id,
which the wrapper's read-only `resolve` asks systemd for (an alias such as
`sshd.service` is the unit `ssh.service`). The wrapper checks both again.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from host_agent.adapters.base import (
    Adapter,
    Call,
    Failure,
    check_text,
    expect_args,
    parameters_schema,
    require_listed,
    text_schema,
)
from host_agent.config import SystemdConfig
from host_agent.errors import TargetRefused, ValidationError
from host_agent.operations import Operation
from host_agent.root_equivalent import denied_unit
from host_agent.runner import RunResult

# systemd's own limit (UNIT_NAME_MAX includes the NUL).
MAX_UNIT_NAME = 255
UNIT_TYPES = ("service", "socket", "timer", "target", "mount", "path")
# systemd's unit-name characters minus the backslash (so no `\x2d` escapes);
# `@` separates an instance and may appear once.
_UNIT_CHARS = re.compile(r"[A-Za-z0-9:_.@-]+")
_PART = r"[A-Za-z0-9:_.-]"
_PREFIX = rf"[A-Za-z0-9_]{_PART}*"
_INSTANCE = rf"{_PART}+"
_SUFFIX = rf"\.(?:{'|'.join(UNIT_TYPES)})"
UNIT_RE = re.compile(rf"(?P<prefix>{_PREFIX})(?:(?P<at>@)(?P<instance>{_INSTANCE})?)?{_SUFFIX}")
# What `unit_name` accepts, in portable syntax: no '..', an instance after any '@'.
UNIT_SCHEMA_PATTERN = rf"(?!.*\.\.){_PREFIX}(?:@{_INSTANCE})?{_SUFFIX}"
_GLOB_CHARS = frozenset("*?[]")

# What `status` asks systemctl for (the wrapper keeps the same list).
STATUS_PROPERTIES = (
    "Id",
    "Description",
    "LoadState",
    "ActiveState",
    "SubState",
    "UnitFileState",
    "MainPID",
    "ExecMainStatus",
    "ActiveEnterTimestamp",
)
_INTEGER_PROPERTIES = frozenset({"MainPID", "ExecMainStatus"})
_DONE = {"start": "started", "stop": "stopped", "restart": "restarted"}
# Stands in for the unit's own name while stderr is matched (see `failure`).
_UNIT_PLACEHOLDER = "UNIT"
# The wrapper's read-only `systemctl show -p Id --value`; not a command clients may send.
RESOLVE = "resolve"


class SystemdAdapter(Adapter):
    kind = "systemd"
    wrapper = "host-agent-systemd"
    commands: ClassVar[Mapping[str, bool]] = {
        "status": False,
        "start": True,
        "stop": True,
        "restart": True,
    }
    summaries: ClassVar[Mapping[str, str]] = {
        "status": "Show a systemd unit's state: load, active and sub state, unit file "
        "state, main PID and exit status, active since.",
        "start": "Start a systemd unit.",
        "stop": "Stop a systemd unit.",
        "restart": "Restart a systemd unit.",
    }
    # systemctl's messages: "Failed to start X: Unit X not found.", "... Unit X
    # not loaded." (stop), "... Access denied", "Job for X canceled.", ...
    stderr_failures = (
        ("not found.", Failure(404, "not_found", "no such unit")),
        ("not loaded.", Failure(404, "not_found", "no such unit is loaded")),
        ("access denied", Failure(403, "permission_denied", "systemd refused: access denied")),
        (
            "interactive authentication required",
            Failure(403, "permission_denied", "systemd refused: authentication required"),
        ),
        ("permission denied", Failure(403, "permission_denied", "permission denied")),
        ("is masked.", Failure(409, "unit_masked", "the unit is masked")),
        ("canceled.", Failure(409, "busy", "the job was canceled by a conflicting job")),
        ("already in progress", Failure(409, "busy", "another job for the unit is in progress")),
        ("is destructive", Failure(409, "busy", "conflicting jobs are queued for the unit")),
        ("busy", Failure(409, "busy", "the unit is busy")),
        ("timed out.", Failure(504, "unit_timeout", "the unit's job timed out")),
        ("job for", Failure(502, "unit_failed", "the unit's job failed; see its journal")),
        (
            "has not been booted with systemd",
            Failure(503, "systemd_unavailable", "systemd is not running on this host"),
        ),
        ("failed to connect to bus", Failure(503, "systemd_unavailable", "no systemd bus")),
    )

    def __init__(self, config: SystemdConfig) -> None:
        self.allowed_units = config.allowed_units or ()

    def validate(self, call: Call) -> tuple[str, ...]:
        expect_args(call, most=0)
        unit = unit_name("resource", call.resource)
        if self.commands[call.command]:
            self.check_target(unit)
        return (unit,)

    def check_target(self, unit: str, *, requested: str | None = None) -> None:
        """Refuse a built-in root-equivalent unit, then one outside the allowlist;
        `requested` names the alias a canonical id was resolved from."""
        what = unit if requested is None else f"{requested} (canonical id {unit})"
        pattern = denied_unit(unit)
        if pattern is not None:
            raise TargetRefused(
                "resource",
                f"{what} is root-equivalent or stops the host (built-in deny {pattern!r}); "
                "no configuration can allow it",
                code="root_equivalent_unit",
            )
        require_listed(
            unit, self.allowed_units, what, "[systemd] allowed_units", "unit_not_allowed"
        )

    def resolution(self, operation: Operation) -> Operation | None:
        if not operation.mutating:
            return None
        return self.internal(RESOLVE, operation.resource, operation.resource)

    def resolved(self, operation: Operation, result: RunResult) -> Operation:
        canonical = result.stdout.strip()
        try:
            unit_name("resource", canonical)
        except ValidationError:
            raise TargetRefused(
                "resource",
                f"systemd reported {canonical[:300]!r} as the id of {operation.resource}",
                code="unit_unresolved",
            ) from None
        self.check_target(canonical, requested=operation.resource)
        return dataclasses.replace(operation, canonical_resource=canonical)

    def tool_parameters(self, command: str, *, recursive: bool = True) -> dict[str, Any] | None:
        if self.commands[command] and not self.allowed_units:
            return None  # no unit can pass check_target
        unit = text_schema(
            f"Unit NAME.TYPE or NAME@INSTANCE.TYPE, TYPE one of {', '.join(UNIT_TYPES)}; "
            "e.g. nginx.service, app@blue.service",
            max_length=MAX_UNIT_NAME,
            pattern=UNIT_SCHEMA_PATTERN,
        )
        return parameters_schema(resource=unit, examples=[{"resource": "nginx.service"}])

    def interpret(self, operation: Operation, result: RunResult) -> dict[str, Any]:
        if operation.command == "status":
            return {"unit": operation.resource, "properties": parse_show(result.stdout)}
        return {_DONE[operation.command]: operation.resource}

    def outcome(self, operation: Operation, result: RunResult) -> Failure | None:
        """`systemctl show` succeeds for units that do not exist; report those as 404."""
        if (
            result.exit_code == 0
            and operation.command == "status"
            and parse_show(result.stdout)["LoadState"] == "not-found"
        ):
            return Failure(404, "not_found", f"unit {operation.resource} not found")
        return super().outcome(operation, result)

    def failure(self, operation: Operation, result: RunResult) -> Failure:
        """Match stderr without the unit's name, so `busybox.service` failing is not "busy"."""
        stderr = result.stderr.replace(operation.resource, _UNIT_PLACEHOLDER)
        return super().failure(operation, dataclasses.replace(result, stderr=stderr))


def unit_name(field: str, value: str) -> str:
    """A unit (`name.type` or `name@instance.type`); no templates, globs or escapes."""
    check_text(field, value, max_length=MAX_UNIT_NAME, what="unit name")
    if _GLOB_CHARS.intersection(value):
        raise ValidationError(field, "glob patterns are not allowed", code="glob_pattern")
    if not _UNIT_CHARS.fullmatch(value):
        raise ValidationError(
            field,
            "unit names may contain ASCII letters, digits and ':_.-@' only",
            code="invalid_name",
        )
    if ".." in value:
        raise ValidationError(field, "unit name must not contain '..'", code="invalid_name")
    if value.rpartition(".")[2] not in UNIT_TYPES:
        raise ValidationError(
            field, f"unit type must be one of {', '.join(UNIT_TYPES)}", code="unsupported_unit_type"
        )
    match = UNIT_RE.fullmatch(value)
    if match is None:
        raise ValidationError(field, "not a valid unit name", code="invalid_name")
    if match["at"] and match["instance"] is None:
        raise ValidationError(
            field, "template units cannot be run; name an instance", code="template_unit"
        )
    return value


def parse_show(text: str) -> dict[str, Any]:
    """`systemctl show` `Key=Value` lines → {Key: value}; empty → None, PIDs and codes → int."""
    properties: dict[str, Any] = dict.fromkeys(STATUS_PROPERTIES)
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep or key not in properties:
            continue
        if not value:
            properties[key] = None
        elif key in _INTEGER_PROPERTIES and value.isdigit():
            properties[key] = int(value)
        else:
            properties[key] = value
    return properties
