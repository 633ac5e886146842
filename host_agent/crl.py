"""The client CRLs: only CRLs the client CA signed are loaded, and how long they stay usable.

Python's ssl refuses every handshake once the CRL is past its next update
("CRL has expired"), so an operator must hear about it before that: in the
log, on /health and as a metric.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from host_agent.errors import HostAgentError

# Warn this long before the CRL's next update.
WARN_BEFORE = dt.timedelta(days=3)


@dataclass(frozen=True, slots=True)
class CrlStatus:
    path: Path | None
    next_update: dt.datetime | None
    error: str | None = None

    def state(self, now: dt.datetime) -> str:
        """none, unreadable, ok, expiring (within WARN_BEFORE) or expired."""
        if self.path is None:
            return "none"
        if self.next_update is None:
            return "unreadable"
        if now >= self.next_update:
            return "expired"
        return "expiring" if now >= self.next_update - WARN_BEFORE else "ok"

    def public(self, now: dt.datetime) -> dict[str, Any]:
        return {
            "state": self.state(now),
            "next_update": None if self.next_update is None else self.next_update.isoformat(),
            **({"error": self.error} if self.error else {}),
        }


def read_crl_status(path: Path | None) -> CrlStatus:
    """Parse `path` (PEM or DER); a problem is reported in the status, never raised."""
    if path is None:
        return CrlStatus(None, None)
    try:
        blocks = _blocks(path, path.read_bytes())
        if not blocks:
            raise CrlRejected("no CRL in it")
        crl = _parse(path, blocks[0])
    except (OSError, CrlRejected) as exc:
        return CrlStatus(path, None, f"cannot read {path}: {exc}")
    if crl.next_update_utc is None:
        return CrlStatus(path, None, f"{path} has no next update")
    return CrlStatus(path, crl.next_update_utc)


class CrlRejected(HostAgentError):
    """The CRL file holds something other than CRLs signed by the client CA."""

    code = "crl_rejected"


@dataclass(frozen=True, slots=True)
class ClientCrls:
    """The CRLs of `crl_file` that `client_ca` signed, and the serials they revoke."""

    crls: tuple[x509.CertificateRevocationList, ...]

    @property
    def revoked(self) -> frozenset[int]:
        return frozenset(entry.serial_number for crl in self.crls for entry in crl)

    def pem(self) -> bytes:
        """Only CRLs, re-encoded: loading this into a context can add no trust anchor."""
        return b"".join(crl.public_bytes(serialization.Encoding.PEM) for crl in self.crls)


_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.DOTALL)


def load_client_crls(crl_file: Path, client_ca: Path) -> ClientCrls:
    """Parse `crl_file` (PEM blocks or one DER CRL), refusing any block that is not a CRL
    and any CRL not signed by a certificate of `client_ca`.

    A CA certificate slipped into the CRL file would otherwise become a trust anchor."""
    data, ca_pem = _read(crl_file), _read(client_ca)
    try:
        authorities = x509.load_pem_x509_certificates(ca_pem)
    except ValueError as exc:
        raise CrlRejected(f"{client_ca}: no PEM certificate to check the CRL with") from exc
    crls = [_parse(crl_file, block) for block in _blocks(crl_file, data)]
    if not crls:
        raise CrlRejected(f"{crl_file} holds no CRL")
    for number, crl in enumerate(crls, 1):
        if not any(_signed_by(crl, ca) for ca in authorities):
            raise CrlRejected(
                f"{crl_file}: CRL {number} (issuer {crl.issuer.rfc4514_string()}) is not "
                f"signed by the client CA {client_ca}"
            )
    return ClientCrls(tuple(crls))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise CrlRejected(f"{path} does not exist") from exc
    except OSError as exc:
        raise CrlRejected(f"cannot read {path}: {exc.strerror}") from exc


def _blocks(crl_file: Path, data: bytes) -> list[bytes]:
    if b"-----BEGIN" not in data:
        return [data] if data.strip() else []  # one DER CRL, or nothing
    # Text between blocks is ignored, as OpenSSL does: only parsed CRLs are ever loaded.
    blocks = list(_PEM_BLOCK.finditer(data))
    for match in blocks:
        if match.group(1) != b"X509 CRL":
            raise CrlRejected(
                f"{crl_file} holds a {match.group(1).decode()} block: "
                "only X509 CRL blocks are allowed in the CRL file"
            )
    return [match.group(0) for match in blocks]


def _parse(crl_file: Path, block: bytes) -> x509.CertificateRevocationList:
    try:
        if block.startswith(b"-----"):
            return x509.load_pem_x509_crl(block)
        return x509.load_der_x509_crl(block)
    except ValueError as exc:
        raise CrlRejected(f"cannot load {crl_file}: not a valid CRL ({exc})") from exc


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    key = ca.public_key()
    return (
        crl.issuer == ca.subject
        and isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
        and crl.is_signature_valid(key)
    )
