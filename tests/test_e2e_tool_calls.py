"""`POST /v1/tools/call` over mutual TLS against real zfs: a tool call as the proxy
forwards it (either shape, arguments as text or an object), allowed, refused, and one
that waits for a human, then runs through `check_approval` once an admin approved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.approval_flow import post
from tests.support import (
    Pki,
    RunningAgent,
    audit_records,
    client,
    config_text,
    running_agent,
    write_config,
)
from tests.system import Pool, run

CALL = "/v1/tools/call"


def call(agent: RunningAgent, pki: Pki, cn: str, body: Any) -> dict[str, Any]:
    with client(agent, pki, cn) as http:
        reply = http.post(CALL, json=body)
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


def tool_calls_item(name: str, arguments: dict[str, Any], call_id: str = "call_1") -> Any:
    """An item of an OpenAI `tool_calls` array: the arguments as JSON text."""
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


@pytest.mark.root
def test_an_allowed_call_runs_and_answers_with_its_result(
    system_agent: RunningAgent, pki: Pki, pool: Pool
) -> None:
    dataset = f"{pool.name}/data"
    answer = call(
        system_agent,
        pki,
        "librarian-1",
        tool_calls_item(
            "zfs-snapshot", {"resource": dataset, "args": ["via-tool"], "reason": None}
        ),
    )
    assert (answer["tool_call_id"], answer["name"], answer["status"]) == (
        "call_1",
        "zfs-snapshot",
        "ok",
    )
    assert f"{dataset}@via-tool" in pool.datasets("snapshot")
    listed = call(system_agent, pki, "librarian-1", {"name": "zfs-list", "arguments": {}})
    assert listed["status"] == "ok" and dataset in listed["content"]
    assert listed["result"]["operation"] == "zfs-list"
    decisions = [
        r for r in audit_records(system_agent.config.audit.log_path) if r["event"] == "decision"
    ]
    assert [r["operation"] for r in decisions][-2:] == ["zfs-snapshot", "zfs-list"]
    run("zfs", "destroy", f"{dataset}@via-tool")


@pytest.mark.root
def test_refusals_are_answers_with_their_code_and_field(
    system_agent: RunningAgent, pki: Pki, pool: Pool
) -> None:
    refused = call(
        system_agent,
        pki,
        "reader-1",
        {"name": "zfs-snapshot", "arguments": {"resource": f"{pool.name}/data", "args": ["x"]}},
    )
    assert (refused["status"], refused["code"]) == ("error", "read_only")
    assert refused["content"].startswith("Refused (read_only)")
    bad = call(
        system_agent,
        pki,
        "librarian-1",
        {"name": "zfs-snapshot", "arguments": {"resource": "../etc", "args": ["x"]}},
    )
    assert (bad["status"], bad["field"]) == ("error", "arguments.resource")
    # The tool's own args count from 0 (the /host/op command before them is its name).
    snapshot_name = {"resource": f"{pool.name}/data", "args": ["-x"]}
    bad_arg = call(
        system_agent, pki, "librarian-1", {"name": "zfs-snapshot", "arguments": snapshot_name}
    )
    assert (bad_arg["status"], bad_arg["field"]) == ("error", "arguments.args[0]"), bad_arg
    stray = call(system_agent, pki, "librarian-1", {"name": "zfs-list", "arguments": {"x": 1}})
    assert (stray["code"], stray["field"]) == ("invalid_argument", "arguments.x")
    assert f"{pool.name}/data@x" not in pool.datasets("snapshot")


def test_a_body_that_is_no_tool_call_is_a_400_and_audited(agent: RunningAgent, pki: Pki) -> None:
    with client(agent, pki, "librarian-1") as http:
        for body, field in (
            ({"arguments": {}}, "name"),
            ({"name": "zfs-list", "arguments": "{not json"}, "arguments"),
            (["zfs-list"], "body"),
        ):
            reply = http.post(CALL, json=body)
            assert reply.status_code == 400, reply.text
            assert reply.json()["error"]["field"] == field
    rejected = [r for r in audit_records(agent.config.audit.log_path) if r["event"] == "rejected"]
    assert [r["field"] for r in rejected] == ["name", "arguments", "body"]


@pytest.mark.root
def test_a_call_that_waits_for_a_human_runs_through_check_approval(
    system_agent: RunningAgent, pki: Pki, pool: Pool, snapshot: str
) -> None:
    pending = call(
        system_agent,
        pki,
        "librarian-1",
        tool_calls_item("zfs-destroy", {"resource": snapshot, "reason": "free space"}),
    )
    assert pending["status"] == "pending", pending
    approval_id = pending["approval"]["approval_id"]
    assert "check_approval" in pending["content"] and approval_id in pending["content"]
    check = {"name": "check_approval", "arguments": {"approval_id": approval_id}}
    waiting = call(system_agent, pki, "librarian-1", check)
    assert waiting["status"] == "pending" and waiting["approval"]["seconds_left"] > 0
    assert snapshot in pool.datasets("snapshot")
    # Another caller cannot see it, let alone run it.
    stranger = call(system_agent, pki, "reader-1", check)
    assert (stranger["status"], stranger["code"]) == ("error", "approval_not_found")
    approved = post(system_agent, pki, "admin-1", "/approve", {"approval_id": approval_id})
    assert approved.status_code == 200, approved.text
    ran = call(system_agent, pki, "librarian-1", check)
    assert ran["status"] == "ok", ran
    assert snapshot not in pool.datasets("snapshot")
    again = call(system_agent, pki, "librarian-1", check)
    assert (again["status"], again["code"]) == ("error", "approval_consumed")


def test_check_approval_is_held_to_the_approval_rate_limit(pki: Pki, tmp_path: Path) -> None:
    """Following an approval counts as the approval routes do; past the limit the proxy
    gets 429 to back off, audited once."""
    extra = "[rate_limit.approval]\nrequests = 2\nper_seconds = 3600\n"
    config = write_config(tmp_path / "agent.toml", config_text(pki, tmp_path, extra=extra))
    check = {"name": "check_approval", "arguments": {"approval_id": "ap-" + "0" * 16}}
    with running_agent(config) as agent, client(agent, pki, "librarian-1") as http:
        answers = [http.post(CALL, json=check) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert [a.json().get("code") for a in answers[:2]] == ["approval_not_found"] * 2
    limited = [r for r in audit_records(config.audit.log_path) if r.get("code") == "rate_limited"]
    assert len(limited) == 1
