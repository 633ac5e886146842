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
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
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
from tests.test_adapters import CONTRACT_CONFIG

REPO = Path(__file__).resolve().parents[1]
DESCRIPTION = REPO / "host_agent" / "openapi.yaml"
DOCUMENT: dict[str, Any] = yaml.safe_load(DESCRIPTION.read_text())
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
DESCRIBED = {(path, method.upper()) for path, item in DOCUMENT["paths"].items() for method in item}
# Invalid requests for every operation that takes input (one with none has no invalid form).
GENERATED = [
    pytest.param(path, method.upper(), mode, id=f"{method.upper()} {path} {mode.value}")
    for path, item in DOCUMENT["paths"].items()
    for method, operation in item.items()
    for mode in GenerationMode
    if mode is GenerationMode.POSITIVE or "requestBody" in operation or "parameters" in operation
]
SECRET = "openapi-webhook-secret-0123456789abcdef"

# admin-1 may run every operation of every adapter without approval, and is an admin for
# the approval routes; librarian-1 needs approval for zfs-destroy; stranger has no profile.
PROFILE = """
[[agents]]
cn_pattern = "admin-*"
agent_type = "operator"
unix_user = "operator"
autonomy = "full"
allowed_operations = ["zfs-*", "systemd-*", "pct-*", "git-*", "exec-*"]
allow_recursive = true
"""
# Generated requests come fast; with limits on, most would meet 429 before the code under test.
EXTRA = CONTRACT_CONFIG + "\n[rate_limit]\nenabled = false\n"
CALLERS = ("admin-1", "librarian-1", "stranger")
# Generated requests per operation, caller and mode: about 15 s in all on two cores.
MAX_EXAMPLES = 40


@pytest.fixture(scope="module")
def fuzzed(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    with recording_sudo() as sudo:
        workdir = tmp_path_factory.mktemp("openapi")
        text = config_text(
            pki, workdir, profiles=PROFILE, extra=EXTRA, approval=f'webhook_secret = "{SECRET}"'
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


EXAMPLES_GIVEN = [
    pytest.param(path, method.upper(), example["value"], id=f"{method.upper()} {path} {name}")
    for path, item in DOCUMENT["paths"].items()
    for method, operation in item.items()
    for name, example in operation.get("requestBody", {})
    .get("content", {})
    .get("application/json", {})
    .get("examples", {})
    .items()
]


def session_for(pki: Pki, cn: str) -> tuple[SigningSession, dict[str, Any]]:
    """A session, and the transport arguments that make each request mutual TLS as `cn`
    (schemathesis passes its own `verify`, so a session's would be overridden)."""
    cert, key = pki.client(cn)
    return SigningSession(), {"verify": str(pki.ca), "cert": (str(cert), str(key))}


@pytest.mark.parametrize("cn", CALLERS)
@pytest.mark.parametrize(("path", "method", "body"), EXAMPLES_GIVEN)
def test_the_documented_examples_are_answered_as_documented(
    fuzzed: RunningAgent, pki: Pki, path: str, method: str, body: Any, cn: str
) -> None:
    """Valid requests go past validation: 200 and 202 bodies meet their schemas too."""
    session, tls = session_for(pki, cn)
    case = SCHEMA[path][method].Case(body=body, media_type="application/json")
    with session:
        case.call_and_validate(base_url=fuzzed.url, session=session, checks=CHECKS, **tls)


def test_an_approval_is_followed_and_decided_as_documented(fuzzed: RunningAgent, pki: Pki) -> None:
    """The approval routes on a real approval: asked for (202), seen by its requester and
    the admins, denied by an admin, then refused on resubmission."""
    destroy = {"kind": "zfs", "resource": "tank/media@flow", "args": ["destroy"]}
    answers = []

    def call(cn: str, path: str, method: str, **parts: Any) -> Any:
        session, tls = session_for(pki, cn)
        case = SCHEMA[path][method].Case(media_type="application/json", **parts)
        with session:
            reply = case.call_and_validate(
                base_url=fuzzed.url, session=session, checks=CHECKS, **tls
            )
        answers.append(reply.status_code)
        return reply.json()

    pending = call("librarian-1", "/host/op", "POST", body=destroy)
    approval = {"approval_id": pending["approval_id"]}
    call("librarian-1", "/approvals/{approval_id}", "GET", path_parameters=approval)
    call(
        "admin-1",
        "/approvals/{approval_id}",
        "GET",
        path_parameters=approval,
        query={"wait": "0.1"},
    )
    call("librarian-1", "/pending", "GET")
    call("admin-1", "/admin/pending", "GET")
    call("librarian-1", "/approve", "POST", body={**approval, "decision": "approve"})
    denied = call("admin-1", "/approve", "POST", body={**approval, "decision": "deny"})
    call("librarian-1", "/host/op", "POST", body={**destroy, **approval})
    call(
        "librarian-1",
        "/v1/tools/call",
        "POST",
        body={"name": "check_approval", "arguments": approval},
    )
    assert denied["status"] == "denied"
    assert answers == [202, 200, 200, 200, 200, 403, 200, 403, 200]


def test_a_rate_limit_is_answered_as_documented(pki: Pki, tmp_path: Path) -> None:
    """429 with `Retry-After`, in both error shapes: the predecessor's limit of 5 a
    minute on /pending and /zfs/destroy (the default config)."""
    with recording_sudo() as sudo:
        text = sudo.configure(config_text(pki, tmp_path))
        with running_agent(write_config(tmp_path / "agent.toml", text)) as agent:
            session, tls = session_for(pki, "librarian-1")
            statuses: dict[str, list[int]] = {"/pending": [], "/zfs/destroy": []}
            with session:
                for _ in range(6):
                    for path, method, body in (
                        ("/pending", "GET", None),
                        ("/zfs/destroy", "POST", {"dataset": "tank/a@s"}),
                    ):
                        parts = {} if body is None else {"body": body}
                        case = SCHEMA[path][method].Case(media_type="application/json", **parts)
                        reply = case.call_and_validate(
                            base_url=agent.url, session=session, checks=CHECKS, **tls
                        )
                        statuses[path].append(reply.status_code)
    assert statuses == {"/pending": [200] * 5 + [429], "/zfs/destroy": [200] * 5 + [429]}


@pytest.mark.parametrize("cn", CALLERS)
@pytest.mark.parametrize(("path", "method", "mode"), GENERATED)
def test_the_live_agent_answers_as_documented(
    fuzzed: RunningAgent, pki: Pki, path: str, method: str, cn: str, mode: GenerationMode
) -> None:
    operation = SCHEMA[path][method]
    session, tls = session_for(pki, cn)
    with session:

        @settings(
            max_examples=MAX_EXAMPLES,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(mode))
        def answers_as_documented(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=fuzzed.url, session=session, checks=CHECKS, **tls)

        answers_as_documented()


def test_a_served_document_is_json_of_the_yaml() -> None:
    """What the package serves is the YAML itself, read from where it is installed."""
    assert json.loads(description_json()) == DOCUMENT
