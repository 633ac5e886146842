"""`audit verify`: check the chain through a log's files, rotated and compressed."""

from __future__ import annotations

import errno
import gzip
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import jsonlines

from host_agent.audit.chain import CHAIN_FIELDS, GENESIS, record_hash


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int
    first_seq: int | None
    last_seq: int | None
    head: str | None
    error: str | None = None


def verify(paths: Iterable[Path]) -> VerifyResult:
    """Check the chain through `paths` in order (oldest first); stop at the first break."""
    count, first_seq, prev, seq = 0, None, None, None
    for path in paths:
        try:
            for lineno, record in _records(path):
                where = f"{path}:{lineno}"
                problem = _check(record, prev, seq)
                if problem is not None:
                    return VerifyResult(False, count, first_seq, seq, prev, f"{where}: {problem}")
                count += 1
                seq, prev = record["seq"], record["hash"]
                first_seq = seq if first_seq is None else first_seq
        except _Unreadable as exc:
            return VerifyResult(False, count, first_seq, seq, prev, str(exc))
    return VerifyResult(True, count, first_seq, seq, prev)


def _check(record: Any, prev: str | None, seq: int | None) -> str | None:
    if not isinstance(record, dict):
        return "record is not a JSON object"
    missing = [key for key in CHAIN_FIELDS if key not in record]
    if missing:
        return f"missing {', '.join(missing)}"
    if record_hash(record) != record["hash"]:
        return "hash does not match the record's content (edited line)"
    if seq is None:
        # Start of what we were given: a full log must start at the genesis.
        if record["seq"] == 1 and record["prev"] != GENESIS:
            return "first record does not start from the genesis hash"
        return None
    if record["prev"] != prev:
        return f"prev does not match the hash of seq {seq} (line removed, reordered or inserted)"
    if record["seq"] != seq + 1:
        return f"seq {record['seq']} follows seq {seq}"
    return None


class _Unreadable(Exception):
    pass


def _open_regular(path: Path) -> IO[bytes]:
    """`path` opened for reading if it is a regular file itself, not a link or a FIFO.

    Admins verify as root, and the log directory is the service account's: a link
    there to /dev/zero or a FIFO would make root's verify read forever or hang.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    raw = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raw.close()
        raise _Unreadable(f"{path}: not a regular file")
    return raw


def _records(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        with _open_regular(path) as raw:
            handle = gzip.GzipFile(fileobj=raw, mode="rb") if path.suffix == ".gz" else raw
            with handle, jsonlines.Reader(handle) as reader:
                try:
                    yield from enumerate(reader.iter(skip_empty=False), start=1)
                except jsonlines.InvalidLineError as exc:
                    raise _Unreadable(
                        f"{path}:{exc.lineno}: not valid JSON (torn or edited line)"
                    ) from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Unreadable(f"{path}: a symbolic link; name the log file itself") from exc
        raise _Unreadable(f"{path}: cannot read: {exc.strerror or exc}") from exc
