"""GET /v1/tools/manifest over mutual TLS: each caller sees the tools policy lets it ask for."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from host_agent.config import Config, parse_config
from host_agent.openai_tools import CHECK_APPROVAL, STRICT_KEYWORDS, strict_schema
from host_agent.operations import OPERATION_NAMES, ApprovalNeed, Operation
from host_agent.policy import Effect, decide, find_profile, offer
from host_agent.tools import SCHEMA_DIALECT
from tests.served import Served
from tests.support import (
    Pki,
    RunningAgent,
    audit_records,
    client,
    config_text,
    running_agent,
    write_config,
)

MANIFEST = "/v1/tools/manifest"
TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")

EXTRA = """
[git]
allowed_repos = ["/srv/app"]

[exec]
enabled = true
allowed_commands = ["/usr/bin/uptime", "/usr/bin/du"]
playbook_dir = "/etc/host-agent/playbooks"
allowed_playbooks = ["site.yml"]

[exec.argument_patterns]
"/usr/bin/du" = ["-s", "/srv/[a-z]+"]

[[rules]]
operation = "zfs-get"
deny = true

[[rules]]
operation = "zfs-rollback"
pattern = "tank/.*"
deny = true

[[rules]]
operation = "systemd-restart"
pattern = "db.*"
approval_required = true

[[rules]]
operation = "systemd-stop"
always_ask = true
"""

# Before the standard profiles, so they win the first match for these CNs.
PROFILES = """
[[agents]]
cn_pattern = "reader-*"
agent_type = "auditor"
unix_user = "auditor"
autonomy = "read_only"
allowed_operations = ["*"]
requires_approval_for = ["zfs-destroy"]

[[agents]]
cn_pattern = "admin-*"
agent_type = "operator"
unix_user = "operator"
autonomy = "full"
allowed_operations = ["*"]
allow_recursive = true

[[agents.resource_rules]]
operation = "zfs-snapshot"
match = "tank/.*"

