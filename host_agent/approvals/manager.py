"""The approval state machine: create, notify, vote or deny, consume, expire.

Every rule about who may do what to an approval lives here, as pure changes
that the store applies atomically, and every step is audited (token hash
only). The requester gets the approval id; only the approvers get the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from host_agent.approvals import tokens
from host_agent.approvals.follow_up import outcome_message
from host_agent.approvals.identity_plugin import IdentityPlugin
from host_agent.approvals.model import APPROVAL_ID, Approval, Approver, Status, timestamp
from host_agent.approvals.signal import IncomingReply, Notify, notifier, parse_command
from host_agent.approvals.store import ApprovalStore, Change, Claim
from host_agent.audit import AuditLog
from host_agent.config import ApprovalConfig
from host_agent.errors import ApprovalError
from host_agent.metrics import Metrics
from host_agent.operations import Operation
from host_agent.policy import Decision
from host_agent.refusal_audit import RefusalAudit

log = logging.getLogger(__name__)

# A reply dated this far in the future is not believed.
MAX_CLOCK_SKEW_SECONDS = 60
# Closed approvals (and remembered replies) are kept this long after expiry.
KEEP_CLOSED_SECONDS = 7 * 86400
# How long a followed approval may go unread even if no change is ever heard of.
FOLLOW_POLL_SECONDS = 1.0
# The longest a client may have GET /approvals/{id}?wait= hold its request.
MAX_FOLLOW_SECONDS = 20.0
# Approvers authenticated apart from the message, who may name an approval by its id.
ID_CHANNELS = frozenset({"pam", "admin"})
OPEN = (Status.PENDING, Status.APPROVED)


@dataclass(frozen=True, slots=True)
class ParsedReply:
    """An approver's APPROVE or DENY, its token hashed as the store keeps it."""

    sender: str
    timestamp_ms: int
    approve: bool
    token_hash: str | None
    # A quote-reply or reaction names the approvers' message instead of the token.
    answers_ms: int | None = None


