"""Typed answers of the agent, as frozen values."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from host_agent.client.request import OpRequest


@dataclass(frozen=True)
class OperationResult:
    """An operation that ran (`data` is the adapter's structured reading; empty on failure)."""

    request_id: str
    operation: str
    resource: str
    exit_code: int
    stdout: str
    stderr: str
    truncated: bool
    duration_ms: float
    data: dict[str, Any]


@dataclass(frozen=True)
class Decision:
    """What policy decided: `effect` is `allow`, `deny` or `approval_required`."""

    effect: str
    code: str
    reason: str
    rule: str
    admin_only: bool
    approvals_required: int


@dataclass(frozen=True)
class DryRun:
    """The decision and what the agent would run (all of the argv for an admin; the
    wrapper's name and its arguments for anyone else); nothing ran."""

    request_id: str
    operation: str
    resource: str
    decision: Decision
    argv: tuple[str, ...]
    digest: str


class ApprovalState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CONSUMED = "consumed"


@dataclass(frozen=True)
class Asked:
    """A way a human can decide an approval: `channel` (signal, admin, host) and who, in words."""

    channel: str
    who: str


@dataclass(frozen=True)
class ApprovalStatus:
    """An approval as `GET /approvals/{id}` shows it to its requester or an admin.

    `approvers` are those who have approved so far; `asked` who can decide it.
    """

    approval_id: str
    status: ApprovalState
    operation: str
    kind: str
    resource: str
    args: tuple[str, ...]
    digest: str
    reason: str | None
    requester: str
    admin_only: bool
    approvals_required: int
    approvers: tuple[str, ...]
    decided_by: str | None
    created_at: dt.datetime
    expires_at: dt.datetime
    decided_at: dt.datetime | None
    consumed_at: dt.datetime | None
    asked: tuple[Asked, ...] = ()

    def seconds_left(self, now: dt.datetime | None = None) -> float:
        """Until the approval expires (never below 0), e.g. for a countdown."""
        return seconds_until(self.expires_at, now)


@dataclass(frozen=True, kw_only=True)
class ApprovalTicket:
    """The 202 answer: the operation waits for a human; `request` is what to resubmit."""

    request_id: str
    operation: str
    resource: str
    approval_id: str
    digest: str
    expires_at: dt.datetime
    approvals_required: int
    admin_only: bool
    message: str
    request: OpRequest
    asked: tuple[Asked, ...] = ()

    def seconds_left(self, now: dt.datetime | None = None) -> float:
        """Until the approval expires (never below 0), e.g. for a countdown."""
        return seconds_until(self.expires_at, now)


@dataclass(frozen=True)
class Health:
    """`GET /health`; `details` is the whole answer (CRL state, sudoers findings, ...)."""

    status: str
    problems: tuple[str, ...]
    version: str
    adapters: tuple[str, ...]
    details: dict[str, Any]


def seconds_until(moment: dt.datetime, now: dt.datetime | None = None) -> float:
    return max(0.0, (moment - (now or dt.datetime.now(dt.UTC))).total_seconds())


def at_time(moment: dt.datetime | None) -> str:
    """` at 2026-12-05T07:40:00+00:00` (UTC), or nothing when the agent gave no time."""
    if moment is None:
        return ""
    return f" at {moment.astimezone(dt.UTC).isoformat(timespec='seconds')}"
