"""The policy decision table of docs/policy.md: one test per row, then its edges."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from host_agent.cli import main
from host_agent.config import Config, load_config, parse_config
from host_agent.errors import ConfigError
from host_agent.operations import Operation
from host_agent.policy import Effect, decide
from host_agent.request import HostOpRequest
from tests.support import open_zfs


def agent(cn_pattern: str = "librarian*", **keys: Any) -> dict[str, Any]:
    """One [[agents]] table; supervised and granted nothing unless told."""
    return {
        "cn_pattern": cn_pattern,
        "agent_type": "test",
        "unix_user": "tester",
        **keys,
    }


def make_config(*agents: dict[str, Any], rules: tuple[dict[str, Any], ...] = ()) -> Config:
    return parse_config(
        {
            "server": {"cert": "server.crt", "key": "server.key", "client_ca": "ca.crt"},
            "audit": {"log_path": "audit.jsonl"},
            "agents": list(agents),
            "rules": list(rules),
        },
        Path("test.toml"),
    )


def zfs(resource: str, *args: str) -> Operation:
    return open_zfs().parse(HostOpRequest("zfs", resource, args), "tester")


def pct_destroy(resource: str = "101") -> Operation:
    """An operation whose adapter forces approval, whatever the config says."""
    return Operation(
        kind="pct",
        command="destroy",
        resource=resource,
        args=("destroy",),
        wrapper="host-agent-pct",
        wrapper_argv=("destroy", resource),
        mutating=True,
        always_requires_approval=True,
    )


FULL_BYPASS = {"autonomy": "full", "allow_full_autonomy_bypass": True}


@pytest.mark.parametrize(
    ("config", "cn", "operation", "effect", "code", "rule"),
    [
        pytest.param(
            make_config(agent(allowed_operations=["zfs-*"])),
            "stranger",
            zfs("tank", "list"),
            Effect.DENY,
            "unknown_cn",
            "default deny: no [[agents]] cn_pattern matches",
            id="R1-unknown-cn",
        ),
        pytest.param(
            make_config(agent(autonomy="read_only", allowed_operations=["zfs-*"])),
            "librarian-1",
            zfs("tank", "snapshot", "daily"),
            Effect.DENY,
            "read_only",
            "agents[0] (cn_pattern='librarian*').autonomy",
            id="R2-read-only",
        ),
        pytest.param(
            make_config(agent(allowed_operations=["zfs-list"])),
            "librarian-1",
            zfs("tank", "snapshot", "daily"),
            Effect.DENY,
            "operation_not_allowed",
            "default deny: agents[0] (cn_pattern='librarian*') lists neither "
            "allowed_operations nor requires_approval_for for it",
            id="R3-operation-not-allowed",
        ),
        pytest.param(
            make_config(
                agent(
                    allowed_operations=["zfs-snapshot"],
                    resource_rules=[{"operation": "zfs-snapshot", "match": "tank/scratch(/.*)?"}],
                )
            ),
            "librarian-1",
            zfs("tank/media", "snapshot", "daily"),
            Effect.DENY,
            "resource_not_allowed",
            "agents[0] (cn_pattern='librarian*').resource_rules",
            id="R4-resource-not-allowed",
        ),
        pytest.param(
            # Granted zfs-destroy, even without approval, but not its recursive form.
            make_config(agent(allowed_operations=["zfs-destroy"], **FULL_BYPASS)),
            "librarian-1",
            zfs("tank/old", "destroy", "recursive"),
            Effect.DENY,
            "recursive_not_allowed",
            "agents[0] (cn_pattern='librarian*').allow_recursive",
            id="R5-recursive-not-allowed",
        ),
        pytest.param(
            make_config(
                agent(allowed_operations=["zfs-snapshot"]),
                rules=({"operation": "zfs-snapshot", "pattern": "forbidden(/.*)?", "deny": True},),
            ),
            "librarian-1",
            zfs("forbidden/x", "snapshot", "daily"),
            Effect.DENY,
            "rule_denied",
            "rules[0] (operation=zfs-snapshot pattern='forbidden(/.*)?', found anywhere)",
            id="R6-rule-denied",
        ),
        pytest.param(
            # Full autonomy, bypass allowed, no rule at all: the adapter still insists.
            make_config(agent(allowed_operations=["pct-destroy"], **FULL_BYPASS)),
            "librarian-1",
            pct_destroy(),
            Effect.APPROVAL,
            "approval_required",
            "adapter pct",
            id="R7-adapter-forced-approval",
        ),
        pytest.param(
            make_config(
                agent(allowed_operations=["zfs-snapshot"], **FULL_BYPASS),
                rules=(
                    {"operation": "zfs-snapshot", "approval_required": True, "always_ask": True},
                ),
            ),
            "librarian-1",
            zfs("tank", "snapshot", "daily"),
            Effect.APPROVAL,
            "approval_required",
            "rules[0] (operation=zfs-snapshot)",
            id="R8-always-ask",
        ),
        pytest.param(
            # The rule alone would be bypassed (R10); the agent's own list is not.
            make_config(
                agent(requires_approval_for=["zfs-snapshot"], **FULL_BYPASS),
                rules=({"operation": "zfs-snapshot", "approval_required": True},),
            ),
            "librarian-1",
            zfs("tank", "snapshot", "daily"),
            Effect.APPROVAL,
            "approval_required",
            "agents[0] (cn_pattern='librarian*').requires_approval_for",
            id="R9-agent-requires-approval",
        ),
        pytest.param(
            make_config(
                agent(
                    allowed_operations=["zfs-snapshot"],
                    pattern_rules=[{"operation": "zfs-snapshot", "pattern": "prod"}],
                    **FULL_BYPASS,
                )
            ),
            "librarian-1",
            zfs("tank/prod/db", "snapshot", "daily"),
            Effect.APPROVAL,
            "approval_required",
            "agents[0] (cn_pattern='librarian*').pattern_rules (pattern='prod', found anywhere)",
            id="R9-agent-pattern-rules",
        ),
        pytest.param(
            make_config(
                agent(allowed_operations=["zfs-snapshot"], **FULL_BYPASS),
                rules=({"operation": "zfs-snapshot", "approval_required": True},),
            ),
            "librarian-1",
            zfs("tank", "snapshot", "daily"),
            Effect.ALLOW,
            "allowed",
            "rules[0] (operation=zfs-snapshot) bypassed by "
            "agents[0] (cn_pattern='librarian*').allow_full_autonomy_bypass",
            id="R10-full-autonomy-bypass",
        ),
        pytest.param(
            # Full autonomy without the bypass flag still asks.
            make_config(
                agent(allowed_operations=["zfs-snapshot"], autonomy="full"),
                rules=({"operation": "zfs-snapshot", "approval_required": True},),
            ),
            "librarian-1",
            zfs("tank", "snapshot", "daily"),
            Effect.APPROVAL,
            "approval_required",
            "rules[0] (operation=zfs-snapshot)",
            id="R11-rule-approval-required",
        ),
        pytest.param(
            make_config(agent(allowed_operations=["zfs-list"])),
            "librarian-1",
            zfs("tank", "list"),
            Effect.ALLOW,
            "allowed",
            "agents[0] (cn_pattern='librarian*').allowed_operations",
            id="R12-allow",
        ),
    ],
)
def test_decision_table(
    config: Config, cn: str, operation: Operation, effect: Effect, code: str, rule: str
) -> None:
    decision = decide(config, cn, operation)
    assert (decision.effect, decision.code, decision.rule) == (effect, code, rule)
    assert not decision.admin_only


@pytest.mark.parametrize(
    ("keys", "rules"),
    [
        pytest.param({}, (), id="supervised"),
        pytest.param({"allow_full_autonomy_bypass": True}, (), id="supervised-with-bypass-flag"),
        pytest.param(
            FULL_BYPASS,
            ({"operation": "zfs-snapshot", "approval_required": True},),
            id="full-bypass-with-rule",
        ),
    ],
)
def test_always_ask_beats_every_autonomy(keys: dict[str, Any], rules: tuple[Any, ...]) -> None:
    always_ask = {"operation": "zfs-snapshot", "always_ask": True}
    config = make_config(
        agent(allowed_operations=["zfs-snapshot"], **keys), rules=(always_ask, *rules)
    )
    decision = decide(config, "librarian-1", zfs("tank", "snapshot", "daily"))
    assert (decision.effect, decision.code) == (Effect.APPROVAL, "approval_required")
    assert decision.rule == "rules[0] (operation=zfs-snapshot)"


def test_bypass_needs_full_autonomy() -> None:
    config = make_config(
        agent(allowed_operations=["zfs-snapshot"], allow_full_autonomy_bypass=True),
        rules=({"operation": "zfs-snapshot", "approval_required": True},),
    )
    decision = decide(config, "librarian-1", zfs("tank", "snapshot", "daily"))
    assert (decision.effect, decision.rule) == (
        Effect.APPROVAL,
        "rules[0] (operation=zfs-snapshot)",
    )


def test_read_only_agent_may_still_read() -> None:
    config = make_config(agent(autonomy="read_only", allowed_operations=["zfs-*"]))
    decision = decide(config, "librarian-1", zfs("tank", "list"))
    assert (decision.effect, decision.code) == (Effect.ALLOW, "allowed")


def test_read_only_wins_over_requires_approval() -> None:
    config = make_config(agent(autonomy="read_only", requires_approval_for=["zfs-snapshot"]))
    decision = decide(config, "librarian-1", zfs("tank", "snapshot", "daily"))
    assert (decision.effect, decision.code) == (Effect.DENY, "read_only")


@pytest.mark.parametrize(
    ("cn", "matched"),
    [
        pytest.param("librarian-1", True, id="prefix"),
        pytest.param("librarian", True, id="star-matches-empty"),
        pytest.param("my-librarian-1", False, id="not-a-substring-search"),
        pytest.param("Librarian-1", False, id="case-sensitive"),
    ],
)
def test_cn_pattern_is_a_glob(cn: str, matched: bool) -> None:
    config = make_config(agent("librarian*", allowed_operations=["zfs-list"]))
    decision = decide(config, cn, zfs("tank", "list"))
    assert (decision.code == "allowed") is matched
    assert (decision.code == "unknown_cn") is not matched


def test_first_matching_profile_wins() -> None:
    config = make_config(
        agent("admin-*", autonomy="read_only", allowed_operations=["zfs-*"]),
        agent("*", autonomy="full", allowed_operations=["zfs-*"]),
    )
    snapshot = zfs("tank", "snapshot", "daily")

    first = decide(config, "admin-1", snapshot)
    assert (first.code, first.rule) == ("read_only", "agents[0] (cn_pattern='admin-*').autonomy")
    # The catch-all profile only serves CNs no earlier profile matched.
    second = decide(config, "someone-else", snapshot)
    assert (second.code, second.rule) == (
        "allowed",
        "agents[1] (cn_pattern='*').allowed_operations",
    )


@pytest.mark.parametrize(
    ("granted", "operation", "effect"),
    [
        pytest.param(
            {"allowed_operations": ["zfs-*"]}, zfs("tank", "list"), Effect.ALLOW, id="allow"
        ),
        pytest.param(
            {"requires_approval_for": ["zfs-snap*"]},
            zfs("tank", "snapshot", "daily"),
            Effect.APPROVAL,
            id="approval",
        ),
        pytest.param(
            {"allowed_operations": ["zfs-l*"]},
            zfs("tank", "snapshot", "daily"),
            Effect.DENY,
            id="no-match",
        ),
    ],
)
def test_operation_lists_are_globs(
    granted: dict[str, Any], operation: Operation, effect: Effect
) -> None:
    decision = decide(make_config(agent(**granted)), "librarian-1", operation)
    assert decision.effect is effect


@pytest.mark.parametrize(
    ("resource", "code"),
    [
        pytest.param("tank", "allowed", id="exact"),
        pytest.param("tank/x", "resource_not_allowed", id="child-is-not-a-match"),
        pytest.param("mytank", "resource_not_allowed", id="suffix-is-not-a-match"),
    ],
)
def test_resource_rules_must_match_the_whole_resource(resource: str, code: str) -> None:
    config = make_config(
        agent(
            allowed_operations=["zfs-snapshot"],
            resource_rules=[{"operation": "zfs-snapshot", "match": "tank"}],
        )
    )
    assert decide(config, "librarian-1", zfs(resource, "snapshot", "daily")).code == code


def test_resource_rules_any_of_several_may_match_and_other_operations_are_free() -> None:
    config = make_config(
        agent(
            allowed_operations=["zfs-list", "zfs-snapshot"],
            resource_rules=[
                {"operation": "zfs-snapshot", "match": "tank/a"},
                {"operation": "zfs-snapshot", "match": "tank/b(/.*)?"},
            ],
        )
    )
    assert decide(config, "librarian-1", zfs("tank/b/c", "snapshot", "daily")).code == "allowed"
    assert decide(config, "librarian-1", zfs("tank/c", "snapshot", "daily")).code == (
        "resource_not_allowed"
    )
    # zfs-list has no resource rule for this agent, so it is not restricted.
    assert decide(config, "librarian-1", zfs("other", "list")).code == "allowed"


@pytest.mark.parametrize(
    ("resource", "effect"),
    [
        pytest.param("tank", Effect.APPROVAL, id="exact"),
        pytest.param("tank/media", Effect.APPROVAL, id="child-contains-it"),
        pytest.param("rpool/tank-copy", Effect.APPROVAL, id="found-anywhere"),
        pytest.param("rpool/data", Effect.ALLOW, id="not-found"),
    ],
)
def test_pattern_rules_ask_a_human_where_the_pattern_is_found(
    resource: str, effect: Effect
) -> None:
    """The predecessor's meaning: a resource in which the pattern is found needs a
    human, for an operation the agent may otherwise run alone."""
    config = make_config(
        agent(
            allowed_operations=["zfs-snapshot"],
            pattern_rules=[{"operation": "zfs-snapshot", "pattern": "tank"}],
            **FULL_BYPASS,  # the bypass lifts rules' approval_required only, never these
        )
    )
    assert decide(config, "librarian-1", zfs(resource, "snapshot", "daily")).effect is effect


@pytest.mark.parametrize(
    ("key", "resource", "effect"),
    [
        # The predecessor's reproduction: `pattern = "tank"` held tank/media for a human.
        pytest.param("pattern", "tank/media", Effect.APPROVAL, id="pattern-child"),
        pytest.param("pattern", "backup/tank", Effect.APPROVAL, id="pattern-anywhere"),
        pytest.param("pattern", "rpool", Effect.ALLOW, id="pattern-not-found"),
        pytest.param("match", "tank", Effect.APPROVAL, id="match-exact"),
        pytest.param("match", "tank/media", Effect.ALLOW, id="match-child-is-not-whole"),
    ],
)
def test_rule_pattern_is_found_anywhere_and_match_is_whole(
    key: str, resource: str, effect: Effect
) -> None:
    config = make_config(
        agent(allowed_operations=["zfs-snapshot"]),
        rules=({"operation": "zfs-snapshot", key: "tank", "approval_required": True},),
    )
    assert decide(config, "librarian-1", zfs(resource, "snapshot", "daily")).effect is effect


def test_a_rule_takes_pattern_or_match_not_both() -> None:
    with pytest.raises(ConfigError) as raised:
        make_config(
            agent(allowed_operations=["zfs-snapshot"]),
            rules=({"operation": "zfs-snapshot", "pattern": "a", "match": "a"},),
        )
    assert any(p.startswith("rules[0].match: use either pattern") for p in raised.value.problems)


def test_an_allowing_search_ahead_of_a_rule_that_asks_is_warned_about() -> None:
    config = make_config(
        agent(allowed_operations=["zfs-snapshot"]),
        rules=(
            {"operation": "zfs-snapshot", "pattern": "tank/scratch"},
            {"operation": "zfs-snapshot", "approval_required": True},
        ),
    )
    assert any(w.startswith("rules[0]: allows zfs-snapshot") for w in config.warnings)
    # What it warns about: the search lets a look-alike dataset skip the approval.
    decision = decide(config, "librarian-1", zfs("tank/scratchpad-prod", "snapshot", "d"))
    assert decision.effect is Effect.ALLOW


@pytest.mark.parametrize(
    ("resource", "effect", "code", "rule"),
    [
        pytest.param(
            "tank/a",
            Effect.DENY,
            "rule_denied",
            "rules[2] (operation=zfs-snapshot)",
            id="later-deny-overrides-earlier-match",
        ),
        pytest.param(
            "other",
            Effect.DENY,
            "rule_denied",
            "rules[2] (operation=zfs-snapshot)",
            id="non-matching-pattern-falls-through",
        ),
    ],
)
def test_deny_overrides_and_non_matching_patterns_fall_through(
    resource: str, effect: Effect, code: str, rule: str
) -> None:
    config = make_config(
        agent(allowed_operations=["zfs-list", "zfs-snapshot"]),
        rules=(
            {"operation": "zfs-list", "deny": True},  # another operation: never consulted
            {"operation": "zfs-snapshot", "pattern": "tank/.*", "approval_required": True},
            {"operation": "zfs-snapshot", "deny": True},
        ),
    )
    decision = decide(config, "librarian-1", zfs(resource, "snapshot", "daily"))
    assert (decision.effect, decision.code, decision.rule) == (effect, code, rule)


def test_matching_rule_without_approval_names_itself_on_allow() -> None:
    config = make_config(
        agent(allowed_operations=["zfs-list"]),
        rules=({"operation": "zfs-list", "approval_required": False},),
    )
    decision = decide(config, "librarian-1", zfs("tank", "list"))
    assert (decision.effect, decision.rule) == (Effect.ALLOW, "rules[0] (operation=zfs-list)")


ADMIN_ONLY = {"approval_admin_only": True}


@pytest.mark.parametrize(
    ("config", "operation", "rule"),
    [
        pytest.param(
            make_config(
                agent(allowed_operations=["pct-destroy"]),
                rules=({"operation": "pct-destroy", "always_ask": True, **ADMIN_ONLY},),
            ),
            pct_destroy(),
            "adapter pct",
            id="R7",
        ),
        pytest.param(
            make_config(
                agent(allowed_operations=["zfs-snapshot"]),
                rules=({"operation": "zfs-snapshot", "always_ask": True, **ADMIN_ONLY},),
            ),
            zfs("tank", "snapshot", "daily"),
            "rules[0] (operation=zfs-snapshot)",
            id="R8",
        ),
        pytest.param(
            make_config(
                agent(requires_approval_for=["zfs-snapshot"]),
                rules=({"operation": "zfs-snapshot", **ADMIN_ONLY},),
            ),
            zfs("tank", "snapshot", "daily"),
            "agents[0] (cn_pattern='librarian*').requires_approval_for",
            id="R9",
        ),
        pytest.param(
            make_config(
                agent(allowed_operations=["zfs-snapshot"]),
                rules=({"operation": "zfs-snapshot", "approval_required": True, **ADMIN_ONLY},),
            ),
            zfs("tank", "snapshot", "daily"),
            "rules[0] (operation=zfs-snapshot)",
            id="R11",
        ),
    ],
)
def test_approval_admin_only_is_carried(config: Config, operation: Operation, rule: str) -> None:
    decision = decide(config, "librarian-1", operation)
    assert (decision.effect, decision.rule, decision.admin_only) == (Effect.APPROVAL, rule, True)
    assert decision.as_dict()["admin_only"] is True


def test_admin_only_of_a_non_matching_rule_is_not_carried() -> None:
    config = make_config(
        agent(requires_approval_for=["zfs-snapshot"]),
        rules=({"operation": "zfs-snapshot", "pattern": "other", **ADMIN_ONLY},),
    )
    decision = decide(config, "librarian-1", zfs("tank", "snapshot", "daily"))
    assert (decision.effect, decision.admin_only) == (Effect.APPROVAL, False)


# --- host-agent policy explain ------------------------------------------------

EXPLAIN_CONFIG = """
[server]
cert = "server.crt"
key = "server.key"
client_ca = "ca.crt"

