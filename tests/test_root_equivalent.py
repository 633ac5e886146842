"""Invariant 14 without root: the built-in refusals, the allowlists, the mount table
reading, what check-config and policy explain say. The attacks against the real
parts (sudo, wrappers, zfs-fuse, a live agent) are in test_e2e_root_equivalent.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from host_agent import wrapper_config
from host_agent.adapters.systemd import SystemdAdapter
from host_agent.adapters.zfs import ZfsAdapter
from host_agent.cli import main
from host_agent.config import SystemdConfig, ZfsConfig, load_config
from host_agent.errors import ConfigError, TargetRefused
from host_agent.request import HostOpRequest
from host_agent.root_equivalent import (
    DENIED_UNITS,
    PROTECTED_PATHS,
    parse_mounts,
    protected_datasets,
    read_protected_datasets,
)
from host_agent.runner import RunResult
from tests.system import REPO
from tests.test_policy import EXPLAIN_CONFIG

ROOT_EQUIVALENT_UNITS = [
    "debug-shell.service",
    "modprobe@foo.service",
    "reboot.target",
    "kexec.target",
    "rescue.target",
    "emergency.service",
    "user@0.service",
    "getty@tty1.service",
    "serial-getty@ttyS0.service",
    "autovt@tty2.service",
    "console-getty.service",
    "container-getty@1.service",
    "poweroff.target",
    "ctrl-alt-del.target",
    "sysinit.target",
    "initrd-switch-root.target",
    "systemd-journald.service",
]


def _wrapper_words(name: str, variable: str) -> list[str]:
    """The words of a bash array `variable=( ... )` in wrappers/`name`."""
    text = (REPO / "wrappers" / name).read_text()
    match = re.search(rf"readonly {variable}=\(([^)]*)\)", text)
    assert match is not None
    return match[1].split()


def test_the_wrappers_keep_the_agents_built_in_lists() -> None:
    assert _wrapper_words("host-agent-systemd", "DENIED_UNITS") == list(DENIED_UNITS)
    assert _wrapper_words("host-agent-zfs", "PROTECTED_PATHS") == list(PROTECTED_PATHS)


@pytest.mark.parametrize("command", ["start", "stop", "restart"])
@pytest.mark.parametrize("unit", ROOT_EQUIVALENT_UNITS)
def test_root_equivalent_units_are_refused_whatever_the_allowlist(unit: str, command: str) -> None:
    adapter = SystemdAdapter(SystemdConfig(allowed_units=("*", unit)))
    with pytest.raises(TargetRefused) as refused:
        adapter.parse(HostOpRequest("systemd", unit, (command,)), "ops")
    assert (refused.value.status, refused.value.code) == (403, "root_equivalent_unit")
    assert refused.value.field == "resource"


def test_status_of_a_denied_unit_is_still_a_read() -> None:
    adapter = SystemdAdapter(SystemdConfig(allowed_units=None))
    operation = adapter.parse(HostOpRequest("systemd", "debug-shell.service", ("status",)), "o")
    assert operation.wrapper_argv == ("status", "debug-shell.service")


@pytest.mark.parametrize(
    ("allowed", "unit"),
    [
        pytest.param(None, "nginx.service", id="key-absent"),
        pytest.param((), "nginx.service", id="empty"),
        pytest.param(("app-*.service",), "nginx.service", id="outside-pattern"),
    ],
)
def test_units_outside_the_allowlist_are_refused(
    allowed: tuple[str, ...] | None, unit: str
) -> None:
    adapter = SystemdAdapter(SystemdConfig(allowed_units=allowed))
    with pytest.raises(TargetRefused) as refused:
        adapter.parse(HostOpRequest("systemd", unit, ("restart",)), "ops")
    assert refused.value.code == "unit_not_allowed"


def test_a_resolution_to_a_denied_canonical_id_is_refused() -> None:
    adapter = SystemdAdapter(SystemdConfig(allowed_units=("*",)))
    operation = adapter.parse(HostOpRequest("systemd", "console-shell.service", ("start",)), "o")
    resolution = adapter.resolution(operation)
    assert resolution is not None
    assert resolution.wrapper_argv == ("resolve", "console-shell.service")
    result = RunResult(
        argv=(),
        exit_code=0,
        stdout="debug-shell.service\n",
        stderr="",
        truncated=False,
        duration_seconds=0.01,
    )
    with pytest.raises(TargetRefused) as refused:
        adapter.resolved(operation, result)
    assert refused.value.code == "root_equivalent_unit"
    assert "console-shell.service (canonical id debug-shell.service)" in refused.value.message


# --- zfs ----------------------------------------------------------------------------

MOUNTS = """\
rpool/ROOT/pve-1 / zfs rw,relatime,xattr,noacl 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
rpool /rpool zfs rw,noatime,xattr,noacl 0 0
rpool/data /var/lib/vz zfs rw 0 0
tmpfs /run tmpfs rw 0 0
/dev/sda1 /boot ext4 rw 0 0
rpool/logs /var/log/host\\040agent fuse.zfs rw 0 0
"""


def test_protected_datasets_are_the_file_systems_holding_the_paths() -> None:
    found = protected_datasets(
        ["/", "/etc", "/var", "/boot", "/var/log/host agent"], parse_mounts(MOUNTS)
    )
    # /boot is ext4 here, /var/lib/vz (under /var) is storage the agent manages.
    assert found == {"rpool/ROOT/pve-1", "rpool/logs"}


def test_the_last_mount_on_a_mount_point_holds_it() -> None:
    mounts = parse_mounts("tank/old /srv zfs rw 0 0\n/dev/sdb1 /srv ext4 rw 0 0\n")
    assert protected_datasets(["/srv/x"], mounts) == frozenset()


@pytest.mark.parametrize(
    ("resource", "args"),
    [
        pytest.param("rpool/ROOT/pve-1@before", ("rollback",), id="rollback-root"),
        pytest.param("rpool/ROOT/pve-1@before", ("destroy",), id="destroy-root-snapshot"),
        pytest.param("rpool/ROOT/pve-1", ("destroy",), id="destroy-root"),
        pytest.param("rpool/ROOT", ("destroy", "recursive"), id="destroy-ancestor"),
        pytest.param("rpool/ROOT@daily", ("destroy", "recursive"), id="destroy-ancestor-snaps"),
        pytest.param("rpool/logs@x", ("rollback", "recursive"), id="rollback-log"),
    ],
)
def test_protected_datasets_are_never_destroyed_or_rolled_back(
    resource: str, args: tuple[str, ...]
) -> None:
    adapter = ZfsAdapter(
        ZfsConfig(allowed_datasets=("*",), protected_paths=()),
        frozenset({"rpool/ROOT/pve-1", "rpool/logs"}),
    )
    with pytest.raises(TargetRefused) as refused:
        adapter.parse(HostOpRequest("zfs", resource, args), "ops")
    assert (refused.value.status, refused.value.code) == (403, "protected_dataset")


def test_a_protected_dataset_may_be_snapshot_when_allowed() -> None:
    adapter = ZfsAdapter(
        ZfsConfig(allowed_datasets=("rpool/ROOT/*",), protected_paths=()),
        frozenset({"rpool/ROOT/pve-1"}),
    )
    operation = adapter.parse(HostOpRequest("zfs", "rpool/ROOT/pve-1", ("snapshot", "s")), "o")
    assert operation.wrapper_argv == ("snapshot", "rpool/ROOT/pve-1@s")


@pytest.mark.parametrize("args", [("snapshot", "s"), ("destroy",), ("rollback",)])
def test_datasets_outside_the_allowlist_are_refused(args: tuple[str, ...]) -> None:
    adapter = ZfsAdapter(
        ZfsConfig(allowed_datasets=("tank/media", "tank/media/*"), protected_paths=()),
        frozenset(),
    )
    resource = "tank/other" if args[0] != "rollback" else "tank/other@s"
    with pytest.raises(TargetRefused) as refused:
        adapter.parse(HostOpRequest("zfs", resource, args), "ops")
    assert refused.value.code == "dataset_not_allowed"
    # Reads stay open.
    adapter.parse(HostOpRequest("zfs", "tank/other", ("get", "used")), "ops")


# --- what the operator is told -------------------------------------------------------

BASE = """
rules = []

