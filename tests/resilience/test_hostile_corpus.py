"""A hostile corpus over real mutual TLS: every input is a 4xx, audited, and starts nothing.

One agent serves the whole module. Its admin-1 profile may run every operation of every
adapter without approval, so validation is the only thing between an input and a process.

No process started: `[runner] sudo` is a recorder that appends its argv to a file. The
runner starts every child as `SUDO -n -- WRAPPER ARGV` (host_agent/runner.py is the only
module allowed to start one; a ruff banned-api rule keeps it so), so a new line in the
record is a process the agent started, whatever path led there. The audit log and the
metrics are written by the agent itself and would miss a path that forgot them; the
recorder sits at the exec boundary. `test_the_recorder_sees_a_real_run` proves it is wired.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from host_agent.adapters import build_registry
from host_agent.app import build_app
from host_agent.approvals.signal import SIGNATURE_HEADER, sign
from host_agent.config import Config
from host_agent.legacy import LEGACY_ROUTES
from host_agent.operations import OPERATION_NAMES
from host_agent.request import HostOpRequest
from host_agent.server import build_pipeline
from tests.hostile import HOSTILE_NAMES, WRONG_TYPES
from tests.recording_sudo import RecordingSudo, recording_sudo
from tests.resilience.conftest import Figures
from tests.resilience.request_parsing import DOCUMENTED_CODES
from tests.support import (
    Pki,
    RunningAgent,
    client_context,
    config_text,
    free_port,
    running_agent,
    write_config,
)
from tests.test_adapters import (
    EVERY_OPERATION_PROFILE,
    UNLIMITED_CONTRACT_CONFIG,
    VALID_REQUESTS,
)

LEGACY_PATHS = frozenset(route.path for route in LEGACY_ROUTES)
OPERATOR = "admin-1"  # may run everything: EVERY_OPERATION_PROFILE
SECRET = "resilience-webhook-secret-0123456789abcdef"

# The approval routes are rate-limited: the limits are off (UNLIMITED_CONTRACT_CONFIG),
# or a long corpus would meet 429s instead of the refusals under test.

# The commands VALID_REQUESTS has no template for, so every operation is attacked.
MORE_VALID_REQUESTS = [
    ("systemd", "app.service", ("start",)),
    ("systemd", "app.service", ("stop",)),
    ("pct", "101", ("start",)),
    ("pct", "101", ("stop",)),
]
TEMPLATES = [*VALID_REQUESTS, *MORE_VALID_REQUESTS]

# Beyond tests/hostile.py: bare options, more unicode, encoded escapes, other injections.
MORE_HOSTILE = [
    pytest.param("-", id="bare-dash"),
    pytest.param("--", id="double-dash"),
    pytest.param("tank\u200f", id="unicode-rlm"),
    pytest.param("\ufefftank", id="unicode-bom"),
    pytest.param("tank\u2028x", id="unicode-line-separator"),
    pytest.param("tank\u0301", id="unicode-combining"),
    pytest.param("\ufb01le", id="unicode-ligature"),
    pytest.param("t\u03b1nk", id="unicode-greek-alpha"),
    pytest.param("tank\ud800", id="lone-surrogate"),
    pytest.param("tank\x7f", id="delete-char"),
    pytest.param("tank\x1b[2J", id="escape-sequence"),
    pytest.param("%2e%2e/etc", id="percent-dotdot"),
    pytest.param("tank/./x", id="dot-component"),
    pytest.param("tank\\x2d", id="backslash-escape"),
    pytest.param("~root", id="tilde"),
    pytest.param("$HOME", id="shell-variable"),
    pytest.param("tank\r\nX-Injected: 1", id="crlf-injection"),
    pytest.param("x' OR '1'='1", id="sql-injection"),
    pytest.param("{{7*7}}", id="template-injection"),
    pytest.param("t" * 60_000, id="huge-string"),
]
HOSTILE = [(str(p.values[0]), str(p.id)) for p in [*HOSTILE_NAMES, *MORE_HOSTILE]]


@dataclass(frozen=True)
class Attack:
    """One hostile request, and what the design says must follow it."""

    category: str
    id: str
    route: str  # the route it aims at, for the figures
    request: bytes  # the whole HTTP/1.1 request, exactly as sent
    cn: str = OPERATOR
    # Answered by the app with a JSON error, not by the HTTP layer below it.
    json_error: bool = True
    # A refusal the design audits: exactly one new audit record.
    audited: bool = True
    # Sent to the plain-HTTP metrics listener instead of the mutual-TLS port.
    metrics_port: bool = False
    # The one status a standard prescribes, where it is not a 4xx.
    status: int | None = None


def raw_request(method: str, target: str, body: bytes = b"", *headers: str) -> bytes:
    """An HTTP/1.1 request as bytes, as given: no Content-Length unless in `headers`."""
    head = [f"{method} {target} HTTP/1.1", "Host: localhost", *headers, "Connection: close"]
    return "".join(f"{line}\r\n" for line in head).encode("latin-1") + b"\r\n" + body


def request(method: str, target: str, body: bytes = b"", *headers: str) -> bytes:
    """A well-framed request: the Content-Length of `body` added."""
    return raw_request(method, target, body, f"Content-Length: {len(body)}", *headers)


def post(category: str, id: str, route: str, body: bytes, *headers: str, **kw: Any) -> Attack:
    return Attack(category, id, route, request("POST", route, body, *headers), **kw)


def as_json(document: Any) -> bytes:
    """JSON as a client would send it, lone surrogates included (escaped)."""
    return json.dumps(document).encode()


# --- /host/op and the predecessor's routes: one value at a time ------------------


def adapter_attacks() -> Iterator[Attack]:
    """Every hostile value in every place of every command's valid request."""
    for kind, resource, args in TEMPLATES:
        for index in range(-1, len(args)):
            place = "resource" if index < 0 else f"args[{index}]"
            for value, value_id in HOSTILE:
                if (place, value, kind, args[0]) == ("resource", "", "zfs", "list"):
                    continue  # an empty resource lists every pool
                attacked = list(args)
                if index >= 0:
                    attacked[index] = value
                document = {
                    "kind": kind,
                    "resource": value if index < 0 else resource,
                    "args": attacked,
                }
                yield post(
                    f"adapter-{kind}",
                    f"{kind}-{args[0]}-{place}-{value_id}",
                    "/host/op",
                    as_json(document),
                )


