"""Who is calling: taken only from the connection's verified client certificate, and
re-checked on every request, because a connection or TLS session can outlive it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from host_agent.errors import Unauthenticated


@dataclass(frozen=True, slots=True)
class Identity:
    """The caller: certificate CN, SHA-256 fingerprint (hex) and serial (hex)."""

    cn: str
    fingerprint: str
    serial: str


class CertificateRefused(Unauthenticated):
    """The connection's certificate was verified once but is no longer good: expired,
    not yet valid, or revoked since (code certificate_expired / _not_yet_valid / _revoked)."""

    def __init__(self, identity: Identity, code: str, message: str) -> None:
        super().__init__(message)
        self.identity = identity
        self.code = code


@dataclass(frozen=True, slots=True)
class _Certificate:
    identity: Identity
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime


@dataclass(frozen=True, slots=True)
class CertificateCheck:
    """The current revocations and the clock every request's certificate is held against."""

    revoked: frozenset[int] = frozenset()
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)

    def identify(self, scope: Mapping[str, Any]) -> Identity:
        """The caller of this request; raise `CertificateRefused` if its certificate is no
        longer valid now or is on the CRL loaded last."""
        cert = _certificate_from_pem(_leaf_pem(scope))
        now = self.clock()
        if cert.serial in self.revoked:
            raise CertificateRefused(
                cert.identity, "certificate_revoked", "the client certificate has been revoked"
            )
        if now >= cert.not_after:
            raise CertificateRefused(
                cert.identity,
                "certificate_expired",
                f"the client certificate expired at {cert.not_after:%Y-%m-%dT%H:%M:%SZ}",
            )
        if now < cert.not_before:
            raise CertificateRefused(
                cert.identity,
                "certificate_not_yet_valid",
                f"the client certificate is valid from {cert.not_before:%Y-%m-%dT%H:%M:%SZ}",
            )
        return cert.identity


def _leaf_pem(scope: Mapping[str, Any]) -> str:
    """The leaf from the ASGI TLS extension that tls_server puts in the scope.

    Headers, bodies and query strings are never consulted.
    """
    tls = (scope.get("extensions") or {}).get("tls")
    chain = tls.get("client_cert_chain") if isinstance(tls, dict) else None
    if not chain:
        raise Unauthenticated("no verified client certificate on this connection")
    return str(chain[0])


@lru_cache(maxsize=1024)
def _certificate_from_pem(pem: str) -> _Certificate:
    cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str) or not names[0].value:
        raise Unauthenticated("client certificate must carry exactly one common name")
    identity = Identity(
        cn=names[0].value,
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
        serial=format(cert.serial_number, "x"),
    )
    return _Certificate(
        identity, cert.serial_number, cert.not_valid_before_utc, cert.not_valid_after_utc
    )
