"""Where approvals live: a small interface, and SQLite behind it by default.

The interface is deliberately narrow (add, read, one atomic read-modify-write,
one conditional consume, list, replay memory, purge) so a shared database can
back it for a fleet: every state rule lives in the manager as a pure function
handed to `update`, which a backend must run atomically against concurrent
callers. Using a granted approval is the one rule a backend states itself, as a
single conditional statement, so that it holds across hosts on the database's
own clock.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from host_agent.approvals.model import Approval, Status
from host_agent.config import ApprovalConfig
from host_agent.errors import HostAgentError
from host_agent.trusted_path import changeable_by_others

Change = Callable[[Approval], Approval]


class StoreError(HostAgentError):
    """The approval store cannot be read or written: nothing that needs it proceeds."""

    status = 503
    code = "approval_store_unavailable"


class Availability:
    """Whether the store's last call failed, and why: /health reports it until a call
    succeeds again; `on_failure` (a metric) counts each failure."""

    def __init__(self) -> None:
        self.failing: str | None = None
        self.on_failure: Callable[[], None] = lambda: None

    def failed(self, error: StoreError) -> None:
        self.failing = str(error)
        self.on_failure()

    def succeeded(self) -> None:
        self.failing = None


@dataclass(frozen=True)
class Claim:
    """Who is using a granted approval and for what: the certificate that asked for it,
    the operation's digest, and the caller's time (a backend with a clock of its own,
    the fleet's database, goes by whichever of the two says it expired first)."""

    requester_cn: str
    fingerprint: str
    digest: str
    now: float
    on_behalf_of: str | None = None


class ApprovalStore(Protocol):
    availability: Availability

    def add(self, approval: Approval) -> None: ...

    def get(self, approval_id: str) -> Approval | None: ...

    def by_token(self, token_hash: str) -> Approval | None: ...

    def by_message(self, message_ms: int) -> list[Approval]:
        """The approvals whose approvers' message Signal stamped `message_ms`."""
        ...

    def update(self, approval_id: str, change: Change) -> Approval:
        """Apply `change` to the current record atomically; it may raise to refuse."""
        ...

    def consume(self, approval_id: str, claim: Claim) -> Approval | None:
        """Mark the approval consumed in one conditional statement, if it is approved,
        unexpired on the store's clock and was granted for `claim`; None if it is not
        (the caller reads it to say why)."""
        ...

    def listing(
        self, statuses: Iterable[Status], requester_cn: str | None = None
    ) -> list[Approval]: ...

    def count(self, status: Status) -> int: ...

    def first_sighting(self, sender: str, timestamp_ms: int, now: float) -> bool:
        """Remember one reply; False if this sender's message was seen before (a replay)."""
        ...

    def purge(self, before: float) -> int: ...

    def listen(self, on_change: Callable[[str], None]) -> None:
        """Have `on_change(approval_id)` called when another agent changes an approval."""
        ...

    def close(self) -> None: ...


def open_store(config: ApprovalConfig) -> tuple[ApprovalStore, Callable[[], float]]:
    """The fleet's PostgreSQL store when store_url is set, with its clock (the database
    decides expiry); else this host's SQLite file and this host's clock."""
    if config.store_url is None:
        return SqliteStore(config.store_path), time.time
    from host_agent.approvals.pg_store import PostgresStore  # psycopg: fleet hosts only

    store = PostgresStore(config.store_url, read_password(config.store_password_file))
    return store, store.clock


def read_password(path: Path | None) -> str | None:
    """A database password from its file (one line), or None for libpq's own ways."""
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").rstrip("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"cannot read approval.store_password_file {path}: {exc}") from exc


_SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    requester_cn TEXT NOT NULL,
    requester_fingerprint TEXT NOT NULL,
    requester_unix_user TEXT NOT NULL,
    operation TEXT NOT NULL,
    kind TEXT NOT NULL,
    resource TEXT NOT NULL,
    args TEXT NOT NULL,
    digest TEXT NOT NULL,
    reason TEXT,
    admin_only INTEGER NOT NULL,
    approvals_required INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    status TEXT NOT NULL,
    approvers TEXT NOT NULL,
    decided_by TEXT,
    decided_at REAL,
    consumed_at REAL,
    metadata TEXT NOT NULL DEFAULT '[]',
    host TEXT NOT NULL DEFAULT '',
    message_ms INTEGER,
    on_behalf_of TEXT
);
CREATE INDEX IF NOT EXISTS approvals_status ON approvals (status, expires_at);
CREATE TABLE IF NOT EXISTS replies (
    sender TEXT NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    seen_at REAL NOT NULL,
    PRIMARY KEY (sender, timestamp_ms)
);
"""
_COLUMNS = (
    "id, token_hash, requester_cn, requester_fingerprint, requester_unix_user, operation, kind, "
    "resource, args, digest, reason, admin_only, approvals_required, created_at, expires_at, "
    "status, approvers, decided_by, decided_at, consumed_at, metadata, host, message_ms, "
    "on_behalf_of"
)


class SqliteStore:
    """One SQLite file (0600, WAL, synchronous FULL); calls are serialised by a lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.availability = Availability()
        self._lock = threading.Lock()
        try:
            _create_private(path)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
            _add_missing_columns(self._db)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open approval store {path}: {exc}") from exc

    def add(self, approval: Approval) -> None:
        with self._transaction() as db:
            db.execute(_INSERT, to_row(approval))

    def get(self, approval_id: str) -> Approval | None:
        return self._one(f"{_SELECT} WHERE id = ?", (approval_id,))

    def by_token(self, token_hash: str) -> Approval | None:
        return self._one(f"{_SELECT} WHERE token_hash = ?", (token_hash,))

    def by_message(self, message_ms: int) -> list[Approval]:
        with self._locked() as db:
            rows = db.execute(f"{_SELECT} WHERE message_ms = ? LIMIT 2", (message_ms,)).fetchall()
        return [from_row(row) for row in rows]

    def update(self, approval_id: str, change: Change) -> Approval:
        with self._transaction() as db:
            row = db.execute(f"{_SELECT} WHERE id = ?", (approval_id,)).fetchone()
            if row is None:
                raise KeyError(approval_id)
            updated = change(from_row(row))
            db.execute(_UPDATE, (*to_row(updated), approval_id))
            return updated

    def consume(self, approval_id: str, claim: Claim) -> Approval | None:
        who = (claim.requester_cn, claim.fingerprint, claim.digest, claim.on_behalf_of)
        with self._transaction() as db:
            row = db.execute(_CONSUME, (claim.now, approval_id, *who, claim.now)).fetchone()
        return None if row is None else from_row(row)

    def listing(
        self, statuses: Iterable[Status], requester_cn: str | None = None
    ) -> list[Approval]:
        wanted = json.dumps([status.value for status in statuses])
        with self._locked() as db:
            rows = db.execute(_LISTING, (wanted, requester_cn, requester_cn)).fetchall()
        return [from_row(row) for row in rows]

    def count(self, status: Status) -> int:
        with self._locked() as db:
            row = db.execute(
                "SELECT COUNT(*) FROM approvals WHERE status = ?", (status.value,)
            ).fetchone()
        return int(row[0])

    def first_sighting(self, sender: str, timestamp_ms: int, now: float) -> bool:
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO replies (sender, timestamp_ms, seen_at) VALUES (?, ?, ?)",
                (sender, timestamp_ms, now),
            )
            return cursor.rowcount == 1

    def purge(self, before: float) -> int:
        """Forget closed approvals and remembered replies older than `before`."""
        closed = (Status.DENIED.value, Status.EXPIRED.value, Status.CONSUMED.value)
        with self._transaction() as db:
            removed = db.execute(
                "DELETE FROM approvals WHERE status IN (?, ?, ?) AND expires_at < ?",
                (*closed, before),
            ).rowcount
            db.execute("DELETE FROM replies WHERE seen_at < ?", (before,))
        return removed

    def listen(self, on_change: Callable[[str], None]) -> None:
        """One host's file: every change is made by this agent, which knows of it."""

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _one(self, query: str, parameters: tuple[str, ...]) -> Approval | None:
        with self._locked() as db:
            row = db.execute(query, parameters).fetchone()
        return None if row is None else from_row(row)

    def _locked(self) -> _Session:
        return _Session(self, transaction=False)

    def _transaction(self) -> _Session:
        return _Session(self, transaction=True)


class _Session:
    """The lock, an IMMEDIATE transaction when writing, and sqlite3 errors as StoreError."""

    def __init__(self, store: SqliteStore, *, transaction: bool) -> None:
        self.store = store
        self.transaction = transaction

    def __enter__(self) -> sqlite3.Connection:
        self.store._lock.acquire()
        try:
            if self.transaction:
                self.store._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self.store._lock.release()
            raise self._failure(exc) from exc
        return self.store._db

    def __exit__(self, kind: object, error: BaseException | None, trace: object) -> None:
        try:
            if self.transaction:
                self.store._db.execute("COMMIT" if error is None else "ROLLBACK")
        except sqlite3.Error as exc:
            raise self._failure(exc) from exc
        finally:
            self.store._lock.release()
        if isinstance(error, sqlite3.Error):
            raise self._failure(error) from error
        if error is None:
            self.store.availability.succeeded()

    def _failure(self, error: sqlite3.Error) -> StoreError:
        failure = StoreError(f"approval store {self.store.path}: {error}")
        self.store.availability.failed(failure)
        return failure


