"""The wire format, with no I/O: what each call sends, how answers and errors are read,
and what an approval's state means to a waiting requester. Both clients use only this."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from host_agent import strict_json
from host_agent.client.errors import (
    ApprovalConsumed,
    ApprovalDenied,
    ApprovalExpired,
    BadResponse,
    ClientError,
    RateLimited,
    StillPending,
    error_class,
)
from host_agent.client.request import OpRequest
from host_agent.client.results import (
    ApprovalState,
    ApprovalStatus,
    ApprovalTicket,
    Asked,
    Decision,
    DryRun,
    Health,
    OperationResult,
    at_time,
)

T = TypeVar("T")
P = TypeVar("P", bound=ApprovalTicket)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One HTTP exchange: what to send, and how to read a successful answer."""

    method: str
    path: str
    parse: Callable[[Any], T]
    body: dict[str, Any] | None = None


def run_call(request: OpRequest, pending: Callable[..., P]) -> Call[OperationResult | DryRun | P]:
    """`POST /host/op`; a 202 becomes `pending(**ticket fields)`, the caller's handle type."""

    def parse(payload: Any) -> OperationResult | DryRun | P:
        fields = Fields(payload, "/host/op")
        if fields.payload.get("dry_run") is True:
            return _dry_run(fields)
        if fields.payload.get("status") == "pending":
            return pending(**_ticket(fields, request))
        return operation_result(fields)

    return Call("POST", "/host/op", parse, request.body())


def resubmit_call(request: OpRequest, approval_id: str) -> Call[OperationResult]:
    """`POST /host/op` with the granted approval: only a result is a valid answer."""

    def parse(payload: Any) -> OperationResult:
        fields = Fields(payload, "/host/op")
        if "exit_code" not in fields.payload:
            raise BadResponse(f"resubmitting under {approval_id} did not answer a result")
        return operation_result(fields)

    return Call("POST", "/host/op", parse, request.approved(approval_id).body())


def approval_call(approval_id: str, wait: float = 0.0) -> Call[ApprovalStatus]:
    """`GET /approvals/{id}`; with `wait`, the agent answers once the approval is no
    longer pending, or after that many seconds (at most MAX_WAIT)."""
    # Quoted as one path segment: an id never reaches another route.
    path = f"/approvals/{quote(approval_id, safe='')}"
    if wait > 0:
        path += f"?wait={min(wait, MAX_WAIT):.3f}"
    return Call("GET", path, lambda payload: approval_status(Fields(payload, path)))


def follow_call(approval_id: str, pending: Callable[..., P]) -> Call[P]:
    """`GET /approvals/{id}` as a handle to wait on, for an approval asked for earlier,
    perhaps by another process. The request is rebuilt from the approval, which records
    exactly the operation it may run; `request_id` is empty, the status does not carry it."""
    status_call = approval_call(approval_id)

    def parse(payload: Any) -> P:
        status = status_call.parse(payload)
        return pending(
            request_id="",
            operation=status.operation,
            resource=status.resource,
            approval_id=status.approval_id,
            digest=status.digest,
            expires_at=status.expires_at,
            approvals_required=status.approvals_required,
            admin_only=status.admin_only,
            message=f"{status.operation} on {status.resource} is {status.status.value}",
            request=OpRequest.of(status.kind, status.resource, status.args, status.reason),
            asked=status.asked,
        )

    return Call("GET", status_call.path, parse)


def pending_call() -> Call[list[ApprovalStatus]]:
    def parse(payload: Any) -> list[ApprovalStatus]:
        listed = Fields(payload, "/pending").get("approvals", list)
        return [approval_status(Fields(item, "/pending")) for item in listed]

    return Call("GET", "/pending", parse)


def health_call() -> Call[Health]:
    def parse(payload: Any) -> Health:
        fields = Fields(payload, "/health")
        return Health(
            status=fields.get("status", str),
            problems=fields.strings("problems"),
            version=fields.get("version", str),
            adapters=fields.strings("adapters"),
            details=fields.payload,
        )

    return Call("GET", "/health", parse)


