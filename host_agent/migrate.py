"""`host-agent migrate`: what a predecessor config does differently here, rule by rule.

The predecessor (`clash-host-agent`) is modelled from its source, not guessed:
for an operation it used only the *first* `[[rules]]` entry naming it, which
asked a human when `approval_required` was set and its `pattern` was found in
the resource (`Regex::is_match`), unless the agent had `autonomy = "full"` with
`allow_full_autonomy_bypass` and the rule lacked `always_ask`. `/host/op` took
that agent from the file's *first* profile, whoever called; `/zfs/*` from the
caller's. It matched a CN by prefix (`name*`) or exactly, served every CN its CA
signed, and ran every operation it did not hold.

A finding that `loosens` is a request the predecessor held or refused that this
agent, loaded with the same file, would run: invariant 13 says there are none,
or the operator is told here. Every other difference that applies to the file
is a `change`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from host_agent.config import AgentProfile, Autonomy, Config, Rule
from host_agent.operations import OPERATION_NAMES
from host_agent.policy import grants


class Impact(StrEnum):
    LOOSENS = "loosens"
    CHANGES = "changes"


@dataclass(frozen=True, slots=True)
class Finding:
    impact: Impact
    subject: str  # the config entry it is about: "rules[0]", "agents[1]", "[git]"
    text: str  # what the predecessor did and what this agent does
    action: str  # what the operator should do ("" when nothing is needed)


# Operations the predecessor knew; the others are new here and cannot loosen anything.
_PREDECESSOR_OPERATIONS = frozenset(
    name for name in OPERATION_NAMES if name not in {"git-diff", "exec-run"}
)
# What a CN pattern may hold to mean the same under a prefix match and under fnmatch.
_GLOB_CHARACTERS = frozenset("*?[")


def review(config: Config, raw: dict[str, Any]) -> list[Finding]:
    """Every finding for `config`, loaded from the decoded TOML document `raw`."""
    return [
        *_identity(config),
        *_rules(config, raw),
        *_bypass(config),
        *_profiles(config),
        *_targets(config),
        *_paths(config),
        *_fixed(config),
        *(Finding(Impact.CHANGES, "config", warning, "") for warning in config.warnings),
    ]


def _identity(config: Config) -> Iterator[Finding]:
    patterns = [(f"agents[{i}].cn_pattern", p.cn_pattern) for i, p in enumerate(config.agents)]
    if config.approval.admin_cn_pattern is not None:
        patterns.append(("approval.admin_cn_pattern", config.approval.admin_cn_pattern))
    for subject, pattern in patterns:
        if not _same_under_both_matches(pattern):
            yield Finding(
                Impact.LOOSENS,
                subject,
                f"{pattern!r} is a shell glob here and matches CNs the predecessor's "
                "prefix-or-exact match did not, so a CN may now get this entry's rights",
                "write it as a fixed CN or a prefix followed by one '*'",
            )
    yield Finding(
        Impact.CHANGES,
        "[[agents]]",
        "the predecessor served every CN its CA signed; here a CN no profile matches is "
        "refused (403 unknown_cn)",
        "give every client a profile",
    )


def _same_under_both_matches(pattern: str) -> bool:
    stem = pattern.removesuffix("*")
    return not _GLOB_CHARACTERS.intersection(stem)


def _rules(config: Config, raw: dict[str, Any]) -> Iterator[Finding]:
    if "rules" not in raw and "rule" not in raw:
        yield Finding(
            Impact.CHANGES,
            "[[rules]]",
            "none given: the predecessor's built-in rules apply (zfs-destroy, zfs-rollback "
            "and pct-destroy always ask a human, pct-destroy an admin; pct-start, pct-stop "
            "and git-checkout ask one)",
            "",
        )
        return
    first: dict[str, Rule] = {}
    for rule in config.rules:
        subject = f"rules[{rule.index}]"
        if rule.operation in first:
            yield Finding(
                Impact.CHANGES,
                subject,
                f"the predecessor used only the first rule for {rule.operation} "
                f"(rules[{first[rule.operation].index}]) and ignored this one; here it "
                "applies to the resources it names",
                "",
            )
            continue
        first[rule.operation] = rule
        if rule.always_ask and not rule.approval_required:
            yield Finding(
                Impact.CHANGES,
                subject,
                "always_ask without approval_required asked nobody in the predecessor; "
                "here it asks a human",
                "",
            )


def _bypass(config: Config) -> Iterator[Finding]:
    """/host/op judged every caller by the first profile's bypass: a later profile's
    own bypass, honoured here, lifts holds the predecessor kept on that route."""
    if not config.agents:
        return
    first_bypasses = _bypasses(config.agents[0])
    held = [
        rule
        for rule in _first_rules(config)
        if rule.approval_required
        and not rule.always_ask
        and rule.operation in _PREDECESSOR_OPERATIONS
    ]
    for index, profile in enumerate(config.agents):
        if first_bypasses or not _bypasses(profile):
            continue
        for rule in held:
            if not grants(profile, rule.operation):
                continue
            yield Finding(
                Impact.LOOSENS,
                f"agents[{index}]",
                f"{rule.operation} where rules[{rule.index}] asks a human: the predecessor "
                "held it on /host/op (it judged every caller by the first profile, which "
                "has no bypass) and ran it on /zfs/*; here this profile's "
                "allow_full_autonomy_bypass lifts the hold on both",
                "set allow_full_autonomy_bypass = false, or always_ask = true on the rule",
            )


def _first_rules(config: Config) -> list[Rule]:
    seen: set[str] = set()
    first = []
    for rule in config.rules:
        if rule.operation not in seen:
            seen.add(rule.operation)
            first.append(rule)
    return first


def _bypasses(profile: AgentProfile) -> bool:
    return profile.autonomy is Autonomy.FULL and profile.allow_full_autonomy_bypass


def _profiles(config: Config) -> Iterator[Finding]:
    for index, profile in enumerate(config.agents):
        subject = f"agents[{index}]"
        refused = sorted(n for n in _PREDECESSOR_OPERATIONS if not grants(profile, n))
        if refused:
            yield Finding(
                Impact.CHANGES,
                subject,
                "the predecessor never checked allowed_operations; here these are refused "
                f"to {profile.cn_pattern!r}: {', '.join(refused)}",
                "list in allowed_operations or requires_approval_for what it needs",
            )
        if profile.autonomy is Autonomy.READ_ONLY:
            yield Finding(
                Impact.CHANGES,
                subject,
                "read_only is enforced: every operation that changes state is refused",
                "",
            )
        if profile.pattern_rules:
            yield Finding(
                Impact.CHANGES,
                f"{subject}.pattern_rules",
                "a resource in which a pattern is found asks a human for this agent, "
                "whatever its autonomy (the predecessor only consulted them for operations "
                "in neither list, which asked anyway)",
                "",
            )


def _targets(config: Config) -> Iterator[Finding]:
    if not config.git.allowed_repos:
        yield Finding(
            Impact.CHANGES,
            "[git] allowed_repos",
            "empty: the predecessor allowed any absolute path; here git is refused",
            "list the repositories (or directories holding them)",
        )
    if not config.zfs.run_as_caller:
        yield Finding(
            Impact.CHANGES,
            "[zfs]",
            "the predecessor ran zfs as the profile's unix_user (sudo -u), so `zfs allow` "
            "limited each caller; here the wrapper runs zfs as root, limited by "
            "allowed_datasets",
            "set [zfs] run_as_caller = true to keep the delegation, and allowed_datasets",
        )


def _paths(config: Config) -> Iterator[Finding]:
    """The predecessor's files the agent would now use: its certificates work as they
    are; its audit log is not one host-agent can continue."""
    if config.audit.log_path.is_relative_to("/var/log/clash"):
        yield Finding(
            Impact.CHANGES,
            "audit.log_path",
            f"{config.audit.log_path} is the predecessor's log: host-agent keeps a "
            "hash-chained log and will not start on a file whose last line is not its own",
            'set log_path = "/var/log/host-agent/audit.jsonl" (install.sh makes the '
            "directory); keep the old files as they are",
        )
    certificates = (config.server.cert, config.server.key, config.server.client_ca)
    if any(path.is_relative_to("/etc/clash") for path in certificates):
        yield Finding(
            Impact.CHANGES,
            "[server]",
            "the certificates are under /etc/clash: they work as they are, but the "
            "service account must read them, and host-agent's CRL job keeps "
            "/etc/host-agent/certs/crl.pem",
            "copy them to /etc/host-agent/certs (docs/operations.md, step 2)",
        )


def _fixed(config: Config) -> Iterator[Finding]:
    """Differences every predecessor file meets; docs/operations.md has the whole table."""
    if config.approval.admin_cn_pattern is None:
        yield Finding(
            Impact.CHANGES,
            "approval.admin_cn_pattern",
            "not set: the predecessor let any client POST /approve; here nobody may",
            "set it to your admins' CNs, or approve over Signal or on the host",
        )
    yield Finding(
        Impact.CHANGES,
        "wire",
        "requesters never hold a token: a request that needs a human answers 202 with "
        "an approval_id, and is resent with it once approved (approval_token is refused)",
        "update clients (docs/api.md)",
    )


def render(findings: list[Finding]) -> str:
    """The report: what loosens first, then every other change, one entry a line."""
    lines = []
    for impact, title in (
        (Impact.LOOSENS, "Held or refused by clash-host-agent, run by host-agent"),
        (Impact.CHANGES, "Other differences for this file"),
    ):
        chosen = [f for f in findings if f.impact is impact]
        lines.append(f"{title}: {len(chosen) or 'none'}")
        for finding in chosen:
            lines.append(f"  {finding.subject}: {finding.text}")
            if finding.action:
                lines.append(f"    -> {finding.action}")
    return "\n".join(lines) + "\n"
