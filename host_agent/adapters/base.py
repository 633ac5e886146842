"""What every adapter shares: the interface, the safe-text checks, failure mapping.

An adapter turns a `HostOpRequest` into a frozen `Operation` (or raises
`ValidationError`), and turns the wrapper's output into structured data. It
holds no policy, audit or approval code: the pipeline around it does that.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, ClassVar

from host_agent.errors import TargetRefused, ValidationError
from host_agent.operations import ApprovalNeed, Operation
from host_agent.request import MAX_REASON, HostOpRequest
from host_agent.runner import RunResult

# Exit codes the wrappers use for their own refusals (sysexits.h).
EXIT_USAGE = 64  # arguments failed the wrapper's re-validation
EXIT_NOT_FOUND = 66  # the wrapper found no such repository, ref, playbook, ...
EXIT_NO_USER = 67  # the account to act as does not exist on this host
EXIT_NOT_PERMITTED = 77  # the wrapper's own allowlist does not permit it
EXIT_CONFIG = 78  # wrapper configuration missing or unsafe

# Printable ASCII only: no control characters, no NUL, no look-alike unicode.
_PRINTABLE = r"\x21-\x7e"
_PRINTABLE_ASCII = re.compile(rf"[{_PRINTABLE}]*")


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
    # command -> what it does, in a line an LLM reads as the tool's description.
    summaries: ClassVar[Mapping[str, str]]
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
            always_requires_approval=self.forces_approval(call),
            recursive=self.is_recursive(call),
        )

    @abstractmethod
    def validate(self, call: Call) -> tuple[str, ...]:
        """Check resource and the arguments after the command; return the wrapper argv tail."""

    @abstractmethod
    def tool_parameters(self, command: str, *, recursive: bool = True) -> dict[str, Any] | None:
        """The JSON Schema of `{"resource", "args", "reason"}` for `command` (args without
        the command), built from the constants `validate` uses: every value it accepts is
        one `parse` accepts. None when no request for `command` can pass validation under
        this adapter's config. `recursive=False` leaves out arguments that make the call
        recursive (for callers policy never grants that)."""

    def forced_approval(self, command: str) -> ApprovalNeed:
        """Whether `command` needs a human whatever the rules say: for every call, for
        none (the default), or depending on the call (`forces_approval` decides)."""
        return ApprovalNeed.NEVER

    def forces_approval(self, call: Call) -> bool:
        """Whether this call needs a human whatever the rules say."""
        return self.forced_approval(call.command) is ApprovalNeed.ALWAYS

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

    def resolution(self, operation: Operation) -> Operation | None:
        """A read-only operation that names `operation`'s target canonically (a systemd
        unit's id behind an alias), run before policy decides (none by default)."""
        return None

    def resolved(self, operation: Operation, result: RunResult) -> Operation:
        """`operation` with `canonical_resource` from the successful run of
        `resolution(operation)`, or `TargetRefused` when the canonical name is refused."""
        return operation

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


def require_listed(value: str, patterns: Iterable[str], what: str, key: str, code: str) -> None:
    """Refuse `value` (the resource) unless one of the allowlist `key`'s fnmatch patterns
    matches it; `what` names it in the message."""
    if not any(fnmatchcase(value, pattern) for pattern in patterns):
        raise TargetRefused("resource", f"{what} is not in {key}", code=code)


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


# --- JSON Schema for tool manifests ------------------------------------------------
#
# JSON Schema patterns are ECMA-262 and match anywhere (a search), so every pattern
# here is anchored, and uses only syntax that Python's `re` and ECMA-262 (with the
# `u` flag) read the same way: no named groups, no \d or \w (Unicode digits and
# letters in Python), no \Z. Python's `$` also matches before a final newline; the
# printable-ASCII `not` below refuses any newline, so that difference never shows.

