"""The predecessor's ZFS routes, as thin shims over the `/host/op` pipeline.

`POST /zfs/list {"dataset"?, "type"?}`, `POST /zfs/snapshot {"dataset",
"snapname"}` and `POST /zfs/destroy {"dataset", "approval_token": null?,
"approval_id"?}` are translated into host-op documents and go through exactly the
same validation, policy, audit and runner. Replies keep the predecessor's shapes:
its fields (`success`, `entries`, `snapshot`, `audit_id`, `message`) beside ours,
a pending destroy as 200 `{"pending_approval": true, "approval_id", "message"}`,
and errors as `{"success": false, "error": "<text>"}` with our `code` and
`field` beside (see `legacy_error`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from host_agent.errors import RequestError, ValidationError
from host_agent.identity import Identity
from host_agent.pipeline import Pipeline, Reply
from host_agent.request import decode_json

Document = dict[str, Any]


@dataclass(frozen=True)
class LegacyRoute:
    path: str
    fields: frozenset[str]
    to_host_op: Callable[[Document], Document]
    # host-op error field -> the predecessor's name for it
    field_names: dict[str, str]
    to_reply: Callable[[Document], Document]

    async def serve(self, pipeline: Pipeline, identity: Identity, body: bytes) -> Reply:
        try:
            document = decode_json(body)
            if not isinstance(document, dict):
                raise ValidationError("body", "must be a JSON object", code="invalid_body")
            self._check_fields(document)
        except RequestError as exc:
            await pipeline.reject(identity, exc)
            raise
        translated = json.dumps(self.to_host_op(document)).encode()
        try:
            reply = await pipeline.host_op(identity, translated, self.path)
        except RequestError as exc:
            if exc.field is not None:
                exc.field = self.field_names.get(exc.field, exc.field)
            raise
        if reply.status == 202:
            # The predecessor answered a pending destroy 200, in this shape; ours beside.
            message = (
                f"Approval required for {reply.body['operation']} on {reply.body['resource']}: "
                f"resend with approval_id {reply.body['approval_id']} once a human approved"
            )
            pending = {"pending_approval": True, "success": False, "message": message}
            return Reply(200, {**reply.body, **pending})
        body_out = {"success": True, "audit_id": reply.body["request_id"], **reply.body}
        return Reply(reply.status, {**body_out, **self.to_reply(reply.body)})

    def _check_fields(self, document: Document) -> None:
        # The predecessor's clients send "approval_token": null on a first request.
        if document.get("approval_token", None) is None:
            document.pop("approval_token", None)
        else:
            raise ValidationError(
                "approval_token",
                "approval tokens go to approvers only and are never accepted from a requester",
                code="approval_token_not_accepted",
            )
        unknown = sorted(set(document) - self.fields)
        if unknown:
            raise ValidationError(unknown[0], "unknown field", code="unknown_field")


def _list(document: Document) -> Document:
    args = ["list"] if document.get("type") is None else ["list", document["type"]]
    return {"kind": "zfs", "resource": document.get("dataset"), "args": args}


def _snapshot(document: Document) -> Document:
    return {
        "kind": "zfs",
        "resource": document.get("dataset"),
        "args": ["snapshot", document.get("snapname")],
    }


def _destroy(document: Document) -> Document:
    translated = {"kind": "zfs", "resource": document.get("dataset"), "args": ["destroy"]}
    if "approval_id" in document:
        translated["approval_id"] = document["approval_id"]
    return translated


def _entries(body: Document) -> Document:
    """The predecessor's entry shape: its `refer` key, and every value a string (its
    `ZfsEntry` fields were strings; a client decoding them as such would fail on a
    number), `-` where there is none, sizes as exact byte counts."""
    keys = (
        ("type", "type"),
        ("used", "used"),
        ("available", "available"),
        ("refer", "referenced"),
        ("mountpoint", "mountpoint"),
    )
    return {
        "entries": [
            {
                "name": entry["name"],
                **{ours: _text(entry.get(theirs)) for ours, theirs in keys},
            }
            for entry in body["data"]["datasets"]
        ]
    }


def _text(value: Any) -> str:
    return "-" if value is None else str(value)


LEGACY_ROUTES = (
    LegacyRoute(
        "/zfs/list",
        frozenset({"dataset", "type"}),
        _list,
        {"resource": "dataset", "args[1]": "type"},
        _entries,
    ),
    LegacyRoute(
        "/zfs/snapshot",
        frozenset({"dataset", "snapname"}),
        _snapshot,
        {"resource": "dataset", "args[1]": "snapname"},
        lambda body: {"snapshot": body["data"]["snapshot"], "message": None},
    ),
    LegacyRoute(
        "/zfs/destroy",
        frozenset({"dataset", "approval_id"}),
        _destroy,
        {"resource": "dataset"},
        lambda body: {"message": f"Destroyed {body['data']['destroyed']}"},
    ),
)


def legacy_error(code: str, message: str, field: str | None) -> Document:
    """The predecessor's error body, `{"success": false, "error": "<text>"}`, with our
    stable `code` (and the `field` at fault) beside it. Statuses are ours, which agree
    with the predecessor's for every class both have (400, 403, 404, 409, 429, 500)."""
    body: Document = {"success": False, "error": message, "code": code}
    if field is not None:
        body["field"] = field
    return body
