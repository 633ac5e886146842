"""Default-deny policy: who may do which operation, and what needs a human.

The decision table, row by row, is in docs/policy.md; tests/test_policy.py has
one test per row. Policy only decides: it never runs, audits or approves.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from fnmatch import fnmatchcase

from host_agent.config import AgentProfile, Autonomy, Config
from host_agent.operations import ApprovalNeed, Operation


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

    restrictions = [r for r in profile.resource_rules if r.operation == name]
    if restrictions and not any(r.match.fullmatch(operation.resource) for r in restrictions):
        return Decision(
            Effect.DENY,
            "resource_not_allowed",
            f"resource {operation.resource!r} is outside this agent's resource_rules for {name}",
            f"{where}.resource_rules",
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
    matching = [r for r in config.rules if r.operation == name and r.applies_to(operation.resource)]
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
    found_pattern = next(
        (
            p
            for p in profile.pattern_rules
            if p.operation == name and p.pattern.search(operation.resource)
        ),
        None,
    )
    if found_pattern is not None:
        return Decision(
            Effect.APPROVAL,
            "approval_required",
            f"{name} on a resource containing {found_pattern.pattern.pattern!r} needs approval "
            "for this agent",
            f"{where}.pattern_rules (pattern={found_pattern.pattern.pattern!r}, found anywhere)",
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


@dataclass(frozen=True, slots=True)
class Offer:
    """What `decide` can answer one caller for one operation name, whatever the resource."""

    approval: ApprovalNeed
    # The caller's resource_rules for the operation: a resource must fully match one (R4).
    resource_patterns: tuple[str, ...]
    # Whether recursive calls can be allowed (R5).
    recursive: bool
    # Acting for an agent: that agent's resource_rules, which a resource must match too.
    agent_resource_patterns: tuple[str, ...] = ()


def offer(
    config: Config,
    profile: AgentProfile,
    name: str,
    *,
    mutating: bool,
    forced_approval: ApprovalNeed,
) -> Offer | None:
    """None when `decide` denies `name` to `profile` for every resource (R2, R3, a deny
    rule for every resource); otherwise whether the approval rows (R7-R11) always, never
    or only for some resources ask a human. resource_rules (R4) and deny rules with a
    pattern (R6) only narrow where it is allowed; the former are `resource_patterns`."""
    if _refusal(profile, "", name, mutating=mutating) is not None:
        return None
    rules = [rule for rule in config.rules if rule.operation == name]
    if any(rule.deny and rule.covers_every_resource for rule in rules):
        return None
    patterns = tuple(r.match.pattern for r in profile.resource_rules if r.operation == name)
    recursive = profile.allow_recursive
    if forced_approval is ApprovalNeed.ALWAYS or _listed(profile.requires_approval_for, name):
        return Offer(ApprovalNeed.ALWAYS, patterns, recursive)
    # For a resource no deny rule matches, the first rule that applies to it decides.
    candidates = [rule for rule in rules if not rule.deny]
    asks = [
        rule.always_ask or (rule.approval_required and not _bypasses(profile))
        for rule in candidates
    ]
    catch_all = next((i for i, rule in enumerate(candidates) if rule.covers_every_resource), None)
    if catch_all is not None and all(asks[: catch_all + 1]):
        return Offer(ApprovalNeed.ALWAYS, patterns, recursive)
    sometimes = (
        any(asks)
        or forced_approval is ApprovalNeed.DEPENDS
        or any(p.operation == name for p in profile.pattern_rules)
    )
    return Offer(ApprovalNeed.DEPENDS if sometimes else ApprovalNeed.NEVER, patterns, recursive)


_NEED_ORDER = (ApprovalNeed.NEVER, ApprovalNeed.DEPENDS, ApprovalNeed.ALWAYS)


def narrowed(first: Offer | None, second: Offer | None) -> Offer | None:
    """What two profiles both offer (a proxy acting for an agent): the stricter need for
    a human, each one's resource_rules, recursion only if both allow it."""
    if first is None or second is None:
        return None
    need = max(first.approval, second.approval, key=_NEED_ORDER.index)
    return Offer(
        need,
        first.resource_patterns,
        first.recursive and second.recursive,
        second.resource_patterns,
    )


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
    if not grants(profile, name):
        return Decision(
            Effect.DENY,
            "operation_not_allowed",
            f"{name} is not granted to this agent",
            f"default deny: {where} lists neither allowed_operations nor "
            "requires_approval_for for it",
        )
    return None


def grants(profile: AgentProfile, name: str) -> bool:
    """Whether the profile lists `name` at all (R3), with or without a human."""
    return _listed(profile.allowed_operations, name) or _listed(profile.requires_approval_for, name)


def _bypasses(profile: AgentProfile) -> bool:
    """R10: full autonomy may skip a rule's approval_required (never always_ask)."""
    return profile.autonomy is Autonomy.FULL and profile.allow_full_autonomy_bypass


def _listed(patterns: tuple[str, ...], name: str) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)