[[agents.pattern_rules]]
operation = "zfs-snapshot"
pattern = "prod"
"""


def manifest(agent: RunningAgent, pki: Pki, cn: str) -> dict[str, Any]:
    with client(agent, pki, cn) as http:
        reply = http.get(MANIFEST)
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


def names(body: dict[str, Any]) -> list[str]:
    return [tool["function"]["name"] for tool in body["tools"]]


def tool(body: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(t for t in body["tools"] if t["function"]["name"] == name)
    return found


def approval(body: dict[str, Any]) -> dict[str, str]:
    return {t["function"]["name"]: t["x-host-agent"]["approval"] for t in body["tools"]}


@pytest.fixture
def policy_agent(pki: Pki, tmp_path: Path) -> Any:
    text = config_text(pki, tmp_path, profiles=PROFILES, extra=EXTRA)
    with running_agent(write_config(tmp_path / "agent.toml", text)) as agent:
        yield agent


def test_each_caller_sees_the_tools_its_profile_grants(agent: RunningAgent, pki: Pki) -> None:
    librarian = manifest(agent, pki, "librarian-1")
    assert names(librarian) == ["zfs-destroy", "zfs-list", "zfs-snapshot"]
    assert approval(librarian) == {
        "zfs-destroy": "always",
        "zfs-list": "never",
        "zfs-snapshot": "never",
    }
    assert names(manifest(agent, pki, "reader-1")) == ["zfs-list"]
    assert names(manifest(agent, pki, "admin-1")) == [
        "zfs-destroy",
        "zfs-get",
        "zfs-list",
        "zfs-rollback",
        "zfs-snapshot",
    ]


def test_the_manifest_is_openai_tools_with_2020_12_schemas(agent: RunningAgent, pki: Pki) -> None:
    body = manifest(agent, pki, "librarian-1")
    assert body["cn"] == "librarian-1"
    assert body["agent_type"] == "librarian"
    assert body["autonomy"] == "supervised"
    assert body["approvals_enabled"] is True
    assert body["schema_dialect"] == SCHEMA_DIALECT
    for entry in body["tools"]:
        assert set(entry) == {"type", "function", "x-host-agent"}
        assert entry["type"] == "function"
        function = entry["function"]
        assert set(function) == {"name", "description", "parameters"}
        assert TOOL_NAME.fullmatch(function["name"])
        assert function["name"] in OPERATION_NAMES
        assert function["description"]
        Draft202012Validator.check_schema(function["parameters"])
        extension = entry["x-host-agent"]
        assert f"{extension['kind']}-{extension['command']}" == function["name"]
        assert set(extension) == {"kind", "command", "mutating", "approval", "resource_patterns"}
    destroy = tool(body, "zfs-destroy")
    assert destroy["x-host-agent"]["mutating"] is True
    assert "human approves" in destroy["function"]["description"]
    # librarian lacks allow_recursive: the tool does not offer 'recursive' at all.
    assert "args" not in destroy["function"]["parameters"]["properties"]


def test_a_read_only_profile_sees_no_mutating_tool(policy_agent: RunningAgent, pki: Pki) -> None:
    body = manifest(policy_agent, pki, "reader-1")
    # zfs-get is denied to everyone by a rule; zfs-destroy (requires_approval_for)
    # stays hidden because read_only comes first.
    assert names(body) == [
        "git-diff",
        "git-log",
        "git-status",
        "pct-status",
        "systemd-status",
        "zfs-list",
    ]
    assert all(t["x-host-agent"]["mutating"] is False for t in body["tools"])


def test_deny_rules_and_approvals_shape_the_manifest(policy_agent: RunningAgent, pki: Pki) -> None:
    body = manifest(policy_agent, pki, "admin-1")
    listed = names(body)
    # A deny rule without a pattern hides the tool; one with a pattern does not.
    assert "zfs-get" not in listed
    assert "zfs-rollback" in listed
    # pct-create: no [pct] allowed_ostemplates, so no request could pass.
    assert listed == sorted(OPERATION_NAMES - {"zfs-get", "pct-create"})
    asks = approval(body)
    assert asks["pct-destroy"] == "always"  # the adapter forces it
    assert asks["systemd-stop"] == "always"  # always_ask without a pattern
    assert asks["systemd-restart"] == "depends"  # approval_required for db.* only
    assert asks["systemd-start"] == "never"
    assert asks["zfs-snapshot"] == "depends"  # pattern_rules: where 'prod' is found
    assert asks["exec-run"] == "depends"  # playbooks need a human, commands do not
    snapshot = tool(body, "zfs-snapshot")
    assert snapshot["x-host-agent"]["resource_patterns"] == ["tank/.*"]
    assert "tank/.*" in snapshot["function"]["description"]
    # allow_recursive: 'recursive' is offered.
    destroy = tool(body, "zfs-destroy")["function"]["parameters"]
    assert destroy["properties"]["args"]["items"]["enum"] == ["recursive"]


def test_exec_lists_the_configured_commands_and_playbooks(
    policy_agent: RunningAgent, pki: Pki
) -> None:
    run = tool(manifest(policy_agent, pki, "admin-1"), "exec-run")["function"]["parameters"]
    expected = ["/usr/bin/uptime", "/usr/bin/du", "ansible://site.yml"]
    assert run["properties"]["resource"]["enum"] == expected
    branches = {b["properties"]["resource"]["const"]: b for b in run["anyOf"]}
    assert list(branches) == expected
    du = branches["/usr/bin/du"]["properties"]["args"]
    assert [p["pattern"] for p in du["prefixItems"]] == ["^(?:-s)$", "^(?!-)(?:/srv/[a-z]+)$"]
    assert branches["/usr/bin/uptime"]["properties"]["args"]["maxItems"] == 0
    git = tool(manifest(policy_agent, pki, "admin-1"), "git-status")["function"]["parameters"]
    assert git["properties"]["resource"]["pattern"].startswith("^(?!-)(?:/srv/app")


def test_tools_that_always_need_a_human_are_hidden_without_approvals(
    pki: Pki, tmp_path: Path
) -> None:
    text = config_text(pki, tmp_path, approvals=False)
    with running_agent(write_config(tmp_path / "agent.toml", text)) as agent:
        body = manifest(agent, pki, "librarian-1")
    assert body["approvals_enabled"] is False
    assert names(body) == ["zfs-list", "zfs-snapshot"]


def test_an_unknown_cn_is_refused_and_reads_are_not_audited(agent: RunningAgent, pki: Pki) -> None:
    before = audit_records(agent.config.audit.log_path)
    with client(agent, pki, "stranger") as http:
        reply = http.get(MANIFEST)
    assert reply.status_code == 403
    assert reply.json()["error"]["code"] == "unknown_cn"
    manifest(agent, pki, "librarian-1")
    assert audit_records(agent.config.audit.log_path) == before


def test_adapters_that_can_accept_nothing_offer_no_tool(pki: Pki, tmp_path: Path) -> None:
    """No [git] allowed_repos, exec switched off, no [pct] allowed_ostemplates: no git,
    exec or pct-create tool, even for '*'."""
    everything = """