UNKNOWN_LEGACY_FIELDS = [
    ("approval_token", "approval-token"),
    ("cn", "cn"),
    ("resource", "resource"),
    ("\udc00", "lone-surrogate"),
]
LEGACY_TEMPLATES = [
    ("/zfs/list", {"dataset": "tank/a", "type": "snapshot"}),
    ("/zfs/snapshot", {"dataset": "tank/a", "snapname": "s"}),
    ("/zfs/destroy", {"dataset": "tank/a@s", "approval_id": "ap-0123456789abcdef"}),
]


def legacy_attacks() -> Iterator[Attack]:
    for route, template in LEGACY_TEMPLATES:
        for field in template:
            for value, value_id in HOSTILE:
                if (route, field, value) == ("/zfs/list", "dataset", ""):
                    continue  # lists every pool
                body = as_json({**template, field: value})
                yield post("legacy-routes", f"{route}-{field}-{value_id}", route, body)
        for field, field_id in UNKNOWN_LEGACY_FIELDS:
            body = as_json({**template, field: "x"})
            yield post("legacy-routes", f"{route}-field-{field_id}", route, body)


# --- the envelope ----------------------------------------------------------------

VALID_BODY = b'{"kind": "zfs", "resource": "tank", "args": ["snapshot", "s1"]}'
LIST = {"kind": "zfs", "resource": "tank", "args": ["list"]}  # valid, and would run
HOSTILE_OP = as_json({**LIST, "resource": "tank;id"})


def envelope_attacks() -> Iterator[Attack]:
    yield from _malformed()
    yield from _wrong_types()
    yield from _unknown_fields()
    yield from _duplicate_keys()
    yield from _deep_nesting()
    yield from _huge()
    yield from _unicode_names()
    yield from _encodings()
    yield from _content_types()


def _malformed() -> Iterator[Attack]:
    bodies = {
        "empty": b"",
        "spaces": b"   ",
        "open-brace": b"{",
        "close-brace": b"}",
        "not-json": b"{not json",
        "single-quotes": b"{'kind': 'zfs', 'args': ['list']}",
        "trailing-comma": b'{"kind": "zfs", "args": ["list"],}',
        "bare-word": b'{"kind": zfs, "args": ["list"]}',
        "comment": b'/* x */ {"kind": "zfs", "args": ["list"]}',
        "trailing-data": as_json(LIST) + b" trailing",
        "two-documents": as_json(LIST) + as_json(LIST),
        "nul-byte": b"\x00",
        "nul-after": as_json(LIST) + b"\x00",
        "unterminated-string": b'{"kind": "zfs',
        "bad-escape": b'{"kind": "z\\qfs", "args": ["list"]}',
        "short-unicode-escape": b'{"kind": "\\u12", "args": ["list"]}',
        "control-in-string": b'{"kind": "zf\ns", "args": ["list"]}',
    }
    for name, body in bodies.items():
        yield post("malformed-json", name, "/host/op", body)
    for cut in range(1, len(VALID_BODY)):
        yield post("truncated-json", f"cut-{cut}", "/host/op", VALID_BODY[:cut])
    tops = {
        "array": b"[]",
        "array-of-op": b"[" + as_json(LIST) + b"]",
        "string": b'"zfs"',
        "number": b"7",
        "negative": b"-1",
        "huge-exponent": b"1e400",
        "nan": b"NaN",
        "infinity": b"-Infinity",
        "true": b"true",
        "null": b"null",
    }
    for name, body in tops.items():
        yield post("wrong-top-level-type", name, "/host/op", body)


# Values a field accepts are no attack on it.
ACCEPTED = {
    "resource": (None,),
    "dry_run": (True, False),
    "reason": (None,),
    "approval_id": (None,),
}
MORE_WRONG_TYPES = [(1.5, "float"), ([], "empty-list"), ({}, "empty-object"), (-1, "negative")]


def _wrong_types() -> Iterator[Attack]:
    wrong = [(p.values[0], str(p.id)) for p in WRONG_TYPES] + MORE_WRONG_TYPES
    for field in ("kind", "resource", "args", "dry_run", "reason", "approval_id"):
        for value, value_id in wrong:
            if any(value is ok for ok in ACCEPTED.get(field, ())):
                continue
            body = as_json({**LIST, field: value})
            yield post("wrong-field-type", f"{field}-{value_id}", "/host/op", body)
    for index in (0, 1):
        for value, value_id in wrong:
            args: list[Any] = ["list", "snapshot"]
            args[index] = value
            body = as_json({**LIST, "args": args})
            yield post("wrong-field-type", f"args[{index}]-{value_id}", "/host/op", body)


def _unknown_fields() -> Iterator[Attack]:
    for name in ("cn", "identity", "user", "sudo", "argv", "wrapper", "env", "token"):
        yield post("unknown-field", name, "/host/op", as_json({**LIST, name: "admin-1"}))
    for name, key in [
        ("proto", "__proto__"),
        ("upper-case", "Kind"),
        ("trailing-space", "kind "),
        ("zero-width", "kind\u200b"),
        ("fullwidth", "\uff4bind"),
        ("empty", ""),
        ("nul", "kind\x00"),
        ("lone-surrogate", "\udc00"),
    ]:
        yield post("unknown-field", name, "/host/op", as_json({**LIST, key: "zfs"}))


def _duplicate_keys() -> Iterator[Attack]:
    """Python's json keeps the last duplicate: a hostile last value must still be refused."""
    bodies = {
        "kind": b'{"kind": "zfs", "kind": "zfs; id", "resource": "tank", "args": ["list"]}',
        "resource": b'{"kind": "zfs", "resource": "tank", "resource": "../etc", "args": ["list"]}',
        "args": b'{"kind": "zfs", "resource": "tank", "args": ["list"], "args": ["list", "-r"]}',
        "dry-run": b'{"kind": "zfs", "dry_run": true, "dry_run": "yes", "args": ["list"]}',
        "approval-id": b'{"kind": "zfs", "args": ["list"], "approval_id": null, "approval_id": 1}',
        "reason": b'{"kind": "zfs", "args": ["list"], "reason": "ok", "reason": "a\\nb"}',
    }
    for name, body in bodies.items():
        yield post("duplicate-keys", name, "/host/op", body)


