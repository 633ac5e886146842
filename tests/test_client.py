"""host_agent.client against a real agent over real mutual TLS: results, the server's
errors as typed exceptions, approvals followed by polling, one pooled connection, and
where the client's settings come from."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from host_agent import certs
from host_agent.client import (
    ApprovalConsumed,
    ApprovalDenied,
    ApprovalExpired,
    ApprovalState,
    Asked,
    BadResponse,
    CertificateRejected,
    Client,
    ClientConfig,
    ClientConfigError,
    ClientError,
    Conflict,
    DryRun,
    InvalidRequest,
    NotFound,
    OperationFailed,
    OperationTimedOut,
    OpRequest,
    PendingApproval,
    RateLimited,
    Refused,
    StillPending,
    TransportError,
    TransportTimeout,
    Unavailable,
    protocol,
)
from tests.approval_flow import approvals_config, post, token_sent
from tests.signal_bridge import SignalBridge
from tests.support import Pki, RunningAgent, config_text, running_agent, write_config
from tests.system import as_user

SNAPSHOT = "tank/data@old"


def settings(agent: RunningAgent, pki: Pki, cn: str, **overrides: Any) -> ClientConfig:
    cert, key = pki.client(cn)
    values: dict[str, Any] = {"server": agent.url, "cert": cert, "key": key, "ca": pki.ca}
    return ClientConfig(**{**values, **overrides})


def connect(agent: RunningAgent, pki: Pki, cn: str, **overrides: Any) -> Client:
    return Client(settings(agent, pki, cn, **overrides))


def client_ports(agent: RunningAgent) -> set[int]:
    """Local ports of this host's established TCP connections to the agent (/proc/net/tcp)."""
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state = line.split()[1:4]
        if int(remote.rsplit(":", 1)[1], 16) == agent.port and state == "01":
            ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


# --- results -------------------------------------------------------------------------


def test_health_and_dry_runs_are_typed(agent: RunningAgent, pki: Pki) -> None:
    with connect(agent, pki, "librarian-1") as client:
        health = client.health()
        listing = client.run("zfs", "tank", ["list"], dry_run=True)
        removal = client.run("zfs", SNAPSHOT, ["destroy"], reason="space", dry_run=True)
    assert (health.status, health.adapters) == ("ok", ("exec", "git", "pct", "systemd", "zfs"))
    assert health.details["crl"]["state"] == "ok"
    assert isinstance(listing, DryRun)
    assert (listing.operation, listing.resource) == ("zfs-list", "tank")
    assert (listing.decision.effect, listing.decision.code) == ("allow", "allowed")
    assert listing.argv == ("host-agent-zfs", "list", "tank")
    assert len(listing.digest) == 64
    assert isinstance(removal, DryRun)
    assert removal.decision.effect == "approval_required"


def test_the_manifest_is_the_callers_own(agent: RunningAgent, pki: Pki) -> None:
    names = {}
    for cn in ("librarian-1", "reader-1"):
        with connect(agent, pki, cn) as client:
            manifest = client.manifest()
        assert manifest["cn"] == cn
        names[cn] = {tool["function"]["name"] for tool in manifest["tools"]}
    assert "zfs-destroy" in names["librarian-1"] and "zfs-destroy" not in names["reader-1"]


def test_args_must_be_a_list_not_a_string(agent: RunningAgent, pki: Pki) -> None:
    with connect(agent, pki, "librarian-1") as client, pytest.raises(TypeError):
        client.run("zfs", "tank", "list")


# --- the server's errors -------------------------------------------------------------

Call = Callable[[Client], object]


