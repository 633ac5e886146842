"""The approval store's PostgreSQL schema: numbered migrations, applied by the operator's
role with `host-agent db upgrade`, never by an agent.

An agent's role gets only what it uses: it reads and writes approvals but cannot
delete one (the history of who approved what stays), and it cannot change the schema.
"""

from __future__ import annotations

from typing import Any

from psycopg import Connection, sql

# Each migration, in order; its number is its position + 1. Never edit one that shipped.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE approvals (
        id text PRIMARY KEY,
        host text NOT NULL,
        token_hash text NOT NULL UNIQUE,
        requester_cn text NOT NULL,
        requester_fingerprint text NOT NULL,
        requester_unix_user text NOT NULL,
        operation text NOT NULL,
        kind text NOT NULL,
        resource text NOT NULL,
        args jsonb NOT NULL,
        digest text NOT NULL,
        reason text,
        admin_only boolean NOT NULL,
        approvals_required integer NOT NULL,
        created_at double precision NOT NULL,
        expires_at double precision NOT NULL,
        status text NOT NULL
            CHECK (status IN ('pending', 'approved', 'denied', 'expired', 'consumed')),
        approvers jsonb NOT NULL,
        decided_by text,
        decided_at double precision,
        consumed_at double precision,
        metadata jsonb NOT NULL DEFAULT '[]'
    );
    CREATE INDEX approvals_open ON approvals (status, expires_at);
    CREATE TABLE replies (
        sender text NOT NULL,
        timestamp_ms bigint NOT NULL,
        seen_at double precision NOT NULL,
        PRIMARY KEY (sender, timestamp_ms)
    );
    """,
    # 2: the fleet's one Signal inbox (approvals/inbox.py). A reply is kept as its
    # verdict and token hash, never the token; its sender and time are its identity.
    """
    CREATE TABLE inbox (
        sender text NOT NULL,
        timestamp_ms bigint NOT NULL,
        approve boolean NOT NULL,
        token_hash text NOT NULL,
        received_at double precision NOT NULL,
        received_by text NOT NULL,
        claimed_by text,
        claimed_at double precision,
        applied_at double precision,
        outcome text,
        PRIMARY KEY (sender, timestamp_ms)
    );
    CREATE INDEX inbox_unapplied ON inbox (received_at) WHERE applied_at IS NULL;
    """,
    # 3: quote-replies and reactions name the approvers' message by its timestamp.
    """
    ALTER TABLE approvals ADD COLUMN message_ms bigint;
    CREATE INDEX approvals_message ON approvals (message_ms);
    ALTER TABLE inbox ALTER COLUMN token_hash DROP NOT NULL;
    ALTER TABLE inbox ADD COLUMN answers_ms bigint;
    """,
    # 4: a witness for the hosts' audit checkpoints; agents may only add to it.
    """
    CREATE TABLE audit_checkpoints (
        origin text NOT NULL,
        size bigint NOT NULL,
        head text NOT NULL,
        taken_at text NOT NULL,
        note text NOT NULL,
        received_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (origin, size)
    );
    """,
    # 5: the agent behind a proxy that an approval was asked for (on_behalf_of).
    """
    ALTER TABLE approvals ADD COLUMN on_behalf_of text;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

# What an agent's role may do, table by table.
AGENT_GRANTS = {
    "host_agent_schema": "SELECT",
    "approvals": "SELECT, INSERT, UPDATE",
    "replies": "SELECT, INSERT, DELETE",
    "inbox": "SELECT, INSERT, UPDATE",
    "audit_checkpoints": "INSERT",
}
# One lock id for every `db upgrade`, so two never interleave.
_UPGRADE_LOCK = 0x686F7374  # "host"


def installed_version(connection: Connection[Any]) -> int | None:
    """The schema version in the database; None when none is installed."""
    exists = connection.execute("SELECT to_regclass('host_agent_schema') IS NOT NULL").fetchone()
    if exists is None or not exists[0]:
        return None
    row = connection.execute("SELECT max(version) FROM host_agent_schema").fetchone()
    return None if row is None or row[0] is None else int(row[0])


def upgrade(connection: Connection[Any], agent_role: str) -> list[int]:
    """Apply every migration the database lacks and grant `agent_role` what agents use,
    in one transaction; the numbers applied (none when it was current)."""
    applied = []
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (_UPGRADE_LOCK,))
        connection.execute(
            "CREATE TABLE IF NOT EXISTS host_agent_schema ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current = installed_version(connection) or 0
        if current > SCHEMA_VERSION:
            raise SchemaTooNew(current)
        for number in range(current + 1, SCHEMA_VERSION + 1):
            connection.execute(MIGRATIONS[number - 1].encode())
            connection.execute("INSERT INTO host_agent_schema (version) VALUES (%s)", (number,))
            applied.append(number)
        role = sql.Identifier(agent_role)
        connection.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(role))
        for table, rights in AGENT_GRANTS.items():
            connection.execute(
                sql.SQL("REVOKE ALL ON {} FROM {}").format(sql.Identifier(table), role)
            )
            connection.execute(
                sql.SQL(f"GRANT {rights} ON {{}} TO {{}}").format(sql.Identifier(table), role)
            )
    return applied


class SchemaTooNew(Exception):
    """The database was upgraded by a newer host-agent than this one."""

    def __init__(self, version: int) -> None:
        super().__init__(
            f"the approval database has schema version {version}; this host-agent knows "
            f"up to {SCHEMA_VERSION}: upgrade host-agent on this host"
        )
