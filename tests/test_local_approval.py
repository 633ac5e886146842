"""The approval socket's own safety checks: where the agent listens, whom the client trusts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from host_agent.approvals.local import LocalSocketError, bind
from host_agent.approvals.local_client import (
    LocalApprovalUnavailable,
    agent_listener_check,
    check_listener,
)
from host_agent.approvals.peer import Peer


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    path = tmp_path / "run"
    path.mkdir(mode=0o755)
    return path


@pytest.fixture
def listening(directory: Path) -> Iterator[Path]:
    sock = bind(directory / "approve.sock")
    try:
        yield directory / "approve.sock"
    finally:
        sock.close()


def me() -> Peer:
    return Peer(os.getpid(), os.geteuid(), os.getegid())


def test_bind_listens_with_a_socket_anyone_in_reach_may_connect_to(listening: Path) -> None:
    assert listening.is_socket()
    assert listening.stat().st_mode & 0o777 == 0o666
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(listening))


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o1777])
def test_bind_refuses_a_directory_others_can_write(directory: Path, mode: int) -> None:
    directory.chmod(mode)
    with pytest.raises(LocalSocketError, match="not group/world-writable"):
        bind(directory / "approve.sock")


def test_bind_replaces_a_stale_socket_but_never_a_file(directory: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(directory / "approve.sock"))
    stale.close()
    bind(directory / "approve.sock").close()

    (directory / "other").write_text("keep me")
    with pytest.raises(LocalSocketError, match="is not a socket"):
        bind(directory / "other")
    assert (directory / "other").read_text() == "keep me"


def test_bind_names_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(LocalSocketError, match="create it at install"):
        bind(tmp_path / "missing" / "approve.sock")


def test_the_client_trusts_the_agents_own_socket(listening: Path) -> None:
    check_listener(listening, me())


def test_the_client_refuses_a_listener_that_did_not_create_the_socket(listening: Path) -> None:
    stranger = Peer(1, os.geteuid() + 4242, 4242)
    with pytest.raises(LocalApprovalUnavailable, match="did not create it"):
        check_listener(listening, stranger)


def test_the_client_refuses_a_socket_in_a_writable_directory(
    listening: Path, directory: Path
) -> None:
    directory.chmod(0o777)
    with pytest.raises(LocalApprovalUnavailable, match="which others can change"):
        check_listener(listening, me())


def test_the_client_refuses_what_is_not_a_socket(directory: Path) -> None:
    (directory / "approve.sock").symlink_to("/dev/null")
    with pytest.raises(LocalApprovalUnavailable, match="is not a socket"):
        check_listener(directory / "approve.sock", me())


def test_the_root_helper_trusts_only_the_service_account_or_root(listening: Path) -> None:
    """Whoever else listens (any other uid) is not the agent."""
    agent_listener_check(service_uid=os.geteuid())(listening, me())
    stranger = Peer(1, 4343, 4343)
    with pytest.raises(LocalApprovalUnavailable, match="not the agent"):
        agent_listener_check(service_uid=4242)(listening, stranger)


def test_the_root_helper_trusts_root_only_in_roots_own_directories(
    listening: Path, directory: Path
) -> None:
    """In the service account's directory the socket could be a link to any root listener."""
    os.chown(directory, 4242, -1)
    root = Peer(1, 0, 0)
    with pytest.raises(LocalApprovalUnavailable, match="which others can change"):
        agent_listener_check(service_uid=4242)(listening, root)


# What the agent serves and the clients call with: none of it belongs in a process that
# runs as root for every decision made on the host.
NOT_IN_THE_ROOT_HELPER = (
    "httpx",
    "starlette",
    "hypercorn",
    "cryptography",
    "psycopg",
    "host_agent.approvals.manager",
    "host_agent.approvals.identity_plugin",
    "host_agent.audit",
    "host_agent.client",
    "host_agent.server",
)


def test_the_root_helper_loads_only_what_it_needs() -> None:
    script = "import sys, host_agent.approvals.helper; print(*sys.modules)"
    shown = subprocess.run(
        [sys.executable, "-I", "-c", script],
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = shown.stdout.split()
    assert "host_agent.approvals.helper" in loaded and "pam" in loaded
    assert [name for name in loaded if name.startswith(NOT_IN_THE_ROOT_HELPER)] == []
