"""host_agent.client end to end, as root: real zfs operations through sudo and the wrappers
on a zfs-fuse pool, and a real destroy that waits for a human answering over the Signal
stand-in, resubmitted by `wait()` and run exactly once."""

from __future__ import annotations

import asyncio
import threading

import pytest

from host_agent.client import (
    ApprovalConsumed,
    ApprovalState,
    AsyncClient,
    AsyncPendingApproval,
    Client,
    Conflict,
    OperationResult,
    PendingApproval,
    StillPending,
)
from tests.approval_flow import post, token_sent
from tests.signal_bridge import SignalBridge
from tests.support import Pki, RunningAgent
from tests.system import Pool, run
from tests.test_client import settings

pytestmark = pytest.mark.root

APPROVER = "+15555550001"


def test_a_real_zfs_list_is_an_operation_result(
    system_agent: RunningAgent, pki: Pki, pool: Pool
) -> None:
    with Client(settings(system_agent, pki, "librarian-1")) as client:
        result = client.run("zfs", pool.name, ["list"])
    assert isinstance(result, OperationResult)
    assert (result.operation, result.resource, result.exit_code) == ("zfs-list", pool.name, 0)
    assert f"{pool.name}/data" in result.stdout and not result.truncated
    names = [d["name"] for d in result.data["datasets"]]
    assert names == [pool.name, f"{pool.name}/data"]
    assert result.duration_ms > 0 and len(result.request_id) == 16


def test_a_failed_run_carries_its_output(system_agent: RunningAgent, pki: Pki, pool: Pool) -> None:
    run("zfs", "snapshot", f"{pool.name}/data@client-twice")
    with (
        Client(settings(system_agent, pki, "librarian-1")) as client,
        pytest.raises(Conflict) as raised,
    ):
        client.run("zfs", f"{pool.name}/data", ["snapshot", "client-twice"])
    assert (raised.value.status, raised.value.code) == (409, "already_exists")
    result = raised.value.result
    assert result is not None and result.exit_code != 0
    assert "already exists" in result.stderr and result.data == {}
    assert result.request_id == raised.value.request_id
    run("zfs", "destroy", f"{pool.name}/data@client-twice")


def test_an_approved_destroy_runs_once_through_wait(
    signalling_agent: RunningAgent, pool: Pool, pki: Pki, bridge: SignalBridge, snapshot: str
) -> None:
    seen: list[ApprovalState] = []
    with Client(settings(signalling_agent, pki, "librarian-1")) as client:
        pending = client.run("zfs", snapshot, ["destroy"], reason="free space")
        assert isinstance(pending, PendingApproval)
        with pytest.raises(StillPending):
            pending.wait(timeout=0.5, poll_interval=0.1)
        assert snapshot in pool.datasets("snapshot")

        # The approver answers over Signal while the client is waiting.
        token = token_sent(bridge)
        answer = threading.Timer(0.5, bridge.queue_reply, (APPROVER, f"APPROVE {token}"))
        answer.start()
        result = pending.wait(
            timeout=20, poll_interval=0.1, on_status=lambda s: seen.append(s.status)
        )
        answer.join()

        assert isinstance(result, OperationResult) and result.exit_code == 0
        assert result.data == {"destroyed": snapshot, "recursive": False}
        assert snapshot not in pool.datasets("snapshot")
        assert seen[0] is ApprovalState.PENDING and seen[-1] is ApprovalState.APPROVED
        assert client.approval(pending.approval_id).status is ApprovalState.CONSUMED
        with pytest.raises(ApprovalConsumed):
            pending.wait()


def test_the_async_client_waits_while_an_admin_approves(
    signalling_agent: RunningAgent, pool: Pool, pki: Pki, bridge: SignalBridge, snapshot: str
) -> None:

    async def main(agent: RunningAgent) -> OperationResult:
        async with AsyncClient(settings(agent, pki, "librarian-1")) as client:
            pending = await client.run("zfs", snapshot, ["destroy"])
            assert isinstance(pending, AsyncPendingApproval)

            def approve() -> int:
                return post(
                    agent, pki, "admin-1", "/approve", {"token": token_sent(bridge)}
                ).status_code

            result, approved = await asyncio.gather(
                pending.wait(timeout=20, poll_interval=0.1), asyncio.to_thread(approve)
            )
            assert approved == 200
            return result

    result = asyncio.run(main(signalling_agent))
    assert result.exit_code == 0 and result.resource == snapshot
    assert snapshot not in pool.datasets("snapshot")
