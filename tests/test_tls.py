"""Real TLS handshakes on loopback: who reaches a route and who never does."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import warnings
from pathlib import Path

import pytest

from host_agent.config import Config
from host_agent.identity import CertificateCheck
from host_agent.tls import TLSSetupError, server_context
from tests.support import Pki, RunningAgent, audit_records, client, client_context, raw_exchange


def _refused(agent: RunningAgent, pki: Pki, context: ssl.SSLContext) -> None:
    """The connection fails or closes without one HTTP byte, while a good client is served."""
    try:
        reply = raw_exchange(agent.port, context)
    except (ssl.SSLError, ConnectionError, OSError):
        reply = b""
    assert not reply.startswith(b"HTTP/"), reply[:200]
    cert, key = pki.client("librarian-1")
    assert raw_exchange(agent.port, client_context(pki.ca, cert, key)).startswith(b"HTTP/1.1 200")


def test_valid_client_reaches_health(agent: RunningAgent, pki: Pki) -> None:
    with client(agent, pki, "librarian-1") as http:
        reply = http.get("/health")
    assert reply.status_code == 200
    assert reply.json()["status"] == "ok"
    assert reply.json()["adapters"] == ["exec", "git", "pct", "systemd", "zfs"]


@pytest.mark.parametrize(
    "cn",
    [
        pytest.param("expired-1", id="expired"),
        pytest.param("future-1", id="not-yet-valid"),
        pytest.param("revoked-1", id="revoked-crl"),
    ],
)
def test_bad_client_certificate_never_reaches_a_route(
    agent: RunningAgent, pki: Pki, cn: str, config: Config
) -> None:
    cert, key = pki.client(cn)
    _refused(agent, pki, client_context(pki.ca, cert, key))
    assert audit_records(config.audit.log_path) == []


def test_no_client_certificate_is_refused(agent: RunningAgent, pki: Pki) -> None:
    _refused(agent, pki, client_context(pki.ca))


def test_certificate_from_another_ca_is_refused(agent: RunningAgent, pki: Pki) -> None:
    other = pki.other_ca
    _refused(
        agent, pki, client_context(pki.ca, other / "librarian-1.crt", other / "librarian-1.key")
    )


def _legacy_context(pki: Pki, maximum: ssl.TLSVersion) -> ssl.SSLContext:
    cert, key = pki.client("librarian-1")
    context = client_context(pki.ca, cert, key)
    # Let the client offer old protocols at all, so the refusal is the server's.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        # Offering TLS 1.1 is the point of this client; Python rightly warns about it.
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = maximum
    return context


def test_tls_1_1_is_refused_while_1_2_is_served(agent: RunningAgent, pki: Pki) -> None:
    assert raw_exchange(agent.port, _legacy_context(pki, ssl.TLSVersion.TLSv1_2)).startswith(
        b"HTTP/1.1 200"
    )
    with pytest.raises(ssl.SSLError):
        raw_exchange(agent.port, _legacy_context(pki, ssl.TLSVersion.TLSv1_1))


@pytest.mark.parametrize("http2", [pytest.param(False, id="http1.1"), pytest.param(True, id="h2")])
def test_identity_reaches_the_app_over_both_protocols(
    agent: RunningAgent, pki: Pki, config: Config, http2: bool
) -> None:
    with client(agent, pki, "librarian-1", http2=http2) as http:
        reply = http.post("/host/op", json={"kind": "zfs", "args": ["list"], "dry_run": True})
    assert reply.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    assert reply.status_code == 200
    (record,) = audit_records(config.audit.log_path)
    cert, _ = pki.client("librarian-1")
    fingerprint = (
        subprocess.run(
            ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(cert)],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.split("=", 1)[1]
        .strip()
        .replace(":", "")
        .lower()
    )
    assert (record["cn"], record["fingerprint"]) == ("librarian-1", fingerprint)


def test_identity_is_never_taken_from_headers_or_body(
    agent: RunningAgent, pki: Pki, config: Config
) -> None:
    forged = {
        "X-Client-CN": "admin-1",
        "X-SSL-Client-S-DN": "CN=admin-1",
        "X-Forwarded-Client-Cert": 'Subject="CN=admin-1"',
    }
    with client(agent, pki, "stranger") as http:
        reply = http.post(
            "/host/op", headers=forged, json={"kind": "zfs", "args": ["list"], "cn": "admin-1"}
        )
        health = http.get("/health", headers=forged)
    assert health.status_code == 200
    assert reply.status_code == 403
    assert reply.json()["error"]["code"] == "unknown_cn"
    assert audit_records(config.audit.log_path)[-1]["cn"] == "stranger"


def test_scope_without_tls_extension_is_unauthenticated() -> None:
    from host_agent.errors import Unauthenticated

    with pytest.raises(Unauthenticated):
        CertificateCheck().identify({"type": "http", "extensions": {}})


def test_broken_tls_material_fails_at_start_with_a_clear_message(
    config: Config, tmp_path: Path
) -> None:
    from dataclasses import replace

    missing = replace(config.server, cert=tmp_path / "nope.crt")
    with pytest.raises(TLSSetupError, match=r"nope\.crt does not exist"):
        server_context(missing)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a CRL")
    with pytest.raises(TLSSetupError, match="CRL: cannot load"):
        server_context(replace(config.server, crl_file=garbage))


curl = shutil.which("curl")


def _curl(agent: RunningAgent, pki: Pki, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            curl or "curl",
            "--silent",
            "--show-error",
            "--cacert",
            str(pki.ca),
            *extra,
            f"{agent.url}/health",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.skipif(curl is None, reason="curl is not installed (CI installs it)")
def test_curl_with_client_certificate_is_served(agent: RunningAgent, pki: Pki) -> None:
    cert, key = pki.client("librarian-1")
    done = _curl(agent, pki, "--cert", str(cert), "--key", str(key))
    assert done.returncode == 0, done.stderr
    assert '"status":"ok"' in done.stdout


@pytest.mark.skipif(curl is None, reason="curl is not installed (CI installs it)")
@pytest.mark.parametrize(
    "cn",
    [
        pytest.param(None, id="no-cert"),
        pytest.param("expired-1", id="expired"),
        pytest.param("future-1", id="not-yet-valid"),
        pytest.param("revoked-1", id="revoked"),
        pytest.param("other-ca", id="wrong-ca"),
    ],
)
def test_curl_without_a_good_certificate_is_refused(
    agent: RunningAgent, pki: Pki, cn: str | None
) -> None:
    if cn is None:
        extra: tuple[str, ...] = ()
    elif cn == "other-ca":
        extra = (
            "--cert",
            str(pki.other_ca / "librarian-1.crt"),
            "--key",
            str(pki.other_ca / "librarian-1.key"),
        )
    else:
        cert, key = pki.client(cn)
        extra = ("--cert", str(cert), "--key", str(key))
    done = _curl(agent, pki, *extra)
    assert done.returncode != 0
    assert '"status"' not in done.stdout


@pytest.mark.skipif(curl is None, reason="curl is not installed (CI installs it)")
def test_curl_tls_1_1_is_refused(agent: RunningAgent, pki: Pki) -> None:
    cert, key = pki.client("librarian-1")
    done = _curl(
        agent,
        pki,
        "--cert",
        str(cert),
        "--key",
        str(key),
        "--tlsv1.0",
        "--tls-max",
        "1.1",
        "--ciphers",
        "DEFAULT:@SECLEVEL=0",
    )
    assert done.returncode != 0
    assert '"status"' not in done.stdout


@pytest.mark.parametrize(
    ("cn", "reason"),
    [
        pytest.param("expired-1", "certificate_expired", id="expired"),
        pytest.param("future-1", "certificate_not_yet_valid", id="not-yet-valid"),
        pytest.param("revoked-1", "certificate_revoked", id="revoked"),
        pytest.param(None, "no_client_certificate", id="no-certificate"),
        pytest.param("other-ca", "unknown_ca", id="other-ca"),
    ],
)
def test_failed_handshakes_are_counted_by_reason(
    agent: RunningAgent, pki: Pki, cn: str | None, reason: str
) -> None:
    if cn is None:
        context = client_context(pki.ca)
    elif cn == "other-ca":
        other = pki.other_ca
        context = client_context(pki.ca, other / "librarian-1.crt", other / "librarian-1.key")
    else:
        context = client_context(pki.ca, *pki.client(cn))
    _refused(agent, pki, context)
    with client(agent, pki, "reader-1") as http:
        text = http.get("/metrics").text
    assert f'host_agent_tls_handshake_failures_total{{reason="{reason}"}} 1.0' in text