def _nested(depth: int, inner: bytes = b"1") -> bytes:
    return b"[" * depth + inner + b"]" * depth


def _deep_nesting() -> Iterator[Attack]:
    bodies = {
        "arrays-10k": _nested(10_000),
        "arrays-30k": _nested(30_000, b""),
        "objects-8k": b'{"a":' * 8_000 + b"1" + b"}" * 8_000,
        "mixed-10k": b'[{"a":' * 5_000 + b"1" + b"}]" * 5_000,
        "in-args": b'{"kind": "zfs", "args": ["list", ' + _nested(20_000) + b"]}",
        "in-resource": b'{"kind": "zfs", "args": ["list"], "resource": ' + _nested(20_000) + b"}",
        "in-reason": b'{"kind": "zfs", "args": ["list"], "reason": ' + _nested(20_000) + b"}",
        "shallow-but-wrong": b'{"kind": "zfs", "args": [[[["list"]]]]}',
    }
    for name, body in bodies.items():
        yield post("deep-nesting", name, "/host/op", body)
    # Around Python's recursion limit, where the parser stops and repr() (the audit
    # record's summary of a refused value) might not.
    for depth in (500, 900, 950, 980, 990, 1000, 1010):
        body = b'{"kind": ' + _nested(depth) + b', "args": ["list"]}'
        yield post("deep-nesting", f"kind-{depth}", "/host/op", body)


def _huge() -> Iterator[Attack]:
    """Bodies over [server] max_body_bytes (64 KiB): sent, declared, streamed, or absurd."""
    limit = 65536
    padded = b'{"kind": "zfs", "args": ["list"], "reason": "' + b"x" * (1 << 20) + b'"}'
    yield post("huge-body", "limit-plus-one", "/host/op", padded[: limit + 1])
    yield post("huge-body", "1-mib", "/host/op", padded)
    for size, name in [(1 << 20, "1-mib"), (1 << 34, "16-gib")]:
        raw = raw_request("POST", "/host/op", b"[" * 1000, f"Content-Length: {size}")
        yield Attack("huge-body", f"declared-{name}", "/host/op", raw)
    for count, name in [(3, "96-kib"), (32, "1-mib")]:
        chunks = (b"8000\r\n" + b" " * 0x8000 + b"\r\n") * count + b"0\r\n\r\n"
        raw = raw_request("POST", "/host/op", chunks, "Transfer-Encoding: chunked")
        yield Attack("huge-body", f"chunked-{name}", "/host/op", raw)
    # h11 refuses a Content-Length this long itself, before the app (see framing_attacks).
    raw = raw_request("POST", "/host/op", b"[", f"Content-Length: {10**30}")
    yield Attack("huge-body", "declared-10e30", "/host/op", raw, json_error=False, audited=False)
    strings = {
        "resource-60k": {**LIST, "resource": "t" * 60_000},
        "kind-60k": {**LIST, "kind": "z" * 60_000},
        "reason-60k": {**LIST, "reason": "r" * 60_000},
        "args-33": {**LIST, "args": ["list"] * 33},
        "args-10k": {**LIST, "args": ["a"] * 10_000},
        "args-32-long": {**LIST, "args": ["list", *["x" * 1_500] * 31]},
        "approval-id-60k": {**LIST, "approval_id": "ap-" + "0" * 60_000},
    }
    for name, document in strings.items():
        yield post("huge-strings", name, "/host/op", as_json(document))


def _unicode_names() -> Iterator[Attack]:
    """Look-alikes of the words the envelope dispatches on: kind and command."""
    kinds = {
        "fullwidth": "\uff5a\uff46\uff53",
        "zero-width": "zfs\u200b",
        "upper-case": "ZFS",
        "nul": "zfs\x00",
        "cyrillic-dze": "zf\u0455",
        "bidi": "\u202ezfs",
        "lone-surrogate": "zfs\udfff",
        "padded": " zfs",
        "empty": "",
        "path": "../zfs",
    }
    for name, kind in kinds.items():
        yield post("unicode-kind", name, "/host/op", as_json({**LIST, "kind": kind}))
    commands = {
        "fullwidth": "\uff4c\uff49\uff53\uff54",
        "zero-width": "list\u200b",
        "upper-case": "LIST",
        "cyrillic-i": "l\u0456st",
        "nul": "list\x00",
        "trailing-newline": "list\n",
        "option": "--list",
        "combined": "list;destroy",
    }
    for name, command in commands.items():
        body = as_json({**LIST, "args": [command]})
        yield post("unicode-command", name, "/host/op", body)


def _encodings() -> Iterator[Attack]:
    """Bytes that are not UTF-8, and JSON in encodings json.loads detects by itself."""
    hostile = {**LIST, "resource": "../etc"}
    text = json.dumps(hostile)
    bodies = {
        "ff-fe": b"\xff\xfe",
        "invalid-byte": b'{"kind": "zfs", "resource": "\xff", "args": ["list"]}',
        "overlong-dot": b'{"kind": "zfs", "resource": "\xc0\xae\xc0\xae", "args": ["list"]}',
        "cesu-surrogate": b'{"kind": "zfs", "resource": "\xed\xa0\x80", "args": ["list"]}',
        "latin-1": '{"kind": "zfs", "resource": "t\xe9", "args": ["list"]}'.encode("latin-1"),
        "cut-multibyte": b'{"kind": "zfs", "resource": "\xe2\x82", "args": ["list"]}',
        "utf-16-hostile": text.encode("utf-16"),
        "utf-32-hostile": text.encode("utf-32"),
        "utf-8-bom-hostile": text.encode("utf-8-sig"),
        "utf-16-garbage": "{not json".encode("utf-16"),
    }
    for name, body in bodies.items():
        yield post("non-utf8", name, "/host/op", body)


