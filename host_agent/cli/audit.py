"""`host-agent audit verify`: check the log's hash chain."""

from __future__ import annotations

import argparse
from pathlib import Path

from host_agent.audit import verify
from host_agent.cli.common import EXIT_FAILED, EXIT_OK, Commands


def register(commands: Commands) -> None:
    audit = commands.add_parser("audit", help="audit log tools")
    audit_commands = audit.add_subparsers(required=True, metavar="ACTION")
    check_chain = audit_commands.add_parser(
        "verify", help="check the hash chain through FILEs, oldest first"
    )
    check_chain.add_argument("files", nargs="+", type=Path)
    check_chain.set_defaults(handler=_verify)


def _verify(options: argparse.Namespace) -> int:
    result = verify(options.files)
    if result.ok:
        span = f"seq {result.first_seq}..{result.last_seq}" if result.records else "empty"
        print(f"OK: {result.records} records ({span}), head {result.head}")
        return EXIT_OK
    print(f"BROKEN after {result.records} good records: {result.error}")
    return EXIT_FAILED
