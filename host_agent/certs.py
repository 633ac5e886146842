"""A small private CA for host-agent: CA, server and client certificates, CRL.

Files have fixed names inside one directory so scripts can find them:
ca.crt, ca.key, server.crt, server.key, crl.pem, <CN>.crt, <CN>.key, and
index.json, the record of every client certificate issued (cert_index).
Keys are written 0600 and nothing is overwritten without `force`; one
command at a time changes a directory (a lock on it).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from host_agent.cert_index import INDEX, CertificateIndex, IssuedCertificate, read_index
from host_agent.errors import CertificateError

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
CRL = "crl.pem"

CN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_RESERVED = {"ca", "server", "crl"}
_DAY = dt.timedelta(days=1)
# A CRL shorter-lived than the 3-day expiry warning would warn all the time.
MIN_CRL_DAYS = 4
MAX_CRL_DAYS = 366
DEFAULT_CRL_DAYS = 30


@dataclass(frozen=True)
class Validity:
    """Certificate validity window; tests use it to make expired or future certificates."""

    not_before: dt.datetime
    not_after: dt.datetime

    @classmethod
    def days(cls, days: int) -> Validity:
        now = dt.datetime.now(dt.UTC)
        # Back-date a little so a client with a slightly slow clock still accepts it.
        return cls(now - dt.timedelta(minutes=5), now + days * _DAY)


def init_ca(
    directory: Path,
    *,
    names: Iterable[str] = ("localhost",),
    ips: Iterable[str] = ("127.0.0.1", "::1"),
    days: int = 825,
    crl_days: int = 30,
    force: bool = False,
) -> None:
    """Create the CA, a server certificate for `names`/`ips`, an empty CRL and index."""
    directory.mkdir(parents=True, exist_ok=True)
    _refuse_existing(directory, [CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY, CRL, INDEX], force)
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "host-agent CA")])
    validity = Validity.days(3650)
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity.not_before)
        .not_valid_after(validity.not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(directory / CA_KEY, key, force)
    _write_public(directory / CA_CERT, ca.public_bytes(serialization.Encoding.PEM), force)
    issue_server(directory, names=names, ips=ips, days=days, force=True)
    write_crl(directory, revoked={}, days=crl_days)
    _write_index(directory, CertificateIndex())


def issue_server(
    directory: Path,
    *,
    names: Iterable[str],
    ips: Iterable[str],
    days: int = 825,
    force: bool = False,
) -> None:
    """Issue server.crt/server.key with the given DNS names and IP addresses as SANs."""
    names, ips = list(names), list(ips)
    if not names and not ips:
        raise CertificateError("a server certificate needs at least one name or IP address")
    try:
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    except ValueError as exc:
        raise CertificateError(f"invalid server name or address: {exc}") from exc
    _refuse_existing(directory, [SERVER_CERT, SERVER_KEY], force)
    common_name = names[0] if names else ips[0]
    _issue(
        directory,
        SERVER_CERT,
        SERVER_KEY,
        common_name,
        Validity.days(days),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=sans,
        force=force,
    )


def issue_client(
    directory: Path,
    cn: str,
    *,
    validity: Validity | None = None,
    force: bool = False,
) -> tuple[Path, Path]:
    """Issue <CN>.crt/<CN>.key signed by the directory's CA and record it in the index;
    with `force`, the certificate it replaces is revoked first. Return the paths."""
    check_cn(cn)
    cert_name, key_name = f"{cn}.crt", f"{cn}.key"
    with _locked(directory):
        _refuse_existing(directory, [cert_name, key_name], force)
        index, revoked = _index(directory)
        replaced = certificate_at(directory / cert_name)
        now = dt.datetime.now(dt.UTC)
        if replaced is not None and replaced.serial_number not in revoked:
            if not (directory / CRL).exists():
                raise CertificateError(
                    f"cannot revoke the {cert_name} this replaces: no CRL at {directory / CRL} "
                    "(make one with `certs crl --create`)"
                )
            # Revoked before the new one exists: a crash in between leaves the CN without
            # a certificate, never with two valid ones.
            _revoke(directory, index, revoked, [replaced], now, days=DEFAULT_CRL_DAYS)
        cert = _issue(
            directory,
            cert_name,
            key_name,
            cn,
            validity or Validity.days(365),
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            sans=[],
            force=force,
        )
        index.add(IssuedCertificate.of(cert, now))
        _write_index(directory, index)
    return directory / cert_name, directory / key_name


def revoke(directory: Path, cn: str, *, crl_days: int = DEFAULT_CRL_DAYS) -> list[int]:
    """Revoke every certificate ever issued to CN (the index, and <CN>.crt), re-sign the
    CRL; return their serials."""
    check_cn(cn)
    with _locked(directory):
        index, revoked = _index(directory)
        current = certificate_at(directory / f"{cn}.crt")
        listed = {issued.serial for issued in index.certificates}
        if current is not None and current.serial_number not in listed:
            index.add(IssuedCertificate.of(current, current.not_valid_before_utc))
        serials = sorted(issued.serial for issued in index.of_cn(cn))
        if not serials:
            raise CertificateError(
                f"no certificate for CN {cn!r}: none in {directory / INDEX} "
                f"nor at {directory / f'{cn}.crt'}"
            )
        _revoke(directory, index, revoked, serials, dt.datetime.now(dt.UTC), days=crl_days)
        _write_index(directory, index)
    return serials


def list_certificates(directory: Path) -> CertificateIndex:
    """The index of every client certificate issued (rebuilt, not saved, if DIR has none)."""
    return _index(directory)[0]


def refresh_crl(
    directory: Path, *, days: int = 30, create: bool = False
) -> x509.CertificateRevocationList:
    """Re-sign the CRL with a new next update, keeping every revocation and its date.

    Python's ssl fails every handshake once the CRL is past its next update,
    so this runs daily (install.sh sets up a timer) well before that. `create`
    makes an empty one where there is none (a CA made elsewhere never had one).
    """
    if not (directory / CRL).exists() and not create:
        raise CertificateError(
            f"no CRL at {directory / CRL}: restore it from a backup, or, for a CA that "
            "never had one, make an empty one with --create"
        )
    with _locked(directory):
        revoked = _revoked_entries(directory) if (directory / CRL).exists() else {}
        write_crl(directory, revoked=revoked, days=days)
        return load_crl(directory)


def write_crl(directory: Path, *, revoked: Mapping[int, dt.datetime], days: int = 30) -> None:
    """(Re)write crl.pem listing `revoked` serials with their revocation dates, valid for `days`."""
    if not MIN_CRL_DAYS <= days <= MAX_CRL_DAYS:
        raise CertificateError(f"a CRL must be valid for {MIN_CRL_DAYS} to {MAX_CRL_DAYS} days")
    ca_cert, ca_key = _load_ca(directory)
    now = dt.datetime.now(dt.UTC)
    # Back-dated a little, like certificates, for clients with a slightly slow clock.
    issued = now - dt.timedelta(minutes=5)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(issued)
        .next_update(now + days * _DAY)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    for serial, revoked_at in sorted(revoked.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(min(revoked_at, issued))
            .build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())
    _write_public(directory / CRL, crl.public_bytes(serialization.Encoding.PEM), force=True)


def _revoked_entries(directory: Path) -> dict[int, dt.datetime]:
    """The current CRL's revocations, refusing a CRL this CA did not sign: re-signing
    a planted or corrupt one would quietly un-revoke what it left out."""
    ca_cert, _ = _load_ca(directory)
    try:
        crl = load_crl(directory)
    except ValueError as exc:
        raise CertificateError(f"{directory / CRL} is not a PEM CRL: {exc}") from exc
    public_key = ca_cert.public_key()
    if crl.issuer != ca_cert.subject or not (
        isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
        and crl.is_signature_valid(public_key)
    ):
        raise CertificateError(
            f"{directory / CRL} is not signed by {directory / CA_CERT}; "
            "restore the CA's own CRL before re-signing"
        )
    return {entry.serial_number: entry.revocation_date_utc for entry in crl}


def load_crl(directory: Path) -> x509.CertificateRevocationList:
    try:
        return x509.load_pem_x509_crl((directory / CRL).read_bytes())
    except FileNotFoundError as exc:
        raise CertificateError(f"no CRL at {directory / CRL}; run `certs init` first") from exc


def check_cn(cn: str) -> None:
    """CNs become file names: allow a conservative charset only."""
    if not CN_RE.fullmatch(cn) or cn.lower() in _RESERVED:
        raise CertificateError(
            f"invalid CN {cn!r}: use 1-64 of A-Z a-z 0-9 . _ - (not starting with . _ -), "
            f"and not one of {', '.join(sorted(_RESERVED))}"
        )


# --- internals ----------------------------------------------------------------


def _issue(
    directory: Path,
    cert_name: str,
    key_name: str,
    common_name: str,
    validity: Validity,
    *,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName],
    force: bool,
) -> x509.Certificate:
    ca_cert, ca_key = _load_ca(directory)
    key = _new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity.not_before)
        .not_valid_after(validity.not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_key(directory / key_name, key, force)
    _write_public(directory / cert_name, cert.public_bytes(serialization.Encoding.PEM), force)
    return cert


def _index(directory: Path) -> tuple[CertificateIndex, dict[int, dt.datetime]]:
    """The index (rebuilt if missing) and the CRL's revocations it was checked against."""
    ca_cert, _ = _load_ca(directory)
    revoked = _revoked_entries(directory) if (directory / CRL).exists() else {}
    return read_index(directory, ca_cert, revoked), revoked


