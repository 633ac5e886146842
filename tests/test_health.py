"""/health beyond "up": the CRL's remaining life, computed at load time, judged now."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from prometheus_client import CollectorRegistry

from host_agent import certs
from host_agent.config import Config
from host_agent.crl import WARN_BEFORE, read_crl_status
from host_agent.health import HostHealth
from host_agent.metrics import Metrics
from host_agent.runner import Runner
from tests.support import Pki, RunningAgent, client, config_text, running_agent, write_config


def health_at(config: Config, moment: dt.datetime) -> HostHealth:
    health = HostHealth(Metrics(CollectorRegistry()), clock=lambda: moment)
    asyncio.run(health.refresh(config, Runner(config.runner)))
    return health


def test_health_reports_the_crl_over_mtls(agent: RunningAgent, pki: Pki) -> None:
    with client(agent, pki, "reader-1") as http:
        body = http.get("/health").json()
    assert (body["status"], body["problems"]) == ("ok", [])
    assert body["crl"]["state"] == "ok"
    next_update = dt.datetime.fromisoformat(body["crl"]["next_update"])
    crl = certs.load_crl(pki.directory)
    assert next_update == crl.next_update_utc


def test_a_crl_close_to_or_past_its_next_update_degrades_health(config: Config) -> None:
    status = read_crl_status(config.server.crl_file)
    assert status.next_update is not None
    soon = status.next_update - WARN_BEFORE + dt.timedelta(minutes=1)
    late = status.next_update + dt.timedelta(seconds=1)
    assert health_at(config, soon).report()["problems"] == ["crl_expiring"]
    expired = health_at(config, late).report()
    assert (expired["status"], expired["problems"]) == ("degraded", ["crl_expired"])


def test_the_metric_carries_the_next_update(config: Config) -> None:
    health = health_at(config, dt.datetime.now(dt.UTC))
    value = health.metrics.registry.get_sample_value("host_agent_crl_next_update_timestamp_seconds")
    status = read_crl_status(config.server.crl_file)
    assert status.next_update is not None and value == status.next_update.timestamp()


def test_an_unreadable_or_absent_crl_is_reported_not_raised(tmp_path: Path) -> None:
    garbage = tmp_path / "crl.pem"
    garbage.write_text("not a crl")
    assert read_crl_status(garbage).state(dt.datetime.now(dt.UTC)) == "unreadable"
    assert read_crl_status(tmp_path / "missing.pem").error is not None
    assert read_crl_status(None).state(dt.datetime.now(dt.UTC)) == "none"


def sudoers_config(pki: Pki, tmp_path: Path, sudoers: Path) -> Config:
    text = config_text(pki, tmp_path, service_user="nobody").replace(
        "[runner]", f'sudoers_file = "{sudoers}"\n\n[runner]'
    )
    return write_config(tmp_path / "agent.toml", text)


def test_risky_sudoers_grants_degrade_health_and_are_listed_for_admins(
    pki: Pki, tmp_path: Path
) -> None:
    sudoers = tmp_path / "sudoers"
    sudoers.write_text("nobody ALL=(ALL) NOPASSWD: ALL\n")
    config = sudoers_config(pki, tmp_path, sudoers)
    with running_agent(config) as agent:
        with client(agent, pki, "reader-1") as http:
            health = http.get("/health").json()
            refused = http.get("/admin/warn-permissions")
            metrics = http.get("/metrics").text
        with client(agent, pki, "admin-1") as http:
            listed = http.get("/admin/warn-permissions").json()
    assert (health["status"], health["sudoers_risky_entries"]) == ("degraded", 1)
    assert "sudoers_risky_entries" in health["problems"]
    assert refused.status_code == 403
    assert listed["count"] == 1
    assert (listed["findings"][0]["code"], listed["findings"][0]["line"]) == ("nopasswd_all", 1)
    assert "host_agent_sudoers_risky_entries 1.0" in metrics


def test_sudoers_is_scanned_on_refresh_not_per_report(pki: Pki, tmp_path: Path) -> None:
    sudoers = tmp_path / "sudoers"
    sudoers.write_text("# nothing granted yet\n")
    config = sudoers_config(pki, tmp_path, sudoers)
    health = health_at(config, dt.datetime.now(dt.UTC))
    assert health.report()["sudoers_risky_entries"] == 0
    sudoers.write_text("nobody ALL=(ALL) NOPASSWD: ALL\n")
    assert health.report()["sudoers_risky_entries"] == 0
    asyncio.run(health.refresh(config, Runner(config.runner)))
    assert health.report()["sudoers_risky_entries"] == 1
    assert health.permission_findings()["findings"][0]["code"] == "nopasswd_all"