[[agents]]
cn_pattern = "admin-*"
agent_type = "operator"
unix_user = "operator"
autonomy = "full"
allowed_operations = ["*"]
"""
    text = config_text(pki, tmp_path, profiles=everything)
    with running_agent(write_config(tmp_path / "agent.toml", text)) as agent:
        listed = names(manifest(agent, pki, "admin-1"))
    assert listed == sorted(
        name
        for name in OPERATION_NAMES
        if not name.startswith(("git-", "exec-")) and name != "pct-create"
    )


def test_the_manifest_follows_a_config_reload(served: Served) -> None:
    def listed() -> list[str]:
        with served.client() as http:
            reply = http.get(MANIFEST)
        assert reply.status_code == 200, reply.text
        return names(reply.json())

    assert listed() == ["zfs-destroy", "zfs-list", "zfs-snapshot"]
    text = served.config.read_text()
    served.config.write_text(text + '\n[[rules]]\noperation = "zfs-list"\ndeny = true\n')
    served.sighup("reloaded")
    assert listed() == ["zfs-destroy", "zfs-snapshot"]


# --- policy.offer: the manifest's view of decide ------------------------------------


def policy_config(rules: list[dict[str, Any]], **agent: Any) -> Config:
    profile = {"cn_pattern": "a*", "agent_type": "t", "unix_user": "t", **agent}
    return parse_config(
        {
            "server": {"cert": "s.crt", "key": "s.key", "client_ca": "ca.crt"},
            "audit": {"log_path": "audit.jsonl"},
            "agents": [profile],
            "rules": rules,
        },
        Path("test.toml"),
    )


def ask(pattern: str | None = None, **keys: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {"operation": "systemd-restart", **keys}
    if pattern is not None:
        rule["pattern"] = pattern
    return rule


GRANTED = {"allowed_operations": ["systemd-*"]}
FULL_BYPASS = {**GRANTED, "autonomy": "full", "allow_full_autonomy_bypass": True}
PATTERN_RULES = {
    **FULL_BYPASS,
    "pattern_rules": [{"operation": "systemd-restart", "pattern": "db"}],
}


@pytest.mark.parametrize(
    ("rules", "agent", "expected"),
    [
        pytest.param([], GRANTED, ApprovalNeed.NEVER, id="no-rule"),
        pytest.param([ask(approval_required=True)], GRANTED, ApprovalNeed.ALWAYS, id="rule-asks"),
        pytest.param(
            [ask("db.*", approval_required=True)],
            GRANTED,
            ApprovalNeed.DEPENDS,
            id="rule-asks-some",
        ),
        pytest.param(
            [ask("db.*"), ask(approval_required=True)],
            GRANTED,
            ApprovalNeed.DEPENDS,
            id="earlier-rule-lets-some-through",
        ),
        pytest.param(
            [ask(approval_required=True), ask("db.*")],
            GRANTED,
            ApprovalNeed.ALWAYS,
            id="later-rule-shadowed",
        ),
        pytest.param(
            [ask("db.*", deny=True), ask(approval_required=True)],
            GRANTED,
            ApprovalNeed.ALWAYS,
            id="deny-with-pattern-then-ask",
        ),
        pytest.param(
            [ask(approval_required=True)], FULL_BYPASS, ApprovalNeed.NEVER, id="bypass-lifts-it"
        ),
        pytest.param([ask(always_ask=True)], FULL_BYPASS, ApprovalNeed.ALWAYS, id="always-ask"),
        pytest.param(
            [],
            {"requires_approval_for": ["systemd-restart"]},
            ApprovalNeed.ALWAYS,
            id="requires-approval-for",
        ),
        pytest.param(
            [{"operation": "systemd-restart", "match": "db.*", "approval_required": True}],
            GRANTED,
            ApprovalNeed.DEPENDS,
            id="rule-matches-some",
        ),
        pytest.param([], PATTERN_RULES, ApprovalNeed.DEPENDS, id="pattern-rules"),
        pytest.param([ask(deny=True)], GRANTED, None, id="deny-everywhere"),
        pytest.param([], {**GRANTED, "autonomy": "read_only"}, None, id="read-only"),
        pytest.param([], {"allowed_operations": ["zfs-*"]}, None, id="not-granted"),
    ],
)
def test_offer_classifies_the_approval_rows(
    rules: list[dict[str, Any]], agent: dict[str, Any], expected: ApprovalNeed | None
) -> None:
    config = policy_config(rules, **agent)
    profile = config.agents[0]
    offered = offer(
        config, profile, "systemd-restart", mutating=True, forced_approval=ApprovalNeed.NEVER
    )
    assert (offered and offered.approval) == expected


def test_an_adapter_forced_approval_is_always() -> None:
    config = policy_config([], allowed_operations=["pct-*"], autonomy="full")
    offered = offer(
        config, config.agents[0], "pct-destroy", mutating=True, forced_approval=ApprovalNeed.ALWAYS
    )
    assert offered is not None
    assert offered.approval is ApprovalNeed.ALWAYS


@pytest.mark.parametrize(
    ("rules", "agent"),
    [
        ([], GRANTED),
        ([ask(approval_required=True)], GRANTED),
        ([ask("db.*", approval_required=True)], GRANTED),
        ([ask("db.*"), ask(always_ask=True)], FULL_BYPASS),
        ([ask("db.*", deny=True), ask("web.*", approval_required=True)], GRANTED),
        ([ask(deny=True)], GRANTED),
        ([], {**GRANTED, "autonomy": "read_only"}),
        ([], PATTERN_RULES),
        ([ask("web", approval_required=True)], PATTERN_RULES),
    ],
)
def test_offer_never_contradicts_decide(rules: list[dict[str, Any]], agent: dict[str, Any]) -> None:
    """Hidden: decide denies every resource. never: decide never asks; always: never
    allows without a human."""
    config = policy_config(rules, **agent)
    found = find_profile(config, "a-1")
    assert found is not None
    offered = offer(
        config, found[1], "systemd-restart", mutating=True, forced_approval=ApprovalNeed.NEVER
    )
    effects = set()
    for unit in ("db1.service", "web.service", "app.service"):
        operation = Operation(
            kind="systemd",
            command="restart",
            resource=unit,
            args=("restart",),
            wrapper="host-agent-systemd",
            wrapper_argv=("restart", unit),
            mutating=True,
        )
        effects.add(decide(config, "a-1", operation).effect)
    if offered is None:
        assert effects == {Effect.DENY}
    elif offered.approval is ApprovalNeed.NEVER:
        assert Effect.APPROVAL not in effects
    elif offered.approval is ApprovalNeed.ALWAYS:
        assert Effect.ALLOW not in effects


# --- ?format=openai: what a model takes as is -----------------------------------

CALLERS = ("librarian-1", "reader-1", "admin-1")


def openai(agent: RunningAgent, pki: Pki, cn: str) -> list[dict[str, Any]]:
    with client(agent, pki, cn) as http:
        reply = http.get("/v1/tools/manifest", params={"format": "openai"})
    assert reply.status_code == 200, reply.text
    body: list[dict[str, Any]] = reply.json()
    return body


def strict_problems(schema: Any, where: str = "parameters") -> list[str]:
    """Everything in `schema` outside OpenAI's strict subset."""
    if not isinstance(schema, dict):
        return [f"{where}: not an object"]
    problems = [f"{where}: {key}" for key in schema if key not in STRICT_KEYWORDS]
    if "object" in (schema.get("type"), *(schema.get("type") or [])):
        if schema.get("additionalProperties") is not False:
            problems.append(f"{where}: additionalProperties is not false")
        if sorted(schema.get("required", [])) != sorted(schema.get("properties", {})):
            problems.append(f"{where}: not every property is required")
        for name, value in schema.get("properties", {}).items():
            problems += strict_problems(value, f"{where}.{name}")
    if "items" in schema:
        problems += strict_problems(schema["items"], f"{where}[]")
    return problems


