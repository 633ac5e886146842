"""No TLS session outlives its certificate (invariant 1): a live agent resumes no session,
over TLS 1.2 (tickets, session ids) or 1.3 (tickets), and every request on an open
connection is held to the certificate's validity and to the CRL loaded last."""

from __future__ import annotations

import datetime as dt
import http.client
import socket
import ssl
import time
from dataclasses import dataclass

import pytest

from host_agent import certs
from tests.served import Served
from tests.support import audit_records, client_context

# How long a short-lived certificate stays valid after it is issued.
LIFETIME = dt.timedelta(seconds=3)


@dataclass(frozen=True)
class Visit:
    """One connection: the status of GET /health (None if refused) and its TLS session."""

    status: int | None
    session: ssl.SSLSession | None
    reused: bool


def client(served: Served, cn: str, variant: str) -> ssl.SSLContext:
    context = client_context(served.pki.ca, *served.pki.client(cn))
    if variant == "tls13-ticket":
        context.minimum_version = ssl.TLSVersion.TLSv1_3
    else:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    if variant == "tls12-session-id":
        context.options |= ssl.OP_NO_TICKET  # the server must fall back on its session cache
    return context


def visit(served: Served, context: ssl.SSLContext, session: ssl.SSLSession | None) -> Visit:
    """GET /health on a new connection, offering `session` for resumption."""
    try:
        with (
            socket.create_connection(("127.0.0.1", served.port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="localhost", session=session) as tls,
        ):
            tls.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
            status = int(answer.split(b" ", 2)[1]) if answer else None
            return Visit(status, tls.session, tls.session_reused)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return Visit(None, None, False)


def short_lived(served: Served, cn: str) -> dt.datetime:
    """Issue `cn` a certificate that expires LIFETIME from now; return when."""
    now = dt.datetime.now(dt.UTC)
    validity = certs.Validity(now - dt.timedelta(minutes=5), now + LIFETIME)
    certs.issue_client(served.pki.directory, cn, validity=validity)
    return validity.not_after


def sleep_until(moment: dt.datetime) -> None:
    time.sleep(max(0.0, (moment - dt.datetime.now(dt.UTC)).total_seconds()) + 0.5)


VARIANTS = [
    pytest.param("tls13-ticket", id="tls13-ticket"),
    pytest.param("tls12-ticket", id="tls12-ticket"),
    pytest.param("tls12-session-id", id="tls12-session-id"),
]


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_session_is_ever_resumed(served: Served, variant: str) -> None:
    context = client(served, "reader-1", variant)
    first = visit(served, context, None)
    assert first.status == 200
    assert first.session is not None
    second = visit(served, context, first.session)
    assert second.status == 200
    assert not second.reused


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_session_from_before_expiry_does_not_outlive_the_certificate(
    served: Served, variant: str
) -> None:
    expires = short_lived(served, "reader-short")
    context = client(served, "reader-short", variant)
    first = visit(served, context, None)
    assert first.status == 200
    sleep_until(expires)
    resumed = visit(served, context, first.session)
    assert resumed.status in (None, 401), resumed
    assert not resumed.reused


def keep_alive(served: Served, cn: str) -> http.client.HTTPSConnection:
    context = client_context(served.pki.ca, *served.pki.client(cn))
    return http.client.HTTPSConnection("127.0.0.1", served.port, context=context, timeout=10)


def get(connection: http.client.HTTPSConnection, path: str = "/health") -> tuple[int, bytes]:
    connection.request("GET", path)
    reply = connection.getresponse()
    return reply.status, reply.read()


def assert_refused_on_the_same_connection(
    connection: http.client.HTTPSConnection, served: Served, code: str
) -> None:
    before = connection.sock
    status, body = get(connection)
    assert connection.sock is before  # the very connection verified before, not a new one
    assert status == 401, body
    assert f'"code":"{code}"'.encode() in body
    audited = [r for r in audit_records(served.config.parent / "audit.jsonl") if r.get("code")]
    assert audited[-1]["event"] == "rejected"
    assert audited[-1]["code"] == code


def test_a_certificate_that_expires_on_an_open_connection_is_refused_from_then_on(
    served: Served,
) -> None:
    expires = short_lived(served, "reader-short")
    connection = keep_alive(served, "reader-short")
    try:
        assert get(connection)[0] == 200
        sleep_until(expires)
        assert_refused_on_the_same_connection(connection, served, "certificate_expired")
    finally:
        connection.close()


def test_a_certificate_revoked_while_its_connection_is_open_is_refused_after_the_reload(
    served: Served,
) -> None:
    connection = keep_alive(served, "librarian-1")
    try:
        assert get(connection)[0] == 200
        certs.revoke(served.pki.directory, "librarian-1")
        served.sighup("reloaded")
        assert_refused_on_the_same_connection(connection, served, "certificate_revoked")
    finally:
        connection.close()
