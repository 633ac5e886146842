"""ZFS datasets and snapshots through the `host-agent-zfs` wrapper.

Requests (the predecessor's shape):
    {"kind": "zfs", "resource": "tank",           "args": ["list", "snapshot"]}
    {"kind": "zfs", "resource": "tank/media",     "args": ["get", "used", "compression"]}
    {"kind": "zfs", "resource": "tank/media",     "args": ["snapshot", "daily-2024-01-15"]}
    {"kind": "zfs", "resource": "tank/media@old", "args": ["destroy"]}
    {"kind": "zfs", "resource": "tank/media@old", "args": ["rollback"]}

Before approvers are asked about a destroy or rollback, the wrapper's read-only
`tree` lists the dataset and everything under it, and `describe_preview` says
what the operation would remove (zfs-fuse has no `zfs destroy -n`).

snapshot, destroy and rollback act only on datasets in `[zfs] allowed_datasets`.
destroy and rollback never touch a protected dataset (one holding /, /etc, /var,
/usr, /boot, /root, the audit log's or the approval store's directory, found in the
mount table) nor an ancestor of one; no config can allow that. The wrapper checks
both again against the mount table it reads itself.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from host_agent.adapters.base import (
    EXIT_NOT_PERMITTED,
    Adapter,
    Call,
    Failure,
    args_schema,
    check_choice,
    check_text,
    choice_schema,
    expect_args,
    parameters_schema,
    require_listed,
    text_schema,
)
from host_agent.config import ZfsConfig
from host_agent.errors import TargetRefused, ValidationError
from host_agent.operations import Operation
from host_agent.request import HostOpRequest
from host_agent.root_equivalent import protected_hit
from host_agent.runner import RunResult

# ZFS names: pool first (starts with a letter), then components; we are
# stricter than ZFS (no spaces; components start with a letter, digit or _,
# so '.' and '..' can never be components).
MAX_NAME = 255
MAX_DEPTH = 50
_POOL = r"[A-Za-z][A-Za-z0-9_.:-]*"
_COMPONENT = r"[A-Za-z0-9_][A-Za-z0-9_.:-]*"
DATASET_RE = re.compile(rf"{_POOL}(?:/{_COMPONENT})*")
SNAPSHOT_COMPONENT_RE = re.compile(_COMPONENT)
# Words zpool reserves for vdev types: never pool names.
RESERVED_POOL_NAMES = frozenset(
    {"mirror", "raidz", "raidz1", "raidz2", "raidz3", "draid", "spare", "log", "cache", "special"}
)

LIST_TYPES = {
    "filesystem": {"filesystem"},
    "volume": {"volume"},
    "snapshot": {"snapshot"},
    "all": {"filesystem", "volume", "snapshot"},
}
# What `zfs list` shows without -t.
DEFAULT_LIST_TYPES = {"filesystem", "volume"}
LIST_PROPERTIES = ("type", "used", "available", "referenced", "mountpoint")
# Properties `get` may read (the wrapper keeps the same list).
GET_PROPERTIES = (
    "type",
    "creation",
    "used",
    "available",
    "referenced",
    "compressratio",
    "mounted",
    "origin",
    "quota",
    "reservation",
    "refquota",
    "refreservation",
    "recordsize",
    "mountpoint",
    "compression",
    "atime",
    "readonly",
    "checksum",
    "copies",
    "canmount",
    "snapdir",
    "usedbysnapshots",
    "usedbydataset",
    "usedbychildren",
)
RECURSIVE = "recursive"
# Validation bounds DATASET@NAME as a whole, which a JSON Schema cannot say across two
# fields; the snapshot tool's schema splits MAX_NAME: a name of at most this many
# characters, the dataset the rest.
SNAPSHOT_NAME_SCHEMA_MAX = 64
# The wrapper's read-only listing behind previews; not a command clients may send.
TREE = "tree"
# In the wrapper's refusal when its [wrappers.zfs_destroy] opt-in does not allow a destroy.
DESTROY_DISABLED = "wrappers.zfs_destroy"


class ZfsAdapter(Adapter):
    kind = "zfs"
    wrapper = "host-agent-zfs"
    commands: ClassVar[Mapping[str, bool]] = {
        "list": False,
        "get": False,
        "snapshot": True,
        "destroy": True,
        "rollback": True,
    }
    summaries: ClassVar[Mapping[str, str]] = {
        "list": "List ZFS datasets with type, used, available, referenced and mountpoint: "
        "every pool, or one dataset and everything under it.",
        "get": "Read properties of one ZFS dataset or snapshot.",
        "snapshot": "Create the snapshot DATASET@NAME of one ZFS dataset.",
        "destroy": "Destroy a ZFS dataset or snapshot (never a pool's root dataset); "
        "without 'recursive' zfs refuses when it has children.",
        "rollback": "Roll a ZFS dataset back to one of its snapshots, discarding every "
        "change since; without 'recursive' zfs refuses when newer snapshots exist.",
    }
    stderr_failures = (
        ("does not exist", Failure(404, "not_found", "dataset or snapshot does not exist")),
        ("already exists", Failure(409, "already_exists", "it already exists")),
        (
            "more recent snapshots exist",
            Failure(409, "newer_snapshots_exist", "newer snapshots exist; roll back recursively"),
        ),
        ("has children", Failure(409, "has_dependents", "it has children; destroy recursively")),
        ("dependent clones", Failure(409, "has_dependents", "it has dependent clones")),
        ("busy", Failure(409, "busy", "the dataset is busy")),
        ("permission denied", Failure(403, "permission_denied", "zfs refused: permission denied")),
    )

    def __init__(self, config: ZfsConfig, protected: frozenset[str]) -> None:
        self.allowed_datasets = config.allowed_datasets or ()
        self.run_as_caller = config.run_as_caller
        # Datasets holding the protected paths, from the mount table at start or reload.
        self.protected = protected

    def parse(self, request: HostOpRequest, unix_user: str) -> Operation:
        operation = super().parse(request, unix_user)
        if operation.mutating:
            self.check_target(operation.command, operation.wrapper_argv[1])
        if not self.run_as_caller:
            return operation
        # The wrapper drops to the caller's account, so `zfs allow` limits what it does.
        return dataclasses.replace(
            operation, wrapper_argv=("as", unix_user, *operation.wrapper_argv)
        )

    def failure(self, operation: Operation, result: RunResult) -> Failure:
        if result.exit_code == EXIT_NOT_PERMITTED and DESTROY_DISABLED in result.stderr:
            return Failure(
                403,
                "destroy_disabled_on_host",
                "this host's zfs wrapper does not allow destroy "
                "([wrappers.zfs_destroy] enabled and allowed_uids)",
            )
        return super().failure(operation, result)

    def check_target(self, command: str, name: str) -> None:
        """Refuse destroying or rolling back a protected dataset (built in), then any
        change to a dataset outside the allowlist."""
        dataset = name.partition("@")[0]
        if command in ("destroy", "rollback"):
            hit = protected_hit(dataset, self.protected)
            if hit is not None:
                held = "holds" if hit == dataset else f"is an ancestor of {hit}, which holds"
                raise TargetRefused(
                    "resource",
                    f"{dataset} {held} the host's own system, config or logs; {command} is "
                    "refused whatever the configuration says",
                    code="protected_dataset",
                )
        require_listed(
            dataset,
            self.allowed_datasets,
            dataset,
            "[zfs] allowed_datasets",
            "dataset_not_allowed",
        )

    def validate(self, call: Call) -> tuple[str, ...]:
        if call.command == "list":
            expect_args(call, most=1)
            if call.args:
                check_choice("args[1]", call.args[0], LIST_TYPES)
            if not call.resource:
                return ()
            return (zfs_name("resource", call.resource, snapshot=False),)
        if call.command == "get":
            expect_args(call, most=len(GET_PROPERTIES))
            for index, prop in enumerate(call.args, start=1):
                check_choice(f"args[{index}]", prop, GET_PROPERTIES)
            wanted = call.args or GET_PROPERTIES
            return (",".join(dict.fromkeys(wanted)), zfs_name("resource", call.resource))
        if call.command == "snapshot":
            expect_args(call, least=1, most=1)
            dataset = zfs_name("resource", call.resource, snapshot=False)
            snapname = check_text(
                "args[1]",
                call.args[0],
                max_length=MAX_NAME,
                pattern=SNAPSHOT_COMPONENT_RE,
                what="snapshot name",
            )
            return (zfs_name("args[1]", f"{dataset}@{snapname}", dataset=False),)
        # destroy, rollback: optional "recursive"
        expect_args(call, most=1)
        if call.args:
            check_choice("args[1]", call.args[0], (RECURSIVE,))
        if call.command == "rollback":
            target = zfs_name("resource", call.resource, dataset=False)
        else:
            target = zfs_name("resource", call.resource)
            if "/" not in target and "@" not in target:
                raise ValidationError(
                    "resource", "destroying a pool's root dataset is refused", code="pool_root"
                )
        return (target, *call.args)

    def is_recursive(self, call: Call) -> bool:
        return call.command in ("destroy", "rollback") and RECURSIVE in call.args

    def tool_parameters(self, command: str, *, recursive: bool = True) -> dict[str, Any] | None:
        if self.commands[command] and not self.allowed_datasets:
            return None  # no dataset can pass check_target
        if command == "list":
            return parameters_schema(
                resource=name_schema(
                    "Dataset to list with everything under it, e.g. tank/media; "
                    "omit to list every pool",
                    snapshot=False,
                ),
                resource_required=False,
                args=args_schema(
                    "Optional: which type to list (default: filesystems and volumes)",
                    [choice_schema("dataset type", LIST_TYPES)],
                ),
                examples=[{"resource": "tank/media", "args": ["snapshot"]}],
            )
        if command == "get":
            return parameters_schema(
                resource=name_schema(
                    "Dataset or snapshot, e.g. tank/media or tank/media@daily-2024-01-15"
                ),
                args=args_schema(
                    "Properties to read; none reads every property listed here",
                    [choice_schema("property", GET_PROPERTIES)] * len(GET_PROPERTIES),
                ),
                examples=[{"resource": "tank/media", "args": ["used", "compression"]}],
            )
        if command == "snapshot":
            name = text_schema(
                "Snapshot name, e.g. daily-2024-01-15",
                max_length=SNAPSHOT_NAME_SCHEMA_MAX,
                pattern=_COMPONENT,
            )
            return parameters_schema(
                resource=name_schema(
                    "Dataset to snapshot, e.g. tank/media",
                    snapshot=False,
                    max_length=MAX_NAME - 1 - SNAPSHOT_NAME_SCHEMA_MAX,
                ),
                args=args_schema("[NAME]: the new snapshot's name", [name], least=1),
                examples=[{"resource": "tank/media", "args": ["daily-2024-01-15"]}],
            )
        if command == "destroy":
            resource = name_schema(
                "Dataset below a pool's root, or a snapshot, e.g. tank/media/old or tank/media@old",
                below_pool=True,
            )
            example = {"resource": "tank/media@old"}
        else:
            resource = name_schema(
                "Snapshot DATASET@NAME, e.g. tank/media@daily-2024-01-15", dataset=False
            )
            example = {"resource": "tank/media@daily-2024-01-15"}
        if not recursive:
            return parameters_schema(resource=resource, examples=[example])
        return parameters_schema(
            resource=resource,
            args=args_schema(
                "Optional ['recursive']: also "
                + (
                    "children and their snapshots"
                    if command == "destroy"
                    else "destroy the snapshots newer than the target"
                ),
                [choice_schema("recursive", (RECURSIVE,))],
            ),
            examples=[example, {**example, "args": [RECURSIVE]}],
        )

    def preview(self, operation: Operation) -> Operation | None:
        if operation.command not in ("destroy", "rollback"):
            return None
        dataset = operation.resource.partition("@")[0]
        return self.internal(TREE, dataset, dataset)

    def describe_preview(self, operation: Operation, result: RunResult) -> list[str]:
        entries = parse_tree(result.stdout)
        if operation.command == "rollback":
            return rollback_preview(operation.resource, entries, recursive=operation.recursive)
        return destroy_preview(operation.resource, entries, recursive=operation.recursive)

    def interpret(self, operation: Operation, result: RunResult) -> dict[str, Any]:
        command, target = operation.command, operation.wrapper_argv[-1]
        if command == "snapshot":
            return {"snapshot": target}
        if command == "destroy":
            return {"destroyed": operation.resource, "recursive": operation.recursive}
        if command == "rollback":
            return {"rolled_back_to": operation.resource, "recursive": operation.recursive}
        if command == "get":
            return {"name": target, "properties": parse_get(result.stdout)}
        wanted = LIST_TYPES[operation.args[1]] if len(operation.args) > 1 else DEFAULT_LIST_TYPES
        datasets = [d for d in parse_properties(result.stdout) if d.get("type") in wanted]
        return {"datasets": datasets}


def zfs_name(field: str, value: str, *, dataset: bool = True, snapshot: bool = True) -> str:
    """A dataset (`pool/a/b`) or snapshot (`pool/a@s`) name, as allowed by the caller."""
    check_text(field, value, max_length=MAX_NAME, what="ZFS name")
    if "#" in value:
        raise ValidationError(field, "bookmarks are not supported", code="invalid_name")
    base, at, snapname = value.partition("@")
    if at and not snapshot:
        raise ValidationError(field, "expected a dataset, not a snapshot", code="invalid_name")
    if not at and not dataset:
        raise ValidationError(field, "expected a snapshot, DATASET@NAME", code="invalid_name")
    if not DATASET_RE.fullmatch(base) or (at and not SNAPSHOT_COMPONENT_RE.fullmatch(snapname)):
        raise ValidationError(field, "not a valid ZFS name", code="invalid_name")
    if base.split("/")[0] in RESERVED_POOL_NAMES:
        raise ValidationError(field, "pool name is a reserved word", code="invalid_name")
    if base.count("/") + 1 > MAX_DEPTH:
        raise ValidationError(field, f"dataset nested deeper than {MAX_DEPTH}", code="too_long")
    return value


def name_schema(
    description: str,
    *,
    dataset: bool = True,
    snapshot: bool = True,
    below_pool: bool = False,
    max_length: int = MAX_NAME,
) -> dict[str, Any]:
    """The JSON Schema of what `zfs_name` accepts (`below_pool`: not a pool's root)."""
    reserved = "|".join(sorted(RESERVED_POOL_NAMES))
    pool = f"(?!(?:{reserved})(?:[/@]|$)){_POOL}"
    snapname = f"@{_COMPONENT}"
    if below_pool:
        # A dataset below the pool (with or without a snapshot), or the pool's snapshot.
        below = f"(?:/{_COMPONENT}){{1,{MAX_DEPTH - 1}}}"
        pattern = f"{pool}(?:{below}(?:{snapname})?|{snapname})"
    else:
        pattern = f"{pool}(?:/{_COMPONENT}){{0,{MAX_DEPTH - 1}}}"
        if snapshot:
            pattern += f"(?:{snapname})" + ("?" if dataset else "")
    return text_schema(description, max_length=max_length, pattern=pattern)


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of the wrapper's `tree`: a dataset or snapshot and when it was made."""

    name: str
    type: str
    createtxg: int

    @property
    def dataset(self) -> str:
        return self.name.partition("@")[0]

    @property
    def snapname(self) -> str:
        return self.name.partition("@")[2]


def parse_tree(text: str) -> list[Entry]:
    """`zfs get -H -p -r -o name,property,value type,createtxg` lines: each dataset and
    snapshot once, in zfs's order, with its exact creation txg."""
    found: dict[str, dict[str, str]] = {}
    for name, prop, value in _rows(text, 3):
        found.setdefault(name, {})[prop] = value
    return [
        Entry(name, props["type"], int(props["createtxg"]))
        for name, props in found.items()
        if "type" in props and props.get("createtxg", "").isdigit()
    ]


def destroy_preview(target: str, entries: list[Entry], *, recursive: bool) -> list[str]:
    """What `zfs destroy [-r] target` removes, as `zfs destroy -nv` would list it."""
    dataset, at, snapname = target.partition("@")
    if at:
        doomed = [
            e.name
            for e in entries
            if e.type == "snapshot"
            and e.snapname == snapname
            and (e.dataset == dataset or recursive)
        ]
        return doomed or [f"nothing: no snapshot {target} (zfs will refuse)"]
    if not any(e.name == dataset for e in entries):
        return [f"nothing: no dataset {dataset} (zfs will refuse)"]
    below = [e for e in entries if e.name != dataset]
    if recursive or not below:
        return [dataset, *(e.name for e in below)]
    datasets = sum(e.type != "snapshot" for e in below)
    snapshots = len(below) - datasets
    return [
        f"nothing: zfs refuses to destroy {dataset} without recursive; it has "
        f"{_count(datasets, 'dataset')} and {_count(snapshots, 'snapshot')} under it"
    ]


def rollback_preview(target: str, entries: list[Entry], *, recursive: bool) -> list[str]:
    """What `zfs rollback [-r] target` discards: the dataset's snapshots made after it."""
    dataset = target.partition("@")[0]
    snapshots = [e for e in entries if e.type == "snapshot" and e.dataset == dataset]
    found = next((e for e in snapshots if e.name == target), None)
    if found is None:
        return [f"nothing: no snapshot {target} (zfs will refuse)"]
    newer = [
        e.name
        for e in sorted(snapshots, key=lambda e: e.createtxg)
        if e.createtxg > found.createtxg
    ]
    discarded = f"{dataset}: every change since {target} is discarded"
    if not newer:
        return [discarded]
    if not recursive:
        return [
            "nothing: zfs refuses without recursive, because newer snapshots exist "
            "(a recursive rollback destroys them):",
            *newer,
        ]
    return [discarded, "and the newer snapshots are destroyed:", *newer]


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def parse_properties(text: str) -> list[dict[str, Any]]:
    """`zfs get -H -p -o name,property,value` lines → one dict per dataset, in order."""
    datasets: dict[str, dict[str, Any]] = {}
    for name, prop, value in _rows(text, 3):
        datasets.setdefault(name, {"name": name})[prop] = _value(value)
    return list(datasets.values())


def parse_get(text: str) -> dict[str, dict[str, Any]]:
    """`zfs get -H -p -o property,value,source` lines → {property: {value, source}}."""
    return {
        prop: {"value": _value(value), "source": None if source == "-" else source}
        for prop, value, source in _rows(text, 3)
    }


def _rows(text: str, width: int) -> Iterator[list[str]]:
    """Tab-separated `-H` output; lines of another width (cut short, noise) are skipped."""
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == width:
            yield parts


def _value(text: str) -> Any:
    if text == "-":
        return None
    return int(text) if text.isdigit() else text
