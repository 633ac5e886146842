"""Invariant 10 for the SQLite approval store: SQLite opens its file through any link
(Python cannot ask it not to), so a store the agent opens as root must lie where only
root can change it, and the store's own name is never followed.

The service account here is `nobody` (the root tests' service account), planting as
itself in a directory it owns.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator
from pathlib import Path

import pytest

from host_agent.approvals.store import SqliteStore, StoreError
from tests.support import Pki, config_text, reachable_directory, start_failure
from tests.system import as_user

SERVICE_ACCOUNT = "nobody"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the attack is on a root agent")


@pytest.fixture
def base() -> Iterator[Path]:
    """Where the service account can reach its own directory (it cannot pass tmp_path)."""
    with reachable_directory("ha-store-") as directory:
        yield directory


def services_directory(base: Path) -> Path:
    """The store's directory as install.sh makes it: the service account's, 0700."""
    state = base / "state"
    state.mkdir(mode=0o700)
    entry = pwd.getpwnam(SERVICE_ACCOUNT)
    os.chown(state, entry.pw_uid, entry.pw_gid)
    return state


def plant_link(link: Path, target: Path) -> None:
    def action() -> int:
        link.symlink_to(target)
        return 0

    assert as_user(SERVICE_ACCOUNT, action).exit_code == 0


def test_a_root_agent_does_not_create_a_file_where_the_service_account_points_its_store(
    base: Path,
) -> None:
    """A dangling link at the store's name: before, root created the file it names
    (here a new cron entry) and wrote the database, requests' text included, into it."""
    state = services_directory(base)
    cron_entry = base / "cron.d-host-agent"
    plant_link(state / "approvals.sqlite3", cron_entry)

    with pytest.raises(StoreError, match=f"{state} is not root's alone"):
        SqliteStore(state / "approvals.sqlite3")
    assert not cron_entry.exists()


def test_a_root_agent_does_not_open_a_store_in_the_service_accounts_directory(
    base: Path,
) -> None:
    """Nothing planted yet: still refused, since a link could be swapped in between
    any check of the name and SQLite's own open."""
    state = services_directory(base)
    with pytest.raises(StoreError, match="SQLite would follow a link planted there"):
        SqliteStore(state / "approvals.sqlite3")
    assert list(state.iterdir()) == []


def test_a_store_below_a_directory_others_can_change_is_refused(base: Path) -> None:
    """The store's own directory is root's, but the one above is not: that directory
    could be renamed away and replaced by one with a link in it."""
    above = services_directory(base)
    (above / "approvals").mkdir(mode=0o700)
    os.chown(above / "approvals", 0, 0)
    with pytest.raises(StoreError, match=f"{above} is not root's alone"):
        SqliteStore(above / "approvals" / "approvals.sqlite3")


def test_a_link_at_the_stores_name_is_not_followed_in_roots_own_directory(
    base: Path,
) -> None:
    (base / "approvals.sqlite3").symlink_to(base / "elsewhere")
    with pytest.raises(StoreError, match="it is a link"):
        SqliteStore(base / "approvals.sqlite3")
    assert not (base / "elsewhere").exists()


def test_the_service_account_opens_a_store_in_its_own_directory(base: Path) -> None:
    """As installed: the agent runs as the service account, whose directory it is."""
    state = services_directory(base)

    def action() -> int:
        SqliteStore(state / "approvals.sqlite3").close()
        return 0

    outcome = as_user(SERVICE_ACCOUNT, action)
    assert outcome.exit_code == 0, outcome.stderr
    assert (state / "approvals.sqlite3").stat().st_uid == pwd.getpwnam(SERVICE_ACCOUNT).pw_uid


def test_the_service_account_refuses_a_store_directory_others_can_write(base: Path) -> None:
    """As installed, in a directory of its own that anyone may write to (0777): another
    local account could plant a link there for the agent to follow."""
    state = services_directory(base)
    state.chmod(0o777)

    def action() -> int:
        try:
            SqliteStore(state / "approvals.sqlite3")
        except StoreError as exc:
            print(exc)
            return 1
        return 0

    outcome = as_user(SERVICE_ACCOUNT, action)
    assert outcome.exit_code == 1
    assert f"{state} is not root's or this account's alone" in outcome.stdout
    assert list(state.iterdir()) == []


def test_serve_as_root_with_the_store_in_the_service_accounts_directory_fails_clearly(
    pki: Pki, tmp_path: Path, base: Path
) -> None:
    state = services_directory(base)
    config = tmp_path / "agent.toml"
    config.write_text(
        config_text(pki, tmp_path).replace(
            str(tmp_path / "approvals.sqlite3"), str(state / "approvals.sqlite3")
        )
    )
    code, stderr = start_failure(config)
    assert code == 1
    assert f"refusing the approval store {state / 'approvals.sqlite3'}" in stderr
    assert "Traceback" not in stderr
    assert list(state.iterdir()) == []
