"""The private CA: file layout and modes, certificate contents, CN checks, overwrites, CRL."""

from __future__ import annotations

import datetime as dt
import ssl
import stat
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from host_agent import certs
from host_agent.cli import main
from host_agent.errors import CertificateError
from tests.support import Pki, client, config_text, running_agent, write_config

INIT_FILES = (
    certs.CA_CERT,
    certs.CA_KEY,
    certs.SERVER_CERT,
    certs.SERVER_KEY,
    certs.CRL,
    certs.INDEX,
)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    certs.init_ca(directory)
    return directory


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def ec_public_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sans_of(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (
        set(san.get_values_for_type(x509.DNSName)),
        {str(ip) for ip in san.get_values_for_type(x509.IPAddress)},
    )


def eku_of(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err: str) -> str:
    assert err.endswith("\n")
    assert err.count("\n") == 1, err
    assert err.startswith("host-agent: error: ")
    return err


# --- init -----------------------------------------------------------------------


def test_cli_init_writes_ca_server_and_crl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "pki"
    code, out, _ = run_cli(capsys, "certs", "init", str(directory))
    assert code == 0
    assert str(directory) in out
    assert sorted(path.name for path in directory.iterdir()) == sorted(INIT_FILES)


def test_keys_are_0600_and_public_files_0644(ca_dir: Path) -> None:
    certs.issue_client(ca_dir, "librarian-1")
    assert mode_of(ca_dir / certs.CA_KEY) == 0o600
    assert mode_of(ca_dir / certs.SERVER_KEY) == 0o600
    assert mode_of(ca_dir / "librarian-1.key") == 0o600
    assert mode_of(ca_dir / certs.CA_CERT) == 0o644
    assert mode_of(ca_dir / certs.SERVER_CERT) == 0o644
    assert mode_of(ca_dir / "librarian-1.crt") == 0o644
    assert mode_of(ca_dir / certs.CRL) == 0o644


def test_ca_is_a_ca_and_signs_itself(ca_dir: Path) -> None:
    ca = load_cert(ca_dir / certs.CA_CERT)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ca.verify_directly_issued_by(ca)
    key = serialization.load_pem_private_key((ca_dir / certs.CA_KEY).read_bytes(), None)
    assert key.public_key() == ca.public_key()


def test_server_certificate_defaults(ca_dir: Path) -> None:
    ca = load_cert(ca_dir / certs.CA_CERT)
    server = load_cert(ca_dir / certs.SERVER_CERT)

    assert sans_of(server) == ({"localhost"}, {"127.0.0.1", "::1"})
    assert eku_of(server) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server.verify_directly_issued_by(ca)
    key = serialization.load_pem_private_key((ca_dir / certs.SERVER_KEY).read_bytes(), None)
    assert key.public_key() == server.public_key()


def test_cli_init_with_custom_names_and_ips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "pki"
    code, _, _ = run_cli(
        capsys,
        "certs",
        "init",
        str(directory),
        "--name",
        "agent.example.org",
        "--name",
        "agent",
        "--ip",
        "10.0.0.5",
        "--ip",
        "fd00::5",
    )
    assert code == 0
    server = load_cert(directory / certs.SERVER_CERT)
    # --name/--ip replace the defaults (the help says "default localhost").
    assert sans_of(server) == ({"agent.example.org", "agent"}, {"10.0.0.5", "fd00::5"})
    assert server.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "agent.example.org"
    )


def test_cli_init_rejects_an_invalid_ip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "certs", "init", str(tmp_path / "pki"), "--ip", "10.0.0.300")
    assert code == 1
    assert "10.0.0.300" in one_line_error(err)


# --- client certificates --------------------------------------------------------


