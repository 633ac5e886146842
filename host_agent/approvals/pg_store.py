"""The approval store on PostgreSQL, shared by every host of a fleet.

The same narrow interface as SQLite (approvals/store.py). `update` runs its change
under the row's lock (SELECT ... FOR UPDATE) in one transaction, so of two hosts
deciding the same approval one waits for the other and then sees its result.
`consume` is one conditional UPDATE ... RETURNING, with expiry on the database's
clock (or the host's, if that says it expired first): of any number of hosts using
one approval exactly one gets it, and no host's clock can stretch its life.
Everywhere else hosts go by `clock()`: this host's time corrected by the offset to
the database's, measured when the store opens and again, once a minute at most,
when the manager's sweep lists the open approvals (in a worker thread).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool, PoolTimeout

from host_agent.approvals.model import Approval, Status
from host_agent.approvals.pg_schema import SCHEMA_VERSION, installed_version
from host_agent.approvals.store import (
    Availability,
    Change,
    Claim,
    StoreError,
    from_row,
    to_row,
)

T = TypeVar("T")
log = logging.getLogger(__name__)
# Columns in the order of Approval's fields.
_FIELDS = (
    "id, token_hash, requester_cn, requester_fingerprint, requester_unix_user, operation, "
    "kind, resource, args, digest, reason, admin_only, approvals_required, created_at, "
    "expires_at, status, approvers, decided_by, decided_at, consumed_at, metadata, host, "
    "message_ms, on_behalf_of"
)
_SELECT = f"SELECT {_FIELDS} FROM approvals"  # noqa: S608 - our own column list
_MARKS = ", ".join(["%s"] * len(_FIELDS.split(", ")))
_INSERT = f"INSERT INTO approvals ({_FIELDS}) VALUES ({_MARKS})"  # noqa: S608
_UPDATE = f"UPDATE approvals SET ({_FIELDS}) = ({_MARKS}) WHERE id = %s"  # noqa: S608
_CONSUME = (  # noqa: S608 - our own column list
    "WITH clock AS (SELECT extract(epoch FROM clock_timestamp())::double precision AS now)"
    " UPDATE approvals SET status = 'consumed', consumed_at = clock.now FROM clock"
    " WHERE id = %s AND status = 'approved' AND requester_cn = %s"
    " AND requester_fingerprint = %s AND digest = %s"
    " AND on_behalf_of IS NOT DISTINCT FROM %s AND expires_at > greatest(clock.now, %s)"
    " RETURNING "
) + _FIELDS
# How long a caller waits for a pooled connection before the store counts as down.
CONNECT_TIMEOUT_SECONDS = 5.0
CLOCK_REFRESH_SECONDS = 60.0
# While the database is down, how often one call tries it again (the rest fail at once).
PROBE_SECONDS = 1.0
# How long the pool's reconnection backoff (1 s, doubling) may grow before it starts
# over: an agent is back at most about this long after its database is.
RECONNECT_SECONDS = 10.0
# Where agents hear that an approval changed (the payload is its id).
CHANNEL = "host_agent_approvals"


class PostgresStore:
    def __init__(self, conninfo: str, password: str | None) -> None:
        self.availability = Availability()
        self._offset = 0.0
        self._offset_measured = 0.0
        self._clock_lock = threading.Lock()
        self._probe_lock = threading.Lock()
        self._next_probe = 0.0
        extra: dict[str, Any] = {"connect_timeout": int(CONNECT_TIMEOUT_SECONDS)}
        if password is not None:
            extra["password"] = password
        self._conninfo, self._connect_options = conninfo, extra
        self._listening = False
        # Each connection is checked as it is handed out: after a database restart the
        # pool's old ones are dead, and the first call must not be the one that finds out.
        self._pool: ConnectionPool[psycopg.Connection[TupleRow]] = ConnectionPool(
            conninfo, kwargs=extra, min_size=1, max_size=8, open=False,
            timeout=CONNECT_TIMEOUT_SECONDS, name="host-agent-approvals",
            check=ConnectionPool.check_connection, reconnect_timeout=RECONNECT_SECONDS,
        )  # fmt: skip
        try:
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECONDS)
        except PoolTimeout as exc:
            self._pool.close()
            raise StoreError(f"cannot reach the approval database: {_reason(exc)}") from exc
        self._check_schema()
        self._measure_offset()

    def add(self, approval: Approval) -> None:
        self._run(lambda db: db.execute(_INSERT, to_row(approval)))

    def get(self, approval_id: str) -> Approval | None:
        return self._one(f"{_SELECT} WHERE id = %s", approval_id)

    def by_token(self, token_hash: str) -> Approval | None:
        return self._one(f"{_SELECT} WHERE token_hash = %s", token_hash)

    def by_message(self, message_ms: int) -> list[Approval]:
        rows = self._run(
            lambda db: db.execute(
                f"{_SELECT} WHERE message_ms = %s LIMIT 2", (message_ms,)
            ).fetchall()
        )
        return [from_row(row) for row in rows]

    def update(self, approval_id: str, change: Change) -> Approval:
        def locked(db: psycopg.Connection[TupleRow]) -> Approval:
            row = db.execute(f"{_SELECT} WHERE id = %s FOR UPDATE", (approval_id,)).fetchone()
            if row is None:
                raise KeyError(approval_id)
            updated = change(from_row(row))
            db.execute(_UPDATE, (*to_row(updated), approval_id))
            _notify(db, approval_id)
            return updated

        return self._run(locked)

    def consume(self, approval_id: str, claim: Claim) -> Approval | None:
        def conditional(db: psycopg.Connection[TupleRow]) -> Approval | None:
            row = db.execute(
                _CONSUME,
                (
                    approval_id,
                    claim.requester_cn,
                    claim.fingerprint,
                    claim.digest,
                    claim.on_behalf_of,
                    claim.now,
                ),
            ).fetchone()
            if row is None:
                return None
            _notify(db, approval_id)
            return from_row(row)

        return self._run(conditional)

    def listing(
        self, statuses: Iterable[Status], requester_cn: str | None = None
    ) -> list[Approval]:
        if time.monotonic() - self._offset_measured > CLOCK_REFRESH_SECONDS:
            self._measure_offset()  # the sweep lists every half minute: a thread, not the loop
        wanted = [status.value for status in statuses]
        rows = self._run(
            lambda db: db.execute(
                f"{_SELECT} WHERE status = ANY(%s) AND (%s::text IS NULL OR requester_cn = %s)"
                " ORDER BY created_at",
                (wanted, requester_cn, requester_cn),
            ).fetchall()
        )
        return [from_row(row) for row in rows]

    def count(self, status: Status) -> int:
        row = self._run(
            lambda db: db.execute(
                "SELECT count(*) FROM approvals WHERE status = %s", (status.value,)
            ).fetchone()
        )
        return 0 if row is None else int(row[0])

    def first_sighting(self, sender: str, timestamp_ms: int, now: float) -> bool:
        inserted = self._run(
            lambda db: (
                db.execute(
                    "INSERT INTO replies (sender, timestamp_ms, seen_at) VALUES (%s, %s, %s)"
                    " ON CONFLICT DO NOTHING",
                    (sender, timestamp_ms, now),
                ).rowcount
            )
        )
        return inserted == 1

    def purge(self, before: float) -> int:
        """Forget remembered replies older than `before`. Approvals are history: the
        agent's role cannot delete them (docs/fleet.md says how an operator prunes)."""
        self._run(lambda db: db.execute("DELETE FROM replies WHERE seen_at < %s", (before,)))
        return 0

    def clock(self) -> float:
        """Now, on the database's clock (never waits for the database)."""
        return time.time() + self._offset

    def listen(self, on_change: Callable[[str], None]) -> None:
        """Call `on_change(approval_id)`, from a thread of its own, whenever any agent
        changes an approval; reconnect after losing the database (what changed meanwhile
        is found by the callers' own polling)."""
        self._listening = True
        thread = threading.Thread(
            target=self._listen, args=(on_change,), name="approval-notifications", daemon=True
        )
        thread.start()

    def _listen(self, on_change: Callable[[str], None]) -> None:
        while self._listening:
            try:
                with self.connect() as db:
                    db.execute(f"LISTEN {CHANNEL}")
                    while self._listening:
                        for note in db.notifies(timeout=1.0):
                            on_change(note.payload)
            except (psycopg.Error, StoreError) as exc:
                log.warning("approval notifications: %s", exc)
                time.sleep(1.0)

    def close(self) -> None:
        self._listening = False
        self._pool.close()

    def _measure_offset(self) -> None:
        before = time.time()
        row = self._run(
            lambda db: db.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()
        )
        after = time.time()
        with self._clock_lock:
            self._offset = float(row[0]) - (before + after) / 2 if row else 0.0
            self._offset_measured = time.monotonic()

    def _check_schema(self) -> None:
        version = self._run(installed_version)
        if version is None:
            raise StoreError(
                "the approval database has no host-agent schema: run "
                "`host-agent db upgrade --config FILE` as its owner first"
            )
        if version != SCHEMA_VERSION:
            newer = version > SCHEMA_VERSION
            raise StoreError(
                f"the approval database has schema version {version}, this host-agent "
                f"needs {SCHEMA_VERSION}: "
                + ("upgrade host-agent on this host" if newer else "run `host-agent db upgrade`")
            )

    def _one(self, query: str, value: str) -> Approval | None:
        row = self._run(lambda db: db.execute(query, (value,)).fetchone())
        return None if row is None else from_row(row)

    def connect(self) -> psycopg.Connection[TupleRow]:
        """A connection of its own (autocommit), outside the pool: for what lives as long
        as the connection does (a session lock, LISTEN)."""
        try:
            return psycopg.connect(self._conninfo, autocommit=True, **self._connect_options)
        except psycopg.Error as exc:
            raise StoreError(f"approval database: {_reason(exc)}") from exc

    def run(self, work: Callable[[psycopg.Connection[TupleRow]], T]) -> T:
        """`work` in one transaction of its own (for the modules built on this store)."""
        return self._run(work)

    def _run(self, work: Callable[[psycopg.Connection[TupleRow]], T]) -> T:
        """`work` in one transaction on a pooled connection; database trouble is StoreError
        (and what /health says until a call succeeds again).

        While the database is known to be down, calls fail at once, and one call at a
        time (every PROBE_SECONDS) tries it: otherwise each would hold a worker thread
        for the pool's whole wait, and the agent's other work, the audit log's writes
        among it, would queue behind them."""
        self._wait_turn()
        try:
            with self._session() as db, db.transaction():
                result = work(db)
        except StoreError as exc:
            self.availability.failed(exc)
            raise
        self.availability.succeeded()
        return result

    def _wait_turn(self) -> None:
        if self.availability.failing is None:
            return
        with self._probe_lock:
            now = time.monotonic()
            if now < self._next_probe:
                raise StoreError(self.availability.failing)
            self._next_probe = now + CONNECT_TIMEOUT_SECONDS + PROBE_SECONDS

    @contextmanager
    def _session(self) -> Iterator[psycopg.Connection[TupleRow]]:
        try:
            with self._pool.connection() as db:
                yield db
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
            raise StoreError(f"approval database: {_reason(exc)}") from exc
        except psycopg.Error as exc:
            raise StoreError(f"approval database refused: {_reason(exc)}") from exc


def _notify(db: psycopg.Connection[TupleRow], approval_id: str) -> None:
    """Tell every listening agent (see `listen`) that the approval changed: delivered
    when the transaction commits, and not at all if it rolls back."""
    db.execute("SELECT pg_notify(%s, %s)", (CHANNEL, approval_id))


def _reason(error: Exception) -> str:
    """The first line of a database error: never the connection string."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
