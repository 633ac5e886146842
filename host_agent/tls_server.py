"""Hypercorn, serving only mutual TLS, with the ASGI TLS extension in every scope.

No Hypercorn release fills `scope["extensions"]["tls"]` (hypercorn issue #62).
This module owns the listening socket instead of `hypercorn.asyncio.serve`:
each accepted connection is upgraded with `StreamWriter.start_tls` using the
context current at that moment (so a reload changes certificates, CA and
CRL for new handshakes only, and failed handshakes can be counted), then gets
Hypercorn's own `TCPServer` with an app wrapper that adds the *verified* peer
certificate of that connection to every request scope — HTTP/1.1 and HTTP/2
alike. It is the only module that touches Hypercorn internals; the version
range in pyproject.toml pins them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import logging
import resource
import socket
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config as HypercornConfig

from host_agent.config import ConnectionLimits
from host_agent.tls import cipher_suite_ids

log = logging.getLogger(__name__)

ASGIApp = Callable[..., Awaitable[None]]

_TLS_VERSIONS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
# accept() failing for want of descriptors or memory: wait this long before the next
# try, and say so in the log once per interval, not once per attempt.
_ACCEPT_BACKOFF_SECONDS = (0.05, 1.0)
_ACCEPT_FAILURE_LOG_INTERVAL_SECONDS = 10.0
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


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
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        scope = {**scope, "extensions": {**(scope.get("extensions") or {}), "tls": self.tls}}
        drain: asyncio.Task[None] | None = None

        async def finishing(message: Any) -> None:
            nonlocal drain
            last = message["type"] == "http.response.body" and not message.get("more_body")
            if last and drain is None:
                # Hypercorn hands the app http.disconnect from inside this send; a body the
                # app refused unread may have filled the app's queue: read it away.
                drain = asyncio.create_task(_discard(receive))
            try:
                await send(message)
            except OSError as exc:
                if not last:
                    raise
                # The answer is out; closing the connection failed (e.g. data after
                # close_notify). Not the app's concern.
                log.debug("closing a connection failed: %s", exc)

        try:
            await self.app(scope, receive, finishing)
        finally:
            if drain is not None:
                drain.cancel()


async def _discard(receive: Callable[[], Awaitable[Any]]) -> None:
    """Read request events until the connection's end, throwing their bodies away."""
    while (await receive())["type"] != "http.disconnect":
        pass


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket; port 0 picks a free one (tests read it back)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP
    # (accepted ones inherit it). Without it, Nagle holds a response's body back until
    # the client's delayed ACK: 40 ms on every request whose head and body part.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def effective_limits(limits: ConnectionLimits) -> ConnectionLimits:
    """`limits` with max_connections at most half the process's descriptor limit: the
    rest is for the audit log, the store, the runner's pipes and an accept() that must
    never meet EMFILE."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or limits.max_connections <= soft // 2:
        return limits
    cap = max(soft // 2, 1)
    log.warning(
        "[server] max_connections %d lowered to %d: half the descriptor limit %d "
        "(raise LimitNOFILE to allow more)",
        limits.max_connections,
        cap,
        soft,
    )
    return dataclasses.replace(
        limits, max_connections=cap, max_handshakes=min(limits.max_handshakes, cap)
    )


class _Admission:
    """How many connections are held, overall, in handshake per source address, and per
    CN once verified; a peer past its share is closed at once, before it costs more."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.connections = 0
        self.handshakes: Counter[str] = Counter()
        self.by_cn: Counter[str] = Counter()

    def admit(self, address: str) -> bool:
        limits = self.limits
        if (
            self.connections >= limits.max_connections
            or sum(self.handshakes.values()) >= limits.max_handshakes
            or self.handshakes[address] >= limits.max_handshakes_per_address
        ):
            return False
        self.connections += 1
        self.handshakes[address] += 1
        return True

    def handshake_done(self, address: str) -> None:
        self.handshakes[address] -= 1
        if self.handshakes[address] <= 0:
            del self.handshakes[address]

    def admit_cn(self, cn: str) -> bool:
        if self.by_cn[cn] >= self.limits.max_connections_per_cn:
            return False
        self.by_cn[cn] += 1
        return True

    def cn_done(self, cn: str) -> None:
        self.by_cn[cn] -= 1
        if self.by_cn[cn] <= 0:
            del self.by_cn[cn]

    def closed(self) -> None:
        self.connections -= 1


