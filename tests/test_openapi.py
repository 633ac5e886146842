"""docs/openapi.yaml against the code, so the description cannot drift from it.

Every route the app serves is described, and nothing else; the agent serves the document
at /openapi.json. Then schemathesis generates requests from the document, valid and
invalid, for every operation, and a live agent over mutual TLS must answer each only
with a documented status, content type, body shape and headers, and never a 5xx.

The agent runs every operation its policy allows on a recording sudo
(tests/recording_sudo.py): whatever is generated starts nothing real. Webhook bodies are
signed as a relay signs them, so they reach the parser instead of stopping at 401.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import schemathesis
import yaml
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from host_agent.app import build_app
from host_agent.approvals.signal import SIGNATURE_HEADER, sign
from host_agent.openapi import description_json
from host_agent.server import build_pipeline
from tests.recording_sudo import recording_sudo
from tests.resilience.request_parsing import DOCUMENTED_CODES
from tests.support import Pki, RunningAgent, client, config_text, running_agent, write_config
from tests.test_adapters import EVERY_OPERATION_PROFILE, UNLIMITED_CONTRACT_CONFIG

REPO = Path(__file__).resolve().parents[1]
DESCRIPTION = REPO / "host_agent" / "openapi.yaml"
DOCUMENT: dict[str, Any] = yaml.safe_load(DESCRIPTION.read_text())
# Every phase but the stateful one (approval links are not described): the documented
# examples, the coverage phase's boundary values and wrong methods, and generated requests,
# valid and invalid; derandomized, so a run is reproducible.
SCHEMA = schemathesis.openapi.from_dict(
    DOCUMENT,
    config=schemathesis.Config.from_dict(
        {
            "generation": {"max-examples": 30, "deterministic": True, "database": "none"},
            "phases": {"stateful": {"enabled": False}},
        }
    ),
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
DESCRIBED = {(path, method.upper()) for path, item in DOCUMENT["paths"].items() for method in item}
SECRET = "openapi-webhook-secret-0123456789abcdef"

# admin-1 may run every operation of every adapter without approval, and is an admin for
# the approval routes; librarian-1 needs approval for zfs-destroy; stranger has no profile.
# Generated requests come fast: the limits are off (UNLIMITED_CONTRACT_CONFIG), or most
# would meet 429 before the code under test.
CALLERS = ("admin-1", "librarian-1", "stranger")


@pytest.fixture(scope="module")
def fuzzed(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    with recording_sudo() as sudo:
        workdir = tmp_path_factory.mktemp("openapi")
        text = config_text(
            pki,
            workdir,
            profiles=EVERY_OPERATION_PROFILE,
            extra=UNLIMITED_CONTRACT_CONFIG,
            approval=f'webhook_secret = "{SECRET}"',
        )
        with running_agent(write_config(workdir / "agent.toml", sudo.configure(text))) as agent:
            yield agent


class SigningSession(requests.Session):
    """A webhook body is signed with the agent's webhook secret, as a relay signs it."""

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        if urlsplit(request.url).path == "/webhook/signal":
            body = request.body or b""
            data = body.encode() if isinstance(body, str) else body
            request.headers[SIGNATURE_HEADER] = sign(SECRET.encode(), data)
        return super().send(request, **kwargs)


def test_every_route_is_described_and_nothing_else(pki: Pki, tmp_path: Path) -> None:
    text = config_text(pki, tmp_path, approvals=False)
    pipeline = build_pipeline(write_config(tmp_path / "agent.toml", text))
    try:
        routes = build_app(pipeline).routes
    finally:
        pipeline.audit.close()
    served = {(route.path, method) for route in routes for method in route.methods - {"HEAD"}}  # type: ignore[attr-defined]
    assert served == DESCRIBED


def test_the_agent_serves_the_description_to_any_verified_caller(
    agent: RunningAgent, pki: Pki
) -> None:
    for cn in ("admin-1", "stranger"):
        with client(agent, pki, cn) as http:
            reply = http.get("/openapi.json")
        assert reply.status_code == 200, reply.text
        assert reply.headers["content-type"] == "application/json"
        assert reply.json() == DOCUMENT


def test_the_document_is_openapi_3_1_under_mutual_tls() -> None:
    assert DOCUMENT["openapi"] == "3.1.0"
    schemes = DOCUMENT["components"]["securitySchemes"]
    assert [scheme["type"] for scheme in schemes.values()] == ["mutualTLS"]
    assert DOCUMENT["security"] == [{name: []} for name in schemes]
    SCHEMA.validate()


def test_docs_link_to_the_packaged_description() -> None:
    assert (REPO / "docs" / "openapi.yaml").resolve() == DESCRIPTION.resolve()


def test_every_error_code_it_names_is_documented() -> None:
    """The error responses name codes in their descriptions: each is in docs/*.md."""
    texts = " ".join(r["description"] for r in DOCUMENT["components"]["responses"].values())
    named = set(re.findall(r"`([a-z][a-z0-9_]*)`", texts))
    assert {"unknown_cn", "rate_limited", "audit_unavailable"} <= named
    assert named - DOCUMENTED_CODES == set()


def tls_as(pki: Pki, cn: str) -> dict[str, Any]:
    """The transport arguments that make a request mutual TLS as `cn` (schemathesis
    passes its own `verify`, so a session's would be overridden)."""
    cert, key = pki.client(cn)
    return {"verify": str(pki.ca), "cert": (str(cert), str(key))}


