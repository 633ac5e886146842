"""ZFS datasets and snapshots through the `host-agent-zfs` wrapper.

Requests (the predecessor's shape):
    {"kind": "zfs", "resource": "tank",       "args": ["list", "snapshot"]}
    {"kind": "zfs", "resource": "tank/media", "args": ["snapshot", "daily-2024-01-15"]}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

from host_agent.adapters.base import Adapter, Failure, check_text, expect_args
from host_agent.errors import ValidationError
from host_agent.operations import Operation
from host_agent.runner import RunResult

# ZFS names: pool first (starts with a letter), then components; we are
# stricter than ZFS (no spaces, components start with a letter, digit or _).
MAX_NAME = 255
MAX_DEPTH = 50
_COMPONENT = r"[A-Za-z0-9_][A-Za-z0-9_.:-]*"
DATASET_RE = re.compile(rf"[A-Za-z][A-Za-z0-9_.:-]*(?:/{_COMPONENT})*")
SNAPSHOT_COMPONENT_RE = re.compile(_COMPONENT)

LIST_TYPES = {
    "filesystem": {"filesystem"},
    "volume": {"volume"},
    "snapshot": {"snapshot"},
    "all": {"filesystem", "volume", "snapshot"},
}
# What `zfs list` shows without -t.
DEFAULT_LIST_TYPES = {"filesystem", "volume"}
LIST_PROPERTIES = ("type", "used", "available", "referenced", "mountpoint")


class ZfsAdapter(Adapter):
    kind = "zfs"
    wrapper = "host-agent-zfs"
    commands: ClassVar[Mapping[str, bool]] = {"list": False, "snapshot": True}

    def validate(self, command: str, resource: str, args: tuple[str, ...]) -> tuple[str, ...]:
        if command == "list":
            expect_args(command, args, most=1)
            if args and args[0] not in LIST_TYPES:
                raise ValidationError(
                    "args[1]",
                    f"type must be one of {', '.join(LIST_TYPES)}",
                    code="invalid_argument",
                )
            return (dataset_name("resource", resource),) if resource else ()
        # snapshot
        expect_args(command, args, most=1)
        if not args:
            raise ValidationError(
                "args[1]", "snapshot needs a snapshot name", code="missing_argument"
            )
        dataset = dataset_name("resource", resource)
        snapname = check_text(
            "args[1]",
            args[0],
            max_length=MAX_NAME,
            pattern=SNAPSHOT_COMPONENT_RE,
            what="snapshot name",
        )
        full = f"{dataset}@{snapname}"
        if len(full) > MAX_NAME:
            raise ValidationError(
                "args[1]", f"snapshot name longer than {MAX_NAME} characters", code="too_long"
            )
        return (full,)

    def interpret(self, operation: Operation, result: RunResult) -> dict[str, Any]:
        if operation.command == "snapshot":
            return {"snapshot": operation.wrapper_argv[1]}
        wanted = LIST_TYPES[operation.args[1]] if len(operation.args) > 1 else DEFAULT_LIST_TYPES
        datasets = [d for d in parse_properties(result.stdout) if d.get("type") in wanted]
        return {"datasets": datasets}

    def known_failure(self, operation: Operation, result: RunResult) -> Failure | None:
        if "does not exist" in result.stderr:
            return Failure(404, "not_found", "dataset does not exist")
        if "already exists" in result.stderr:
            return Failure(409, "already_exists", "snapshot already exists")
        return None


def dataset_name(field: str, value: str) -> str:
    check_text(field, value, max_length=MAX_NAME, pattern=DATASET_RE, what="dataset name")
    if value.count("/") + 1 > MAX_DEPTH:
        raise ValidationError(field, f"dataset nested deeper than {MAX_DEPTH}", code="too_long")
    return value


def parse_properties(text: str) -> list[dict[str, Any]]:
    """`zfs get -H -p -o name,property,value` lines → one dict per dataset, in order."""
    datasets: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        name, prop, value = parts
        entry = datasets.setdefault(name, {"name": name})
        entry[prop] = _value(value)
    return list(datasets.values())


def _value(text: str) -> Any:
    if text == "-":
        return None
    return int(text) if text.isdigit() else text
