"""/host/op over real mutual TLS: envelope errors, policy refusals, dry runs, audit."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from host_agent.app import parse_verdict
from host_agent.audit import verify
from host_agent.config import Config
from host_agent.errors import ValidationError
from tests.hostile import WRONG_TYPES
from tests.support import (
    Pki,
    RunningAgent,
    audit_records,
    client,
    config_text,
    running_agent,
    write_config,
)


@pytest.fixture
def librarian(agent: RunningAgent, pki: Pki) -> Iterator[httpx.Client]:
    with client(agent, pki, "librarian-1") as http:
        yield http


def _error(reply: httpx.Response) -> dict[str, Any]:
    assert reply.headers["content-type"] == "application/json"
    error: dict[str, Any] = reply.json()["error"]
    return error


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        pytest.param(b"{not json", "bad_request", "body", id="malformed-json"),
        pytest.param(b"\xff\xfe", "bad_request", "body", id="not-utf8"),
        pytest.param(b"[1, 2]", "invalid_body", "body", id="array-body"),
        pytest.param(b'"zfs"', "invalid_body", "body", id="string-body"),
        pytest.param(b"[" * 30_000 + b"]" * 30_000, "bad_request", "body", id="deep-nesting"),
        pytest.param(b'{"args": ["list"]}', "invalid_type", "kind", id="missing-kind"),
        pytest.param(b'{"kind": "zfs"}', "invalid_type", "args", id="missing-args"),
        pytest.param(b'{"kind": "zfs", "args": []}', "invalid_type", "args", id="empty-args"),
        pytest.param(b'{"kind": "zfs", "args": "list"}', "invalid_type", "args", id="args-string"),
        pytest.param(
            b'{"kind": "zfs", "args": ["list"], "cn": "admin-1"}',
            "unknown_field",
            "cn",
            id="unknown-field",
        ),
        pytest.param(
            b'{"kind": "zfs", "args": ["list"], "dry_run": "yes"}',
            "invalid_type",
            "dry_run",
            id="dry-run-string",
        ),
        pytest.param(
            b'{"kind": "zfs", "args": ["list"], "reason": "' + b"x" * 600 + b'"}',
            "invalid_type",
            "reason",
            id="reason-overlong",
        ),
        *(
            pytest.param(
                json.dumps({"kind": "zfs", "args": ["list"], "reason": reason}).encode(),
                "invalid_characters",
                "reason",
                id=f"reason-{name}",
            )
            for name, reason in [
                ("fake-lines", "cleanup\nWould affect:\n  nothing"),
                ("carriage-return", "ok\rDigest: 00"),
                ("nul", "ok\x00"),
                ("escape-sequence", "ok\x1b[2J"),
                ("bidi-override", "ok \u202e"),
                ("zero-width", "o\u200bk"),
                ("line-separator", "ok\u2028Digest: 00"),
                # Blank-looking and wide characters that lay out fake lines on a phone.
                *(
                    (f"blank-u{ord(blank):04x}", f"cleanup{blank * 40}Would affect: nothing")
                    for blank in "\u2800\u3164\u115f\uffa0\u3000\u2003\u00a0\u1680\u205f"
                ),
            ]
        ),
        # No UTF-8 log line can hold a lone surrogate: the strict parser refuses the body.
        pytest.param(
            json.dumps({"kind": "zfs", "args": ["list"], "reason": "ok\ud800"}).encode(),
            "bad_request",
            "body",
            id="reason-lone-surrogate",
        ),
        pytest.param(
            b'{"kind": "zfs", "args": [' + b'"a",' * 40 + b'"a"]}',
            "too_many_arguments",
            "args",
            id="too-many-args",
        ),
        *(
            pytest.param(
                json.dumps({"kind": "zfs", "args": ["list"], "metadata": metadata}).encode(),
                code,
                field,
                id=f"metadata-{name}",
            )
            for name, metadata, code, field in [
                ("not-an-object", ["ticket"], "invalid_type", "metadata"),
                ("number", {"job": 7}, "invalid_type", "metadata.job"),
                ("nested", {"job": {"id": "7"}}, "invalid_type", "metadata.job"),
                ("overlong", {"job": "x" * 257}, "invalid_type", "metadata.job"),
                ("fake-lines", {"job": "x\nReply APPROVE"}, "invalid_characters", "metadata.job"),
                ("bidi", {"job": "ok \u202e"}, "invalid_characters", "metadata.job"),
                ("key", {"Job Id": "7"}, "invalid_name", "metadata"),
                ("too-many", {f"k{n}": "v" for n in range(17)}, "too_many_arguments", "metadata"),
                (
                    "token",
                    {"approval_token": "ABCDEFGHJKMNPQRS"},
                    "approval_token_not_accepted",
                    "metadata.approval_token",
                ),
            ]
        ),
    ],
)
def test_malformed_envelope_is_a_400_json_error_and_audited(
    librarian: httpx.Client, config: Config, body: bytes, code: str, field: str
) -> None:
    reply = librarian.post("/host/op", content=body)
    assert reply.status_code == 400
    error = _error(reply)
    assert (error["code"], error["field"]) == (code, field)
    assert reply.json()["request_id"]
    (record,) = audit_records(config.audit.log_path)
    assert record["event"] == "rejected"
    assert (record["code"], record["field"], record["cn"]) == (code, field, "librarian-1")
    assert record["request_id"] == reply.json()["request_id"]


# null resource means "no resource", as in the predecessor, so it is not a wrong type there.
WRONG_TYPE_CASES = [
    pytest.param(where, case.values[0], id=f"{where}-{case.id}")
    for where in ("kind", "resource", "args[1]")
    for case in WRONG_TYPES
    if not (where == "resource" and case.values[0] is None)
]


@pytest.mark.parametrize(("where", "value"), WRONG_TYPE_CASES)
def test_wrong_types_are_refused(librarian: httpx.Client, where: str, value: Any) -> None:
    body: dict[str, Any] = {"kind": "zfs", "resource": "tank", "args": ["list"]}
    if where == "args[1]":
        body["args"] = ["list", value]
    else:
        body[where] = value
    reply = librarian.post("/host/op", json=body)
    assert reply.status_code == 400
    assert (_error(reply)["code"], _error(reply)["field"]) == ("invalid_type", where)


def test_body_larger_than_the_limit_is_413(librarian: httpx.Client, config: Config) -> None:
    body = b'{"kind": "zfs", "args": ["list"], "reason": "' + b"x" * 70_000 + b'"}'
    reply = librarian.post("/host/op", content=body)
    assert reply.status_code == 413
    assert _error(reply)["code"] == "body_too_large"
    (record,) = audit_records(config.audit.log_path)
    assert (record["event"], record["code"]) == ("rejected", "body_too_large")


def test_unknown_kind_is_404_and_audited(librarian: httpx.Client, config: Config) -> None:
    reply = librarian.post("/host/op", json={"kind": "kubectl", "args": ["delete"]})
    assert reply.status_code == 404
    assert (_error(reply)["code"], _error(reply)["field"]) == ("unknown_kind", "kind")
    assert audit_records(config.audit.log_path)[-1]["code"] == "unknown_kind"


def test_unknown_command_is_400(librarian: httpx.Client) -> None:
    reply = librarian.post("/host/op", json={"kind": "zfs", "args": ["upgrade"]})
    assert reply.status_code == 400
    assert (_error(reply)["code"], _error(reply)["field"]) == ("unknown_command", "args[0]")


def test_unknown_route_and_method_are_json_errors(librarian: httpx.Client) -> None:
    missing = librarian.get("/nope")
    assert missing.status_code == 404 and _error(missing)["code"] == "not_found"
    wrong = librarian.get("/host/op")
    assert wrong.status_code == 405 and _error(wrong)["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("cn", "body", "code"),
    [
        pytest.param("stranger", {"kind": "zfs", "args": ["list"]}, "unknown_cn", id="unknown-cn"),
        pytest.param(
            "reader-1",
            {"kind": "zfs", "resource": "tank", "args": ["snapshot", "s"]},
            "read_only",
            id="read-only-mutation",
        ),
        pytest.param(
            "librarian-1",
            {"kind": "zfs", "resource": "forbidden/x", "args": ["snapshot", "s"]},
            "rule_denied",
            id="deny-rule",
        ),
    ],
)
def test_policy_refusals_are_403_audited_and_run_nothing(
    agent: RunningAgent, pki: Pki, config: Config, cn: str, body: dict[str, Any], code: str
) -> None:
    with client(agent, pki, cn) as http:
        reply = http.post("/host/op", json=body)
    assert reply.status_code == 403
    assert _error(reply)["code"] == code
    records = audit_records(config.audit.log_path)
    assert [r["event"] for r in records] == ["decision"]
    assert (records[0]["decision"], records[0]["code"], records[0]["cn"]) == ("deny", code, cn)


def test_unknown_cn_is_refused_before_its_input_is_parsed(
    agent: RunningAgent, pki: Pki, config: Config
) -> None:
    with client(agent, pki, "stranger") as http:
        reply = http.post("/host/op", json={"kind": "nope", "args": [1]})
    assert reply.status_code == 403
    assert _error(reply)["code"] == "unknown_cn"


APPROVAL_RULE = '[[rules]]\noperation = "zfs-snapshot"\napproval_required = true\n'


def test_approval_needed_answers_202_with_the_id_and_digest_never_the_token(
    pki: Pki, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "approval.toml", config_text(pki, tmp_path, extra=APPROVAL_RULE)
    )
    body = {"kind": "zfs", "resource": "tank", "args": ["snapshot", "s1"], "reason": "backup"}
    with running_agent(config) as other, client(other, pki, "librarian-1") as http:
        reply = http.post("/host/op", json=body)
    assert reply.status_code == 202, reply.text
    pending = reply.json()
    assert pending["status"] == "pending" and pending["approval_id"].startswith("ap-")
    assert pending["operation"] == "zfs-snapshot" and pending["expires_at"]
    assert not {"token", "token_hash"} & set(pending)
    decision, created = audit_records(config.audit.log_path)
    assert decision["decision"] == "approval_required"
    assert created["event"] == "approval_created"
    assert created["approval_id"] == pending["approval_id"]
    assert created["digest"] == pending["digest"] == decision["digest"]
    assert len(created["token_hash"]) == 64
    assert created["token_hash"] not in reply.text


def test_approval_needed_is_refused_when_approvals_are_disabled(pki: Pki, tmp_path: Path) -> None:
    text = config_text(pki, tmp_path, extra=APPROVAL_RULE, approvals=False)
    config = write_config(tmp_path / "approval.toml", text)
    with running_agent(config) as other, client(other, pki, "librarian-1") as http:
        reply = http.post(
            "/host/op", json={"kind": "zfs", "resource": "tank", "args": ["snapshot", "s1"]}
        )
    assert reply.status_code == 403
    assert _error(reply)["code"] == "approval_required"
    assert "approvals are disabled" in _error(reply)["message"]
    (record,) = audit_records(config.audit.log_path)
    assert record["decision"] == "approval_required"


def test_dry_run_answers_the_decision_without_running(
    librarian: httpx.Client, config: Config
) -> None:
    reply = librarian.post(
        "/host/op",
        json={
            "kind": "zfs",
            "resource": "tank/data",
            "args": ["snapshot", "before-upgrade"],
            "dry_run": True,
            "reason": "upgrade – vor dem Update, naïve café 😀",
        },
    )
    assert reply.status_code == 200
    body = reply.json()
    assert body["decision"]["effect"] == "allow"
    # Where sudo and the wrappers live is for admins: a caller sees the wrapper's name.
    assert body["argv"] == ["host-agent-zfs", "snapshot", "tank/data@before-upgrade"]
    records = audit_records(config.audit.log_path)
    assert records[0]["argv"][:3] == [str(config.runner.sudo), "-n", "--"]
    assert [r["event"] for r in records] == ["decision"]
    assert records[0]["dry_run"] is True and records[0]["reason_text"] == (
        "upgrade – vor dem Update, naïve café 😀"
    )
    assert records[0]["digest"] == body["digest"]


def test_every_request_is_chained_in_the_audit_log(librarian: httpx.Client, config: Config) -> None:
    for body in (
        {"kind": "zfs", "args": ["list"], "dry_run": True},
        {"kind": "bad", "args": ["x"]},
        {"kind": "zfs", "args": ["list", "nope"]},
    ):
        librarian.post("/host/op", json=body)
    records = audit_records(config.audit.log_path)
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert verify([config.audit.log_path]).ok


def test_audit_unwritable_means_503_for_every_request(pki: Pki, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "full.toml", config_text(pki, tmp_path, audit_log=Path("/dev/full"))
    )
    with running_agent(config) as agent, client(agent, pki, "librarian-1") as http:
        for body in (
            {"kind": "zfs", "args": ["list"], "dry_run": True},
            {"kind": "zfs", "resource": "tank", "args": ["snapshot", "s"]},
            {"kind": "zfs", "args": ["bogus"]},
        ):
            reply = http.post("/host/op", json=body)
            assert reply.status_code == 503
            assert _error(reply)["code"] == "audit_unavailable"
        assert http.get("/health").status_code == 200


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        pytest.param(
            {"token": "T", "approval_id": ""}, "approval_id", "invalid_type", id="empty-id"
        ),
        pytest.param(
            {"token": "T", "approval_id": 7}, "approval_id", "invalid_type", id="id-number"
        ),
        pytest.param(
            {"token": "T", "approval_id": "ap-" + "0" * 16 + "\n"},
            "approval_id",
            "invalid_type",
            id="id-newline",
        ),
        pytest.param(
            {"token": "T", "approval_id": "../ap-0000000000000000"},
            "approval_id",
            "invalid_type",
            id="id-traversal",
        ),
        pytest.param(
            {"token": "T", "approval_id": "AP-" + "0" * 16},
            "approval_id",
            "invalid_type",
            id="id-case",
        ),
        pytest.param({"token": "T", "approver": "x"}, "body", "invalid_body", id="unknown-field"),
        pytest.param({"decision": "deny"}, "token", "invalid_type", id="names-no-approval"),
        pytest.param({"approval_id": None}, "token", "invalid_type", id="null-id-only"),
    ],
)
def test_approve_bodies_are_checked_before_any_lookup(
    body: dict[str, Any], field: str, code: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        parse_verdict(body)
    assert (refused.value.field, refused.value.code) == (field, code)


def test_approve_body_with_and_without_the_predecessors_approval_id() -> None:
    assert parse_verdict({"token": "T"}) == ("T", True, None)
    approval_id = "ap-" + "a" * 16
    body = {"token": "T", "decision": "deny", "approval_id": approval_id}
    assert parse_verdict(body) == ("T", False, approval_id)


def test_host_paths_are_shown_to_admins_only(agent: RunningAgent, pki: Pki, config: Config) -> None:
    """Dry runs and /health name the wrappers, sudo, the audit log and the CRL only to an
    admin; a CN without a profile learns whether the agent is well, and its version."""
    dry_run = {"kind": "zfs", "resource": "tank", "args": ["list"], "dry_run": True}
    with client(agent, pki, "admin-1") as http:
        assert http.post("/host/op", json=dry_run).json()["argv"][:3] == [
            str(config.runner.sudo),
            "-n",
            "--",
        ]
        full = http.get("/health").json()
    with client(agent, pki, "librarian-1") as http:
        shown = http.post("/host/op", json=dry_run).json()
        profile = http.get("/health").json()
    with client(agent, pki, "stranger") as http:
        bare = http.get("/health").json()
    assert shown["argv"] == ["host-agent-zfs", "list", "tank"]
    assert "adapters" in full and "adapters" in profile
    assert set(bare) == {"status", "problems", "version"}
    for seen in (shown, profile, bare):
        text = json.dumps(seen)
        assert str(config.runner.wrapper_dir) not in text
        assert str(config.audit.log_path) not in text
        assert str(config.runner.sudo) not in text