async def serve_tls(
    app: ASGIApp,
    sock: socket.socket,
    context: Callable[[], ssl.SSLContext],
    shutdown: asyncio.Event,
    *,
    limits: ConnectionLimits | None = None,
    ready: Callable[[], None] | None = None,
    on_handshake_failure: Callable[[str], None] | None = None,
    on_refused: Callable[[str], None] | None = None,
    graceful_timeout: float = 10.0,
) -> None:
    """Serve `app` over mutual TLS on `sock` until `shutdown` is set.

    `context()` is asked for the TLS context at every handshake; `on_refused(reason)` is
    told of every connection closed for being over a limit.
    """
    limits = effective_limits(limits or ConnectionLimits())
    config = HypercornConfig()
    config.accesslog = None
    config.errorlog = log
    # Idle keep-alive, and the time a request's head may take: Hypercorn counts a
    # connection idle until a whole head has arrived.
    config.keep_alive_timeout = limits.idle_timeout_seconds
    config.h11_max_incomplete_size = 16 * 1024
    config.h2_max_concurrent_streams = limits.h2_max_concurrent_streams
    config.graceful_timeout = graceful_timeout
    loop = asyncio.get_running_loop()
    worker = WorkerContext(None)
    connections: set[asyncio.Task[None]] = set()
    cipher_ids = _CipherIds()
    admission = _Admission(limits)

    def refused(reason: str) -> None:
        if on_refused is not None:
            on_refused(reason)

    async def on_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            connections.add(task)
            task.add_done_callback(connections.discard)
        try:
            await _serve_connection(reader, writer, address)
        finally:
            admission.closed()

    async def _serve_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str
    ) -> None:
        current = context()
        try:
            # The first await of the connection: start_tls pauses reading before the
            # loop can buffer any of the ClientHello outside the TLS layer.
            await writer.start_tls(current, ssl_handshake_timeout=limits.handshake_timeout_seconds)
        except (OSError, TimeoutError) as exc:
            reason = handshake_failure_reason(exc)
            log.debug("TLS handshake failed (%s): %s", reason, exc)
            if on_handshake_failure is not None:
                on_handshake_failure(reason)
            writer.close()
            return
        finally:
            admission.handshake_done(address)
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is None or not ssl_object.getpeercert(binary_form=True):
            # Unreachable with CERT_REQUIRED; refuse rather than serve without identity.
            writer.close()
            return
        cn = _peer_cn(ssl_object)
        if not admission.admit_cn(cn):
            refused("per_cn")
            writer.close()
            return
        try:
            wrapped = _ConnectionApp(app, tls_extension(ssl_object, cipher_ids.of(current)))
            await _TCPServer(wrapped, loop, config, worker, {}, reader, writer)
        except OSError as exc:
            # A peer's alert or data after close_notify while Hypercorn closes the
            # connection (e.g. a refused renegotiation): nothing left to serve.
            log.debug("connection ended with an error: %s", exc)
        finally:
            admission.cn_done(cn)

    def protocol_for(address: str) -> asyncio.StreamReaderProtocol:
        def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Any:
            return on_connection(reader, writer, address)

        return asyncio.StreamReaderProtocol(asyncio.StreamReader(), connected)

    async def accept_forever() -> None:
        backoff = _AcceptBackoff()
        while True:
            try:
                conn, peer = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                await asyncio.sleep(backoff.failed(exc))
                continue
            backoff.succeeded()
            address = str(peer[0])
            if not admission.admit(address):
                refused("per_address" if admission.handshakes[address] else "capacity")
                conn.close()
                continue
            conn.setblocking(False)
            try:
                await loop.connect_accepted_socket(
                    functools.partial(protocol_for, address), sock=conn
                )
            except OSError as exc:
                admission.handshake_done(address)
                admission.closed()
                conn.close()
                log.debug("an accepted connection could not be set up: %s", exc)

    accepting = asyncio.create_task(accept_forever())
    if ready is not None:
        ready()
    try:
        await shutdown.wait()
    finally:
        await worker.terminated.set()
        accepting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await accepting
        sock.close()
        if connections:
            _done, pending = await asyncio.wait(connections, timeout=graceful_timeout)
            for task in pending:
                task.cancel()


