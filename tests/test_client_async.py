"""host_agent.client.AsyncClient against a real agent over real mutual TLS: the same core
paths as the blocking client, each test driving its own event loop with asyncio.run."""

from __future__ import annotations

import asyncio

import pytest

from host_agent.client import (
    ApprovalDenied,
    ApprovalState,
    AsyncClient,
    AsyncPendingApproval,
    CertificateRejected,
    DryRun,
    InvalidRequest,
    Refused,
    StillPending,
)
from tests.approval_flow import post, token_sent
from tests.signal_bridge import SignalBridge
from tests.support import Pki, RunningAgent
from tests.test_client import SNAPSHOT, client_ports, settings


def connect(agent: RunningAgent, pki: Pki, cn: str) -> AsyncClient:
    return AsyncClient(settings(agent, pki, cn))


def test_dry_runs_and_health_share_one_connection(agent: RunningAgent, pki: Pki) -> None:
    async def main() -> tuple[object, str, set[int]]:
        seen: set[int] = set()
        async with connect(agent, pki, "librarian-1") as client:
            for _ in range(3):
                outcome = await client.run("zfs", "tank", ["list"], dry_run=True)
                seen |= client_ports(agent)
                health = await client.health()
                seen |= client_ports(agent)
        return outcome, health.status, seen

    outcome, status, seen = asyncio.run(main())
    assert isinstance(outcome, DryRun) and outcome.decision.effect == "allow"
    assert status == "ok"
    assert len(seen) == 1


def test_errors_are_the_same_typed_exceptions(agent: RunningAgent, pki: Pki) -> None:
    async def main() -> list[BaseException]:
        caught: list[BaseException] = []
        calls = [
            ("librarian-1", ("zfs", "tank/../etc", ["list"])),
            ("reader-1", ("zfs", SNAPSHOT, ["destroy"])),
            ("revoked-1", ("zfs", "tank", ["list"])),
        ]
        for cn, (kind, resource, args) in calls:
            async with connect(agent, pki, cn) as client:
                try:
                    await client.run(kind, resource, args)
                except Exception as exc:
                    caught.append(exc)
        return caught

    invalid, refused, revoked = asyncio.run(main())
    assert isinstance(invalid, InvalidRequest)
    assert (invalid.status, invalid.code, invalid.field) == (400, "invalid_name", "resource")
    assert isinstance(refused, Refused) and refused.code == "read_only"
    assert isinstance(revoked, CertificateRejected) and "CN=revoked-1" in str(revoked)


def test_a_pending_approval_is_awaited_then_denied(
    approving_agent: RunningAgent, pki: Pki, bridge: SignalBridge
) -> None:
    agent = approving_agent

    async def main() -> None:
        async with connect(agent, pki, "librarian-1") as client:
            pending = await client.run("zfs", SNAPSHOT, ["destroy"], reason="free space")
            assert isinstance(pending, AsyncPendingApproval)
            with pytest.raises(StillPending) as still:
                await pending.wait(timeout=0.3, poll_interval=0.1)
            assert still.value.approval is not None
            assert still.value.approval.status is ApprovalState.PENDING
            assert [a.approval_id for a in await client.pending()] == [pending.approval_id]

            deny = {"token": token_sent(bridge), "decision": "deny"}
            answer = await asyncio.to_thread(post, agent, pki, "admin-1", "/approve", deny)
            assert answer.status_code == 200
            with pytest.raises(ApprovalDenied) as denied:
                await pending.wait(poll_interval=0.1)
            assert denied.value.approval is not None
            assert (await client.approval(pending.approval_id)).status is ApprovalState.DENIED

    asyncio.run(main())
