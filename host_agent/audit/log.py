"""The tamper-evident JSONL audit log's writer.

Records are chained (see chain.py). A record is flushed and fsync'd before
`append` returns: callers run nothing until then, and a write that fails raises
`AuditUnavailable` (fail closed). Concurrent appends share fsyncs (group commit):
each writes its line under the lock, then one fsync makes every line written so far
durable, and the others find theirs already covered. If that fsync fails, every line
it was to cover is cut from the file and each of their appends raises. `write`, the
event loop's way in, writes its line on the loop and waits for a shared fsync run in
a thread. Every file
but the first begins with an `audit_file` record, so lines cut from the start of a
file show. With a seal key (seal.py), an epoch that has ended is sealed before
anything else is written. With a checkpoint key (checkpoint.py), `checkpoint()`
writes a signed checkpoint of the chain's head, and one is taken whenever a new
file begins.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import jsonlines

from host_agent.audit.chain import (
    CHAIN_FIELDS,
    FILE_EVENT,
    GENESIS,
    canonical,
    record_hash,
    stamp,
)
from host_agent.audit.checkpoint import CHECKPOINT_EVENT, Checkpoint, SigningKey
from host_agent.audit.seal import SEAL_EVENT, SealError, SealKey
from host_agent.errors import AuditUnavailable

log = logging.getLogger(__name__)

# How long the event loop waits for the write lock before it hands the work to a thread.
_LOOP_LOCK_WAIT_SECONDS = 0.001


class AuditLog:
    """Append-only, hash-chained, fsync'd JSONL file; safe to share between threads."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] | None = None,
        on_failure: Callable[[], None] | None = None,
        seal: SealKey | None = None,
        checkpoints: tuple[SigningKey, Callable[[str, Checkpoint], None]] | None = None,
    ) -> None:
        self.path = path
        # The checkpoint key, and who is told of each checkpoint (the outbox).
        self._checkpoints = checkpoints
        self._clock = clock or time.time
        self._seal = seal
        # The epoch of the last seal in the log, so a seal written just before a crash
        # (or a failed key update) is not written twice.
        self._sealed_epoch: int | None = None
        self._on_failure = on_failure
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None
        self._writer: jsonlines.Writer | None = None
        self._seq = 0
        self._prev = GENESIS
        # Group commit. Lines written so far (a count that never goes back), how many of
        # them are known durable, the file as it was after the last durable one (size,
        # seq, hash: where a failed fsync cuts back to), and the ranges of lines cut.
        self._written = 0
        self._durable = 0
        self._durable_end = (0, 0, GENESIS)
        self._lost: list[tuple[int, int]] = []
        self._lost_why = ""
        # One fsync at a time; whoever waits for it may find its line covered.
        self._sync_lock = threading.Lock()
        # The fsync the event loop's writers wait for, if one runs (see `write`).
        self._syncing: asyncio.Future[None] | None = None
        # Why the last append failed, until one succeeds: /health shows it.
        self.failing: str | None = None

    def open(self) -> None:
        """Open (creating 0640) and pick up the chain where the file, or its rotated copy, ends."""
        with self._lock:
            self._open_locked()

    def _open_locked(self) -> None:
        try:
            # Never through a link, nor into a FIFO or a second name of another file: the
            # directory may be the service account's while the agent runs as root
            # (invariant 10).
            flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            handle = os.fdopen(os.open(self.path, flags, 0o640), "r+b", buffering=0)
            try:
                _refuse_planted(handle)
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
            if last.get("event") == SEAL_EVENT:
                self._sealed_epoch = int(last["epoch"])
        self._file = handle
        self._writer = jsonlines.Writer(handle, dumps=canonical, flush=True)
        self._durable_end = (os.fstat(handle.fileno()).st_size, self._seq, self._prev)
        if self._seq and os.fstat(handle.fileno()).st_size == 0:
            # A new file continuing the chain says so first: a file that does not
            # begin this way (or at seq 1) was cut.
            try:
                now = self._clock()
                self._write_locked({"event": FILE_EVENT}, now)
                self._sync_locked()
                # An epoch that ended meanwhile is sealed before the checkpoint of the
                # head (the file record is exempt from its epoch's dates: see seal_check).
                self._seal_due_locked(now)
                self._checkpoint_locked()
            except AuditUnavailable:
                self._close_locked()
                raise

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
            # Lines still waiting for their fsync get it (or are cut) before the file goes.
            with contextlib.suppress(AuditUnavailable):
                self._sync_locked()
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
        with self._failing_closed():
            return self._append(record)

    async def write(self, record: dict[str, Any]) -> dict[str, Any]:
        """`append` for the event loop, which must never wait for a disk: the record is
        chained and written on the loop (into the page cache), then awaited until an
        fsync run in a thread covers it, one fsync for every line written meanwhile. (A
        thread per record, as before, had six threads taking the GIL from the loop: a
        denied request's rate went from ~1,800/s to ~3,100/s without them.) Opening the
        file, following a rotation and sealing an epoch fsync at once, so a record that
        needs one is appended in a thread instead."""
        with self._failing_closed():
            with self._lock_soon() as taken:
                written = self._write_if_ready_locked(record) if taken else None
            if written is None:
                return await asyncio.to_thread(self._append, record)
            entry, line = written
            await self._until_durable(line)
            return entry

    @contextlib.contextmanager
    def _lock_soon(self) -> Iterator[bool]:
        """The write lock, if it comes within a millisecond: the event loop must not wait
        for a thread that holds it across an fsync (opening the file, a seal, a
        checkpoint). Waiting a little, rather than not at all, lets a thread that holds
        it for a moment run (the wait gives up the GIL) and let go."""
        taken = self._lock.acquire(timeout=_LOOP_LOCK_WAIT_SECONDS)
        try:
            yield taken
        finally:
            if taken:
                self._lock.release()

    @contextlib.contextmanager
    def _failing_closed(self) -> Iterator[None]:
        """Say why appends fail (for /health and the metric) until one succeeds."""
        try:
            yield
        except AuditUnavailable as exc:
            self.failing = str(exc)
            if self._on_failure is not None:
                self._on_failure()
            raise
        self.failing = None

    def _append(self, record: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            if self._rotated_locked():
                # Rotated without (or before) the SIGHUP: follow the path, lose nothing.
                self._close_locked()
            if self._file is None or self._writer is None:
                self._open_locked()
            now = self._clock()
            self._seal_due_locked(now)
            entry = self._write_locked(record, now)
            line = self._written
        self._wait_durable(line)
        return entry

    def _write_if_ready_locked(self, record: dict[str, Any]) -> tuple[dict[str, Any], int] | None:
        """The record as written and its line number, if nothing has to be fsync'd first
        (None: the file is to be opened or followed after a rotation, or an epoch sealed)."""
        if self._file is None or self._writer is None or self._rotated_locked():
            return None
        now = self._clock()
        if self._epoch_over(now):
            return None
        return self._write_locked(record, now), self._written

    async def _until_durable(self, line: int) -> None:
        """Return once line number `line` is fsync'd, raise if the fsync meant for it
        failed: each waiter joins the fsync running, and starts the next if its line came
        too late for that one (or the lock was held: the next fsync waits for it)."""
        loop = asyncio.get_running_loop()
        while True:
            with self._lock_soon() as taken:
                if taken and line <= self._durable:
                    self._check_kept(line)
                    return
            syncing = self._syncing
            if syncing is None or syncing.done() or syncing.get_loop() is not loop:
                syncing = self._syncing = asyncio.ensure_future(
                    asyncio.to_thread(self._sync_written)
                )
            await asyncio.shield(syncing)

    def _sync_written(self) -> None:
        """fsync every line written so far; each waiter then checks its own line."""
        with self._lock:
            upto = self._written
        with contextlib.suppress(AuditUnavailable):
            self._wait_durable(upto)

    def _wait_durable(self, line: int) -> None:
        """Return once line number `line` is fsync'd: by an fsync another append started
        after it was written, or by this one's; raise if the fsync meant for it failed.

        The fsync runs without the write lock, so others write their lines meanwhile:
        the next fsync covers them all."""
        with self._sync_lock:
            with self._lock:
                if line <= self._durable:
                    self._check_kept(line)
                    return
                # A duplicate of the descriptor: the file may be rotated and closed while
                # this fsync runs, and must still be synced.
                fd = os.dup(self._file.fileno()) if self._file is not None else -1
                upto, end = self._written, self._end_locked()
            try:
                if fd < 0:
                    raise OSError(errno.EBADF, "the audit log is not open")
                os.fsync(fd)
            except OSError as exc:
                with self._lock:
                    if self._durable < upto:  # nobody else synced them meanwhile
                        self._cut_locked(exc)
            else:
                with self._lock:
                    if self._durable < upto:
                        self._durable, self._durable_end = upto, end
            finally:
                if fd >= 0:
                    os.close(fd)
            with self._lock:
                self._check_kept(line)

    def _check_kept(self, line: int) -> None:
        """Raise if line number `line` was cut. The cut ranges are in order and a line is
        checked soon after it is written, so the search starts from the latest."""
        for after, upto in reversed(self._lost):
            if upto < line:
                return
            if after < line:
                raise AuditUnavailable(f"cannot write audit log {self.path}: {self._lost_why}")

    def _end_locked(self) -> tuple[int, int, str]:
        """Where the file ends now: its size, and the chain's seq and hash there."""
        size = os.fstat(self._file.fileno()).st_size if self._file is not None else 0
        return size, self._seq, self._prev

    def _sync_locked(self) -> None:
        """fsync every line written so far, holding the write lock (a file's first
        record, a seal, a checkpoint, a file about to be closed)."""
        if self._written == self._durable or self._file is None:
            return
        try:
            os.fsync(self._file.fileno())
        except OSError as exc:
            self._cut_locked(exc)
            self._check_kept(self._written)
        self._durable, self._durable_end = self._written, self._end_locked()

    def _cut_locked(self, exc: OSError) -> None:
        """An fsync failed: none of the lines written since the last durable one may be
        trusted to be on disk, so all of them leave the file and their appends fail; the
        chain goes on from the last durable line."""
        size, self._seq, self._prev = self._durable_end
        if self._file is not None:
            _truncate_quietly(self._file, size)
        if self._lost and self._lost[-1][1] == self._durable:  # failing again: one range
            self._lost[-1] = (self._lost[-1][0], self._written)
        else:
            self._lost.append((self._durable, self._written))
        self._lost_why = exc.strerror or str(exc)
        self._durable = self._written

    def checkpoint(self) -> None:
        """Write a signed checkpoint of the chain's head (periodically, and at shutdown)."""
        if self._checkpoints is None:
            return
        with self._lock:
            if self._file is None:
                self._open_locked()
            self._seal_due_locked(self._clock())
            self._checkpoint_locked()

    def _checkpoint_locked(self) -> None:
        if self._checkpoints is None or self._seq == 0:
            return
        key, taken = self._checkpoints
        now = self._clock()
        checkpoint = Checkpoint(key.name, self._seq, self._prev, stamp(now))
        note = key.sign(checkpoint)
        record = {
            "event": CHECKPOINT_EVENT,
            "origin": checkpoint.origin,
            "size": checkpoint.size,
            "head": checkpoint.head,
            "note": note,
        }
        self._write_locked(record, now)
        self._sync_locked()  # witnesses get only what is durable
        taken(note, checkpoint)

    def seal_due(self) -> None:
        """Seal an epoch that has ended even when nothing else is written: its key must
        not outlive it (the agent calls this every few seconds)."""
        if self._seal is None:
            return
        with self._lock:
            if self._file is None:
                self._open_locked()
            self._seal_due_locked(self._clock())

    def _epoch_over(self, now: float) -> bool:
        """Whether the seal key's epoch has ended by `now` (with no key: never)."""
        return self._seal is not None and self._seal.epochs.at(now) > self._seal.epoch

    def _seal_due_locked(self, now: float) -> None:
        key = self._seal
        if key is None or not self._epoch_over(now):
            return
        current = key.epochs.at(now)
        if self._sealed_epoch != key.epoch:
            seal = {
                "event": SEAL_EVENT,
                "seal_id": key.ident,
                "epoch": key.epoch,
                # Epochs the agent was down for, with nothing to seal: the next seal is
                # for the epoch after `through`.
                "through": current - 1,
            }
            self._write_locked(seal, now, sign=key.mac)
            self._sync_locked()  # durable before the key that made it is gone
            self._sealed_epoch = key.epoch
        try:
            key.advance(current)
        except (OSError, SealError) as exc:
            raise AuditUnavailable(f"cannot move the audit seal key on: {exc}") from exc

    def _write_locked(
        self,
        record: dict[str, Any],
        now: float,
        sign: Callable[[dict[str, Any]], str] | None = None,
    ) -> dict[str, Any]:
        handle, writer = self._file, self._writer
        if handle is None or writer is None:  # for the type checker; open raises instead
            raise AuditUnavailable("audit log is not open")
        entry = {key: value for key, value in record.items() if key not in CHAIN_FIELDS}
        entry["seq"] = self._seq + 1
        entry["ts"] = stamp(now)
        entry["prev"] = self._prev
        if sign is not None:
            entry["mac"] = sign(entry)
        entry["hash"] = record_hash(entry)
        size = os.fstat(handle.fileno()).st_size
        try:
            written = writer.write(entry)
            if os.fstat(handle.fileno()).st_size != size + written:
                raise OSError(errno.EIO, "short write")
        except OSError as exc:
            _truncate_quietly(handle, size)
            raise AuditUnavailable(f"cannot write audit log {self.path}: {exc.strerror}") from exc
        self._seq, self._prev = entry["seq"], entry["hash"]
        self._written += 1
        return entry


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
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        _refuse_planted(handle)
        return _last_record(handle)


def _refuse_planted(handle: IO[bytes]) -> None:
    """What the service account can put at the name (a device node it cannot): a FIFO,
    which would hold a write (and the agent) until someone reads it, or a second name
    for a file of root's (a hard link, where fs.protected_hardlinks=0 allows one), which
    root would append to and cut."""
    info = os.fstat(handle.fileno())
    if stat.S_ISFIFO(info.st_mode):
        raise OSError(errno.EINVAL, "a FIFO, not a file")
    if stat.S_ISREG(info.st_mode) and info.st_nlink != 1:
        raise OSError(errno.EMLINK, "a file with other names (hard links)")


def _truncate_quietly(handle: IO[bytes], size: int) -> None:
    # Leave no partial line behind a failed write; if even this fails the next
    # open drops the torn tail.
    try:
        os.ftruncate(handle.fileno(), size)
    except OSError:
        log.exception("cannot truncate audit log after a failed write")