def manifest_call() -> Call[dict[str, Any]]:
    return Call("GET", "/v1/tools/manifest", lambda payload: Fields(payload, "manifest").payload)


def decode(response: httpx.Response) -> Any:
    """The JSON of a successful answer; an error answer is raised as its `ClientError`."""
    if response.status_code >= 400:
        raise error_from(response)
    try:
        return strict_json.loads(response.content)
    except strict_json.NotJson as exc:
        raise BadResponse(
            f"HTTP {response.status_code} from {response.url.path} is not JSON",
            status=response.status_code,
        ) from exc


def error_from(response: httpx.Response) -> ClientError:
    """The typed error for an error answer, with everything the agent said about it."""
    try:
        payload = strict_json.loads(response.content)
    except strict_json.NotJson:
        payload = None
    body: dict[str, Any] = payload if isinstance(payload, dict) else {}
    error: dict[str, Any] = body["error"] if isinstance(body.get("error"), dict) else {}
    code, message, field = (
        value if isinstance(value, str) else None
        for value in (error.get("code"), error.get("message"), error.get("field"))
    )
    request_id = body.get("request_id")
    result = body.get("result")
    exc = error_class(response.status_code, code)(
        message or f"HTTP {response.status_code} {response.reason_phrase}",
        status=response.status_code,
        code=code,
        field=field,
        request_id=request_id if isinstance(request_id, str) else None,
        result=_failed_result(result),
    )
    if isinstance(exc, RateLimited):
        retry_after = response.headers.get("Retry-After", "")
        exc.retry_after = int(retry_after) if retry_after.isdigit() else None
    return exc


# The agent holds a GET /approvals/{id}?wait= at most this long (MAX_FOLLOW_SECONDS).
MAX_WAIT = 20.0


