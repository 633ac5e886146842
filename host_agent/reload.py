"""SIGHUP: re-read the config, TLS material and CRL, and reopen the audit log.

A config or TLS material that does not load changes nothing: the agent
keeps serving with what it has, logs why and counts the failure. Settings
only a restart can apply (listening addresses, the audit file, the
approval store, the service account, the approval socket, Signal polling)
are refused the same way, naming the key. Connections already open keep
their TLS session, but each of their requests is held to the new CRL; new
handshakes use the new context.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from host_agent.adapters import build_registry
from host_agent.config import Config, load_config
from host_agent.errors import HostAgentError
from host_agent.identity import CertificateCheck
from host_agent.notify import notify, reloading
from host_agent.pipeline import Pipeline
from host_agent.tls import ContextHolder, server_tls

log = logging.getLogger(__name__)

# Settings a running agent cannot change: a reload that changes one is refused.
RESTART_ONLY: dict[str, Callable[[Config], Any]] = {
    "server.bind": lambda c: c.server.bind,
    "server timeouts and connection limits": lambda c: c.server.limits,
    "metrics.enabled/bind": lambda c: (c.metrics.enabled, c.metrics.bind),
    "audit.log_path": lambda c: c.audit.log_path,
    "runner.service_user": lambda c: c.runner.service_user,
    "approval.enabled": lambda c: c.approval.enabled,
    "approval.store_path/store_url/store_password_file": lambda c: (
        c.approval.store_path,
        c.approval.store_url,
        c.approval.store_password_file,
    ),
    # Pending approvals' tokens were hashed with it: a new key would orphan every one.
    "approval.token_secret": lambda c: (
        None if c.approval.token_secret is None else c.approval.token_secret.reveal()
    ),
    "approval.local_socket/approvers_group": lambda c: (
        c.approval.local_socket,
        c.approval.approvers_group,
    ),
    "approval.poll_interval_seconds/signal_url/signal_number": lambda c: (
        c.approval.poll_interval_seconds,
        c.approval.signal_url,
        c.approval.signal_number,
    ),
}


class RestartRequired(HostAgentError):
    code = "restart_required"


class Reloader:
    """Applies a new config to the running agent, all of it or none of it."""

    def __init__(
        self,
        config: Config,
        tls: ContextHolder,
        pipeline: Pipeline,
        *,
        on_reload: Callable[[Config], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self.tls = tls
        self.pipeline = pipeline
        self.on_reload = on_reload
        self._lock = asyncio.Lock()
        self._running: set[asyncio.Task[bool]] = set()

    def reload_in_background(self) -> None:
        """The SIGHUP handler: reloads queue up behind each other, none is dropped."""
        task = asyncio.create_task(self.reload())
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def reload(self) -> bool:
        async with self._lock:
            reloading()
            self._reopen_audit()
            try:
                config = await asyncio.to_thread(load_config, self.config.source)
                _refuse_restart_only(self.config, config)
                tls = server_tls(config.server)
                registry = build_registry(config)
            except HostAgentError as exc:
                why = " ".join(line.strip() for line in str(exc).splitlines())
                log.error("reload failed; still serving the previous config: %s", why)
                self.pipeline.metrics.config_reloads.labels(result="failure").inc()
                notify("READY=1", "STATUS=reload failed; serving the previous config")
                return False
            self.tls.current = tls.context
            # Connections opened before this reload are held to the new CRL from their
            # next request on (their TLS session was verified against the old one).
            self.pipeline.certificates = CertificateCheck(tls.revoked)
            self.pipeline.reconfigure(config, registry)
            self.config = config
            if self.on_reload is not None:
                await self.on_reload(config)
            for warning in config.warnings:
                log.warning("config: %s", warning)
            self.pipeline.metrics.config_reloads.labels(result="success").inc()
            log.info("reloaded %s", config.source)
            notify("READY=1", f"STATUS=reloaded; listening on {config.server.bind}")
            return True

    def _reopen_audit(self) -> None:
        """Always, whatever becomes of the config: logrotate's postrotate relies on it."""
        try:
            self.pipeline.audit.reopen()
        except HostAgentError as exc:
            # The next write retries the open, and fails closed if it still cannot.
            log.error("cannot reopen the audit log: %s", exc)


def _refuse_restart_only(running: Config, new: Config) -> None:
    changed = [key for key, value in RESTART_ONLY.items() if value(running) != value(new)]
    if changed:
        raise RestartRequired(f"changing {', '.join(changed)} needs a restart")
