"""`host-agent policy explain`: what policy decides, without running anything."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from host_agent.adapters import build_registry
from host_agent.cli.common import EXIT_OK, Commands
from host_agent.config import load_config
from host_agent.errors import TargetRefused
from host_agent.policy import decide, find_profile
from host_agent.request import HostOpRequest
from host_agent.root_equivalent import BUILT_IN_REFUSALS


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
    try:
        operation = build_registry(config).adapter_for(options.kind).parse(request, unix_user)
    except TargetRefused as exc:
        return _refused(options, exc)
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


def _refused(options: argparse.Namespace, refusal: TargetRefused) -> int:
    """The adapter refuses the target before policy is asked (built in or allowlist)."""
    name = f"{options.kind}-{options.args[0]}"
    rule = (
        "built-in: no configuration can allow it"
        if refusal.code in BUILT_IN_REFUSALS
        else f"adapter allowlist ([{options.kind}])"
    )
    if options.json:
        print(
            json.dumps(
                {
                    "operation": name,
                    "resource": options.resource,
                    "effect": "deny",
                    "code": refusal.code,
                    "reason": refusal.message,
                    "rule": rule,
                    "field": refusal.field,
                }
            )
        )
    else:
        print(f"operation: {name} on {options.resource or '(none)'}")
        print(f"decision:  deny ({refusal.code})")
        print(f"reason:    {refusal.message}")
        print(f"rule:      {rule}")
    return EXIT_OK