@pytest.mark.parametrize(
    ("cn", "call", "error", "status", "code", "field"),
    [
        pytest.param(
            "librarian-1",
            lambda c: c.run("zfs", "tank/../etc", ["list"]),
            InvalidRequest,
            400,
            "invalid_name",
            "resource",
            id="invalid-name",
        ),
        pytest.param(
            "librarian-1",
            lambda c: c.run("ftp", "tank", ["list"]),
            InvalidRequest,
            404,
            "unknown_kind",
            "kind",
            id="unknown-kind",
        ),
        pytest.param(
            "librarian-1",
            lambda c: c.run("zfs", "tank", ["list"], reason="x" * 70_000),
            InvalidRequest,
            413,
            "body_too_large",
            "body",
            id="body-too-large",
        ),
        pytest.param(
            "reader-1",
            lambda c: c.run("zfs", SNAPSHOT, ["destroy"]),
            Refused,
            403,
            "read_only",
            None,
            id="policy-read-only",
        ),
        pytest.param(
            "stranger",
            lambda c: c.run("zfs", "tank", ["list"]),
            Refused,
            403,
            "unknown_cn",
            None,
            id="policy-unknown-cn",
        ),
        pytest.param(
            "librarian-1",
            lambda c: c.approval("ap-0000000000000000"),
            NotFound,
            404,
            "approval_not_found",
            "approval_id",
            id="approval-not-found",
        ),
        pytest.param(
            "librarian-1",
            lambda c: c.approval("../health"),
            NotFound,
            404,
            "not_found",
            None,
            id="approval-id-stays-in-its-path-segment",
        ),
    ],
)
def test_server_errors_are_typed_exceptions(
    agent: RunningAgent,
    pki: Pki,
    cn: str,
    call: Call,
    error: type[ClientError],
    status: int,
    code: str,
    field: str | None,
) -> None:
    with connect(agent, pki, cn) as client, pytest.raises(error) as raised:
        call(client)
    assert (raised.value.status, raised.value.code, raised.value.field) == (status, code, field)
    assert raised.value.message
    assert code in str(raised.value)


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        # Every status of docs/api.md, with codes this client has no entry for.
        pytest.param(400, "some_new_validation", InvalidRequest, id="400"),
        pytest.param(401, "unauthenticated", Refused, id="401"),
        pytest.param(403, "wrapper_not_permitted", Refused, id="403"),
        pytest.param(404, "not_found", NotFound, id="404"),
        pytest.param(404, "unknown_kind", InvalidRequest, id="404-unknown-kind"),
        pytest.param(405, "method_not_allowed", InvalidRequest, id="405"),
        pytest.param(409, "newer_snapshots_exist", Conflict, id="409"),
        pytest.param(409, "approval_consumed", ApprovalConsumed, id="409-consumed"),
        pytest.param(403, "approval_denied", ApprovalDenied, id="403-denied"),
        pytest.param(410, "approval_expired", ApprovalExpired, id="410"),
        pytest.param(413, "body_too_large", InvalidRequest, id="413"),
        pytest.param(429, "rate_limited", RateLimited, id="429"),
        pytest.param(500, "sudo_refused", OperationFailed, id="500"),
        pytest.param(502, "operation_failed", OperationFailed, id="502"),
        pytest.param(503, "result_unaudited", Unavailable, id="503"),
        pytest.param(504, "operation_timeout", OperationTimedOut, id="504"),
        pytest.param(418, None, InvalidRequest, id="other-4xx"),
        pytest.param(507, None, OperationFailed, id="other-5xx"),
    ],
)
def test_error_answers_map_by_code_then_by_status(
    status: int, code: str | None, error: type[ClientError]
) -> None:
    body = {"error": {"code": code, "message": "m"}} if code else "not json"
    answer = httpx.Response(status, json=body, request=httpx.Request("GET", "https://a/"))
    mapped = protocol.error_from(answer)
    assert type(mapped) is error
    assert (mapped.status, mapped.code) == (status, code or error.default_code)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(["not", "an", "object"], id="not-an-object"),
        pytest.param({"request_id": "r", "operation": "zfs-list"}, id="fields-missing"),
        pytest.param({"dry_run": True, "decision": "allow"}, id="decision-not-an-object"),
        pytest.param({"status": "pending", "approval_id": 7}, id="ticket-wrong-type"),
    ],
)
def test_answers_of_the_wrong_shape_are_bad_responses(payload: object) -> None:
    call = protocol.run_call(OpRequest.of("zfs", "tank", ["list"]), PendingApproval)
    with pytest.raises(BadResponse):
        call.parse(payload)


