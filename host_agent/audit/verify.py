"""`audit verify`: check the chain through a log's files, rotated and compressed, and
with the operator's verification key, the seals (seal_check.py)."""

from __future__ import annotations

import errno
import functools
import gzip
import hashlib
import itertools
import json
import multiprocessing
import os
import stat
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import orjson

from host_agent.audit.chain import CHAIN_FIELDS, FILE_EVENT, GENESIS, record_hash
from host_agent.audit.checkpoint import Checkpoint
from host_agent.audit.checkpoint_check import CheckpointCheck
from host_agent.audit.seal import SEAL_EVENT, VerificationKey
from host_agent.audit.seal_check import Dated, SealCheck
from host_agent.audit.trail import Kept, Step, Trail, replay


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
    processes: int = 1,
) -> VerifyResult:
    """Check the chain through `paths` in order (oldest first); stop at the first break.

    Every file must begin at seq 1 or with its `audit_file` record (`unmarked_head`
    excuses files rotated by a host-agent that did not write one). With `checkpoints`
    (a witness's), every record they name must hash as it did, and none may be cut.
    With `processes` > 1, a large uncompressed file is checked in that many parts at
    once, forked (so only from a single-threaded program: the command line); the
    verdict is the same."""
    seals = None if seal_key is None else SealCheck(seal_key, time.time() if now is None else now)
    witnessed = None if checkpoints is None else CheckpointCheck(checkpoints)
    chain = _Chain()

    def result(error: str | None = None) -> VerifyResult:
        return VerifyResult(
            error is None, chain.count, chain.first_seq, chain.seq, chain.prev, error,
            sealed_epoch=None if seals is None else seals.sealed_epoch,
            sealed_seq=None if seals is None else seals.sealed_seq,
            unsealed=None if seals is None else seals.unsealed,
            witnessed=None if witnessed is None else witnessed.checked,
        )  # fmt: skip

    for path in paths:
        try:
            found = _check_file(
                path, chain, marked=not unmarked_head, seals=seals, witnessed=witnessed,
                processes=processes,
            )  # fmt: skip
        except _Unreadable as exc:
            return result(str(exc))
        if found is not None:
            return result(f"{path}:{found[0]}: {found[1]}")
    for check in (seals, witnessed):
        problem = None if check is None else check.finish(chain.seq)
        if problem is not None:
            return result(f"end of the log (seq {chain.seq}): {problem}")
    return result()


@dataclass
class _Chain:
    """How far the chain has been checked: how many records, the first seq, the last
    record's seq and hash."""

    count: int = 0
    first_seq: int | None = None
    seq: int | None = None
    prev: str | None = None

    def extend(self, record: dict[str, Any]) -> None:
        self.count += 1
        self.seq, self.prev = record["seq"], record["hash"]
        if self.first_seq is None:
            self.first_seq = self.seq

    @classmethod
    def before(cls, record: dict[str, Any], lines: int, first_seq: int | None) -> _Chain:
        """The chain through the `lines` records of a part (from `first_seq`) that come
        before `record`, which follows them."""
        if lines == 0:
            return cls()
        return cls(lines, first_seq, record["seq"] - 1, record["prev"])

    def join(self, later: _Chain) -> None:
        """Continue with the records `later` counted (checked to follow this chain)."""
        if later.count == 0:
            return
        self.count += later.count
        self.seq, self.prev = later.seq, later.prev
        if self.first_seq is None:
            self.first_seq = later.first_seq


# The first problem found: its line number (in a file, or in a part of one) and what.
_Found = tuple[int, str] | None


class _Check(Protocol):
    """What else looks at each record whose chain holds: the seal and checkpoint checks."""

    def feed(self, record: dict[str, Any]) -> str | None: ...


def _check_lines(
    lines: Iterable[tuple[int, bytes]],
    chain: _Chain,
    *,
    marked: bool,
    checks: list[_Check],
    trail: Trail | None = None,
) -> _Found:
    """Extend `chain` through `lines`, each record held to `checks` and then given to
    `trail`; the first problem and its line number."""
    for lineno, line in lines:
        record = _parse(line)
        problem = _content(record, line) or _link(record, chain.prev, chain.seq)
        if problem is None and lineno == 1 and marked:
            problem = _file_start(record)
        for check in checks:
            if problem is None:
                problem = check.feed(record)
        if problem is not None:
            return lineno, problem
        chain.extend(record)
        if trail is not None:
            trail.feed(record, line)
    return None


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


