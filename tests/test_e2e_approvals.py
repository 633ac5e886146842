"""Human approval end to end, as root: a real zfs destroy over mTLS waits for a human,
the token goes out through a signal-cli-rest-api stand-in, the reply comes back through
each channel, and the resubmitted operation runs exactly once."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from host_agent import certs
from host_agent.approvals.signal import SIGNATURE_HEADER, sign
from host_agent.config import Config
from tests.approval_flow import destroy, get, post, request_approval, status, token_sent, wait_for
from tests.signal_bridge import BRIDGE_NUMBER, SignalBridge, envelope, jsonrpc_receive
from tests.support import Pki, RunningAgent, audit_records, client, running_agent
from tests.system import Pool, System, run

pytestmark = pytest.mark.root

SECRET = "s" * 40
APPROVER = "+15555550001"


def configured(
    system: System,
    pki: Pki,
    tmp_path: Path,
    bridge: SignalBridge,
    *,
    approval_ttl: int = 300,
    profiles: str = "",
    **approval: Any,
) -> Config:
    keys = {
        "signal_url": f'"{bridge.url}"',
        "signal_number": f'"{BRIDGE_NUMBER}"',
        "webhook_secret": f'"{SECRET}"',
        "bridge_cn": '"stranger"',
        **approval,
    }
    text = "\n".join(f"{key} = {value}" for key, value in keys.items())
    return system.agent_config(
        pki, tmp_path, approval=text, approval_ttl=approval_ttl, profiles=profiles
    )


@pytest.fixture
def config(system: System, pool: Pool, pki: Pki, tmp_path: Path, bridge: SignalBridge) -> Config:
    return configured(system, pki, tmp_path, bridge)


@pytest.fixture
def live(config: Config) -> Iterator[RunningAgent]:
    with running_agent(config) as agent:
        yield agent


def signed_reply(text: str, sender: str = APPROVER, when_ms: int | None = None) -> bytes:
    when_ms = when_ms if when_ms is not None else int(time.time() * 1000)
    return json.dumps(jsonrpc_receive(envelope(sender, text, when_ms), BRIDGE_NUMBER)).encode()


def webhook(
    agent: RunningAgent, pki: Pki, body: bytes, *, cn: str = "librarian-1", signed: bool = True
) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if signed:
        headers[SIGNATURE_HEADER] = sign(SECRET.encode(), body)
    with client(agent, pki, cn) as http:
        return http.post("/webhook/signal", content=body, headers=headers)


def test_full_flow_through_the_signed_webhook(
    live: RunningAgent, pki: Pki, pool: Pool, bridge: SignalBridge, snapshot: str, config: Config
) -> None:
    approval_id = request_approval(live, pki, snapshot)
    token = token_sent(bridge)
    (sent,) = bridge.sent
    assert sent["number"] == BRIDGE_NUMBER
    assert sent["recipients"] == ["+15555550001", "+15555550002"]
    assert snapshot in sent["message"] and "free space" in sent["message"]
    assert status(live, pki, approval_id) == "pending"

    answer = webhook(live, pki, signed_reply(f"APPROVE {token}"))
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"][0]["outcome"] == "approved"
    assert status(live, pki, approval_id) == "approved"
    assert snapshot in pool.datasets("snapshot")

    done = post(live, pki, "librarian-1", "/host/op", destroy(snapshot, approval_id=approval_id))
    assert done.status_code == 200, done.text
    assert snapshot not in pool.datasets("snapshot")
    assert status(live, pki, approval_id) == "consumed"

    records = audit_records(config.audit.log_path)
    events = [r["event"] for r in records]
    for step in ("approval_created", "approval_notified", "approval_granted", "approval_consumed"):
        assert step in events
    granted = next(r for r in records if r["event"] == "approval_granted")
    assert granted["approvers"] == [f"signal:{APPROVER}"]
    run_decision = [r for r in records if r["event"] == "decision"][-1]
    assert run_decision["approval_id"] == approval_id
    assert records[-1]["event"] == "result" and records[-1]["outcome"] == "ok"
    assert token not in config.audit.log_path.read_text()
    # The approvers asked heard who approved it, and that it ran.
    _, granted, used = wait_for(lambda: bridge.sent if len(bridge.sent) == 3 else None)
    assert granted["recipients"] == used["recipients"] == sent["recipients"]
    assert f"{approval_id} on " in granted["message"]
    assert granted["message"].splitlines()[0].endswith(": APPROVED")
    assert f"by signal:…{APPROVER[-4:]} at " in granted["message"]
    assert used["message"].splitlines()[0].endswith(": USED")


def test_admin_approves_with_post_approve(
    live: RunningAgent, pki: Pki, pool: Pool, bridge: SignalBridge, snapshot: str
) -> None:
    approval_id = request_approval(live, pki, snapshot)
    token = token_sent(bridge)
    refused = post(live, pki, "librarian-1", "/approve", {"token": token})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "approver_not_allowed"
    # The predecessor's body names the approval too; it must be the token's own.
    other = post(
        live, pki, "admin-1", "/approve", {"approval_id": "ap-" + "0" * 16, "token": token}
    )
    assert (other.status_code, other.json()["error"]["code"]) == (409, "approval_id_mismatch")
    body = {"approval_id": approval_id, "token": token}
    approved = post(live, pki, "admin-1", "/approve", body)
    assert approved.status_code == 200, approved.text
    assert approved.json()["approvers"] == ["admin:admin-1"]
    done = post(live, pki, "librarian-1", "/host/op", destroy(snapshot, approval_id=approval_id))
    assert done.status_code == 200
    assert snapshot not in pool.datasets("snapshot")


def test_an_admin_approves_by_id_when_no_message_went_out(
    live: RunningAgent, pki: Pki, pool: Pool, config: Config, snapshot: str
) -> None:
    """The token only travels in the Signal message: an admin certificate may name the
    approval by its id instead, and the requester's resend then runs."""
    approval_id = request_approval(live, pki, snapshot)
    shown = get(live, pki, "librarian-1", f"/approvals/{approval_id}").json()
    admin_way = next(a["who"] for a in shown["asked"] if a["channel"] == "admin")
    assert f'POST /approve {{"approval_id": "{approval_id}"}}' in admin_way
    approved = post(live, pki, "admin-1", "/approve", {"approval_id": approval_id})
    assert approved.status_code == 200, approved.text
    assert approved.json()["approvers"] == ["admin:admin-1"]
    done = post(live, pki, "librarian-1", "/host/op", destroy(snapshot, approval_id=approval_id))
    assert done.status_code == 200, done.text
    assert snapshot not in pool.datasets("snapshot")
    [granted] = [
        r for r in audit_records(config.audit.log_path) if r["event"] == "approval_granted"
    ]
    assert (granted["approver"], granted["named_by"]) == ("admin:admin-1", "approval_id")


