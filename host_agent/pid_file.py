"""`serve --pid-file`: the agent's pid, for logrotate and init scripts without systemd.

The file lives in a run directory the service account owns, and an agent may be
started as root: so it is written and read as small_files does (invariant 10).
"""

from __future__ import annotations

import os
from pathlib import Path

from host_agent import small_files

_MAX_BYTES = 32  # a pid and a newline, with room to spare


def write(path: Path) -> None:
    """Write this process's pid to `path` atomically."""
    pid = f"{os.getpid()}\n".encode()
    temporary = path.with_name(f".{path.name}.tmp")
    small_files.replace_with(path, pid, 0o644, temporary=temporary, durable=False)


def remove_if_ours(path: Path) -> None:
    """Remove `path` unless it names another process now: an agent started in this
    one's place while it stopped (a restart) wrote its own, which must outlive this one.
    Anything but a regular file there is not ours, and is left alone."""
    try:
        ours = small_files.read_regular(path, _MAX_BYTES).strip() == str(os.getpid()).encode()
    except OSError:
        return
    if ours:
        path.unlink(missing_ok=True)
