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
    """The predecessor's per-agent `pattern_rules` entry: `operation` on a resource in
    which `pattern` is found (an unanchored search) needs a human."""

    operation: str
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class ResourceRule:
    """Per-agent restriction: `operation` only on resources `match` fully matches."""

    operation: str
    match: re.Pattern[str]


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
    resource_rules: tuple[ResourceRule, ...] = ()
    # CN patterns of the agents this caller (a proxy) may act for with `on_behalf_of`.
    acts_for: tuple[str, ...] = ()

    def matches(self, cn: str) -> bool:
        return fnmatch.fnmatchcase(cn, self.cn_pattern)

    def may_act_for(self, cn: str) -> bool:
        return any(fnmatch.fnmatchcase(cn, pattern) for pattern in self.acts_for)


@dataclass(frozen=True)
class Rule:
    """One [[rules]] entry. `pattern` is the predecessor's: the rule applies to a
    resource in which it is found anywhere (an unanchored search). `match` is
    host-agent's: the rule applies only to a resource it matches whole."""

    index: int
    operation: str
    pattern: re.Pattern[str] | None
    approval_required: bool
    always_ask: bool
    approval_admin_only: bool
    deny: bool
    # Distinct approvers needed (new in host-agent).
    approvals_required: int = 1
    match: re.Pattern[str] | None = None
    # One of BUILTIN_RULES, applied because the file has no [[rules]].
    builtin: bool = False

    def applies_to(self, resource: str) -> bool:
        if self.pattern is not None:
            return self.pattern.search(resource) is not None
        return self.match is None or self.match.fullmatch(resource) is not None

    @property
    def covers_every_resource(self) -> bool:
        return self.pattern is None and self.match is None

    @property
    def asks(self) -> bool:
        """Whether the rule can ask for a human (for some caller)."""
        return self.approval_required or self.always_ask

    def describe(self) -> str:
        where = ""
        if self.pattern is not None:
            where = f" pattern={self.pattern.pattern!r}, found anywhere"
        elif self.match is not None:
            where = f" match={self.match.pattern!r}, whole resource"
        source = "built-in rules" if self.builtin else "rules"
        return f"{source}[{self.index}] (operation={self.operation}{where})"


def _builtin(index: int, operation: str, *, always: bool = False, admin: bool = False) -> Rule:
    return Rule(index, operation, None, True, always, admin, deny=False, builtin=True)


# The predecessor's `Config::default()` rules that ask for a human, applied when a file
# has no [[rules]] at all (its other default rules allowed, as no rule does here).
BUILTIN_RULES: tuple[Rule, ...] = (
    _builtin(0, "zfs-destroy", always=True),
    _builtin(1, "zfs-rollback", always=True),
    _builtin(2, "pct-start"),
    _builtin(3, "pct-stop"),
    _builtin(4, "pct-destroy", always=True, admin=True),
    _builtin(5, "git-checkout"),
)


def read_agent(t: Table) -> AgentProfile:
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
        pattern_rules=tuple(
            PatternRule(operation, pattern)
            for operation, pattern in _operation_patterns(t, "pattern_rules", "pattern")
        ),
        allow_full_autonomy_bypass=t.get("allow_full_autonomy_bypass", bool, False),
        allow_recursive=t.get("allow_recursive", bool, False),
        resource_rules=tuple(
            ResourceRule(operation, match)
            for operation, match in _operation_patterns(t, "resource_rules", "match")
        ),
        acts_for=tuple(t.get("acts_for", list, [], item=str, check=_cn_patterns)),
    )
    if profile.pattern_rules:
        t.reader.warn(
            f"{t.key('pattern_rules')}: a resource in which a pattern is found needs a "
            "human (the predecessor's meaning). host-agent 0.1 read pattern_rules as a "
            "restriction (the resource had to match whole, or was denied): for that, "
            "write [[agents.resource_rules]] with match = ... instead"
        )
    t.finish()
    return profile


def _operation_patterns(t: Table, name: str, key: str) -> list[tuple[str, re.Pattern[str]]]:
    """An agent's `[[agents.<name>]]` entries: each an operation and a regex under `key`."""
    entries = []
    for sub in t.array_of_tables(name):
        operation = sub.get("operation", str, "", required=True, check=check_operation)
        pattern = sub.get(key, str, ".*", required=True, check=check_regex, convert=re.compile)
        sub.finish()
        entries.append((operation, pattern))
    return entries


def read_rule(t: Table, index: int) -> Rule:
    rule = Rule(
        index=index,
        operation=t.get("operation", str, "", required=True, check=check_operation),
        pattern=t.optional("pattern", str, check=check_regex, convert=re.compile),
        match=t.optional("match", str, check=check_regex, convert=re.compile),
        approval_required=t.get("approval_required", bool, False),
        always_ask=t.get("always_ask", bool, False),
        approval_admin_only=t.get("approval_admin_only", bool, False),
        deny=t.get("deny", bool, False),
        approvals_required=t.get("approvals_required", int, 1, check=between(1, 10)),
    )
    if rule.deny and rule.asks:
        t.reader.problem(t.key("deny"), "a deny rule cannot also ask for approval")
    if rule.pattern is not None and rule.match is not None:
        t.reader.problem(
            t.key("match"),
            "use either pattern (found anywhere in the resource) or match (the whole "
            "resource), not both",
        )
    t.finish()
    return rule


def read_rules(document: Table) -> tuple[Rule, ...]:
    """The file's [[rules]]; BUILTIN_RULES when it has none (`rules = []` means none)."""
    if "rules" not in document.data:
        document.reader.warn(
            "rules: none given, so the predecessor's built-in rules apply (docs/policy.md "
            '"Built-in rules"); write rules = [] for none at all'
        )
        return BUILTIN_RULES
    tables = document.array_of_tables("rules")
    rules = tuple(read_rule(table, index) for index, table in enumerate(tables))
    _warn_about_searches(rules, document)
    return rules


def _warn_about_searches(rules: tuple[Rule, ...], document: Table) -> None:
    """An allowing rule whose `pattern` is found in more resources than it names lets
    those skip a later rule that asks for a human: say so, and how to say `whole`."""
    for rule in rules:
        if rule.pattern is None or rule.asks or rule.deny:
            continue
        later = next(
            (r for r in rules[rule.index + 1 :] if r.operation == rule.operation and r.asks),
            None,
        )
        if later is not None:
            document.reader.warn(
                f"rules[{rule.index}]: allows {rule.operation} on every resource in which "
                f"pattern {rule.pattern.pattern!r} is FOUND (an unanchored search, the "
                f"predecessor's meaning), ahead of rules[{later.index}], which asks for a "
                f"human. If you meant the whole resource, write match = "
                f"{rule.pattern.pattern!r} instead"
            )


def may_overlap(first: str, second: str) -> bool:
    """Whether two CN globs can plausibly match one CN: each read as a CN against the
    other. It catches the usual cases (equal, `*`, one a narrowing of the other), not
    every contrived one."""
    return fnmatch.fnmatchcase(first, second) or fnmatch.fnmatchcase(second, first)


def _cn_patterns(patterns: list[str]) -> str | None:
    bad = [p for p in patterns if not p or not p.isprintable() or any(c.isspace() for c in p)]
    return f"CN patterns without spaces: {bad[0]!r}" if bad else None