[wrappers.zfs_destroy]
enabled = true
allowed_uids = [1001]

[server]
cert = "server.crt"
key = "server.key"
client_ca = "ca.crt"

[audit]
log_path = "audit.jsonl"

[[agents]]
cn_pattern = "ops-*"
agent_type = "ops"
unix_user = "ops"
allowed_operations = ["systemd-*", "zfs-*", "exec-run"]

[approval]
enabled = false
"""


def test_check_config_says_the_allowlists_now_refuse_what_the_predecessor_ran(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(BASE)
    assert main(["check-config", str(path)]) == 0
    err = capsys.readouterr().err
    assert "systemd.allowed_units: not set, so systemd start/stop/restart refuse every" in err
    assert "zfs.allowed_datasets: not set, so zfs snapshot/destroy/rollback refuse every" in err
    path.write_text(BASE + '[systemd]\nallowed_units = []\n[zfs]\nallowed_datasets = ["t/*"]\n')
    assert load_config(path).warnings == ()


def test_check_config_calls_a_root_shell_in_exec_root_equivalent(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        BASE
        + "[systemd]\nallowed_units = []\n[zfs]\nallowed_datasets = []\n"
        + '[exec]\nenabled = true\nallowed_commands = ["/usr/bin/python3", "/usr/bin/du"]\n'
        + '[exec.argument_patterns]\n"/usr/bin/python3" = ["[a-z/]+"]\n"/usr/bin/du" = ["-sh"]\n'
    )
    [warning] = load_config(path).warnings
    assert warning.startswith("exec.allowed_commands: /usr/bin/python3 is ROOT-EQUIVALENT")


@pytest.mark.parametrize("key", ["allowed_units", "allowed_datasets"])
def test_patterns_with_other_characters_are_config_errors(
    tmp_path: Path, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    section = "systemd" if key == "allowed_units" else "zfs"
    path = tmp_path / "agent.toml"
    path.write_text(BASE + f'[{section}]\n{key} = ["a b", "x;y"]\n')
    assert main(["check-config", str(path)]) == 2
    assert f"{section}.{key}: not " in capsys.readouterr().err


def test_policy_explain_shows_the_built_in_refusal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(EXPLAIN_CONFIG.replace('["zfs-list", "zfs-snapshot"]', '["systemd-*"]'))
    argv = ["policy", "explain", "--config", str(path), "--cn", "librarian-1", "--json"]
    status = main([*argv, "--kind", "systemd", "--resource", "debug-shell.service", "--", "start"])
    printed = json.loads(capsys.readouterr().out)
    assert status == 0
    assert printed["effect"] == "deny"
    assert printed["code"] == "root_equivalent_unit"
    assert printed["rule"] == "built-in: no configuration can allow it"


def test_no_tool_is_offered_for_changes_no_target_can_pass() -> None:
    systemd = SystemdAdapter(SystemdConfig(allowed_units=None))
    zfs = ZfsAdapter(ZfsConfig(allowed_datasets=None, protected_paths=()), frozenset())
    assert [systemd.tool_parameters(c) is None for c in systemd.commands] == [
        False,
        True,
        True,
        True,
    ]
    assert {c for c in zfs.commands if zfs.tool_parameters(c) is None} == {
        "snapshot",
        "destroy",
        "rollback",
    }


@pytest.mark.parametrize(
    ("vmids", "lines"),
    [
        pytest.param("", [], id="absent-every-vmid"),
        pytest.param("[pct]\nallowed_vmids = []\n", ["pct_vmid="], id="empty-none"),
        pytest.param('[pct]\nallowed_vmids = ["1??"]\n', ["pct_vmid=1??"], id="listed"),
    ],
)
def test_the_pct_allowlist_reaches_the_wrapper(
    tmp_path: Path, vmids: str, lines: list[str]
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(BASE + vmids)
    rendered = wrapper_config.render(load_config(path)).splitlines()
    assert [line for line in rendered if line.startswith("pct_vmid=")] == lines


def test_the_mount_table_is_read_from_the_file_and_its_absence_is_a_config_error(
    tmp_path: Path,
) -> None:
    table = tmp_path / "mounts"
    table.write_text(MOUNTS)
    assert read_protected_datasets(["/etc"], str(table)) == {"rpool/ROOT/pve-1"}
    with pytest.raises(ConfigError, match="cannot read the mount table"):
        read_protected_datasets(["/etc"], str(tmp_path / "missing"))
