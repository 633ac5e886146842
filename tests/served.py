"""A real `host-agent serve` process to SIGHUP, and what tests ask it (for test_reload,
the MCP tests and the resilience tests). Its fixtures `own_pki` and `served` are in
conftest.py."""

from __future__ import annotations

import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support import Pki, client_context, listening_port, serve_process

DESTROY_DRY_RUN = {"kind": "zfs", "resource": "tank/data@old", "args": ["destroy"], "dry_run": True}
DENY_DESTROY = '[[rules]]\noperation = "zfs-destroy"\ndeny = true\n'


class Served:
    """A serve process, its config file and port, and a way to wait for its log lines."""

    def __init__(self, process: subprocess.Popen[str], config: Path, pki: Pki) -> None:
        self.process = process
        self.config = config
        self.pki = pki
        self.port = listening_port(process)
        self.url = f"https://127.0.0.1:{self.port}"

    def client(self, cn: str = "librarian-1") -> httpx.Client:
        cert, key = self.pki.client(cn)
        return httpx.Client(
            base_url=self.url, verify=client_context(self.pki.ca, cert, key), timeout=30
        )

    def sighup(self, expect: str) -> str:
        """Send SIGHUP and return the log line matching `expect` (reloaded / reload failed)."""
        self.process.send_signal(signal.SIGHUP)
        assert self.process.stderr is not None
        while line := self.process.stderr.readline():
            if re.search(expect, line):
                return line
            if re.search("reloaded|reload failed", line):  # the other outcome: fail, not hang
                raise AssertionError(f"expected {expect!r}, the agent said: {line}")
        raise AssertionError(f"the agent exited without logging {expect!r}")


def decision(served: Served) -> str:
    with served.client() as http:
        reply = http.post("/host/op", json=DESTROY_DRY_RUN)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["decision"]["effect"])


def reloads(served: Served, result: str) -> float:
    with served.client() as http:
        text = http.get("/metrics").text
    match = re.search(rf'host_agent_config_reloads_total{{result="{result}"}} (\S+)', text)
    assert match is not None
    return float(match.group(1))


@contextmanager
def agent_process(config: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A serve process whose log is drained, so a busy agent never blocks on a full pipe."""
    process = serve_process(config)
    assert process.stderr is not None
    drain = threading.Thread(target=process.stderr.read, daemon=True)
    try:
        port = listening_port(process)
        drain.start()
        yield process, port
    finally:
        process.kill()
        process.wait(30)
        if drain.is_alive():
            drain.join(30)  # reads to the end of the dead process's output
        process.stderr.close()
