"""The client's side of mutual TLS: the SSL context, the httpx settings both clients share,
and httpx's errors turned into the client's own at the boundary."""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Iterator
from typing import Any

import httpx
from cryptography import x509
from cryptography.x509.oid import NameOID

from host_agent import __version__
from host_agent.client.config import ClientConfig
from host_agent.client.errors import (
    CertificateRejected,
    ClientConfigError,
    TransportError,
    TransportTimeout,
)

USER_AGENT = f"host-agent-client/{__version__}"


class _EncryptedKey(Exception):
    """Raised instead of letting OpenSSL prompt for a passphrase on the terminal."""


def _no_passphrase() -> str:
    raise _EncryptedKey


def ssl_context(config: ClientConfig) -> ssl.SSLContext:
    """TLS 1.2+, the server verified against `config.ca` alone (never the system store),
    by name, and our certificate offered; a file that will not load is a config error."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=config.ca)
    except (ssl.SSLError, OSError) as exc:
        raise ClientConfigError(
            [f"ca: cannot load {config.ca} as PEM certificates: {exc}"]
        ) from exc
    try:
        context.load_cert_chain(config.cert, config.key, password=_no_passphrase)
    except _EncryptedKey:
        raise ClientConfigError(
            [f"key: {config.key} is encrypted; the client needs an unencrypted key (mode 0600)"]
        ) from None
    except (ssl.SSLError, OSError) as exc:
        raise ClientConfigError(
            [f"cert/key: cannot load {config.cert} with {config.key} (not a matching pair?): {exc}"]
        ) from exc
    return context


def http_settings(config: ClientConfig) -> dict[str, Any]:
    """Keyword arguments for httpx.Client and httpx.AsyncClient alike."""
    return {
        "base_url": config.server,
        "verify": ssl_context(config),
        "timeout": httpx.Timeout(config.timeout),
        "headers": {"User-Agent": USER_AGENT, "Accept": "application/json"},
        # No proxies or certificate bundles from the environment: mTLS goes straight to the agent.
        "trust_env": False,
        "follow_redirects": False,
    }


def converted(exc: httpx.HTTPError, config: ClientConfig) -> TransportError:
    """The client's error for an httpx failure, saying what the operator can check."""
    where = config.server
    if isinstance(exc, httpx.ConnectTimeout):
        return TransportTimeout(f"could not connect to {where} within {config.timeout:g}s")
    if isinstance(exc, httpx.TimeoutException):
        return TransportTimeout(
            f"no answer from {where} within {config.timeout:g}s; an operation sent may still "
            "have run (the agent's audit log has every request)"
        )
    causes = list(_causes(exc))
    for cause in causes:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return TransportError(
                f"the agent at {where} is not trusted: {cause.verify_message} "
                f"(checked against {config.ca})",
                code="server_not_trusted",
            )
    # The agent checks our certificate after the TLS 1.3 handshake has completed on our
    # side, and when it refuses it closes without an alert. Depending on timing we see
    # the connection end before an answer, or our request hit a reset or broken pipe.
    hung_up = isinstance(exc, httpx.ReadError | httpx.WriteError) and any(
        isinstance(cause, ConnectionResetError | BrokenPipeError) for cause in causes
    )
    if hung_up or isinstance(exc, httpx.RemoteProtocolError):
        return CertificateRejected(_rejected(config))
    if isinstance(exc, httpx.ConnectError):
        return TransportError(f"cannot connect to {where}: {exc}", code="connect_failed")
    return TransportError(f"{where}: {type(exc).__name__}: {exc}")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The chain under an httpx error (httpcore's, then ssl's or the OS's), bounded."""
    cause = exc.__cause__ or exc.__context__
    for _ in range(10):
        if cause is None:
            return
        yield cause
        cause = cause.__cause__ or cause.__context__


def _rejected(config: ClientConfig) -> str:
    return (
        f"the agent at {config.server} closed the connection without answering, as it does "
        "when it refuses the client certificate (revoked, expired, not yet valid, or not "
        f"issued by its client CA). {_certificate_hint(config)}"
    )


def _certificate_hint(config: ClientConfig) -> str:
    """What our own certificate file says about why the agent might refuse it."""
    try:
        cert = x509.load_pem_x509_certificate(config.cert.read_bytes())
    except (OSError, ValueError):
        return f"{config.cert} could not be read to say more."
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(names[0].value) if names else "?"
    who = f"{config.cert} (CN={cn}, serial {cert.serial_number:x})"
    now = dt.datetime.now(dt.UTC)
    if now > cert.not_valid_after_utc:
        return f"{who} expired at {cert.not_valid_after_utc.isoformat()}."
    if now < cert.not_valid_before_utc:
        return f"{who} is not valid before {cert.not_valid_before_utc.isoformat()}."
    return (
        f"{who} is within its validity dates, so it is probably revoked or from another "
        "CA: ask the agent's operator."
    )