def _content_types() -> Iterator[Attack]:
    """The agent reads every body as JSON whatever its type: a hostile one is refused."""
    cases = {
        "form": ("application/x-www-form-urlencoded", b"kind=zfs&resource=tank&args=list"),
        "multipart": (
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="kind"\r\n\r\nzfs\r\n--x--\r\n',
        ),
        "xml": ("application/xml", b"<op><kind>zfs</kind><args>list</args></op>"),
        "yaml": ("application/yaml", b"kind: zfs\nargs: [list]\n"),
        "text-plain-hostile": ("text/plain", HOSTILE_OP),
        "json-utf16-charset": ("application/json; charset=utf-16", HOSTILE_OP),
        "garbage-type": (";;=;\x7f", HOSTILE_OP),
    }
    for name, (content_type, body) in cases.items():
        yield post("content-type", name, "/host/op", body, f"Content-Type: {content_type}")


def reason_attacks() -> Iterator[Attack]:
    reasons = {
        "osc-title": "ok\x1b]0;approved\x07",
        "isolate": "\u2066hidden\u2069",
        "fake-approval": "cleanup\r\n\r\nAPPROVED by admin",
        "overlong": "r" * 501,
        "lone-surrogate": "ok\udbff",
        "paragraph-separator": "ok\u2029Digest: 00",
        "private-use": "ok\ue000",
    }
    for name, reason in reasons.items():
        yield post("reason", name, "/host/op", as_json({**LIST, "reason": reason}))
    for value, value_id in HOSTILE:
        body = as_json({**LIST, "approval_id": value})
        yield post("approval-id-in-body", value_id, "/host/op", body)
        # A caller with no acts_for naming an agent: refused whatever the name.
        acting = as_json({**LIST, "on_behalf_of": value})
        yield post("on-behalf-of", value_id, "/host/op", acting)


# --- routing: methods, paths, HTTP framing -----------------------------------------

POST_ROUTES = (
    "/host/op",
    "/v1/tools/call",
    "/approve",
    "/webhook/signal",
    "/zfs/list",
    "/zfs/snapshot",
    "/zfs/destroy",
)
GET_ROUTES = (
    "/health",
    "/v1/tools/manifest",
    "/metrics",
    "/admin/warn-permissions",
    "/approvals/ap-0123456789abcdef",
    "/pending",
    "/admin/pending",
    "/openapi.json",
)
MIB = b" " * (1 << 20)


def method_attacks() -> Iterator[Attack]:
    """Wrong methods are refused by routing, 405 before any handler: not audited."""
    for route in POST_ROUTES:
        for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO"):
            yield Attack(
                "wrong-method",
                f"{method}-{route}",
                route,
                request(method, route, HOSTILE_OP),
                audited=False,
            )
        # A HEAD answer never has a body (RFC 9110 9.3.2): a 405 without JSON.
        yield Attack(
            "wrong-method",
            f"HEAD-{route}",
            route,
            request("HEAD", route),
            json_error=False,
            audited=False,
        )
    # Refused by routing, its body never read: the answer must still end the connection.
    yield Attack(
        "wrong-method",
        "PUT-/host/op-1-mib",
        "/host/op",
        request("PUT", "/host/op", MIB),
        audited=False,
    )
    for route in GET_ROUTES:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            yield Attack(
                "wrong-method",
                f"{method}-{route}",
                route.replace("ap-0123456789abcdef", "{approval_id}"),
                request(method, route, HOSTILE_OP),
                audited=False,
            )


def path_attacks() -> Iterator[Attack]:
    """Paths no route matches (404, not audited); encoded aliases of /host/op, which the
    ASGI server decodes and routes there (400, audited); approval ids that are none (404)."""
    for target in (
        "/host/op%00",
        "/host/op;x",
        "/HOST/OP",
        "//host/op",
        "/./host/op",
        "/host/op/.",
        "/host/op/",
        "/host/op%2f",
        "/zfs/../host/op",
        "/zfs/list/x",
        "/zfs",
        "/admin",
        "/%2e%2e/etc/passwd",
        "/" + "a" * 8000,
        "/%ff%fe",
        "/%c3%a9",
    ):
        yield Attack(
            "unknown-path",
            target[:40],
            "(none)",
            request("POST", target, HOSTILE_OP),
            audited=False,
        )
    yield Attack(
        "unknown-path", "/nope-1-mib", "(none)", request("POST", "/nope", MIB), audited=False
    )
    for target in ("/host%2fop", "/host%2Fop", "/%68ost/op", "/host/op?cn=admin-1"):
        yield Attack("path-alias", target, "/host/op", request("POST", target, HOSTILE_OP))
    for value in (
        "..%2F..",
        "..%2f..%2fadmin%2fpending",
        "%2e%2e",
        "..",
        ".",
        "",
        "ap-0123456789abcdef/",
        "ap-0123456789abcdef%00",
        "ap-0123456789ABCDEF",
        "ap-0123456789abcdef%0a",
        "'%20OR%20'1'='1",
        "%3Cscript%3E",
        "ap-" + "0" * 4000,
        "%ef%bd%81p-0123456789abcdef",
        "%ff%fe",
        "ap-0123456789abcdef/x",
        "ap-0123456789abcdef%2fx",
        "-r",
        "--help",
        "*",
        "%00",
        "ap-%24(id)",
    ):
        yield Attack(
            "approval-path",
            value[:40] or "empty",
            "/approvals/{approval_id}",
            request("GET", f"/approvals/{value}"),
            audited=False,
        )


