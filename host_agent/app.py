"""The Starlette application: routes, and the one place errors become HTTP replies."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from host_agent import __version__, openapi, tool_calls
from host_agent.approvals.manager import MAX_FOLLOW_SECONDS, ApprovalManager
from host_agent.approvals.model import APPROVAL_ID, Approver
from host_agent.approvals.signal import (
    SIGNATURE_HEADER,
    InvalidWebhookBody,
    parse_webhook,
    verify_signature,
)
from host_agent.errors import (
    ApprovalError,
    CrossSiteRequest,
    HostAgentError,
    OperationFailed,
    RequestError,
    ValidationError,
)
from host_agent.health import HostHealth, for_caller
from host_agent.identity import Identity
from host_agent.legacy import LEGACY_ROUTES, LegacyRoute, legacy_error
from host_agent.metrics import CONTENT_TYPE
from host_agent.openai_tools import openai_tools
from host_agent.pipeline import Pipeline
from host_agent.policy import find_profile
from host_agent.ratelimit import RateLimited
from host_agent.request import decode_json, parse_on_behalf_of
from host_agent.tools import build_manifest

log = logging.getLogger(__name__)


def build_app(pipeline: Pipeline, health: HostHealth | None = None) -> Starlette:
    """The ASGI app; every route is reached only over the mutual-TLS listener."""
    max_body = pipeline.config.server.max_body_bytes

    async def read(request: Request) -> tuple[Identity, bytes]:
        """The caller and the body of a state-changing request (every POST route)."""
        with _before_body():
            identity = await pipeline.identify(request.scope)
            try:
                _refuse_browsers(request)
                timeout = pipeline.config.server.limits.body_timeout_seconds
                return identity, await _read_body(request, max_body, timeout)
            except RequestError as exc:
                await pipeline.reject(identity, exc)
                raise

    async def operation_caller(request: Request) -> Identity:
        """The caller of an operation route, refused before its body is read when no
        profile matches its CN: a body costs memory and time, a CN nothing."""
        with _before_body():
            identity = await pipeline.identify(request.scope)
            await pipeline.refuse_unknown_caller(identity, request.url.path)
        return identity

    async def host_op(request: Request) -> Response:
        await operation_caller(request)
        reply = await pipeline.host_op(*await read(request))
        return JSONResponse(reply.body, status_code=reply.status)

    async def tool_call(request: Request) -> Response:
        await operation_caller(request)
        return JSONResponse(await tool_calls.answer(pipeline, *await read(request)))

    def legacy(route: LegacyRoute) -> Route:
        async def endpoint(request: Request) -> Response:
            try:
                await operation_caller(request)
                reply = await route.serve(pipeline, *await read(request))
            except HostAgentError as exc:
                # Refused and audited exactly as on /host/op; told in the predecessor's shape.
                status, code, message, field, extra, headers = _error_parts(request, exc)
                body = {**legacy_error(code, message, field), **extra}
                return _ErrorJSON(body, status_code=status, headers=headers)
            return JSONResponse(reply.body, status_code=reply.status)

        return Route(route.path, endpoint, methods=["POST"])

    async def limited(request: Request) -> Identity:
        """The caller of an approval route, within its rate limit."""
        with _before_body():
            identity = await pipeline.identify(request.scope)
            await pipeline.limit(identity, "approval", request.url.path)
        return identity

    def approvals() -> ApprovalManager:
        if pipeline.approvals is None:
            raise ApprovalError(404, "approvals_disabled", "approvals are disabled on this agent")
        return pipeline.approvals

    async def approval_status(request: Request) -> Response:
        """One approval; with `?wait=SECONDS`, once it is no longer pending or after that
        long (a long poll: a waiting client hears of a decision at once)."""
        identity = await limited(request)
        approval_id = request.path_params["approval_id"]
        manager = approvals()
        try:
            seconds = _wait_seconds(request.query_params.get("wait"))
        except RequestError as exc:
            await pipeline.reject(identity, exc)
            raise
        approval = await manager.follow(approval_id, identity.cn, seconds)
        return JSONResponse(manager.view(approval, identity.cn))

    async def own_pending(request: Request) -> Response:
        identity = await limited(request)
        manager = approvals()
        listed = await manager.open_approvals(identity.cn)
        return JSONResponse({"approvals": [manager.view(a, identity.cn) for a in listed]})

    async def all_pending(request: Request) -> Response:
        identity = await limited(request)
        if not pipeline.config.approval.is_admin(identity.cn):
            raise ApprovalError(403, "admin_required", "only an admin CN may list every approval")
        manager = approvals()
        listed = await manager.open_approvals()
        return JSONResponse({"approvals": [manager.view(a, identity.cn) for a in listed]})

    async def approve(request: Request) -> Response:
        caller = await limited(request)
        # Only an admin may approve here: anyone else is refused before the body is read.
        await approvals().check_channel(Approver("admin", caller.cn))
        identity, body = await read(request)
        try:
            reference, verdict, approval_id = parse_verdict(decode_json(body))
        except RequestError as exc:
            await pipeline.reject(identity, exc)
            raise
        admin = Approver("admin", identity.cn)
        manager = approvals()
        approval = await manager.decide(reference, verdict, admin, approval_id=approval_id)
        return JSONResponse(manager.view(approval, identity.cn))

    async def signal_webhook(request: Request) -> Response:
        """Approver replies from the Signal bridge, authenticated apart from any body field."""
        identity, body = await read(request)
        settings = pipeline.config.approval
        signature = request.headers.get(SIGNATURE_HEADER)
        signed = settings.webhook_secret is not None and verify_signature(
            settings.webhook_secret.reveal().encode(), body, signature
        )
        if not signed and identity.cn != settings.bridge_cn:
            error = ApprovalError(
                401,
                "webhook_unauthenticated",
                f"needs a valid {SIGNATURE_HEADER} or the bridge's own certificate",
            )
            await pipeline.reject(identity, error)
            raise error
        try:
            replies = parse_webhook(body, account=settings.signal_number)
        except InvalidWebhookBody as exc:
            invalid = ValidationError("body", exc.reason, code=exc.code)
            await pipeline.reject(identity, invalid)
            raise invalid from exc
        manager = approvals()
        return JSONResponse({"results": [await manager.handle_reply(r) for r in replies]})

    async def metrics(request: Request) -> Response:
        await pipeline.identify(request.scope)
        exposition = await asyncio.to_thread(pipeline.metrics.exposition)
        return Response(exposition, media_type=CONTENT_TYPE)

    host = health or HostHealth(pipeline.metrics)

    async def warn_permissions(request: Request) -> Response:
        identity = await pipeline.identify(request.scope)
        if not pipeline.config.approval.is_admin(identity.cn):
            raise ApprovalError(403, "admin_required", "only an admin CN may read the findings")
        return JSONResponse(host.permission_findings())

    async def health_check(request: Request) -> Response:
        identity = await pipeline.identify(request.scope)
        store = pipeline.approvals.store.availability if pipeline.approvals else None
        checkpoints = pipeline.checkpoints
        report = {
            **host.report(
                pipeline.audit.failing,
                store.failing if store else None,
                checkpoints.status(time.time()) if checkpoints else None,
            ),
            "version": __version__,
            "adapters": sorted(pipeline.registry),
        }
        admin = pipeline.config.approval.is_admin(identity.cn)
        profile = find_profile(pipeline.config, identity.cn) is not None
        return JSONResponse(for_caller(report, admin=admin, profile=profile))

    async def tools_manifest(request: Request) -> Response:
        """The tools this caller may call under the current policy (a read, like /health)."""
        identity = await pipeline.identify(request.scope)
        agent = parse_on_behalf_of(request.query_params.get("on_behalf_of"))
        acting = (
            None if agent is None else await pipeline.acting_for(identity, agent, request.url.path)
        )
        manifest = build_manifest(
            pipeline.config,
            pipeline.registry,
            identity.cn,
            approvals_enabled=pipeline.approvals is not None,
            on_behalf_of=acting,
        )
        if agent is not None:
            manifest["on_behalf_of"] = agent
        shape = request.query_params.get("format", "host-agent")
        if shape == "openai":
            return JSONResponse(openai_tools(manifest))
        if shape != "host-agent":
            raise ValidationError("format", "must be host-agent or openai")
        return JSONResponse(manifest)

    description = openapi.description_json()

    async def openapi_description(request: Request) -> Response:
        """This API's description: for any verified certificate, as /health is."""
        await pipeline.identify(request.scope)
        return Response(description, media_type="application/json")

    app = Starlette(
        routes=[
            Route("/host/op", host_op, methods=["POST"]),
            Route("/health", health_check, methods=["GET"]),
            Route("/v1/tools/manifest", tools_manifest, methods=["GET"]),
            Route(tool_calls.PATH, tool_call, methods=["POST"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/admin/warn-permissions", warn_permissions, methods=["GET"]),
            Route("/approvals/{approval_id}", approval_status, methods=["GET"]),
            Route("/pending", own_pending, methods=["GET"]),
            Route("/admin/pending", all_pending, methods=["GET"]),
            Route("/approve", approve, methods=["POST"]),
            Route("/webhook/signal", signal_webhook, methods=["POST"]),
            Route(openapi.PATH, openapi_description, methods=["GET"]),
            *(legacy(route) for route in LEGACY_ROUTES),
        ],
        exception_handlers={
            HostAgentError: _agent_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
    )
    # A trailing slash is a path no route has: 404, not a redirect to one that does.
    app.router.redirect_slashes = False
    return app


# What a browser says of a request another site made it send; curl, the clients of this
# package and the Signal bridge send neither header.
_CROSS_SITE = ("cross-site", "same-site")


def _refuse_browsers(request: Request) -> None:
    """The body is read as JSON whatever its Content-Type, so a page could have a browser
    holding an admin's certificate POST a text/plain form: refuse what a browser marks."""
    if "origin" in request.headers:
        raise CrossSiteRequest("a browser request (Origin header) may not change state")
    if request.headers.get("sec-fetch-site", "").lower() in _CROSS_SITE:
        raise CrossSiteRequest("a request another site started may not change state")


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    """Read at most `limit` bytes within `timeout` seconds in all; a larger body is
    refused before it is buffered, a slower one when its time is up."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise _too_large(limit)
    except TimeoutError as exc:
        error = RequestError(f"the body did not arrive within {timeout:g}s", field="body")
        error.status, error.code = 408, "body_timeout"
        raise error from exc
    except ClientDisconnect as exc:
        error = RequestError("the connection ended before the body did", field="body")
        error.code = "client_disconnected"
        raise error from exc
    return bytes(body)


def parse_verdict(document: Any) -> tuple[str, bool, str | None]:
    """`{"token"?, "approval_id"?, "decision"?}`: the approval is named by the token from
    the message, or by its id alone (admins' only way when the message never went out);
    with both, the id must be the token's. Decision defaults to approve. Returns what
    names the approval, the verdict, and the id to check the token against."""
    if not isinstance(document, dict) or set(document) - {"token", "decision", "approval_id"}:
        raise ValidationError(
            "body", 'expected {"token" or "approval_id", "decision"?}', code="invalid_body"
        )
    token, decision = document.get("token"), document.get("decision", "approve")
    approval_id = document.get("approval_id")
    if token is not None and (not isinstance(token, str) or len(token) > 64):
        raise ValidationError("token", "the token from the message", code="invalid_type")
    if decision not in ("approve", "deny"):
        raise ValidationError("decision", "must be approve or deny", code="invalid_argument")
    if approval_id is not None and (
        not isinstance(approval_id, str) or not APPROVAL_ID.fullmatch(approval_id)
    ):
        raise ValidationError("approval_id", "not an approval id", code="invalid_type")
    if token is None and approval_id is None:
        raise ValidationError(
            "token", "name the approval: the token from the message, or approval_id",
            code="invalid_type",
        )  # fmt: skip
    if token is None:
        return str(approval_id), decision == "approve", None
    return token, decision == "approve", approval_id


def _wait_seconds(text: str | None) -> float:
    """`?wait=`: absent is 0 (answer at once), else 0 to MAX_FOLLOW_SECONDS."""
    if text is None:
        return 0.0
    if not re.fullmatch(r"[0-9]{1,2}(\.[0-9]{1,3})?", text) or float(text) > MAX_FOLLOW_SECONDS:
        raise ValidationError(
            "wait", f"seconds, 0 to {MAX_FOLLOW_SECONDS:g}", code="invalid_argument"
        )
    return float(text)


def _too_large(limit: int) -> RequestError:
    error = RequestError(f"request body larger than {limit} bytes", field="body")
    error.status, error.code = 413, "body_too_large"
    return error


class _ErrorJSON(JSONResponse):
    """An error reply may echo what the caller sent (a field name); \\u-escaping every
    non-ASCII character keeps a lone surrogate in it from making the reply unencodable."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")


def error_body(code: str, message: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return {"error": error, **extra}


async def _agent_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, HostAgentError):  # pragma: no cover - registered for this family only
        raise exc
    status, code, message, field, extra, headers = _error_parts(request, exc)
    return _ErrorJSON(
        error_body(code, message, field, **extra), status_code=status, headers=headers
    )


@contextlib.contextmanager
def _before_body() -> Iterator[None]:
    """A refusal from within was made before the request's body was read."""
    try:
        yield
    except HostAgentError as exc:
        exc.unread_body = True
        raise


def _error_parts(
    request: Request, exc: HostAgentError
) -> tuple[int, str, str, str | None, dict[str, Any], dict[str, str] | None]:
    """Status, code, public message, field, extra body keys and headers of an error
    (and the agent's own log line for a server-side one)."""
    extra: dict[str, Any] = {}
    if exc.request_id is not None:
        extra["request_id"] = exc.request_id
    if isinstance(exc, OperationFailed):
        extra["result"] = exc.result
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else {}
    if exc.unread_body and request.method not in ("GET", "HEAD"):
        headers["Connection"] = "close"
    field = exc.field if isinstance(exc, RequestError) else None
    message = exc.message if isinstance(exc, RequestError) else exc.public_message()
    if exc.status >= 500:
        log.error("%s %s: %s: %s", request.method, request.url.path, exc.code, exc)
    return exc.status, exc.code, message, field, extra, headers


async def _http_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, HTTPException):  # pragma: no cover
        raise exc
    codes = {404: "not_found", 405: "method_not_allowed"}
    code = codes.get(exc.status_code, "http_error")
    return _ErrorJSON(error_body(code, str(exc.detail)), status_code=exc.status_code)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return JSONResponse(error_body("internal_error", "internal error"), status_code=500)