def test_client_certificate_has_exact_cn_and_client_auth(
    ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(capsys, "certs", "client", str(ca_dir), "librarian-1")
    assert code == 0
    cert_path, key_path = ca_dir / "librarian-1.crt", ca_dir / "librarian-1.key"
    assert str(cert_path) in out
    assert str(key_path) in out

    cert = load_cert(cert_path)
    assert cert.subject.rfc4514_string() == "CN=librarian-1"
    assert cert.issuer == load_cert(ca_dir / certs.CA_CERT).subject
    assert eku_of(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert key.public_key() == cert.public_key()
    now = dt.datetime.now(dt.UTC)
    assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc


def test_client_certificate_verifies_against_its_ca_only(ca_dir: Path, tmp_path: Path) -> None:
    cert_path, _ = certs.issue_client(ca_dir, "reader-1")
    cert = load_cert(cert_path)
    cert.verify_directly_issued_by(load_cert(ca_dir / certs.CA_CERT))

    other = tmp_path / "other"
    certs.init_ca(other)
    with pytest.raises(InvalidSignature):
        cert.verify_directly_issued_by(load_cert(other / certs.CA_CERT))


def test_client_days_sets_the_validity(ca_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run_cli(capsys, "certs", "client", str(ca_dir), "ci-1", "--days", "7")
    assert code == 0
    cert = load_cert(ca_dir / "ci-1.crt")
    lifetime = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=6) < lifetime <= dt.timedelta(days=7)


def test_64_character_cn_is_accepted(ca_dir: Path) -> None:
    cn = "a" * 64
    cert_path, _ = certs.issue_client(ca_dir, cn)
    assert load_cert(cert_path).subject.rfc4514_string() == f"CN={cn}"


@pytest.mark.parametrize(
    "cn",
    [
        pytest.param("../x", id="path-traversal"),
        pytest.param("a/b", id="slash"),
        pytest.param(".hidden", id="leading-dot"),
        pytest.param("-rf", id="leading-dash"),
        pytest.param("", id="empty"),
        pytest.param("a" * 65, id="too-long-65"),
        pytest.param("ca", id="reserved-ca"),
        pytest.param("CA", id="reserved-ca-uppercase"),
        pytest.param("server", id="reserved-server"),
        pytest.param("crl", id="reserved-crl"),
        pytest.param("a b", id="space"),
        pytest.param("a\x00b", id="nul"),
        pytest.param("a\n", id="trailing-newline"),
    ],
)
def test_invalid_cn_is_rejected(ca_dir: Path, tmp_path: Path, cn: str) -> None:
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(CertificateError, match="invalid CN"):
        certs.issue_client(ca_dir, cn)
    with pytest.raises(CertificateError, match="invalid CN"):
        certs.revoke(ca_dir, cn)
    assert sorted(tmp_path.rglob("*")) == before


def test_cli_rejects_an_invalid_cn(ca_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "certs", "client", str(ca_dir), "../escape")
    assert code == 1
    assert "invalid CN" in one_line_error(err)
    assert not (ca_dir.parent / "escape.crt").exists()


def test_client_without_init_errors_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "pki"
    with pytest.raises(CertificateError, match="certs init"):
        certs.issue_client(directory, "librarian-1")

    directory.mkdir()
    code, _, err = run_cli(capsys, "certs", "client", str(directory), "librarian-1")
    assert code == 1
    assert "certs init" in one_line_error(err)
    assert list(directory.iterdir()) == []


# --- overwriting ----------------------------------------------------------------


def test_init_refuses_to_overwrite_without_force(
    ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {name: (ca_dir / name).read_bytes() for name in INIT_FILES}
    with pytest.raises(CertificateError, match="--force"):
        certs.init_ca(ca_dir)

    code, _, err = run_cli(capsys, "certs", "init", str(ca_dir))
    assert code == 1
    assert "--force" in one_line_error(err)
    assert {name: (ca_dir / name).read_bytes() for name in INIT_FILES} == before


def test_init_refuses_when_only_the_crl_exists(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    directory.mkdir()
    (directory / certs.CRL).write_text("keep me\n")
    with pytest.raises(CertificateError, match="--force"):
        certs.init_ca(directory)
    assert sorted(path.name for path in directory.iterdir()) == [certs.CRL]


def test_init_with_force_makes_a_new_ca(ca_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old_ca = load_cert(ca_dir / certs.CA_CERT)
    old_server = load_cert(ca_dir / certs.SERVER_CERT)

    code, _, _ = run_cli(capsys, "certs", "init", str(ca_dir), "--force")
    assert code == 0
    new_ca = load_cert(ca_dir / certs.CA_CERT)
    new_server = load_cert(ca_dir / certs.SERVER_CERT)
    assert new_ca.serial_number != old_ca.serial_number
    assert new_ca.public_key() != old_ca.public_key()
    assert new_server.serial_number != old_server.serial_number
    new_server.verify_directly_issued_by(new_ca)
    assert mode_of(ca_dir / certs.CA_KEY) == 0o600


def test_client_refuses_to_overwrite_without_force(
    ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs.issue_client(ca_dir, "librarian-1")
    before = (ca_dir / "librarian-1.crt").read_bytes(), (ca_dir / "librarian-1.key").read_bytes()
    with pytest.raises(CertificateError, match="--force"):
        certs.issue_client(ca_dir, "librarian-1")

    code, _, err = run_cli(capsys, "certs", "client", str(ca_dir), "librarian-1")
    assert code == 1
    assert "--force" in one_line_error(err)
    after = (ca_dir / "librarian-1.crt").read_bytes(), (ca_dir / "librarian-1.key").read_bytes()
    assert after == before


def test_client_refuses_when_only_the_certificate_exists(ca_dir: Path) -> None:
    cert_path, key_path = certs.issue_client(ca_dir, "librarian-1")
    key_path.unlink()
    before = cert_path.read_bytes()
    with pytest.raises(CertificateError, match="--force"):
        certs.issue_client(ca_dir, "librarian-1")
    # Nothing half-done: no fresh key that would not match the kept certificate.
    assert not key_path.exists()
    assert cert_path.read_bytes() == before


def test_client_with_force_issues_a_new_certificate(
    ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = load_cert(certs.issue_client(ca_dir, "librarian-1")[0])

    code, _, _ = run_cli(capsys, "certs", "client", str(ca_dir), "librarian-1", "--force")
    assert code == 0
    new = load_cert(ca_dir / "librarian-1.crt")
    assert new.serial_number != old.serial_number
    assert new.public_key() != old.public_key()
    assert new.subject.rfc4514_string() == "CN=librarian-1"
    assert mode_of(ca_dir / "librarian-1.key") == 0o600
    assert [path.name for path in ca_dir.iterdir() if path.name.startswith(".")] == []  # no temps


# --- revocation -----------------------------------------------------------------


def test_fresh_crl_is_empty_signed_by_the_ca_and_current(ca_dir: Path) -> None:
    crl = certs.load_crl(ca_dir)
    ca = load_cert(ca_dir / certs.CA_CERT)
    assert len(crl) == 0
    assert crl.issuer == ca.subject
    assert crl.is_signature_valid(ec_public_key(ca))
    now = dt.datetime.now(dt.UTC)
    assert crl.last_update_utc <= now
    assert crl.next_update_utc is not None
    assert crl.next_update_utc > now


def test_revoke_lists_the_serial_in_a_signed_crl(
    ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert = load_cert(certs.issue_client(ca_dir, "librarian-1")[0])
    certs.issue_client(ca_dir, "reader-1")

    code, out, _ = run_cli(capsys, "certs", "revoke", str(ca_dir), "librarian-1")
    assert code == 0
    assert f"{cert.serial_number:x}" in out

    crl = certs.load_crl(ca_dir)
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    assert len(crl) == 1
    ca = load_cert(ca_dir / certs.CA_CERT)
    assert crl.is_signature_valid(ec_public_key(ca))
    assert crl.next_update_utc is not None
    assert crl.next_update_utc > dt.datetime.now(dt.UTC)
    assert mode_of(ca_dir / certs.CRL) == 0o644


def test_crl_is_not_valid_under_another_ca(ca_dir: Path, tmp_path: Path) -> None:
    certs.issue_client(ca_dir, "librarian-1")
    certs.revoke(ca_dir, "librarian-1")
    other = tmp_path / "other"
    certs.init_ca(other)
    assert not certs.load_crl(ca_dir).is_signature_valid(
        ec_public_key(load_cert(other / certs.CA_CERT))
    )


def test_revoking_twice_keeps_one_entry(ca_dir: Path) -> None:
    certs.issue_client(ca_dir, "librarian-1")
    [first] = certs.revoke(ca_dir, "librarian-1")
    [second] = certs.revoke(ca_dir, "librarian-1")
    assert first == second
    crl = certs.load_crl(ca_dir)
    assert [entry.serial_number for entry in crl] == [first]


def test_revoking_a_second_cn_keeps_the_first(ca_dir: Path) -> None:
    certs.issue_client(ca_dir, "librarian-1")
    certs.issue_client(ca_dir, "reader-1")
    certs.issue_client(ca_dir, "admin-1")
    [first] = certs.revoke(ca_dir, "librarian-1")
    [second] = certs.revoke(ca_dir, "reader-1")

    crl = certs.load_crl(ca_dir)
    assert first != second
    assert {entry.serial_number for entry in crl} == {first, second}
    admin = load_cert(ca_dir / "admin-1.crt")
    assert crl.get_revoked_certificate_by_serial_number(admin.serial_number) is None


def test_reissued_certificate_is_not_revoked_but_the_old_one_stays(ca_dir: Path) -> None:
    certs.issue_client(ca_dir, "librarian-1")
    [old] = certs.revoke(ca_dir, "librarian-1")
    new = load_cert(certs.issue_client(ca_dir, "librarian-1", force=True)[0])

    crl = certs.load_crl(ca_dir)
    assert crl.get_revoked_certificate_by_serial_number(old) is not None
    assert crl.get_revoked_certificate_by_serial_number(new.serial_number) is None


def test_revoke_of_an_unknown_cn_errors(ca_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (ca_dir / certs.CRL).read_bytes()
    with pytest.raises(CertificateError, match="nobody-1"):
        certs.revoke(ca_dir, "nobody-1")

    code, _, err = run_cli(capsys, "certs", "revoke", str(ca_dir), "nobody-1")
    assert code == 1
    assert "nobody-1" in one_line_error(err)
    assert (ca_dir / certs.CRL).read_bytes() == before


# --- `certs crl`: re-signing before the next update --------------------------------------


def test_crl_refresh_moves_the_next_update_and_keeps_every_revocation(
    ca_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certs.issue_client(ca_dir, "librarian-1")
    certs.issue_client(ca_dir, "reader-1")
    certs.revoke(ca_dir, "librarian-1")
    certs.revoke(ca_dir, "reader-1")
    before = {entry.serial_number: entry.revocation_date_utc for entry in certs.load_crl(ca_dir)}
    old_next = certs.load_crl(ca_dir).next_update_utc
    assert old_next is not None

    code, out, _ = run_cli(capsys, "certs", "crl", str(ca_dir), "--days", "90")
    assert code == 0
    crl = certs.load_crl(ca_dir)
    assert {entry.serial_number: entry.revocation_date_utc for entry in crl} == before
    assert crl.is_signature_valid(ec_public_key(load_cert(ca_dir / certs.CA_CERT)))
    assert crl.next_update_utc is not None and crl.next_update_utc > old_next
    expected = dt.datetime.now(dt.UTC) + dt.timedelta(days=90)
    assert abs(crl.next_update_utc - expected) < dt.timedelta(minutes=5)
    assert out == (
        f"rewrote {ca_dir / certs.CRL}: 2 revoked certificate(s), next update "
        f"{crl.next_update_utc:%Y-%m-%dT%H:%M:%SZ}; reload the agent to use it\n"
    )
    assert mode_of(ca_dir / certs.CRL) == 0o644


@pytest.mark.parametrize("days", ["0", "3", "367", "-1"])
def test_crl_refresh_refuses_a_lifetime_out_of_range(
    ca_dir: Path, capsys: pytest.CaptureFixture[str], days: str
) -> None:
    before = (ca_dir / certs.CRL).read_bytes()
    code, _, err = run_cli(capsys, "certs", "crl", str(ca_dir), "--days", days)
    assert code == 1
    assert one_line_error(err) == "host-agent: error: a CRL must be valid for 4 to 366 days\n"
    assert (ca_dir / certs.CRL).read_bytes() == before


def test_crl_refresh_refuses_a_crl_its_ca_did_not_sign(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Re-signing a planted CRL would un-revoke whatever it left out."""
    other = tmp_path / "other"
    certs.init_ca(other)
    planted = (other / certs.CRL).read_bytes()
    (ca_dir / certs.CRL).write_bytes(planted)
    code, _, err = run_cli(capsys, "certs", "crl", str(ca_dir))
    assert code == 1
    assert f"{ca_dir / certs.CRL} is not signed by {ca_dir / certs.CA_CERT}" in err
    assert (ca_dir / certs.CRL).read_bytes() == planted


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no CRL at"), (b"not a crl\n", "is not a PEM CRL")],
    ids=["missing", "garbage"],
)
def test_crl_refresh_refuses_a_missing_or_garbled_crl(
    ca_dir: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, message: str
) -> None:
    path = ca_dir / certs.CRL
    if content is None:
        path.unlink()
    else:
        path.write_bytes(content)
    code, _, err = run_cli(capsys, "certs", "crl", str(ca_dir))
    assert code == 1 and message in err
    assert (path.read_bytes() if path.exists() else None) == content


def rsa_ca(directory: Path) -> x509.Certificate:
    """A CA as openssl makes them (the predecessor's installer did): RSA, no CRL yet."""
    directory.mkdir()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clash-ca")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / certs.CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    (directory / certs.CA_KEY).write_bytes(key_pem)
    return cert


def test_a_ca_made_elsewhere_gets_an_empty_crl_only_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "clash"
    ca = rsa_ca(directory)
    code, _, err = run_cli(capsys, "certs", "crl", str(directory))
    assert code == 1 and "make an empty one with --create" in err
    assert not (directory / certs.CRL).exists()

    code, out, _ = run_cli(capsys, "certs", "crl", str(directory), "--create")
    assert code == 0 and "0 revoked certificate(s)" in out
    public_key = ca.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    assert certs.load_crl(directory).is_signature_valid(public_key)
    # --create never empties a CRL that exists.
    certs.issue_client(directory, "librarian-1")
    [serial] = certs.revoke(directory, "librarian-1")
    assert run_cli(capsys, "certs", "crl", str(directory), "--create")[0] == 0
    assert [entry.serial_number for entry in certs.load_crl(directory)] == [serial]


def test_an_rsa_ca_from_the_predecessor_serves_and_revokes_for_real(tmp_path: Path) -> None:
    directory = tmp_path / "clash"
    rsa_ca(directory)
    certs.refresh_crl(directory, create=True)
    certs.issue_server(directory, names=["localhost"], ips=["127.0.0.1"])
    for cn in ("librarian-1", "revoked-1"):
        certs.issue_client(directory, cn)
    certs.revoke(directory, "revoked-1")
    pki = Pki(directory, directory)
    config = write_config(tmp_path / "agent.toml", config_text(pki, tmp_path))
    with running_agent(config) as agent:
        with client(agent, pki, "librarian-1") as http:
            assert http.get("/health").json()["crl"]["state"] == "ok"
        refused = (ssl.SSLError, httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)
        with pytest.raises(refused), client(agent, pki, "revoked-1") as http:
            http.get("/health")
