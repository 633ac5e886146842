"""HTTP/1.1 over mutual TLS with no client library: the leanest load generator.

The agent's own client (httpx) is what the keep-alive latency figures use;
throughput figures use this instead, so that the load generator, sharing the
same two cores, takes as little CPU from the agent as possible.
"""

from __future__ import annotations

import json
import select
import socket
import ssl
from dataclasses import dataclass
from typing import Any

_HEAD_END = b"\r\n\r\n"


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def post(path: str, document: dict[str, Any], *, keep_alive: bool = True) -> bytes:
    """A complete request, ready to send as many times as wanted."""
    body = json.dumps(document).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: {'keep-alive' if keep_alive else 'close'}"
        "\r\n\r\n"
    )
    return head.encode() + body


class Connection:
    """A kept-alive TLS connection to the agent, for one request after the other.

    When the agent ends the connection after a reply (`Connection: close`, as Hypercorn
    does after `keep_alive_max_requests`), or while it sat idle (past the agent's
    `idle_timeout_seconds`, while other variants ran), the next request opens a new one,
    as HTTP clients do.
    """

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self._port = port
        self._context = context
        self._sock: ssl.SSLSocket | None = None
        self._buffer = b""
        self._connect()

    def _connect(self) -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", self._port), timeout=60)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = self._context.wrap_socket(raw, server_hostname="localhost")
        self._buffer = b""
        return self._sock

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def exchange(self, request: bytes) -> Reply:
        if self._sock is not None and _readable(self._sock):
            self.close()  # an idle connection has nothing to read unless it was closed
        sock = self._sock or self._connect()
        sock.sendall(request)
        while _HEAD_END not in self._buffer:
            self._receive(sock)
        head, _, self._buffer = self._buffer.partition(_HEAD_END)
        status, length, closing = _parse_head(head)
        while len(self._buffer) < length:
            self._receive(sock)
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        if closing:
            self.close()
        return Reply(status, body)

    def _receive(self, sock: ssl.SSLSocket) -> None:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the agent closed the connection mid-reply")
        self._buffer += chunk


def _readable(sock: ssl.SSLSocket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


def once(port: int, context: ssl.SSLContext, request: bytes) -> Reply:
    """A fresh connection (full TCP and TLS handshake) for a single request."""
    with Connection(port, context) as connection:
        return connection.exchange(request)


def _parse_head(head: bytes) -> tuple[int, int, bool]:
    """Status, content length, and whether the agent closes the connection after it."""
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip().lower()
    if "content-length" not in headers:
        raise ConnectionError(f"reply without content-length: {lines[0]}")
    closing = headers.get("connection") == "close"
    return int(lines[0].split()[1]), int(headers["content-length"]), closing