def test_an_answer_that_is_not_json_is_a_bad_response() -> None:
    answer = httpx.Response(200, text="<html>", request=httpx.Request("GET", "https://a/health"))
    with pytest.raises(BadResponse, match="/health is not JSON"):
        protocol.decode(answer)


def test_a_refused_operation_names_its_audited_request(agent: RunningAgent, pki: Pki) -> None:
    with connect(agent, pki, "librarian-1") as client, pytest.raises(InvalidRequest) as raised:
        client.run("zfs", "-rf", ["list"])
    assert raised.value.request_id is not None and len(raised.value.request_id) == 16
    assert raised.value.result is None


def test_rate_limited_carries_retry_after(pki: Pki, tmp_path: Path) -> None:
    extra = "[rate_limit.read]\nrequests = 2\nper_seconds = 3600\n"
    config = write_config(tmp_path / "agent.toml", config_text(pki, tmp_path, extra=extra))
    with running_agent(config) as agent, connect(agent, pki, "reader-1") as client:
        client.run("zfs", "tank", ["list"], dry_run=True)
        client.run("zfs", "tank", ["list"], dry_run=True)
        with pytest.raises(RateLimited) as raised:
            client.run("zfs", "tank", ["list"], dry_run=True)
    assert (raised.value.status, raised.value.code) == (429, "rate_limited")
    assert raised.value.retry_after is not None and 1 <= raised.value.retry_after <= 1800


# --- transport -----------------------------------------------------------------------


def test_a_revoked_certificate_is_a_clear_error(agent: RunningAgent, pki: Pki) -> None:
    with connect(agent, pki, "revoked-1") as client, pytest.raises(CertificateRejected) as raised:
        client.health()
    message = str(raised.value)
    assert raised.value.status is None and raised.value.code == "certificate_rejected"
    assert "revoked" in message and "CN=revoked-1" in message and "serial " in message
    assert "within its validity dates, so it is probably revoked" in message
    assert isinstance(raised.value, TransportError)


@pytest.mark.parametrize(
    ("cn", "hint"),
    [
        pytest.param("expired-1", "expired at", id="expired"),
        pytest.param("future-1", "is not valid before", id="not-yet-valid"),
        pytest.param("other-ca", "probably revoked or from another CA", id="other-ca"),
    ],
)
def test_a_refused_certificate_says_what_its_file_shows(
    agent: RunningAgent, pki: Pki, cn: str, hint: str
) -> None:
    if cn == "other-ca":
        files = {"cert": pki.other_ca / "librarian-1.crt", "key": pki.other_ca / "librarian-1.key"}
    else:
        cert, key = pki.client(cn)
        files = {"cert": cert, "key": key}
    with (
        connect(agent, pki, "librarian-1", **files) as client,
        pytest.raises(CertificateRejected) as raised,
    ):
        client.health()
    assert f"{files['cert']} (CN=" in str(raised.value) and hint in str(raised.value)


def test_an_agent_our_ca_did_not_sign_is_not_trusted(agent: RunningAgent, pki: Pki) -> None:
    other_ca = pki.other_ca / pki.ca.name
    with (
        connect(agent, pki, "librarian-1", ca=other_ca) as client,
        pytest.raises(TransportError) as raised,
    ):
        client.health()
    assert raised.value.code == "server_not_trusted"
    assert str(other_ca) in str(raised.value)


def test_nothing_listening_is_a_connect_error(pki: Pki, agent: RunningAgent) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"https://127.0.0.1:{probe.getsockname()[1]}"
    with (
        connect(agent, pki, "librarian-1", server=closed) as client,
        pytest.raises(TransportError) as raised,
    ):
        client.health()
    assert raised.value.code == "connect_failed" and closed in str(raised.value)


def test_a_silent_server_times_out(pki: Pki, agent: RunningAgent) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepted by the kernel, never answered
        url = f"https://127.0.0.1:{silent.getsockname()[1]}"
        with (
            connect(agent, pki, "librarian-1", server=url, timeout=0.3) as client,
            pytest.raises(TransportTimeout) as raised,
        ):
            client.health()
    assert isinstance(raised.value, TimeoutError)
    assert raised.value.code == "timeout" and "0.3s" in str(raised.value)


