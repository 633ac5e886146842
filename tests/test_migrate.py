"""`host-agent migrate` over a corpus of predecessor configs, checked against a model
of the predecessor's own decision written from its source (src/config.rs)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from host_agent.cli import main
from host_agent.config import load_config, read_document
from host_agent.migrate import Impact, review
from host_agent.operations import OPERATION_NAMES, Operation
from host_agent.policy import Effect, decide

CORPUS = Path(__file__).parent / "predecessor"
CORPUS_FILES = sorted(CORPUS.glob("*.toml"))

# Resources a probe tries for each kind: the README's and the corpus's own names, and
# look-alikes a search or a glob reaches and a whole match does not.
RESOURCES = {
    "zfs": ["tank", "tank/media", "tank/media@old", "tank/prod/db", "backup/tank", "rpool"],
    "systemd": ["nginx.service", "postgres.service", "app.service"],
    "pct": ["101", "200"],
    "git": ["/srv/app", "/opt/tools", "/home/repo"],
}


def predecessor_holds(raw: dict[str, Any], operation: str, target: str, cn: str) -> bool:
    """Whether clash-host-agent asked a human: its `requires_approval_for_agent`, with
    the agent of /host/op (the first profile) or of /zfs/* (the caller's), whichever
    held. Only the first rule naming the operation counts; `pattern` is a search."""
    rules = raw.get("rules", raw.get("rule", []))
    rule = next((r for r in rules if r["operation"] == operation), None)
    if rule is None or not rule["approval_required"]:
        return False
    if "pattern" in rule and not re.search(rule["pattern"], target):
        return False
    if rule.get("always_ask", False):
        return True
    profiles = raw.get("agents", raw.get("agent", []))
    callers = [profiles[0], predecessor_profile(profiles, cn)]
    return any(not bypasses(profile) for profile in callers)


def predecessor_profile(profiles: list[dict[str, Any]], cn: str) -> dict[str, Any] | None:
    for profile in profiles:
        pattern = profile["cn_pattern"]
        if cn.startswith(pattern[:-1]) if pattern.endswith("*") else cn == pattern:
            return profile
    return None


def bypasses(profile: dict[str, Any] | None) -> bool:
    return (
        profile is not None
        and profile.get("autonomy") == "full"
        and profile.get("allow_full_autonomy_bypass", False)
    )


def probe(kind: str, command: str, resource: str) -> Operation:
    """A policy-level operation (policy reads its name and resource only)."""
    return Operation(kind, command, resource, (command,), f"host-agent-{kind}", (command,), True)


def sample_cn(pattern: str) -> str:
    return pattern[:-1] + "-1" if pattern.endswith("*") else pattern


@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.stem for p in CORPUS_FILES])
def test_the_corpus_lists_nothing_that_loosens(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Held or refused by clash-host-agent, run by host-agent: none\n")
    assert "Other differences for this file:" in out
    # Every file of the corpus keeps the predecessor's paths, and is told what to move.
    assert "  audit.log_path: /var/log/clash/audit.jsonl is the predecessor's log" in out
    assert "  [server]: the certificates are under /etc/clash" in out


@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.stem for p in CORPUS_FILES])
def test_nothing_the_predecessor_held_runs_here_unasked(path: Path) -> None:
    """The model of the predecessor against the real policy, for every profile, every
    operation it knew and every probe resource: what it held, this agent holds or
    refuses."""
    raw = read_document(path)
    config = load_config(path)
    held = 0
    for profile in config.agents:
        cn = sample_cn(profile.cn_pattern)
        for name in sorted(OPERATION_NAMES):
            kind, command = name.split("-", 1)
            for resource in RESOURCES.get(kind, []):
                if not predecessor_holds(raw, name, resource, cn):
                    continue
                held += 1
                decision = decide(config, cn, probe(kind, command, resource))
                assert decision.effect is not Effect.ALLOW, (name, resource, cn, decision)
    assert held > 0  # the corpus holds something, or this test proves nothing


PREDECESSOR_HEAD = """
[server]
cert = "/etc/clash/certs/server.crt"
key = "/etc/clash/certs/server.key"
client_ca = "/etc/clash/certs/ca.crt"

[audit]
log_path = "/var/log/clash/audit.jsonl"

[approval]
ttl_seconds = 300
admin_cn_pattern = "admin*"

[metrics]
enabled = false
bind = "127.0.0.1:19090"
"""


def findings(tmp_path: Path, text: str) -> list[tuple[Impact, str]]:
    path = tmp_path / "old.toml"
    path.write_text(PREDECESSOR_HEAD + text)
    return [(f.impact, f.subject) for f in review(load_config(path), read_document(path))]


BYPASS_SECOND = """
[[agents]]
cn_pattern = "librarian*"
agent_type = "librarian"
unix_user = "librarian"
allowed_operations = ["zfs-snapshot"]

[[agents]]
cn_pattern = "ops*"
agent_type = "ops"
unix_user = "ops"
autonomy = "full"
allowed_operations = ["zfs-snapshot"]
allow_full_autonomy_bypass = true

[[rules]]
operation = "zfs-snapshot"
approval_required = true
"""


def test_a_later_profiles_bypass_is_reported_as_loosening(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On /host/op the predecessor judged every caller by the first profile, which has
    no bypass, so it held ops-1's snapshots; here ops-1's own bypass runs them."""
    assert (Impact.LOOSENS, "agents[1]") in findings(tmp_path, BYPASS_SECOND)
    raw = read_document(tmp_path / "old.toml")
    assert predecessor_holds(raw, "zfs-snapshot", "tank/a", "ops-1")
    decision = decide(load_config(tmp_path / "old.toml"), "ops-1", probe("zfs", "snapshot", "t"))
    assert decision.effect is Effect.ALLOW  # what the finding warns about is real
    assert main(["migrate", str(tmp_path / "old.toml")]) == 1
    out = capsys.readouterr().out
    assert out.startswith("Held or refused by clash-host-agent, run by host-agent: 1\n")
    assert "set allow_full_autonomy_bypass = false, or always_ask = true" in out


def test_the_same_bypass_on_an_always_ask_rule_loosens_nothing(tmp_path: Path) -> None:
    text = BYPASS_SECOND.replace(
        "approval_required = true", "approval_required = true\nalways_ask = true"
    )
    assert all(impact is Impact.CHANGES for impact, _ in findings(tmp_path, text))


@pytest.mark.parametrize(
    ("pattern", "loosens"),
    [
        pytest.param("librarian*", False, id="prefix"),
        pytest.param("librarian", False, id="exact"),
        pytest.param("lib*rian", True, id="inner-star"),
        pytest.param("librarian-?", True, id="question-mark"),
        pytest.param("librarian-[12]", True, id="class"),
    ],
)
def test_cn_patterns_that_match_more_as_globs_are_reported(
    tmp_path: Path, pattern: str, loosens: bool
) -> None:
    text = BYPASS_SECOND.replace('"librarian*"', f'"{pattern}"').replace(
        'cn_pattern = "ops*"', 'cn_pattern = "ops"'
    )
    found = findings(
        tmp_path,
        text.replace("approval_required = true", "approval_required = true\nalways_ask = true"),
    )
    assert ((Impact.LOOSENS, "agents[0].cn_pattern") in found) is loosens


def test_rule_differences_are_listed(tmp_path: Path) -> None:
    text = BYPASS_SECOND.replace(
        "[[rules]]",
        '[[rules]]\noperation = "pct-start"\napproval_required = false\nalways_ask = true\n\n'
        '[[rules]]\noperation = "pct-start"\napproval_required = true\n\n[[rules]]',
        1,
    )
    found = findings(tmp_path, text)
    assert (Impact.CHANGES, "rules[0]") in found  # always_ask alone asked nobody there
    assert (Impact.CHANGES, "rules[1]") in found  # a second rule was ignored there


def test_no_rules_says_the_built_in_ones_apply(tmp_path: Path) -> None:
    text = BYPASS_SECOND.split("[[rules]]")[0]
    assert (Impact.CHANGES, "[[rules]]") in findings(tmp_path, text)


def test_an_unreadable_file_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", str(tmp_path / "missing.toml")]) == 2
    assert capsys.readouterr().err.startswith("host-agent: ")
