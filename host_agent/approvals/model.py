"""What an approval is: the operation it is bound to, who asked, who agreed, and its state."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

# What every approval id looks like (`ap-` and 64 random bits in hex); anything else is
# refused before a store lookup.
APPROVAL_ID = re.compile(r"ap-[0-9a-f]{16}")


class Status(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CONSUMED = "consumed"


@dataclass(frozen=True, slots=True)
class Approver:
    """A human as the channel that carried their answer identifies them."""

    channel: str  # "signal", "admin", "pam"
    name: str  # phone number, client CN or Unix account

    def __str__(self) -> str:
        return f"{self.channel}:{self.name}"


@dataclass(frozen=True, slots=True)
class Approval:
    """One request for a human decision, bound to exactly one operation by one caller."""

    id: str
    token_hash: str
    requester_cn: str
    requester_fingerprint: str
    # The requester's profile account: a local approver with that name is the requester.
    requester_unix_user: str
    operation: str
    kind: str
    resource: str
    args: tuple[str, ...]
    digest: str
    reason: str | None
    admin_only: bool
    approvals_required: int
    created_at: float
    expires_at: float
    status: Status = Status.PENDING
    approvers: tuple[str, ...] = ()
    decided_by: str | None = None
    decided_at: float | None = None
    consumed_at: float | None = None
    # The requester's labels (`metadata` on /host/op): shown to approvers, never acted on.
    metadata: tuple[tuple[str, str], ...] = ()
    # The host whose agent was asked (a fleet shares one store): where it runs.
    host: str = ""
    # The approvers' message's timestamp (from /v2/send): what a quote-reply or a
    # reaction names instead of the token.
    message_ms: int | None = None
    # The agent behind a proxy the request was for (on_behalf_of): the approval is
    # for that agent's request through that certificate, and for nothing else.
    on_behalf_of: str | None = None

    def is_due(self, now: float) -> bool:
        """Past its expiry while still open (pending, or granted but unused)."""
        return self.status in (Status.PENDING, Status.APPROVED) and now >= self.expires_at

    def evolve(self, **changes: Any) -> Approval:
        return replace(self, **changes)

    def public(self) -> dict[str, Any]:
        """What the requester and admins may see: everything but the token hash."""
        return {
            "approval_id": self.id,
            "status": self.status.value,
            "operation": self.operation,
            "kind": self.kind,
            "resource": self.resource,
            "args": list(self.args),
            "digest": self.digest,
            "reason": self.reason,
            "requester": self.requester_cn,
            "on_behalf_of": self.on_behalf_of,
            "admin_only": self.admin_only,
            "approvals_required": self.approvals_required,
            "approvers": list(self.approvers),
            "decided_by": self.decided_by,
            "created_at": timestamp(self.created_at),
            "expires_at": timestamp(self.expires_at),
            "decided_at": timestamp(self.decided_at),
            "consumed_at": timestamp(self.consumed_at),
            "metadata": dict(self.metadata),
            "host": self.host,
        }


def timestamp(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat(timespec="seconds")
