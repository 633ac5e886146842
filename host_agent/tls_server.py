"""Hypercorn, serving only mutual TLS, with the ASGI TLS extension in every scope.

No Hypercorn release fills `scope["extensions"]["tls"]` (hypercorn issue #62).
This module owns the listening socket instead of `hypercorn.asyncio.serve`:
`asyncio.start_server` completes the TLS handshake (client certificate
required), then each connection gets Hypercorn's own `TCPServer` with an app
wrapper that adds the *verified* peer certificate of that connection to every
request scope — HTTP/1.1 and HTTP/2 alike. It is the only module that touches
Hypercorn internals; the version range in pyproject.toml pins them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config as HypercornConfig

from host_agent.tls import cipher_suite_ids

log = logging.getLogger(__name__)

ASGIApp = Callable[..., Awaitable[None]]

_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}


def tls_extension(ssl_object: ssl.SSLObject, cipher_ids: dict[str, int]) -> dict[str, Any]:
    """The ASGI TLS extension dict for one established connection."""
    der = ssl_object.getpeercert(binary_form=True)
    cipher = ssl_object.cipher()
    return {
        "server_cert": None,
        # Python 3.11 exposes only the leaf, which is all identity needs.
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": None,
        "client_cert_error": None,
        "tls_version": _TLS_VERSIONS.get(ssl_object.version() or ""),
        "cipher_suite": cipher_ids.get(cipher[0]) if cipher else None,
    }


class _ConnectionApp:
    """Hypercorn app wrapper adding one connection's TLS extension to each scope."""

    def __init__(self, app: ASGIApp, tls: dict[str, Any]) -> None:
        self.app = app
        self.tls = tls

    async def __call__(
        self,
        scope: Any,
        receive: Any,
        send: Any,
        sync_spawn: Callable[..., Any],
        call_soon: Callable[..., Any],
    ) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "extensions": {**(scope.get("extensions") or {}), "tls": self.tls}}
        await self.app(scope, receive, send)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket; port 0 picks a free one (tests read it back)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def serve_tls(
    app: ASGIApp,
    sock: socket.socket,
    context: ssl.SSLContext,
    shutdown: asyncio.Event,
    *,
    ready: Callable[[], None] | None = None,
    graceful_timeout: float = 10.0,
) -> None:
    """Serve `app` over mutual TLS on `sock` until `shutdown` is set."""
    config = HypercornConfig()
    config.accesslog = None
    config.errorlog = log
    config.keep_alive_timeout = 30
    config.h11_max_incomplete_size = 16 * 1024
    config.graceful_timeout = graceful_timeout
    loop = asyncio.get_running_loop()
    worker = WorkerContext(None)
    connections: set[asyncio.Task[None]] = set()
    cipher_ids = cipher_suite_ids(context)

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            connections.add(task)
            task.add_done_callback(connections.discard)
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is None or not ssl_object.getpeercert(binary_form=True):
            # Unreachable with CERT_REQUIRED; refuse rather than serve without identity.
            writer.close()
            return
        wrapped = _ConnectionApp(app, tls_extension(ssl_object, cipher_ids))
        await TCPServer(wrapped, loop, config, worker, {}, reader, writer)

    server = await asyncio.start_server(
        on_connection, sock=sock, ssl=context, ssl_handshake_timeout=10.0, backlog=1024
    )
    if ready is not None:
        ready()
    try:
        await shutdown.wait()
    finally:
        await worker.terminated.set()
        server.close()
        await server.wait_closed()
        if connections:
            _done, pending = await asyncio.wait(connections, timeout=graceful_timeout)
            for task in pending:
                task.cancel()