@pytest.mark.parametrize(
    ("cn", "body", "status_code", "code"),
    [
        pytest.param("admin-1", {"decision": "deny"}, 200, None, id="admin-denies"),
        pytest.param("librarian-1", {}, 403, "approver_not_allowed", id="not-an-admin"),
        pytest.param(
            "admin-1", {"approval_id": "ap-" + "0" * 16}, 404, "approval_not_found", id="unknown-id"
        ),
        pytest.param("admin-1", {"approval_id": "tank"}, 400, "invalid_type", id="not-an-id"),
        pytest.param("admin-1", {"approval_id": None}, 400, "invalid_type", id="names-nothing"),
    ],
)
def test_deciding_by_id_is_for_admins_and_names_a_real_approval(
    live: RunningAgent,
    pki: Pki,
    pool: Pool,
    snapshot: str,
    cn: str,
    body: dict[str, Any],
    status_code: int,
    code: str | None,
) -> None:
    approval_id = request_approval(live, pki, snapshot)
    answer = post(live, pki, cn, "/approve", {"approval_id": approval_id, **body})
    assert answer.status_code == status_code, answer.text
    if code is not None:
        assert answer.json()["error"]["code"] == code
    expected = "denied" if code is None else "pending"
    assert status(live, pki, approval_id) == expected
    assert snapshot in pool.datasets("snapshot")


# An admin whose own operations wait for a human (it is also the approvers' CN pattern).
ADMIN_REQUESTER = """
[[agents]]
cn_pattern = "admin-2"
agent_type = "operator"
unix_user = "operator"
requires_approval_for = ["zfs-destroy"]
"""


