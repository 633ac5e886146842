"""The adapters' sections ([git], [exec], [systemd], [zfs], [pct], [binaries]) and the
warnings about targets the predecessor reached and this agent does not."""

from __future__ import annotations

import fnmatch
import pwd
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from host_agent.config.agents import AgentProfile
from host_agent.config.fields import (
    PLAIN_TEXT,
    Reader,
    Table,
    check_absolute_path,
    check_absolute_paths,
    check_regex,
)
from host_agent.config.wrappers import WrappersConfig
from host_agent.operations import OPERATION_NAMES


@dataclass(frozen=True)
class GitConfig:
    allowed_repos: tuple[Path, ...]


@dataclass(frozen=True)
class ExecConfig:
    enabled: bool
    allowed_commands: tuple[Path, ...]
    # command -> one full-match pattern per positional argument; absent = no arguments.
    argument_patterns: Mapping[Path, tuple[str, ...]]
    playbook_dir: Path | None
    allowed_playbooks: tuple[str, ...]
    ansible_inventory: str
    # The predecessor's Ansible path always asked a human (invariant 13).
    playbooks_require_approval: bool = True


@dataclass(frozen=True)
class SystemdConfig:
    """Units start/stop/restart may act on (fnmatch patterns); None: the key is absent,
    so none (the predecessor allowed any unit; check-config says so)."""

    allowed_units: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ZfsConfig:
    """Datasets snapshot/destroy/rollback may act on (fnmatch patterns over the dataset
    name; None: the key is absent, so none), and directories, beyond the built-in ones,
    whose datasets are never destroyed or rolled back."""

    allowed_datasets: tuple[str, ...] | None = None
    protected_paths: tuple[Path, ...] = ()
    # Run zfs as the caller profile's unix_user, as the predecessor did, so that
    # `zfs allow` delegation limits each caller (the wrapper drops to it with setpriv).
    run_as_caller: bool = False


@dataclass(frozen=True)
class PctConfig:
    """Containers start/stop/destroy may act on (fnmatch patterns over VMIDs); None:
    the key is absent, so every one, as the predecessor did (not root-equivalent:
    a container's privileges and host mounts are in its config, out of reach)."""

    allowed_vmids: tuple[str, ...] | None = None
    # `pct create`: templates (fnmatch over the ostemplate; none: create is refused),
    # the settings a caller may give (names from adapters.pct_create.CREATE_FLAGS),
    # and whether a human must approve each create (the adapter forces it).
    allowed_ostemplates: tuple[str, ...] = ()
    allowed_create_flags: tuple[str, ...] = ()
    create_requires_approval: bool = True


@dataclass(frozen=True)
class BinariesConfig:
    """Where the wrappers find the real tools; rendered into the wrappers' own config."""

    zfs: Path
    systemctl: Path
    pct: Path
    git: Path
    ansible_playbook: Path
    # The Python that runs host-agent (python-pam installed): the PAM wrapper's interpreter.
    python: Path


def read_git(t: Table) -> GitConfig:
    repos = t.get("allowed_repos", list, [], item=str, check=check_absolute_paths)
    config = GitConfig(allowed_repos=tuple(Path(r) for r in repos))
    t.finish()
    return config


def read_exec(t: Table) -> ExecConfig:
    commands = tuple(t.get("allowed_commands", list, [], item=str, check=check_absolute_paths))
    if t.optional("ansible_job_queue", str) is not None:
        t.reader.warn(
            f"{t.key('ansible_job_queue')}: job files are not written; playbooks run directly"
        )
    patterns_table = t.table("argument_patterns")
    patterns: dict[Path, tuple[str, ...]] = {}
    for command in sorted(patterns_table.data):
        if command not in commands:
            t.reader.problem(
                patterns_table.key(command), "names a command that is not in allowed_commands"
            )
        patterns[Path(command)] = tuple(
            patterns_table.get(command, list, [], item=str, check=_check_argument_patterns)
        )
    config = ExecConfig(
        enabled=t.get("enabled", bool, False),
        allowed_commands=tuple(Path(c) for c in commands),
        argument_patterns=MappingProxyType(patterns),
        playbook_dir=t.optional_path("playbook_dir"),
        allowed_playbooks=tuple(
            t.get("allowed_playbooks", list, [], item=str, check=_check_playbook_names)
        ),
        ansible_inventory=t.get("ansible_inventory", str, "localhost,", check=_check_inventory),
        playbooks_require_approval=t.get("playbooks_require_approval", bool, True),
    )
    if config.allowed_playbooks and config.playbook_dir is None:
        t.reader.problem(t.key("allowed_playbooks"), "needs exec.playbook_dir")
    t.finish()
    return config


