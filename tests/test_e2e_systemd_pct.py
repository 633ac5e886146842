"""End to end as root: mTLS client → agent → real sudo as an unprivileged account →
the systemd and pct wrappers → stand-ins for systemctl and pct that record their
exact argv and answer like the real tools (no systemd PID 1, no Proxmox here)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from host_agent.adapters.systemd import STATUS_PROPERTIES
from host_agent.audit import verify
from host_agent.cli import main
from host_agent.cli.common import EXIT_OK
from host_agent.config import Config
from tests.hostile import HOSTILE_NAMES
from tests.support import Pki, RunningAgent, audit_records, client, running_agent
from tests.system import REPO, StandIn, System, install_standin, run
from tests.test_cli_op import connection

pytestmark = pytest.mark.root

SHOW = ["show", "--no-pager", "--property=" + ",".join(STATUS_PROPERTIES), "--"]
# How the agent (through the wrapper's `resolve`) and then the wrapper itself ask for
# a unit's canonical id before start/stop/restart.
RESOLVE = ["show", "-p", "Id", "--value", "--"]


def systemctl_calls(command: str, unit: str, argv: list[str]) -> list[list[str]]:
    """What systemctl receives for one request: two id look-ups first when it changes state."""
    return [argv] if command == "status" else [[*RESOLVE, unit], [*RESOLVE, unit], argv]


def decision_and_result(path: Path) -> list[dict[str, Any]]:
    """The request's records other than the canonical-id look-up's."""
    return [r for r in audit_records(path) if r["event"] != "resolve"]


PROFILES = """
[[agents]]
cn_pattern = "librarian*"
agent_type = "librarian"
unix_user = "librarian"
autonomy = "supervised"
allowed_operations = ["systemd-*", "pct-*"]