def framing_attacks() -> Iterator[Attack]:
    """Requests HTTP/1.1 forbids, each aimed at /host/op: whichever layer answers, it is a
    4xx. Hypercorn's h11 answers most with a bare 400 before any route or identity is
    involved (so no JSON, nothing audited); where h11 lets one through, the app refuses
    the body like any other."""
    post_op = b"POST /host/op HTTP/1.1\r\nHost: x\r\n"
    by_h11 = {
        "two-lengths": post_op + b"Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
        "negative-length": post_op + b"Content-Length: -1\r\n\r\n",
        "hex-length": post_op + b"Content-Length: 0x10\r\n\r\n",
        "space-in-target": b"POST /host op HTTP/1.1\r\nHost: x\r\n\r\n",
        "nul-in-target": b"POST /host/op\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        "non-ascii-target": b"POST /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",
        "no-version": b"POST /host/op\r\nHost: x\r\n\r\n",
        "header-no-colon": post_op + b"broken\r\n\r\n",
        "header-bare-cr": post_op + b"X: a\rb\r\n\r\n",
        "header-nul": post_op + b"X: a\x00b\r\n\r\n",
        "header-space-before-colon": post_op + b"Content-Length : 2\r\n\r\n{}",
        "huge-header": post_op + b"X: " + b"a" * 100_000 + b"\r\n\r\n",
        "many-headers": post_op + b"X: a\r\n" * 20_000 + b"\r\n",
        "no-host": b"POST /host/op HTTP/1.1\r\n\r\n",
        "garbage": b"\x16\x03\x01\x00\x00\r\n\r\n",
    }
    for name, raw in by_h11.items():
        yield Attack("http-framing", name, "(http)", _closing(raw), json_error=False, audited=False)
    # The head is fine, so the app has the request when h11 finds the body broken and
    # answers 400 itself: the app's refusal of the cut-off body is audited all the same.
    raw = _closing(post_op + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n")
    yield Attack("http-framing", "bad-chunk", "/host/op", raw, json_error=False)
    # RFC 9112 6.1: a transfer coding the server does not know is answered 501.
    raw = _closing(post_op + b"Transfer-Encoding: gzip\r\n\r\n")
    yield Attack(
        "http-framing", "unknown-coding", "(http)", raw, json_error=False, audited=False, status=501
    )
    # Transfer-Encoding wins over Content-Length (RFC 9112 6.3); the app gets the chunks.
    by_app = {
        "cl-and-te": post_op + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        # h11 unfolds an obsolete folded header; the app then gets no body at all.
        "header-obs-fold": post_op + b"X: a\r\n b\r\n\r\n",
        "future-version": b"POST /host/op HTTP/9.9\r\nHost: x\r\nContent-Length: "
        + str(len(HOSTILE_OP)).encode()
        + b"\r\n\r\n"
        + HOSTILE_OP,
    }
    for name, raw in by_app.items():
        yield Attack("http-framing", name, "/host/op", _closing(raw))


def _closing(raw: bytes) -> bytes:
    """`raw` asking the server to close after answering (so reading ends)."""
    return raw.replace(b"\r\n", b"\r\nConnection: close\r\n", 1)


# --- who may call what ---------------------------------------------------------------


def caller_attacks() -> Iterator[Attack]:
    """Right shape, wrong caller: refused with 4xx, audited where the design says so."""
    for name, body in [("list", as_json(LIST)), ("garbage", b"{not json"), ("deep", _nested(9000))]:
        for route in ("/host/op", "/zfs/list"):
            yield post("unknown-cn", f"{route}-{name}", route, body, cn="stranger")
    yield Attack(
        "unknown-cn",
        "/v1/tools/manifest",
        "/v1/tools/manifest",
        request("GET", "/v1/tools/manifest"),
        cn="stranger",
        audited=False,
    )
    forged = ("X-Client-CN: admin-1", "X-SSL-Client-S-DN: CN=admin-1")
    for cn in ("librarian-1", "stranger"):
        for route in ("/admin/pending", "/admin/warn-permissions"):
            yield Attack(
                "not-admin",
                f"{cn}-{route}",
                route,
                request("GET", f"{route}?cn=admin-1", b"", *forged),
                cn=cn,
                audited=False,
            )
        body = as_json({"token": "ABCD-EFGH-JKLM-NPQR", "approval_id": "ap-0123456789abcdef"})
        yield post("not-admin", f"{cn}-approve", "/approve", body, *forged, cn=cn)


def approve_attacks() -> Iterator[Attack]:
    bodies: dict[str, Any] = {
        "empty-object": {},
        "array": [],
        "string": "token",
        "token-number": {"token": 1},
        "token-null": {"token": None},
        "token-list": {"token": ["x"]},
        "token-overlong": {"token": "T" * 65},
        "decision-bogus": {"token": "T", "decision": "maybe"},
        "decision-null": {"token": "T", "decision": None},
        "decision-bool": {"token": "T", "decision": True},
        "decision-upper": {"token": "T", "decision": "APPROVE"},
        "approver-field": {"token": "T", "approver": "+15555550001"},
        "cn-field": {"token": "T", "cn": "admin-2"},
        "id-number": {"token": "T", "approval_id": 7},
        "id-traversal": {"token": "T", "approval_id": "../ap-0123456789abcdef"},
        "id-upper": {"token": "T", "approval_id": "AP-0123456789ABCDEF"},
        "id-newline": {"token": "T", "approval_id": "ap-0123456789abcdef\n"},
    }
    for name, document in bodies.items():
        yield post("approve-body", name, "/approve", as_json(document))
    for name, body in [("not-json", b"{token"), ("deep", _nested(20_000)), ("bytes", b"\xff")]:
        yield post("approve-body", name, "/approve", body)
    yield post("approve-body", "too-large", "/approve", b"[" * 70_000)
    # Well-formed, but no approval has such a token: refused after lookup, audited.
    for value, value_id in HOSTILE:
        if len(value) <= 64:
            body = as_json({"token": value, "decision": "approve"})
            yield post("approve-token", value_id, "/approve", body)


WEBHOOK_LEGACY = {
    "token": "ABCD-EFGH-JKLM-NPQR",
    "confirmation_code": "APPROVE",
    "approver": "+15555550001",
    "timestamp": "2024-01-01T00:00:00Z",
}


def _envelope(**fields: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "receive", "params": {"envelope": fields}}


def webhook_attacks() -> Iterator[Attack]:
    """Unsigned or badly signed: 401. Signed but not a reply format: 400. Both audited."""
    body = as_json(WEBHOOK_LEGACY)
    signatures = {
        "none": None,
        "zeros": "sha256=" + "0" * 64,
        "not-hex": "sha256=" + "z" * 64,
        "short": sign(SECRET.encode(), body)[:-1],
        "sha1": "sha1=" + "0" * 40,
        "empty": "",
        "other-secret": sign(b"guessed-secret" * 3, body),
        "other-body": sign(SECRET.encode(), body + b" "),
        "overlong": "sha256=" + "0" * 8000,
        "non-ascii": "sha256=\u00e9",
    }
    for name, signature in signatures.items():
        headers = () if signature is None else (f"{SIGNATURE_HEADER}: {signature}",)
        yield post("webhook-auth", name, "/webhook/signal", body, *headers, cn="librarian-1")
    documents: dict[str, Any] = {
        "array-of-numbers": [1, 2],
        "too-many": [_envelope()] * 101,
        "jsonrpc-1": {"jsonrpc": "1.0", "method": "receive", "params": {}},
        "jsonrpc-send": {"jsonrpc": "2.0", "method": "send", "params": {}},
        "params-list": {"jsonrpc": "2.0", "method": "receive", "params": []},
        "envelope-list": {"envelope": []},
        "no-envelope": {"account": "+15555550009"},
        "account-number": {"envelope": {}, "account": 5},
        "data-not-object": _envelope(dataMessage="APPROVE X"),
        "message-not-string": _envelope(dataMessage={"message": ["APPROVE"]}),
        "message-overlong": _envelope(dataMessage={"message": "A" * 2001}),
        "sender-shell": _envelope(sourceNumber="+1; rm -rf /", dataMessage={"message": "x"}),
        "sender-missing": _envelope(dataMessage={"message": "APPROVE X"}),
        "timestamp-negative": _envelope(
            sourceNumber="+15555550001", timestamp=-1, dataMessage={"message": "APPROVE X"}
        ),
        "timestamp-bool": _envelope(
            sourceNumber="+15555550001", timestamp=True, dataMessage={"message": "APPROVE X"}
        ),
        "legacy-unknown-field": {**WEBHOOK_LEGACY, "cn": "admin-1"},
        "legacy-token-number": {**WEBHOOK_LEGACY, "token": 1},
        "legacy-token-overlong": {**WEBHOOK_LEGACY, "token": "T" * 65},
        "legacy-approver-shell": {**WEBHOOK_LEGACY, "approver": "$(id)"},
        "legacy-no-timezone": {**WEBHOOK_LEGACY, "timestamp": "2024-01-01T00:00:00"},
        "legacy-timestamp-junk": {**WEBHOOK_LEGACY, "timestamp": "yesterday"},
    }
    signed = {name: as_json(document) for name, document in documents.items()}
    signed |= {"not-json": b"{not json", "deep": _nested(20_000), "bytes": b"\xff\xfe"}
    for name, payload in signed.items():
        header = f"{SIGNATURE_HEADER}: {sign(SECRET.encode(), payload)}"
        yield post("webhook-body", name, "/webhook/signal", payload, header, cn="librarian-1")


# Where Python's json raises more than JSONDecodeError, or accepts what JSON does not.
PARSER_LIMITS = {
    "int-5000-digits": b"1" * 5000,
    "int-4301-digits": b"9" * 4301,
    "negative-int-5000-digits": b"-" + b"1" * 5000,
    "nan": b"NaN",
    "infinity": b"Infinity",
    "minus-infinity": b"-Infinity",
    "float-overflow": b"1e999",
    "lone-surrogate": b'"\\ud800"',
    "lone-low-surrogate": b'"a\\udc00b"',
}


def parser_limit_attacks() -> Iterator[Attack]:
    """Every route that parses a body, with a value the parser chokes on in each place a
    value goes: each is a 400 with a stable code, audited, never a 500."""
    for name, value in PARSER_LIMITS.items():
        for field in ("kind", "resource", "reason"):
            body = b'{"kind": "zfs", "args": ["list"], "' + field.encode() + b'": ' + value + b"}"
            if field == "kind":
                body = b'{"kind": ' + value + b', "args": ["list"]}'
            yield post("parser-limits", f"host-op-{field}-{name}", "/host/op", body)
        yield post(
            "parser-limits",
            f"host-op-arg-{name}",
            "/host/op",
            b'{"kind": "zfs", "args": ["list", ' + value + b"]}",
        )
        for route, template in LEGACY_TEMPLATES:
            first = next(iter(template))
            body = b'{"' + first.encode() + b'": ' + value + b"}"
            yield post("parser-limits", f"legacy-{route.rsplit('/', 1)[1]}-{name}", route, body)
        yield post("parser-limits", f"approve-{name}", "/approve", b'{"token": ' + value + b"}")
        payload = b'{"jsonrpc": "2.0", "method": "receive", "params": ' + value + b"}"
        header = f"{SIGNATURE_HEADER}: {sign(SECRET.encode(), payload)}"
        yield post("parser-limits", f"webhook-{name}", "/webhook/signal", payload, header)


# A page in an admin's browser, which holds the admin's certificate, POSTing a form.
BROWSER_HEADERS = {
    "origin": "Origin: https://evil.example",
    "origin-null": "Origin: null",
    "fetch-cross-site": "Sec-Fetch-Site: cross-site",
    "fetch-same-site": "Sec-Fetch-Site: same-site",
}
# Valid bodies: what runs if the header is not what refuses them.
BROWSER_BODIES = {
    "/host/op": as_json(LIST),
    "/v1/tools/call": as_json({"name": "zfs-list", "arguments": {}}),
    "/approve": as_json({"token": "ABCD-EFGH-JKMN-PQRS"}),
    "/webhook/signal": as_json(WEBHOOK_LEGACY),
    "/zfs/list": as_json({"dataset": "tank"}),
    "/zfs/snapshot": as_json({"dataset": "tank", "snapname": "s"}),
    "/zfs/destroy": as_json({"dataset": "tank@s"}),
}


def cross_site_attacks() -> Iterator[Attack]:
    """Every state-changing route refuses a request a browser marks as another site's,
    whatever its Content-Type: 403 cross_site_request, audited, nothing run."""
    for route in POST_ROUTES:
        for name, header in BROWSER_HEADERS.items():
            for content_type in ("text/plain", "application/json"):
                yield post(
                    "cross-site",
                    f"{route.strip('/').replace('/', '-')}-{name}-{content_type.split('/')[1]}",
                    route,
                    BROWSER_BODIES[route],
                    header,
                    f"Content-Type: {content_type}",
                )


def metrics_listener_attacks() -> Iterator[Attack]:
    """The plain-HTTP exporter (prometheus_client) answers GET on any path with the metrics
    and everything else with its own text/plain 405, or 414 for an overlong target: not
    JSON, and not the app's, so nothing is audited."""
    requests = {
        method: request(method, "/metrics", HOSTILE_OP)
        for method in ("POST", "PUT", "DELETE", "PATCH", "FOO")
    }
    requests["huge-target"] = request("GET", "/" + "a" * 70_000)
    for name, raw in requests.items():
        yield Attack(
            "metrics-listener",
            name,
            "/metrics (plain)",
            raw,
            json_error=False,
            audited=False,
            metrics_port=True,
        )


# --- /v1/tools/call: the envelope, then hostile names and arguments ------------------

TOOL_CALL = "/v1/tools/call"


def tool_call_attacks() -> Iterator[Attack]:
    """A body that is no tool call is a 400; a hostile name or argument is refused to the
    model (200, `status: error`): each audited once, nothing run."""
    envelopes = {
        "not-json": b"{name",
        "array": as_json(["zfs-list"]),
        "no-name": as_json({"arguments": {}}),
        "name-not-string": as_json({"name": 7, "arguments": {}}),
        "extra-key": as_json({"name": "zfs-list", "arguments": {}, "role": "admin"}),
        "arguments-not-json": as_json({"name": "zfs-list", "arguments": "{zfs"}),
        "arguments-array": as_json({"name": "zfs-list", "arguments": ["tank"]}),
        "function-not-object": as_json({"id": "c", "type": "function", "function": "zfs-list"}),
        "type-not-function": as_json({"id": "c", "type": "code", "function": {"name": "x"}}),
        "id-huge": as_json({"id": "i" * 1000, "name": "zfs-list", "arguments": {}}),
    }
    for name, body in envelopes.items():
        yield post("tool-call-envelope", name, TOOL_CALL, body)
    for value, value_id in HOSTILE:
        # Not a tool call at all (no name; text that is not UTF-8): 400, as above.
        envelope = value_id in ("empty", "lone-surrogate")
        status = None if envelope else 200
        named = {"name": value, "arguments": {}}
        yield post("tool-call-name", value_id, TOOL_CALL, as_json(named), status=status)
        if value_id != "empty":  # an empty resource lists every pool
            listed = {"name": "zfs-list", "arguments": json.dumps({"resource": value})}
            yield post("tool-call-argument", value_id, TOOL_CALL, as_json(listed), status=status)
        acting = {"name": "zfs-list", "arguments": {}, "on_behalf_of": value}
        # A name that is no CN makes no tool call (400); a CN this caller may not act
        # for is the pipeline's refusal, answered to the model.
        is_cn = re.fullmatch(r"[\x21-\x7e]{1,64}", value) is not None
        yield post(
            "tool-call-on-behalf-of",
            value_id,
            TOOL_CALL,
            as_json(acting),
            status=200 if is_cn else None,
        )
        checked = {"name": "check_approval", "arguments": {"approval_id": value}}
        checked_status = None if value_id == "lone-surrogate" else 200
        yield post(
            "tool-call-approval-id", value_id, TOOL_CALL, as_json(checked), status=checked_status
        )


def corpus() -> list[Attack]:
    return [
        *adapter_attacks(),
        *tool_call_attacks(),
        *legacy_attacks(),
        *envelope_attacks(),
        *reason_attacks(),
        *method_attacks(),
        *path_attacks(),
        *framing_attacks(),
        *caller_attacks(),
        *approve_attacks(),
        *webhook_attacks(),
        *parser_limit_attacks(),
        *cross_site_attacks(),
        *metrics_listener_attacks(),
    ]


CORPUS = corpus()


# --- the agent and what it leaves behind ---------------------------------------------


class Tail:
    """What was appended to a file since the last look."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def new_lines(self) -> list[str]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as file:
            file.seek(self.offset)
            data = file.read()
        self.offset += len(data)
        return data.decode().splitlines()

    def wait_lines(self, count: int, seconds: float = 2.0) -> list[str]:
        """The new lines, waiting up to `seconds` for `count` of them: the app may write
        its record after the HTTP layer below it has answered."""
        lines = self.new_lines()
        deadline = time.monotonic() + seconds
        while len(lines) < count and time.monotonic() < deadline:
            time.sleep(0.01)
            lines += self.new_lines()
        return lines


@dataclass
class Target:
    agent: RunningAgent
    config: Config
    record: Path  # one line per process the agent started
    contexts: dict[str, ssl.SSLContext]  # client certificate per CN


def corpus_config(pki: Pki, workdir: Path, sudo: RecordingSudo) -> Config:
    metrics = f'\n[metrics]\nenabled = true\nbind = "127.0.0.1:{free_port()}"\n'
    text = config_text(
        pki,
        workdir,
        profiles=EVERY_OPERATION_PROFILE,
        extra=UNLIMITED_CONTRACT_CONFIG + metrics,
        approval=f'webhook_secret = "{SECRET}"',
    )
    return write_config(workdir / "agent.toml", sudo.configure(text))


@pytest.fixture(scope="module")
def target(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    with recording_sudo() as sudo:
        config = corpus_config(pki, tmp_path_factory.mktemp("corpus"), sudo)
        contexts = {cn: client_context(pki.ca, *pki.client(cn)) for cn in {a.cn for a in CORPUS}}
        with running_agent(config) as agent:
            yield Target(agent, config, sudo.record, contexts)


@dataclass(frozen=True)
class Answer:
    status: int  # 0: the connection closed without an HTTP answer
    content_type: str
    body: bytes
    closed: bool  # the server ended the connection (each request asks it to)


def send(target: Target, attack: Attack) -> Answer:
    """`attack` on a connection of its own, so no attack can disturb the next one."""
    if attack.metrics_port:
        return exchange(target.config.metrics.port, None, attack.request)
    return exchange(target.agent.port, target.contexts[attack.cn], attack.request)


def exchange(port: int, context: ssl.SSLContext | None, raw: bytes) -> Answer:
    """Send `raw` (over TLS unless `context` is None) and read until the server closes."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as plain,
        (
            contextlib.nullcontext(plain)
            if context is None
            else context.wrap_socket(plain, server_hostname="localhost")
        ) as stream,
    ):
        with contextlib.suppress(OSError):  # it may answer, and close, before reading all
            stream.sendall(raw)
        data, closed = _read_until_closed(stream)
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ")
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    headers = dict(line.lower().partition(": ")[::2] for line in lines)
    return Answer(status, headers.get("content-type", ""), body, closed)


