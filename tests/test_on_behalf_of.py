"""A proxy acting for the agents behind it, over mutual TLS against real zfs: with
`acts_for` it may name `on_behalf_of`, which only narrows what its certificate may do;
both identities are audited, bound into approvals and shown to approvers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from host_agent.config import Config
from tests.approval_flow import get, post
from tests.support import Pki, RunningAgent, audit_records, client, running_agent
from tests.system import Pool, System

# The proxy has a CN of its own ("stranger" in the test PKI) and may do any zfs
# operation by itself; the librarians behind it need a human for a destroy.
PROXY = "stranger"
PROFILES = """
[[agents]]
cn_pattern = "stranger"
agent_type = "proxy"
unix_user = "proxy"
autonomy = "full"
allowed_operations = ["zfs-*"]
acts_for = ["librarian-*", "ghost-*"]
"""

pytestmark = pytest.mark.root


@pytest.fixture
def proxied(system: System, pool: Pool, pki: Pki, tmp_path: Path) -> Iterator[RunningAgent]:
    config: Config = system.agent_config(pki, tmp_path, profiles=PROFILES)
    with running_agent(config) as agent:
        yield agent


def last(agent: RunningAgent, event: str) -> dict[str, Any]:
    records = audit_records(agent.config.audit.log_path)
    return next(r for r in reversed(records) if r["event"] == event)


def test_acting_for_an_agent_is_audited_with_both_identities(
    proxied: RunningAgent, pki: Pki, pool: Pool
) -> None:
    listing = {"kind": "zfs", "resource": pool.name, "args": ["list"]}
    reply = post(proxied, pki, PROXY, "/host/op", {**listing, "on_behalf_of": "librarian-1"})
    assert reply.status_code == 200, reply.text
    decision = last(proxied, "decision")
    assert (decision["cn"], decision["on_behalf_of"], decision["decision"]) == (
        PROXY,
        "librarian-1",
        "allow",
    )
    assert last(proxied, "result")["on_behalf_of"] == "librarian-1"
    metrics = get(proxied, pki, "admin-1", "/metrics").text
    assert 'host_agent_requests_on_behalf_total{agent_type="librarian"} 1.0' in metrics


@pytest.mark.parametrize(
    ("caller", "agent", "code"),
    [
        pytest.param(PROXY, "reader-1", "on_behalf_of_not_allowed", id="outside-acts-for"),
        pytest.param("librarian-1", "librarian-2", "on_behalf_of_not_allowed", id="no-acts-for"),
    ],
)
def test_naming_an_agent_one_may_not_act_for_is_refused_and_audited(
    proxied: RunningAgent, pki: Pki, pool: Pool, caller: str, agent: str, code: str
) -> None:
    body = {"kind": "zfs", "resource": pool.name, "args": ["list"], "on_behalf_of": agent}
    reply = post(proxied, pki, caller, "/host/op", body)
    assert (reply.status_code, reply.json()["error"]["code"]) == (403, code)
    decision = last(proxied, "decision")
    assert (decision["cn"], decision["on_behalf_of"], decision["code"]) == (caller, agent, code)


def test_an_agent_with_no_profile_cannot_be_named(proxied: RunningAgent, pki: Pki) -> None:
    """ghost-* is in acts_for, but no profile matches ghost-1: nothing to act for."""
    with client(proxied, pki, PROXY) as http:
        reply = http.get("/v1/tools/manifest", params={"on_behalf_of": "ghost-1"})
    assert (reply.status_code, reply.json()["error"]["code"]) == (403, "on_behalf_of_unknown")
    assert last(proxied, "decision")["code"] == "on_behalf_of_unknown"


def test_the_agents_rights_narrow_the_proxys_and_bind_its_approval(
    proxied: RunningAgent, pki: Pki, pool: Pool, snapshot: str
) -> None:
    """The proxy alone could destroy at once; for librarian-1 a human must approve. The
    approval names both, and only a resubmit for the same agent uses it."""
    destroy = {"kind": "zfs", "resource": snapshot, "args": ["destroy"]}
    asked = post(proxied, pki, PROXY, "/host/op", {**destroy, "on_behalf_of": "librarian-1"})
    assert asked.status_code == 202, asked.text
    approval_id = asked.json()["approval_id"]
    view = get(proxied, pki, "admin-1", f"/approvals/{approval_id}").json()
    assert (view["requester"], view["on_behalf_of"]) == (PROXY, "librarian-1")
    approved = post(proxied, pki, "admin-1", "/approve", {"approval_id": approval_id})
    assert approved.status_code == 200, approved.text
    # For another agent behind the same proxy the approval does not hold.
    other = {**destroy, "on_behalf_of": "librarian-2", "approval_id": approval_id}
    mismatch = post(proxied, pki, PROXY, "/host/op", other)
    assert (mismatch.status_code, mismatch.json()["error"]["code"]) == (403, "approval_mismatch")
    assert snapshot in pool.datasets("snapshot")
    ran = post(
        proxied,
        pki,
        PROXY,
        "/host/op",
        {**destroy, "on_behalf_of": "librarian-1", "approval_id": approval_id},
    )
    assert ran.status_code == 200, ran.text
    assert snapshot not in pool.datasets("snapshot")
    created = last(proxied, "approval_created")
    assert (created["cn"], created["on_behalf_of"]) == (PROXY, "librarian-1")


def test_the_manifest_for_an_agent_lists_what_both_may(proxied: RunningAgent, pki: Pki) -> None:
    def tools(**params: str) -> dict[str, str]:
        with client(proxied, pki, PROXY) as http:
            reply = http.get("/v1/tools/manifest", params=params)
        assert reply.status_code == 200, reply.text
        return {t["function"]["name"]: t["x-host-agent"]["approval"] for t in reply.json()["tools"]}

    alone = tools()
    assert alone["zfs-destroy"] == "never" and "zfs-rollback" in alone
    behalf = tools(on_behalf_of="librarian-1")
    assert behalf == {"zfs-destroy": "always", "zfs-list": "never", "zfs-snapshot": "never"}
    with client(proxied, pki, PROXY) as http:
        refused = http.get("/v1/tools/manifest", params={"on_behalf_of": "reader-1"})
    assert (refused.status_code, refused.json()["error"]["code"]) == (
        403,
        "on_behalf_of_not_allowed",
    )
    assert last(proxied, "decision")["on_behalf_of"] == "reader-1"


def test_a_tool_call_for_an_agent_waits_for_its_human(
    proxied: RunningAgent, pki: Pki, snapshot: str
) -> None:
    call = {
        "name": "zfs-destroy",
        "arguments": {"resource": snapshot},
        "on_behalf_of": "librarian-1",
    }
    with client(proxied, pki, PROXY) as http:
        answer = http.post("/v1/tools/call", json=call).json()
    assert answer["status"] == "pending", answer
    approval = get(
        proxied, pki, "admin-1", f"/approvals/{answer['approval']['approval_id']}"
    ).json()
    assert approval["on_behalf_of"] == "librarian-1"