class Patience:
    """How long `wait()` keeps polling an approval, and what each state means to it."""

    def __init__(
        self,
        timeout: float | None,
        poll_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must not be negative")
        self.poll_interval = poll_interval
        self.clock = clock
        self.deadline = None if timeout is None else clock() + timeout

    def next_poll(self, approval: ApprovalStatus) -> float | None:
        """Seconds to sleep before polling again, or None once approved (resubmit now).

        Raises when waiting is over: denied, expired, already used, or out of patience.
        """
        name = approval.approval_id
        if approval.status is ApprovalState.APPROVED:
            return None
        if approval.status is ApprovalState.DENIED:
            raise ApprovalDenied(
                f"{name} was denied by {approval.decided_by}{at_time(approval.decided_at)}",
                approval=approval,
            )
        if approval.status is ApprovalState.EXPIRED:
            raise ApprovalExpired(
                f"{name} expired at {approval.expires_at.isoformat()}", approval=approval
            )
        if approval.status is ApprovalState.CONSUMED:
            raise ApprovalConsumed(
                f"{name} was already used{at_time(approval.consumed_at)}", approval=approval
            )
        if self.deadline is None:
            return self.poll_interval
        left = self.deadline - self.clock()
        if left <= 0:
            raise StillPending(
                f"{name} is still pending; it expires at {approval.expires_at.isoformat()}",
                approval=approval,
            )
        return min(self.poll_interval, left)


def operation_result(fields: Fields) -> OperationResult:
    return OperationResult(
        request_id=fields.get("request_id", str),
        operation=fields.get("operation", str),
        resource=fields.get("resource", str),
        exit_code=fields.get("exit_code", int),
        stdout=fields.get("stdout", str),
        stderr=fields.get("stderr", str),
        truncated=fields.get("truncated", bool),
        duration_ms=fields.number("duration_ms"),
        data=fields.get("data", dict) if "data" in fields.payload else {},
    )


def approval_status(fields: Fields) -> ApprovalStatus:
    try:
        state = ApprovalState(fields.get("status", str))
    except ValueError as exc:
        raise BadResponse(f"{fields.what}: unknown approval status") from exc
    return ApprovalStatus(
        approval_id=fields.get("approval_id", str),
        status=state,
        operation=fields.get("operation", str),
        kind=fields.get("kind", str),
        resource=fields.get("resource", str),
        args=fields.strings("args"),
        digest=fields.get("digest", str),
        reason=fields.optional("reason", str),
        requester=fields.get("requester", str),
        admin_only=fields.get("admin_only", bool),
        approvals_required=fields.get("approvals_required", int),
        approvers=fields.strings("approvers"),
        decided_by=fields.optional("decided_by", str),
        created_at=fields.time("created_at"),
        expires_at=fields.time("expires_at"),
        decided_at=fields.optional_time("decided_at"),
        consumed_at=fields.optional_time("consumed_at"),
        asked=_asked(fields),
    )


def _dry_run(fields: Fields) -> DryRun:
    decision = Fields(fields.get("decision", dict), f"{fields.what} decision")
    return DryRun(
        request_id=fields.get("request_id", str),
        operation=fields.get("operation", str),
        resource=fields.get("resource", str),
        decision=Decision(
            effect=decision.get("effect", str),
            code=decision.get("code", str),
            reason=decision.get("reason", str),
            rule=decision.get("rule", str),
            admin_only=decision.get("admin_only", bool),
            approvals_required=decision.get("approvals_required", int),
        ),
        argv=fields.strings("argv"),
        digest=fields.get("digest", str),
    )


def _ticket(fields: Fields, request: OpRequest) -> dict[str, Any]:
    return {
        "request_id": fields.get("request_id", str),
        "operation": fields.get("operation", str),
        "resource": fields.get("resource", str),
        "approval_id": fields.get("approval_id", str),
        "digest": fields.get("digest", str),
        "expires_at": fields.time("expires_at"),
        "approvals_required": fields.get("approvals_required", int),
        "admin_only": fields.get("admin_only", bool),
        "message": fields.get("message", str),
        "request": request,
        "asked": _asked(fields),
    }


def _asked(fields: Fields) -> tuple[Asked, ...]:
    """Who can decide; agents older than this field do not say (empty)."""
    if fields.payload.get("asked") is None:
        return ()
    channels = [Fields(entry, f"{fields.what} asked") for entry in fields.get("asked", list)]
    return tuple(Asked(entry.get("channel", str), entry.get("who", str)) for entry in channels)


def _failed_result(result: Any) -> OperationResult | None:
    """The output of a run that failed; an error is reported even if this part is malformed."""
    if not isinstance(result, dict):
        return None
    try:
        return operation_result(Fields(result, "error result"))
    except BadResponse:
        return None


class Fields:
    """Typed access to one JSON object of an answer; a wrong shape is a `BadResponse`."""

    def __init__(self, payload: Any, what: str) -> None:
        if not isinstance(payload, dict):
            raise BadResponse(f"{what}: expected a JSON object")
        self.payload: dict[str, Any] = payload
        self.what = what

    def get(self, key: str, kind: type[T]) -> T:
        value = self.payload.get(key)
        # bool is an int in Python, never in JSON.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise BadResponse(f"{self.what}: {key} is missing or not a {kind.__name__}")
        return value

    def optional(self, key: str, kind: type[T]) -> T | None:
        return None if self.payload.get(key) is None else self.get(key, kind)

    def number(self, key: str) -> float:
        value = self.payload.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadResponse(f"{self.what}: {key} is missing or not a number")
        return float(value)

    def strings(self, key: str) -> tuple[str, ...]:
        values = self.get(key, list)
        if not all(isinstance(value, str) for value in values):
            raise BadResponse(f"{self.what}: {key} is not a list of strings")
        return tuple(values)

    def time(self, key: str) -> dt.datetime:
        try:
            return dt.datetime.fromisoformat(self.get(key, str))
        except ValueError as exc:
            raise BadResponse(f"{self.what}: {key} is not an ISO 8601 time") from exc

    def optional_time(self, key: str) -> dt.datetime | None:
        return None if self.payload.get(key) is None else self.time(key)
