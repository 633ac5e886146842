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
EXIT_CONFIG = 78  # wrapper configuration missing or unsafe

# Printable ASCII only: no control characters, no NUL, no look-alike unicode.
_PRINTABLE_ASCII = re.compile(r"[\x21-\x7e]*")


@dataclass(frozen=True, slots=True)
class Failure:
    """How a non-zero exit is reported: HTTP status and stable error code."""

    status: int
    code: str
    message: str


class Adapter(ABC):
    """One kind of operation (zfs, systemd, ...) and its sudo wrapper."""

    kind: ClassVar[str]
    wrapper: ClassVar[str]
    # command -> mutates host state?
    commands: ClassVar[Mapping[str, bool]]

    def operation_names(self) -> frozenset[str]:
        return frozenset(f"{self.kind}-{command}" for command in self.commands)

    def parse(self, request: HostOpRequest) -> Operation:
        """Validate the request fully; the result is the only thing the runner accepts."""
        command = request.args[0]
        if command not in self.commands:
            raise ValidationError(
                "args[0]",
                f"unknown {self.kind} command; expected one of {', '.join(self.commands)}",
                code="unknown_command",
            )
        argv = self.validate(command, request.resource, request.args[1:])
        return Operation(
            kind=self.kind,
            command=command,
            resource=request.resource,
            args=request.args,
            wrapper=self.wrapper,
            wrapper_argv=(command, *argv),
            mutating=self.commands[command],
            always_requires_approval=self.forces_approval(command),
        )

    @abstractmethod
    def validate(self, command: str, resource: str, args: tuple[str, ...]) -> tuple[str, ...]:
        """Check resource and the arguments after the command; return the wrapper argv tail."""

    def forces_approval(self, command: str) -> bool:
        """Commands no configuration may run without a human (none by default)."""
        return False

    def interpret(self, operation: Operation, result: RunResult) -> dict[str, Any]:
        """Structured data from a successful run (none by default)."""
        return {}

    def failure(self, operation: Operation, result: RunResult) -> Failure:
        """Map a non-zero exit to a status and code; adapters refine with `known_failure`."""
        if result.exit_code == EXIT_USAGE:
            return Failure(400, "wrapper_rejected", "the wrapper rejected the arguments")
        if result.exit_code == EXIT_CONFIG:
            return Failure(500, "wrapper_misconfigured", "the wrapper's configuration is unsafe")
        if "a password is required" in result.stderr or "not allowed to execute" in result.stderr:
            return Failure(500, "sudo_refused", "sudoers does not allow the service account")
        known = self.known_failure(operation, result)
        if known is not None:
            return known
        return Failure(502, "operation_failed", f"{operation.name} exited {result.exit_code}")

    def known_failure(self, operation: Operation, result: RunResult) -> Failure | None:
        return None


def check_text(
    field: str,
    value: str,
    *,
    max_length: int,
    pattern: re.Pattern[str] | None = None,
    what: str = "value",
) -> str:
    """The checks every user value gets: non-empty, bounded, printable ASCII, no option."""
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
    if value.startswith("-"):
        raise ValidationError(field, f"{what} must not start with '-'", code="option_injection")
    if pattern is not None and not pattern.fullmatch(value):
        raise ValidationError(field, f"not a valid {what}", code="invalid_name")
    return value


def expect_args(command: str, args: tuple[str, ...], *, most: int) -> None:
    if len(args) > most:
        raise ValidationError(
            f"args[{most + 1}]",
            f"{command} takes at most {most} argument(s) after the command",
            code="too_many_arguments",
        )
