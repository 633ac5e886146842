"""The record of every client certificate a CA directory issued, so a revocation reaches
all of a CN's certificates, not only the one its <CN>.crt holds today.

`DIR/index.json`, rewritten whole and atomically by `certs` on every issue and revoke:
`{"version": 1, "certificates": [{"serial": hex, "cn", "not_after", "issued_at",
"revoked_at"}]}` (times ISO 8601 UTC, `revoked_at` null while valid). A directory from
before the index is rebuilt from what it still has: its <CN>.crt files and its CRL (a
serial only the CRL knows has no CN, and `issued_at` is then the certificate's start).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from host_agent.errors import CertificateError

INDEX = "index.json"
_VERSION = 1


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    serial: int
    cn: str | None
    not_after: dt.datetime | None
    issued_at: dt.datetime | None
    revoked_at: dt.datetime | None = None

    @classmethod
    def of(cls, cert: x509.Certificate, issued_at: dt.datetime) -> IssuedCertificate:
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        cn = str(names[0].value) if names else None
        return cls(cert.serial_number, cn, cert.not_valid_after_utc, issued_at)

    def public(self) -> dict[str, Any]:
        fields = asdict(self)
        fields["serial"] = format(self.serial, "x")
        for name in ("not_after", "issued_at", "revoked_at"):
            moment = fields[name]
            fields[name] = None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        return fields


@dataclass(slots=True)
class CertificateIndex:
    """The index of one CA directory; `recovered` when it was rebuilt, not read."""

    certificates: list[IssuedCertificate] = field(default_factory=list)
    recovered: bool = False

    def add(self, issued: IssuedCertificate) -> None:
        self.certificates.append(issued)

    def of_cn(self, cn: str) -> list[IssuedCertificate]:
        return [issued for issued in self.certificates if issued.cn == cn]

    def revoke(self, serials: Iterable[int], at: dt.datetime) -> None:
        wanted = set(serials)
        self.certificates = [
            replace(issued, revoked_at=at)
            if issued.serial in wanted and issued.revoked_at is None
            else issued
            for issued in self.certificates
        ]

    def to_json(self) -> bytes:
        document = {
            "version": _VERSION,
            "certificates": [issued.public() for issued in self.certificates],
        }
        return json.dumps(document, indent=1).encode() + b"\n"


def read_index(
    directory: Path, ca: x509.Certificate, revoked: Mapping[int, dt.datetime]
) -> CertificateIndex:
    """DIR's index, or one rebuilt from its <CN>.crt files and CRL if it has none."""
    try:
        document = json.loads((directory / INDEX).read_bytes())
    except FileNotFoundError:
        return _rebuild(directory, ca, revoked)
    except (OSError, ValueError) as exc:
        raise CertificateError(f"cannot read {directory / INDEX}: {exc}") from exc
    try:
        if document["version"] != _VERSION:
            raise ValueError(f"version {document['version']!r}")
        return CertificateIndex([_entry(item) for item in document["certificates"]])
    except (KeyError, TypeError, ValueError) as exc:
        raise CertificateError(f"{directory / INDEX} is not a certificate index: {exc}") from exc


def _entry(item: Mapping[str, Any]) -> IssuedCertificate:
    def moment(name: str) -> dt.datetime | None:
        value = item[name]
        return None if value is None else dt.datetime.fromisoformat(value)

    cn = item["cn"]
    if cn is not None and not isinstance(cn, str):
        raise ValueError(f"cn {cn!r}")
    return IssuedCertificate(
        int(item["serial"], 16), cn, moment("not_after"), moment("issued_at"), moment("revoked_at")
    )


def _rebuild(
    directory: Path, ca: x509.Certificate, revoked: Mapping[int, dt.datetime]
) -> CertificateIndex:
    index = CertificateIndex(recovered=True)
    for path in sorted(directory.glob("*.crt")):
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except ValueError:
            continue  # not a certificate: nothing to index
        if cert.issuer != ca.subject or _is_ca_or_server(cert):
            continue
        issued = IssuedCertificate.of(cert, cert.not_valid_before_utc)
        index.add(replace(issued, revoked_at=revoked.get(cert.serial_number)))
    known = {issued.serial for issued in index.certificates}
    for serial, at in sorted(revoked.items()):
        if serial not in known:
            index.add(IssuedCertificate(serial, None, None, None, at))
    return index


def _is_ca_or_server(cert: x509.Certificate) -> bool:
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return True
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False
    return x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH not in usages
