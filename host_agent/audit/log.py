"""The tamper-evident JSONL audit log's writer.

Records are chained (see chain.py). A record is flushed and fsync'd before
`append` returns: callers run nothing until then, and a write that fails raises
`AuditUnavailable` (fail closed).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import jsonlines

from host_agent.audit.chain import CHAIN_FIELDS, GENESIS, canonical, record_hash
from host_agent.errors import AuditUnavailable

log = logging.getLogger(__name__)


class AuditLog:
    """Append-only, hash-chained, fsync'd JSONL file; safe to share between threads."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] | None = None,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self.path = path
        self._clock = clock
        self._on_failure = on_failure
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None
        self._writer: jsonlines.Writer | None = None
        self._seq = 0
        self._prev = GENESIS
        # Why the last append failed, until one succeeds: /health shows it.
        self.failing: str | None = None

    def open(self) -> None:
        """Open (creating 0640) and pick up the chain where the file, or its rotated copy, ends."""
        with self._lock:
            self._open_locked()

    def _open_locked(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            handle = os.fdopen(fd, "r+b", buffering=0)
            try:
                _drop_torn_tail(handle, self.path)
                last = _last_record(handle)
                if last is None and self._seq == 0:
                    last = _last_record_of(self.path.with_name(self.path.name + ".1"))
            except BaseException:
                handle.close()
                raise
        except OSError as exc:
            raise AuditUnavailable(f"cannot open audit log {self.path}: {exc.strerror}") from exc
        if last is not None and self._seq and int(last["seq"]) != self._seq:
            # What this process wrote is the truth; the chain continues from it.
            log.warning(
                "audit log %s ends at seq %s, but seq %d was written last; continuing from %d",
                self.path,
                last["seq"],
                self._seq,
                self._seq,
            )
        elif last is not None:
            self._seq, self._prev = int(last["seq"]), str(last["hash"])
        self._file = handle
        self._writer = jsonlines.Writer(handle, dumps=canonical, flush=True)

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def reopen(self) -> None:
        """Start writing to whatever file is at `path` now (after logrotate moved ours away).

        The chain continues across files: the first record of the new file
        points at the last record of the old one.
        """
        with self._lock:
            self._close_locked()
            self._open_locked()

    def _close_locked(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = self._writer = None

    def _rotated_locked(self) -> bool:
        """Whether `path` is no longer the file we hold (renamed or removed)."""
        if self._file is None:
            return False
        try:
            current = os.stat(self.path)
        except OSError:  # gone; if it cannot be reopened either, that open says why
            return True
        held = os.fstat(self._file.fileno())
        return (current.st_dev, current.st_ino) != (held.st_dev, held.st_ino)

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        """Chain, write and fsync one record; return it as written."""
        try:
            written = self._append(record)
        except AuditUnavailable as exc:
            self.failing = str(exc)
            if self._on_failure is not None:
                self._on_failure()
            raise
        self.failing = None
        return written

    def _append(self, record: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if self._rotated_locked():
                # Rotated without (or before) the SIGHUP: follow the path, lose nothing.
                self._close_locked()
            if self._file is None or self._writer is None:
                self._open_locked()
            handle, writer = self._file, self._writer
            if handle is None or writer is None:  # for the type checker; open raises instead
                raise AuditUnavailable("audit log is not open")
            entry = {key: value for key, value in record.items() if key not in CHAIN_FIELDS}
            entry["seq"] = self._seq + 1
            entry["ts"] = self._now()
            entry["prev"] = self._prev
            entry["hash"] = record_hash(entry)
            size = os.fstat(handle.fileno()).st_size
            try:
                written = writer.write(entry)
                if os.fstat(handle.fileno()).st_size != size + written:
                    raise OSError(errno.EIO, "short write")
                os.fsync(handle.fileno())
            except OSError as exc:
                _truncate_quietly(handle, size)
                raise AuditUnavailable(
                    f"cannot write audit log {self.path}: {exc.strerror}"
                ) from exc
            self._seq, self._prev = entry["seq"], entry["hash"]
            return entry

    async def write(self, record: dict[str, Any]) -> dict[str, Any]:
        """`append` off the event loop: fsync must not stall other connections."""
        return await asyncio.to_thread(self.append, record)

    def _now(self) -> str:
        now = self._clock() if self._clock is not None else None
        moment = dt.datetime.now(dt.UTC) if now is None else dt.datetime.fromtimestamp(now, dt.UTC)
        return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _drop_torn_tail(handle: IO[bytes], path: Path) -> None:
    """Cut a half-written last line left by a crash; it was never acknowledged."""
    size = os.fstat(handle.fileno()).st_size
    if size == 0:
        return
    handle.seek(size - 1)
    if handle.read(1) == b"\n":
        return
    end = _last_newline(handle, size)
    log.warning("audit log %s: dropping %d bytes of a torn last line", path, size - end)
    os.ftruncate(handle.fileno(), end)
    os.fsync(handle.fileno())


def _last_newline(handle: IO[bytes], size: int) -> int:
    """Offset just past the last newline before `size` (0 if none)."""
    position = size
    while position > 0:
        start = max(0, position - 65536)
        handle.seek(start)
        chunk = handle.read(position - start)
        index = chunk.rfind(b"\n")
        if index >= 0:
            return start + index + 1
        position = start
    return 0


def _last_record(handle: IO[bytes]) -> dict[str, Any] | None:
    size = os.fstat(handle.fileno()).st_size
    if size == 0:
        return None
    start = _last_newline(handle, size - 1)
    handle.seek(start)
    line = handle.read(size - start)
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise OSError(0, f"last line of the audit log is not JSON ({exc})") from exc
    if not isinstance(record, dict) or "seq" not in record or "hash" not in record:
        raise OSError(0, "last line of the audit log is not an audit record")
    return record


def _last_record_of(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as handle:
            return _last_record(handle)
    except FileNotFoundError:
        return None


def _truncate_quietly(handle: IO[bytes], size: int) -> None:
    # Leave no partial line behind a failed write; if even this fails the next
    # open drops the torn tail.
    try:
        os.ftruncate(handle.fileno(), size)
    except OSError:
        log.exception("cannot truncate audit log after a failed write")
