"""`host-agent serve` as an operator starts it: a real process, signals, start-up errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support import Pki, client_context, config_text, listening_port, serve_process


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


def _start_failure(config: Path) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "host_agent", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stderr


def test_missing_certificate_is_fatal_with_one_clear_line(pki: Pki, tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        config_text(pki, tmp_path).replace(
            str(pki.directory / "server.crt"), str(tmp_path / "gone.crt")
        )
    )
    code, stderr = _start_failure(config)
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
        code, stderr = _start_failure(config)
    assert code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in stderr
    assert "Traceback" not in stderr


def test_root_without_service_account_refuses_to_start(pki: Pki, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root must name a service account; other users run as themselves")
    config = tmp_path / "agent.toml"
    config.write_text(config_text(pki, tmp_path).replace('service_user = "nobody"\n', ""))
    code, stderr = _start_failure(config)
    assert code == 1
    assert "set [runner] service_user" in stderr
