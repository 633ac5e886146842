"""Slow and parked requests cannot exhaust the agent (invariant 12): a live agent under a
256-descriptor limit, real TLS, attackers on 127.0.0.2 and an admin on 127.0.0.1. During
each attack the admin's /health and another caller's dry run answer within 1 s, the
agent's CPU and log stay bounded, and afterwards the timeouts have closed what was
parked."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h2.connection
import h2.exceptions
import httpx
import pytest

from tests.resilience.conftest import Figures
from tests.support import Pki, client_context, config_text, listening_port, serve_process

ATTACKER = "127.0.0.2"
CN_CAP = 16
LIMITS = f"""
handshake_timeout_seconds = 3
idle_timeout_seconds = 3
body_timeout_seconds = 2
max_connections_per_cn = {CN_CAP}
max_handshakes_per_address = 8
h2_max_concurrent_streams = 8
"""
PARKED = 48  # per CN: three times its cap
RAW = 200
DRY_RUN = {"kind": "zfs", "resource": "tank", "args": ["list"], "dry_run": True}
# What the agent may spend during an attack: a fraction of one core, and of log.
MAX_CPU_SHARE = 0.5
MAX_LOG_BYTES = 16_384


@dataclass
class Agent:
    process: subprocess.Popen[str]
    port: int
    pki: Pki
    log: list[str] = field(default_factory=list)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks

    def log_bytes(self) -> int:
        return sum(len(line) for line in self.log)

    def tls(self, cn: str, *, source: str = ATTACKER, alpn: str = "http/1.1") -> ssl.SSLSocket:
        context = client_context(self.pki.ca, *self.pki.client(cn))
        context.set_alpn_protocols([alpn])
        raw = socket.create_connection(
            ("127.0.0.1", self.port), timeout=10, source_address=(source, 0)
        )
        return context.wrap_socket(raw, server_hostname="localhost")


@pytest.fixture
def agent(pki: Pki, tmp_path: Path) -> Iterator[Agent]:
    text = config_text(pki, tmp_path).replace("[server]\n", f"[server]\n{LIMITS}", 1)
    config = tmp_path / "agent.toml"
    config.write_text(text)
    process = serve_process(config, prefix=("prlimit", "--nofile=256:256", "--"))
    served = Agent(process, listening_port(process), pki)
    assert process.stderr is not None
    reader = threading.Thread(
        target=lambda: served.log.extend(iter(process.stderr.readline, "")),  # type: ignore[union-attr]
        daemon=True,
    )
    reader.start()
    try:
        yield served
    finally:
        process.kill()
        process.wait(30)
        reader.join(30)
        process.stderr.close()


def answered_in_time(agent: Agent) -> tuple[float, float]:
    """An admin's /health and another caller's dry run, each on a new connection from the
    admin's own address: how long each took (each must be under a second)."""
    url = f"https://127.0.0.1:{agent.port}"
    took = []
    for cn, send in (
        ("admin-1", lambda http: http.get("/health")),
        ("reader-1", lambda http: http.post("/host/op", json=DRY_RUN)),
    ):
        started = time.monotonic()
        with httpx.Client(
            base_url=url, verify=client_context(agent.pki.ca, *agent.pki.client(cn)), timeout=5
        ) as http:
            assert send(http).status_code == 200
        took.append(time.monotonic() - started)
    return took[0], took[1]


@contextlib.contextmanager
def attack(agent: Agent, figures: Figures, name: str) -> Iterator[None]:
    """Measure the agent's CPU and log over the attack, and serve the admin during it."""
    cpu, log, started = agent.cpu_seconds(), agent.log_bytes(), time.monotonic()
    yield
    health, dry_run = answered_in_time(agent)
    wall = time.monotonic() - started
    spent, written = agent.cpu_seconds() - cpu, agent.log_bytes() - log
    figures.add(f"exhaustion: {name}", "admin /health ms", int(health * 1000))
    figures.add(f"exhaustion: {name}", "dry run ms", int(dry_run * 1000))
    figures.add(f"exhaustion: {name}", "agent CPU ms", int(spent * 1000))
    figures.add(f"exhaustion: {name}", "log bytes", written)
    assert health < 1.0 and dry_run < 1.0, (health, dry_run)
    assert spent < MAX_CPU_SHARE * wall, (spent, wall)
    assert written < MAX_LOG_BYTES, agent.log[-5:]


def parked_post(conn: ssl.SSLSocket) -> None:
    """A request head that promises a body which never comes."""
    conn.sendall(
        b"POST /host/op HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n"
    )


def status_of(conn: ssl.SSLSocket, within: float) -> int | None:
    """The status the agent answered on `conn`, or None if it closed without one."""
    conn.settimeout(within)
    try:
        head = conn.recv(4096)
    except (TimeoutError, OSError):
        return None
    return int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.1 ") else None


def hold(make: Callable[[], ssl.SSLSocket | socket.socket], count: int) -> list[socket.socket]:
    """Open `count` connections; those the agent refuses at once count as closed."""
    held: list[socket.socket] = []
    for _ in range(count):
        with contextlib.suppress(OSError):
            held.append(make())
    return held


