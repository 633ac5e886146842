"""`host-agent mcp` end to end, as root: a real zfs listing through sudo and the wrappers on
a zfs-fuse pool, and a real destroy that waits for an admin, then runs once when the model
calls check_approval."""

from __future__ import annotations

from pathlib import Path

import pytest

from host_agent.mcp_server import CHECK_APPROVAL
from tests.approval_flow import post, token_sent
from tests.signal_bridge import SignalBridge
from tests.support import Pki, RunningAgent
from tests.system import Pool
from tests.test_mcp import McpSession, error, payload, text, tls_options

pytestmark = pytest.mark.root


def test_a_real_zfs_list_is_a_tool_result(
    system_agent: RunningAgent, pki: Pki, pool: Pool, tmp_path: Path
) -> None:
    with McpSession(tmp_path, tls_options(system_agent.url, pki, "librarian-1")) as session:
        result = session.call("zfs-list", {"resource": pool.name})
    assert not result.is_error, text(result)
    assert text(result).startswith(f"zfs-list on {pool.name} ran: exit code 0.\n")
    listing = payload(result)
    assert (listing["operation"], listing["resource"], listing["exit_code"]) == (
        "zfs-list",
        pool.name,
        0,
    )
    assert f"{pool.name}/data" in listing["stdout"] and listing["truncated"] is False
    names = [dataset["name"] for dataset in listing["data"]["datasets"]]
    assert names == [pool.name, f"{pool.name}/data"]


def test_an_approved_destroy_runs_once_through_check_approval(
    signalling_agent: RunningAgent,
    pool: Pool,
    pki: Pki,
    tmp_path: Path,
    bridge: SignalBridge,
    snapshot: str,
) -> None:
    agent = signalling_agent
    with McpSession(tmp_path, tls_options(agent.url, pki, "librarian-1")) as session:
        asked = session.call("zfs-destroy", {"resource": snapshot, "reason": "free space"})
        assert not asked.is_error and payload(asked)["status"] == "pending"
        check = {"approval_id": payload(asked)["approval_id"]}
        assert payload(session.call(CHECK_APPROVAL, check))["status"] == "pending"
        assert snapshot in pool.datasets("snapshot")

        approve = {"token": token_sent(bridge)}
        assert post(agent, pki, "admin-1", "/approve", approve).status_code == 200
        ran = session.call(CHECK_APPROVAL, check)
        assert not ran.is_error, text(ran)
        result = payload(ran)
        assert (result["operation"], result["exit_code"]) == ("zfs-destroy", 0)
        assert result["data"] == {"destroyed": snapshot, "recursive": False}
        assert snapshot not in pool.datasets("snapshot")

        again = session.call(CHECK_APPROVAL, check)
        assert error(again) == ("approval_consumed", None)
