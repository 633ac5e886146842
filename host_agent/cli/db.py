"""`host-agent db upgrade`: install or upgrade a fleet's approval schema, as its owner."""

from __future__ import annotations

import argparse
import dataclasses
import socket
from pathlib import Path

from host_agent.approvals.model import Status
from host_agent.approvals.store import SqliteStore, open_store
from host_agent.cli.common import EXIT_OK, Commands
from host_agent.config import load_config
from host_agent.errors import ConfigError, HostAgentError


class DatabaseError(HostAgentError):
    code = "database_upgrade_failed"


def register(commands: Commands) -> None:
    db = commands.add_parser("db", help="the fleet's approval database (PostgreSQL)")
    actions = db.add_subparsers(required=True, metavar="ACTION")
    upgrade = actions.add_parser(
        "upgrade",
        help="apply the schema migrations a database lacks and grant the agents' role",
        description="Connects to [approval] store_url's database as --owner (default: the "
        "libpq default, the Unix account running this) with the owner's own password "
        "(PGPASSWORD, PGPASSFILE or ~/.pgpass), never the agents' role. Safe to repeat.",
    )
    upgrade.add_argument("--config", required=True, type=Path)
    upgrade.add_argument("--owner", help="the database role that owns the schema")
    upgrade.set_defaults(handler=_upgrade)
    move = actions.add_parser(
        "import",
        help="copy a single host's open approvals from its SQLite file into the fleet's database",
        description="Reads [approval] store_path (or --from) and adds its pending and "
        "approved approvals to store_url's database, as the agents' role; one already "
        "there is left as it is. Run it once, with the agent stopped, after switching "
        "the host to store_url. The fleet must share this host's token_secret.",
    )
    move.add_argument("--config", required=True, type=Path)
    move.add_argument("--from", dest="source", type=Path, help="the SQLite file to read")
    move.set_defaults(handler=_import)


def _upgrade(options: argparse.Namespace) -> int:
    import psycopg  # a fleet host's dependency
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from host_agent.approvals.pg_schema import SCHEMA_VERSION, SchemaTooNew, upgrade

    config = load_config(options.config)
    url = config.approval.store_url
    if url is None:
        raise ConfigError(str(options.config), ["approval.store_url: is not set"])
    parameters = conninfo_to_dict(url)
    agent_role = parameters.pop("user", None)
    if not isinstance(agent_role, str):
        raise ConfigError(
            str(options.config), ["approval.store_url: must name the agents' role (user)"]
        )
    if options.owner is not None:
        parameters["user"] = options.owner
    try:
        with psycopg.connect(make_conninfo("", **parameters), autocommit=True) as connection:
            applied = upgrade(connection, agent_role)
    except (psycopg.Error, SchemaTooNew) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseError(reason) from exc
    done = f"applied {', '.join(map(str, applied))}" if applied else "nothing to apply"
    print(f"approval schema at version {SCHEMA_VERSION} ({done}); role {agent_role} granted")
    return EXIT_OK


def _import(options: argparse.Namespace) -> int:
    config = load_config(options.config)
    if config.approval.store_url is None:
        raise ConfigError(str(options.config), ["approval.store_url: is not set"])
    source_path: Path = options.source or config.approval.store_path
    if not source_path.is_file():
        raise DatabaseError(f"no approval store at {source_path}")
    source = SqliteStore(source_path)
    target, _ = open_store(config.approval)
    imported = present = 0
    try:
        for approval in source.listing((Status.PENDING, Status.APPROVED)):
            if target.get(approval.id) is not None:
                present += 1
                continue
            target.add(dataclasses.replace(approval, host=approval.host or socket.gethostname()))
            imported += 1
    finally:
        source.close()
        target.close()
    print(f"imported {imported} open approval(s) from {source_path}; {present} already there")
    return EXIT_OK