[audit]
log_path = "audit.jsonl"

[[agents]]
cn_pattern = "librarian*"
agent_type = "librarian"
unix_user = "librarian"
allowed_operations = ["zfs-list", "zfs-snapshot"]

[[rules]]
operation = "zfs-snapshot"
pattern = "tank/.*"
approval_required = true
approval_admin_only = true

[zfs]
allowed_datasets = ["tank/*"]
"""


def explain(tmp_path: Path, *args: str) -> int:
    path = tmp_path / "agent.toml"
    path.write_text(EXPLAIN_CONFIG)
    return main(["policy", "explain", "--config", str(path), "--cn", "librarian-1", *args])


def test_policy_explain_prints_the_decision(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = explain(tmp_path, "--kind", "zfs", "--resource", "tank/media", "--", "snapshot", "d1")
    out, err = capsys.readouterr()
    assert status == 0
    assert err == ""
    assert out.splitlines() == [
        "operation: zfs-snapshot on tank/media",
        "decision:  approval_required (approval_required)",
        "reason:    zfs-snapshot needs approval",
        "rule:      rules[0] (operation=zfs-snapshot pattern='tank/.*', found anywhere)",
        "approver:  admin only",
    ]


def test_policy_explain_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = explain(tmp_path, "--json", "--kind", "zfs", "--", "list")
    out, _ = capsys.readouterr()
    assert status == 0
    assert json.loads(out) == {
        "operation": "zfs-list",
        "resource": "",
        "effect": "allow",
        "code": "allowed",
        "reason": "zfs-list allowed",
        "rule": "agents[0] (cn_pattern='librarian*').allowed_operations",
        "admin_only": False,
        "approvals_required": 1,
    }


def test_policy_explain_matches_decide(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    explain(tmp_path, "--json", "--kind", "zfs", "--resource", "tank/a", "--", "snapshot", "d1")
    printed = json.loads(capsys.readouterr().out)
    config = load_config(tmp_path / "agent.toml")
    decision = decide(config, "librarian-1", zfs("tank/a", "snapshot", "d1"))
    assert decision.effect is Effect.APPROVAL
    assert printed == {"operation": "zfs-snapshot", "resource": "tank/a", **decision.as_dict()}


def test_policy_explain_invalid_argument_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = explain(tmp_path, "--kind", "zfs", "--resource", "tank", "--", "snapshot", "-rf")
    out, err = capsys.readouterr()
    assert status == 1
    assert out == ""
    assert err.splitlines() == ["host-agent: error: args[1]: snapshot name must not start with '-'"]


def test_a_rule_can_ask_for_several_approvers() -> None:
    config = make_config(
        agent(allowed_operations=["zfs-destroy"]),
        rules=({"operation": "zfs-destroy", "approval_required": True, "approvals_required": 2},),
    )
    decision = decide(config, "librarian-1", zfs("tank/a@old", "destroy"))
    assert (decision.effect, decision.approvals_required) == (Effect.APPROVAL, 2)
    # Without a matching rule (the agent's own requires_approval_for), one approver suffices.
    listed = make_config(agent(requires_approval_for=["zfs-destroy"]))
    alone = decide(listed, "librarian-1", zfs("tank/a@old", "destroy"))
    assert (alone.effect, alone.approvals_required) == (Effect.APPROVAL, 1)


def config_without_rules(**keys: Any) -> Config:
    """A predecessor-style file that names no [[rules]] at all."""
    return parse_config(
        {
            "server": {"cert": "server.crt", "key": "server.key", "client_ca": "ca.crt"},
            "audit": {"log_path": "audit.jsonl"},
            "agents": [agent(allowed_operations=["*"], **keys)],
        },
        Path("test.toml"),
    )


def pct(command: str) -> Operation:
    return Operation("pct", command, "101", (command,), "host-agent-pct", (command, "101"), True)


@pytest.mark.parametrize(
    ("operation", "keys", "admin_only"),
    [
        # always_ask: even full autonomy with the bypass asks.
        pytest.param(zfs("tank/a@old", "destroy"), FULL_BYPASS, False, id="zfs-destroy"),
        pytest.param(zfs("tank/a@old", "rollback"), FULL_BYPASS, False, id="zfs-rollback"),
        pytest.param(pct_destroy(), FULL_BYPASS, True, id="pct-destroy"),
        pytest.param(pct("start"), {}, False, id="pct-start"),
        pytest.param(pct("stop"), {}, False, id="pct-stop"),
    ],
)
def test_without_rules_the_predecessors_built_in_rules_ask_a_human(
    operation: Operation, keys: dict[str, Any], admin_only: bool
) -> None:
    """A predecessor file with no [[rules]] ran on its Config::default() rules, which
    held these for a human; so does this agent."""
    config = config_without_rules(**keys)
    decision = decide(config, "librarian-1", operation)
    assert (decision.effect, decision.admin_only) == (Effect.APPROVAL, admin_only)
    assert any(w.startswith("rules: none given") for w in config.warnings)


def test_the_built_in_git_checkout_rule_asks_unless_bypassed() -> None:
    checkout = Operation(
        "git", "checkout", "/srv/app", ("checkout", "main"), "host-agent-git", ("checkout",), True
    )
    decision = decide(config_without_rules(), "librarian-1", checkout)
    assert (decision.effect, decision.rule) == (
        Effect.APPROVAL,
        "built-in rules[5] (operation=git-checkout)",
    )
    assert decide(config_without_rules(**FULL_BYPASS), "librarian-1", checkout).effect is (
        Effect.ALLOW
    )


def test_an_empty_rules_list_means_no_rules() -> None:
    config = make_config(agent(allowed_operations=["*"]))
    assert config.rules == ()
    assert decide(config, "librarian-1", pct("start")).effect is Effect.ALLOW