def _read_until_closed(stream: socket.socket) -> tuple[bytes, bool]:
    """What came back, and whether the server closed (False: it went quiet instead)."""
    chunks = []
    try:
        while chunk := stream.recv(65536):
            chunks.append(chunk)
    except TimeoutError:
        return b"".join(chunks), False
    except OSError:
        pass  # reset after answering: closed all the same
    return b"".join(chunks), True


# --- the tests ---------------------------------------------------------------------


@pytest.mark.parametrize("attack", [pytest.param(a, id=f"{a.category}:{a.id}") for a in CORPUS])
def test_hostile_input_is_refused_audited_and_starts_nothing(
    target: Target, figures: Figures, attack: Attack, caplog: pytest.LogCaptureFixture
) -> None:
    audit, record = Tail(target.config.audit.log_path), Tail(target.record)
    answer = send(target, attack)
    errors = [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= 40]
    records = [json.loads(line) for line in audit.wait_lines(1 if attack.audited else 0)]
    started = record.new_lines()
    tally(figures, attack, answer, len(records), len(started))
    if attack.status is None:
        assert 400 <= answer.status < 500, (answer.status, answer.body[:500])
    else:
        assert answer.status == attack.status
    assert answer.closed, "the server kept the connection open after its answer"
    if attack.json_error:
        reply = json.loads(answer.body)
        assert answer.content_type == "application/json"
        code, message = error_of(attack, reply)
        assert code in DOCUMENTED_CODES, reply
        assert isinstance(message, str)
    assert started == [], "the agent started a process"
    assert errors == [], "the agent logged an error (a traceback per hostile request)"
    assert len(records) == (1 if attack.audited else 0), records
    if records:
        check_record(records[0], attack, json.loads(answer.body) if attack.json_error else None)


