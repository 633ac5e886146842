"""SIGHUP on a real `host-agent serve` process: new config, certificates and CRL for new
handshakes, open connections untouched, a broken config kept out, the audit log reopened."""

from __future__ import annotations

import datetime as dt
import re
import socket
import ssl
import sys
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from host_agent import certs
from host_agent.audit import verify
from host_agent.config import load_config
from host_agent.reload import _refuse_restart_only
from tests.served import DENY_DESTROY, Served, decision, reloads
from tests.support import client_context
from tests.system import run


def test_a_new_policy_applies_to_the_next_request(served: Served, tmp_path: Path) -> None:
    assert decision(served) == "approval_required"
    served.config.write_text(served.config.read_text() + DENY_DESTROY)
    served.sighup("reloaded")
    assert decision(served) == "deny"
    assert reloads(served, "success") == 1


@pytest.mark.parametrize(
    ("change", "why"),
    [
        pytest.param(lambda text: text + "\n[[rules]\n", "invalid|cannot", id="not-toml"),
        pytest.param(
            lambda text: text.replace("ttl_seconds = 300", 'ttl_seconds = "soon"'),
            "ttl_seconds",
            id="wrong-type",
        ),
        pytest.param(
            lambda text: text.replace('bind = "127.0.0.1:0"', 'bind = "127.0.0.1:1"'),
            "server.bind needs a restart",
            id="restart-only-key",
        ),
        pytest.param(
            lambda text: text.replace("[approval]\n", f'[approval]\ntoken_secret = "{"k" * 40}"\n'),
            "approval.token_secret needs a restart",
            id="token-secret",
        ),
        pytest.param(
            lambda text: text.replace("server.key", "missing.key"),
            "missing.key",
            id="unreadable-key",
        ),
    ],
)
def test_a_bad_reload_keeps_everything_as_it_was(served: Served, change: object, why: str) -> None:
    original = served.config.read_text()
    served.config.write_text(change(original + DENY_DESTROY))  # type: ignore[operator]
    line = served.sighup("reload failed")
    assert re.search(why, line), line
    assert decision(served) == "approval_required"
    assert reloads(served, "failure") == 1
    served.config.write_text(original + DENY_DESTROY)
    served.sighup("reloaded")
    assert decision(served) == "deny"


def test_the_same_token_secret_read_again_is_no_change(served: Served) -> None:
    """Secrets are compared by value (a Secret is equal to nothing, itself aside)."""
    keyed = served.config.read_text().replace(
        "[approval]\n", f'[approval]\ntoken_secret = "{"k" * 40}"\n'
    )
    served.config.write_text(keyed)
    running, again = load_config(served.config), load_config(served.config)
    _refuse_restart_only(running, again)  # raises RestartRequired on a change


def peer_serial(served: Served, cn: str = "librarian-1") -> int:
    """The serial of the server certificate a new handshake gets."""
    context = client_context(served.pki.ca, *served.pki.client(cn))
    with (
        socket.create_connection(("127.0.0.1", served.port)) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def test_new_certificate_and_crl_for_new_handshakes_open_connections_kept(
    served: Served,
) -> None:
    before = peer_serial(served)
    with served.client("reader-1") as kept, served.client() as revoked:
        assert kept.get("/health").status_code == 200
        assert revoked.get("/health").status_code == 200
        certs.issue_server(served.pki.directory, names=["localhost"], ips=["127.0.0.1"], force=True)
        certs.revoke(served.pki.directory, "librarian-1")
        served.sighup("reloaded")
        # The keep-alive connection made before the reload still works...
        assert kept.get("/health").status_code == 200
        # ...except for a certificate the new CRL revokes (test_revocation has the rest).
        assert revoked.get("/health").status_code == 401
    # ...while new handshakes get the new certificate and the new CRL.
    assert peer_serial(served, "reader-1") != before
    refused = (ssl.SSLError, httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)
    with pytest.raises(refused), served.client() as http:
        http.get("/health")
    with served.client("reader-1") as http:
        text = http.get("/metrics").text
    assert 'host_agent_tls_handshake_failures_total{reason="certificate_revoked"} 1.0' in text


def test_sighup_reopens_the_audit_log_and_the_chain_continues(
    served: Served, tmp_path: Path
) -> None:
    log = tmp_path / "audit.jsonl"
    decision(served)
    rotated = log.rename(tmp_path / "audit.jsonl.1")
    log.touch(mode=0o640)
    served.sighup("reloaded")
    decision(served)
    assert log.stat().st_size > 0
    result = verify([rotated, log])
    assert result.ok, result.error


def write_expired_crl(directory: Path) -> None:
    """What a CRL nobody re-signed becomes: signed by the CA, past its next update."""
    ca = x509.load_pem_x509_certificate((directory / certs.CA_CERT).read_bytes())
    key = serialization.load_pem_private_key((directory / certs.CA_KEY).read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now - dt.timedelta(days=31))
        .next_update(now - dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (directory / certs.CRL).write_bytes(crl.public_bytes(serialization.Encoding.PEM))


def test_an_expired_crl_fails_every_handshake_until_certs_crl_and_a_reload(
    served: Served,
) -> None:
    write_expired_crl(served.pki.directory)
    served.sighup("reloaded")
    refused = (ssl.SSLError, httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)
    for cn in ("librarian-1", "reader-1", "admin-1"):
        with pytest.raises(refused), served.client(cn) as http:
            http.get("/health")

    host_agent = Path(sys.executable).with_name("host-agent")
    done = run(str(host_agent), "certs", "crl", str(served.pki.directory))
    assert "0 revoked certificate(s)" in done.stdout
    served.sighup("reloaded")
    with served.client("reader-1") as http:
        health = http.get("/health").json()
        text = http.get("/metrics").text
    assert (health["status"], health["crl"]["state"]) == ("ok", "ok")
    assert 'host_agent_tls_handshake_failures_total{reason="crl_expired"} 3.0' in text