[[agents]]
cn_pattern = "admin-*"
agent_type = "admin"
unix_user = "root-helper"
autonomy = "full"
allow_full_autonomy_bypass = true
allowed_operations = ["systemd-*", "pct-*"]
"""


@pytest.fixture(scope="module")
def systemctl(system: System) -> StandIn:
    return StandIn(install_standin(system, REPO / "tests" / "standins" / "systemctl"))


@pytest.fixture(scope="module")
def pct(system: System) -> StandIn:
    return StandIn(install_standin(system, REPO / "tests" / "standins" / "pct"))


@pytest.fixture
def units(systemctl: StandIn) -> StandIn:
    systemctl.reset(
        {
            "units": {
                "app.service": {
                    "Description": "The app",
                    "ActiveState": "active",
                    "SubState": "running",
                    "MainPID": 4242,
                    "ActiveEnterTimestamp": "Mon 2024-01-15 09:00:00 UTC",
                },
                "idle.service": {"Description": "Idle", "UnitFileState": "disabled"},
                "denied.service": {"Description": "Guarded"},
                "flaky.service": {"Description": "Flaky"},
            },
            "access_denied": ["denied.service"],
            "job_results": {"flaky.service": "canceled"},
        }
    )
    return systemctl


@pytest.fixture
def containers(pct: StandIn) -> StandIn:
    pct.reset(
        {
            "node": "pve",
            "containers": {
                "101": {"status": "stopped"},
                "102": {"status": "running"},
                "103": {"status": "stopped", "lock": "backup"},
            },
        }
    )
    return pct


@pytest.fixture
def e2e_config(
    system: System, systemctl: StandIn, pct: StandIn, pki: Pki, tmp_path: Path
) -> Config:
    return system.agent_config(
        pki,
        tmp_path,
        profiles=PROFILES,
        extra=f'[binaries]\nsystemctl = "{systemctl.path}"\npct = "{pct.path}"\n',
    )


@pytest.fixture
def live(e2e_config: Config) -> Iterator[RunningAgent]:
    with running_agent(e2e_config) as agent:
        yield agent


def _post(agent: RunningAgent, pki: Pki, body: dict[str, Any], cn: str = "librarian-1") -> Any:
    with client(agent, pki, cn) as http:
        return http.post("/host/op", json=body)


# --- systemd -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "argv", "data", "active"),
    [
        pytest.param(
            "status",
            [*SHOW, "app.service"],
            {
                "unit": "app.service",
                "properties": {
                    "Id": "app.service",
                    "Description": "The app",
                    "LoadState": "loaded",
                    "ActiveState": "active",
                    "SubState": "running",
                    "UnitFileState": "enabled",
                    "MainPID": 4242,
                    "ExecMainStatus": 0,
                    "ActiveEnterTimestamp": "Mon 2024-01-15 09:00:00 UTC",
                },
            },
            "active",
            id="status",
        ),
        pytest.param(
            "start",
            ["start", "--", "app.service"],
            {"started": "app.service"},
            "active",
            id="start",
        ),
        pytest.param(
            "stop", ["stop", "--", "app.service"], {"stopped": "app.service"}, "inactive", id="stop"
        ),
        pytest.param(
            "restart",
            ["restart", "--", "app.service"],
            {"restarted": "app.service"},
            "active",
            id="restart",
        ),
    ],
)
def test_systemd_commands_reach_systemctl_with_exact_argv(
    live: RunningAgent,
    pki: Pki,
    units: StandIn,
    e2e_config: Config,
    system: System,
    command: str,
    argv: list[str],
    data: dict[str, Any],
    active: str,
) -> None:
    reply = _post(live, pki, {"kind": "systemd", "resource": "app.service", "args": [command]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["data"] == data
    assert reply.json()["exit_code"] == 0
    assert units.calls() == systemctl_calls(command, "app.service", argv)
    assert units.state()["units"]["app.service"]["ActiveState"] == active
    resolves = [r for r in audit_records(e2e_config.audit.log_path) if r["event"] == "resolve"]
    if command != "status":
        assert [(r["outcome"], r.get("canonical_resource")) for r in resolves] == [
            ("started", None),
            ("ok", "app.service"),
        ]
    decision, result = decision_and_result(e2e_config.audit.log_path)
    assert (decision["event"], decision["decision"]) == ("decision", "allow")
    assert decision["operation"] == f"systemd-{command}"
    assert decision["argv"][-3:] == [
        str(system.wrappers.directory / "host-agent-systemd"),
        command,
        "app.service",
    ]
    assert (result["event"], result["outcome"], result["exit_code"]) == ("result", "ok", 0)
    assert result["request_id"] == decision["request_id"]
    assert verify([e2e_config.audit.log_path]).ok


def test_restart_gives_the_unit_a_new_main_pid(
    live: RunningAgent, pki: Pki, units: StandIn
) -> None:
    restarted = _post(
        live, pki, {"kind": "systemd", "resource": "app.service", "args": ["restart"]}
    )
    status = _post(live, pki, {"kind": "systemd", "resource": "app.service", "args": ["status"]})
    assert restarted.status_code == status.status_code == 200
    assert status.json()["data"]["properties"]["MainPID"] == 4243
    assert units.calls() == [
        *systemctl_calls("restart", "app.service", ["restart", "--", "app.service"]),
        [*SHOW, "app.service"],
    ]


def test_inactive_unit_status_is_a_normal_answer(
    live: RunningAgent, pki: Pki, units: StandIn
) -> None:
    reply = _post(live, pki, {"kind": "systemd", "resource": "idle.service", "args": ["status"]})
    assert reply.status_code == 200, reply.text
    properties = reply.json()["data"]["properties"]
    assert properties["LoadState"] == "loaded"
    assert (properties["ActiveState"], properties["SubState"]) == ("inactive", "dead")
    assert properties["MainPID"] == 0
    assert properties["UnitFileState"] == "disabled"
    assert properties["ActiveEnterTimestamp"] is None
    assert units.calls() == [[*SHOW, "idle.service"]]


@pytest.mark.parametrize(
    ("unit", "command", "status", "code", "exit_code", "argv"),
    [
        pytest.param(
            "nosuch.service",
            "status",
            404,
            "not_found",
            0,
            [*SHOW, "nosuch.service"],
            id="status-not-found",
        ),
        pytest.param(
            "nosuch.service",
            "start",
            404,
            "not_found",
            5,
            ["start", "--", "nosuch.service"],
            id="start-not-found",
        ),
        pytest.param(
            "nosuch.service",
            "stop",
            404,
            "not_found",
            5,
            ["stop", "--", "nosuch.service"],
            id="stop-not-loaded",
        ),
        pytest.param(
            "denied.service",
            "start",
            403,
            "permission_denied",
            4,
            ["start", "--", "denied.service"],
            id="access-denied",
        ),
        pytest.param(
            "flaky.service",
            "restart",
            409,
            "busy",
            1,
            ["restart", "--", "flaky.service"],
            id="job-canceled",
        ),
    ],
)
def test_systemctl_failures_map_to_status_and_code(
    live: RunningAgent,
    pki: Pki,
    units: StandIn,
    e2e_config: Config,
    unit: str,
    command: str,
    status: int,
    code: str,
    exit_code: int,
    argv: list[str],
) -> None:
    reply = _post(live, pki, {"kind": "systemd", "resource": unit, "args": [command]})
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["code"] == code
    assert reply.json()["result"]["exit_code"] == exit_code
    assert units.calls() == systemctl_calls(command, unit, argv)
    _, result = decision_and_result(e2e_config.audit.log_path)
    assert (result["event"], result["outcome"], result["code"]) == ("result", "failed", code)


# --- pct -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vmid", "command", "data", "after"),
    [
        pytest.param("102", "status", {"vmid": 102, "status": "running"}, "running", id="status"),
        pytest.param("101", "start", {"started": 101}, "running", id="start"),
        pytest.param("102", "stop", {"stopped": 102}, "stopped", id="stop"),
    ],
)
def test_pct_commands_reach_pct_with_exact_argv(
    live: RunningAgent,
    pki: Pki,
    containers: StandIn,
    e2e_config: Config,
    system: System,
    vmid: str,
    command: str,
    data: dict[str, Any],
    after: str,
) -> None:
    reply = _post(live, pki, {"kind": "pct", "resource": vmid, "args": [command]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["data"] == data
    assert containers.calls() == [[command, vmid]]
    assert containers.state()["containers"][vmid]["status"] == after
    decision, result = audit_records(e2e_config.audit.log_path)
    assert (decision["decision"], decision["operation"]) == ("allow", f"pct-{command}")
    assert decision["argv"][-3:] == [
        str(system.wrappers.directory / "host-agent-pct"),
        command,
        vmid,
    ]
    assert (result["event"], result["outcome"], result["exit_code"]) == ("result", "ok", 0)


@pytest.mark.parametrize(
    ("vmid", "command", "status", "code"),
    [
        pytest.param("999", "status", 404, "not_found", id="status-missing"),
        pytest.param("999", "start", 404, "not_found", id="start-missing"),
        pytest.param("103", "start", 409, "busy", id="start-locked"),
        pytest.param("102", "start", 409, "already_running", id="start-running"),
        pytest.param("101", "stop", 409, "not_running", id="stop-stopped"),
    ],
)
def test_pct_failures_map_to_status_and_code(
    live: RunningAgent,
    pki: Pki,
    containers: StandIn,
    vmid: str,
    command: str,
    status: int,
    code: str,
) -> None:
    before = containers.state()
    reply = _post(live, pki, {"kind": "pct", "resource": vmid, "args": [command]})
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["code"] == code
    assert reply.json()["result"]["exit_code"] == 255
    assert containers.calls() == [[command, vmid]]
    assert containers.state() == before


@pytest.mark.parametrize("cn", ["librarian-1", "admin-1"])
def test_pct_destroy_through_the_api_needs_approval_and_runs_nothing(
    live: RunningAgent, pki: Pki, containers: StandIn, e2e_config: Config, cn: str
) -> None:
    reply = _post(live, pki, {"kind": "pct", "resource": "101", "args": ["destroy"]}, cn)
    assert reply.status_code == 202, reply.text
    assert reply.json()["status"] == "pending"
    assert containers.calls() == []
    assert "101" in containers.state()["containers"]
    decision, created = audit_records(e2e_config.audit.log_path)
    assert (decision["decision"], decision["rule"]) == ("approval_required", "adapter pct")
    assert created["event"] == "approval_created"


def test_pct_wrapper_destroys_when_called_directly(system: System, containers: StandIn) -> None:
    """What an approved destroy will run: the wrapper itself works."""
    wrapper = str(system.wrappers.directory / "host-agent-pct")
    done = run("sudo", "-n", wrapper, "destroy", "101", user=system.user, check=False)
    assert done.returncode == 0, done.stderr
    assert containers.calls() == [["destroy", "101"]]
    assert "101" not in containers.state()["containers"]
    running = run("sudo", "-n", wrapper, "destroy", "102", user=system.user, check=False)
    assert running.returncode == 255
    assert "unable to destroy CT 102 - container is running" in running.stderr
    assert "102" in containers.state()["containers"]


# --- hostile input -------------------------------------------------------------------


@pytest.mark.parametrize("value", HOSTILE_NAMES)
def test_hostile_names_through_the_api_run_nothing(
    live: RunningAgent,
    pki: Pki,
    units: StandIn,
    containers: StandIn,
    e2e_config: Config,
    value: str,
) -> None:
    with client(live, pki, "librarian-1") as http:
        replies = [
            http.post("/host/op", json={"kind": "systemd", "resource": value, "args": ["start"]}),
            http.post("/host/op", json={"kind": "pct", "resource": value, "args": ["stop"]}),
        ]
    for reply in replies:
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["field"] == "resource"
    assert units.calls() == [] and containers.calls() == []
    events = [r["event"] for r in audit_records(e2e_config.audit.log_path)]
    assert events == ["rejected", "rejected"]


# argv cannot carry NUL at all: execve refuses it before any wrapper runs.
ARGV_HOSTILE_NAMES = [case for case in HOSTILE_NAMES if "\x00" not in case.values[0]]


@pytest.mark.parametrize("value", ARGV_HOSTILE_NAMES)
def test_wrappers_reject_hostile_names_on_their_own(
    system: System, e2e_config: Config, units: StandIn, containers: StandIn, value: str
) -> None:
    directory = system.wrappers.directory
    for argv in (
        ("host-agent-systemd", "status", value),
        ("host-agent-systemd", "start", value),
        ("host-agent-systemd", "stop", f"{value}.service"),
        ("host-agent-pct", "status", value),
        ("host-agent-pct", "destroy", value),
    ):
        done = run("sudo", "-n", str(directory / argv[0]), *argv[1:], user=system.user, check=False)
        assert done.returncode == 64, (argv, done.stdout, done.stderr)
        assert "refused" in done.stderr
    assert units.calls() == [] and containers.calls() == []


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(("host-agent-systemd",), id="systemd-nothing"),
        pytest.param(("host-agent-systemd", "start"), id="systemd-no-unit"),
        pytest.param(("host-agent-systemd", "start", "a.service", "b.service"), id="two-units"),
        pytest.param(("host-agent-systemd", "enable", "app.service"), id="enable"),
        pytest.param(("host-agent-systemd", "start", "getty@.service"), id="template"),
        pytest.param(("host-agent-systemd", "start", "a..b.service"), id="dotdot"),
        pytest.param(("host-agent-systemd", "start", "app"), id="no-type"),
        pytest.param(("host-agent-systemd", "start", "sda.device"), id="device"),
        pytest.param(("host-agent-systemd", "start", r"a\x2db.mount"), id="backslash"),
        pytest.param(("host-agent-systemd", "start", "--", "app.service"), id="dashdash"),
        pytest.param(("host-agent-pct", "start"), id="pct-no-vmid"),
        pytest.param(("host-agent-pct", "start", "101", "102"), id="pct-two"),
        pytest.param(("host-agent-pct", "enter", "101"), id="pct-enter"),
        pytest.param(("host-agent-pct", "start", "99"), id="vmid-99"),
        pytest.param(("host-agent-pct", "start", "0101"), id="vmid-0101"),
        pytest.param(("host-agent-pct", "start", "1000000"), id="vmid-1000000"),
        pytest.param(("host-agent-pct", "start", "1e3"), id="vmid-1e3"),
    ],
)
def test_wrappers_refuse_malformed_calls(
    system: System,
    e2e_config: Config,
    units: StandIn,
    containers: StandIn,
    argv: tuple[str, ...],
) -> None:
    wrapper = str(system.wrappers.directory / argv[0])
    done = run("sudo", "-n", wrapper, *argv[1:], user=system.user, check=False)
    assert done.returncode == 64, (done.stdout, done.stderr)
    assert units.calls() == [] and containers.calls() == []


def test_wrappers_are_granted_to_the_service_account(system: System) -> None:
    listing = run("sudo", "-l", "-U", system.user).stdout
    for name in ("host-agent-systemd", "host-agent-pct"):
        assert str(system.wrappers.directory / name) in listing


def test_op_shows_a_status_as_systemctl_status_begins(
    live: RunningAgent, pki: Pki, units: StandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    def status(unit: str) -> str:
        code = main(["op", *connection(live.url, pki, "librarian-1"), "systemd", "status", unit])
        out, err = capsys.readouterr()
        assert code == EXIT_OK, err
        return out

    assert status("app.service") == (
        "● app.service - The app\n"
        "     Loaded: loaded (enabled)\n"
        "     Active: active (running) since Mon 2024-01-15 09:00:00 UTC\n"
        "   Main PID: 4242\n"
    )
    assert status("idle.service") == (
        "○ idle.service - Idle\n     Loaded: loaded (disabled)\n     Active: inactive (dead)\n"
    )
