"""`host-agent op`: one operation from the command line, for people and for scripts.

    host-agent op zfs list tank
    host-agent op zfs destroy tank/media@old --reason "free space" --wait
    host-agent op --follow ap-0123456789abcdef --wait

The agent, certificate, key and CA come from the options, else HOST_AGENT_*, else the
client config file (see `ClientConfig.load`), so an agent's wrapper script stays short.
"""

from __future__ import annotations

import argparse

from host_agent.cli.common import Commands
from host_agent.cli.connection import EXIT_STATUSES, add_connection_arguments, client_config
from host_agent.cli.op_output import Output, output_for
from host_agent.client import (
    Client,
    ClientConfigError,
    ClientError,
    DryRun,
    OperationResult,
    PendingApproval,
)


def register(commands: Commands) -> None:
    op = commands.add_parser(
        "op",
        help="ask an agent for one operation, as a client with a certificate",
        description=__doc__,
        epilog="exit status:\n"
        + "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_STATUSES),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    op.add_argument("kind", nargs="?", help="adapter: zfs, systemd, pct, git, exec")
    op.add_argument("command", nargs="?", help="the adapter's command, e.g. list, destroy")
    op.add_argument("resource", nargs="?", help="dataset, unit, container, repository, ...")
    op.add_argument(
        "args",
        nargs="*",
        metavar="ARG",
        help="the command's arguments (after -- if one starts with -; options then go first)",
    )
    op.add_argument("--reason", help="why, shown to the approvers and kept in the audit log")
    op.add_argument("--dry-run", action="store_true", help="show the decision and argv only")
    op.add_argument(
        "--follow",
        metavar="APPROVAL_ID",
        help="instead of a new request: the approved operation of an earlier approval",
    )
    op.add_argument(
        "--wait",
        action="store_true",
        help="if a human must approve, wait for the answer, then run it (default: exit 7)",
    )
    op.add_argument(
        "--max-wait", type=float, metavar="SECONDS", help="wait at most this long (implies --wait)"
    )
    op.add_argument("--poll-interval", type=float, default=2.0, metavar="SECONDS", help="default 2")
    op.add_argument("--json", action="store_true", help="one JSON document on stdout")
    op.add_argument(
        "-p",
        "--exact",
        action="store_true",
        help="exact numbers in people's output (bytes, not 1.23M), like zfs's -p",
    )
    add_connection_arguments(op)
    op.set_defaults(handler=_op)


def _op(options: argparse.Namespace) -> int:
    output = output_for(options.json, exact=options.exact)
    problem = _usage_problem(options)
    if problem:
        return output.usage(f"host-agent op: {problem}")
    try:
        config = client_config(options)
    except ClientConfigError as exc:
        return output.usage(exc.message)
    with Client(config) as client:
        try:
            return _run(client, options, output)
        except ClientError as exc:
            return output.error(exc)


def _run(client: Client, options: argparse.Namespace, output: Output) -> int:
    waiting = options.wait or options.max_wait is not None
    if options.follow is not None:
        outcome: OperationResult | DryRun | PendingApproval = client.follow(options.follow)
    else:
        outcome = client.run(
            options.kind,
            options.resource,
            [options.command, *options.args],
            options.reason,
            dry_run=options.dry_run,
        )
    if isinstance(outcome, PendingApproval):
        if not waiting and options.follow is None:
            return output.pending(outcome, final=True)
        output.pending(outcome, final=False)
        # Without --wait, following looks once: an approved operation runs, else it says so.
        outcome = outcome.wait(
            timeout=options.max_wait if waiting else 0,
            poll_interval=options.poll_interval,
            on_status=output.progress,
        )
    if isinstance(outcome, OperationResult):
        return output.result(outcome)
    return output.dry_run(outcome)


def _usage_problem(options: argparse.Namespace) -> str | None:
    """What is wrong with the command line before anything is sent."""
    named = [options.kind, options.command, options.resource]
    if options.follow is not None:
        if any(value is not None for value in named) or options.args:
            return "--follow takes no KIND COMMAND RESOURCE: the approval names its operation"
        if options.dry_run or options.reason is not None:
            return "--follow cannot be combined with --dry-run or --reason"
    elif None in named:
        return "give KIND COMMAND RESOURCE [ARG ...], e.g. `zfs list tank`, or --follow ID"
    if options.max_wait is not None and options.max_wait < 0:
        return "--max-wait must not be negative"
    if options.poll_interval <= 0:
        return "--poll-interval must be positive"
    return None
