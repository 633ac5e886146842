"""Revoking a CN revokes every certificate it was ever issued (invariant 1): `certs`
keeps an index of them, `client --force` revokes the one it replaces, and a live agent
refuses old and new certificates after the reload."""

from __future__ import annotations

import json
import shutil
import ssl
from pathlib import Path

import httpx
import pytest

from host_agent import certs
from host_agent.cert_index import INDEX
from tests.served import Served
from tests.support import client_context, host_agent_command

REFUSED = (ssl.SSLError, httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)


def keep_aside(served: Served, cn: str, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of CN's current certificate and key: what a leaked key looks like later."""
    kept = tmp_path / "kept"
    kept.mkdir(parents=True, exist_ok=True)
    cert, key = served.pki.client(cn)
    return Path(shutil.copy(cert, kept)), Path(shutil.copy(key, kept))


def status(served: Served, cert: Path, key: Path) -> int:
    verify = client_context(served.pki.ca, cert, key)
    with httpx.Client(base_url=served.url, verify=verify, timeout=30) as http:
        return http.get("/health").status_code


def refused(served: Served, cert: Path, key: Path) -> bool:
    try:
        status(served, cert, key)
    except REFUSED:
        return True
    return False


def certs_command(*args: str) -> str:
    code, out, err = host_agent_command("certs", *args)
    assert code == 0, err
    return out


def test_reissue_revokes_the_old_certificate_and_revoke_revokes_old_and_new(
    served: Served, tmp_path: Path
) -> None:
    directory = str(served.pki.directory)
    old = keep_aside(served, "librarian-1", tmp_path)
    said = certs_command("client", directory, "librarian-1", "--force")
    assert "revoked the certificate it replaces" in said
    new = served.pki.client("librarian-1")
    served.sighup("reloaded")
    assert refused(served, *old)
    assert status(served, *new) == 200

    said = certs_command("revoke", directory, "librarian-1")
    assert "revoked 2 certificate(s) of librarian-1" in said
    served.sighup("reloaded")
    assert refused(served, *old)
    assert refused(served, *new)
    assert status(served, *served.pki.client("reader-1")) == 200


def test_revoke_reaches_a_certificate_replaced_before_the_index_existed(
    served: Served, tmp_path: Path
) -> None:
    """A directory from before the index: what it still has is rebuilt, and from then on
    every re-issue is recorded, so a later revoke reaches all of them."""
    directory = served.pki.directory
    (directory / INDEX).unlink()
    old = keep_aside(served, "admin-1", tmp_path)
    said = certs_command("client", str(directory), "admin-1", "--force")
    assert f"had no {INDEX}: rebuilt it" in said
    middle = keep_aside(served, "admin-1", tmp_path / "middle")
    certs_command("client", str(directory), "admin-1", "--force")
    certs_command("revoke", str(directory), "admin-1")
    served.sighup("reloaded")
    for cert, key in (old, middle, served.pki.client("admin-1")):
        assert refused(served, cert, key)


def test_list_shows_every_certificate_issued_as_a_table_and_as_json(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    certs.init_ca(directory)
    certs.issue_client(directory, "librarian-1")
    first = certs.certificate_at(directory / "librarian-1.crt")
    certs.issue_client(directory, "librarian-1", force=True)
    certs.issue_client(directory, "reader-1")
    assert first is not None

    listed = json.loads(certs_command("list", str(directory), "--json"))
    assert listed["recovered"] is False
    rows = {row["serial"]: row for row in listed["certificates"]}
    assert [row["cn"] for row in listed["certificates"]] == [
        "librarian-1",
        "librarian-1",
        "reader-1",
    ]
    assert rows[format(first.serial_number, "x")]["revoked_at"] is not None
    assert [row["revoked_at"] for row in listed["certificates"][1:]] == [None, None]
    assert all(row["not_after"] and row["issued_at"] for row in listed["certificates"])

    table = certs_command("list", str(directory)).splitlines()
    assert table[0].split() == ["serial", "cn", "issued_at", "not_after", "revoked_at"]
    assert len(table) == 4
    assert table[1].split()[0] == format(first.serial_number, "x")
    assert table[1].split()[-1] != "-" and table[2].split()[-1] == "-"


def test_a_directory_without_an_index_is_rebuilt_from_its_files_and_crl_and_says_so(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "pki"
    certs.init_ca(directory)
    certs.issue_client(directory, "librarian-1")
    certs.issue_client(directory, "revoked-1")
    gone = certs.certificate_at(directory / "revoked-1.crt")
    assert gone is not None
    certs.revoke(directory, "revoked-1")
    for name in (INDEX, "revoked-1.crt", "revoked-1.key"):
        (directory / name).unlink()

    code, _, err = host_agent_command("certs", "list", str(directory))
    assert code == 0
    assert "rebuilt from the <CN>.crt files and the CRL" in err
    listed = json.loads(certs_command("list", str(directory), "--json"))
    assert listed["recovered"] is True
    rows = {row["serial"]: row for row in listed["certificates"]}
    # Only the CRL still knows the revoked one: serial and date, no CN.
    assert rows[format(gone.serial_number, "x")]["cn"] is None
    assert rows[format(gone.serial_number, "x")]["revoked_at"] is not None
    assert [row["cn"] for row in rows.values()] == ["librarian-1", None]
    assert not (directory / INDEX).exists()  # listing never writes

    certs.revoke(directory, "librarian-1")
    saved = json.loads((directory / INDEX).read_text())
    assert {row["cn"] for row in saved["certificates"]} == {"librarian-1", None}
    assert all(row["revoked_at"] for row in saved["certificates"])


@pytest.mark.parametrize(
    "force", [pytest.param(False, id="new-cn"), pytest.param(True, id="force")]
)
def test_every_issue_is_recorded_atomically(tmp_path: Path, force: bool) -> None:
    directory = tmp_path / "pki"
    certs.init_ca(directory)
    certs.issue_client(directory, "librarian-1")
    if force:
        certs.issue_client(directory, "librarian-1", force=True)
    saved = json.loads((directory / INDEX).read_text())
    assert len(saved["certificates"]) == (2 if force else 1)
    assert (directory / INDEX).stat().st_mode & 0o777 == 0o644
    assert [p.name for p in directory.iterdir() if p.name.startswith(".")] == []
