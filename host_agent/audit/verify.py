"""`audit verify`: check the chain through a log's files, rotated and compressed, and
with the operator's verification key, the seals (seal_check.py)."""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import stat
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from host_agent.audit.chain import CHAIN_FIELDS, FILE_EVENT, GENESIS, record_hash
from host_agent.audit.checkpoint import Checkpoint
from host_agent.audit.checkpoint_check import CheckpointCheck
from host_agent.audit.seal import SEAL_EVENT, VerificationKey
from host_agent.audit.seal_check import SealCheck


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int
    first_seq: int | None
    last_seq: int | None
    head: str | None
    error: str | None = None
    # With a verification key: the last epoch sealed, the seq of its seal, and how
    # many records follow it (the current epoch's, which no seal vouches for yet).
    sealed_epoch: int | None = None
    sealed_seq: int | None = None
    unsealed: int | None = None
    # With checkpoints: how many named a record of the files given (and matched).
    witnessed: int | None = None


def verify(
    paths: Iterable[Path],
    *,
    seal_key: VerificationKey | None = None,
    unmarked_head: bool = False,
    now: float | None = None,
    checkpoints: list[Checkpoint] | None = None,
) -> VerifyResult:
    """Check the chain through `paths` in order (oldest first); stop at the first break.

    Every file must begin at seq 1 or with its `audit_file` record (`unmarked_head`
    excuses files rotated by a host-agent that did not write one). With `checkpoints`
    (a witness's), every record they name must hash as it did, and none may be cut."""
    seals = None if seal_key is None else SealCheck(seal_key, time.time() if now is None else now)
    witnessed = None if checkpoints is None else CheckpointCheck(checkpoints)
    count, first_seq, prev, seq = 0, None, None, None

    def result(error: str | None = None) -> VerifyResult:
        return VerifyResult(
            error is None, count, first_seq, seq, prev, error,
            sealed_epoch=None if seals is None else seals.sealed_epoch,
            sealed_seq=None if seals is None else seals.sealed_seq,
            unsealed=None if seals is None else seals.unsealed,
            witnessed=None if witnessed is None else witnessed.checked,
        )  # fmt: skip

    for path in paths:
        try:
            for lineno, line in _lines(path):
                record = _parse(line)
                problem = _check(record, line, prev, seq)
                if problem is None and lineno == 1 and not unmarked_head:
                    problem = _file_start(record)
                if problem is None and seals is not None:
                    problem = seals.feed(record)
                if problem is None and witnessed is not None:
                    problem = witnessed.feed(record["seq"], record["hash"])
                if problem is not None:
                    return result(f"{path}:{lineno}: {problem}")
                count += 1
                seq, prev = record["seq"], record["hash"]
                first_seq = seq if first_seq is None else first_seq
        except _Unreadable as exc:
            return result(str(exc))
    for check in (seals, witnessed):
        problem = None if check is None else check.finish(seq)
        if problem is not None:
            return result(f"end of the log (seq {seq}): {problem}")
    return result()


# json's C scanner (typeshed does not list the attribute every JSONDecoder has).
_SCAN: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_CHAIN_KEYS = frozenset(CHAIN_FIELDS)


def _parse(line: bytes) -> Any:
    """One line's record; None unless the line is one JSON value and nothing else.

    orjson reads the lines the agent writes (an object from the first byte to the last
    before the newline) in less than half json's time. Where the two would read a line
    differently, json decides: orjson refuses NaN, lone surrogates and deep nesting, and
    reads integers beyond 64 bits as floats, which matters only to a seq and to what is
    serialised again (a seal, for its MAC; a non-canonical line, for its hash: `_exact`)."""
    last = line[-2:-1] if line[-1:] == b"\n" else line[-1:]
    if line[:1] != b"{" or last != b"}":
        return _exact(line)
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return _exact(line)
    if type(record.get("seq")) is float or record.get("event") == SEAL_EVENT:
        return _exact(line)
    return record


def _exact(line: bytes) -> Any:
    """`_parse` by json alone: every number as written, NaN and lone surrogates kept."""
    try:
        text = line.decode("utf-8")
        # json's C scanner itself: json.loads and raw_decode around it cost a third more.
        record, end = _SCAN(text, 0)
    except (ValueError, StopIteration, RecursionError):
        return None
    return record if end == len(text) or text[end:] == "\n" else None


def _check(record: Any, line: bytes, prev: str | None, seq: int | None) -> str | None:
    if record is None:
        return "not valid JSON (torn or edited line)"
    if not isinstance(record, dict):
        return "record is not a JSON object"
    if not record.keys() >= _CHAIN_KEYS:  # one set comparison for the usual case
        return f"missing {', '.join(key for key in CHAIN_FIELDS if key not in record)}"
    if not _hash_matches(line, record):
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


def _file_start(record: dict[str, Any]) -> str | None:
    if record["seq"] == 1 or record.get("event") == FILE_EVENT:
        return None
    return (
        f"the file begins at seq {record['seq']} without its {FILE_EVENT} record: lines "
        "were cut from its start (for files rotated by a host-agent that did not mark "
        "file starts, pass --unmarked-head)"
    )


def _hash_matches(line: bytes, record: dict[str, Any]) -> bool:
    """Whether `hash` is the SHA-256 of the record without it: taken straight from the
    line's bytes when the line is canonical (as the agent writes every line), so the
    record need not be serialised again; otherwise from its canonical form."""
    claimed = record["hash"]
    if not isinstance(claimed, str):
        return False
    field = b',"hash":"' + claimed.encode("ascii", "replace") + b'"'
    body = line.replace(field, b"", 1)
    if len(body) < len(line) and hashlib.sha256(body.rstrip(b"\n")).hexdigest() == claimed:
        return True
    exact = _exact(line)
    return exact is not None and bool(record_hash(exact) == claimed)


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


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    try:
        with _open_regular(path) as raw:
            handle = gzip.GzipFile(fileobj=raw, mode="rb") if path.suffix == ".gz" else raw
            with handle:
                yield from enumerate(handle, start=1)
    except (EOFError, zlib.error) as exc:
        raise _Unreadable(f"{path}: a damaged compressed file ({exc})") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Unreadable(f"{path}: a symbolic link; name the log file itself") from exc
        raise _Unreadable(f"{path}: cannot read: {exc.strerror or exc}") from exc

