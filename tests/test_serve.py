"""`host-agent serve` as an operator starts it: a real process, signals, start-up errors."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
from pathlib import Path

import httpx
import pytest

from host_agent.tls_server import bind_socket
from tests.support import (
    Pki,
    client_context,
    config_text,
    listening_port,
    serve_process,
    start_failure,
)


def test_serve_answers_then_stops_cleanly_on_sigterm(pki: Pki, tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(config_text(pki, tmp_path))
    process = serve_process(config)
    try:
        port = listening_port(process)
        cert, key = pki.client("librarian-1")
        with httpx.Client(verify=client_context(pki.ca, cert, key)) as http:
            assert http.get(f"https://127.0.0.1:{port}/health").status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        process.kill()
        process.communicate()


def test_a_service_manager_hears_ready_and_stopping_and_the_pid_file_lives_while_it_runs(
    pki: Pki, tmp_path: Path
) -> None:
    """What a systemd Type=notify unit and logrotate's postrotate rely on."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(tmp_path / "notify.sock"))
        manager.settimeout(30)
        process, pid_file = _serve_with_pid_file(
            pki, tmp_path, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock")}
        )
        try:
            ready = manager.recv(4096).decode()
            assert ready.startswith("READY=1\nSTATUS=listening on 127.0.0.1:")
            assert pid_file.read_text() == f"{process.pid}\n"
            process.send_signal(signal.SIGTERM)
            assert manager.recv(4096) == b"STOPPING=1"
            assert process.wait(30) == 0
        finally:
            process.kill()
            process.communicate()
    assert not pid_file.exists()


def test_a_stopping_agent_leaves_the_pid_file_of_the_agent_started_in_its_place(
    pki: Pki, tmp_path: Path
) -> None:
    """A restart: the new agent writes its pid while the old one is still stopping."""
    process, pid_file = _serve_with_pid_file(pki, tmp_path)
    try:
        listening_port(process)
        successor = f"{process.pid + 1}\n"
        pid_file.write_text(successor)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        process.kill()
        process.communicate()
    assert pid_file.read_text() == successor


# Invariant 10: the pid file's directory is the service account's, and an agent may be
# started as root (as these tests start it): nothing planted there is followed or read.


def test_a_link_planted_at_the_pid_files_temporary_name_is_not_written_through(
    pki: Pki, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    (tmp_path / ".host-agent.pid.tmp").symlink_to(secret)
    process, pid_file = _serve_with_pid_file(pki, tmp_path)
    try:
        listening_port(process)
        assert pid_file.read_text() == f"{process.pid}\n" and not pid_file.is_symlink()
    finally:
        process.kill()
        process.communicate()
    assert secret.read_text() == "root only\n"


@pytest.mark.parametrize("planted", ["fifo", "link"])
def test_a_pid_file_swapped_for_a_fifo_or_a_link_is_left_alone_at_stop(
    pki: Pki, tmp_path: Path, planted: str
) -> None:
    """A FIFO would hold the stopping agent in its read; a link to a file naming the
    agent's pid would be read through, then removed."""
    process, pid_file = _serve_with_pid_file(pki, tmp_path)
    try:
        listening_port(process)
        pid_file.unlink()
        if planted == "fifo":
            os.mkfifo(pid_file)
        else:
            (tmp_path / "elsewhere").write_text(f"{process.pid}\n")
            pid_file.symlink_to(tmp_path / "elsewhere")
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        process.kill()
        process.communicate()
    mode = os.lstat(pid_file).st_mode
    assert stat.S_ISFIFO(mode) if planted == "fifo" else stat.S_ISLNK(mode)


def _serve_with_pid_file(
    pki: Pki, tmp_path: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], Path]:
    """`host-agent serve --pid-file` on a test config, as a service manager starts it."""
    config = tmp_path / "agent.toml"
    config.write_text(config_text(pki, tmp_path))
    pid_file = tmp_path / "host-agent.pid"
    return serve_process(config, options=("--pid-file", str(pid_file)), env=env), pid_file


def test_missing_certificate_is_fatal_with_one_clear_line(pki: Pki, tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        config_text(pki, tmp_path).replace(
            str(pki.directory / "server.crt"), str(tmp_path / "gone.crt")
        )
    )
    code, stderr = start_failure(config)
    assert code == 1
    assert f"TLS certificate/key: {tmp_path / 'gone.crt'} does not exist" in stderr
    assert "Traceback" not in stderr


def test_address_in_use_is_fatal_with_one_clear_line(pki: Pki, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "agent.toml"
        config.write_text(config_text(pki, tmp_path).replace("127.0.0.1:0", f"127.0.0.1:{port}"))
        code, stderr = start_failure(config)
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in stderr
    assert "Traceback" not in stderr


def test_root_without_service_account_refuses_to_start(pki: Pki, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root must name a service account; other users run as themselves")
    config = tmp_path / "agent.toml"
    config.write_text(config_text(pki, tmp_path).replace('service_user = "nobody"\n', ""))
    code, stderr = start_failure(config)
    assert code == 1
    assert "set [runner] service_user" in stderr


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_accepted_connections_send_without_waiting_for_acks(host: str) -> None:
    """TCP_NODELAY on what the listener accepts: without it each response whose head and
    body go out apart waited 40 ms for the client's delayed ACK (found by bench/)."""
    listener = bind_socket(host, 0)
    seen: list[int] = []

    async def main() -> None:
        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(accepted, sock=listener)
        async with server:
            _, writer = await asyncio.open_connection(host, listener.getsockname()[1])
            for _ in range(500):
                if seen:
                    break
                await asyncio.sleep(0.01)
            writer.close()

    asyncio.run(main())
    assert seen and seen[0] != 0