def error_of(attack: Attack, reply: dict[str, Any]) -> tuple[str, str]:
    """The code and message of an error reply: the predecessor's shape from its routes
    (`{"success": false, "error": "<text>", "code"}`), a tool call's answer for the
    model (`{"status": "error", "content", "code"}`, 200), ours everywhere else,
    including the router's own refusals on those paths (a method they do not take)."""
    if attack.route in LEGACY_PATHS and attack.category != "wrong-method":
        assert reply["success"] is False
        return reply["code"], reply["error"]
    if attack.route == TOOL_CALL and attack.status == 200:
        assert reply["status"] == "error", reply
        return reply["code"], reply["content"]
    return reply["error"]["code"], reply["error"]["message"]


def check_record(record: dict[str, Any], attack: Attack, reply: dict[str, Any] | None) -> None:
    """The refusal's record names the caller and, when the app answered, the code and
    request id the caller got."""
    assert record["event"] in ("rejected", "decision", "approval_refused"), record
    if record["event"] == "decision":
        assert record["decision"] == "deny"
    if record["event"] == "approval_refused":
        assert record["approver"] == f"admin:{attack.cn}"
    else:
        assert record["cn"] == attack.cn
    if reply is not None:
        assert record["code"] == error_of(attack, reply)[0]
        assert record.get("request_id") == reply.get("request_id")


