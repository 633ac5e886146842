"""Start-up: config → components → mutual-TLS listener, and a clean stop on signals."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Callable
from pathlib import Path

from host_agent.adapters import build_registry
from host_agent.app import build_app
from host_agent.approvals.manager import ApprovalManager
from host_agent.approvals.store import SqliteStore
from host_agent.audit import AuditLog
from host_agent.config import Config, load_config
from host_agent.errors import HostAgentError
from host_agent.pipeline import Pipeline
from host_agent.runner import Runner
from host_agent.tls import server_context
from host_agent.tls_server import bind_socket, serve_tls

log = logging.getLogger(__name__)


class ListenError(HostAgentError):
    """The configured address cannot be bound (in use, not local, no permission)."""

    code = "listen_failed"


def build_pipeline(config: Config) -> Pipeline:
    """Every component the request path needs, built from one config (fails fast)."""
    audit = AuditLog(config.audit.log_path)
    audit.open()
    approvals = None
    if config.approval.enabled:
        approvals = ApprovalManager(config.approval, SqliteStore(config.approval.store_path), audit)
    return Pipeline(config, build_registry(config), audit, Runner(config.runner), approvals)


async def _sweep_approvals(manager: ApprovalManager, every: float) -> None:
    """Expire approvals on time (audited) even when nobody asks about them."""
    while True:
        await asyncio.sleep(every)
        try:
            await manager.sweep()
        except HostAgentError as exc:
            log.error("approval sweep failed: %s", exc)


async def run_server(
    config: Config,
    *,
    sock: socket.socket | None = None,
    shutdown: asyncio.Event | None = None,
    ready: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or `shutdown` is set, for tests)."""
    context = server_context(config.server)
    pipeline = build_pipeline(config)
    try:
        listener = sock or bind_socket(config.server.host, config.server.port)
    except OSError as exc:
        raise ListenError(f"cannot listen on {config.server.bind}: {exc.strerror}") from exc
    stop = shutdown or asyncio.Event()
    loop = asyncio.get_running_loop()
    if shutdown is None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    host, port = listener.getsockname()[:2]
    for warning in config.warnings:
        log.warning("config: %s", warning)
    log.info("host-agent listening on https://%s:%d (mutual TLS)", host, port)
    sweeper = None
    if pipeline.approvals is not None:
        every = min(30.0, config.approval.ttl_seconds / 4)
        sweeper = asyncio.create_task(_sweep_approvals(pipeline.approvals, every))
    try:
        await serve_tls(build_app(pipeline), listener, context, stop, ready=ready)
    finally:
        if sweeper is not None:
            sweeper.cancel()
        if pipeline.approvals is not None:
            await pipeline.approvals.drain()
            pipeline.approvals.store.close()
        pipeline.audit.close()
        log.info("host-agent stopped")


def serve(config_path: Path) -> None:
    asyncio.run(run_server(load_config(config_path)))