def test_one_tls_connection_serves_every_call(agent: RunningAgent, pki: Pki) -> None:
    seen: set[int] = set()
    with connect(agent, pki, "librarian-1") as client:
        for _ in range(3):
            client.health()
            seen |= client_ports(agent)
            client.run("zfs", "tank", ["list"], dry_run=True)
            seen |= client_ports(agent)
    assert len(seen) == 1
    for _ in range(2):  # the probe does see separate connections
        with connect(agent, pki, "librarian-1") as client:
            client.health()
            seen |= client_ports(agent)
    assert len(seen) == 3


# --- approvals -----------------------------------------------------------------------


def test_a_pending_approval_waits_then_is_denied(
    approving_agent: RunningAgent, pki: Pki, bridge: SignalBridge
) -> None:
    agent = approving_agent
    with connect(agent, pki, "librarian-1") as client:
        pending = client.run("zfs", SNAPSHOT, ["destroy"], reason="free space")
        assert isinstance(pending, PendingApproval)
        assert (pending.operation, pending.resource) == ("zfs-destroy", SNAPSHOT)
        assert pending.request.reason == "free space" and pending.approvals_required == 1
        # Whom it waits for, without handing the requester the approvers' numbers.
        assert pending.asked == (
            Asked("signal", "Signal approvers …0001, …0002"),
            Asked(
                "admin",
                "an admin client (CN matching 'admin-*') with POST /approve "
                f'{{"approval_id": "{pending.approval_id}"}}',
            ),
        )

        with pytest.raises(StillPending) as still:
            pending.wait(timeout=0.3, poll_interval=0.1)
        assert isinstance(still.value, TimeoutError)
        current = still.value.approval
        assert current is not None and current.status is ApprovalState.PENDING
        assert current.digest == pending.digest and current.expires_at == pending.expires_at
        assert 200 < current.seconds_left() <= 300
        assert client.approval(pending.approval_id) == current
        assert current.asked == pending.asked
        assert [a.approval_id for a in client.pending()] == [pending.approval_id]

        deny = {"token": token_sent(bridge), "decision": "deny"}
        assert post(agent, pki, "admin-1", "/approve", deny).status_code == 200
        seen: list[ApprovalState] = []
        with pytest.raises(ApprovalDenied) as denied:
            pending.wait(poll_interval=0.1, on_status=lambda s: seen.append(s.status))
        assert seen == [ApprovalState.DENIED]
        assert denied.value.approval is not None
        assert denied.value.approval.decided_by == "admin"  # masked for the requester
        assert denied.value.status is None  # learnt by polling, not from an error answer

        # Resubmitting anyway: the server's own refusal maps to the same class.
        with pytest.raises(ApprovalDenied) as refused:
            client.run("zfs", SNAPSHOT, ["destroy"], approval_id=pending.approval_id)
        assert (refused.value.status, refused.value.code) == (403, "approval_denied")
        assert client.pending() == []


def test_an_approval_asked_for_earlier_can_be_followed(
    approving_agent: RunningAgent, pki: Pki, bridge: SignalBridge
) -> None:
    with connect(approving_agent, pki, "librarian-1") as client:
        asked = client.run("zfs", SNAPSHOT, ["destroy"], reason="free space")
    assert isinstance(asked, PendingApproval)
    with connect(approving_agent, pki, "librarian-1") as later:
        followed = later.follow(asked.approval_id)
        assert isinstance(followed, PendingApproval)
        assert followed.request == asked.request  # the very request, rebuilt from the approval
        assert (followed.digest, followed.expires_at) == (asked.digest, asked.expires_at)
        assert followed.asked == asked.asked and followed.request_id == ""
        deny = {"token": token_sent(bridge), "decision": "deny"}
        assert post(approving_agent, pki, "admin-1", "/approve", deny).status_code == 200
        with pytest.raises(ApprovalDenied):
            followed.wait(poll_interval=0.1)
    with connect(approving_agent, pki, "reader-1") as other, pytest.raises(NotFound):
        other.follow(asked.approval_id)


