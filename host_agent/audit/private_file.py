"""Key files the agent keeps for itself: opened only if they are regular files of
their own (never through a link) that nobody but their owner can read."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from host_agent.small_files import fsync_directory


class PrivateFileError(Exception):
    """A key file is missing, or not kept the way a key must be."""


@contextlib.contextmanager
def opened_private(path: Path, flags: int) -> Iterator[int]:
    """A descriptor for `path`, if it is a regular file kept private: not a link, not
    a FIFO (whose open would wait for a writer or reader), no other name (a hard link
    to a file of root's, in a directory the service account owns)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise PrivateFileError(f"{path} does not exist") from None
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a FIFO no one reads, opened for writing
            raise PrivateFileError(f"{path} is not a regular file") from None
        raise PrivateFileError(f"cannot open {path}: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PrivateFileError(f"{path} is not a regular file")
        if info.st_nlink != 1:
            raise PrivateFileError(f"{path} has other names (hard links): a key has one")
        if info.st_mode & 0o077:
            raise PrivateFileError(f"{path} is readable by others than its owner (chmod 600)")
        yield fd
    finally:
        os.close(fd)


def create_private(path: Path, data: bytes, owner: tuple[int, int] | None) -> None:
    """Write a new file (0600, `owner`'s); never over an existing one."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise PrivateFileError(f"{path} exists already") from None
    except OSError as exc:
        raise PrivateFileError(f"cannot create {path}: {exc.strerror}") from exc
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        if data:
            os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_directory(path.parent)
