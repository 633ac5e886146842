"""Default-deny policy: who may do which operation, and what needs a human.

The decision table, row by row, is in docs/policy.md; tests/test_policy.py has
one test per row. Policy only decides: it never runs, audits or approves.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from fnmatch import fnmatchcase

from host_agent.config import AgentProfile, Autonomy, Config, Rule
from host_agent.operations import Operation


class Effect(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    APPROVAL = "approval_required"


@dataclass(frozen=True, slots=True)
class Decision:
    """What policy decided, the stable code for it, and what produced it."""

    effect: Effect
    code: str
    reason: str
    rule: str
    admin_only: bool = False
    # How many distinct approvers an approval needs (from the matching rule).
    approvals_required: int = 1

    def as_dict(self) -> dict[str, object]:
        return {
            "effect": self.effect.value,
            "code": self.code,
            "reason": self.reason,
            "rule": self.rule,
            "admin_only": self.admin_only,
            "approvals_required": self.approvals_required,
        }


def decide(config: Config, cn: str, operation: Operation) -> Decision:
    """Decide `operation` for the caller `cn` under `config`."""
    found = find_profile(config, cn)
    if found is None:
        return unknown_caller(cn)
    index, profile = found
    where = f"agents[{index}] (cn_pattern={profile.cn_pattern!r})"
    name = operation.name

    refusal = _refusal(profile, where, name, mutating=operation.mutating)
    if refusal is not None:
        return refusal
    needs_approval = _listed(profile.requires_approval_for, name)

    restrictions = [p for p in profile.pattern_rules if p.operation == name]
    if restrictions and not any(p.pattern.fullmatch(operation.resource) for p in restrictions):
        return Decision(
            Effect.DENY,
            "resource_not_allowed",
            f"resource {operation.resource!r} is outside this agent's patterns for {name}",
            f"{where}.pattern_rules",
        )

    if operation.recursive and not profile.allow_recursive:
        return Decision(
            Effect.DENY,
            "recursive_not_allowed",
            f"{name} with 'recursive' reaches past {operation.resource!r}; "
            "this agent may not do that",
            f"{where}.allow_recursive",
        )

    # A matching deny rule wins wherever it stands; otherwise the first matching rule applies.
    matching = list(_matching_rules(config.rules, operation))
    denial = next((r for r in matching if r.deny), None)
    if denial is not None:
        return Decision(
            Effect.DENY,
            "rule_denied",
            f"{name} on {operation.resource!r} is denied",
            denial.describe(),
        )
    rule = matching[0] if matching else None
    admin_only = rule is not None and rule.approval_admin_only
    quorum = rule.approvals_required if rule is not None else 1

    if operation.always_requires_approval:
        return Decision(
            Effect.APPROVAL,
            "approval_required",
            f"{name} always needs human approval",
            f"adapter {operation.kind}",
            admin_only,
            quorum,
        )
    if rule is not None and rule.always_ask:
        return Decision(
            Effect.APPROVAL,
            "approval_required",
            f"{name} always needs human approval (always_ask)",
            rule.describe(),
            admin_only,
            quorum,
        )
    if needs_approval:
        return Decision(
            Effect.APPROVAL,
            "approval_required",
            f"{name} needs approval for this agent",
            f"{where}.requires_approval_for",
            admin_only,
            quorum,
        )
    if rule is not None and rule.approval_required:
        if _bypasses(profile):
            return Decision(
                Effect.ALLOW,
                "allowed",
                f"{name} allowed: full autonomy may skip this approval",
                f"{rule.describe()} bypassed by {where}.allow_full_autonomy_bypass",
            )
        return Decision(
            Effect.APPROVAL,
            "approval_required",
            f"{name} needs approval",
            rule.describe(),
            admin_only,
            quorum,
        )

    source = rule.describe() if rule is not None else f"{where}.allowed_operations"
    return Decision(Effect.ALLOW, "allowed", f"{name} allowed", source)


class ApprovalNeed(StrEnum):
    """Whether an operation offered to a caller needs a human, over every resource."""

    NEVER = "never"
    ALWAYS = "always"
    DEPENDS = "depends"


@dataclass(frozen=True, slots=True)
class Offer:
    """What `decide` can answer one caller for one operation name, whatever the resource."""

    approval: ApprovalNeed
    # The caller's pattern_rules for the operation: a resource must fully match one (R4).
    resource_patterns: tuple[str, ...]
    # Whether recursive calls can be allowed (R5).
    recursive: bool


def offer(
    config: Config, profile: AgentProfile, name: str, *, mutating: bool, forced_approval: bool
) -> Offer | None:
    """None when `decide` denies `name` to `profile` for every resource (R2, R3, a deny
    rule without a pattern); otherwise whether the approval rows (R7-R11) always, never
    or only for some resources ask a human. pattern_rules (R4) and deny rules with a
    pattern (R6) only narrow where it is allowed; the former are `resource_patterns`."""
    if _refusal(profile, "", name, mutating=mutating) is not None:
        return None
    rules = [rule for rule in config.rules if rule.operation == name]
    if any(rule.deny and rule.pattern is None for rule in rules):
        return None
    patterns = tuple(p.pattern.pattern for p in profile.pattern_rules if p.operation == name)
    recursive = profile.allow_recursive
    if forced_approval or _listed(profile.requires_approval_for, name):
        return Offer(ApprovalNeed.ALWAYS, patterns, recursive)
    # For a resource no deny rule matches, the first rule whose pattern matches decides.
    candidates = [rule for rule in rules if not rule.deny]
    asks = [
        rule.always_ask or (rule.approval_required and not _bypasses(profile))
        for rule in candidates
    ]
    if not any(asks):
        return Offer(ApprovalNeed.NEVER, patterns, recursive)
    catch_all = next((i for i, rule in enumerate(candidates) if rule.pattern is None), None)
    if catch_all is not None and all(asks[: catch_all + 1]):
        return Offer(ApprovalNeed.ALWAYS, patterns, recursive)
    return Offer(ApprovalNeed.DEPENDS, patterns, recursive)


def find_profile(config: Config, cn: str) -> tuple[int, AgentProfile] | None:
    """First profile, in file order, whose CN pattern matches (with its index)."""
    for index, profile in enumerate(config.agents):
        if profile.matches(cn):
            return index, profile
    return None


def unknown_caller(cn: str) -> Decision:
    return Decision(
        Effect.DENY,
        "unknown_cn",
        f"no agent profile matches CN {cn!r}",
        "default deny: no [[agents]] cn_pattern matches",
    )


def _refusal(profile: AgentProfile, where: str, name: str, *, mutating: bool) -> Decision | None:
    """R2 and R3: what the profile alone refuses, whatever the resource."""
    if profile.autonomy is Autonomy.READ_ONLY and mutating:
        return Decision(
            Effect.DENY,
            "read_only",
            f"agent is read_only and {name} changes state",
            f"{where}.autonomy",
        )
    if not _listed(profile.allowed_operations, name) and not _listed(
        profile.requires_approval_for, name
    ):
        return Decision(
            Effect.DENY,
            "operation_not_allowed",
            f"{name} is not granted to this agent",
            f"default deny: {where} lists neither allowed_operations nor "
            "requires_approval_for for it",
        )
    return None


def _bypasses(profile: AgentProfile) -> bool:
    """R10: full autonomy may skip a rule's approval_required (never always_ask)."""
    return profile.autonomy is Autonomy.FULL and profile.allow_full_autonomy_bypass


def _listed(patterns: tuple[str, ...], name: str) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def _matching_rules(rules: tuple[Rule, ...], operation: Operation) -> Iterator[Rule]:
    """Rules, in file order, whose operation and resource pattern both match."""
    for rule in rules:
        if rule.operation == operation.name and (
            rule.pattern is None or rule.pattern.fullmatch(operation.resource)
        ):
            yield rule