def test_only_the_certificate_that_asked_may_use_the_approval(
    approving_agent: RunningAgent, pki: Pki, bridge: SignalBridge, tmp_path: Path
) -> None:
    # A second certificate for the same CN from the same CA: a renewal, or a second holder.
    second = tmp_path / "second"
    shutil.copytree(pki.directory, second)
    cert, key = certs.issue_client(second, "librarian-1", force=True)
    with connect(approving_agent, pki, "librarian-1") as client:
        pending = client.run("zfs", SNAPSHOT, ["destroy"])
    assert isinstance(pending, PendingApproval)
    assert post(approving_agent, pki, "admin-1", "/approve", {"token": token_sent(bridge)})
    with (
        connect(approving_agent, pki, "librarian-1", cert=cert, key=key) as other,
        pytest.raises(Refused) as refused,
    ):
        other.run("zfs", SNAPSHOT, ["destroy"], approval_id=pending.approval_id)
    assert (refused.value.status, refused.value.code) == (403, "approval_certificate_mismatch")
    with connect(approving_agent, pki, "librarian-1") as client:
        assert client.approval(pending.approval_id).status is ApprovalState.APPROVED


def test_someone_elses_approval_is_not_found(approving_agent: RunningAgent, pki: Pki) -> None:
    with connect(approving_agent, pki, "librarian-1") as client:
        pending = client.run("zfs", SNAPSHOT, ["destroy"])
    assert isinstance(pending, PendingApproval)
    with connect(approving_agent, pki, "reader-1") as other, pytest.raises(NotFound):
        other.approval(pending.approval_id)


def test_an_unanswered_approval_expires_while_waiting(
    pki: Pki, tmp_path: Path, bridge: SignalBridge
) -> None:
    config = approvals_config(pki, tmp_path, bridge, ttl=10)  # the shortest ttl allowed
    seen: list[ApprovalState] = []
    with running_agent(config) as agent, connect(agent, pki, "librarian-1") as client:
        pending = client.run("zfs", SNAPSHOT, ["destroy"])
        assert isinstance(pending, PendingApproval)
        with pytest.raises(ApprovalExpired) as expired:
            pending.wait(timeout=30, poll_interval=0.5, on_status=lambda s: seen.append(s.status))
    assert seen[0] is ApprovalState.PENDING and seen[-1] is ApprovalState.EXPIRED
    assert expired.value.approval is not None
    assert expired.value.approval.approval_id == pending.approval_id


def test_wait_refuses_a_nonsensical_schedule(approving_agent: RunningAgent, pki: Pki) -> None:
    with connect(approving_agent, pki, "librarian-1") as client:
        pending = client.run("zfs", SNAPSHOT, ["destroy"])
        assert isinstance(pending, PendingApproval)
        with pytest.raises(ValueError, match="poll_interval"):
            pending.wait(poll_interval=0)
        with pytest.raises(ValueError, match="timeout"):
            pending.wait(timeout=-1)


# --- settings ------------------------------------------------------------------------


@pytest.fixture
def material(pki: Pki, tmp_path: Path) -> Path:
    """A directory with cert.pem, key.pem and ca.pem, as an operator would lay it out."""
    directory = tmp_path / "tls"
    directory.mkdir()
    cert, key = pki.client("librarian-1")
    for name, source in (("cert.pem", cert), ("key.pem", key), ("ca.pem", pki.ca)):
        (directory / name).write_bytes(source.read_bytes())
    return directory