def _check_argument_patterns(values: list[str]) -> str | None:
    # The wrapper re-checks with bash's POSIX ERE, so allow only the syntax
    # both engines read the same way: no escapes of letters/digits, no (?...).
    for value in values:
        if not PLAIN_TEXT.fullmatch(value):
            return f"pattern {value!r} must be printable ASCII without spaces"
        if re.search(r"\\[A-Za-z0-9]|\(\?", value):
            return f"pattern {value!r} uses syntax POSIX ERE lacks (\\d, \\w, (?...))"
        if "[:" in value or "[=" in value or "[." in value:
            return f"pattern {value!r} uses a POSIX class ([:digit:], ...) Python reads differently"
        if (message := check_regex(value)) is not None:
            return message
    return None


def _check_playbook_names(values: list[str]) -> str | None:
    for value in values:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.ya?ml", value):
            return f"{value!r} must be a file name ending in .yml or .yaml (no directories)"
    return None


def _check_inventory(value: str) -> str | None:
    return None if PLAIN_TEXT.fullmatch(value) else "must be printable ASCII without spaces"


def read_binaries(t: Table) -> BinariesConfig:
    def binary(name: str, default: str) -> Path:
        return Path(t.get(name, str, default, check=check_absolute_path))

    config = BinariesConfig(
        zfs=binary("zfs", "/usr/sbin/zfs"),
        systemctl=binary("systemctl", "/usr/bin/systemctl"),
        pct=binary("pct", "/usr/sbin/pct"),
        git=binary("git", "/usr/bin/git"),
        ansible_playbook=binary("ansible_playbook", "/usr/bin/ansible-playbook"),
        python=binary("python", sys.executable),
    )
    t.finish()
    return config


def read_systemd(t: Table) -> SystemdConfig:
    units = t.get("allowed_units", list, None, item=str, check=_check_unit_patterns)
    config = SystemdConfig(allowed_units=None if units is None else tuple(units))
    t.finish()
    return config


def read_zfs(t: Table) -> ZfsConfig:
    datasets = t.get("allowed_datasets", list, None, item=str, check=_check_dataset_patterns)
    paths = t.get("protected_paths", list, [], item=str, check=check_absolute_paths)
    config = ZfsConfig(
        allowed_datasets=None if datasets is None else tuple(datasets),
        protected_paths=tuple(Path(p) for p in paths),
        run_as_caller=t.get("run_as_caller", bool, False),
    )
    t.finish()
    return config


def read_pct(t: Table) -> PctConfig:
    vmids = t.get("allowed_vmids", list, None, item=str, check=_check_vmid_patterns)
    config = PctConfig(
        allowed_vmids=None if vmids is None else tuple(vmids),
        allowed_ostemplates=tuple(
            t.get("allowed_ostemplates", list, [], item=str, check=_check_templates)
        ),
        allowed_create_flags=tuple(
            t.get("allowed_create_flags", list, [], item=str, check=_check_create_flags)
        ),
        create_requires_approval=t.get("create_requires_approval", bool, True),
    )
    t.finish()
    return config


def _check_templates(values: list[str]) -> str | None:
    from host_agent.adapters.pct_create import TEMPLATE_GLOB

    bad = [v for v in values if not TEMPLATE_GLOB.fullmatch(v) or ".." in v or v[0] == "-"]
    return (
        f"not template patterns (A-Z a-z 0-9 . _ + / : - and * ?, no '..'): {bad}" if bad else None
    )


def _check_create_flags(values: list[str]) -> str | None:
    from host_agent.adapters.pct_create import CREATE_FLAGS, never_reason

    for value in values:
        if (reason := never_reason(value)) is not None:
            return f"{value!r} is never allowed: it {reason}"
        if value not in CREATE_FLAGS:
            return f"{value!r} is not a setting pct create takes here ({', '.join(CREATE_FLAGS)})"
    return None


# A unit or dataset pattern: the names' own characters and fnmatch's `*?[]!`.
_UNIT_PATTERN = re.compile(r"[A-Za-z0-9:_.@*?\[\]!-]+")


_DATASET_PATTERN = re.compile(r"[A-Za-z0-9:_./*?\[\]!-]+")


_VMID_PATTERN = re.compile(r"[0-9*?\[\]!-]+")


def _check_vmid_patterns(values: list[str]) -> str | None:
    bad = [v for v in values if not _VMID_PATTERN.fullmatch(v) or v.startswith("-")]
    return f"not VMID patterns: {bad}" if bad else None


def _check_unit_patterns(values: list[str]) -> str | None:
    bad = [v for v in values if not _UNIT_PATTERN.fullmatch(v)]
    return f"not unit name patterns: {bad}" if bad else None


def _check_dataset_patterns(values: list[str]) -> str | None:
    bad = [v for v in values if not _DATASET_PATTERN.fullmatch(v) or v.startswith("-")]
    return f"not dataset name patterns: {bad}" if bad else None


