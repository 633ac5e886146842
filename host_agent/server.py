"""Start-up: config → components → mutual-TLS listener, and a clean stop on signals."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server

from host_agent import pid_file as pid_files
from host_agent.adapters import build_registry
from host_agent.app import build_app
from host_agent.approvals.identity_plugin import IdentityPlugin
from host_agent.approvals.local import LocalApprovals
from host_agent.approvals.manager import ApprovalManager
from host_agent.approvals.model import Status
from host_agent.approvals.signal import notifier, poll
from host_agent.approvals.store import ApprovalStore, open_store, read_password
from host_agent.audit import AuditLog
from host_agent.audit.checkpoints import Checkpoints, digest
from host_agent.audit.seal import SealError, SealKey
from host_agent.audit.syslog_witness import SyslogWitness
from host_agent.audit.witness import Shipper, Witness
from host_agent.config import Config, load_config
from host_agent.errors import AuditUnavailable, ConfigError, HostAgentError
from host_agent.health import HostHealth
from host_agent.metrics import Metrics
from host_agent.notify import notify
from host_agent.pipeline import Pipeline
from host_agent.refusal_audit import RefusalAudit
from host_agent.reload import Reloader
from host_agent.runner import Runner
from host_agent.tls import ContextHolder, server_context
from host_agent.tls_server import bind_socket, serve_tls

if TYPE_CHECKING:  # psycopg is a fleet host's dependency: imported when store_url is set
    from host_agent.approvals.inbox import SignalInbox

log = logging.getLogger(__name__)
# How long a stopping agent tries to ship its last checkpoint.
SHUTDOWN_SHIP_SECONDS = 5.0


class ListenError(HostAgentError):
    """The configured address cannot be bound (in use, not local, no permission)."""

    code = "listen_failed"


def build_pipeline(config: Config, metrics: Metrics | None = None) -> Pipeline:
    """Every component the request path needs, built from one config (fails fast)."""
    metrics = metrics or Metrics()
    checkpoints = _checkpoints(config, metrics)
    audit = AuditLog(
        config.audit.log_path,
        on_failure=metrics.audit_write_failures.inc,
        seal=_seal_key(config),
        checkpoints=None if checkpoints is None else (checkpoints.key, checkpoints.taken),
    )
    audit.open()
    refusals = RefusalAudit(audit, config.rate_limit, metrics)
    runner = Runner(config.runner)
    approvals = None
    if config.approval.enabled:
        store, clock = open_store(config.approval)
        store.availability.on_failure = metrics.approval_store_failures.inc
        approvals = ApprovalManager(
            config.approval,
            store,
            audit,
            clock=clock,
            notify=notifier(config.approval),
            metrics=metrics,
            refusals=refusals,
            identity_plugin=IdentityPlugin(runner),
        )
        metrics.count_open_approvals(functools.partial(_count, store))
    registry = build_registry(config)
    return Pipeline(config, registry, audit, runner, approvals, metrics, refusals, checkpoints)


def _seal_key(config: Config) -> SealKey | None:
    """The audit seal key when sealing is configured; refusing to start without it."""
    path = config.audit.seal_key_file
    if path is None:
        return None
    try:
        return SealKey.load(path)
    except SealError as exc:
        raise ConfigError(str(path), [f"audit.seal_key_file: {exc}"]) from exc


def _checkpoints(config: Config, metrics: Metrics) -> Checkpoints | None:
    """[audit.checkpoints]: the key, the outbox and the witnesses; None when not kept."""
    wanted = config.audit.checkpoints
    if wanted is None:
        return None
    witnesses: list[Witness] = []
    if wanted.postgres_url is not None:
        from host_agent.audit.pg_witness import PostgresWitness

        password = read_password(wanted.postgres_password_file)
        witnesses.append(PostgresWitness(wanted.postgres_url, password))
    if wanted.syslog is not None and wanted.syslog_ca is not None:
        witnesses.append(
            SyslogWitness(wanted.syslog, wanted.syslog_ca, wanted.syslog_cert, wanted.syslog_key)
        )
    checkpoints = Checkpoints(wanted, witnesses)
    metrics.watch_checkpoints(checkpoints.behind, [witness.name for witness in witnesses])
    return checkpoints


async def _signal_digest(pipeline: Pipeline, every: float) -> None:
    """Send the latest checkpoint to the approvers over Signal every `every` seconds: a
    witness on their phones. A failure is logged and counted; the next one is sent on
    time anyway."""
    while True:
        await asyncio.sleep(every)
        checkpoints, approval = pipeline.checkpoints, pipeline.config.approval
        notify = notifier(approval)
        latest = None if checkpoints is None else checkpoints.outbox
        if latest is None or latest.note is None or latest.checkpoint is None or notify is None:
            continue
        text = digest(latest.note, latest.checkpoint, socket.gethostname())
        try:
            await notify(text, approval.allowed_approvers)
        except Exception as exc:  # the digest is a courtesy copy: the agent goes on
            log.error("the approvers' checkpoint digest was not sent: %s", exc)
            pipeline.metrics.checkpoint_ship_failures.labels(witness="signal").inc()


async def _take_checkpoints(audit: AuditLog, every: float) -> None:
    """A signed checkpoint of the log's head every `every` seconds."""
    while True:
        await asyncio.sleep(every)
        try:
            await asyncio.to_thread(audit.checkpoint)
        except AuditUnavailable as exc:
            log.error("audit checkpoint: %s", exc)


