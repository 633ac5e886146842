"""The validated operation value that flows from an adapter to policy, audit and the runner."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import StrEnum

# Every operation name the product knows, `<kind>-<command>`. Config rules are
# checked against this list so a misspelt rule fails at load instead of never
# matching.
OPERATION_NAMES: frozenset[str] = frozenset(
    {
        "zfs-list",
        "zfs-get",
        "zfs-snapshot",
        "zfs-destroy",
        "zfs-rollback",
        "systemd-status",
        "systemd-start",
        "systemd-stop",
        "systemd-restart",
        "pct-status",
        "pct-start",
        "pct-stop",
        "pct-destroy",
        "pct-create",
        "git-status",
        "git-log",
        "git-fetch",
        "git-pull",
        "git-checkout",
        "git-diff",
        "exec-run",
    }
)


class ApprovalNeed(StrEnum):
    """Whether an operation needs a human, over every resource it may name."""

    NEVER = "never"
    ALWAYS = "always"
    DEPENDS = "depends"


@dataclass(frozen=True, slots=True)
class Operation:
    """One strictly validated request, ready for policy and the runner.

    `wrapper_argv` is what the sudo wrapper receives: every element came out
    of adapter validation, none is ever interpreted by a shell.
    """

    kind: str
    command: str
    resource: str
    args: tuple[str, ...]
    wrapper: str
    wrapper_argv: tuple[str, ...]
    mutating: bool
    # Adapter-forced approval (e.g. pct destroy) that no config can lift.
    always_requires_approval: bool = False
    # Reaches beyond the named resource (zfs destroy/rollback -r): policy must grant it.
    recursive: bool = False
    # What the host calls the resource, when it has another name for it (a systemd
    # unit's id behind an alias); policy decides on both names, the audit records both.
    canonical_resource: str | None = None

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.command}"

    def digest(self) -> str:
        """SHA-256 over kind, resource and args: what an approval is bound to."""
        canonical = json.dumps(
            {"kind": self.kind, "resource": self.resource, "args": list(self.args)},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()