def test_an_admin_cannot_approve_its_own_request_by_id(
    system: System, pool: Pool, pki: Pki, tmp_path: Path, bridge: SignalBridge, snapshot: str
) -> None:
    certs.issue_client(pki.directory, "admin-2")
    config = configured(system, pki, tmp_path, bridge, profiles=ADMIN_REQUESTER)
    with running_agent(config) as agent:
        asked = post(agent, pki, "admin-2", "/host/op", destroy(snapshot))
        assert asked.status_code == 202, asked.text
        approval_id = asked.json()["approval_id"]
        own = post(agent, pki, "admin-2", "/approve", {"approval_id": approval_id})
        assert own.status_code == 403, own.text
        assert status(agent, pki, approval_id, cn="admin-2") == "pending"
        other = post(agent, pki, "admin-1", "/approve", {"approval_id": approval_id})
        assert other.status_code == 200, other.text
    records = audit_records(config.audit.log_path)
    refused = [r for r in records if r["event"] == "approval_refused"]
    assert (refused[-1]["approver"], refused[-1]["named_by"]) == ("admin:admin-2", "approval_id")
    assert snapshot in pool.datasets("snapshot")


def test_bridge_certificate_may_post_unsigned_but_an_agent_may_not(
    live: RunningAgent, pki: Pki, bridge: SignalBridge, snapshot: str
) -> None:
    approval_id = request_approval(live, pki, snapshot)
    body = signed_reply(f"APPROVE {token_sent(bridge)}")
    for cn in ("librarian-1", "admin-1"):
        unsigned = webhook(live, pki, body, cn=cn, signed=False)
        assert unsigned.status_code == 401
        assert unsigned.json()["error"]["code"] == "webhook_unauthenticated"
    assert status(live, pki, approval_id) == "pending"
    from_bridge = webhook(live, pki, body, cn="stranger", signed=False)
    assert from_bridge.status_code == 200
    assert status(live, pki, approval_id) == "approved"


def test_wrong_signature_is_refused(
    live: RunningAgent, pki: Pki, bridge: SignalBridge, snapshot: str
) -> None:
    approval_id = request_approval(live, pki, snapshot)
    body = signed_reply(f"APPROVE {token_sent(bridge)}")
    with client(live, pki, "librarian-1") as http:
        forged = http.post(
            "/webhook/signal",
            content=body,
            headers={SIGNATURE_HEADER: sign(b"guessed-secret" * 3, body)},
        )
    assert forged.status_code == 401
    assert status(live, pki, approval_id) == "pending"


def test_replies_through_polling(
    system: System, pool: Pool, pki: Pki, tmp_path: Path, bridge: SignalBridge, snapshot: str
) -> None:
    config = configured(system, pki, tmp_path, bridge, poll_interval_seconds="0.2")
    with running_agent(config) as agent:
        approval_id = request_approval(agent, pki, snapshot)
        bridge.queue_reply(APPROVER, f"CONFIRM {token_sent(bridge)}")
        wait_for(lambda: status(agent, pki, approval_id) == "approved")
        done = post(
            agent, pki, "librarian-1", "/host/op", destroy(snapshot, approval_id=approval_id)
        )
    assert done.status_code == 200
    assert snapshot not in pool.datasets("snapshot")


@pytest.mark.parametrize(
    ("sender", "text", "code"),
    [
        pytest.param(
            "+15550000000", "APPROVE {token}", "approver_not_allowed", id="not-allowlisted"
        ),
        pytest.param(APPROVER, "APPROVE 0000000000000000", "unknown_token", id="wrong-token"),
    ],
)
def test_replies_that_do_not_count(
    live: RunningAgent,
    pki: Pki,
    bridge: SignalBridge,
    snapshot: str,
    sender: str,
    text: str,
    code: str,
) -> None:
    approval_id = request_approval(live, pki, snapshot)
    body = signed_reply(text.format(token=token_sent(bridge)), sender=sender)
    result = webhook(live, pki, body).json()["results"][0]
    assert (result["outcome"], result["code"]) == ("refused", code)
    assert status(live, pki, approval_id) == "pending"


