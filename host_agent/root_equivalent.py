"""Targets no configuration may hand to a caller: root-equivalent or host-fatal ones.

Invariant 14 (docs/threat-model.md): a root shell unit, loading a kernel module,
rolling back or destroying the host's own root, config or log datasets are refused
by both layers whatever the config says. The wrappers keep their own copy of these
lists (wrappers/host-agent-systemd, wrappers/host-agent-zfs); a test keeps the two
equal. docs/adapters.md says why each entry is here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from host_agent.errors import ConfigError

# fnmatch patterns over unit ids, matched against the requested name and the
# canonical id systemd reports for it (an alias is the same unit).
DENIED_UNITS = (
    # A root shell or a login prompt on a console.
    "debug-shell.service",
    "emergency.service",
    "emergency.target",
    "rescue.service",
    "rescue.target",
    "getty.target",
    "getty@*.service",
    "serial-getty@*.service",
    "autovt@*.service",
    "container-getty@*.service",
    "console-getty.service",
    "user@0.service",
    "user-runtime-dir@0.service",
    # Loads the kernel module its instance names.
    "modprobe@*.service",
    # Stops, replaces or suspends the running system.
    "reboot.target",
    "kexec.target",
    "halt.target",
    "poweroff.target",
    "ctrl-alt-del.target",
    "soft-reboot.target",
    "shutdown.target",
    "final.target",
    "exit.target",
    "umount.target",
    "sleep.target",
    "suspend.target",
    "hibernate.target",
    "hybrid-sleep.target",
    "suspend-then-hibernate.target",
    "systemd-reboot.service",
    "systemd-kexec.service",
    "systemd-halt.service",
    "systemd-poweroff.service",
    "systemd-soft-reboot.service",
    "systemd-exit.service",
    "systemd-suspend*.service",
    "systemd-hibernate*.service",
    "systemd-hybrid-sleep.service",
    # Boot phases: starting one switches root, stopping one stops what requires it.
    "initrd*.target",
    "initrd-*.service",
    "systemd-switch-root.service",
    "sysinit.target",
    "basic.target",
    "local-fs.target",
    "local-fs-pre.target",
    # Formats, checks or grows block devices named by the instance.
    "systemd-makefs@*.service",
    "systemd-mkswap@*.service",
    "systemd-fsck@*.service",
    "systemd-fsck-root.service",
    "systemd-growfs@*.service",
    "systemd-growfs-root.service",
    "systemd-remount-fs.service",
    # The mounts that hold the host's own system, config and logs.
    "etc.mount",
    "usr.mount",
    "var.mount",
    "var-log.mount",
    "boot.mount",
    "root.mount",
    # The wrappers' audit trail (syslog) and the bus systemctl itself needs.
    "systemd-journald.service",
    "systemd-journald@*.service",
    "systemd-journald*.socket",
    "dbus.service",
    "dbus.socket",
    "dbus-broker.service",
)

# Directories whose file system a dataset must not be rolled back or destroyed under:
# rewinding them rewinds sudoers, shadow, the wrappers, root's keys or the kernel.
# The audit log's and the approval store's directories are added from the config.
PROTECTED_PATHS = ("/", "/etc", "/var", "/usr", "/boot", "/root")
MOUNT_TABLE = "/proc/self/mounts"
# The error codes of refusals no configuration can lift.
BUILT_IN_REFUSALS = frozenset({"root_equivalent_unit", "protected_dataset"})
ZFS_FILESYSTEM_TYPES = frozenset({"zfs", "fuse.zfs"})


def denied_unit(unit: str) -> str | None:
    """The built-in pattern that refuses `unit`, or None."""
    return next((pattern for pattern in DENIED_UNITS if fnmatchcase(unit, pattern)), None)


@dataclass(frozen=True, slots=True)
class Mount:
    source: str
    mountpoint: str
    fstype: str


def parse_mounts(text: str) -> list[Mount]:
    """/proc/self/mounts lines (octal escapes such as `\\040` for a space decoded)."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            source, mountpoint, fstype = (_unescape(field) for field in fields[:3])
            mounts.append(Mount(source, mountpoint, fstype))
    return mounts


def protected_datasets(paths: Iterable[str], mounts: list[Mount]) -> frozenset[str]:
    """The ZFS datasets holding `paths`: for each path, the file system it lives on
    (the last-mounted of the longest mount points above it), when that is ZFS. A
    dataset whose mountpoint is inherited from an ancestor is in the table under its
    own name, so it is found the same way."""
    found = set()
    for path in paths:
        holder: Mount | None = None
        for mount in mounts:
            if _within(path, mount.mountpoint) and (
                holder is None or len(mount.mountpoint) >= len(holder.mountpoint)
            ):
                holder = mount
        if holder is not None and holder.fstype in ZFS_FILESYSTEM_TYPES:
            found.add(holder.source)
    return frozenset(found)


def read_protected_datasets(paths: Iterable[str], table: str = MOUNT_TABLE) -> frozenset[str]:
    """`protected_datasets` from the live mount table (read at start and on reload);
    an unreadable table is a config error: without it nothing could be protected."""
    try:
        with open(table, encoding="utf-8", errors="surrogateescape") as handle:
            mounts = parse_mounts(handle.read())
    except OSError as exc:
        raise ConfigError(table, [f"cannot read the mount table: {exc.strerror}"]) from exc
    return protected_datasets((os.path.realpath(p) for p in paths), mounts)


def protected_hit(dataset: str, protected: Iterable[str]) -> str | None:
    """The protected dataset `dataset` is, or holds below it (a recursive destroy of an
    ancestor reaches it), or None."""
    return next((p for p in sorted(protected) if p == dataset or p.startswith(f"{dataset}/")), None)


def _within(path: str, mountpoint: str) -> bool:
    return mountpoint == "/" or path == mountpoint or path.startswith(f"{mountpoint}/")


def _unescape(field: str) -> str:
    out, index = [], 0
    while index < len(field):
        chunk = field[index : index + 4]
        if len(chunk) == 4 and chunk[0] == "\\" and chunk[1:].isdigit():
            out.append(chr(int(chunk[1:], 8)))
            index += 4
        else:
            out.append(field[index])
            index += 1
    return "".join(out)
