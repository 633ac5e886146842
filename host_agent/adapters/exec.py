"""Allowlisted commands and Ansible playbooks through the `host-agent-exec` wrapper.

Requests (the predecessor's shape):
    {"kind": "exec", "resource": "/usr/bin/uptime",   "args": ["run"]}
    {"kind": "exec", "resource": "/usr/bin/du",       "args": ["run", "-sh", "/srv/app"]}
    {"kind": "exec", "resource": "ansible://site.yml", "args": ["run"]}
    {"kind": "exec", "resource": "ansible://site.yml", "args": ["run", "check"]}

A command is named by exactly one of `[exec] allowed_commands`, with no
normalisation, so `/usr/bin/../bin/id` or `/bin/id` never stand in for
`/usr/bin/id`. A playbook is named by its bare file name in `playbook_dir`;
the predecessor's `ansible://playbooks/NAME` form is refused rather than
guessed at.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

from host_agent.adapters.base import (
    EXIT_CONFIG,
    EXIT_NO_USER,
    EXIT_NOT_FOUND,
    EXIT_NOT_PERMITTED,
    EXIT_USAGE,
    Adapter,
    Call,
    Failure,
    args_schema,
    check_choice,
    check_text,
    choice_schema,
    ecma_regex,
    expect_args,
    parameters_schema,
    text_schema,
)
from host_agent.config import ExecConfig
from host_agent.errors import AdapterDisabled, ValidationError
from host_agent.operations import ApprovalNeed, Operation
from host_agent.request import HostOpRequest
from host_agent.runner import RunResult

PLAYBOOK_PREFIX = "ansible://"
CHECK = "check"
MAX_PATH = 4096
# The wrapper bounds arguments by the same limit (HA_MAX_NAME).
MAX_ARGUMENT = 255
_WRAPPER_EXITS = frozenset(
    {EXIT_USAGE, EXIT_NOT_FOUND, EXIT_NO_USER, EXIT_NOT_PERMITTED, EXIT_CONFIG}
)
# `ansible-playbook` summary lines after "PLAY RECAP": `host : ok=1 changed=0 ...`.
_RECAP_LINE = re.compile(r"(\S+)\s+:\s+((?:[a-z]+=\d+\s*)+)")
_RECAP_COUNT = re.compile(r"([a-z]+)=(\d+)")


class ExecAdapter(Adapter):
    kind = "exec"
    wrapper = "host-agent-exec"
    commands: ClassVar[Mapping[str, bool]] = {"run": True}
    summaries: ClassVar[Mapping[str, str]] = {
        "run": "Run one allowlisted command (resource: its exact path) with arguments "
        "matching its patterns, or an Ansible playbook (resource: ansible://NAME; "
        "args ['check'] for a dry run).",
    }
    stderr_failures = (
        ("permission denied", Failure(403, "permission_denied", "permission denied")),
    )

    def __init__(self, config: ExecConfig) -> None:
        self.config = config
        self._patterns = {
            str(command): tuple(re.compile(p) for p in config.argument_patterns.get(command, ()))
            for command in config.allowed_commands
        }

    def parse(self, request: HostOpRequest, unix_user: str) -> Operation:
        # Switched off trumps every other answer, whatever the request says.
        if not self.config.enabled:
            raise AdapterDisabled(
                self.kind, "set [exec] enabled = true and list allowed_commands to use it"
            )
        return super().parse(request, unix_user)

    def validate(self, call: Call) -> tuple[str, ...]:
        resource = check_text("resource", call.resource, max_length=MAX_PATH, what="resource")
        if resource.startswith(PLAYBOOK_PREFIX):
            return self._playbook(call, resource.removeprefix(PLAYBOOK_PREFIX))
        if not resource.startswith("/"):
            raise ValidationError(
                "resource",
                f"must be an absolute command path or {PLAYBOOK_PREFIX}NAME",
                code="invalid_name",
            )
        patterns = self._patterns.get(resource)
        if patterns is None:
            raise ValidationError(
                "resource",
                "not one of [exec] allowed_commands (paths must match exactly)",
                code="command_not_allowed",
            )
        expect_args(call, most=len(patterns))
        for index, (value, pattern) in enumerate(zip(call.args, patterns, strict=False), 1):
            check_argument(f"args[{index}]", value, pattern)
        return ("command", resource, *call.args)

    def forced_approval(self, command: str) -> ApprovalNeed:
        """A playbook runs whatever its tasks say, as root: like the predecessor, every
        run needs a human unless [exec] playbooks_require_approval = false."""
        if self.config.allowed_playbooks and self.config.playbooks_require_approval:
            return ApprovalNeed.ALWAYS if not self.config.allowed_commands else ApprovalNeed.DEPENDS
        return ApprovalNeed.NEVER

    def forces_approval(self, call: Call) -> bool:
        return self.config.playbooks_require_approval and call.resource.startswith(PLAYBOOK_PREFIX)

    def tool_parameters(self, command: str, *, recursive: bool = True) -> dict[str, Any] | None:
        """One branch per allowed command or playbook: its resource and the arguments it
        takes. A command whose argument patterns have no portable spelling is left out."""
        if not self.config.enabled:
            return None
        branches: list[tuple[str, dict[str, Any]]] = []
        for command_path, patterns in self._patterns.items():
            positions = [argument_schema(pattern) for pattern in patterns]
            portable = [schema for schema in positions if schema is not None]
            if not _fits(command_path) or len(portable) != len(positions):
                continue
            described = "No arguments"
            if patterns:
                described = (
                    f"Up to {len(patterns)} argument(s), in order, each a whole match of "
                    "its pattern: " + " ".join(p.pattern for p in patterns)
                )
            branches.append((command_path, args_schema(described, portable)))
        check = args_schema(
            f"Optional ['{CHECK}']: a dry run (ansible-playbook --check)",
            [choice_schema("dry run", (CHECK,))],
        )
        for name in self.config.allowed_playbooks:
            if _fits(PLAYBOOK_PREFIX + name):
                branches.append((PLAYBOOK_PREFIX + name, check))
        if not branches:
            return None
        resources = [resource for resource, _ in branches]
        return parameters_schema(
            resource={
                "type": "string",
                "description": "An allowed command's exact path, or ansible://PLAYBOOK",
                "enum": resources,
            },
            args={
                "type": "array",
                "description": "The arguments the chosen resource takes (see anyOf)",
                "items": {"type": "string"},
                "maxItems": max(_most(args) for _, args in branches),
            },
            anyOf=[
                {"properties": {"resource": {"const": resource}, "args": args}}
                for resource, args in branches
            ],
            examples=[{"resource": resources[0]}],
        )

    def _playbook(self, call: Call, name: str) -> tuple[str, ...]:
        if name not in self.config.allowed_playbooks:
            raise ValidationError(
                "resource",
                f"not one of [exec] allowed_playbooks; name a playbook by its file name "
                f"in playbook_dir, e.g. {PLAYBOOK_PREFIX}site.yml",
                code="playbook_not_allowed",
            )
        expect_args(call, most=1)
        if call.args:
            check_choice("args[1]", call.args[0], (CHECK,))
        return ("playbook", name, *call.args)

    def interpret(self, operation: Operation, result: RunResult) -> dict[str, Any]:
        what, target = operation.wrapper_argv[1:3]
        if what == "command":
            return {"command": target}
        return {
            "playbook": target,
            "check": CHECK in operation.wrapper_argv[3:],
            "recap": parse_recap(result.stdout),
        }

    def failure(self, operation: Operation, result: RunResult) -> Failure:
        # An allowed command may itself exit 64, 66, 77 or 78; only the
        # wrapper's own refusals say so on stderr.
        if (
            operation.wrapper_argv[1] == "command"
            and result.exit_code in _WRAPPER_EXITS
            and f"{self.wrapper}: refused:" not in result.stderr
        ):
            return Failure(502, "operation_failed", f"{operation.name} exited {result.exit_code}")
        return super().failure(operation, result)


def check_argument(field: str, value: str, pattern: re.Pattern[str]) -> str:
    """One command argument: safe text, a full match of its pattern, an option only if allowed."""
    allow_option = pattern.pattern.startswith("-")
    check_text(field, value, max_length=MAX_ARGUMENT, what="argument", allow_option=allow_option)
    if not pattern.fullmatch(value):
        raise ValidationError(
            field,
            f"does not match the allowed pattern {pattern.pattern!r}",
            code="argument_not_allowed",
        )
    return value


def argument_schema(pattern: re.Pattern[str]) -> dict[str, Any] | None:
    """The JSON Schema of what `check_argument` accepts for `pattern`; None when the
    pattern has no portable spelling."""
    portable = ecma_regex(pattern.pattern)
    if portable is None:
        return None
    return text_schema(
        f"Matching {pattern.pattern}",
        max_length=MAX_ARGUMENT,
        pattern=portable,
        allow_option=pattern.pattern.startswith("-"),
    )


def _fits(resource: str) -> bool:
    """Whether `validate` can accept `resource` as text at all (config does not bound it)."""
    return len(resource) <= MAX_PATH


def _most(args: dict[str, Any]) -> int:
    return len(args.get("prefixItems", ())) or int(args.get("maxItems", 0))


def parse_recap(text: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP of `ansible-playbook` output → {host: {ok, changed, failed, ...}}."""
    hosts: dict[str, dict[str, int]] = {}
    in_recap = False
    for line in text.splitlines():
        if line.startswith("PLAY RECAP"):
            in_recap = True
        elif in_recap and (match := _RECAP_LINE.fullmatch(line.strip())):
            counts = _RECAP_COUNT.findall(match[2])
            hosts[match[1]] = {name: int(number) for name, number in counts}
    return hosts
