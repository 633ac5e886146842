"""[policy] external_url against a stand-in speaking clashd's wire format: consulted
after host-agent's own decision, it can only tighten; no usable answer is a deny;
every verdict is in the decision's audit record."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from host_agent.errors import ConfigError
from tests.clashd_standin import Clashd, running_clashd
from tests.support import (
    Pki,
    RunningAgent,
    audit_records,
    client,
    config_text,
    running_agent,
    write_config,
)

LIST = {"kind": "zfs", "resource": "tank", "args": ["list"]}
SNAPSHOT = {"kind": "zfs", "resource": "tank/data", "args": ["snapshot", "s1"]}
DESTROY = {"kind": "zfs", "resource": "tank/data@old", "args": ["destroy"]}


@pytest.fixture
def clashd() -> Iterator[Clashd]:
    with running_clashd() as standin:
        yield standin


@pytest.fixture
def guarded(pki: Pki, tmp_path: Path, clashd: Clashd) -> Iterator[RunningAgent]:
    extra = f'[policy]\nexternal_url = "{clashd.url}"\nexternal_timeout_seconds = 0.5\n'
    config = write_config(tmp_path / "agent.toml", config_text(pki, tmp_path, extra=extra))
    with running_agent(config) as agent:
        yield agent


def dry_run(agent: RunningAgent, pki: Pki, cn: str, body: dict[str, Any]) -> Any:
    with client(agent, pki, cn) as http:
        return http.post("/host/op", json={**body, "dry_run": True})


def decided(agent: RunningAgent, pki: Pki, cn: str, body: dict[str, Any]) -> tuple[int, str, str]:
    """The status of a dry run, and its decision's effect and code (or, refused before
    any decision could be shown, the error's)."""
    reply = dry_run(agent, pki, cn, body)
    document = reply.json()
    if reply.status_code == 200:
        return 200, document["decision"]["effect"], document["decision"]["code"]
    return reply.status_code, "deny", document["error"]["code"]


def last_decision(agent: RunningAgent) -> dict[str, Any]:
    records = audit_records(agent.config.audit.log_path)
    return next(r for r in reversed(records) if r["event"] == "decision")


def test_clashd_is_asked_in_its_own_format_and_allow_changes_nothing(
    guarded: RunningAgent, pki: Pki, clashd: Clashd
) -> None:
    assert decided(guarded, pki, "librarian-1", LIST) == (200, "allow", "allowed")
    assert clashd.asked == [
        {
            "tool": "zfs-list",
            "args": {"kind": "zfs", "resource": "tank", "args": ["list"]},
            "context": {
                "agent_id": "librarian-1",
                "agent_type": "librarian",
                "caller": "librarian-1",
                "host": clashd.asked[0]["context"]["host"],
            },
        }
    ]
    assert last_decision(guarded)["external_policy"] == {"verdict": "allow", "reason": ""}
    # allow never loosens: what needs a human still does.
    assert decided(guarded, pki, "librarian-1", DESTROY)[1] == "approval_required"


def test_review_turns_an_allowed_operation_into_one_a_human_approves(
    guarded: RunningAgent, pki: Pki, clashd: Clashd
) -> None:
    clashd.verdicts["zfs-snapshot"] = {"verdict": "review", "reason": "snapshots are watched"}
    assert decided(guarded, pki, "librarian-1", SNAPSHOT) == (
        200,
        "approval_required",
        "external_policy_review",
    )
    with client(guarded, pki, "librarian-1") as http:
        reply = http.post("/host/op", json=SNAPSHOT)
    assert reply.status_code == 202, reply.text
    record = last_decision(guarded)
    assert record["external_policy"] == {"verdict": "review", "reason": "snapshots are watched"}
    assert record["reason"] == "external policy: snapshots are watched"


@pytest.mark.parametrize(
    ("setup", "code"),
    [
        pytest.param(
            {"verdicts": {"zfs-list": {"verdict": "deny"}}}, "external_policy_denied", id="deny"
        ),
        pytest.param({"delay": 1.0}, "external_policy_unavailable", id="timeout"),
        pytest.param({"status": 500, "raw": b"{}"}, "external_policy_unavailable", id="http-500"),
        pytest.param(
            {"raw": b'{"verdict": "maybe"}'}, "external_policy_unavailable", id="no-verdict"
        ),
        pytest.param({"raw": b"<html>"}, "external_policy_unavailable", id="not-json"),
    ],
)
def test_a_deny_or_no_usable_answer_refuses(
    guarded: RunningAgent, pki: Pki, clashd: Clashd, setup: dict[str, Any], code: str
) -> None:
    for key, value in setup.items():
        setattr(clashd, key, value)
    assert decided(guarded, pki, "librarian-1", LIST) == (200, "deny", code)  # a dry run
    with client(guarded, pki, "librarian-1") as http:
        refused = http.post("/host/op", json=LIST)
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, code)
    record = last_decision(guarded)
    assert (record["decision"], record["code"]) == ("deny", code)
    assert record["external_policy"]["verdict"] in ("deny", "unavailable")


def test_what_host_agent_refuses_itself_is_never_sent_out(
    guarded: RunningAgent, pki: Pki, clashd: Clashd
) -> None:
    assert decided(guarded, pki, "reader-1", SNAPSHOT) == (200, "deny", "read_only")
    assert clashd.asked == []
    assert "external_policy" not in last_decision(guarded)


def test_an_external_url_with_credentials_is_refused(pki: Pki, tmp_path: Path) -> None:
    extra = '[policy]\nexternal_url = "http://user:secret@127.0.0.1:9001"\n'
    with pytest.raises(ConfigError, match="without credentials"):
        write_config(tmp_path / "agent.toml", config_text(pki, tmp_path, extra=extra))
