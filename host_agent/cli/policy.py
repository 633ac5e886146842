"""`host-agent policy explain`: what policy decides, without running anything."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from host_agent.adapters import build_registry
from host_agent.cli.common import EXIT_OK, Commands
from host_agent.config import load_config
from host_agent.policy import decide, find_profile
from host_agent.request import HostOpRequest


def register(commands: Commands) -> None:
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
    explain.set_defaults(handler=_explain)


def _explain(options: argparse.Namespace) -> int:
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
