"""`host-agent op` end to end, as root: real zfs operations through sudo and the wrappers
on a zfs-fuse pool, a destroy run once after a human approves over the Signal stand-in
while the command waits, and an approval followed up by a later run."""

from __future__ import annotations

import json
import re
import threading

import pytest

from host_agent.cli import main
from host_agent.cli.common import EXIT_FAILED, EXIT_OK, EXIT_PENDING
from tests.approval_flow import get, post, token_sent
from tests.signal_bridge import SignalBridge
from tests.support import Pki, RunningAgent
from tests.system import Pool, run
from tests.test_cli_op import Ran, connection
from tests.test_e2e_client import APPROVER

pytestmark = pytest.mark.root


def op_as(agent: RunningAgent, pki: Pki, capsys: pytest.CaptureFixture[str], *words: str) -> Ran:
    status = main(["op", *connection(agent.url, pki, "librarian-1"), *words])
    out, err = capsys.readouterr()
    return Ran(status, out, err)


def test_a_real_list_prints_what_zfs_prints(
    system_agent: RunningAgent, pki: Pki, pool: Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    ran = op_as(system_agent, pki, capsys, "zfs", "list", pool.name)
    assert ran.status == EXIT_OK, ran.stderr
    # The table zfs itself prints, to the character (not a terminal: no colour).
    columns = "name,used,avail,refer,mountpoint"
    assert ran.stdout == run("zfs", "list", "-r", "-o", columns, pool.name).stdout
    assert ran.stderr == ""

    # -p: exact bytes, as `zfs get -p` has them.
    ran = op_as(system_agent, pki, capsys, "-p", "zfs", "list", pool.name)
    rows = [line.split() for line in ran.stdout.splitlines()]
    assert rows[0] == ["NAME", "USED", "AVAIL", "REFER", "MOUNTPOINT"]
    exact = run("zfs", "get", "-H", "-p", "-r", "-o", "name,value", "used", pool.name).stdout
    # zfs-fuse's get has no -t: its snapshots (other tests') are left out here.
    assert [(row[0], row[1]) for row in rows[1:]] == [
        tuple(line.split("\t")) for line in exact.splitlines() if "@" not in line
    ]

    ran = op_as(system_agent, pki, capsys, "--json", "zfs", "list", pool.name)
    result = json.loads(ran.stdout)["result"]
    names = [dataset["name"] for dataset in result["data"]["datasets"]]
    assert names == [pool.name, f"{pool.name}/data"] and result["exit_code"] == 0


def test_a_list_of_snapshots_prints_what_zfs_prints(
    system_agent: RunningAgent, pki: Pki, pool: Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    run("zfs", "snapshot", f"{pool.name}/data@cli-table")
    try:
        ran = op_as(system_agent, pki, capsys, "zfs", "list", pool.name, "snapshot")
        columns = "name,used,avail,refer,mountpoint"
        shown = run("zfs", "list", "-r", "-t", "snapshot", "-o", columns, pool.name).stdout
    finally:
        run("zfs", "destroy", f"{pool.name}/data@cli-table")
    assert ran.status == EXIT_OK, ran.stderr
    assert "@cli-table" in shown

    def cells(text: str) -> list[list[str]]:
        # zfs-fuse's older zfs prints a size below 1K bare ("0"); OpenZFS, like this, "0B".
        return [[f"{c}B" if c.isdigit() else c for c in line.split()] for line in text.splitlines()]

    assert cells(ran.stdout) == cells(shown)


def test_a_get_prints_what_zfs_get_prints(
    operator_agent: RunningAgent, pki: Pki, pool: Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    dataset = f"{pool.name}/data"
    wanted = ("used", "compression", "mountpoint", "readonly", "type")
    status = main(
        ["op", *connection(operator_agent.url, pki, "admin-1"), "zfs", "get", dataset, *wanted]
    )
    ran = Ran(status, *capsys.readouterr())
    assert ran.status == EXIT_OK, ran.stderr
    shown = run("zfs", "get", "-o", "name,property,value,source", ",".join(wanted), dataset)
    assert [line.split() for line in ran.stdout.splitlines()] == [
        line.split() for line in shown.stdout.splitlines()
    ]


def test_a_failed_operation_shows_its_own_error(
    system_agent: RunningAgent, pki: Pki, pool: Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    run("zfs", "snapshot", f"{pool.name}/data@cli-twice")
    try:
        ran = op_as(system_agent, pki, capsys, "zfs", "snapshot", f"{pool.name}/data", "cli-twice")
    finally:
        run("zfs", "destroy", f"{pool.name}/data@cli-twice")
    assert ran.status == EXIT_FAILED
    assert "already exists" in ran.stderr  # zfs's own words, from the result
    assert ran.stderr.splitlines()[-1].startswith("host-agent: failed: ")
    assert "already_exists" in ran.stderr


def test_a_destroy_runs_once_when_approved_while_waiting(
    signalling_agent: RunningAgent,
    pool: Pool,
    pki: Pki,
    bridge: SignalBridge,
    snapshot: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    answer = threading.Thread(
        target=lambda: bridge.queue_reply(APPROVER, f"APPROVE {token_sent(bridge)}")
    )
    answer.start()
    words = ("zfs", "destroy", snapshot, "--reason", "free space", "--wait")
    ran = op_as(signalling_agent, pki, capsys, *words, "--poll-interval", "0.2")
    answer.join()
    assert ran.status == EXIT_OK, ran.stderr
    assert re.search(
        rf"approved by signal:…{APPROVER[-4:]} at \d{{4}}-\d\d-\d\dT[\d:]{{8}}\+00:00: running it",
        ran.stderr,
    )
    assert snapshot not in pool.datasets("snapshot")


def test_an_approval_can_be_followed_by_a_later_run_once(
    signalling_agent: RunningAgent,
    pool: Pool,
    pki: Pki,
    bridge: SignalBridge,
    snapshot: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    agent = signalling_agent
    asked = op_as(agent, pki, capsys, "--json", "zfs", "destroy", snapshot)
    assert asked.status == EXIT_PENDING
    approval_id = json.loads(asked.stdout)["approval"]["approval_id"]
    approved = post(agent, pki, "admin-1", "/approve", {"token": token_sent(bridge)})
    assert approved.status_code == 200
    assert snapshot in pool.datasets("snapshot")  # approving runs nothing by itself

    ran = op_as(agent, pki, capsys, "--json", "--follow", approval_id)
    assert ran.status == EXIT_OK, ran.stdout
    assert json.loads(ran.stdout)["result"]["data"] == {"destroyed": snapshot, "recursive": False}
    assert snapshot not in pool.datasets("snapshot")

    again = op_as(agent, pki, capsys, "--json", "--follow", approval_id)
    assert again.status == EXIT_FAILED
    assert json.loads(again.stdout)["error"]["code"] == "approval_consumed"
    status = get(agent, pki, "librarian-1", f"/approvals/{approval_id}").json()["status"]
    assert status == "consumed"