async def _seal_audit(audit: AuditLog, every: float) -> None:
    """Seal each epoch when it ends, traffic or not: its key must not outlive it."""
    while True:
        await asyncio.sleep(every)
        try:
            await asyncio.to_thread(audit.seal_due)
        except AuditUnavailable as exc:
            log.error("audit seal: %s", exc)


async def _last_checkpoint(audit: AuditLog, shipper: Shipper) -> None:
    """At shutdown: a checkpoint of the final head, and one try to ship it (what is
    not shipped stays in the outbox for the next start)."""
    try:
        await asyncio.to_thread(audit.checkpoint)
        async with asyncio.timeout(SHUTDOWN_SHIP_SECONDS):
            await shipper.ship_due()
    except (AuditUnavailable, TimeoutError) as exc:
        log.error("the last audit checkpoint was not shipped: %s", exc or "timed out")


async def _flush(refusals: RefusalAudit) -> None:
    """The suppressed-refusal counts, if the log can still take them."""
    try:
        await refusals.flush()
    except HostAgentError as exc:
        log.error("could not audit the counts of suppressed refusals: %s", exc)


def _count(store: ApprovalStore, status: Status) -> float:
    """For the scrape: a store that cannot answer must not break the whole exposition."""
    try:
        return store.count(status)
    except HostAgentError:
        return math.nan


async def _poll_signal(manager: ApprovalManager, url: str, number: str, every: float) -> None:
    """For bridges in normal mode: fetch replies instead of receiving a webhook."""
    while True:
        await asyncio.sleep(every)
        try:
            for reply in await poll(url, number):
                await manager.handle_reply(reply)
        except HostAgentError as exc:
            log.error("polling Signal failed: %s", exc)


def _fleet_inbox(manager: ApprovalManager) -> SignalInbox:
    from host_agent.approvals.inbox import SignalInbox  # psycopg: fleet hosts only
    from host_agent.approvals.pg_store import PostgresStore

    assert isinstance(manager.store, PostgresStore)  # store_url is set
    assert manager.config.signal_number is not None
    return SignalInbox(manager.store, manager.config.signal_number, manager.host)


async def _poll_fleet_signal(
    manager: ApprovalManager, inbox: SignalInbox, url: str, number: str, every: float
) -> None:
    """A fleet's agents share one Signal number: only the one holding the inbox's lock
    calls receive, keeping each reply before anything acts on it; every agent applies
    what is kept (approvals/inbox.py)."""
    try:
        while True:
            await asyncio.sleep(every)
            try:
                if await asyncio.to_thread(inbox.lead):
                    received = await poll(url, number)
                    kept = [p for r in received if (p := manager.parse_reply(r)) is not None]
                    await asyncio.to_thread(inbox.keep, kept)
                for reply in await asyncio.to_thread(inbox.claim):
                    result = await manager.apply_reply(reply, deduplicated=True)
                    await asyncio.to_thread(inbox.applied, reply, result["outcome"])
            except HostAgentError as exc:
                log.error("the fleet's Signal inbox: %s", exc)
    finally:
        inbox.resign()  # another agent reads from now on


async def _warn_periodically(health: HostHealth, every: float = 3600.0) -> None:
    """A CRL that is fine at start-up can expire while the agent runs."""
    while True:
        await asyncio.sleep(every)
        health.warn()


def _counter(metrics: Metrics) -> Callable[[str], None]:
    def count(reason: str) -> None:
        metrics.tls_handshake_failures.labels(reason=reason).inc()

    return count


async def _sweep_approvals(manager: ApprovalManager, every: float) -> None:
    """Expire approvals on time (audited) even when nobody asks about them."""
    while True:
        await asyncio.sleep(every)
        try:
            await manager.sweep()
        except HostAgentError as exc:
            log.error("approval sweep failed: %s", exc)


def _serve_metrics(config: Config, metrics: Metrics) -> WSGIServer:
    """[metrics] enabled: the same registry over plain HTTP, for a loopback scraper."""
    try:
        exporter, _thread = start_http_server(
            config.metrics.port, addr=config.metrics.host, registry=metrics.registry
        )
    except OSError as exc:
        raise ListenError(f"cannot listen on {config.metrics.bind}: {exc.strerror}") from exc
    log.info("metrics on http://%s/metrics", config.metrics.bind)
    return exporter


