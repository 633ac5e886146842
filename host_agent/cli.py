"""`host-agent` command line. One-line errors; tracebacks only with --debug."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import pwd
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from host_agent import __version__, certs, wrapper_config
from host_agent.adapters import build_registry
from host_agent.approvals.local_client import (
    DEFAULT_SOCKET,
    Connection,
    LocalApprovalUnavailable,
)
from host_agent.audit import verify
from host_agent.config import load_config
from host_agent.errors import ConfigError, HostAgentError
from host_agent.policy import decide, find_profile
from host_agent.request import HostOpRequest

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    options = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if options.debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result: int = options.handler(options)
        return result
    except ConfigError as exc:
        print(f"host-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except HostAgentError as exc:
        if options.debug:
            raise
        print(f"host-agent: error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="host-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"host-agent {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the agent")
    serve.add_argument("--config", required=True, type=Path)
    serve.add_argument(
        "--pid-file", type=Path, help="write the process id here while running (without systemd)"
    )
    serve.set_defaults(handler=_serve)

    check = commands.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("config", type=Path)
    check.set_defaults(handler=_check_config)

    cert = commands.add_parser("certs", help="manage the private CA, certificates and CRL")
    cert_commands = cert.add_subparsers(required=True, metavar="ACTION")
    init = cert_commands.add_parser("init", help="create CA, server certificate and empty CRL")
    init.add_argument("dir", type=Path)
    init.add_argument(
        "--name",
        action="append",
        dest="names",
        help="DNS name for the server certificate (repeatable; default localhost)",
    )
    init.add_argument(
        "--ip",
        action="append",
        dest="ips",
        help="IP address for the server certificate (default 127.0.0.1, ::1)",
    )
    init.add_argument("--force", action="store_true", help="overwrite existing files")
    init.set_defaults(handler=_certs_init)
    client = cert_commands.add_parser("client", help="issue a client certificate for CN")
    client.add_argument("dir", type=Path)
    client.add_argument("cn")
    client.add_argument("--days", type=int, default=365)
    client.add_argument("--force", action="store_true", help="overwrite existing files")
    client.set_defaults(handler=_certs_client)
    revoke = cert_commands.add_parser("revoke", help="revoke CN's certificate, rewrite the CRL")
    revoke.add_argument("dir", type=Path)
    revoke.add_argument("cn")
    revoke.set_defaults(handler=_certs_revoke)
    crl = cert_commands.add_parser(
        "crl", help="re-sign the CRL with a new next update (daily, before it expires)"
    )
    crl.add_argument("dir", type=Path)
    crl.add_argument(
        "--days",
        type=int,
        default=30,
        help=f"valid for this many days ({certs.MIN_CRL_DAYS}-{certs.MAX_CRL_DAYS}; default 30)",
    )
    crl.add_argument(
        "--create",
        action="store_true",
        help="make an empty CRL if DIR has none (a CA made elsewhere, e.g. by the predecessor)",
    )
    crl.set_defaults(handler=_certs_crl)

    policy = commands.add_parser("policy", help="inspect policy decisions")
    policy_commands = policy.add_subparsers(required=True, metavar="ACTION")
    explain = policy_commands.add_parser(
        "explain", help="print the decision for an operation without running it"
    )
    explain.add_argument("--config", required=True, type=Path)
    explain.add_argument("--cn", required=True)
    explain.add_argument("--kind", required=True)
    explain.add_argument("--resource", default="")
    explain.add_argument("--json", action="store_true", help="machine-readable output")
    explain.add_argument("args", nargs="+", metavar="ARGS", help="command and its arguments")
    explain.set_defaults(handler=_policy_explain)

    audit = commands.add_parser("audit", help="audit log tools")
    audit_commands = audit.add_subparsers(required=True, metavar="ACTION")
    check_chain = audit_commands.add_parser(
        "verify", help="check the hash chain through FILEs, oldest first"
    )
    check_chain.add_argument("files", nargs="+", type=Path)
    check_chain.set_defaults(handler=_audit_verify)

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

    wrappers = commands.add_parser(
        "wrappers-config", help="render the wrappers' root-owned allowlist file from a config"
    )
    wrappers.add_argument("--config", required=True, type=Path)
    wrappers.add_argument(
        "--output", type=Path, help="write here atomically (mode 0644) instead of stdout"
    )
    wrappers.set_defaults(handler=_wrappers_config)
    return parser


def _serve(options: argparse.Namespace) -> int:
    from host_agent.server import serve  # imported late: only `serve` needs Hypercorn

    serve(options.config, options.pid_file)
    return EXIT_OK


def _check_config(options: argparse.Namespace) -> int:
    config = load_config(options.config)
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    agents, rules = len(config.agents), len(config.rules)
    print(f"{options.config}: OK ({agents} agent profile(s), {rules} rule(s))")
    return EXIT_OK


def _certs_init(options: argparse.Namespace) -> int:
    certs.init_ca(
        options.dir,
        names=options.names or ["localhost"],
        ips=options.ips or ["127.0.0.1", "::1"],
        force=options.force,
    )
    print(
        f"{options.dir}: wrote {certs.CA_CERT}, {certs.CA_KEY}, {certs.SERVER_CERT}, "
        f"{certs.SERVER_KEY}, {certs.CRL}"
    )
    return EXIT_OK


def _certs_client(options: argparse.Namespace) -> int:
    cert_path, key_path = certs.issue_client(
        options.dir, options.cn, validity=certs.Validity.days(options.days), force=options.force
    )
    print(f"wrote {cert_path} and {key_path}")
    return EXIT_OK


def _certs_revoke(options: argparse.Namespace) -> int:
    serial = certs.revoke(options.dir, options.cn)
    print(f"revoked {options.cn} (serial {serial:x}); rewrote {options.dir / certs.CRL}")
    return EXIT_OK


def _certs_crl(options: argparse.Namespace) -> int:
    crl = certs.refresh_crl(options.dir, days=options.days, create=options.create)
    print(
        f"rewrote {options.dir / certs.CRL}: {len(crl)} revoked certificate(s), "
        f"next update {crl.next_update_utc:%Y-%m-%dT%H:%M:%SZ}; reload the agent to use it"
    )
    return EXIT_OK


def _policy_explain(options: argparse.Namespace) -> int:
    config = load_config(options.config)
    request = HostOpRequest(options.kind, options.resource, tuple(options.args))
    found = find_profile(config, options.cn)
    unix_user = found[1].unix_user if found is not None else ""
    operation = build_registry(config).adapter_for(options.kind).parse(request, unix_user)
    decision = decide(config, options.cn, operation)
    if options.json:
        print(
            json.dumps(
                {"operation": operation.name, "resource": operation.resource, **decision.as_dict()}
            )
        )
    else:
        print(f"operation: {operation.name} on {operation.resource or '(none)'}")
        print(f"decision:  {decision.effect.value} ({decision.code})")
        print(f"reason:    {decision.reason}")
        print(f"rule:      {decision.rule}")
        if decision.admin_only:
            print("approver:  admin only")
    return EXIT_OK


def _wrappers_config(options: argparse.Namespace) -> int:
    config = load_config(options.config)
    if options.output is None:
        sys.stdout.write(wrapper_config.render(config))
        return EXIT_OK
    try:
        wrapper_config.write(config, options.output)
    except OSError as exc:
        print(f"host-agent: cannot write {options.output}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {options.output}")
    return EXIT_OK


def _audit_verify(options: argparse.Namespace) -> int:
    result = verify(options.files)
    if result.ok:
        span = f"seq {result.first_seq}..{result.last_seq}" if result.records else "empty"
        print(f"OK: {result.records} records ({span}), head {result.head}")
        return EXIT_OK
    print(f"BROKEN after {result.records} good records: {result.error}")
    return EXIT_FAILED


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
