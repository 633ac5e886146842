"""Test helpers: a PKI per session, a live agent on loopback, mTLS clients."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import pwd
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from host_agent import certs
from host_agent.adapters.systemd import SystemdAdapter
from host_agent.adapters.zfs import ZfsAdapter
from host_agent.config import Config, SystemdConfig, ZfsConfig, load_config
from host_agent.server import run_server
from host_agent.tls_server import bind_socket

# CNs every session's PKI has. `stranger` has a valid certificate but no profile.
KNOWN_CNS = ("librarian-1", "reader-1", "admin-1", "stranger", "revoked-1")


@dataclass(frozen=True)
class Pki:
    directory: Path
    other_ca: Path  # a second, unrelated CA with its own client "librarian-1"

    @property
    def ca(self) -> Path:
        return self.directory / certs.CA_CERT

    def client(self, cn: str) -> tuple[Path, Path]:
        return self.directory / f"{cn}.crt", self.directory / f"{cn}.key"


def make_pki(root: Path) -> Pki:
    directory = root / "pki"
    certs.init_ca(directory)
    for cn in KNOWN_CNS:
        certs.issue_client(directory, cn)
    now = dt.datetime.now(dt.UTC)
    certs.issue_client(
        directory,
        "expired-1",
        validity=certs.Validity(now - dt.timedelta(days=30), now - dt.timedelta(days=1)),
    )
    certs.issue_client(
        directory,
        "future-1",
        validity=certs.Validity(now + dt.timedelta(days=1), now + dt.timedelta(days=30)),
    )
    certs.revoke(directory, "revoked-1")
    other = root / "other-ca"
    certs.init_ca(other)
    certs.issue_client(other, "librarian-1")
    return Pki(directory, other)


# Every unit and dataset, as the predecessor allowed: the built-in refusals still hold.
OPEN_TARGETS = """
[systemd]
allowed_units = ["*"]

[zfs]
allowed_datasets = ["*"]
"""


def open_zfs() -> ZfsAdapter:
    """A zfs adapter for any dataset, nothing protected (unit tests: no mount table)."""
    return ZfsAdapter(ZfsConfig(allowed_datasets=("*",), protected_paths=()), frozenset())


def open_systemd() -> SystemdAdapter:
    """A systemd adapter for any unit the built-in deny list leaves."""
    return SystemdAdapter(SystemdConfig(allowed_units=("*",)))


def config_text(
    pki: Pki,
    workdir: Path,
    *,
    audit_log: Path | None = None,
    service_user: str | None = None,
    wrapper_dir: Path | None = None,
    profiles: str = "",
    extra: str = "",
    approvals: bool = True,
    approval: str = "",
    approval_ttl: int = 300,
    targets: str = OPEN_TARGETS,
    zfs_destroy: str | None = None,
    server: str = "",
    audit: str = "",
) -> str:
    """A complete config in the predecessor's shape plus the [runner] section.

    `profiles` ([[agents]] tables) come before the standard ones, so they win
    the first-match for their CNs; `extra` (tables) goes at the end; `approval`,
    `server` and `audit` add keys to their tables.
    """
    if service_user is None:
        # As root the runner must drop to an unprivileged account; otherwise it is us.
        service_user = "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    if zfs_destroy is None:
        # The zfs wrapper's own opt-in, for the service account.
        zfs_destroy = f"enabled = true\nallowed_uids = [{pwd.getpwnam(service_user).pw_uid}]"
    return f"""
[server]
bind = "127.0.0.1:0"
cert = "{pki.directory / certs.SERVER_CERT}"
key = "{pki.directory / certs.SERVER_KEY}"
client_ca = "{pki.ca}"
crl_file = "{pki.directory / certs.CRL}"
{server}
[runner]
service_user = "{service_user}"
wrapper_dir = "{wrapper_dir or workdir / "wrappers"}"
timeout_seconds = 30

[audit]
log_path = "{audit_log or workdir / "audit.jsonl"}"
{audit}

[approval]
enabled = {"true" if approvals else "false"}
ttl_seconds = {approval_ttl}
allowed_approvers = ["+15555550001", "+15555550002"]
admin_cn_pattern = "admin-*"
store_path = "{workdir / "approvals.sqlite3"}"
{approval}
{profiles}
[[agents]]
cn_pattern = "librarian*"
agent_type = "librarian"
unix_user = "librarian"
autonomy = "supervised"
allowed_operations = ["zfs-list", "zfs-snapshot"]
requires_approval_for = ["zfs-destroy"]