def answer(
    agent: RunningAgent, pki: Pki, cn: str, path: str, method: str, **parts: Any
) -> schemathesis.Response:
    """One request as `cn`, its answer checked against the description."""
    case = SCHEMA[path][method].Case(media_type="application/json", **parts)
    with SigningSession() as session:
        return case.call_and_validate(
            base_url=agent.url, session=session, checks=CHECKS, **tls_as(pki, cn)
        )


def test_an_approval_is_followed_and_decided_as_documented(fuzzed: RunningAgent, pki: Pki) -> None:
    """The approval routes on a real approval: asked for (202), seen by its requester and
    the admins, refused to a non-admin, denied by an admin, then refused on resubmission
    and reported so to a tool call."""
    destroy = {"kind": "zfs", "resource": "tank/media@flow", "args": ["destroy"]}
    pending = answer(fuzzed, pki, "librarian-1", "/host/op", "POST", body=destroy)
    assert pending.status_code == 202
    approval = {"approval_id": pending.json()["approval_id"]}
    steps = [
        ("librarian-1", "/approvals/{approval_id}", "GET", {"path_parameters": approval}),
        (
            "admin-1",
            "/approvals/{approval_id}",
            "GET",
            {"path_parameters": approval, "query": {"wait": "0.1"}},
        ),
        ("librarian-1", "/pending", "GET", {}),
        (
            "librarian-1",
            "/v1/tools/call",
            "POST",
            {"body": {"name": "check_approval", "arguments": approval}},
        ),
        ("admin-1", "/admin/pending", "GET", {}),
        ("librarian-1", "/approve", "POST", {"body": approval}),
        ("admin-1", "/approve", "POST", {"body": {**approval, "decision": "deny"}}),
        ("librarian-1", "/host/op", "POST", {"body": {**destroy, **approval}}),
        (
            "librarian-1",
            "/v1/tools/call",
            "POST",
            {"body": {"name": "check_approval", "arguments": approval}},
        ),
    ]
    answers = [answer(fuzzed, pki, cn, path, method, **parts) for cn, path, method, parts in steps]
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 200, 403, 200, 403, 200]
    assert answers[3].json()["approval"]["status"] == "pending"
    assert answers[6].json()["status"] == "denied"
    assert answers[8].json()["code"] == "approval_denied"


def test_an_unsigned_webhook_is_refused_as_documented(fuzzed: RunningAgent, pki: Pki) -> None:
    """The fuzzing signs every webhook body; unsigned, from a certificate that is not the
    bridge's, it is 401 `webhook_unauthenticated`, as described."""
    case = SCHEMA["/webhook/signal"]["POST"].Case(body=[], media_type="application/json")
    with requests.Session() as session:
        reply = case.call_and_validate(
            base_url=fuzzed.url, session=session, checks=CHECKS, **tls_as(pki, "admin-1")
        )
    assert reply.status_code == 401
    assert reply.json()["error"]["code"] == "webhook_unauthenticated"


@pytest.mark.parametrize(
    ("path", "headers", "body", "status", "code"),
    [
        pytest.param("/host/op", {}, {"kind": "x" * 70_000, "args": ["list"]}, 413,
                     "body_too_large", id="too-large"),
        pytest.param("/approve", {"Origin": "https://elsewhere.example"},
                     {"approval_id": "ap-0123456789abcdef"}, 403, "cross_site_request",
                     id="browser"),
        pytest.param("/zfs/snapshot", {"Sec-Fetch-Site": "cross-site"},
                     {"dataset": "tank/a", "snapname": "s"}, 403, "cross_site_request",
                     id="browser-predecessor-route"),
    ],
)  # fmt: skip
def test_refusals_before_the_body_are_answered_as_documented(
    fuzzed: RunningAgent,
    pki: Pki,
    path: str,
    headers: dict[str, str],
    body: Any,
    status: int,
    code: str,
) -> None:
    """What generated requests never meet: a body over `max_body_bytes` (65536 by
    default), and a request a browser marks as another site's."""
    reply = answer(fuzzed, pki, "admin-1", path, "POST", headers=headers, body=body)
    assert reply.status_code == status
    refusal = reply.json()
    assert code == (refusal["code"] if "code" in refusal else refusal["error"]["code"])


def test_a_rate_limit_is_answered_as_documented(pki: Pki, tmp_path: Path) -> None:
    """429 with `Retry-After`, in both error shapes: the predecessor's limit of 5 a
    minute on /pending and /zfs/destroy (the default config)."""
    requests_made = [
        ("/pending", "GET", {}),
        ("/zfs/destroy", "POST", {"body": {"dataset": "tank/a@s"}}),
    ]
    with recording_sudo() as sudo:
        text = sudo.configure(config_text(pki, tmp_path))
        with running_agent(write_config(tmp_path / "agent.toml", text)) as agent:
            statuses = {
                path: [
                    answer(agent, pki, "librarian-1", path, method, **parts).status_code
                    for _ in range(6)
                ]
                for path, method, parts in requests_made
            }
    assert statuses == {"/pending": [200] * 5 + [429], "/zfs/destroy": [200] * 5 + [429]}


@pytest.fixture(scope="module", params=CALLERS)
def caller(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@SCHEMA.parametrize()
def test_the_live_agent_answers_as_documented(
    case: schemathesis.Case, fuzzed: RunningAgent, pki: Pki, caller: str
) -> None:
    """Each operation, as each caller: about 2,300 requests in 20 s on two cores."""
    with SigningSession() as session:
        case.call_and_validate(
            base_url=fuzzed.url, session=session, checks=CHECKS, **tls_as(pki, caller)
        )


def test_a_served_document_is_json_of_the_yaml() -> None:
    """What the package serves is the YAML itself, read from where it is installed."""
    assert json.loads(description_json()) == DOCUMENT
