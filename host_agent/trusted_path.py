"""Who can change what a path names: its own directory, and every directory above it.

Whoever can write to one of them can put a link, a FIFO or another file of their
choosing at the name, or swap a whole directory out from under it.
"""

from __future__ import annotations

import stat
from pathlib import Path


def changeable_by_others(path: Path, trusted: tuple[int, ...]) -> Path | None:
    """The first directory above `path` (its own first) that an account outside
    `trusted` can change, or None. Above the path's own directory a sticky bit (as on
    /tmp) protects the entries; in the path's own directory it protects nothing a
    newcomer has not created yet. OSError if a directory cannot be looked at."""
    for index, directory in enumerate(path.parents):
        info = directory.stat()
        writable = info.st_mode & 0o022 and not (index and info.st_mode & stat.S_ISVTX)
        if info.st_uid not in trusted or writable:
            return directory
    return None
