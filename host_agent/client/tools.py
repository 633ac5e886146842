"""The tools of a caller's manifest (`GET /v1/tools/manifest`) and the requests their calls
stand for, for anything that lets a language model call the agent (`host-agent mcp`, a proxy).

A call of tool `t` with the model's arguments `a` is sent to `/host/op` as

    {"kind": t.kind, "resource": a.resource, "args": [t.command, *a.args], "reason": a.reason}

Only what that translation needs is checked here; the agent validates every value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from host_agent.client.errors import BadResponse, InvalidRequest
from host_agent.client.protocol import Fields
from host_agent.client.request import OpRequest

# What a model may pass: the parts of a request that are not the tool's own.
ARGUMENTS = ("resource", "args", "reason")


@dataclass(frozen=True)
class ManifestTool:
    """One tool of the manifest: what the model is shown, and the operation it names."""

    name: str
    description: str
    parameters: dict[str, Any]
    kind: str
    command: str
    mutating: bool


def manifest_tools(manifest: Mapping[str, Any]) -> dict[str, ManifestTool]:
    """The manifest's tools by name; BadResponse when it is not in the documented shape."""
    tools: dict[str, ManifestTool] = {}
    for entry in Fields(manifest, "manifest").get("tools", list):
        tool = Fields(entry, "manifest tool")
        function = Fields(tool.get("function", dict), "manifest tool function")
        operation = Fields(tool.get("x-host-agent", dict), "manifest tool x-host-agent")
        name = function.get("name", str)
        if name in tools:
            raise BadResponse(f"manifest: tool {name} is listed twice")
        tools[name] = ManifestTool(
            name=name,
            description=function.get("description", str),
            parameters=function.get("parameters", dict),
            kind=operation.get("kind", str),
            command=operation.get("command", str),
            mutating=operation.get("mutating", bool),
        )
    return tools


def request_for(tool: ManifestTool, arguments: Any) -> OpRequest:
    """The request a call of `tool` with `arguments` (a JSON object, None for none) stands for.

    InvalidRequest, naming the field, when the arguments cannot be translated: not an
    object, a name the request has no place for, a required one missing, `args` not a list.
    """
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, Mapping):
        raise InvalidRequest(
            f"the arguments of {tool.name} must be a JSON object",
            code="invalid_type",
            field="arguments",
        )
    unknown = sorted(set(arguments) - set(ARGUMENTS))
    if unknown:
        raise InvalidRequest(
            f"{tool.name} has no argument {unknown[0]!r} (only {', '.join(ARGUMENTS)})",
            code="unknown_field",
            field=unknown[0],
        )
    for name in tool.parameters.get("required", ()):
        if name not in arguments:
            raise InvalidRequest(f"{tool.name} needs {name!r}", code="missing_argument", field=name)
    args = arguments.get("args", [])
    if not isinstance(args, list):
        raise InvalidRequest("args must be a list of strings", code="invalid_type", field="args")
    return OpRequest.of(
        tool.kind, arguments.get("resource"), [tool.command, *args], arguments.get("reason")
    )