@pytest.mark.parametrize("cn", CALLERS)
def test_every_schema_is_in_the_strict_subset(
    policy_agent: RunningAgent, pki: Pki, cn: str
) -> None:
    tools = openai(policy_agent, pki, cn)
    assert tools, cn
    for tool in tools:
        assert set(tool) == {"type", "function"}  # no x- members: handed to a model as is
        assert set(tool["function"]) == {"name", "description", "parameters", "strict"}
        assert tool["function"]["strict"] is True
        name = tool["function"]["name"]
        assert strict_problems(tool["function"]["parameters"]) == [], name
        Draft202012Validator.check_schema(tool["function"]["parameters"])


PCT_CREATOR = """
[[agents]]
cn_pattern = "admin-*"
agent_type = "operator"
unix_user = "operator"
autonomy = "full"
allowed_operations = ["pct-*"]
"""
PCT_TEMPLATES = """
[pct]
allowed_ostemplates = ["local:vztmpl/*.tar.zst"]
allowed_create_flags = ["hostname"]
"""


def test_positional_arguments_are_described_in_the_strict_form(pki: Pki, tmp_path: Path) -> None:
    """pct-create's arguments differ by position (`prefixItems`, then `items: false`),
    which the strict subset cannot say: its items are strings and the description names
    each position (converting `items: false` was a 500)."""
    text = config_text(pki, tmp_path, profiles=PCT_CREATOR, extra=PCT_TEMPLATES)
    with running_agent(write_config(tmp_path / "agent.toml", text)) as agent:
        full = tool(manifest(agent, pki, "admin-1"), "pct-create")["function"]["parameters"]
        strict = next(
            t for t in openai(agent, pki, "admin-1") if t["function"]["name"] == "pct-create"
        )
    assert len(full["properties"]["args"]["prefixItems"]) == 2
    args = strict["function"]["parameters"]["properties"]["args"]
    assert args["items"] == {"type": "string"}
    assert "1 to 2 items. In this order: 1. The ostemplate" in args["description"]
    assert strict_problems(strict["function"]["parameters"]) == []