def test_parked_bodies_are_timed_out_and_an_unknown_cn_never_gets_to_park(
    agent: Agent, figures: Figures
) -> None:
    with attack(agent, figures, "parked bodies"):
        known = hold(lambda: agent.tls("librarian-1"), PARKED)
        unknown = hold(lambda: agent.tls("stranger"), PARKED)
        for conn in (*known, *unknown):
            with contextlib.suppress(OSError):
                parked_post(conn)  # type: ignore[arg-type]
        time.sleep(0.5)
    # The unknown CN is refused on its head alone; the known one's parked bodies time out.
    assert {status_of(c, 2) for c in unknown} <= {403, None}  # type: ignore[arg-type]
    answered = [status_of(c, 5) for c in known]  # type: ignore[arg-type]
    assert answered.count(408) <= 16 and set(answered) <= {408, None}
    assert 408 in answered
    for conn in (*known, *unknown):
        conn.close()


def test_connections_that_never_handshake_are_capped_per_address(
    agent: Agent, figures: Figures
) -> None:
    with attack(agent, figures, "raw TCP, no handshake"):
        raw = hold(
            lambda: socket.create_connection(
                ("127.0.0.1", agent.port), timeout=5, source_address=(ATTACKER, 0)
            ),
            RAW,
        )
        time.sleep(0.5)
    # All but the per-address cap were closed at once; the rest at the handshake timeout.
    time.sleep(3.5)
    still_open = 0
    for conn in raw:
        conn.settimeout(0.1)
        try:
            still_open += conn.recv(1) != b""
        except TimeoutError:
            still_open += 1
        except OSError:
            pass
        conn.close()
    assert still_open == 0


def test_http2_streams_are_bounded_and_timed_out(agent: Agent, figures: Figures) -> None:
    with attack(agent, figures, "HTTP/2 parked streams"):
        conn = agent.tls("librarian-1", alpn="h2")
        assert conn.selected_alpn_protocol() == "h2"
        h2c = h2.connection.H2Connection()
        h2c.initiate_connection()
        conn.sendall(h2c.data_to_send())
        conn.settimeout(2)
        for event in h2c.receive_data(conn.recv(65536)):
            del event  # the server's SETTINGS
        conn.sendall(h2c.data_to_send())
        opened = 0
        with contextlib.suppress(h2.exceptions.TooManyStreamsError):
            for _ in range(100):
                stream = h2c.get_next_available_stream_id()
                head = [
                    (":method", "POST"),
                    (":path", "/host/op"),
                    (":scheme", "https"),
                    (":authority", "localhost"),
                    ("content-length", "100"),
                ]
                h2c.send_headers(stream, head)
                opened += 1
        conn.sendall(h2c.data_to_send())
        time.sleep(0.5)
    assert opened == 8  # the agent's SETTINGS_MAX_CONCURRENT_STREAMS
    # Each parked stream is answered 408 when its body's time is up.
    statuses: list[str] = []
    deadline = time.monotonic() + 6
    while len(statuses) < opened and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            for event in h2c.receive_data(conn.recv(65536)):
                headers = getattr(event, "headers", None)
                if headers:
                    statuses += [value.decode() for name, value in headers if name == b":status"]
        conn.sendall(h2c.data_to_send())
    conn.close()
    assert statuses == ["408"] * opened


def test_a_request_head_dripped_slowly_is_cut_off(agent: Agent, figures: Figures) -> None:
    head = b"POST /host/op HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 100
    with attack(agent, figures, "slow request head"):
        drips = hold(lambda: agent.tls("librarian-1"), 8)
        deadline = time.monotonic() + 4.5  # past the 3 s idle/head timeout
        sent = 0
        while time.monotonic() < deadline and sent < len(head):
            for conn in drips:
                with contextlib.suppress(OSError):
                    conn.sendall(head[sent : sent + 1])
            sent += 1
            time.sleep(0.25)
    closed = 0
    for conn in drips:
        conn.settimeout(1)
        try:
            closed += conn.recv(1) == b""
        except (TimeoutError, ssl.SSLError):
            pass
        except OSError:
            closed += 1
        conn.close()
    assert closed == len(drips)


@pytest.mark.parametrize(
    ("route", "cn", "status"),
    [
        pytest.param("/host/op", "stranger", 403, id="host-op-unknown-cn"),
        pytest.param("/zfs/snapshot", "stranger", 403, id="legacy-unknown-cn"),
        pytest.param("/approve", "reader-1", 403, id="approve-not-an-admin"),
    ],
)
def test_a_caller_that_may_not_send_is_refused_before_its_body(
    agent: Agent, route: str, cn: str, status: int
) -> None:
    """Answered on the head alone, well before the 2 s body timeout would answer 408."""
    conn = agent.tls(cn)
    conn.sendall(
        f"POST {route} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n".encode()
    )
    started = time.monotonic()
    answered = status_of(conn, 1.5)
    conn.close()
    assert answered == status
    assert time.monotonic() - started < 1.5


def test_a_caller_that_connects_afresh_for_each_request_never_runs_out_of_slots(
    agent: Agent,
) -> None:
    """A client that closes its connection after every answer (curl, a shell loop of
    `host-agent op`) makes three times its CN's cap of connections, one after the other,
    faster than the idle timeout: each is answered, none is refused for a slot that a
    connection already closed still held."""
    statuses = []
    for _ in range(3 * CN_CAP):
        with contextlib.closing(agent.tls("admin-1", source="127.0.0.1")) as conn:
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            statuses.append(status_of(conn, within=5))
    assert statuses == [200] * (3 * CN_CAP), statuses