# Anything check_text refuses as a character: for `not` in every string schema.
NOT_PRINTABLE_ASCII = rf"[^{_PRINTABLE}]"
# The server takes any showable character in a reason (no Unicode category C*, no Z*
# but the plain space, no blank-looking letter); no portable pattern can name those
# categories, so the schema admits a narrower set: printable ASCII and space, and
# Latin-1 without its no-break space (U+00A0) and its format character (U+00AD).
_NOT_REASON_TEXT = r"[^\x20-\x7e\xa1-\xac\xae-\xff]"
# ECMA-262's syntax characters: escaped in a literal. In `u` mode a backslash may escape
# only these and '/' (and '-' in a class); `\-` or `\!` are syntax errors there.
_ECMA_SYNTAX = frozenset("^$\\.*+?()[]{}|")


def text_schema(
    description: str,
    *,
    max_length: int,
    pattern: str | None = None,
    allow_option: bool = False,
) -> dict[str, Any]:
    """A string `check_text` accepts with these settings, fully matching `pattern` (which
    must be portable: see above)."""
    anchored = "^" + ("" if allow_option else "(?!-)")
    if pattern is not None:
        anchored += f"(?:{pattern})$"
    schema: dict[str, Any] = {
        "type": "string",
        "description": description,
        "minLength": 1,
        "maxLength": max_length,
    }
    if anchored != "^":
        schema["pattern"] = anchored
    schema["not"] = {"pattern": NOT_PRINTABLE_ASCII}
    return schema


def choice_schema(description: str, choices: Mapping[str, Any] | Sequence[str]) -> dict[str, Any]:
    """A string `check_choice` accepts."""
    return {"type": "string", "description": description, "enum": list(choices)}


def args_schema(
    description: str, positions: Sequence[dict[str, Any]], *, least: int = 0
) -> dict[str, Any]:
    """The arguments after the command as `expect_args(least=least, most=len(positions))`
    bounds them, position i matching `positions[i]`."""
    schema: dict[str, Any] = {"type": "array", "description": description}
    if least:
        schema["minItems"] = least
    distinct = {json.dumps(p, sort_keys=True) for p in positions}
    if len(distinct) <= 1:
        # One schema for every position: `items` reads the same in every draft.
        schema["items"] = positions[0] if positions else {"type": "string"}
        schema["maxItems"] = len(positions)
    else:
        schema["prefixItems"] = list(positions)
        schema["items"] = False
    return schema