_MARKS = ", ".join("?" * len(_COLUMNS.split(", ")))
# By name, never `*`: a column an upgrade added lands where ALTER TABLE put it.
_SELECT = f"SELECT {_COLUMNS} FROM approvals"  # noqa: S608
_WHERE_LISTED = (
    " WHERE status IN (SELECT value FROM json_each(?))"
    " AND (? IS NULL OR requester_cn = ?) ORDER BY created_at"
)
_LISTING = _SELECT + _WHERE_LISTED
# Only our own column list and '?' marks are interpolated, never a value.
_INSERT = f"INSERT INTO approvals ({_COLUMNS}) VALUES ({_MARKS})"  # noqa: S608
_UPDATE = f"UPDATE approvals SET ({_COLUMNS}) = ({_MARKS}) WHERE id = ?"  # noqa: S608
_CONSUME = (  # noqa: S608
    "UPDATE approvals SET status = 'consumed', consumed_at = ? WHERE id = ?"
    " AND status = 'approved' AND requester_cn = ? AND requester_fingerprint = ?"
    " AND digest = ? AND on_behalf_of IS ? AND expires_at > ? RETURNING "
) + _COLUMNS


def _create_private(path: Path) -> None:
    """Create the file 0600 before SQLite does (its WAL files copy its mode).

    SQLite opens the name through any link (Python cannot ask it not to), so the
    name must be out of everyone else's reach: in directories only root and this
    process's account can change, root's alone when the process is root. Otherwise
    the service account could point a root agent's store at any file, or at a file
    yet to exist (a new file in /etc/cron.d holding the requests' text). The file is
    then opened without following a link, and must be a regular file.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    trusted = (0,) if os.geteuid() == 0 else (0, os.geteuid())
    changeable = changeable_by_others(path, trusted)
    if changeable is not None:
        whose = "root's" if trusted == (0,) else "root's or this account's"
        raise StoreError(
            f"refusing the approval store {path}: {changeable} is not {whose} alone, and "
            "SQLite would follow a link planted there (make it so, or run as its owner)"
        )
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        descriptor = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreError(f"refusing the approval store {path}: it is a link") from None
        raise
    try:
        regular = stat.S_ISREG(os.fstat(descriptor).st_mode)
    finally:
        os.close(descriptor)
    if not regular:
        raise StoreError(f"refusing the approval store {path}: not a regular file")


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """A store an earlier release made lacks the columns added since: add them."""
    present = {row[1] for row in db.execute("PRAGMA table_info(approvals)")}
    for column, declaration in (
        ("metadata", "TEXT NOT NULL DEFAULT '[]'"),
        ("host", "TEXT NOT NULL DEFAULT ''"),
        ("message_ms", "INTEGER"),
        ("on_behalf_of", "TEXT"),
    ):
        if column not in present:
            db.execute(f"ALTER TABLE approvals ADD COLUMN {column} {declaration}")


def to_row(approval: Approval) -> tuple[object, ...]:
    """An approval as the stores keep it: its fields in order, lists as JSON text."""
    return (
        approval.id,
        approval.token_hash,
        approval.requester_cn,
        approval.requester_fingerprint,
        approval.requester_unix_user,
        approval.operation,
        approval.kind,
        approval.resource,
        json.dumps(list(approval.args)),
        approval.digest,
        approval.reason,
        approval.admin_only,
        approval.approvals_required,
        approval.created_at,
        approval.expires_at,
        approval.status.value,
        json.dumps(list(approval.approvers)),
        approval.decided_by,
        approval.decided_at,
        approval.consumed_at,
        json.dumps([list(pair) for pair in approval.metadata]),
        approval.host,
        approval.message_ms,
        approval.on_behalf_of,
    )


def from_row(row: Sequence[object]) -> Approval:
    """The approval back from a row of `to_row`'s columns (JSON as text, or decoded)."""
    values: list[Any] = list(row)
    for index in (8, 16, 20):  # args, approvers, metadata
        value = values[index]
        values[index] = tuple(json.loads(value) if isinstance(value, str) else value)
    values[20] = tuple(tuple(pair) for pair in values[20])
    values[11] = bool(values[11])
    values[15] = Status(str(values[15]))
    return Approval(*values)
