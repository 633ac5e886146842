"""The wrappers' own config file, rendered from the agent's config.

The wrappers run as root and trust nothing the agent passes them except
argv, which they re-validate. Their allowlists (repositories, commands,
playbooks, accounts) and tool paths come from this root-owned file, written
by an operator or the installer from the same agent config, so both layers
agree by construction. One `key=value` per line; list keys repeat.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from host_agent.adapters import protected_paths
from host_agent.config import Config
from host_agent.config.adapters import accounts_granted
from host_agent.root_equivalent import PROTECTED_PATHS

DEFAULT_PATH = Path("/etc/host-agent/wrappers.conf")


def render(config: Config) -> str:
    lines = [
        f"# host-agent wrapper configuration, rendered from {config.source}.",
        "# Must be owned by root and not group/world-writable; wrappers refuse it otherwise.",
        f"zfs_bin={config.binaries.zfs}",
        f"systemctl_bin={config.binaries.systemctl}",
        f"pct_bin={config.binaries.pct}",
        f"git_bin={config.binaries.git}",
        f"ansible_playbook_bin={config.binaries.ansible_playbook}",
        f"python_bin={config.binaries.python}",
        f"sudoers_file={config.server.sudoers_file}",
        # The wrappers enforce the runner's timeout as root (coreutils timeout).
        f"timeout_seconds={config.runner.timeout_seconds:.6f}".rstrip("0").rstrip("."),
    ]
    lines += [f"git_repo={repo}" for repo in config.git.allowed_repos]
    lines += [f"git_user={user}" for user in accounts_granted(config.agents, "git")]
    lines.append(f"exec_enabled={'true' if config.exec.enabled else 'false'}")
    for command in config.exec.allowed_commands:
        patterns = config.exec.argument_patterns.get(command, ())
        lines.append("\t".join((f"exec_command={command}", *patterns)))
    if config.exec.playbook_dir is not None:
        lines.append(f"exec_playbook_dir={config.exec.playbook_dir}")
    lines += [f"exec_playbook={name}" for name in config.exec.allowed_playbooks]
    lines.append(f"ansible_inventory={config.exec.ansible_inventory}")
    lines += target_lines(config)
    lines += zfs_lines(config)
    if config.approval.approvers_group is not None:
        lines.append(f"approvers_group={config.approval.approvers_group}")
    if config.approval.local_socket is not None:
        # The approval helper talks only to this socket, served by this account (or root).
        lines.append(f"local_socket={config.approval.local_socket}")
    if config.runner.service_user is not None:
        lines.append(f"service_user={config.runner.service_user}")
    return "\n".join(lines) + "\n"


def zfs_lines(config: Config) -> list[str]:
    """Whether zfs runs as the caller (and as whom it may), and the destroy opt-in."""
    destroy = config.wrappers.zfs_destroy
    lines = [f"zfs_run_as_caller={'yes' if config.zfs.run_as_caller else 'no'}"]
    if config.zfs.run_as_caller:
        lines += [f"zfs_user={user}" for user in accounts_granted(config.agents, "zfs")]
    lines.append(f"zfs_destroy_enabled={'yes' if destroy.enabled else 'no'}")
    lines += [f"zfs_destroy_uid={uid}" for uid in destroy.allowed_uids]
    return lines


def target_lines(config: Config) -> list[str]:
    """The systemd, zfs and pct allowlists, and the directories (beyond the wrapper's
    built-in ones) whose datasets the zfs wrapper never destroys or rolls back."""
    lines = [f"systemd_unit={unit}" for unit in config.systemd.allowed_units or ()]
    lines += [f"zfs_dataset={dataset}" for dataset in config.zfs.allowed_datasets or ()]
    if config.pct.allowed_vmids is not None:
        # Any pct_vmid= line limits the wrapper; an empty one (an empty list) allows none.
        lines += [f"pct_vmid={vmid}" for vmid in config.pct.allowed_vmids or ("",)]
    lines += [f"pct_ostemplate={pattern}" for pattern in config.pct.allowed_ostemplates]
    lines += [f"pct_create_flag={name}" for name in config.pct.allowed_create_flags]
    lines += [
        f"zfs_protected_path={path}"
        for path in protected_paths(config)
        if path not in PROTECTED_PATHS
    ]
    return lines


def write(config: Config, path: Path) -> None:
    """Replace `path` atomically with mode 0644, so no wrapper reads half a file."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(render(config))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