[[agents]]
cn_pattern = "reader-*"
agent_type = "reader"
unix_user = "reader"
autonomy = "read_only"
allowed_operations = ["zfs-list", "zfs-snapshot"]

[[agents]]
cn_pattern = "admin-*"
agent_type = "admin"
unix_user = "root-helper"
autonomy = "full"
allowed_operations = ["zfs-*"]

[[rules]]
operation = "zfs-snapshot"
pattern = "forbidden(/.*)?"
deny = true

[[rules]]
operation = "zfs-list"
approval_required = false

[wrappers.zfs_destroy]
{zfs_destroy}
{targets}
{extra}
"""


def write_config(path: Path, text: str) -> Config:
    path.write_text(text)
    return load_config(path)


class RunningAgent:
    """The real server (Hypercorn + mTLS) on a loopback port, in a background thread."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.sock = bind_socket("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await run_server(
                self.config, sock=self.sock, shutdown=self._stop, ready=self._ready.set
            )

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()

    def start(self) -> RunningAgent:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("agent did not start")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@contextmanager
def running_agent(config: Config) -> Iterator[RunningAgent]:
    agent = RunningAgent(config).start()
    try:
        yield agent
    finally:
        agent.stop()


LISTENING = re.compile(r"listening on https://127\.0\.0\.1:(\d+)")


def serve_process(
    config: Path,
    *,
    prefix: tuple[str, ...] = (),
    options: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    user: str | None = None,
) -> subprocess.Popen[str]:
    """`host-agent serve` as a real process (`prefix` e.g. runs it under prlimit); as
    `user` (its uid, gid and groups), as installed, rather than as root."""
    account: dict[str, Any] = {}
    if user is not None:
        entry = pwd.getpwnam(user)
        account = {
            "user": entry.pw_uid,
            "group": entry.pw_gid,
            "extra_groups": os.getgrouplist(user, entry.pw_gid),
        }
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", "host_agent", "serve", "--config", str(config), *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=None if env is None else {**os.environ, **env},
        **account,
    )


def start_failure(config: Path) -> tuple[int, str]:
    """`host-agent serve` expected to refuse to start: its exit code and stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "host_agent", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stderr


def raised_without_waiting_on(fifo: Path, action: Callable[[], object]) -> BaseException | None:
    """What `action` raised (None: nothing), failing the test if it sat waiting on `fifo`
    (a FIFO's open waits for its other end): after 10 s the other end is opened, to let
    the waiting thread go, and the test fails."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():
        for other_end in (os.O_RDONLY, os.O_WRONLY):
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, other_end | os.O_NONBLOCK))
        thread.join(10)
        raise AssertionError(f"waited on the FIFO {fifo}")
    return outcome[0]


@contextmanager
def reachable_directory(prefix: str) -> Iterator[Path]:
    """A fresh directory of root's (0755) that other accounts can pass through, unlike
    pytest's 0700 tmp_path; removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def free_port() -> int:
    """A loopback port nothing listens on right now (for servers that need a number)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def listening_port(process: subprocess.Popen[str]) -> int:
    """The port a `serve_process` reports once it listens."""
    assert process.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if match := LISTENING.search(line):
            return int(match.group(1))
        if not line and process.poll() is not None:
            break
    raise AssertionError("the agent never said where it listens")


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def client(agent: RunningAgent, pki: Pki, cn: str, *, http2: bool = False) -> httpx.Client:
    cert, key = pki.client(cn)
    return httpx.Client(
        base_url=agent.url, verify=client_context(pki.ca, cert, key), http2=http2, timeout=30
    )


@dataclass(frozen=True)
class Session:
    """What one handshake agreed on, and the answer to GET /health over it."""

    version: str | None
    cipher: str | None
    compression: str | None
    answer: bytes


def session(port: int, context: ssl.SSLContext) -> Session:
    """Handshake and send one HTTP/1.1 request; the answer is b"" if the server closed.

    Raises ssl.SSLError / OSError when the server refuses the handshake.
    """
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := tls.recv(65536):
            chunks.append(chunk)
        cipher = tls.cipher()
        return Session(tls.version(), cipher and cipher[0], tls.compression(), b"".join(chunks))


def raw_exchange(port: int, context: ssl.SSLContext) -> bytes:
    """Whatever came back to one request (b"" if closed); see `session`."""
    return session(port, context).answer


def audit_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def host_agent_command(*args: str) -> tuple[int, str, str]:
    """The installed `host-agent` console script: exit code, stdout, stderr."""
    done = subprocess.run(
        [str(Path(sys.executable).with_name("host-agent")), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr
