"""Invariant 14 as root, against the real parts: a live agent over mTLS, real sudo as
the unprivileged service account calling the wrappers directly, the systemctl
stand-in recording its exact argv, and a real zfs-fuse pool whose dataset is mounted
where the test says the host's protected directory is."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from host_agent.config import Config
from tests.served import Served
from tests.support import Pki, RunningAgent, audit_records, client, config_text, running_agent
from tests.system import REPO, Pool, StandIn, System, install_standin, run

pytestmark = pytest.mark.root

RESOLVE = ["show", "-p", "Id", "--value", "--"]
ROOT_EQUIVALENT = [
    "debug-shell.service",
    "modprobe@foo.service",
    "reboot.target",
    "kexec.target",
    "user@0.service",
    "getty@tty1.service",
    "autovt@tty2.service",
    "rescue.target",
]
PROFILES = """
[[agents]]
cn_pattern = "librarian*"
agent_type = "ops"
unix_user = "ops"
autonomy = "full"
allow_recursive = true
allowed_operations = ["systemd-*", "zfs-*", "pct-start", "pct-stop"]
"""
EVERY_UNIT = '[systemd]\nallowed_units = ["*"]\n[zfs]\nallowed_datasets = ["*"]\n'
SSH_DENIED = '\n[[rules]]\noperation = "systemd-start"\npattern = "ssh\\\\.service"\ndeny = true\n'


@pytest.fixture(scope="module")
def systemctl(system: System) -> StandIn:
    return StandIn(install_standin(system, REPO / "tests" / "standins" / "systemctl"))


@pytest.fixture
def units(systemctl: StandIn) -> StandIn:
    # Every unit exists, so anything that got through would start.
    names = [*ROOT_EQUIVALENT, "ssh.service", "app.service"]
    systemctl.reset({"units": {name: {"ActiveState": "inactive"} for name in names}})
    return systemctl


def _agent_config(
    system: System, pki: Pki, tmp_path: Path, systemctl: StandIn, targets: str, extra: str = ""
) -> Config:
    return system.agent_config(
        pki,
        tmp_path,
        profiles=PROFILES,
        targets=targets,
        extra=f'[binaries]\nsystemctl = "{systemctl.path}"\n{extra}',
    )


def _post(agent: RunningAgent, pki: Pki, body: dict[str, Any]) -> Any:
    with client(agent, pki, "librarian-1") as http:
        return http.post("/host/op", json=body)


def _sudo(system: System, wrapper: str, *argv: str) -> Any:
    path = str(system.wrappers.directory / wrapper)
    return run("sudo", "-n", path, *argv, user=system.user, check=False)


def _started(units: StandIn) -> list[str]:
    return [n for n, u in units.state()["units"].items() if u["ActiveState"] != "inactive"]


# --- systemd -------------------------------------------------------------------------


@pytest.mark.parametrize("unit", ROOT_EQUIVALENT)
def test_root_equivalent_units_are_refused_by_the_agent(
    system: System, pki: Pki, tmp_path: Path, systemctl: StandIn, units: StandIn, unit: str
) -> None:
    config = _agent_config(system, pki, tmp_path, systemctl, EVERY_UNIT)
    with running_agent(config) as agent:
        reply = _post(agent, pki, {"kind": "systemd", "resource": unit, "args": ["start"]})
    assert reply.status_code == 403, reply.text
    assert reply.json()["error"]["code"] == "root_equivalent_unit"
    assert reply.json()["error"]["field"] == "resource"
    [record] = audit_records(config.audit.log_path)
    assert (record["event"], record["code"], record["resource"]) == (
        "rejected",
        "root_equivalent_unit",
        unit,
    )
    assert units.calls() == []
    assert _started(units) == []


@pytest.mark.parametrize("command", ["start", "stop", "restart", "resolve"])
@pytest.mark.parametrize("unit", ROOT_EQUIVALENT)
def test_root_equivalent_units_are_refused_by_the_wrapper(
    system: System,
    pki: Pki,
    tmp_path: Path,
    systemctl: StandIn,
    units: StandIn,
    unit: str,
    command: str,
) -> None:
    _agent_config(system, pki, tmp_path, systemctl, EVERY_UNIT)  # renders systemd_unit=*
    done = _sudo(system, "host-agent-systemd", command, unit)
    assert done.returncode == 77, done.stderr
    assert "root-equivalent" in done.stderr
    assert units.calls() == []


def test_a_deny_rule_for_a_unit_stops_its_alias(
    system: System, pki: Pki, tmp_path: Path, systemctl: StandIn, units: StandIn
) -> None:
    config = _agent_config(system, pki, tmp_path, systemctl, EVERY_UNIT, SSH_DENIED)
    with running_agent(config) as agent:
        reply = _post(
            agent, pki, {"kind": "systemd", "resource": "sshd.service", "args": ["start"]}
        )
    assert reply.status_code == 403, reply.text
    assert reply.json()["error"]["code"] == "rule_denied"
    # Only the agent's id look-up, through the wrapper, reached systemctl.
    assert units.calls() == [[*RESOLVE, "sshd.service"]]
    assert _started(units) == []
    records = audit_records(config.audit.log_path)
    resolved = [r for r in records if r["event"] == "resolve" and r["outcome"] == "ok"]
    assert [(r["resource"], r["canonical_resource"]) for r in resolved] == [
        ("sshd.service", "ssh.service")
    ]
    [decision] = [r for r in records if r["event"] == "decision"]
    assert (decision["decision"], decision["code"]) == ("deny", "rule_denied")
    assert (decision["resource"], decision["canonical_resource"]) == (
        "sshd.service",
        "ssh.service",
    )


# Any start of sshd* needs one human; ssh.service itself, two admins.
SSH_ADMINS = (
    '\n[[rules]]\noperation = "systemd-start"\npattern = "sshd"\napproval_required = true\n'
    '\n[[rules]]\noperation = "systemd-start"\npattern = "^ssh\\\\.service$"\n'
    "always_ask = true\napproval_admin_only = true\napprovals_required = 2\n"
)


def test_an_alias_keeps_every_demand_the_units_own_rule_makes_of_its_approval(
    system: System, pki: Pki, tmp_path: Path, systemctl: StandIn, units: StandIn
) -> None:
    """Both names need a human: the approval takes the stricter demands of the two,
    not the alias's one Signal approver."""
    config = _agent_config(system, pki, tmp_path, systemctl, EVERY_UNIT, SSH_ADMINS)
    with running_agent(config) as agent:
        reply = _post(
            agent, pki, {"kind": "systemd", "resource": "sshd.service", "args": ["start"]}
        )
    assert reply.status_code == 202, reply.text
    assert (reply.json()["admin_only"], reply.json()["approvals_required"]) == (True, 2)
    [decision] = [r for r in audit_records(config.audit.log_path) if r["event"] == "decision"]
    assert (decision["decision"], decision["admin_only"]) == ("approval_required", True)
    assert _started(units) == []


@pytest.mark.parametrize(
    ("targets", "unit", "code"),
    [
        pytest.param(
            '[systemd]\nallowed_units = ["sshd.service"]\n',
            "sshd.service",
            "unit_not_allowed",
            id="alias-allowed-unit-not",
        ),
        pytest.param(EVERY_UNIT, "console-shell.service", "root_equivalent_unit", id="to-shell"),
    ],
)
def test_both_layers_check_the_canonical_id(
    system: System,
    pki: Pki,
    tmp_path: Path,
    systemctl: StandIn,
    units: StandIn,
    targets: str,
    unit: str,
    code: str,
) -> None:
    config = _agent_config(system, pki, tmp_path, systemctl, targets)
    with running_agent(config) as agent:
        reply = _post(agent, pki, {"kind": "systemd", "resource": unit, "args": ["start"]})
    assert reply.status_code == 403, reply.text
    assert (reply.json()["error"]["code"], reply.json()["error"]["field"]) == (code, "resource")
    assert units.calls() == [[*RESOLVE, unit]]
    [refusal] = [r for r in audit_records(config.audit.log_path) if r.get("refused")]
    assert refusal["refused"] == code

    units.reset(units.state())
    done = _sudo(system, "host-agent-systemd", "start", unit)
    assert done.returncode == 77, done.stderr
    assert "canonical id" in done.stderr
    assert units.calls() == [[*RESOLVE, unit]]
    assert _started(units) == []


