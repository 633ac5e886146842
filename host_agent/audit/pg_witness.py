"""The fleet's PostgreSQL as a checkpoint witness: an append-only table
(`audit_checkpoints`) that the agents' role may only INSERT into, so a host can
add its checkpoints but never take one back or read another host's."""

from __future__ import annotations

from typing import Any

from host_agent.audit.checkpoint import Checkpoint
from host_agent.audit.witness import WitnessError

CONNECT_TIMEOUT_SECONDS = 5
_INSERT = (
    "INSERT INTO audit_checkpoints (origin, size, head, taken_at, note)"
    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
)


class PostgresWitness:
    name = "postgresql"

    def __init__(self, conninfo: str, password: str | None) -> None:
        self._conninfo = conninfo
        self._options: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
        if password is not None:
            self._options["password"] = password

    def ship(self, note: str, checkpoint: Checkpoint) -> None:
        import psycopg  # a fleet host's dependency

        row = (checkpoint.origin, checkpoint.size, checkpoint.head, checkpoint.time, note)
        try:
            with psycopg.connect(self._conninfo, autocommit=True, **self._options) as db:
                db.execute(_INSERT, row)  # a checkpoint shipped twice is kept once
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WitnessError(f"PostgreSQL: {first}") from exc


def read_notes(conninfo: str, origin: str | None = None) -> list[str]:
    """Every checkpoint note the witness holds (for one origin), oldest first: for the
    operator's `audit verify --checkpoints`, connecting as a role that may read them."""
    import psycopg

    with psycopg.connect(conninfo, connect_timeout=CONNECT_TIMEOUT_SECONDS) as db:
        rows = db.execute(
            "SELECT note FROM audit_checkpoints WHERE %s::text IS NULL OR origin = %s"
            " ORDER BY origin, size",
            (origin, origin),
        ).fetchall()
    return [str(row[0]) for row in rows]
