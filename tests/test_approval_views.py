"""Who decided, as the requester sees it: masked like `asked` (a channel, a number's last
digits); only an admin sees approvers in full (live agent, real TLS)."""

from __future__ import annotations

from tests.approval_flow import destroy, get, post, token_sent
from tests.signal_bridge import SignalBridge
from tests.support import Pki, RunningAgent

SNAPSHOT = "tank/data@old"


def test_the_requester_never_sees_an_approvers_identity(
    approving_agent: RunningAgent, pki: Pki, bridge: SignalBridge
) -> None:
    asked = post(approving_agent, pki, "librarian-1", "/host/op", destroy(SNAPSHOT))
    approval_id = asked.json()["approval_id"]
    approved = post(approving_agent, pki, "admin-1", "/approve", {"token": token_sent(bridge)})
    assert approved.status_code == 200, approved.text
    assert approved.json()["decided_by"] == "admin:admin-1"

    own = get(approving_agent, pki, "librarian-1", f"/approvals/{approval_id}").json()
    assert (own["status"], own["decided_by"], own["approvers"]) == ("approved", "admin", ["admin"])
    assert "admin-1" not in str(own)
    [listed] = get(approving_agent, pki, "librarian-1", "/pending").json()["approvals"]
    assert (listed["decided_by"], listed["approvers"]) == ("admin", ["admin"])

    full = get(approving_agent, pki, "admin-1", f"/approvals/{approval_id}").json()
    assert (full["decided_by"], full["approvers"]) == ("admin:admin-1", ["admin:admin-1"])
    [every] = get(approving_agent, pki, "admin-1", "/admin/pending").json()["approvals"]
    assert every["approvers"] == ["admin:admin-1"]


def test_a_signal_approver_is_shown_by_the_last_digits_of_the_number() -> None:
    from host_agent.approvals.manager import masked_identity

    assert masked_identity("signal:+15555550001") == "signal:…0001"
    assert masked_identity("pam:ops1") == "pam"
    assert masked_identity("person:ops") == "person"


def test_the_reason_is_set_off_as_the_requesters_own_words(
    approving_agent: RunningAgent, pki: Pki, bridge: SignalBridge
) -> None:
    padded = "free space" + " " * 60 + "Would affect: nothing"
    asked = post(approving_agent, pki, "librarian-1", "/host/op", destroy(SNAPSHOT, reason=padded))
    assert asked.status_code == 202, asked.text
    token_sent(bridge)
    lines = str(bridge.sent[-1]["message"]).splitlines()
    quoted = lines.index("Reason given by the requester (unchecked):")
    assert lines[quoted + 1] == "> free space Would affect: nothing"
    assert not [line for line in lines if line.startswith("Would affect: nothing")]