def test_units_outside_the_allowlist_are_refused_by_both_layers(
    system: System, pki: Pki, tmp_path: Path, systemctl: StandIn, units: StandIn
) -> None:
    config = _agent_config(
        system, pki, tmp_path, systemctl, '[systemd]\nallowed_units = ["web-*.service"]\n'
    )
    with running_agent(config) as agent:
        reply = _post(agent, pki, {"kind": "systemd", "resource": "app.service", "args": ["stop"]})
    assert reply.status_code == 403, reply.text
    assert reply.json()["error"]["code"] == "unit_not_allowed"
    done = _sudo(system, "host-agent-systemd", "stop", "app.service")
    assert done.returncode == 77, done.stderr
    assert units.calls() == []


# --- pct -----------------------------------------------------------------------------


def test_containers_outside_the_allowlist_are_refused_by_both_layers(
    system: System, pki: Pki, tmp_path: Path
) -> None:
    pct = StandIn(install_standin(system, REPO / "tests" / "standins" / "pct"))
    pct.reset({"containers": {"101": {"status": "running"}, "102": {"status": "running"}}})
    config = system.agent_config(
        pki,
        tmp_path,
        profiles=PROFILES,
        targets='[pct]\nallowed_vmids = ["101"]\n',
        extra=f'[binaries]\npct = "{pct.path}"\n',
    )
    with running_agent(config) as agent:
        reply = _post(agent, pki, {"kind": "pct", "resource": "102", "args": ["stop"]})
        assert reply.status_code == 403, reply.text
        assert (reply.json()["error"]["code"], reply.json()["error"]["field"]) == (
            "vmid_not_allowed",
            "resource",
        )
        done = _sudo(system, "host-agent-pct", "stop", "102")
        assert done.returncode == 77, done.stderr
        assert pct.calls() == []
        allowed = _post(agent, pki, {"kind": "pct", "resource": "101", "args": ["stop"]})
        assert allowed.status_code == 200, allowed.text
    assert pct.calls() == [["stop", "101"]]
    assert pct.state()["containers"]["102"]["status"] == "running"


# --- zfs -----------------------------------------------------------------------------


class Host:
    """`<pool>/host` mounted at a directory, `<pool>/host/root` below it through the
    inherited mountpoint; its `etc` stands for the host's /etc (the test's protected
    path), and `<pool>/other` is outside the allowlist."""

    def __init__(self, pool: Pool, mountpoint: Path) -> None:
        self.pool = pool.name
        self.mountpoint = mountpoint
        tag = secrets.token_hex(3)
        self.host = f"{pool.name}/host-{tag}"
        self.root = f"{self.host}/root"
        self.other = f"{pool.name}/other-{tag}"

    @property
    def protected_path(self) -> Path:
        return self.mountpoint / "root" / "etc"

    def targets(self) -> str:
        return (
            f'[zfs]\nallowed_datasets = ["{self.host}", "{self.host}/*"]\n'
            f'protected_paths = ["{self.protected_path}"]\n'
        )


@pytest.fixture
def host(pool: Pool, tmp_path: Path) -> Iterator[Host]:
    mountpoint = tmp_path / "host"
    made = Host(pool, mountpoint)
    run("zfs", "create", "-o", f"mountpoint={mountpoint}", made.host)
    run("zfs", "create", made.root)
    run("zfs", "create", made.other)
    made.protected_path.mkdir()
    for name in (made.host, made.root, made.other):
        run("zfs", "snapshot", f"{name}@before")
    try:
        yield made
    finally:
        for name in (made.host, made.other):
            # zfs-fuse may call a file system just unmounted busy for a moment.
            deadline = time.monotonic() + 10
            while run("zfs", "destroy", "-r", name, check=False).returncode:
                if name not in pool.datasets() or time.monotonic() > deadline:
                    break
                time.sleep(0.2)


