"""Everything the client raises: one root, one class per meaning, the server's code kept.

    ClientError                  .status .code .message .field .request_id .result .approval
    ├── ClientConfigError        the client's own settings are missing or wrong
    ├── TransportError           no HTTP answer at all: connection, TLS, timeout
    │   ├── CertificateRejected  the agent hung up unanswered: it refused our certificate
    │   └── TransportTimeout     no answer in time (a mutating operation may still have run)
    ├── BadResponse              an answer that is not in the documented shape
    ├── InvalidRequest           400, 405, 413, and 404 unknown_kind
    ├── Refused                  401, 403 (policy, wrapper_not_permitted, ...)
    │   └── ApprovalDenied       a human said no
    ├── NotFound                 404
    ├── Conflict                 409
    │   └── ApprovalConsumed     the approval was already used
    ├── ApprovalExpired          410: nobody answered in time, or it was not used in time
    ├── RateLimited              429, .retry_after
    ├── OperationFailed          500, 502; .result when the operation ran
    ├── Unavailable              503 (result_unaudited: it ran, see the message)
    ├── OperationTimedOut        504: the agent killed the operation
    └── StillPending             wait() gave up; the approval is still usable (a TimeoutError)

The class follows the server's stable `code` where a code has its own meaning, and
the HTTP status otherwise, so a code this client does not know still lands in the
right family.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from host_agent.client.results import ApprovalStatus, OperationResult


class ClientError(Exception):
    """Root of every error the client raises.

    `status` is the HTTP status, or None when no answer came or the client concluded
    it itself (for example from polling an approval). `approval` is the approval the
    error is about, when it was learnt by polling.
    """

    default_code = "client_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        field: str | None = None,
        request_id: str | None = None,
        result: OperationResult | None = None,
        approval: ApprovalStatus | None = None,
    ) -> None:
        self.message = message
        self.status = status
        self.code = code or self.default_code
        self.field = field
        self.request_id = request_id
        self.result = result
        self.approval = approval
        super().__init__(message)

    def __str__(self) -> str:
        where = f" (request {self.request_id})" if self.request_id else ""
        return f"{self.code}: {self.message}{where}"


class ClientConfigError(ClientError):
    """The client cannot be set up; `problems` lists every issue found, each naming its source."""

    default_code = "client_config_invalid"

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"host-agent client configuration:\n{lines}")

    def __str__(self) -> str:
        return self.message


class TransportError(ClientError):
    """No HTTP answer: the connection or the TLS handshake failed, or nothing came back."""

    default_code = "transport_error"


class CertificateRejected(TransportError):
    """The agent closed the connection without answering, as it does when it refuses the
    client certificate (revoked, expired, not yet valid, or from another CA)."""

    default_code = "certificate_rejected"


class TransportTimeout(TransportError, TimeoutError):
    """No answer within the client's timeout."""

    default_code = "timeout"


class BadResponse(ClientError):
    """The agent answered something this client cannot read: a version mismatch or not the agent."""

    default_code = "bad_response"


class InvalidRequest(ClientError):
    """The request is wrong as sent and will not succeed if repeated."""

    default_code = "bad_request"


class Refused(ClientError):
    """Authentication, policy, an approval rule or a wrapper's allowlist refused it."""

    default_code = "forbidden"


class ApprovalDenied(Refused):
    """A human denied the approval."""

    default_code = "approval_denied"


class NotFound(ClientError):
    """The thing named (dataset, unit, approval, route, ...) does not exist or is not yours."""

    default_code = "not_found"


class Conflict(ClientError):
    """The host's state or the approval's state does not allow it now."""

    default_code = "conflict"


class ApprovalConsumed(Conflict):
    """The approval was already used; each approval runs its operation once."""

    default_code = "approval_consumed"


class ApprovalExpired(ClientError):
    """The approval ran out of time before it was decided or used."""

    default_code = "approval_expired"


class RateLimited(ClientError):
    """Too many requests of this class; `retry_after` is the agent's advice in seconds."""

    default_code = "rate_limited"
    retry_after: int | None = None


class OperationFailed(ClientError):
    """The operation (or the machinery to run it) failed; `result` holds its output if it ran."""

    default_code = "operation_failed"


class Unavailable(ClientError):
    """The agent could not audit: nothing ran, or (`result_unaudited`) it ran unrecorded."""

    default_code = "unavailable"


class OperationTimedOut(ClientError):
    """The agent killed the operation after its configured timeout."""

    default_code = "operation_timeout"


class StillPending(ClientError, TimeoutError):
    """`wait()` reached its timeout; `approval` is the last status seen, still usable."""

    default_code = "still_pending"


_BY_CODE: dict[str, type[ClientError]] = {
    "unknown_kind": InvalidRequest,
    "approval_denied": ApprovalDenied,
    "approval_consumed": ApprovalConsumed,
}

_BY_STATUS: dict[int, type[ClientError]] = {
    400: InvalidRequest,
    401: Refused,
    403: Refused,
    404: NotFound,
    405: InvalidRequest,
    409: Conflict,
    410: ApprovalExpired,
    413: InvalidRequest,
    429: RateLimited,
    500: OperationFailed,
    502: OperationFailed,
    503: Unavailable,
    504: OperationTimedOut,
}


def error_class(status: int, code: str | None) -> type[ClientError]:
    """The class for an error answer: by code where it matters, else by status."""
    if code in _BY_CODE:
        return _BY_CODE[code]
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return OperationFailed if status >= 500 else InvalidRequest
