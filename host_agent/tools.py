"""The tool manifest: one OpenAI-style function tool per operation a caller may request.

`GET /v1/tools/manifest` answers it for the caller's CN under the live config. A tool
is listed when policy could allow the operation (at once or after a human approves)
for some resource, and the adapter could accept some request for it; its parameters
are the adapter's JSON Schema, built from the constants its validation uses. A client
turns a call into `/host/op`:

    {"kind": x.kind, "resource": params.resource, "args": [x.command, *params.args],
     "reason": params.reason}

where `x` is the tool's `x-host-agent` object.
"""

from __future__ import annotations

from typing import Any

from host_agent.adapters import Registry
from host_agent.config import AgentProfile, Config
from host_agent.errors import PolicyDenied
from host_agent.operations import ApprovalNeed
from host_agent.policy import find_profile, narrowed, offer, unknown_caller

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

_APPROVAL_NOTES = {
    ApprovalNeed.NEVER: "",
    ApprovalNeed.ALWAYS: " Runs only after a human approves it: the agent answers 202 "
    "pending first.",
    ApprovalNeed.DEPENDS: " May need a human's approval, depending on the resource.",
}


def build_manifest(
    config: Config,
    registry: Registry,
    cn: str,
    *,
    approvals_enabled: bool,
    on_behalf_of: AgentProfile | None = None,
) -> dict[str, Any]:
    """The tools `cn` may call (acting for the agent of profile `on_behalf_of`: those
    both may); PolicyDenied (unknown_cn) when no profile matches."""
    found = find_profile(config, cn)
    if found is None:
        denied = unknown_caller(cn)
        raise PolicyDenied(denied.code, denied.reason)
    profile = found[1]
    tools: list[dict[str, Any]] = []
    for adapter in registry.values():
        for command, mutating in adapter.commands.items():
            name = f"{adapter.kind}-{command}"
            forced = adapter.forced_approval(command)
            offered = offer(config, profile, name, mutating=mutating, forced_approval=forced)
            if on_behalf_of is not None:
                offered = narrowed(
                    offered,
                    offer(config, on_behalf_of, name, mutating=mutating, forced_approval=forced),
                )
            if offered is None or (
                offered.approval is ApprovalNeed.ALWAYS and not approvals_enabled
            ):
                continue
            parameters = adapter.tool_parameters(command, recursive=offered.recursive)
            if parameters is None:
                continue
            description = adapter.summaries[command] + _APPROVAL_NOTES[offered.approval]
            for patterns in (offered.resource_patterns, offered.agent_resource_patterns):
                if patterns:
                    description += (
                        " This agent may use it only on a resource that fully matches one "
                        "of: " + ", ".join(patterns) + "."
                    )
            tools.append(
                {
                    "type": "function",
                    "function": {
                        "name": name,
                        "description": description,
                        "parameters": parameters,
                    },
                    "x-host-agent": {
                        "kind": adapter.kind,
                        "command": command,
                        "mutating": mutating,
                        "approval": offered.approval.value,
                        "resource_patterns": list(offered.resource_patterns),
                        **(
                            {"agent_resource_patterns": list(offered.agent_resource_patterns)}
                            if on_behalf_of is not None
                            else {}
                        ),
                    },
                }
            )
    tools.sort(key=lambda tool: tool["function"]["name"])
    return {
        "cn": cn,
        "agent_type": profile.agent_type,
        "autonomy": profile.autonomy.value,
        "approvals_enabled": approvals_enabled,
        "schema_dialect": SCHEMA_DIALECT,
        "tools": tools,
    }
