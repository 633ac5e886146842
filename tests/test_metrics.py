"""Prometheus metrics: the families, bounded labels, and both listeners (mTLS and plain)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from host_agent.audit import AuditLog
from host_agent.config import Config
from host_agent.errors import AuditUnavailable
from host_agent.metrics import Metrics
from tests.support import (
    Pki,
    RunningAgent,
    client,
    config_text,
    free_port,
    running_agent,
    write_config,
)


def samples(exposition: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def value(exposition: str, name: str, **labels: str) -> float | None:
    return samples(exposition).get((name, frozenset(labels.items())))


def test_every_family_is_prefixed_and_follows_the_naming_conventions() -> None:
    metrics = Metrics(CollectorRegistry())
    names = {family.name for family in metrics.registry.collect()}
    assert names >= {
        "host_agent_requests",
        "host_agent_operation_duration_seconds",
        "host_agent_policy_decisions",
        "host_agent_approval_events",
        "host_agent_approvals_open",
        "host_agent_signal_send_failures",
        "host_agent_audit_write_failures",
        "host_agent_rate_limited_requests",
        "host_agent_config_reloads",
        "host_agent_tls_handshake_failures",
        "host_agent_sudoers_risky_entries",
        "host_agent_crl_next_update_timestamp_seconds",
        "host_agent_build",
    }
    text = metrics.exposition().decode()
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("host_agent_")
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
    assert 'host_agent_build_info{python="' in text


def test_requests_outside_the_fixed_sets_are_counted_as_unknown() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.request("zfs-destroy", "approval_pending")
    metrics.request('evil"} 1\nhost_agent_fake', "unknown_kind")
    metrics.request(None, "invalid_json")
    text = metrics.exposition().decode()
    assert value(
        text,
        "host_agent_requests_total",
        kind="zfs",
        operation="zfs-destroy",
        outcome="approval_pending",
    )
    assert value(
        text,
        "host_agent_requests_total",
        kind="unknown",
        operation="unknown",
        outcome="unknown_kind",
    )
    assert "evil" not in text and "host_agent_fake" not in text


def test_a_failed_notification_counts_as_an_event_and_a_send_failure() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.approval_event("approval_created")
    metrics.approval_event("approval_notify_failed")
    text = metrics.exposition().decode()
    assert value(text, "host_agent_approval_events_total", event="created") == 1
    assert value(text, "host_agent_approval_events_total", event="notify_failed") == 1
    assert value(text, "host_agent_signal_send_failures_total") == 1


def test_an_audit_write_that_fails_is_counted(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    audit = AuditLog(
        tmp_path / "missing" / "audit.jsonl", on_failure=metrics.audit_write_failures.inc
    )
    with pytest.raises(AuditUnavailable):
        audit.append({"event": "decision"})
    assert value(metrics.exposition().decode(), "host_agent_audit_write_failures_total") == 1


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
def agent_with_exporter(pki: Pki, tmp_path: Path, metrics_port: int) -> Iterator[RunningAgent]:
    extra = f'[metrics]\nenabled = true\nbind = "127.0.0.1:{metrics_port}"\n'
    config: Config = write_config(tmp_path / "agent.toml", config_text(pki, tmp_path, extra=extra))
    with running_agent(config) as agent:
        yield agent


def test_both_listeners_serve_the_same_live_registry(
    agent_with_exporter: RunningAgent, pki: Pki, metrics_port: int
) -> None:
    with client(agent_with_exporter, pki, "reader-1") as http:
        denied = http.post(
            "/host/op",
            json={"kind": "zfs", "resource": "tank/secret-name", "args": ["destroy"]},
        )
        assert denied.status_code == 403
        over_tls = http.get("/metrics")
    assert over_tls.status_code == 200
    assert over_tls.headers["content-type"].startswith("text/plain")
    plain = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
    assert plain.status_code == 200
    for text in (over_tls.text, plain.text):
        code = denied.json()["error"]["code"]
        assert value(
            text, "host_agent_requests_total", kind="zfs", operation="zfs-destroy", outcome=code
        )
        assert value(text, "host_agent_policy_decisions_total", effect="deny") == 1
        assert "tank/secret-name" not in text and "reader-1" not in text


def test_approvals_are_counted_and_the_open_gauge_reads_the_store(
    agent: RunningAgent, pki: Pki
) -> None:
    with client(agent, pki, "librarian-1") as http:
        pending = http.post(
            "/host/op", json={"kind": "zfs", "resource": "tank/data@old", "args": ["destroy"]}
        )
        assert pending.status_code == 202
        text = http.get("/metrics").text
    assert value(text, "host_agent_approval_events_total", event="created") == 1
    assert value(text, "host_agent_approvals_open", status="pending") == 1
    assert value(text, "host_agent_approvals_open", status="approved") == 0
    assert value(
        text,
        "host_agent_requests_total",
        kind="zfs",
        operation="zfs-destroy",
        outcome="approval_pending",
    )


def test_a_public_metrics_bind_is_warned_about(pki: Pki, tmp_path: Path) -> None:
    extra = '[metrics]\nenabled = true\nbind = "0.0.0.0:19090"\n'
    config = write_config(tmp_path / "agent.toml", config_text(pki, tmp_path, extra=extra))
    assert any("not a loopback address" in warning for warning in config.warnings)