def test_a_replayed_or_stale_reply_does_not_count_twice(
    live: RunningAgent, pki: Pki, bridge: SignalBridge, pool: Pool
) -> None:
    """Two approvals: the same message replayed for the second one is refused."""
    first = f"{pool.name}/data@replay-a"
    run("zfs", "snapshot", first)
    approval_id = request_approval(live, pki, first)
    token = token_sent(bridge)
    body = signed_reply(f"DENY {token}")
    assert webhook(live, pki, body).json()["results"][0]["outcome"] == "denied"
    again = webhook(live, pki, body).json()["results"][0]
    assert (again["outcome"], again["code"]) == ("refused", "reply_replayed")
    stale = signed_reply(f"APPROVE {token}", when_ms=int((time.time() - 3600) * 1000))
    assert webhook(live, pki, stale).json()["results"][0]["code"] == "stale_reply"
    denied = post(live, pki, "librarian-1", "/host/op", destroy(first, approval_id=approval_id))
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "approval_denied"
    assert first in pool.datasets("snapshot")
    run("zfs", "destroy", first)


def test_an_approval_runs_only_its_own_operation_once(
    live: RunningAgent, pki: Pki, bridge: SignalBridge, pool: Pool, snapshot: str
) -> None:
    other = f"{pool.name}/data@other-{time.monotonic_ns()}"
    run("zfs", "snapshot", other)
    approval_id = request_approval(live, pki, snapshot)
    assert post(live, pki, "admin-1", "/approve", {"token": token_sent(bridge)}).status_code == 200

    swapped = post(live, pki, "librarian-1", "/host/op", destroy(other, approval_id=approval_id))
    assert (swapped.status_code, swapped.json()["error"]["code"]) == (403, "approval_mismatch")
    stolen = post(live, pki, "reader-1", "/host/op", destroy(snapshot, approval_id=approval_id))
    assert stolen.status_code == 403  # the reader may not destroy at all
    assert get(live, pki, "reader-1", f"/approvals/{approval_id}").status_code == 404
    assert other in pool.datasets("snapshot") and snapshot in pool.datasets("snapshot")

    assert (
        post(
            live, pki, "librarian-1", "/host/op", destroy(snapshot, approval_id=approval_id)
        ).status_code
        == 200
    )
    run("zfs", "snapshot", snapshot)  # the same name again: a reused approval must not touch it
    reused = post(live, pki, "librarian-1", "/host/op", destroy(snapshot, approval_id=approval_id))
    assert (reused.status_code, reused.json()["error"]["code"]) == (409, "approval_consumed")
    assert snapshot in pool.datasets("snapshot")
    run("zfs", "destroy", other)


def test_fifty_concurrent_resubmits_run_it_once(
    live: RunningAgent, pki: Pki, bridge: SignalBridge, pool: Pool, snapshot: str, config: Config
) -> None:
    approval_id = request_approval(live, pki, snapshot)
    assert post(live, pki, "admin-1", "/approve", {"token": token_sent(bridge)}).status_code == 200
    body = destroy(snapshot, approval_id=approval_id)

    def resubmit(_: int) -> int:
        return post(live, pki, "librarian-1", "/host/op", body).status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool_of_clients:
        codes = list(pool_of_clients.map(resubmit, range(50)))
    assert sorted(codes) == [200] + [409] * 49
    results = [r for r in audit_records(config.audit.log_path) if r["event"] == "result"]
    assert len(results) == 1 and results[0]["outcome"] == "ok"
    assert snapshot not in pool.datasets("snapshot")


def test_pending_and_granted_approvals_survive_a_restart(
    config: Config, pki: Pki, bridge: SignalBridge, pool: Pool, snapshot: str
) -> None:
    second = f"{pool.name}/data@restart-{time.monotonic_ns()}"
    run("zfs", "snapshot", second)
    with running_agent(config) as agent:
        granted_id = request_approval(agent, pki, snapshot)
        post(agent, pki, "admin-1", "/approve", {"token": token_sent(bridge, snapshot)})
        pending_id = request_approval(agent, pki, second)
        pending_token = token_sent(bridge, second)  # not the first one's, still the last sent
    with running_agent(config) as agent:
        assert status(agent, pki, granted_id) == "approved"
        assert status(agent, pki, pending_id) == "pending"
        listed = get(agent, pki, "librarian-1", "/pending").json()["approvals"]
        assert {a["approval_id"] for a in listed} == {granted_id, pending_id}
        assert get(agent, pki, "admin-1", "/admin/pending").status_code == 200
        assert get(agent, pki, "librarian-1", "/admin/pending").status_code == 403
        run_granted = post(
            agent, pki, "librarian-1", "/host/op", destroy(snapshot, approval_id=granted_id)
        )
        assert run_granted.status_code == 200
        assert post(agent, pki, "admin-1", "/approve", {"token": pending_token}).status_code == 200
        run_pending = post(
            agent, pki, "librarian-1", "/host/op", destroy(second, approval_id=pending_id)
        )
        assert run_pending.status_code == 200
    assert snapshot not in pool.datasets("snapshot") and second not in pool.datasets("snapshot")


