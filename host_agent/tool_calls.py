"""`POST /v1/tools/call`: one tool call as a model emits it, answered with what the
proxy hands back to the model.

The body is `{"name", "arguments"}` or a whole OpenAI `tool_calls` item
(`{"id", "type": "function", "function": {"name", "arguments"}}`); `arguments` is a
JSON string (as models emit it) or an object. A call becomes the `/host/op` document
the manifest describes and goes through the same pipeline: validation, policy,
approvals, audit and limits. `check_approval` follows a call that waits for a human
and, once one approved it, runs it: exactly the operation approved, by the
certificate that asked.

The answer is 200 whatever the operation's outcome, so the proxy can hand it on:
`{"tool_call_id", "name", "status": "ok" | "pending" | "error", "content", ...}`,
where `content` is the text for the model, `request_id` names the audit records,
and `code` (and `field`) say why on an error. Only a body that is not a tool call at
all (400), an unknown caller (403) and a rate limit (429, to back off) are HTTP
errors. Every refusal is audited once, as on /host/op.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from host_agent import strict_json
from host_agent.approvals.manager import ApprovalManager
from host_agent.approvals.model import APPROVAL_ID, Approval, Status, timestamp
from host_agent.errors import ApprovalError, HostAgentError, RequestError, ValidationError
from host_agent.identity import Identity
from host_agent.openai_tools import CHECK_APPROVAL
from host_agent.pipeline import Pipeline
from host_agent.ratelimit import RateLimited
from host_agent.request import decode_json, parse_on_behalf_of

PATH = "/v1/tools/call"
_PARAMETERS = {"resource", "args", "reason"}
_ARG_FIELD = re.compile(r"args\[(\d+)\]")
# A result's text for the model is cut here (the structured result is whole).
MAX_CONTENT = 16_384


@dataclass(frozen=True)
class ToolCall:
    id: str | None
    name: str
    arguments: dict[str, Any]
    # The agent behind the proxy the call is for (see /host/op's on_behalf_of).
    on_behalf_of: str | None = None


def parse_tool_call(document: Any) -> ToolCall:
    """The call in either shape; a ValidationError naming the field at fault."""
    if not isinstance(document, dict):
        raise ValidationError("body", "must be a JSON object", code="invalid_body")
    call_id = document.get("id")
    if "function" in document:
        unknown = sorted(set(document) - {"id", "type", "function", "on_behalf_of"})
        if unknown:
            raise ValidationError(unknown[0], "unknown field", code="unknown_field")
        if document.get("type", "function") != "function":
            raise ValidationError("type", "must be function")
        inner = document["function"]
        prefix = "function."
    else:
        inner, prefix = document, ""
    if not isinstance(inner, dict):
        raise ValidationError("function", "must be a JSON object", code="invalid_type")
    unknown = sorted(set(inner) - {"name", "arguments", "id", "on_behalf_of"})
    if unknown:
        raise ValidationError(f"{prefix}{unknown[0]}", "unknown field", code="unknown_field")
    name = inner.get("name")
    if not isinstance(name, str) or not name:
        raise ValidationError(f"{prefix}name", "required, a non-empty string", code="invalid_type")
    if call_id is not None and (not isinstance(call_id, str) or len(call_id) > 128):
        raise ValidationError("id", "a string of at most 128 characters", code="invalid_type")
    arguments = _arguments(inner.get("arguments", {}), f"{prefix}arguments")
    return ToolCall(call_id, name, arguments, parse_on_behalf_of(document.get("on_behalf_of")))


def _arguments(value: Any, field: str) -> dict[str, Any]:
    if isinstance(value, str):  # what models emit: the arguments as JSON text
        try:
            value = strict_json.loads(value.encode())
        except (strict_json.NotJson, UnicodeEncodeError) as exc:
            reason = getattr(exc, "reason", "not UTF-8 text")
            raise ValidationError(
                field, f"is not valid JSON: {reason}", code="invalid_type"
            ) from None
    if not isinstance(value, dict):
        raise ValidationError(field, "must be a JSON object", code="invalid_type")
    # Strict mode sends every parameter, null when not given.
    return {key: item for key, item in value.items() if item is not None}


async def answer(pipeline: Pipeline, identity: Identity, body: bytes) -> dict[str, Any]:
    """The model's answer to one call (audited as any /host/op request is)."""
    try:
        call = parse_tool_call(decode_json(body))
    except RequestError as exc:
        await pipeline.reject(identity, exc)
        raise  # not a tool call at all: 400
    try:
        if call.name == CHECK_APPROVAL:
            approval = await _approval_to_check(pipeline, identity, call)
        else:
            document = _host_op(call)
    except RateLimited:
        raise  # audited by the limiter; 429, for the proxy to back off
    except RequestError as exc:
        await pipeline.reject(identity, exc)  # the pipeline audits what it refuses itself
        return _error(call, exc)
    try:
        if call.name == CHECK_APPROVAL:
            return await _check_approval(pipeline, identity, call, approval)
        reply = await pipeline.host_op(identity, document, PATH)
    except RateLimited:
        raise
    except HostAgentError as exc:
        return _error(call, exc)
    if reply.status == 202:
        return _pending(call, reply.body)
    return _done(call, reply.body)


