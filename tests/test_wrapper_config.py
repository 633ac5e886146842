"""The wrappers' allowlist file is rendered from the agent config, so both layers agree."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from host_agent import wrapper_config
from host_agent.cli import main
from host_agent.config import load_config

CONFIG = """
[server]
cert = "server.crt"
key = "server.key"
client_ca = "ca.crt"

[audit]
log_path = "audit.jsonl"

[[agents]]
cn_pattern = "deployer-*"
agent_type = "deployer"
unix_user = "deploy"
allowed_operations = ["git-status", "git-pull"]

[[agents]]
cn_pattern = "reviewer-*"
agent_type = "reviewer"
unix_user = "review"
requires_approval_for = ["git-*"]

[[agents]]
cn_pattern = "librarian-*"
agent_type = "librarian"
unix_user = "librarian"
allowed_operations = ["zfs-*"]

[git]
allowed_repos = ["/srv/app", "/srv/site"]

[exec]
enabled = true
allowed_commands = ["/usr/bin/uptime", "/usr/bin/du"]
playbook_dir = "/etc/host-agent/playbooks"
allowed_playbooks = ["restart.yml"]

[exec.argument_patterns]
"/usr/bin/du" = ["-s", "/srv/[a-z]+"]

[systemd]
allowed_units = ["nginx.service", "app-*.service"]

[zfs]
allowed_datasets = ["tank/media", "tank/media/*"]
protected_paths = ["/srv/state"]

[wrappers.zfs_destroy]
enabled = true
allowed_uids = [4242, 4243]

[approval]
local_socket = "/run/host-agent/approve.sock"
approvers_group = "host-agent-approvers"

[runner]
service_user = "host-agent"

[binaries]
systemctl = "/bin/systemctl"
python = "/opt/host-agent/venv/bin/python"
"""


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(CONFIG)
    return path


def test_render_lists_every_allowlist_and_binary(config_path: Path) -> None:
    lines = wrapper_config.render(load_config(config_path)).splitlines()
    settings = [line for line in lines if not line.startswith("#")]
    assert settings == [
        "zfs_bin=/usr/sbin/zfs",
        "systemctl_bin=/bin/systemctl",
        "pct_bin=/usr/sbin/pct",
        "git_bin=/usr/bin/git",
        "ansible_playbook_bin=/usr/bin/ansible-playbook",
        "python_bin=/opt/host-agent/venv/bin/python",
        "sudoers_file=/etc/sudoers",
        "timeout_seconds=60",
        "git_repo=/srv/app",
        "git_repo=/srv/site",
        # only profiles granted some git operation; the librarian is not
        "git_user=deploy",
        "git_user=review",
        "exec_enabled=true",
        "exec_command=/usr/bin/uptime",
        "exec_command=/usr/bin/du\t-s\t/srv/[a-z]+",
        "exec_playbook_dir=/etc/host-agent/playbooks",
        "exec_playbook=restart.yml",
        "ansible_inventory=localhost,",
        "systemd_unit=nginx.service",
        "systemd_unit=app-*.service",
        "zfs_dataset=tank/media",
        "zfs_dataset=tank/media/*",
        # the audit log's and the approval store's directories, and protected_paths
        f"zfs_protected_path={config_path.parent}",
        "zfs_protected_path=/var/lib/host-agent",
        "zfs_protected_path=/srv/state",
        "zfs_run_as_caller=no",
        "zfs_destroy_enabled=yes",
        "zfs_destroy_uid=4242",
        "zfs_destroy_uid=4243",
        "approvers_group=host-agent-approvers",
        "local_socket=/run/host-agent/approve.sock",
        "service_user=host-agent",
    ]


def test_cli_writes_the_file_atomically_with_mode_0644(
    config_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "wrappers.conf"
    output.write_text("stale\n")
    output.chmod(0o666)
    assert main(["wrappers-config", "--config", str(config_path), "--output", str(output)]) == 0
    assert stat.S_IMODE(output.stat().st_mode) == 0o644
    assert output.read_text() == wrapper_config.render(load_config(config_path))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".wrappers.conf")] == []
    assert f"wrote {output}" in capsys.readouterr().out


def test_cli_prints_to_stdout_without_output(
    config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["wrappers-config", "--config", str(config_path)]) == 0
    assert "git_user=deploy\n" in capsys.readouterr().out


def test_cli_reports_an_unwritable_destination(
    config_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-such-dir" / "wrappers.conf"
    assert main(["wrappers-config", "--config", str(config_path), "--output", str(missing)]) == 1
    assert "cannot write" in capsys.readouterr().err