def test_a_failed_send_is_retried_audited_and_loses_nothing(
    live: RunningAgent, pki: Pki, bridge: SignalBridge, snapshot: str, config: Config
) -> None:
    bridge.fail_next(1, status=503)
    approval_id = request_approval(live, pki, snapshot)
    token_sent(bridge)
    wait_for(lambda: len(bridge.sent) == 2)
    wait_for(
        lambda: "approval_notified" in [r["event"] for r in audit_records(config.audit.log_path)]
    )
    bridge.fail_next(10, status=500)
    second = request_approval(live, pki, snapshot)
    wait_for(
        lambda: (
            "approval_notify_failed" in [r["event"] for r in audit_records(config.audit.log_path)]
        ),
        timeout=30,
    )
    assert status(live, pki, approval_id) == "pending" and status(live, pki, second) == "pending"


def test_the_predecessors_generic_webhook_carries_the_message(
    system: System, pool: Pool, pki: Pki, tmp_path: Path, bridge: SignalBridge, snapshot: str
) -> None:
    """Without signal_url, `signal_webhook` gets {"message", "recipients"}."""
    text = f'signal_webhook = "{bridge.url}/webhook"'
    config = system.agent_config(pki, tmp_path, approval=text)
    with running_agent(config) as agent:
        approval_id = request_approval(agent, pki, snapshot)
        (posted,) = wait_for(lambda: bridge.webhook_posts)
    assert set(posted) == {"message", "recipients"}
    assert posted["recipients"] == ["+15555550001", "+15555550002"]
    assert snapshot in posted["message"] and "APPROVE " in posted["message"]
    assert bridge.sent == []
    assert approval_id.startswith("ap-")


def test_the_sweeper_expires_approvals_nobody_asks_about(
    system: System, pool: Pool, pki: Pki, tmp_path: Path, bridge: SignalBridge, snapshot: str
) -> None:
    config = configured(system, pki, tmp_path, bridge, approval_ttl=10)
    with running_agent(config) as agent:
        approval_id = request_approval(agent, pki, snapshot)
        expired = wait_for(
            lambda: [
                r for r in audit_records(config.audit.log_path) if r["event"] == "approval_expired"
            ],
            timeout=30,
        )
    assert [r["approval_id"] for r in expired] == [approval_id]
    assert snapshot in pool.datasets("snapshot")


def test_the_requesters_labels_are_audited_stored_and_shown_set_off(
    live: RunningAgent, pki: Pki, bridge: SignalBridge, snapshot: str, config: Config
) -> None:
    """The predecessor's `metadata`: audited with the decision, kept with the approval,
    and in the approvers' message as the requester's words, not the agent's."""
    labels = {"ticket": "OPS-12", "job": "nightly cleanup"}
    asked = post(live, pki, "librarian-1", "/host/op", destroy(snapshot, metadata=labels))
    assert asked.status_code == 202, asked.text
    approval_id = asked.json()["approval_id"]
    token_sent(bridge)  # the message went out
    message = bridge.sent[-1]["message"]
    assert (
        "Labels given by the requester (unchecked):\n> job: nightly cleanup\n> ticket: OPS-12"
        in (message)
    )
    shown = get(live, pki, "librarian-1", f"/approvals/{approval_id}").json()
    assert shown["metadata"] == labels
    decision = next(r for r in audit_records(config.audit.log_path) if r["event"] == "decision")
    assert decision["metadata"] == labels