def _content(record: Any, line: bytes) -> str | None:
    """What is wrong with the record itself, whatever comes before it."""
    if len(line) >= MAX_LINE and line[-1:] != b"\n":
        return f"a line longer than any record the agent writes ({MAX_LINE >> 20} MiB)"
    if record is None:
        return "not valid JSON (torn or edited line)"
    if not isinstance(record, dict):
        return "record is not a JSON object"
    if not record.keys() >= _CHAIN_KEYS:  # one set comparison for the usual case
        return f"missing {', '.join(key for key in CHAIN_FIELDS if key not in record)}"
    if type(record["seq"]) is not int:  # what follows counts on it (bool is no number)
        return "seq is not a whole number"
    if not _hash_matches(line, record):
        return "hash does not match the record's content (edited line)"
    return None


def _link(record: dict[str, Any], prev: str | None, seq: int | None) -> str | None:
    """Whether the record follows the one with `seq` and hash `prev` (None: the start of
    what was given, which for a whole log is the genesis)."""
    if seq is None:
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
    try:
        return exact is not None and bool(record_hash(exact) == claimed)
    except RecursionError:  # read, but nested too deep to write again: not a record of ours
        return False


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


def _check_file(
    path: Path,
    chain: _Chain,
    *,
    marked: bool,
    seals: SealCheck | None,
    witnessed: CheckpointCheck | None,
    processes: int,
) -> _Found:
    checks: list[_Check] = [check for check in (seals, witnessed) if check is not None]
    try:
        with _open_regular(path) as raw:
            if path.suffix == ".gz":
                with gzip.GzipFile(fileobj=raw, mode="rb") as unpacked:
                    return _check_lines(_numbered(unpacked), chain, marked=marked, checks=checks)
            parts = _parts(raw, processes)
            if len(parts) > 1:
                named = frozenset() if witnessed is None else witnessed.named
                checked = _check_parts(raw.fileno(), parts, dated=seals is not None, named=named)
                read = _read_back(checked)
                if read is not None:
                    return _join(read, chain, marked=marked, seals=seals, witnessed=witnessed)
                raw.seek(0)  # in one process instead
            return _check_lines(_numbered(raw), chain, marked=marked, checks=checks)
    except (EOFError, zlib.error) as exc:
        raise _Unreadable(f"{path}: a damaged compressed file ({exc})") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Unreadable(f"{path}: a symbolic link; name the log file itself") from exc
        raise _Unreadable(f"{path}: cannot read: {exc.strerror or exc}") from exc


# The longest line read: no record the agent writes comes near it (a body is at most 16
# MiB, which JSON's escapes grow at most sixfold), and root's memory is not the service
# account's to fill with a line that never ends.
MAX_LINE = 128 << 20


def _lines(handle: IO[bytes] | gzip.GzipFile) -> Iterator[bytes]:
    """The file's lines; one longer than MAX_LINE comes in pieces (the first is refused)."""
    return iter(functools.partial(handle.readline, MAX_LINE), b"")


def _numbered(handle: IO[bytes] | gzip.GzipFile) -> Iterator[tuple[int, bytes]]:
    return enumerate(_lines(handle), start=1)


# Below this size a file is checked by one process: forking would cost more than it saves.
SPLIT_SIZE = 16 << 20