# Commands that hand whoever picks their arguments a root shell, root's files or a
# new root process: a shell or interpreter, a privilege tool, a command runner, a
# file owner/mode changer, an editor or pager with a shell escape.
ROOT_EQUIVALENT_COMMANDS = frozenset(
    {
        "sh", "bash", "dash", "zsh", "ksh", "csh", "tcsh", "fish", "busybox",
        "python", "python3", "perl", "ruby", "node", "lua", "php", "tclsh", "awk", "gawk",
        "mawk", "sed", "sudo", "su", "doas", "runuser", "pkexec", "env", "nohup", "xargs",
        "find", "nice", "timeout", "setsid", "chroot", "nsenter", "unshare", "systemd-run",
        "systemctl", "chmod", "chown", "chgrp", "setfacl", "cp", "mv", "ln", "dd", "tee",
        "install", "rsync", "tar", "vi", "vim", "nano", "less", "more", "man", "crontab",
        "at", "ssh", "scp", "git", "make", "apt", "apt-get", "dpkg", "pip", "pip3",
        "insmod", "modprobe", "kexec", "mount", "useradd", "usermod", "passwd", "chpasswd",
        "visudo",
    }
)  # fmt: skip


# A pattern using any of these matches more than one fixed string.
_REGEX_SYNTAX = re.compile(r"[.^$*+?{}\[\]\\|()]")


def accounts_granted(agents: tuple[AgentProfile, ...], kind: str) -> list[str]:
    """The unix_user of every profile granted some operation of `kind`: the accounts a
    wrapper that acts as the caller (git; zfs with run_as_caller) may drop to."""
    names = [name for name in OPERATION_NAMES if name.startswith(f"{kind}-")]
    return sorted(
        {
            profile.unix_user
            for profile in agents
            for grant in (*profile.allowed_operations, *profile.requires_approval_for)
            if any(fnmatch.fnmatchcase(name, grant) for name in names)
        }
    )


def check_zfs_accounts(
    agents: tuple[AgentProfile, ...],
    zfs: ZfsConfig,
    wrappers: WrappersConfig,
    service_user: str | None,
    reader: Reader,
) -> None:
    """run_as_caller needs a real, unprivileged account per zfs profile on this host;
    a zfs-destroy grant needs the wrapper's opt-in, or every destroy is refused."""
    if zfs.run_as_caller:
        for user in accounts_granted(agents, "zfs"):
            try:
                uid = pwd.getpwnam(user).pw_uid
            except KeyError:
                reader.problem("zfs.run_as_caller", f"unix_user {user!r} does not exist here")
                continue
            if uid == 0 or user == service_user:
                reader.problem(
                    "zfs.run_as_caller",
                    f"unix_user {user!r} is root or the agent's own account: zfs would not "
                    "run as the caller",
                )
    destroys = any(
        fnmatch.fnmatchcase("zfs-destroy", grant)
        for p in agents
        for grant in (*p.allowed_operations, *p.requires_approval_for)
    )
    if destroys and not wrappers.zfs_destroy.enabled:
        reader.warn(
            "wrappers.zfs_destroy: not enabled, so the zfs wrapper refuses every destroy a "
            "profile is granted (opt-in at the OS layer, as in the predecessor): set "
            "[wrappers.zfs_destroy] enabled = true and allowed_uids"
        )


def warn_about_targets(
    agents: tuple[AgentProfile, ...],
    systemd: SystemdConfig,
    zfs: ZfsConfig,
    exec_: ExecConfig,
    reader: Reader,
) -> None:
    """Say where this agent now refuses what the predecessor ran (invariant 13), and
    where an exec allowlist hands out root."""
    granted = [(*p.allowed_operations, *p.requires_approval_for) for p in agents]

    def any_granted(*names: str) -> bool:
        return any(fnmatch.fnmatchcase(n, g) for grants in granted for g in grants for n in names)

    if systemd.allowed_units is None and any_granted(
        "systemd-start", "systemd-stop", "systemd-restart"
    ):
        reader.warn(
            "systemd.allowed_units: not set, so systemd start/stop/restart refuse every "
            "unit (the predecessor allowed any unit). List the units agents may manage, "
            'e.g. [systemd] allowed_units = ["nginx.service", "app-*.service"]'
        )
    if zfs.allowed_datasets is None and any_granted("zfs-snapshot", "zfs-destroy", "zfs-rollback"):
        reader.warn(
            "zfs.allowed_datasets: not set, so zfs snapshot/destroy/rollback refuse every "
            "dataset (the predecessor allowed any dataset). List the datasets agents may "
            'change, e.g. [zfs] allowed_datasets = ["tank/media", "tank/media/*"]'
        )
    for command in exec_.allowed_commands:
        if command.name not in ROOT_EQUIVALENT_COMMANDS:
            continue
        patterns = exec_.argument_patterns.get(command, ())
        chosen = [p for p in patterns if _REGEX_SYNTAX.search(p)]
        if chosen:
            reader.warn(
                f"exec.allowed_commands: {command} is ROOT-EQUIVALENT with argument patterns "
                f"{chosen}: it runs as root and the caller chooses those arguments (a script, "
                "a file, an option). Pin each argument to one fixed value or remove it"
            )