class _TCPServer(TCPServer):
    """Hypercorn's connection, let go as soon as the peer has gone.

    Hypercorn's H11 protocol ignores the end of an idle kept-alive connection, so the
    connection's task group waits out the keep-alive timer before it ends: a connection
    the client closed went on holding its slot (per CN and overall) for up to
    idle_timeout_seconds, and a caller connecting afresh per request ran out of them.
    Once the reader is at its end nothing more can arrive; the timer goes, and what
    is still running (a response being written) finishes as before."""

    async def _read_data(self) -> None:
        await super()._read_data()
        await self.idle_task.stop()


class _AcceptBackoff:
    """After accept() runs out of descriptors or memory: wait, longer each time up to a
    second, and log one line per interval with how many tries failed in it."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.failures = 0
        self.logged_at = -_ACCEPT_FAILURE_LOG_INTERVAL_SECONDS

    def failed(self, exc: OSError) -> float:
        self.failures += 1
        now = time.monotonic()
        if now - self.logged_at >= _ACCEPT_FAILURE_LOG_INTERVAL_SECONDS:
            log.error("accept() failed %d time(s): %s; backing off", self.failures, exc.strerror)
            self.logged_at, self.failures = now, 0
        low, high = _ACCEPT_BACKOFF_SECONDS
        self.delay = min(high, max(low, self.delay * 2))
        return self.delay

    def succeeded(self) -> None:
        self.delay = 0.0


def _peer_cn(ssl_object: ssl.SSLObject) -> str:
    """The verified peer certificate's CN (what identity uses), for the per-CN cap."""
    peer = ssl_object.getpeercert() or {}
    for rdn in peer.get("subject", ()):
        for attribute in rdn:
            if attribute[0] == "commonName":
                return str(attribute[1])
    return ""


class _CipherIds:
    """cipher_suite_ids of the context in use, recomputed only when it changes."""

    def __init__(self) -> None:
        self._context: ssl.SSLContext | None = None
        self._ids: dict[str, int] = {}

    def of(self, context: ssl.SSLContext) -> dict[str, int]:
        if context is not self._context:
            self._context, self._ids = context, cipher_suite_ids(context)
        return self._ids


# OpenSSL X509 verify codes worth telling apart on a dashboard.
_VERIFY_REASONS = {
    9: "certificate_not_yet_valid",
    10: "certificate_expired",
    23: "certificate_revoked",
    3: "crl_unavailable",
    11: "crl_not_yet_valid",
    12: "crl_expired",
    2: "unknown_ca",
    18: "unknown_ca",
    19: "unknown_ca",
    20: "unknown_ca",
    21: "unknown_ca",
}
_SSL_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no_client_certificate",
    "UNSUPPORTED_PROTOCOL": "protocol_version",
    "WRONG_VERSION_NUMBER": "protocol_version",
    "VERSION_TOO_LOW": "protocol_version",
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol_version",
    "NO_SHARED_CIPHER": "no_shared_cipher",
    "HTTP_REQUEST": "plain_http",
}


def handshake_failure_reason(exc: BaseException) -> str:
    """A bounded label for why a handshake failed."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _VERIFY_REASONS.get(exc.verify_code, "certificate_invalid")
    if isinstance(exc, ssl.SSLError):
        return _SSL_REASONS.get(str(exc.reason), "tls_error")
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "connection_lost"