def test_the_tools_are_the_callers_own_plus_check_approval(
    policy_agent: RunningAgent, pki: Pki
) -> None:
    full = manifest(policy_agent, pki, "librarian-1")
    names = [tool["function"]["name"] for tool in openai(policy_agent, pki, "librarian-1")]
    assert names == [tool["function"]["name"] for tool in full["tools"]] + [CHECK_APPROVAL]
    # A caller none of whose tools waits for a human is not offered check_approval.
    reader = manifest(policy_agent, pki, "reader-1")["tools"]
    assert {t["x-host-agent"]["approval"] for t in reader} == {"never"}
    offered = [tool["function"]["name"] for tool in openai(policy_agent, pki, "reader-1")]
    assert CHECK_APPROVAL not in offered and len(offered) == len(reader)


def test_an_optional_argument_is_present_and_may_be_null(
    policy_agent: RunningAgent, pki: Pki
) -> None:
    full = manifest(policy_agent, pki, "librarian-1")
    destroy = next(t for t in full["tools"] if t["function"]["name"] == "zfs-destroy")
    strict = strict_schema(destroy["function"]["parameters"])
    assert strict["properties"]["reason"]["type"] == ["string", "null"]
    assert strict["properties"]["resource"]["type"] == "string"
    assert "255 characters" in strict["properties"]["resource"]["description"]
    # What the model may send under the cut-down schema, the full one still judges.
    Draft202012Validator(strict).validate({"resource": "tank/a@b", "reason": None})
    too_long = {"resource": "tank/" + "a" * 300, "reason": None}
    Draft202012Validator(strict).validate(too_long)
    assert not Draft202012Validator(destroy["function"]["parameters"]).is_valid(
        {"resource": too_long["resource"]}
    )


def test_an_unknown_format_is_refused_by_name(agent: RunningAgent, pki: Pki) -> None:
    with client(agent, pki, "librarian-1") as http:
        reply = http.get("/v1/tools/manifest", params={"format": "anthropic"})
    assert reply.status_code == 400
    assert reply.json()["error"]["code"] == "invalid_argument"
    assert reply.json()["error"]["field"] == "format"
