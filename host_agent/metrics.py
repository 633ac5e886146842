"""Every Prometheus family host-agent exports, in one registry that is passed in.

Labels are bounded by construction: operation names, adapter kinds, error
codes and event names come from fixed sets in the code, never from a
resource, a CN or anything else a caller chooses.
"""

from __future__ import annotations

import functools
import platform
import time
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from host_agent import __version__
from host_agent.approvals.model import Status
from host_agent.operations import OPERATION_NAMES

CONTENT_TYPE = CONTENT_TYPE_LATEST
UNKNOWN = "unknown"
# Sudo, a wrapper and the tool: from a few milliseconds to a long git fetch.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    """The agent's instruments; tests build their own registry and read samples from it."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "host_agent_requests",
            "Operation requests (/host/op and the predecessor's routes) by outcome "
            "(ok, approval_pending, or the error code).",
            ["kind", "operation", "outcome"],  # kind is the operation name's prefix
            registry=r,
        )
        self.operation_duration = Histogram(
            "host_agent_operation_duration_seconds",
            "Time the wrapper took (sudo, validation, the tool).",
            ["operation"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.policy_decisions = Counter(
            "host_agent_policy_decisions",
            "Policy decisions by effect (allow, deny, approval_required).",
            ["effect"],
            registry=r,
        )
        self.approval_events = Counter(
            "host_agent_approval_events",
            "Approval steps (created, notified, notify_failed, vote, granted, denied, "
            "refused, consumed, expired).",
            ["event"],
            registry=r,
        )
        self.approvals_open = Gauge(
            "host_agent_approvals_open",
            "Approvals waiting for a human (pending) or for their resubmission (approved).",
            ["status"],
            registry=r,
        )
        self.signal_send_failures = Counter(
            "host_agent_signal_send_failures",
            "Approval messages that could not be sent after every retry.",
            registry=r,
        )
        self.audit_write_failures = Counter(
            "host_agent_audit_write_failures",
            "Audit records that could not be made durable (each refused what it recorded).",
            registry=r,
        )
        self.approval_store_failures = Counter(
            "host_agent_approval_store_failures",
            "Calls to the approval store (SQLite, or the fleet's PostgreSQL) that failed: "
            "each refused the step that needed it with 503.",
            registry=r,
        )
        self.refusals_suppressed = Counter(
            "host_agent_audit_refusals_suppressed",
            "Refusals counted instead of written one by one: a source over [rate_limit.refusals].",
            registry=r,
        )
        self.rate_limited = Counter(
            "host_agent_rate_limited_requests",
            "Requests refused with 429, by limit (read, mutating, approval, endpoint).",
            ["limit"],
            registry=r,
        )
        self.config_reloads = Counter(
            "host_agent_config_reloads",
            "SIGHUP reloads by result (success, failure).",
            ["result"],
            registry=r,
        )
        self.tls_handshake_failures = Counter(
            "host_agent_tls_handshake_failures",
            "TLS handshakes that failed, by reason.",
            ["reason"],
            registry=r,
        )
        self.connections_refused = Counter(
            "host_agent_connections_refused",
            "Connections closed at once for being over a limit: capacity (all connections "
            "or handshakes), per_address (handshakes from one address), per_cn.",
            ["reason"],
            registry=r,
        )
        self.sudoers_risky_entries = Gauge(
            "host_agent_sudoers_risky_entries",
            "Sudoers grants to the service account broader than the wrappers.",
            registry=r,
        )
        self.on_behalf = Counter(
            "host_agent_requests_on_behalf",
            "Requests a proxy made for an agent behind it (on_behalf_of), by that agent's "
            "agent_type.",
            ["agent_type"],
            registry=r,
        )
        self.checkpoint_behind = Gauge(
            "host_agent_audit_checkpoint_behind_seconds",
            "How long each witness has lacked the latest audit checkpoint (0: it has it).",
            ["witness"],
            registry=r,
        )
        self.checkpoint_ship_failures = Counter(
            "host_agent_audit_checkpoint_ship_failures",
            "Attempts to hand a checkpoint to a witness that failed (each is retried).",
            ["witness"],
            registry=r,
        )
        self.crl_next_update = Gauge(
            "host_agent_crl_next_update_timestamp_seconds",
            "When the loaded CRL must be replaced (after it, every handshake fails).",
            registry=r,
        )
        Info("host_agent_build", "Version of host-agent and Python.", registry=r).info(
            {"version": __version__, "python": platform.python_version()}
        )
        for effect in ("allow", "deny", "approval_required"):
            self.policy_decisions.labels(effect=effect)
        for result in ("success", "failure"):
            self.config_reloads.labels(result=result)

    def request(self, operation: str | None, outcome: str) -> None:
        """Count one request; an operation that never parsed is counted as unknown."""
        if operation not in OPERATION_NAMES:
            operation = UNKNOWN
        kind = UNKNOWN if operation == UNKNOWN else operation.partition("-")[0]
        self.requests.labels(kind=kind, operation=operation, outcome=outcome).inc()

    def approval_event(self, event: str) -> None:
        self.approval_events.labels(event=event.removeprefix("approval_")).inc()
        if event == "approval_notify_failed":
            self.signal_send_failures.inc()

    def count_open_approvals(self, count: Callable[[Status], float]) -> None:
        """Read the open-approval gauges from the store at scrape time."""
        for status in (Status.PENDING, Status.APPROVED):
            self.approvals_open.labels(status=status.value).set_function(
                functools.partial(count, status)
            )

    def watch_checkpoints(
        self, behind: Callable[[float], dict[str, float]], witnesses: list[str]
    ) -> None:
        """Read each witness's backlog at scrape time."""

        def seconds_behind(name: str) -> float:
            return behind(time.time()).get(name, 0.0)

        for name in witnesses:
            self.checkpoint_ship_failures.labels(witness=name)
            self.checkpoint_behind.labels(witness=name).set_function(
                functools.partial(seconds_behind, name)
            )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
