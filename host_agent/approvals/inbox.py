"""One Signal inbox for a fleet: exactly one agent reads the bridge, any agent applies.

signal-cli-rest-api's receive hands each message to whoever asks first (and removes
it), so agents sharing a Signal number must not all read it. The agents share the
approval database: the one holding a PostgreSQL advisory lock (a session lock on a
connection of its own, released the moment that agent or its connection dies) is the
only one that calls receive. It writes each APPROVE/DENY to the `inbox` table,
deduplicated by (sender, timestamp) and holding the token's hash only, before anything
acts on it. Every agent then claims unapplied rows (SKIP LOCKED: no two take the same)
and applies them; a claim left by an agent that died is taken again after
CLAIM_SECONDS, so a reply received is never lost with its reader.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg.rows import TupleRow

from host_agent.approvals.manager import ParsedReply
from host_agent.approvals.pg_store import PostgresStore
from host_agent.approvals.store import StoreError

# A claim older than this belonged to an agent that died while applying it.
CLAIM_SECONDS = 30.0
CLAIM_BATCH = 50


class SignalInbox:
    def __init__(self, store: PostgresStore, account: str, host: str) -> None:
        self.store = store
        self.host = host
        # One lock per Signal account, the same number on every agent.
        digest = hashlib.sha256(f"host-agent signal reader {account}".encode()).digest()
        self._lock_id = int.from_bytes(digest[:8], "big", signed=True)
        self._leader: psycopg.Connection[TupleRow] | None = None

    def lead(self) -> bool:
        """Whether this agent is the one that reads the bridge (taking the lock if it is
        free); a connection that died lets go of it."""
        if self._leader is not None:
            try:
                self._leader.execute("SELECT 1")
                return True
            except psycopg.Error:
                self.resign()
        connection = self.store.connect()
        try:
            row = connection.execute("SELECT pg_try_advisory_lock(%s)", (self._lock_id,)).fetchone()
        except psycopg.Error as exc:
            connection.close()
            raise StoreError(f"approval database: {exc}") from exc
        if row is not None and row[0]:
            self._leader = connection
            return True
        connection.close()
        return False

    def resign(self) -> None:
        """Stop reading: closing the connection releases the lock."""
        if self._leader is not None:
            leader, self._leader = self._leader, None
            leader.close()

    def keep(self, replies: Iterable[ParsedReply]) -> int:
        """Write what was received, before anything acts on it; the number that were new."""
        rows = [
            (
                r.sender,
                r.timestamp_ms,
                r.approve,
                r.token_hash,
                r.answers_ms,
                time.time(),
                self.host,
            )
            for r in replies
        ]
        if not rows:
            return 0

        def insert(db: psycopg.Connection[TupleRow]) -> int:
            new = 0
            for row in rows:
                new += db.execute(
                    "INSERT INTO inbox (sender, timestamp_ms, approve, token_hash, answers_ms,"
                    " received_at, received_by) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT DO NOTHING",
                    row,
                ).rowcount
            return new

        return self.store.run(insert)

    def claim(self) -> list[ParsedReply]:
        """Unapplied replies no live agent is applying, now this agent's to apply."""
        now = time.time()

        def take(db: psycopg.Connection[TupleRow]) -> list[Any]:
            return db.execute(
                "UPDATE inbox SET claimed_by = %s, claimed_at = %s WHERE (sender, timestamp_ms)"
                " IN (SELECT sender, timestamp_ms FROM inbox WHERE applied_at IS NULL AND"
                " (claimed_at IS NULL OR claimed_at < %s) ORDER BY received_at LIMIT %s"
                " FOR UPDATE SKIP LOCKED)"
                " RETURNING sender, timestamp_ms, approve, token_hash, answers_ms",
                (self.host, now, now - CLAIM_SECONDS, CLAIM_BATCH),
            ).fetchall()

        return [ParsedReply(*row) for row in self.store.run(take)]

    def applied(self, reply: ParsedReply, outcome: str) -> None:
        self.store.run(
            lambda db: db.execute(
                "UPDATE inbox SET applied_at = %s, outcome = %s"
                " WHERE sender = %s AND timestamp_ms = %s",
                (time.time(), outcome, reply.sender, reply.timestamp_ms),
            )
        )