def _parts(raw: IO[bytes], processes: int) -> list[tuple[int, int | None]]:
    """Where each process's part of the file starts and stops (None: at its end), each
    at a line's start: the file in `processes` parts of about the same size."""
    size = os.fstat(raw.fileno()).st_size
    if processes < 2 or size < SPLIT_SIZE:
        return [(0, None)]
    starts = [0]
    for share in range(1, processes):
        raw.seek(size * share // processes - 1)
        for piece in _lines(raw):  # to the end of the line the cut falls in
            if piece[-1:] == b"\n":
                break
        if starts[-1] < raw.tell() < size:
            starts.append(raw.tell())
    raw.seek(0)
    return [*itertools.pairwise(starts), (starts[-1], None)]


def _check_parts(
    fd: int, parts: list[tuple[int, int | None]], *, dated: bool, named: frozenset[int]
) -> list[_Part]:
    """The file's parts checked at once, each by a forked process."""
    count = len(parts)
    with multiprocessing.get_context("fork").Pool(count) as pool:
        return pool.starmap(
            _check_part, [(fd, start, stop, dated, named, count) for start, stop in parts]
        )


def _read_back(checked: list[_Part]) -> list[_Read] | None:
    """The parts with the lines they kept read into records here; None if a part gave
    its trail up, or if a line its process read does not read here (a record nested
    near the recursion limit, which this process's deeper stack may not reach)."""
    read = []
    for part in checked:
        if part.kept is None:
            return None
        first = None if part.first is None else _parse(part.first)
        if part.first is not None and first is None:
            return None
        steps: list[Step] = []
        for line, kept in part.kept:
            record = kept if isinstance(kept, Dated) else _parse(kept)
            if record is None:
                return None
            steps.append((line, record))
        read.append(_Read(first, part.chain, part.found, steps))
    return read


def _join(
    checked: list[_Read],
    chain: _Chain,
    *,
    marked: bool,
    seals: SealCheck | None,
    witnessed: CheckpointCheck | None,
) -> _Found:
    """The parts linked in order: each part's first record must follow the last of the
    part before it, and what the seal and checkpoint checks need of the part is fed
    to them here."""
    before = 0  # lines in the parts before this one
    for number, part in enumerate(checked):
        if part.first is not None:
            problem = _link(part.first, chain.prev, chain.seq)
            if problem is None and number == 0 and marked:
                problem = _file_start(part.first)
            if problem is not None:
                return before + 1, problem
        replayed = replay(part.steps, seals, witnessed)
        if replayed is not None:
            line, problem, record = replayed
            chain.join(_Chain.before(record, line - 1, part.chain.first_seq))
            return before + line, problem
        chain.join(part.chain)
        if part.found is not None:
            return before + part.found[0], part.found[1]
        before += part.chain.count
    return None


@dataclass(frozen=True)
class _Part:
    """What a process found in its part: the first record's line (linked by the
    parent, which knows what precedes it), the chain through the part, the first
    problem, and what the part's trail kept (see trail.py; None: it outgrew its
    budget). Lines, never records, cross between the processes."""

    first: bytes | None
    chain: _Chain
    found: _Found
    kept: list[Kept] | None


@dataclass(frozen=True)
class _Read:
    """A _Part with its lines read into records again, in the parent."""

    first: dict[str, Any] | None
    chain: _Chain
    found: _Found
    steps: list[Step]


def _check_part(
    fd: int, start: int, stop: int | None, dated: bool, named: frozenset[int], parts: int
) -> _Part:
    # The file reopened through /proc: the same file, an offset of this process's own.
    with open(f"/proc/self/fd/{fd}", "rb") as handle:
        handle.seek(start)
        lines = enumerate(_until(handle, start, stop), start=1)
        chain = _Chain()
        trail = Trail(dated=dated, named=named, parts=parts)
        _, line = next(lines, (0, None))
        if line is None:
            return _Part(None, chain, None, trail.kept)
        first = _parse(line)
        problem = _content(first, line)
        if problem is not None:
            return _Part(None, chain, (1, problem), trail.kept)
        chain.extend(first)
        trail.feed(first, line)
        keeping = trail if dated or named else None
        found = _check_lines(lines, chain, marked=False, checks=[], trail=keeping)
        return _Part(line, chain, found, trail.kept)


def _until(handle: IO[bytes], at: int, stop: int | None) -> Iterator[bytes]:
    """The lines from `at` up to `stop` (None: to the end)."""
    if stop is None:
        yield from _lines(handle)
        return
    for line in _lines(handle):
        if at >= stop:
            return
        yield line
        at += len(line)