def tally(figures: Figures, attack: Attack, answer: Answer, audited: int, started: int) -> None:
    """Count before asserting, so a failing run still states its figures."""
    figures.add("inputs by category", attack.category)
    figures.add("inputs by route", attack.route)
    figures.add("answers by status", str(answer.status))
    figures.add("totals", "inputs")
    figures.add("totals", "5xx answers", answer.status >= 500)
    figures.add("totals", "5xx answers a standard prescribes", answer.status == attack.status)
    figures.add("totals", "connections left open after the answer", not answer.closed)
    figures.add("totals", "processes started", started)
    figures.add("totals", "audit records written", audited)
    figures.add("totals", "refusals the design audits", attack.audited)
    figures.add("totals", "audited refusals without a record", attack.audited and not audited)
    if attack.category.startswith("adapter-"):
        figures.add("adapter operations attacked", "-".join(attack.id.split("-")[:2]))


def test_the_corpus_covers_every_route_and_operation(pki: Pki, tmp_path: Path) -> None:
    assert len(CORPUS) >= 500
    text = config_text(pki, tmp_path, approvals=False)
    pipeline = build_pipeline(write_config(tmp_path / "agent.toml", text))
    try:
        paths = {route.path for route in build_app(pipeline).routes}  # type: ignore[attr-defined]
    finally:
        pipeline.audit.close()
    assert paths | {"/metrics (plain)"} == {a.route for a in CORPUS} - {"(none)", "(http)"}
    attacked = {f"{kind}-{args[0]}" for kind, _, args in TEMPLATES}
    assert attacked == OPERATION_NAMES


def test_every_template_is_valid_so_each_attack_changes_one_place(target: Target) -> None:
    registry = build_registry(target.config)
    for kind, resource, args in TEMPLATES:
        registry.adapter_for(kind).parse(HostOpRequest(kind, resource, args), "operator")


def test_the_recorder_sees_a_real_run(target: Target) -> None:
    """The control: a valid operation does start the stand-in, and the record shows it."""
    audit, record = Tail(target.config.audit.log_path), Tail(target.record)
    answer = send(target, post("control", "zfs-list", "/host/op", as_json(LIST)))
    assert answer.status == 200, answer.body
    decision = json.loads(audit.new_lines()[0])
    assert record.new_lines() == [" ".join(decision["argv"][1:])]
