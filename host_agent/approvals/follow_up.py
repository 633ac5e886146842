"""What the approvers who were asked hear once an approval is settled: one short line
per step (decided, expired, used), so that nobody answers a request that is already
over, and everyone learns who decided it. No token: it could no longer be used anyway,
and a follow-up must not look like a request."""

from __future__ import annotations

from collections.abc import Callable

from host_agent.approvals.model import Approval, Status, timestamp

_SETTLED = {
    Status.APPROVED: "APPROVED",
    Status.DENIED: "DENIED",
    Status.EXPIRED: "EXPIRED",
    Status.CONSUMED: "USED",
}


def outcome_message(approval: Approval, host: str, name_of: Callable[[str], str]) -> str | None:
    """The follow-up for `approval`'s current state, or None while it is still pending.

    `name_of` turns an approver identity into what the others should read (a person's
    name when [[approval.people]] has one)."""
    word = _SETTLED.get(approval.status)
    if word is None:
        return None
    what = f"{approval.operation} on {approval.resource or '(none)'}"
    requester = approval.requester_cn + (
        f" on behalf of {approval.on_behalf_of}" if approval.on_behalf_of else ""
    )
    if approval.status is Status.CONSUMED:
        detail = f"{requester} ran it at {timestamp(approval.consumed_at)}"
    elif approval.status is Status.EXPIRED:
        detail = f"nobody decided it by {timestamp(approval.expires_at)}; it will not run"
    else:
        who = name_of(approval.decided_by) if approval.decided_by else "(unknown)"
        detail = f"by {who} at {timestamp(approval.decided_at)}"
    return (
        f"host-agent approval {approval.id} on {host}: {word}\n"
        f"{what}, asked by {requester}: {detail}. No answer is needed."
    )
