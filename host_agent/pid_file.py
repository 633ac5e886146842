"""`serve --pid-file`: the agent's pid, for logrotate and init scripts without systemd.

The file lives in a run directory the service account owns, and an agent may be
started as root: so nothing here follows a link, blocks on a FIFO, or reads more
than a pid (threat model, invariant 10).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

_MAX_BYTES = 32  # a pid and a newline, with room to spare


def write(path: Path) -> None:
    """Write this process's pid to `path` atomically: a temporary file created anew
    (never through whatever a planted name points at), then renamed over `path`."""
    temporary = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()  # a leftover, or a planted link: the name goes, not its target
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)
    temporary.replace(path)


def remove_if_ours(path: Path) -> None:
    """Remove `path` unless it names another process now: an agent started in this
    one's place while it stopped (a restart) wrote its own, which must outlive this one.
    Anything but a regular file there is not ours, and is left alone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return
    try:
        ours = stat.S_ISREG(os.fstat(fd).st_mode) and (
            os.read(fd, _MAX_BYTES).strip() == str(os.getpid()).encode()
        )
    finally:
        os.close(fd)
    if ours:
        path.unlink(missing_ok=True)