def write_file(path: Path, **values: object) -> Path:
    lines = [f"{k} = {v}" if isinstance(v, float) else f'{k} = "{v}"' for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_explicit_values_win_over_the_environment_which_wins_over_the_file(
    material: Path, tmp_path: Path
) -> None:
    file = write_file(
        tmp_path / "client.toml",
        server="https://file.example.org",
        cert=material / "cert.pem",
        key=material / "key.pem",
        ca=material / "ca.pem",
        timeout=5.0,
    )
    environ = {"HOST_AGENT_SERVER": "https://env.example.org:8443", "HOST_AGENT_TIMEOUT": "7"}
    from_env = ClientConfig.load(config_file=file, environ=environ)
    assert (from_env.server, from_env.timeout) == ("https://env.example.org:8443", 7.0)
    assert from_env.cert == material / "cert.pem"
    given = ClientConfig.load(
        server="https://given.example.org/", timeout=9, config_file=file, environ=environ
    )
    assert (given.server, given.timeout) == ("https://given.example.org", 9)
    from_file = ClientConfig.load(config_file=file, environ={})
    assert (from_file.server, from_file.timeout) == ("https://file.example.org", 5.0)


def test_relative_paths_in_the_file_are_relative_to_the_file(
    material: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = write_file(
        material / "client.toml",
        server="https://192.0.2.10:18443",
        cert="cert.pem",
        key="key.pem",
        ca="ca.pem",
    )
    monkeypatch.chdir(tmp_path)
    config = ClientConfig.load(config_file=file, environ={})
    assert (config.cert, config.key, config.ca) == (
        material / "cert.pem",
        material / "key.pem",
        material / "ca.pem",
    )
    assert config.timeout == 90.0  # beyond the agent's default operation timeout
    # From the environment, a relative path is the working directory's.
    monkeypatch.chdir(material)
    environ = {"HOST_AGENT_CERT": "cert.pem"}
    assert ClientConfig.load(config_file=file, environ=environ).cert == Path("cert.pem")


def test_the_file_is_found_through_the_environment_or_in_the_home_directory(
    material: Path, tmp_path: Path
) -> None:
    values = {
        "server": "https://agent.example.org",
        "cert": material / "cert.pem",
        "key": material / "key.pem",
        "ca": material / "ca.pem",
    }
    named = write_file(tmp_path / "named.toml", **values)
    assert ClientConfig.load(environ={"HOST_AGENT_CLIENT_CONFIG": str(named)}).server == (
        "https://agent.example.org"
    )
    home = tmp_path / "home"
    (home / ".config" / "host-agent").mkdir(parents=True)
    write_file(home / ".config" / "host-agent" / "client.toml", **values)
    assert ClientConfig.load(environ={"HOME": str(home)}).cert == material / "cert.pem"


def test_every_missing_value_is_named_at_once(tmp_path: Path) -> None:
    with pytest.raises(ClientConfigError) as raised:
        ClientConfig.load(environ={"HOME": str(tmp_path)})
    problems = raised.value.problems
    assert len(problems) == 4
    for name, variable in (("server", "HOST_AGENT_SERVER"), ("ca", "HOST_AGENT_CA")):
        assert any(p.startswith(f"{name} is not set") and variable in p for p in problems)
    assert str(tmp_path / ".config" / "host-agent" / "client.toml") in problems[0]


@pytest.mark.parametrize(
    ("server", "problem"),
    [
        pytest.param("http://127.0.0.1:18443", "must start with https://", id="plain-http"),
        pytest.param("127.0.0.1:18443", "must start with https://", id="no-scheme"),
        pytest.param("https://agent.example.org/api", "no path", id="path"),
        pytest.param("https://user:pw@agent.example.org", "no user", id="userinfo"),
        pytest.param("https://agent.example.org:99999", "not a URL", id="bad-port"),
        pytest.param("https://", "with a host", id="no-host"),
    ],
)
def test_the_server_must_be_an_https_origin(material: Path, server: str, problem: str) -> None:
    environ = {
        "HOST_AGENT_CERT": str(material / "cert.pem"),
        "HOST_AGENT_KEY": str(material / "key.pem"),
        "HOST_AGENT_CA": str(material / "ca.pem"),
    }
    with pytest.raises(ClientConfigError) as raised:
        ClientConfig.load(server=server, environ=environ)
    (message,) = raised.value.problems
    assert message.startswith(f"server: {server!r}") and problem in message


def test_files_that_cannot_be_read_are_named_with_their_source(
    material: Path, tmp_path: Path
) -> None:
    file = write_file(
        tmp_path / "client.toml",
        server="https://agent.example.org",
        cert="missing.pem",
        key=material,
        ca=material / "ca.pem",
    )
    with pytest.raises(ClientConfigError) as raised:
        ClientConfig.load(config_file=file, environ={"HOST_AGENT_CA": str(tmp_path / "no-ca")})
    assert raised.value.problems == (
        f"{file}: cert: {tmp_path / 'missing.pem'} does not exist",
        f"{file}: key: {material} is not a regular file",
        f"HOST_AGENT_CA: {tmp_path / 'no-ca'} does not exist",
    )


def test_an_unreadable_key_is_named(material: Path) -> None:
    """Checked as an account that cannot read the key: as root, `nobody` in a child."""
    shared = Path(tempfile.mkdtemp(prefix="ha-client-", dir="/tmp"))
    try:
        shared.chmod(0o755)
        for name in ("cert.pem", "key.pem", "ca.pem"):
            shutil.copyfile(material / name, shared / name)
            (shared / name).chmod(0o644)
        (shared / "key.pem").chmod(0)

        def problem() -> str:
            try:
                ClientConfig.load(
                    server="https://agent.example.org",
                    cert=shared / "cert.pem",
                    key=shared / "key.pem",
                    ca=shared / "ca.pem",
                    environ={},
                )
            except ClientConfigError as exc:
                return str(exc)
            return "loaded"

        def report() -> int:
            print(problem())
            return 0

        said = as_user("nobody", report).stdout if os.geteuid() == 0 else problem()
    finally:
        shutil.rmtree(shared)
    assert f"{shared / 'key.pem'} is not readable by this user" in said


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param('sever = "https://x.example.org"\n', "unknown key 'sever'", id="typo"),
        pytest.param("server = \n", "is not valid TOML", id="not-toml"),
        pytest.param("server = 443\n", "server must be a string", id="wrong-type"),
        pytest.param("timeout = 0\n", "timeout: must be a positive number", id="zero-timeout"),
        pytest.param('timeout = "soon"\n', "timeout: must be a positive number", id="text-timeout"),
    ],
)
def test_problems_in_the_file_are_named(tmp_path: Path, text: str, problem: str) -> None:
    file = tmp_path / "client.toml"
    file.write_text(text)
    with pytest.raises(ClientConfigError) as raised:
        ClientConfig.load(config_file=file, environ={})
    assert any(problem in p for p in raised.value.problems), raised.value.problems


