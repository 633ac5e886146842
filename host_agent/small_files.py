"""Small state files (the pid file, the checkpoint outbox) in a directory the service
account may own while the agent runs as root (threat model, invariant 10).

Nothing here follows a link, blocks on a FIFO, reads past a bound, or writes into a
file that was there before: a name the service account planted is at most refused,
or replaced.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path


def read_regular(path: Path, limit: int) -> bytes:
    """`path`'s content if it is a regular file (not a link) of at most `limit` bytes;
    OSError otherwise (FileNotFoundError if there is none)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
    return data


def replace_with(path: Path, data: bytes, mode: int, *, temporary: Path, durable: bool) -> None:
    """Put `data` at `path` atomically: `temporary` (beside it) created anew, never
    through whatever a planted name points at, then renamed over `path`. `durable`: on
    disk (file and directory fsync'd) before this returns."""
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()  # a leftover, or a planted link or FIFO: the name goes
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        if os.write(fd, data) != len(data):
            raise OSError(errno.ENOSPC, "short write", str(temporary))
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    temporary.replace(path)
    if durable:
        fsync_directory(path.parent)


def fsync_directory(path: Path) -> None:
    """Make a rename or a new name in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
