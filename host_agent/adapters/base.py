"""What every adapter shares: the interface, the safe-text checks, failure mapping.

An adapter turns a `HostOpRequest` into a frozen `Operation` (or raises
`ValidationError`), and turns the wrapper's output into structured data. It
holds no policy, audit or approval code: the pipeline around it does that.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from host_agent.errors import ValidationError
from host_agent.operations import Operation
from host_agent.request import HostOpRequest
from host_agent.runner import RunResult

# Exit codes the wrappers use for their own refusals (sysexits.h).
EXIT_USAGE = 64  # arguments failed the wrapper's re-validation
EXIT_NOT_FOUND = 66  # the wrapper found no such repository, ref, playbook, ...
EXIT_NO_USER = 67  # the account to act as does not exist on this host
EXIT_NOT_PERMITTED = 77  # the wrapper's own allowlist does not permit it
EXIT_CONFIG = 78  # wrapper configuration missing or unsafe

# Printable ASCII only: no control characters, no NUL, no look-alike unicode.
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]*")


@dataclass(frozen=True, slots=True)
class Failure:
    """How an unsuccessful run is reported: HTTP status and stable error code."""

    status: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Call:
    """One request as an adapter sees it: the command, its target, the rest of args."""

    command: str
    resource: str
    args: tuple[str, ...]
    # The caller profile's Unix account, for adapters that act as it (git).
    unix_user: str


_WRAPPER_FAILURES = {
    EXIT_USAGE: Failure(400, "wrapper_rejected", "the wrapper rejected the arguments"),
    EXIT_NO_USER: Failure(500, "unix_user_missing", "the agent's unix_user does not exist here"),
    EXIT_NOT_PERMITTED: Failure(
        403, "wrapper_not_permitted", "the wrapper's allowlist does not permit this"
    ),
    EXIT_CONFIG: Failure(500, "wrapper_misconfigured", "the wrapper's configuration is unsafe"),
}


class Adapter(ABC):
    """One kind of operation (zfs, systemd, ...) and its sudo wrapper."""

    kind: ClassVar[str]
    wrapper: ClassVar[str]
    # command -> mutates host state?
    commands: ClassVar[Mapping[str, bool]]
    # What the tool prints on stderr for well-known failures, checked in order
    # (lower case substrings).
    stderr_failures: ClassVar[tuple[tuple[str, Failure], ...]] = ()

    def operation_names(self) -> frozenset[str]:
        return frozenset(f"{self.kind}-{command}" for command in self.commands)

    def parse(self, request: HostOpRequest, unix_user: str) -> Operation:
        """Validate the request fully; the result is the only thing the runner accepts."""
        command = request.args[0]
        if command not in self.commands:
            raise ValidationError(
                "args[0]",
                f"unknown {self.kind} command; expected one of {', '.join(self.commands)}",
                code="unknown_command",
            )
        call = Call(command, request.resource, request.args[1:], unix_user)
        argv = self.validate(call)
        return Operation(
            kind=self.kind,
            command=command,
            resource=request.resource,
            args=request.args,
            wrapper=self.wrapper,
            wrapper_argv=(command, *argv),
            mutating=self.commands[command],
            always_requires_approval=self.forces_approval(command),
            recursive=self.is_recursive(call),
        )

    @abstractmethod
    def validate(self, call: Call) -> tuple[str, ...]:
        """Check resource and the arguments after the command; return the wrapper argv tail."""

    def forces_approval(self, command: str) -> bool:
        """Commands no configuration may run without a human (none by default)."""
        return False

    def is_recursive(self, call: Call) -> bool:
        """Whether the call reaches beyond its resource (policy grants that separately)."""
        return False

    def interpret(self, operation: Operation, result: RunResult) -> dict[str, Any]:
        """Structured data from a successful run (none by default)."""
        return {}

    def preview(self, operation: Operation) -> Operation | None:
        """A read-only operation whose output shows approvers what `operation` would
        change, run before they are asked (none by default)."""
        return None

    def describe_preview(self, operation: Operation, result: RunResult) -> list[str]:
        """Lines for approvers from the successful run of `preview(operation)`."""
        return []

    def internal(self, command: str, resource: str, *argv: str) -> Operation:
        """A read-only wrapper command the agent runs for itself; clients cannot ask for it
        (it is not in `commands`), so it never meets policy."""
        return Operation(
            kind=self.kind,
            command=command,
            resource=resource,
            args=(command,),
            wrapper=self.wrapper,
            wrapper_argv=(command, *argv),
            mutating=False,
        )

    def outcome(self, operation: Operation, result: RunResult) -> Failure | None:
        """None when the run did what was asked; otherwise how to report it."""
        if result.exit_code == 0:
            return None
        return self.failure(operation, result)

    def failure(self, operation: Operation, result: RunResult) -> Failure:
        """Map a non-zero exit: sudo, then the wrapper's own codes, then the tool's stderr."""
        if "a password is required" in result.stderr or "not allowed to execute" in result.stderr:
            return Failure(500, "sudo_refused", "sudoers does not allow the service account")
        if result.exit_code in _WRAPPER_FAILURES:
            return _WRAPPER_FAILURES[result.exit_code]
        if result.exit_code == EXIT_NOT_FOUND:
            return Failure(404, "not_found", _last_line(result.stderr) or "not found")
        stderr = result.stderr.lower()
        for needle, failure in self.stderr_failures:
            if needle in stderr:
                return failure
        return Failure(502, "operation_failed", f"{operation.name} exited {result.exit_code}")


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def check_text(
    field: str,
    value: str,
    *,
    max_length: int,
    pattern: re.Pattern[str] | None = None,
    what: str = "value",
    allow_option: bool = False,
) -> str:
    """The checks every user value gets: non-empty, bounded, printable ASCII, no option
    (unless an admin's allowlist explicitly permits one: `allow_option`)."""
    if not value:
        raise ValidationError(field, f"{what} must not be empty", code="missing_argument")
    if len(value) > max_length:
        raise ValidationError(field, f"{what} longer than {max_length} characters", code="too_long")
    if not _PRINTABLE_ASCII.fullmatch(value):
        raise ValidationError(
            field,
            f"{what} may contain printable ASCII only (no spaces, control or non-ASCII characters)",
            code="invalid_characters",
        )
    if value.startswith("-") and not allow_option:
        raise ValidationError(field, f"{what} must not start with '-'", code="option_injection")
    if pattern is not None and not pattern.fullmatch(value):
        raise ValidationError(field, f"not a valid {what}", code="invalid_name")
    return value


def check_choice(field: str, value: str, choices: Mapping[str, Any] | tuple[str, ...]) -> str:
    """A value that must be one of a fixed set of words."""
    if value not in choices:
        raise ValidationError(
            field, f"must be one of {', '.join(choices)}", code="invalid_argument"
        )
    return value


def expect_args(call: Call, *, least: int = 0, most: int) -> None:
    """Bound the number of arguments after the command; fields count from args[1]."""
    if len(call.args) < least:
        raise ValidationError(
            f"args[{len(call.args) + 1}]",
            f"{call.command} needs {least} argument(s) after the command",
            code="missing_argument",
        )
    if len(call.args) > most:
        raise ValidationError(
            f"args[{most + 1}]",
            f"{call.command} takes at most {most} argument(s) after the command",
            code="too_many_arguments",
        )


def expect_no_resource(call: Call) -> None:
    if call.resource:
        raise ValidationError(
            "resource", f"{call.command} takes no resource", code="unexpected_argument"
        )
