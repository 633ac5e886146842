"""kill -9 with approvals in every state, then a restart: nothing is lost. Pending ones
stay pending and their tokens still work, granted ones are still usable exactly once,
denied ones stay denied, and a used one stays used across the next kill too."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import httpx
import pytest

from host_agent.client import (
    ApprovalConsumed,
    ApprovalDenied,
    ApprovalState,
    Client,
    ClientConfig,
    OperationFailed,
    PendingApproval,
)
from tests.approval_flow import approvals_config, wait_for
from tests.served import agent_process
from tests.signal_bridge import SignalBridge
from tests.support import Pki, client_context

SNAPSHOTS = [f"tank/media@restart-{n}" for n in range(6)]


def connect(port: int, pki: Pki, cn: str) -> Client:
    cert, key = pki.client(cn)
    return Client(ClientConfig(f"https://127.0.0.1:{port}", cert, key, pki.ca))


def decide(port: int, pki: Pki, token: str, verdict: str) -> None:
    cert, key = pki.client("admin-1")
    context = client_context(pki.ca, cert, key)
    with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=context) as http:
        reply = http.post("/approve", json={"token": token, "decision": verdict})
    assert reply.status_code == 200, reply.text


def tokens_by_resource(bridge: SignalBridge, count: int) -> dict[str, str]:
    """The token each approval message carried, by the resource it names."""
    sent = wait_for(lambda: bridge.sent if len(bridge.sent) >= count else None)
    tokens = {}
    for message in (entry["message"] for entry in sent):
        resource = re.search(r"^Resource: (\S+)$", message, re.MULTILINE)
        token = re.search(r"APPROVE (\S+)", message)
        assert resource and token
        tokens[resource.group(1)] = token.group(1)
    return tokens


def test_kill_9_keeps_every_approval_and_its_token(
    pki: Pki, tmp_path: Path, bridge: SignalBridge
) -> None:
    config = approvals_config(pki, tmp_path, bridge)
    with agent_process(config.source) as (process, port):
        with connect(port, pki, "librarian-1") as client:
            asked = [client.run("zfs", snapshot, ["destroy"]) for snapshot in SNAPSHOTS]
        assert all(isinstance(ticket, PendingApproval) for ticket in asked)
        tokens = tokens_by_resource(bridge, len(SNAPSHOTS))
        decide(port, pki, tokens[SNAPSHOTS[0]], "approve")
        decide(port, pki, tokens[SNAPSHOTS[1]], "approve")
        decide(port, pki, tokens[SNAPSHOTS[2]], "deny")
        process.send_signal(signal.SIGKILL)

    ids = [ticket.approval_id for ticket in asked if isinstance(ticket, PendingApproval)]
    with agent_process(config.source) as (process, port):
        with connect(port, pki, "librarian-1") as client:
            states = [client.approval(approval_id).status for approval_id in ids]
            assert (
                states
                == [ApprovalState.APPROVED] * 2
                + [ApprovalState.DENIED]
                + [ApprovalState.PENDING] * 3
            )
            # A token sent before the kill still decides its approval.
            decide(port, pki, tokens[SNAPSHOTS[3]], "approve")
            assert client.approval(ids[3]).status is ApprovalState.APPROVED
            # Granted before the kill, used after it. (Without root the destroy itself fails
            # in sudo; the approval is spent all the same, as it is by any run.)
            with pytest.raises(OperationFailed):
                client.run("zfs", SNAPSHOTS[0], ["destroy"], approval_id=ids[0])
            with pytest.raises(ApprovalDenied):
                client.run("zfs", SNAPSHOTS[2], ["destroy"], approval_id=ids[2])
        process.send_signal(signal.SIGKILL)

    with agent_process(config.source) as (process, port):
        with connect(port, pki, "librarian-1") as client:
            assert client.approval(ids[0]).status is ApprovalState.CONSUMED
            with pytest.raises(ApprovalConsumed):
                client.run("zfs", SNAPSHOTS[0], ["destroy"], approval_id=ids[0])
            states = [client.approval(approval_id).status for approval_id in ids[1:]]
            assert states == [
                ApprovalState.APPROVED,
                ApprovalState.DENIED,
                ApprovalState.APPROVED,
                ApprovalState.PENDING,
                ApprovalState.PENDING,
            ]
        process.send_signal(signal.SIGTERM)