def _revoke(
    directory: Path,
    index: CertificateIndex,
    revoked: dict[int, dt.datetime],
    certificates: Iterable[x509.Certificate | int],
    now: dt.datetime,
    *,
    days: int,
) -> None:
    """Add serials to the CRL (an earlier revocation keeps its date) and mark them in the
    index; a certificate the index never saw is recorded first."""
    serials = []
    listed = {issued.serial for issued in index.certificates}
    for item in certificates:
        if isinstance(item, x509.Certificate):
            if item.serial_number not in listed:
                index.add(IssuedCertificate.of(item, item.not_valid_before_utc))
            item = item.serial_number
        serials.append(item)
    write_crl(directory, revoked={**{s: now for s in serials}, **revoked}, days=days)
    index.revoke(serials, now)


def _write_index(directory: Path, index: CertificateIndex) -> None:
    _atomic_write(directory / INDEX, index.to_json(), 0o644, force=True)


def certificate_at(path: Path) -> x509.Certificate | None:
    """The certificate in `path`, None if there is none."""
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise CertificateError(f"{path} is not a PEM certificate: {exc}") from exc


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """One `certs` command at a time per directory: the index and CRL are read-modify-write."""
    try:
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError as exc:
        raise CertificateError(f"no CA in {directory}; run `host-agent certs init` first") from exc
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)  # on the directory itself: no lock file
        yield
    finally:
        os.close(descriptor)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# `certs init` makes EC CAs; RSA ones (the predecessor's) are kept working after an upgrade.
CaKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _load_ca(directory: Path) -> tuple[x509.Certificate, CaKey]:
    try:
        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
    except FileNotFoundError as exc:
        raise CertificateError(f"no CA in {directory}; run `host-agent certs init` first") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CertificateError(f"{directory / CA_KEY} is neither an EC nor an RSA private key")
    return cert, key


def _refuse_existing(directory: Path, names: Iterable[str], force: bool) -> None:
    if force:
        return
    existing = [name for name in names if (directory / name).exists()]
    if existing:
        raise CertificateError(
            f"refusing to overwrite {', '.join(str(directory / n) for n in existing)} (use --force)"
        )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, force: bool) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _atomic_write(path, data, 0o600, force)


def _write_public(path: Path, data: bytes, force: bool) -> None:
    _atomic_write(path, data, 0o644, force)


def _atomic_write(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Write via a 0600 temp file and rename, so a key is never briefly world-readable."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        if force:
            os.replace(tmp, path)
        else:
            # link() fails if the target appeared meanwhile: never clobber without force.
            os.link(tmp, path)
            os.unlink(tmp)
    except FileExistsError as exc:
        os.unlink(tmp)
        raise CertificateError(f"refusing to overwrite {path} (use --force)") from exc
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
