"""`host-agent approve`: a local approver decides on this host, with their Unix password.

Listing asks the agent's socket directly: no secret is involved, and the agent
checks the caller's group itself. A decision runs the root helper through sudo
(host-agent-approve), which reads and checks the password itself, so the
password never reaches the agent's service account.
"""

from __future__ import annotations

import argparse
import subprocess  # noqa: TID251 -- the approver's own process starts sudo, not the agent
import sys
from pathlib import Path

from host_agent.approvals import display
from host_agent.approvals.local_client import (
    DEFAULT_SOCKET,
    Connection,
    LocalApprovalUnavailable,
)
from host_agent.cli.common import EXIT_UNAVAILABLE, EXIT_USAGE, Commands

DEFAULT_HELPER = Path("/usr/local/libexec/host-agent/host-agent-approve")
SUDO = "/usr/bin/sudo"


def register(commands: Commands) -> None:
    approve = commands.add_parser(
        "approve",
        help="approve or deny a pending operation on this host, with your password",
        description="Approve (or --deny) a pending operation as a member of the approvers "
        "group, authenticated with your Unix password, which only a root helper run through "
        "sudo reads and checks. Exit status: 0 done, 1 refused, 2 usage, 3 the agent cannot "
        "be reached or its socket is not trusted.",
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
        "--socket",
        type=Path,
        default=DEFAULT_SOCKET,
        help=f"for --list (decisions use the socket in wrappers.conf); default {DEFAULT_SOCKET}",
    )
    approve.add_argument(
        "--helper",
        type=Path,
        default=DEFAULT_HELPER,
        help=f"the root helper sudo lets approvers run; default {DEFAULT_HELPER}",
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
    if not options.list:
        return _decide(options)
    try:
        reply = Connection(options.socket).ask({"action": "list"})
    except LocalApprovalUnavailable as exc:
        print(f"host-agent: {display.clean(exc)}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return display.report(reply, as_json=options.json)


def _decide(options: argparse.Namespace) -> int:
    """Hand over to the root helper; it talks to the terminal and prints the outcome."""
    flags = [
        flag
        for flag, on in (("--password-stdin", options.password_stdin), ("--json", options.json))
        if on
    ]
    verdict = "deny" if options.deny else "approve"
    argv = [SUDO, "-n", "--", str(options.helper), *flags, verdict, "--", options.reference]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        done = subprocess.run(
            argv, stdin=sys.stdin, stdout=sys.stdout, stderr=sys.stderr, check=False
        )
    except OSError as exc:
        print(f"host-agent: cannot run {SUDO}: {exc.strerror}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return done.returncode