def _host_op(call: ToolCall, approval_id: str | None = None) -> bytes:
    kind, _, command = call.name.partition("-")
    unknown = sorted(set(call.arguments) - _PARAMETERS)
    if unknown:
        raise ValidationError(f"arguments.{unknown[0]}", "is not a parameter of this tool")
    args = call.arguments.get("args", [])
    if not isinstance(args, list):
        raise ValidationError("arguments.args", "must be an array")
    document: dict[str, Any] = {
        "kind": kind,
        "resource": call.arguments.get("resource", ""),
        "args": [command, *args],
    }
    if "reason" in call.arguments:
        document["reason"] = call.arguments["reason"]
    if approval_id is not None:
        document["approval_id"] = approval_id
    if call.on_behalf_of is not None:
        document["on_behalf_of"] = call.on_behalf_of
    return json.dumps(document).encode()


async def _approval_to_check(pipeline: Pipeline, identity: Identity, call: ToolCall) -> Approval:
    """The caller's own approval that `check_approval` names."""
    approval_id = call.arguments.get("approval_id")
    unknown = sorted(set(call.arguments) - {"approval_id"})
    if unknown:
        raise ValidationError(f"arguments.{unknown[0]}", "unknown field", code="unknown_field")
    manager = pipeline.approvals
    if not isinstance(approval_id, str) or not APPROVAL_ID.fullmatch(approval_id):
        raise ValidationError("arguments.approval_id", "is not an approval id (ap-...)")
    if manager is None:
        raise ApprovalError(404, "approvals_disabled", "approvals are disabled on this agent")
    await pipeline.limit(identity, "approval", PATH)
    approval = await manager.visible(approval_id, identity.cn)
    if call.on_behalf_of not in (None, approval.on_behalf_of):
        raise ApprovalError(
            403,
            "approval_mismatch",
            "the approval was asked for another agent",
            field="on_behalf_of",
        )
    return approval


async def _check_approval(
    pipeline: Pipeline, identity: Identity, call: ToolCall, approval: Approval
) -> dict[str, Any]:
    """Pending: how long is left. Approved: run it now. Anything else: it will not run."""
    manager = pipeline.approvals
    if manager is not None and approval.status is Status.PENDING:
        left = max(0, int(approval.expires_at - manager.clock()))
        return _result(
            call,
            "pending",
            f"Still waiting for a human ({_asked(manager, approval)}); {left} s left, until "
            f"{timestamp(approval.expires_at)}. Call {CHECK_APPROVAL} again later.",
            approval={"approval_id": approval.id, "status": "pending", "seconds_left": left},
        )
    if approval.status is not Status.APPROVED:
        status = approval.status.value
        return _result(
            call,
            "error",
            f"The operation will not run: its approval is {status}.",
            code=f"approval_{status}",
        )
    operation = ToolCall(
        call.id,
        f"{approval.kind}-{approval.args[0]}",
        {"resource": approval.resource, "args": list(approval.args[1:])},
        approval.on_behalf_of,
    )
    reply = await pipeline.host_op(identity, _host_op(operation, approval.id), PATH)
    return _done(call, reply.body)


def _asked(manager: ApprovalManager, approval: Approval) -> str:
    return "; ".join(entry["who"] for entry in manager.asked(approval))


def _done(call: ToolCall, body: dict[str, Any]) -> dict[str, Any]:
    text = json.dumps(body.get("data", body), sort_keys=True)
    if len(text) > MAX_CONTENT:
        text = text[:MAX_CONTENT] + " [cut]"
    return _result(call, "ok", text, result=body, request_id=body.get("request_id"))


def _pending(call: ToolCall, body: dict[str, Any]) -> dict[str, Any]:
    who = "; ".join(entry["who"] for entry in body["asked"])
    text = (
        f"{body['operation']} on {body['resource']} waits for a human ({who}) until "
        f"{body['expires_at']}. Call {CHECK_APPROVAL} with approval_id "
        f"{body['approval_id']} to see whether it was approved; once it is, that call "
        "runs it and returns the result."
    )
    approval = {key: body[key] for key in ("approval_id", "expires_at", "asked")}
    return _result(call, "pending", text, approval=approval, request_id=body["request_id"])


def _error(call: ToolCall, exc: HostAgentError) -> dict[str, Any]:
    message = exc.message if isinstance(exc, RequestError) else exc.public_message()
    field = _tool_field(exc.field) if isinstance(exc, RequestError) else None
    return _result(
        call,
        "error",
        f"Refused ({exc.code}): {message}",
        code=exc.code,
        field=field,
        request_id=exc.request_id,
    )


def _tool_field(field: str | None) -> str | None:
    """A /host/op field as the tool call named it: `args[0]` was the tool's name, so the
    tool's own `args` count from the next one."""
    match = _ARG_FIELD.fullmatch(field or "")
    if match is not None:
        index = int(match.group(1))
        return "name" if index == 0 else f"arguments.args[{index - 1}]"
    if field in _PARAMETERS:
        return f"arguments.{field}"
    return field


def _result(call: ToolCall, status: str, content: str, **extra: Any) -> dict[str, Any]:
    return {
        "tool_call_id": call.id,
        "name": call.name,
        "status": status,
        "content": content,
        **{key: value for key, value in extra.items() if value is not None},
    }