def parameters_schema(
    *,
    resource: dict[str, Any] | None,
    args: dict[str, Any] | None = None,
    resource_required: bool = True,
    examples: Sequence[dict[str, Any]] = (),
    **extra: Any,
) -> dict[str, Any]:
    """The tool's parameters object: resource, args (when the command takes any), reason."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    if resource is not None:
        properties["resource"] = resource
        if resource_required:
            required.append("resource")
    if args is not None:
        properties["args"] = args
        if args.get("minItems", 0):
            required.append("args")
    properties["reason"] = {
        "type": "string",
        "maxLength": MAX_REASON,
        "not": {"pattern": _NOT_REASON_TEXT},
        "description": "Why, in one line: kept in the audit log and shown to approvers.",
    }
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    schema["additionalProperties"] = False
    schema.update(extra)
    if examples:
        schema["examples"] = list(examples)
    return schema


def integer_pattern(low: int, high: int) -> str:
    """A portable regex for the decimal numbers low..high, without leading zeros."""
    if not 0 <= low <= high:
        raise ValueError(f"bad range {low}..{high}")
    alternatives: list[str] = []
    full: list[int] = []  # lengths whose every number is in range, a run
    for digits in range(len(str(low)), len(str(high)) + 1):
        first = 0 if digits == 1 else 10 ** (digits - 1)
        last = 10**digits - 1
        lo, hi = max(low, first), min(high, last)
        if digits > 1 and (lo, hi) == (first, last):
            full.append(digits - 1)
        else:
            alternatives.append(_same_length(str(lo), str(hi)))
    if full:
        alternatives.append("[1-9]" + _digits(full[0], full[-1]))
    return "|".join(alternatives)


def _digits(least: int, most: int) -> str:
    """`least` to `most` decimal digits."""
    if least == most:
        return "[0-9]" if least == 1 else f"[0-9]{{{least}}}"
    return f"[0-9]{{{least},{most}}}"


def _same_length(lo: str, hi: str) -> str:
    """A regex for lo..hi, both of the same number of digits."""
    if lo == hi:
        return lo
    if len(lo) == 1:
        return f"[{lo}-{hi}]"
    rest = len(lo) - 1
    if lo[0] == hi[0]:
        return lo[0] + _group(_same_length(lo[1:], hi[1:]))
    parts = []
    start, end = int(lo[0]), int(hi[0])
    if lo[1:] != "0" * rest:
        parts.append(lo[0] + _group(_same_length(lo[1:], "9" * rest)))
        start += 1
    tail = None
    if hi[1:] != "9" * rest:
        tail = hi[0] + _group(_same_length("0" * rest, hi[1:]))
        end -= 1
    if start <= end:
        digit = str(start) if start == end else f"[{start}-{end}]"
        parts.append(digit + _digits(rest, rest))
    if tail is not None:
        parts.append(tail)
    return "|".join(parts)


def _group(pattern: str) -> str:
    return f"(?:{pattern})" if "|" in pattern else pattern


def ecma_escape(text: str) -> str:
    """`text` as a literal in a portable regex (re.escape also escapes '-', which
    ECMA-262 refuses outside a class in `u` mode)."""
    return "".join(f"\\{c}" if c in _ECMA_SYNTAX else c for c in text)


_PYTHON_REPEAT = re.compile(r"\{([0-9]*)(,?)([0-9]*)\}")


def ecma_regex(pattern: str) -> str | None:
    """An admin's Python pattern (of the syntax `[exec] argument_patterns` allows) in
    ECMA-262 `u`-mode syntax with the same meaning; None when it uses something that
    has no such spelling (possessive quantifiers) or that config refuses anyway."""
    if "(?" in pattern or re.search(r"\\[A-Za-z0-9]", pattern):
        return None  # config refuses these; anything else would need a real translation
    out: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        index += 1
        if char == "\\":
            # Only escapes of punctuation are left, which Python reads as literals.
            out.append(ecma_escape(pattern[index]))
            index += 1
        elif char == "[":
            end = _class_end(pattern, index)
            out.append(_ecma_class(pattern[index:end]))
            index = end + 1
        elif char == "{":
            repeat = _PYTHON_REPEAT.match(pattern, index - 1)
            if repeat is None or repeat[0] == "{}":
                out.append("\\{")
                continue
            low, comma, high = repeat.groups()
            out.append(f"{{{low or 0}{comma}{high}}}")
            index = repeat.end()
            if pattern.startswith("+", index):
                return None
        elif char in "*+?":
            out.append(char)
            if pattern.startswith("+", index):
                return None
        elif char in "}]":
            out.append(f"\\{char}")
        else:
            out.append(char)
    return "".join(out)


def _class_end(pattern: str, index: int) -> int:
    """Where the class whose content starts at `index` ends (Python's rules: a `]` first,
    or right after `^`, is a literal)."""
    if pattern.startswith("^", index):
        index += 1
    if pattern.startswith("]", index):
        index += 1
    while pattern[index] != "]":
        index += 2 if pattern[index] == "\\" else 1
    return index


def _ecma_class(body: str) -> str:
    out = ["["]
    index = 0
    if body.startswith("^"):
        out.append("^")
        index = 1
    while index < len(body):
        char = body[index]
        index += 1
        if char == "\\":
            char = body[index]
            index += 1
            out.append(f"\\{char}" if char in _ECMA_SYNTAX or char == "-" else char)
        elif char == "]":
            out.append("\\]")
        else:
            out.append(char)
    out.append("]")
    return "".join(out)