class ApprovalManager:
    def __init__(
        self,
        config: ApprovalConfig,
        store: ApprovalStore,
        audit: AuditLog,
        *,
        notify: Notify | None = None,
        clock: Callable[[], float] = time.time,
        host: str | None = None,
        metrics: Metrics | None = None,
        refusals: RefusalAudit | None = None,
        identity_plugin: IdentityPlugin | None = None,
    ) -> None:
        self.config = config
        # Asked before an approval counts when [approval] identity_plugin is set.
        self.identity_plugin = identity_plugin
        self.store = store
        self.audit = audit
        self.metrics = metrics
        # Refusals of unidentified approvers are bounded per source (see refusal_audit).
        self.refusals = refusals
        self.notify = notify
        self.clock = clock
        self.host = host or socket.gethostname()
        self._notifications: set[asyncio.Task[None]] = set()
        # Approval id -> what wakes the requests following it (a change made here, or a
        # notification from the fleet's database that another host made one).
        self._changes: dict[str, asyncio.Event] = {}

    def reconfigure(self, config: ApprovalConfig) -> None:
        """A reloaded config: new approvers, ttl for new approvals, Signal endpoints."""
        self.config = config
        self.notify = notifier(config)

    # --- the requester's side ---------------------------------------------------

    async def create(
        self,
        who: dict[str, Any],
        operation: Operation,
        decision: Decision,
        reason: str | None,
        unix_user: str,
        *,
        preview: Sequence[str] = (),
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> Approval:
        """Record a pending approval, audit it, and send the token to the approvers, with
        `preview`: what the operation would change, as the adapter's dry run found."""
        token = tokens.new_token()
        now = self.clock()
        approval = Approval(
            id=f"ap-{secrets.token_hex(8)}",
            token_hash=tokens.hash_token(token, self.config.token_secret),
            requester_cn=who["cn"],
            requester_fingerprint=who["fingerprint"],
            requester_unix_user=unix_user,
            operation=operation.name,
            kind=operation.kind,
            resource=operation.resource,
            args=operation.args,
            digest=operation.digest(),
            reason=reason,
            admin_only=decision.admin_only,
            approvals_required=decision.approvals_required,
            created_at=now,
            expires_at=now + self.config.ttl_seconds,
            metadata=metadata,
            host=self.host,
            on_behalf_of=who.get("on_behalf_of"),
        )
        # Audited first: no approval exists that the log does not know of.
        await self._audit("approval_created", approval, request_id=who["request_id"])
        await asyncio.to_thread(self.store.add, approval)
        self._send(approval, token, preview)
        return approval

    async def consume(
        self, approval_id: str, who: dict[str, Any], operation: Operation
    ) -> Approval:
        """Use a granted approval for exactly the operation it was granted for, once, by the
        certificate that asked for it."""
        cn = who["cn"]
        claim = Claim(
            cn, who["fingerprint"], operation.digest(), self.clock(), who.get("on_behalf_of")
        )
        try:
            approval = await self._use(approval_id, claim)
        except ApprovalError as exc:
            await self._record(
                {
                    "event": "approval_refused",
                    "approval_id": approval_id,
                    "cn": cn,
                    "digest": operation.digest(),
                    "code": exc.code,
                }
            )
            raise
        await self._audit("approval_consumed", approval)
        self._follow_up(approval)
        return approval

    async def _use(self, approval_id: str, claim: Claim) -> Approval:
        """The store's one conditional consume; when it refuses, the record says why.

        A record that looks usable after a refusal changed in between (granted just
        then: try once more) or expired on the store's clock, which decides."""
        for _ in range(2):
            used = await asyncio.to_thread(self.store.consume, approval_id, claim)
            if used is not None:
                self.changed(approval_id)
                return used
            current = await asyncio.to_thread(self.store.get, approval_id)
            if current is None:
                raise _not_found()
            _check_usable(current, claim)
        raise _expired()

    async def visible(self, approval_id: str, cn: str) -> Approval:
        """One approval, for its requester or an admin; to anyone else it does not exist."""
        approval = await asyncio.to_thread(self.store.get, approval_id)
        if approval is None or not (approval.requester_cn == cn or self.config.is_admin(cn)):
            raise _not_found()
        return await self._expire_if_due(approval, self.clock())

    async def follow(self, approval_id: str, cn: str, seconds: float) -> Approval:
        """`visible`, once it is no longer pending or after `seconds`, whichever is first:
        a waiting client learns of a decision at once. Woken by a change here or from the
        fleet's database; every FOLLOW_POLL_SECONDS it looks anyway, as notifications can
        be lost."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            approval = await self.visible(approval_id, cn)
            left = deadline - loop.time()
            if approval.status is not Status.PENDING or left <= 0:
                return approval
            changed = self._changes.setdefault(approval_id, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, FOLLOW_POLL_SECONDS)):
                    await changed.wait()

    def changed(self, approval_id: str) -> None:
        """Wake whoever follows `approval_id` (it changed here, or on another host)."""
        event = self._changes.pop(approval_id, None)
        if event is not None:
            event.set()

    async def open_approvals(self, requester_cn: str | None = None) -> list[Approval]:
        """Pending and granted approvals; any found past their expiry are expired first."""
        now = self.clock()
        listed = await asyncio.to_thread(self.store.listing, OPEN, requester_cn)
        current = [await self._expire_if_due(approval, now) for approval in listed]
        return [approval for approval in current if approval.status in OPEN]

    # --- the approver's side ----------------------------------------------------

    async def decide(
        self,
        reference: str,
        approve: bool,
        approver: Approver,
        *,
        approval_id: str | None = None,
        token_hash: str | None = None,
        message_ms: int | None = None,
        **context: Any,
    ) -> Approval:
        """An approver's APPROVE or DENY for the approval `reference` (its token) names.

        `approval_id`, when given (the predecessor's /approve body has it), must be the
        approval the token belongs to. `context` (e.g. the local caller's uid) goes into
        every audit record of the step.
        """
        if approver.channel in ID_CHANNELS and APPROVAL_ID.fullmatch(reference):
            context["named_by"] = "approval_id"  # the audit says how the human named it
        try:
            self._check_channel(approver)
            if message_ms is not None:
                approval = await self._by_message(message_ms)
            elif token_hash is not None:
                approval = await self._by_hash(token_hash)
            else:
                approval = await self._find(reference, approver)
            if approval_id is not None and approval.id != approval_id:
                raise ApprovalError(
                    409,
                    "approval_id_mismatch",
                    "the token belongs to another approval",
                    field="approval_id",
                )
        except ApprovalError as exc:
            await self.refuse(approver, exc.code, **context)
            raise
        refused: dict[str, Any] = {}
        try:
            self._check_approver(approval, approver)
            if approve:
                context |= await self._ask_identity_plugin(approver, approval, refused)
            change = (
                _vote(approver, self.config.person_of, self.clock())
                if approve
                else _deny(approver, self.clock())
            )
            updated = await self._update(approval.id, change)
        except ApprovalError as exc:
            await self._audit(
                "approval_refused",
                approval,
                approver=str(approver),
                code=exc.code,
                **refused,
                **context,
            )
            raise
        event = "approval_denied" if not approve else "approval_vote"
        if updated.status is Status.APPROVED:
            event = "approval_granted"
        await self._audit(event, updated, approver=str(approver), **context)
        self._follow_up(updated)
        return updated

    async def _ask_identity_plugin(
        self, approver: Approver, approval: Approval, refused: dict[str, Any]
    ) -> dict[str, Any]:
        """The plugin's yes as audit fields; its no (with its reason, put in `refused` for
        the audit record) as an ApprovalError."""
        spec = self.config.identity_plugin
        if spec is None:
            return {}
        if self.identity_plugin is None:
            raise ApprovalError(
                503, "identity_plugin_unavailable", "the identity plugin cannot be asked here"
            )
        verdict = await self.identity_plugin.check(spec, approver, approval)
        if not verdict.allowed:
            refused["plugin_reason"] = verdict.reason
            raise ApprovalError(
                403,
                "identity_plugin_denied",
                f"the identity plugin refused this approver: {verdict.reason}",
            )
        return {"identity_plugin": "allowed"}

    async def refuse(self, approver: Approver, code: str, **context: Any) -> None:
        """Audit a refusal that happened before any approval was identified."""
        record = {"event": "approval_refused", "approver": str(approver), "code": code, **context}
        if self.refusals is None:
            await self._record(record)
            return
        if self.metrics is not None:
            self.metrics.approval_event(record["event"])
        await self.refusals.write(str(approver), record)

    async def handle_reply(self, reply: IncomingReply) -> dict[str, Any]:
        """One approver message from Signal: a command, fresh, first seen, then decide."""
        parsed = self.parse_reply(reply)
        if parsed is None:
            return {
                "sender": reply.sender,
                "timestamp_ms": reply.timestamp_ms,
                "outcome": "ignored",
                "code": "not_a_command",
            }
        return await self.apply_reply(parsed)

    def parse_reply(self, reply: IncomingReply) -> ParsedReply | None:
        """The command in a message, its token already hashed (what a fleet's inbox keeps:
        never the token itself); None for anything but APPROVE/DENY TOKEN, or a verdict
        quoting or reacting to an approvers' message."""
        if reply.answers_ms is not None:
            approve = reply.text == "APPROVE"
            return ParsedReply(reply.sender, reply.timestamp_ms, approve, None, reply.answers_ms)
        command = parse_command(reply.text)
        if command is None:
            return None
        verdict, token = command
        token_hash = tokens.hash_token(tokens.normalize(token) or token, self.config.token_secret)
        return ParsedReply(reply.sender, reply.timestamp_ms, verdict == "approve", token_hash)

    async def apply_reply(
        self, reply: ParsedReply, *, deduplicated: bool = False
    ) -> dict[str, Any]:
        """Decide by one parsed reply, if fresh and (unless a fleet's inbox already
        deduplicated it) never seen before."""
        outcome: dict[str, Any] = {"sender": reply.sender, "timestamp_ms": reply.timestamp_ms}
        approver = Approver("signal", reply.sender)
        now = self.clock()
        age = now - reply.timestamp_ms / 1000
        try:
            if age > self.config.ttl_seconds or age < -MAX_CLOCK_SKEW_SECONDS:
                raise ApprovalError(400, "stale_reply", "the reply is older than the approval ttl")
            if not deduplicated and not await asyncio.to_thread(
                self.store.first_sighting, reply.sender, reply.timestamp_ms, now
            ):
                raise ApprovalError(409, "reply_replayed", "this message was already counted")
        except ApprovalError as exc:
            await self.refuse(approver, exc.code, token_hash=reply.token_hash)
            return {**outcome, "outcome": "refused", "code": exc.code}
        try:
            approval = await self.decide(
                "",
                reply.approve,
                approver,
                token_hash=reply.token_hash,
                message_ms=reply.answers_ms,
            )
        except ApprovalError as exc:
            return {**outcome, "outcome": "refused", "code": exc.code}
        return {**outcome, "outcome": approval.status.value, "approval_id": approval.id}

    async def _find(self, reference: str, approver: Approver) -> Approval:
        """By token. A person authenticated on the host (PAM) or by an admin certificate may
        name the approval id instead: the token only travels in the Signal message, which
        may never have gone out. A Signal reply must carry the token, the proof its sender
        read the message (the id is the requester's to know)."""
        if approver.channel in ID_CHANNELS and APPROVAL_ID.fullmatch(reference):
            approval = await asyncio.to_thread(self.store.get, reference)
            if approval is None:
                raise _not_found()
            return approval
        return await self._by_token(reference)

    async def _by_token(self, token_text: str) -> Approval:
        token = tokens.normalize(token_text)
        if token is None:
            raise _unknown_token()
        return await self._by_hash(tokens.hash_token(token, self.config.token_secret))

    async def _by_message(self, message_ms: int) -> Approval:
        """The one approval whose approvers' message has this timestamp (two would make
        the answer ambiguous: refused as if none)."""
        found = await asyncio.to_thread(self.store.by_message, message_ms)
        if len(found) != 1:
            raise ApprovalError(404, "unknown_message", "no approval's message has this timestamp")
        return found[0]

    async def _by_hash(self, token_hash: str) -> Approval:
        approval = await asyncio.to_thread(self.store.by_token, token_hash)
        if approval is None:
            raise _unknown_token()
        return approval

    async def check_channel(self, approver: Approver) -> None:
        """Refuse (audited) an approver who may approve nothing at all."""
        try:
            self._check_channel(approver)
        except ApprovalError as exc:
            await self.refuse(approver, exc.code)
            raise

    def _check_channel(self, approver: Approver) -> None:
        """Whether this person may approve anything at all."""
        if approver.channel == "signal" and not self.config.may_approve_on_signal(approver.name):
            raise ApprovalError(
                403, "approver_not_allowed", "this number is not in [approval] allowed_approvers"
            )
        if approver.channel == "admin" and not self.config.is_admin(approver.name):
            raise ApprovalError(
                403, "approver_not_allowed", "only a client whose CN matches admin_cn_pattern"
            )

    def _check_approver(self, approval: Approval, approver: Approver) -> None:
        """Whether this person may approve this approval."""
        # The certificate that asked and, through a proxy, the agent it asked for.
        names = {approval.requester_cn, approval.requester_unix_user}
        requester = {
            self.config.person_of(f"admin:{approval.requester_cn}"),
            self.config.person_of(f"pam:{approval.requester_unix_user}"),
        }
        if approval.on_behalf_of is not None:
            names.add(approval.on_behalf_of)
            requester.add(self.config.person_of(f"admin:{approval.on_behalf_of}"))
        if approver.name in names or self.config.person_of(str(approver)) in requester:
            raise ApprovalError(403, "self_approval", "a requester cannot approve its own request")
        if approval.admin_only and approver.channel == "signal":
            raise ApprovalError(
                403, "admin_only", "this approval needs an admin (POST /approve or the host)"
            )

    def view(self, approval: Approval, viewer_cn: str) -> dict[str, Any]:
        """An approval as `viewer_cn` (its requester, or an admin) sees it, with who can
        decide it now. Only an admin sees who decided in full; a requester is an automated
        agent and sees approvers as `asked` shows them: a channel, a number's last digits."""
        shown = approval.public()
        if not self.config.is_admin(viewer_cn):
            shown["approvers"] = [masked_identity(a) for a in approval.approvers]
            if approval.decided_by is not None:
                shown["decided_by"] = masked_identity(approval.decided_by)
        return {**shown, "asked": self.asked(approval)}

    def asked(self, approval: Approval) -> list[dict[str, str]]:
        """The channels through which a human can decide `approval` under the live config.

        Signal numbers are shown by their last digits only: the requester is an automated
        agent, and knowing whom it waits for must not hand it the admins' numbers.
        """
        settings = self.config
        channels = []
        if self.notify is not None and settings.allowed_approvers and not approval.admin_only:
            numbers = ", ".join(_last_digits(number) for number in settings.allowed_approvers)
            channels.append({"channel": "signal", "who": f"Signal approvers {numbers}"})
        if settings.admin_cn_pattern is not None:
            channels.append(
                {
                    "channel": "admin",
                    "who": f"an admin client (CN matching {settings.admin_cn_pattern!r}) "
                    f'with POST /approve {{"approval_id": "{approval.id}"}}',
                }
            )
        if settings.local_socket is not None and settings.approvers_group is not None:
            channels.append(
                {
                    "channel": "host",
                    "who": f"members of group {settings.approvers_group!r} on {self.host} "
                    "with `host-agent approve`",
                }
            )
        return channels

    # --- housekeeping -----------------------------------------------------------

    async def sweep(self) -> list[Approval]:
        """Expire what is due (audited), and forget long-closed records."""
        now = self.clock()
        expired = []
        for approval in await asyncio.to_thread(self.store.listing, OPEN):
            current = await self._expire_if_due(approval, now)
            if current.status is Status.EXPIRED:
                expired.append(current)
        await asyncio.to_thread(self.store.purge, now - KEEP_CLOSED_SECONDS)
        return expired

    async def _expire_if_due(self, approval: Approval, now: float) -> Approval:
        """Expire `approval` if its time is up (audited once, whoever gets there first)."""
        if not approval.is_due(now):
            return approval
        try:
            expired = await self._update(approval.id, _expire(now))
        except _AlreadyClosed as closed:
            return closed.current
        await self._audit("approval_expired", expired)
        self._follow_up(expired)
        return expired

    async def drain(self) -> None:
        """Wait for notifications still being sent (at shutdown)."""
        if self._notifications:
            await asyncio.gather(*self._notifications, return_exceptions=True)

    # --- internals --------------------------------------------------------------

    def _send(self, approval: Approval, token: str, preview: Sequence[str]) -> None:
        if self.notify is None or not self.config.allowed_approvers:
            log.warning("approval %s created but no approver is reachable by Signal", approval.id)
            return
        self._background(
            self._notify(self.notify, approval, message(approval, token, self.host, preview))
        )

    def _background(self, sending: Coroutine[Any, Any, None]) -> None:
        """Send without holding up the request; `drain` waits for what is still going."""
        task = asyncio.create_task(sending)
        self._notifications.add(task)
        task.add_done_callback(self._notifications.discard)

    def _follow_up(self, approval: Approval) -> None:
        """Tell the approvers who were asked what became of `approval` (decided, expired,
        used), when [approval] notify_outcomes is on."""
        notify = self.notify
        if notify is None or not self.config.allowed_approvers or not self.config.notify_outcomes:
            return
        text = outcome_message(approval, self.host, self._name_for_approvers)
        if text is not None:
            self._background(self._tell(notify, approval, text))

    def _name_for_approvers(self, identity: str) -> str:
        """A person's name when configured; a Signal number by its last digits only."""
        named = self.config.person_of(identity)
        return masked_identity(named) if named.startswith("signal:") else named

    async def _tell(self, notify: Notify, approval: Approval, text: str) -> None:
        try:
            await notify(text, list(self.config.allowed_approvers))
        except Exception as exc:  # nothing depends on it: the outcome is in the audit log
            log.error("approval %s: telling approvers the outcome failed: %s", approval.id, exc)
            if self.metrics is not None:
                self.metrics.signal_send_failures.inc()

    async def _notify(self, notify: Notify, approval: Approval, text: str) -> None:
        recipients = list(self.config.allowed_approvers)
        try:
            receipt = await notify(text, recipients)
        except Exception as exc:  # the approval stays valid: an admin can still use /approve
            log.error("approval %s: notifying approvers failed: %s", approval.id, exc)
            await self._audit("approval_notify_failed", approval, error=str(exc))
            return
        sent_ms = getattr(receipt, "timestamp_ms", None)
        if isinstance(sent_ms, int):
            # What a quote-reply or a reaction to this message will name.
            approval = await self._update(approval.id, lambda a: a.evolve(message_ms=sent_ms))
        await self._audit("approval_notified", approval, recipients=recipients)

    async def _update(self, approval_id: str, change: Change) -> Approval:
        try:
            updated = await asyncio.to_thread(self.store.update, approval_id, change)
        except KeyError:
            raise _not_found() from None
        self.changed(approval_id)
        return updated

    async def _record(self, record: dict[str, Any]) -> None:
        """Every step is audited, then counted."""
        await self.audit.write(record)
        if self.metrics is not None:
            self.metrics.approval_event(record["event"])

    async def _audit(self, event: str, approval: Approval, **fields: Any) -> None:
        await self._record(
            {
                "event": event,
                "approval_id": approval.id,
                "token_hash": approval.token_hash,
                "cn": approval.requester_cn,
                **({"on_behalf_of": approval.on_behalf_of} if approval.on_behalf_of else {}),
                "operation": approval.operation,
                "resource": approval.resource,
                "digest": approval.digest,
                "status": approval.status.value,
                "approvers": list(approval.approvers),
                "expires_at": timestamp(approval.expires_at),
                **fields,
            }
        )


def message(
    approval: Approval,
    token: str,
    host: str,
    preview: Sequence[str] = (),
    *,
    preview_limit: int = 20,
) -> str:
    """What approvers read: everything needed to decide, and how to answer.

    `preview` is capped so a recursive destroy of a large tree stays one readable message.
    """
    lines = [
        f"host-agent approval on {host}",
        f"Requester: {approval.requester_cn}"
        + (f" on behalf of {approval.on_behalf_of}" if approval.on_behalf_of else ""),
        f"Operation: {approval.operation}",
        f"Resource: {approval.resource or '(none)'}",
        f"Arguments: {' '.join(approval.args)}",
        f"Digest: {approval.digest}",
        f"Expires: {timestamp(approval.expires_at)}",
    ]
    # The requester's own words, set off so that they cannot pass for the message's lines
    # (runs of spaces are folded: no padding to wrap a fake line onto the screen).
    if approval.reason:
        lines += [
            "",
            "Reason given by the requester (unchecked):",
            f"> {' '.join(approval.reason.split())}",
        ]
    else:
        lines += ["", "Reason given by the requester: (none)"]
    if approval.metadata:
        lines += ["", "Labels given by the requester (unchecked):"]
        lines += [f"> {key}: {' '.join(value.split())}" for key, value in approval.metadata]
    if approval.approvals_required > 1:
        lines.append(f"Needs {approval.approvals_required} different approvers.")
    if preview:
        lines += ["", "Would affect:", *(f"  {line}" for line in preview[:preview_limit])]
        if len(preview) > preview_limit:
            lines.append(f"  ... and {len(preview) - preview_limit} more")
    lines += ["", f"Reply APPROVE {token} to allow it, or DENY {token} to refuse."]
    return "\n".join(lines)


def masked_identity(identity: str) -> str:
    """`signal:…0001`, or just the channel (`admin`, `pam`, `person`) of an approver."""
    channel, _, name = identity.partition(":")
    return f"signal:{_last_digits(name)}" if channel == "signal" else channel


def _last_digits(number: str) -> str:
    return f"…{number[-4:]}" if len(number) > 4 else "…"


def _unknown_token() -> ApprovalError:
    return ApprovalError(404, "unknown_token", "no approval has this token", field="token")


def _not_found() -> ApprovalError:
    return ApprovalError(404, "approval_not_found", "no such approval", field="approval_id")


def _open(approval: Approval, now: float, *, also: Status | None = None) -> None:
    """Refuse a change to an approval that is no longer waiting for a human (or in the
    state `also`)."""
    if approval.is_due(now) or approval.status is Status.EXPIRED:
        raise _expired()
    if approval.status not in (Status.PENDING, also):
        raise ApprovalError(
            409, f"approval_{approval.status.value}", f"the approval is {approval.status.value}"
        )


def _vote(approver: Approver, person_of: Callable[[str], str], now: float) -> Change:
    """One more approval; the quorum counts people (see [[approval.people]]), so one person
    answering on two channels counts once."""

    def change(approval: Approval) -> Approval:
        _open(approval, now)
        voted = {person_of(earlier) for earlier in approval.approvers}
        if person_of(str(approver)) in voted:
            raise ApprovalError(
                409, "already_voted", "each approver counts once, whichever channel they use"
            )
        approvers = (*approval.approvers, str(approver))
        if len(voted) + 1 < approval.approvals_required:
            return approval.evolve(approvers=approvers)
        return approval.evolve(
            approvers=approvers, status=Status.APPROVED, decided_by=str(approver), decided_at=now
        )

    return change


def _deny(approver: Approver, now: float) -> Change:
    """A deny beats an approve: it ends a pending approval, and withdraws a granted one
    that has not been used (the store's consume requires it still granted)."""

    def change(approval: Approval) -> Approval:
        _open(approval, now, also=Status.APPROVED)
        return approval.evolve(status=Status.DENIED, decided_by=str(approver), decided_at=now)

    return change


def _check_usable(approval: Approval, claim: Claim) -> None:
    """Raise why `claim` may not use `approval`: it is someone else's (not found), another
    certificate's or another operation's, expired, or not (or no longer) granted."""
    if approval.requester_cn != claim.requester_cn:
        raise _not_found()
    # Another certificate with the same CN (a renewal, or a second holder) did not ask
    # for it: what a human approved was this certificate's request.
    if approval.requester_fingerprint != claim.fingerprint:
        raise ApprovalError(
            403,
            "approval_certificate_mismatch",
            "the approval was requested with another certificate for this CN; "
            "ask again with this one",
            field="approval_id",
        )
    if approval.on_behalf_of != claim.on_behalf_of:
        raise ApprovalError(
            403,
            "approval_mismatch",
            "the approval was granted for a request on behalf of another agent (or none)",
            field="approval_id",
        )
    if approval.digest != claim.digest:
        raise ApprovalError(
            403,
            "approval_mismatch",
            "the approval was granted for a different operation (kind, resource or args)",
            field="approval_id",
        )
    if approval.is_due(claim.now) or approval.status is Status.EXPIRED:
        raise _expired()
    if approval.status is not Status.APPROVED:
        status = approval.status.value
        raise ApprovalError(
            403 if approval.status is Status.DENIED else 409,
            f"approval_{status}",
            f"the approval is {status}",
            field="approval_id",
        )


def _expired() -> ApprovalError:
    return ApprovalError(410, "approval_expired", "the approval has expired")


class _AlreadyClosed(Exception):
    """Another caller expired (or closed) the approval first: nothing to change or audit."""

    def __init__(self, current: Approval) -> None:
        self.current = current


def _expire(now: float) -> Change:
    def change(approval: Approval) -> Approval:
        if not approval.is_due(now):
            raise _AlreadyClosed(approval)
        return approval.evolve(status=Status.EXPIRED)

    return change