async def run_server(
    config: Config,
    *,
    sock: socket.socket | None = None,
    shutdown: asyncio.Event | None = None,
    ready: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or `shutdown` is set, for tests); SIGHUP reloads."""
    tls = ContextHolder(server_context(config.server))
    pipeline = build_pipeline(config)
    health = HostHealth(pipeline.metrics)
    await health.refresh(config, pipeline.runner)

    async def refresh_health(config: Config) -> None:
        await health.refresh(config, pipeline.runner)

    reloader = Reloader(config, tls, pipeline, on_reload=refresh_health)
    try:
        listener = sock or bind_socket(config.server.host, config.server.port)
    except OSError as exc:
        raise ListenError(f"cannot listen on {config.server.bind}: {exc.strerror}") from exc
    stop = shutdown or asyncio.Event()
    loop = asyncio.get_running_loop()
    if shutdown is None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, reloader.reload_in_background)
    host, port = listener.getsockname()[:2]
    for warning in config.warnings:
        log.warning("config: %s", warning)
    log.info("host-agent listening on https://%s:%d (mutual TLS)", host, port)

    def announce() -> None:
        notify("READY=1", f"STATUS=listening on {config.server.bind}")
        if ready is not None:
            ready()

    background = [asyncio.create_task(_warn_periodically(health))]
    if config.audit.seal_key_file is not None:
        every = min(5.0, config.audit.seal_epoch_seconds / 4)
        background.append(asyncio.create_task(_seal_audit(pipeline.audit, every)))
    shipper = None
    if pipeline.checkpoints is not None:
        checkpoints = pipeline.checkpoints
        shipper = Shipper(
            checkpoints.outbox,
            checkpoints.witnesses,
            on_failure=lambda name: pipeline.metrics.checkpoint_ship_failures.labels(
                witness=name
            ).inc(),
        )
        checkpoints.wake = functools.partial(loop.call_soon_threadsafe, shipper.wake)
        every = float(checkpoints.config.every_seconds)
        background.append(asyncio.create_task(_take_checkpoints(pipeline.audit, every)))
        background.append(asyncio.create_task(shipper.run()))
        if checkpoints.config.signal_digest_seconds:
            every = float(checkpoints.config.signal_digest_seconds)
            background.append(asyncio.create_task(_signal_digest(pipeline, every)))
    local: LocalApprovals | None = None
    if pipeline.approvals is not None:
        every = min(30.0, config.approval.ttl_seconds / 4)
        background.append(asyncio.create_task(_sweep_approvals(pipeline.approvals, every)))
        manager = pipeline.approvals

        def changed(approval_id: str) -> None:
            """From the store's own thread: a fleet's database telling of another host."""
            loop.call_soon_threadsafe(manager.changed, approval_id)

        manager.store.listen(changed)
        approval = config.approval
        if approval.poll_interval_seconds and approval.signal_url and approval.signal_number:
            bridge = (approval.signal_url, approval.signal_number, approval.poll_interval_seconds)
            if approval.store_url is None:
                poller = _poll_signal(manager, *bridge)
            else:
                poller = _poll_fleet_signal(manager, _fleet_inbox(manager), *bridge)
            background.append(asyncio.create_task(poller))
    exporter = None
    try:
        if config.metrics.enabled:
            exporter = _serve_metrics(config, pipeline.metrics)
        local_socket, group = config.approval.local_socket, config.approval.approvers_group
        if pipeline.approvals is not None and local_socket is not None and group is not None:
            local = LocalApprovals(pipeline.approvals, group)
            await local.serve(local_socket)
            log.info("local approvals (host-agent approve) on %s", local_socket)
        await serve_tls(
            build_app(pipeline, health),
            listener,
            tls,
            stop,
            limits=config.server.limits,
            ready=announce,
            on_handshake_failure=_counter(pipeline.metrics),
            on_refused=lambda reason: pipeline.metrics.connections_refused.labels(
                reason=reason
            ).inc(),
        )
    finally:
        notify("STOPPING=1")
        for task in background:
            task.cancel()
        if exporter is not None:
            exporter.shutdown()
            exporter.server_close()
        if local is not None and local_socket is not None:
            await local.stop(local_socket)
        if pipeline.approvals is not None:
            await pipeline.approvals.drain()
            pipeline.approvals.store.close()
        await _flush(pipeline.refusals)
        if shipper is not None:
            await _last_checkpoint(pipeline.audit, shipper)
        pipeline.audit.close()
        log.info("host-agent stopped")


def serve(config_path: Path, pid_file: Path | None = None) -> None:
    """Run the agent; `pid_file` (for logrotate and init scripts without systemd) while it runs."""
    if pid_file is None:
        asyncio.run(run_server(load_config(config_path)))
        return
    pid_files.write(pid_file)
    try:
        asyncio.run(run_server(load_config(config_path)))
    finally:
        pid_files.remove_if_ours(pid_file)