def test_a_named_config_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ClientConfigError, match="does not exist"):
        ClientConfig.load(environ={"HOST_AGENT_CLIENT_CONFIG": str(tmp_path / "gone.toml")})


def test_a_client_without_settings_reads_them_from_the_environment(
    agent: RunningAgent, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = pki.client("librarian-1")
    for name, value in (("SERVER", agent.url), ("CERT", cert), ("KEY", key), ("CA", pki.ca)):
        monkeypatch.setenv(f"HOST_AGENT_{name}", str(value))
    monkeypatch.setenv("HOST_AGENT_TIMEOUT", "12.5")
    with Client() as client:
        assert client.health().status == "ok"
    assert client.config.timeout == 12.5


def test_tls_material_that_does_not_load_is_a_config_error(pki: Pki, material: Path) -> None:
    values = {"server": "https://agent.example.org", "ca": material / "ca.pem"}
    _, other_key = pki.client("reader-1")
    mismatched = ClientConfig(cert=material / "cert.pem", key=other_key, **values)
    with pytest.raises(ClientConfigError, match="not a matching pair"):
        Client(mismatched)

    key = serialization.load_pem_private_key((material / "key.pem").read_bytes(), None)
    encrypted = material / "encrypted.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    with pytest.raises(ClientConfigError, match="is encrypted"):
        Client(ClientConfig(cert=material / "cert.pem", key=encrypted, **values))

    not_a_ca = ClientConfig(
        server="https://agent.example.org",
        cert=material / "cert.pem",
        key=material / "key.pem",
        ca=material / "key.pem",
    )
    with pytest.raises(ClientConfigError, match="ca: cannot load"):
        Client(not_a_ca)
