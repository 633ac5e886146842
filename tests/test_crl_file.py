"""The CRL file is CRLs of the client CA and nothing else (invariant 1): a CA certificate
slipped into it, with or without its own CRL, never becomes a trust anchor, and a CRL
another CA signed is refused, at start, by check-config and on reload."""

from __future__ import annotations

import re
import shutil
import ssl
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from host_agent import certs
from host_agent.tls import TLSSetupError, server_tls
from tests.served import Served, reloads
from tests.support import (
    Pki,
    client_context,
    config_text,
    host_agent_command,
    serve_process,
    write_config,
)

REFUSED = (ssl.SSLError, httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)


def rogue_ca(tmp_path: Path) -> Path:
    """Another CA (same subject name as ours, its own key) with an `admin-9` client."""
    directory = tmp_path / "rogue"
    certs.init_ca(directory)
    certs.issue_client(directory, "admin-9")
    return directory


def append_rogue_ca_and_its_crl(crl_file: Path, rogue: Path) -> None:
    """Exactly the attack: the rogue CA certificate and its CRL appended to crl.pem."""
    crl_file.write_bytes(
        crl_file.read_bytes()
        + (rogue / certs.CA_CERT).read_bytes()
        + (rogue / certs.CRL).read_bytes()
    )


def rogue_admin(served: Served, rogue: Path) -> httpx.Client:
    """The rogue admin-9, trusting our server certificate."""
    verify = client_context(served.pki.ca, rogue / "admin-9.crt", rogue / "admin-9.key")
    return httpx.Client(base_url=served.url, verify=verify, timeout=30)


@pytest.mark.parametrize(
    ("tamper", "why"),
    [
        pytest.param(
            append_rogue_ca_and_its_crl,
            "holds a CERTIFICATE block: only X509 CRL blocks",
            id="rogue-ca-and-its-crl",
        ),
        pytest.param(
            lambda crl, rogue: crl.write_bytes(crl.read_bytes() + (rogue / certs.CRL).read_bytes()),
            "CRL 2 .* is not signed by the client CA",
            id="crl-of-another-ca",
        ),
        pytest.param(
            lambda crl, rogue: shutil.copy(rogue / certs.CRL, crl),
            "CRL 1 .* is not signed by the client CA",
            id="only-a-crl-of-another-ca",
        ),
    ],
)
def test_start_and_check_config_refuse_a_crl_file_with_anything_but_our_crls(
    own_pki: Pki, tmp_path: Path, tamper: object, why: str
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(config_text(own_pki, tmp_path))
    tamper(own_pki.directory / certs.CRL, rogue_ca(tmp_path))  # type: ignore[operator]

    code, _, said = host_agent_command("check-config", str(config))
    assert code != 0
    assert re.search(why, said), said

    process = serve_process(config)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0
    assert re.search(why, stderr), stderr
    assert "listening on" not in stderr


def test_a_reload_with_a_rogue_ca_in_the_crl_file_keeps_the_old_context(
    served: Served, tmp_path: Path
) -> None:
    rogue = rogue_ca(tmp_path)
    append_rogue_ca_and_its_crl(served.pki.directory / certs.CRL, rogue)
    line = served.sighup("reload failed")
    assert "only X509 CRL blocks" in line, line
    assert reloads(served, "failure") == 1
    with pytest.raises(REFUSED), rogue_admin(served, rogue) as http:
        http.get("/admin/pending")
    with served.client("admin-1") as http:
        assert http.get("/admin/pending").status_code == 200


def ca_key_block(pki: Pki) -> bytes:
    return (pki.directory / certs.CA_KEY).read_bytes()


@pytest.mark.parametrize(
    ("content", "why"),
    [
        pytest.param(lambda pki, crl: crl + ca_key_block(pki), "PRIVATE KEY block", id="key"),
        pytest.param(lambda pki, crl: b"", "holds no CRL", id="empty"),
        pytest.param(lambda pki, crl: b"# only a comment\n", "not a valid CRL", id="no-block"),
    ],
)
def test_anything_but_client_ca_crls_is_a_setup_error(
    own_pki: Pki, tmp_path: Path, content: object, why: str
) -> None:
    crl_file = own_pki.directory / certs.CRL
    crl_file.write_bytes(content(own_pki, crl_file.read_bytes()))  # type: ignore[operator]
    config = write_config(tmp_path / "agent.toml", config_text(own_pki, tmp_path))
    with pytest.raises(TLSSetupError, match=why):
        server_tls(config.server)


def test_a_der_crl_and_text_around_pem_blocks_load_with_their_revocations(
    own_pki: Pki, tmp_path: Path
) -> None:
    crl_file = own_pki.directory / certs.CRL
    crl = certs.load_crl(own_pki.directory)
    revoked = {entry.serial_number for entry in crl}
    assert revoked  # the session PKI revoked revoked-1
    config = write_config(tmp_path / "agent.toml", config_text(own_pki, tmp_path))
    crl_file.write_bytes(b"made by certs revoke\n" + crl_file.read_bytes() + b"\ntrailer\n")
    assert server_tls(config.server).revoked == revoked
    crl_file.write_bytes(crl.public_bytes(serialization.Encoding.DER))
    assert server_tls(config.server).revoked == revoked
