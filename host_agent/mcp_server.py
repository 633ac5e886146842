"""`host-agent mcp`: the agent's tools for a language model, over the Model Context Protocol.

One MCP tool per tool of the caller's manifest, fetched again for every listing and call
so a policy reload shows at once, plus `check_approval`. A call becomes `/host/op` through
the async client. Answers, and the client's typed errors, come back as tool results (a
summary and the JSON for the model, the same JSON as structured content): a refusal is
something the model reads and corrects, never a crashed server. An operation that needs
a human does not block the session: the model gets the approval id and asks again later.
The standard output is the protocol; logs go to the standard error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Mapping
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

from host_agent import __version__
from host_agent.approvals.model import APPROVAL_ID
from host_agent.client import (
    ApprovalStatus,
    ApprovalTicket,
    AsyncClient,
    AsyncPendingApproval,
    BadResponse,
    ClientConfig,
    ClientError,
    InvalidRequest,
    OperationResult,
    RateLimited,
    StillPending,
)
from host_agent.client.tools import ManifestTool, manifest_tools, request_for

logger = logging.getLogger(__name__)

# Manifest tools are named "<kind>-<command>": with an underscore and no dash, this one
# cannot be mistaken for any of them (and a manifest that had it would be refused).
CHECK_APPROVAL = "check_approval"

INSTRUCTIONS = (
    "These tools run operations on a host through host-agent, under its policy. An "
    "operation that needs a human's approval answers status 'pending' with an approval_id: "
    f"call {CHECK_APPROVAL} with that id later to learn the decision (once approved, it "
    "runs the operation and returns its result). Never call the original tool again for "
    "it, that would ask for a second approval. An error result names its code and the "
    "argument at fault."
)

_CHECK_APPROVAL_TOOL = types.Tool(
    name=CHECK_APPROVAL,
    description=(
        "Check an approval an operation is waiting for. Pending: says so, with the time "
        "left. Approved: runs the operation (once) and returns its result. Denied, expired "
        "or already used: an error with code approval_denied, approval_expired or "
        "approval_consumed."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "approval_id": {
                "type": "string",
                "pattern": f"^{APPROVAL_ID.pattern}$",
                "description": "The approval_id of a 'pending' answer, e.g. ap-0123456789abcdef",
            }
        },
        "required": ["approval_id"],
        "additionalProperties": False,
    },
    annotations=types.ToolAnnotations(read_only_hint=False),
)

Context = ServerRequestContext[Any]


class HostTools:
    """The MCP handlers: tools listed and called through one AsyncClient."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    async def manifest(self) -> dict[str, ManifestTool]:
        """The caller's tools as the agent lists them now."""
        tools = manifest_tools(await self.client.manifest())
        if CHECK_APPROVAL in tools:
            raise BadResponse(f"manifest: a tool is named {CHECK_APPROVAL}, as this server's own")
        return tools

    async def list_tools(
        self, ctx: Context, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        try:
            tools = await self.manifest()
        except ClientError as exc:  # the host shows it; there is no tool result to put it in
            raise MCPError(types.INTERNAL_ERROR, f"host-agent manifest: {exc}") from exc
        listed = [_mcp_tool(tool) for tool in tools.values()]
        return types.ListToolsResult(tools=[*listed, _CHECK_APPROVAL_TOOL])

    async def call_tool(
        self, ctx: Context, params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        try:
            if params.name == CHECK_APPROVAL:
                return await self.check_approval(params.arguments)
            return await self.run(params.name, params.arguments)
        except ClientError as exc:
            logger.info("%s: %s", params.name, exc)
            return _error_result(exc)

    async def run(self, name: str, arguments: Any) -> types.CallToolResult:
        """Call manifest tool `name`; a tool this caller is not offered sends nothing."""
        tools = await self.manifest()
        if name not in tools:
            offered = ", ".join([*tools, CHECK_APPROVAL])
            raise InvalidRequest(
                f"no tool {name!r} for this caller (its tools: {offered})",
                code="unknown_tool",
                field="name",
            )
        request = request_for(tools[name], arguments)
        outcome = await self.client.run(
            request.kind, request.resource, request.args, request.reason
        )
        if isinstance(outcome, AsyncPendingApproval):
            return _pending_result(outcome)
        if isinstance(outcome, OperationResult):
            return _operation_result(outcome)
        raise BadResponse("the agent answered a dry run to a request to run")

    async def check_approval(self, arguments: Any) -> types.CallToolResult:
        """Look at an approval once; run its operation if it was granted.

        The request is rebuilt from the approval (`follow`), which records exactly the
        operation it may run: nothing is kept here, so an approval asked for before this
        server restarted still works, and the agent refuses to run anything else under it.
        """
        approval_id = arguments.get("approval_id") if isinstance(arguments, Mapping) else None
        if not isinstance(approval_id, str) or not APPROVAL_ID.fullmatch(approval_id):
            raise InvalidRequest(
                "approval_id must be the id of a 'pending' answer: ap- and 16 hex digits",
                code="invalid_type",
                field="approval_id",
            )
        handle = await self.client.follow(approval_id)
        try:
            # One look: denied, expired and used raise their errors, pending StillPending.
            result = await handle.wait(timeout=0)
        except StillPending as exc:
            return _pending_result(exc.approval or handle)
        return _operation_result(result)


def _mcp_tool(tool: ManifestTool) -> types.Tool:
    return types.Tool(
        name=tool.name,
        description=tool.description,
        input_schema=tool.parameters,
        annotations=types.ToolAnnotations(read_only_hint=not tool.mutating),
    )


def _tool_result(summary: str, payload: dict[str, Any], *, error: bool) -> types.CallToolResult:
    text = f"{summary}\n{json.dumps(payload, indent=2, ensure_ascii=False)}"
    return types.CallToolResult(
        content=[types.TextContent(text=text)], structured_content=payload, is_error=error
    )


def _operation_result(result: OperationResult) -> types.CallToolResult:
    where = f" on {result.resource}" if result.resource else ""
    summary = f"{result.operation}{where} ran: exit code {result.exit_code}"
    if result.truncated:
        summary += " (output truncated)"
    return _tool_result(summary + ".", dataclasses.asdict(result), error=False)


def _pending_result(approval: ApprovalTicket | ApprovalStatus) -> types.CallToolResult:
    """What the model needs to come back for an operation waiting for a human."""
    approvals = len(approval.approvers) if isinstance(approval, ApprovalStatus) else 0
    left = int(approval.seconds_left())
    who = "; ".join(asked.who for asked in approval.asked) or "a human approver"
    next_step = (
        f"Call {CHECK_APPROVAL} with approval_id {approval.approval_id} later to learn the "
        f"decision; do not call {approval.operation} again, that would ask for a second approval."
    )
    payload = {
        "status": "pending",
        "approval_id": approval.approval_id,
        "operation": approval.operation,
        "resource": approval.resource,
        "approvals": approvals,
        "approvals_required": approval.approvals_required,
        "admin_only": approval.admin_only,
        "asked": [dataclasses.asdict(asked) for asked in approval.asked],
        "expires_at": approval.expires_at.isoformat(),
        "seconds_left": left,
        "next_step": next_step,
    }
    summary = (
        f"Pending: {approval.operation} on {approval.resource} waits for a human's approval "
        f"({approvals} of {approval.approvals_required}"
        f"{', admins only' if approval.admin_only else ''}) from {who}, until "
        f"{approval.expires_at.isoformat()} ({left} s left). {next_step}"
    )
    return _tool_result(summary, payload, error=False)


def _error_result(exc: ClientError) -> types.CallToolResult:
    """A typed client error as the model sees it: the stable code, message and field."""
    error = {"code": exc.code, "message": exc.message, "field": exc.field}
    payload: dict[str, Any] = {"error": error}
    summary = f"Error {exc.code}: {exc.message}"
    if exc.field is not None:
        summary += f" (field: {exc.field})"
    if exc.request_id is not None:
        payload["request_id"] = exc.request_id
    if isinstance(exc, RateLimited) and exc.retry_after is not None:
        payload["retry_after"] = exc.retry_after
        summary += f" Retry after {exc.retry_after} s."
    if exc.result is not None:  # it ran and failed: its output says why
        payload["result"] = dataclasses.asdict(exc.result)
    if exc.approval is not None:
        payload["approval"] = {
            "approval_id": exc.approval.approval_id,
            "status": exc.approval.status.value,
            "operation": exc.approval.operation,
            "resource": exc.approval.resource,
            "decided_by": exc.approval.decided_by,
        }
    return _tool_result(summary, payload, error=True)


def build_server(tools: HostTools) -> Server[Any]:
    return Server(
        "host-agent",
        version=__version__,
        instructions=INSTRUCTIONS,
        on_list_tools=tools.list_tools,
        on_call_tool=tools.call_tool,
    )


async def _serve(config: ClientConfig) -> None:
    async with AsyncClient(config) as client:
        tools = HostTools(client)
        # Fetched once before serving so that a wrong setting fails at start, not at a call.
        offered = await tools.manifest()
        logger.info("serving %d tool(s) of %s over stdio", len(offered), config.server)
        server = build_server(tools)
        async with stdio_server() as (read_stream, write_stream):
            await server.run(read_stream, write_stream, server.create_initialization_options())


def serve(config: ClientConfig) -> None:
    """Serve MCP on stdin/stdout until the client closes it.

    Raises ClientError (ClientConfigError included) when the agent cannot be used at start.
    """
    asyncio.run(_serve(config))
