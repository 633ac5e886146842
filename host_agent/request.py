"""The `/host/op` envelope: JSON shape and types, before any adapter looks at it."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from host_agent import strict_json
from host_agent.approvals.model import APPROVAL_ID
from host_agent.errors import RequestError, ValidationError

MAX_ARGS = 32
MAX_REASON = 500
_FIELDS = {
    "kind",
    "resource",
    "args",
    "dry_run",
    "reason",
    "approval_id",
    "metadata",
    "on_behalf_of",
}
# A CN as certificates carry it (X.509 caps it at 64): printable, no spaces.
_CN = re.compile(r"[\x21-\x7e]{1,64}")
# The predecessor's free-form `metadata`: a few short labels (a ticket, a job id), shown
# to approvers and audited, never interpreted.
MAX_METADATA_KEYS = 16
MAX_METADATA_VALUE = 256
_METADATA_KEY = re.compile(r"[a-z0-9_.-]{1,64}")
# Control, format (bidi overrides, zero-width), separators (every space but the plain
# one: wide, ideographic, no-break), surrogates, private-use and unassigned: the reason
# is shown to approvers, and none of these may fake, hide or lay out lines around it.
_UNSHOWABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"})
# Letters and symbols that draw nothing: Hangul fillers and the blank braille pattern.
_BLANK = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def showable(text: str) -> bool:
    """Visible characters and the plain space only: what an approver can read as is."""
    return not any(
        (unicodedata.category(c) in _UNSHOWABLE and c != " ") or c in _BLANK for c in text
    )


@dataclass(frozen=True, slots=True)
class HostOpRequest:
    """The predecessor's wire format: kind, resource, args (command first)."""

    kind: str
    resource: str
    args: tuple[str, ...]
    dry_run: bool = False
    reason: str | None = None
    # Resubmitting an operation a human approved.
    approval_id: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    # The agent behind a proxy this request is for: it can only narrow what the
    # certificate may do (see pipeline.Pipeline._acting_for).
    on_behalf_of: str | None = None


def decode_json(body: bytes) -> Any:
    try:
        return strict_json.loads(body)
    except strict_json.NotJson as exc:
        raise RequestError(f"request body is not valid JSON: {exc.reason}", field="body") from None


def parse_host_op(document: Any) -> HostOpRequest:
    """Check the envelope's shape and types; adapters check the values."""
    if not isinstance(document, dict):
        raise ValidationError("body", "must be a JSON object", code="invalid_body")
    unknown = sorted(set(document) - _FIELDS)
    if unknown:
        raise ValidationError(unknown[0], "unknown field", code="unknown_field")
    kind = document.get("kind")
    if not isinstance(kind, str) or not kind:
        raise ValidationError("kind", "required, a non-empty string", code="invalid_type")
    resource = document.get("resource")
    if resource is None:
        resource = ""
    if not isinstance(resource, str):
        raise ValidationError("resource", "must be a string", code="invalid_type")
    args = document.get("args")
    if not isinstance(args, list) or not args:
        raise ValidationError(
            "args", "required, a list starting with the command", code="invalid_type"
        )
    if len(args) > MAX_ARGS:
        raise ValidationError("args", f"at most {MAX_ARGS} elements", code="too_many_arguments")
    for index, arg in enumerate(args):
        if not isinstance(arg, str):
            raise ValidationError(f"args[{index}]", "must be a string", code="invalid_type")
    dry_run = document.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise ValidationError("dry_run", "must be true or false", code="invalid_type")
    reason = document.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON):
        raise ValidationError(
            "reason", f"must be a string of at most {MAX_REASON} characters", code="invalid_type"
        )
    if reason is not None and not showable(reason):
        raise ValidationError(
            "reason",
            "visible characters and plain spaces only: no control, formatting, blank or "
            "wide-space characters",
            code="invalid_characters",
        )
    approval_id = document.get("approval_id")
    if approval_id is not None and (
        not isinstance(approval_id, str) or not APPROVAL_ID.fullmatch(approval_id)
    ):
        raise ValidationError(
            "approval_id", "must be an approval id as returned with 202", code="invalid_type"
        )
    metadata = parse_metadata(document.get("metadata", {}))
    on_behalf_of = parse_on_behalf_of(document.get("on_behalf_of"))
    return HostOpRequest(
        kind, resource, tuple(args), dry_run, reason, approval_id, metadata, on_behalf_of
    )


def parse_on_behalf_of(value: Any) -> str | None:
    """The agent a proxy names: a CN, or absent."""
    if value is None:
        return None
    if not isinstance(value, str) or not _CN.fullmatch(value):
        raise ValidationError(
            "on_behalf_of",
            "a CN: 1 to 64 printable ASCII characters, no spaces",
            code="invalid_type",
        )
    return value


def parse_metadata(value: Any) -> tuple[tuple[str, str], ...]:
    """`{"key": "value", ...}`: strings only, bounded, visible characters, sorted by key."""
    if not isinstance(value, dict):
        raise ValidationError("metadata", "must be an object of strings", code="invalid_type")
    if len(value) > MAX_METADATA_KEYS:
        raise ValidationError(
            "metadata", f"at most {MAX_METADATA_KEYS} keys", code="too_many_arguments"
        )
    pairs = []
    for key, text in sorted(value.items()):
        field = f"metadata.{key}" if _METADATA_KEY.fullmatch(key) else "metadata"
        if field == "metadata":
            raise ValidationError(field, "keys are [a-z0-9_.-], 1 to 64", code="invalid_name")
        if key == "approval_token":
            raise ValidationError(
                field,
                "approval tokens go to approvers only; resend with approval_id once approved",
                code="approval_token_not_accepted",
            )
        if not isinstance(text, str) or len(text) > MAX_METADATA_VALUE:
            raise ValidationError(
                field, f"must be a string of at most {MAX_METADATA_VALUE}", code="invalid_type"
            )
        if not showable(text):
            raise ValidationError(
                field, "visible characters and plain spaces only", code="invalid_characters"
            )
        pairs.append((key, text))
    return tuple(pairs)
