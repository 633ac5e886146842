"""[[agents]] and [[rules]]: who may ask for what, and what needs a human."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from enum import StrEnum

from host_agent.config.fields import (
    Table,
    between,
    check_operation,
    check_operation_globs,
    check_regex,
    check_unix_name,
    non_empty,
    one_of,
)


class Autonomy(StrEnum):
    READ_ONLY = "read_only"
    SUPERVISED = "supervised"
    FULL = "full"


@dataclass(frozen=True)
class PatternRule:
    """Per-agent resource restriction: `operation` only on resources matching `pattern`."""

    operation: str
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class AgentProfile:
    cn_pattern: str
    agent_type: str
    unix_user: str
    autonomy: Autonomy
    allowed_operations: tuple[str, ...]
    requires_approval_for: tuple[str, ...]
    pattern_rules: tuple[PatternRule, ...]
    allow_full_autonomy_bypass: bool
    # Recursive zfs destroy/rollback, which reach past the named resource.
    allow_recursive: bool = False

    def matches(self, cn: str) -> bool:
        return fnmatch.fnmatchcase(cn, self.cn_pattern)


@dataclass(frozen=True)
class Rule:
    index: int
    operation: str
    pattern: re.Pattern[str] | None
    approval_required: bool
    always_ask: bool
    approval_admin_only: bool
    deny: bool
    # Distinct approvers needed (new in host-agent).
    approvals_required: int = 1

    def describe(self) -> str:
        where = f" pattern={self.pattern.pattern!r}" if self.pattern else ""
        return f"rules[{self.index}] (operation={self.operation}{where})"


def read_agent(t: Table) -> AgentProfile:
    pattern_rules = []
    for sub in t.array_of_tables("pattern_rules"):
        pattern_rules.append(
            PatternRule(
                operation=sub.get("operation", str, "", required=True, check=check_operation),
                pattern=sub.get(
                    "pattern", str, ".*", required=True, check=check_regex, convert=re.compile
                ),
            )
        )
        sub.finish()
    profile = AgentProfile(
        cn_pattern=t.get("cn_pattern", str, "", required=True, check=non_empty),
        agent_type=t.get("agent_type", str, "", required=True, check=non_empty),
        unix_user=t.get("unix_user", str, "", required=True, check=check_unix_name),
        autonomy=t.get(
            "autonomy",
            str,
            "supervised",
            check=one_of(*(a.value for a in Autonomy)),
            convert=Autonomy,
        ),
        allowed_operations=tuple(
            t.get("allowed_operations", list, [], item=str, check=check_operation_globs)
        ),
        requires_approval_for=tuple(
            t.get("requires_approval_for", list, [], item=str, check=check_operation_globs)
        ),
        pattern_rules=tuple(pattern_rules),
        allow_full_autonomy_bypass=t.get("allow_full_autonomy_bypass", bool, False),
        allow_recursive=t.get("allow_recursive", bool, False),
    )
    t.finish()
    return profile


def read_rule(t: Table, index: int) -> Rule:
    rule = Rule(
        index=index,
        operation=t.get("operation", str, "", required=True, check=check_operation),
        pattern=t.optional("pattern", str, check=check_regex, convert=re.compile),
        approval_required=t.get("approval_required", bool, False),
        always_ask=t.get("always_ask", bool, False),
        approval_admin_only=t.get("approval_admin_only", bool, False),
        deny=t.get("deny", bool, False),
        approvals_required=t.get("approvals_required", int, 1, check=between(1, 10)),
    )
    if rule.deny and (rule.approval_required or rule.always_ask):
        t.reader.problem(t.key("deny"), "a deny rule cannot also ask for approval")
    t.finish()
    return rule


def may_overlap(first: str, second: str) -> bool:
    """Whether two CN globs can plausibly match one CN: each read as a CN against the
    other. It catches the usual cases (equal, `*`, one a narrowing of the other), not
    every contrived one."""
    return fnmatch.fnmatchcase(first, second) or fnmatch.fnmatchcase(second, first)
