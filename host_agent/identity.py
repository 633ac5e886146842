"""Who is calling: taken only from the connection's verified client certificate."""

from __future__ import annotations

from collections.abc import Mapping
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


def identity_from_scope(scope: Mapping[str, Any]) -> Identity:
    """Read the identity from the ASGI TLS extension that tls_server puts in the scope.

    Headers, bodies and query strings are never consulted.
    """
    tls = (scope.get("extensions") or {}).get("tls")
    chain = tls.get("client_cert_chain") if isinstance(tls, dict) else None
    if not chain:
        raise Unauthenticated("no verified client certificate on this connection")
    return _identity_from_pem(chain[0])


@lru_cache(maxsize=1024)
def _identity_from_pem(pem: str) -> Identity:
    cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str) or not names[0].value:
        raise Unauthenticated("client certificate must carry exactly one common name")
    return Identity(
        cn=names[0].value,
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
        serial=format(cert.serial_number, "x"),
    )
