"""The one exception tree of host-agent.

    HostAgentError
    ├── ConfigError            config file unreadable or invalid (all problems at once)
    ├── CertificateError       certificate tooling refused or failed
    ├── RequestError           the request itself is wrong (HTTP 4xx)
    │   ├── ValidationError    a field failed validation (400, names the field)
    │   │   └── TargetRefused  a valid name no config may act on, or this one does not (403)
    │   ├── UnknownKind        no adapter for this kind (404)
    │   ├── Unauthenticated    no verified client certificate (401)
    │   ├── PolicyDenied       policy refused the operation (403)
│   ├── AdapterDisabled    the kind is switched off in the config (403)
│   └── ApprovalError      an approval step was refused (status per case)
    ├── AuditUnavailable       the audit log cannot be written: fail closed (503)
    │   └── ResultUnaudited    the operation ran but its result record failed (503)
    ├── RunnerError            the wrapper could not be started or was killed (502/504)
    └── OperationFailed        the wrapper ran and exited non-zero (status per adapter)

Errors carry data; `host_agent.app` maps each family to a status and a stable
error code in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class HostAgentError(Exception):
    """Root of every error host-agent raises on purpose."""

    status = 500
    code = "internal_error"
    # Set by the request path so the error reply names the audited request.
    request_id: str | None = None
    # Refused before the request's body was read: the reply closes the connection, so
    # that a client never sends its next request into what the server will not read.
    unread_body: bool = False

    def public_message(self) -> str:
        """What a client is told; the log keeps `str(self)`, which may name host paths."""
        return str(self)


class ConfigError(HostAgentError):
    """A config file could not be loaded; `problems` lists every issue found."""

    code = "config_invalid"

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"{source}: invalid configuration:\n{lines}")


class CertificateError(HostAgentError):
    """A certificate operation was refused (existing file, unknown CN, ...)."""

    code = "certificate_error"


class RequestError(HostAgentError):
    """The caller's request cannot be served as sent."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.message = message
        self.field = field
        super().__init__(message)


class ValidationError(RequestError):
    """One field of the request failed validation."""

    def __init__(self, field: str, reason: str, *, code: str = "invalid_argument") -> None:
        super().__init__(f"{field}: {reason}", field=field)
        self.code = code
        self.reason = reason


class TargetRefused(ValidationError):
    """A well-formed target that is refused: built in (root-equivalent, protected) or
    outside the adapter's allowlist. Nothing runs."""

    status = 403


class UnknownKind(RequestError):
    """No adapter is registered for the requested kind."""

    status = 404
    code = "unknown_kind"

    def __init__(self, kind: str) -> None:
        super().__init__(f"no adapter for kind {kind!r}", field="kind")
        self.kind = kind


class Unauthenticated(RequestError):
    """The connection carries no verified client certificate."""

    status = 401
    code = "unauthenticated"


class PolicyDenied(RequestError):
    """Policy refused the operation; `code` says why in a stable form."""

    status = 403

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class AdapterDisabled(RequestError):
    """The operation's kind is switched off in this agent's configuration."""

    status = 403
    code = "adapter_disabled"

    def __init__(self, kind: str, how: str) -> None:
        super().__init__(f"{kind} operations are disabled on this agent; {how}", field="kind")


class ApprovalError(RequestError):
    """An approval step was refused: unknown, wrong state, wrong person, wrong operation."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.status = status
        self.code = code


class AuditUnavailable(HostAgentError):
    """The audit record could not be made durable, so nothing may run."""

    status = 503
    code = "audit_unavailable"

    def public_message(self) -> str:
        return "the audit log cannot be written; nothing runs until it can"


class ResultUnaudited(AuditUnavailable):
    """The operation ran, but the record of its result could not be written."""

    code = "result_unaudited"

    def public_message(self) -> str:
        # The caller must learn that it ran; only the cause (which names the log) stays out.
        ran, _, _cause = str(self).partition(": ")
        return ran


class CrossSiteRequest(RequestError):
    """A browser's request (it names an Origin, or another site): a page must never be
    able to drive an admin's browser, which holds the admin's certificate."""

    status = 403
    code = "cross_site_request"


class RunnerError(HostAgentError):
    """The wrapper could not be run to completion."""

    status = 502
    code = "runner_failed"

    def __init__(
        self,
        message: str,
        argv: Sequence[str],
        *,
        timed_out: bool = False,
        killed_as_root: bool = False,
        exit_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.argv = tuple(argv)
        self.timed_out = timed_out
        # Whether the wrapper's root-side timeout confirmed the kill (exit_code 124/137).
        self.killed_as_root = killed_as_root
        self.exit_code = exit_code
        if timed_out:
            self.status = 504
            self.code = "operation_timeout"

    def public_message(self) -> str:
        """The message with the host's paths of sudo and the wrapper cut to their names."""
        message = str(self)
        for part in self.argv[:4]:
            if part.startswith("/"):
                message = message.replace(part, part.rsplit("/", 1)[-1])
        return message

    def audit_fields(self) -> dict[str, Any]:
        """What the audit record says happened, beyond the error code and message."""
        if not self.timed_out:
            return {}
        fields: dict[str, Any] = {"timed_out": True, "killed_as_root": self.killed_as_root}
        if self.exit_code is not None:
            fields["exit_code"] = self.exit_code
        return fields


class OperationFailed(HostAgentError):
    """The operation ran and failed; `result` is returned to the caller with the error."""

    def __init__(self, status: int, code: str, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.result = result