def test_a_client_holding_the_status_hears_the_grant_at_once(
    live: RunningAgent, pki: Pki, bridge: SignalBridge, snapshot: str
) -> None:
    """GET /approvals/{id}?wait=N answers when the approval is decided, not after N."""
    approval_id = request_approval(live, pki, snapshot)
    token = token_sent(bridge)
    held: dict[str, Any] = {}

    def follow() -> None:
        started = time.monotonic()
        reply = get(live, pki, "librarian-1", f"/approvals/{approval_id}?wait=15")
        held.update(reply=reply, seconds=time.monotonic() - started)

    waiter = threading.Thread(target=follow)
    waiter.start()
    time.sleep(0.5)  # the request is held by now
    assert webhook(live, pki, signed_reply(f"APPROVE {token}")).status_code == 200
    waiter.join(timeout=30)
    assert held["reply"].status_code == 200, held["reply"].text
    assert held["reply"].json()["status"] == "approved"
    assert held["seconds"] < 10  # woken by the decision, not by the end of its 15 s


@pytest.mark.parametrize("wait", ["abc", "21", "-1", "1e3", "0x10"])
def test_a_wait_that_is_not_0_to_20_seconds_is_a_400(
    live: RunningAgent, pki: Pki, snapshot: str, wait: str
) -> None:
    approval_id = request_approval(live, pki, snapshot)
    reply = get(live, pki, "librarian-1", f"/approvals/{approval_id}?wait={wait}")
    assert reply.status_code == 400, reply.text
    assert (reply.json()["error"]["code"], reply.json()["error"]["field"]) == (
        "invalid_argument",
        "wait",
    )


def answering(sender: str, sent_ms: int, *, emoji: str | None = None, text: str = "") -> bytes:
    """An approver's reaction (`emoji`) to, or quote-reply (`text`) of, the message
    /v2/send stamped `sent_ms`."""
    reply = envelope(sender, text or None, int(time.time() * 1000))
    if emoji is not None:
        reply["dataMessage"]["reaction"] = {
            "emoji": emoji,
            "targetAuthor": BRIDGE_NUMBER,
            "targetSentTimestamp": sent_ms,
            "isRemove": False,
        }
    else:
        reply["dataMessage"]["quote"] = {"id": sent_ms, "author": BRIDGE_NUMBER, "text": ""}
    return json.dumps(jsonrpc_receive(reply, BRIDGE_NUMBER)).encode()


def test_a_thumbs_up_to_the_message_approves_and_a_quoted_deny_denies(
    live: RunningAgent, pki: Pki, pool: Pool, bridge: SignalBridge, snapshot: str, config: Config
) -> None:
    """Approvers may answer the message itself: by its timestamp, with the same
    allowlist, freshness and replay rules as a typed reply."""

    def notified(approval_id: str) -> bool:
        """The message went out and its timestamp is kept (then it is audited)."""
        records = audit_records(config.audit.log_path)
        return any(
            r["event"] == "approval_notified" and r["approval_id"] == approval_id for r in records
        )

    first = request_approval(live, pki, snapshot)
    wait_for(lambda: notified(first))
    first_ms = int(bridge.recorded("/v2/send")[-1].reply["timestamp"])
    stranger = answering("+15555550099", first_ms, emoji="\U0001f44d")
    assert webhook(live, pki, stranger).json()["results"][0]["code"] == "approver_not_allowed"
    approved = webhook(live, pki, answering(APPROVER, first_ms, emoji="\U0001f44d"))
    assert approved.json()["results"][0]["outcome"] == "approved", approved.text
    done = post(live, pki, "librarian-1", "/host/op", destroy(snapshot, approval_id=first))
    assert done.status_code == 200, done.text

    second_snapshot = f"{snapshot}-2"
    run("zfs", "snapshot", second_snapshot)
    try:
        second = request_approval(live, pki, second_snapshot)
        wait_for(lambda: notified(second))
        second_ms = int(bridge.recorded("/v2/send")[-1].reply["timestamp"])
        denied = webhook(live, pki, answering(APPROVER, second_ms, text="deny"))
        assert denied.json()["results"][0]["outcome"] == "denied", denied.text
        assert status(live, pki, second) == "denied"
        assert second_snapshot in pool.datasets("snapshot")
    finally:
        run("zfs", "destroy", second_snapshot, check=False)
    granted = [r for r in audit_records(config.audit.log_path) if r["event"] == "approval_granted"]
    assert granted[0]["approver"] == f"signal:{APPROVER}"
