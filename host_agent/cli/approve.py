"""`host-agent approve`: a local approver decides on this host, with their Unix password."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import pwd
import sys
from pathlib import Path
from typing import Any

from host_agent.approvals.local_client import (
    DEFAULT_SOCKET,
    Connection,
    LocalApprovalUnavailable,
)
from host_agent.cli.common import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, Commands


def register(commands: Commands) -> None:
    approve = commands.add_parser(
        "approve",
        help="approve or deny a pending operation on this host, with your password",
        description="Approve (or --deny) a pending operation as a member of the approvers "
        "group, authenticated with your Unix password. Exit status: 0 done, 1 refused, "
        "2 usage, 3 the agent cannot be reached or its socket is not trusted.",
    )
    approve.add_argument(
        "reference",
        nargs="?",
        metavar="TOKEN",
        help="the token from the approval message, or the approval id (ap-...)",
    )
    approve.add_argument("--deny", action="store_true", help="refuse the operation instead")
    approve.add_argument("--list", action="store_true", help="show open approvals instead")
    approve.add_argument(
        "--socket", type=Path, default=DEFAULT_SOCKET, help=f"default {DEFAULT_SOCKET}"
    )
    approve.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input",
    )
    approve.add_argument("--json", action="store_true", help="print the agent's reply as JSON")
    approve.set_defaults(handler=_approve)


def _approve(options: argparse.Namespace) -> int:
    if options.list == (options.reference is not None):
        print("host-agent approve: give a TOKEN (or approval id), or --list", file=sys.stderr)
        return EXIT_USAGE
    try:
        # Connected and checked before a password is typed: never to a dead or fake agent.
        connection = Connection(options.socket)
        if options.list:
            reply = connection.ask({"action": "list"})
        else:
            try:
                password = _read_password(options.password_stdin)
            except BaseException:
                connection.close()
                raise
            action = "deny" if options.deny else "approve"
            reply = connection.ask(
                {"action": action, "token": options.reference, "password": password}
            )
    except LocalApprovalUnavailable as exc:
        print(f"host-agent: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if options.json:
        print(json.dumps(reply, indent=2))
    elif not reply["ok"]:
        error = reply.get("error", {})
        print(f"host-agent: refused: {error.get('message')} ({error.get('code')})", file=sys.stderr)
    elif options.list:
        _print_open_approvals(reply["approvals"])
    else:
        print(_describe_decision(reply["approval"]))
    return EXIT_OK if reply["ok"] else EXIT_FAILED


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().removesuffix("\n")
    user = pwd.getpwuid(os.getuid()).pw_name
    return getpass.getpass(f"Password for {user}: ")


def _describe_decision(approval: dict[str, Any]) -> str:
    what = f"{approval['operation']} {approval['resource'] or ''}".rstrip()
    subject = f"{approval['approval_id']} ({what}, requested by {approval['requester']})"
    status = approval["status"]
    if status == "approved":
        return f"approved {subject}; it may run once before {approval['expires_at']}"
    if status == "denied":
        return f"denied {subject}"
    count, needed = len(approval["approvers"]), approval["approvals_required"]
    return f"vote recorded for {subject}: {count} of {needed} approvals"


def _print_open_approvals(approvals: list[dict[str, Any]]) -> None:
    if not approvals:
        print("no open approvals")
    for approval in approvals:
        print(
            f"{approval['approval_id']}  {approval['status']:<8}  {approval['operation']} "
            f"{approval['resource']}  by {approval['requester']}  until {approval['expires_at']}"
        )
        print(f"    args: {' '.join(approval['args']) or '(none)'}")
        print(f"    reason: {approval['reason'] or '(none given)'}")