def _assert_held_through_inherited_mountpoint(host: Host) -> None:
    """The scenario is the one claimed: the protected directory's file system is
    `<pool>/host/root`, mounted where its parent's mountpoint puts it."""
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    assert any(line.split()[:2] == [host.root, f"{host.mountpoint}/root"] for line in mounts)
    inherited = run("zfs", "get", "-H", "-o", "source", "mountpoint", host.root).stdout
    assert inherited.startswith(f"inherited from {host.host}")


def _refused_calls(host: Host) -> list[tuple[list[str], str]]:
    """(args for /host/op with the resource first, the code the agent answers)."""
    return [
        ([f"{host.root}@before", "rollback"], "protected_dataset"),
        ([f"{host.root}@before", "rollback", "recursive"], "protected_dataset"),
        ([f"{host.root}@before", "destroy"], "protected_dataset"),
        ([host.root, "destroy", "recursive"], "protected_dataset"),
        ([host.host, "destroy", "recursive"], "protected_dataset"),
        ([f"{host.host}@before", "destroy", "recursive"], "protected_dataset"),
        ([host.other, "snapshot", "x"], "dataset_not_allowed"),
        ([f"{host.other}@before", "rollback"], "dataset_not_allowed"),
        ([host.other, "destroy"], "dataset_not_allowed"),
    ]


def test_protected_and_unlisted_datasets_are_refused_by_the_agent(
    system: System, pool: Pool, host: Host, pki: Pki, tmp_path: Path
) -> None:
    _assert_held_through_inherited_mountpoint(host)
    before = pool.datasets()
    config = system.agent_config(pki, tmp_path, profiles=PROFILES, targets=host.targets())
    with running_agent(config) as agent:
        for (resource, *args), code in _refused_calls(host):
            body = {"kind": "zfs", "resource": resource, "args": args}
            reply = _post(agent, pki, body)
            assert reply.status_code == 403, (body, reply.text)
            assert reply.json()["error"]["code"] == code, body
        # A snapshot of it is allowed (the allowlist permits it): only a rollback rewinds.
        made = _post(agent, pki, {"kind": "zfs", "resource": host.root, "args": ["snapshot", "s"]})
        assert made.status_code == 200, made.text
    assert set(pool.datasets()) == {*before, f"{host.root}@s"}
    records = audit_records(config.audit.log_path)
    assert [r["code"] for r in records if r["event"] == "rejected"] == [
        code for _, code in _refused_calls(host)
    ]


def test_protected_and_unlisted_datasets_are_refused_by_the_wrapper(
    system: System, pool: Pool, host: Host, pki: Pki, tmp_path: Path
) -> None:
    system.agent_config(pki, tmp_path, profiles=PROFILES, targets=host.targets())
    before = set(pool.datasets())
    for (resource, command, *rest), _ in _refused_calls(host):
        argv = [command, f"{resource}@{rest[0]}"] if command == "snapshot" else [command, resource]
        if command != "snapshot":
            argv += rest
        done = _sudo(system, "host-agent-zfs", *argv)
        assert done.returncode == 77, (argv, done.stderr)
        assert "refused" in done.stderr
    assert set(pool.datasets()) == before


def test_the_agent_reads_the_mount_table_again_on_reload(
    served: Served, pool: Pool, tmp_path: Path
) -> None:
    directory = tmp_path / "later"
    directory.mkdir()
    dataset = f"{pool.name}/later-{secrets.token_hex(3)}"
    served.config.write_text(
        config_text(
            served.pki,
            tmp_path,
            targets=f'[zfs]\nallowed_datasets = ["*"]\nprotected_paths = ["{directory}"]\n',
        )
    )
    served.sighup("reloaded")
    rollback = {"kind": "zfs", "resource": f"{dataset}@s", "args": ["rollback"], "dry_run": True}
    with served.client("admin-1") as http:
        assert http.post("/host/op", json=rollback).status_code == 200
    run("zfs", "create", "-o", f"mountpoint={directory}", dataset)
    try:
        served.sighup("reloaded")
        with served.client("admin-1") as http:
            reply = http.post("/host/op", json=rollback)
        assert reply.status_code == 403, reply.text
        assert reply.json()["error"]["code"] == "protected_dataset"
    finally:
        deadline = time.monotonic() + 10
        while run("zfs", "destroy", dataset, check=False).returncode:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
