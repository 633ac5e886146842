"""Per-CN rate limits: token buckets by class, the predecessor's endpoints, 429 + Retry-After."""

from __future__ import annotations

from pathlib import Path

import pytest

from host_agent.config import Limit, RateLimitConfig
from host_agent.ratelimit import RateLimited, RateLimiter
from tests.support import Pki, audit_records, client, config_text, running_agent, write_config


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, **overrides: object) -> RateLimiter:
    settings: dict[str, object] = {
        "enabled": True,
        "max_requests": 2,
        "window_seconds": 60,
        "endpoints": ("/approve",),
        "read": Limit(3, 30),
        **overrides,
    }
    return RateLimiter(RateLimitConfig(**settings), clock=clock)  # type: ignore[arg-type]


def test_a_burst_then_refill_at_the_configured_rate() -> None:
    clock = Clock()
    limits = limiter(clock)
    for _ in range(3):
        limits.check("reader-1", "read")
    with pytest.raises(RateLimited) as refused:
        limits.check("reader-1", "read")
    assert (refused.value.status, refused.value.code, refused.value.retry_after) == (
        429,
        "rate_limited",
        10,
    )
    limits.check("reader-2", "read")  # another CN has its own bucket
    clock.now += 10
    limits.check("reader-1", "read")
    with pytest.raises(RateLimited):
        limits.check("reader-1", "read")


def test_classes_are_separate_buckets() -> None:
    clock = Clock()
    limits = limiter(clock, read=Limit(1, 60), mutating=Limit(1, 60))
    limits.check("a", "read")
    limits.check("a", "mutating")
    with pytest.raises(RateLimited) as refused:
        limits.check("a", "read")
    assert refused.value.limit == "read"


def test_the_predecessors_endpoint_limit_applies_on_top() -> None:
    clock = Clock()
    limits = limiter(clock, approval=Limit(100, 60))
    limits.check("admin-1", "approval", "/approve")
    limits.check("admin-1", "approval", "/approve")
    with pytest.raises(RateLimited) as refused:
        limits.check("admin-1", "approval", "/approve")
    assert (refused.value.limit, refused.value.retry_after) == ("endpoint", 30)
    limits.check("admin-1", "approval", "/pending")  # not a listed endpoint


def test_disabled_limits_nothing() -> None:
    limits = limiter(Clock(), enabled=False, read=Limit(1, 60))
    for _ in range(10):
        limits.check("a", "read")
    assert limits.tracked == 0


def test_state_is_bounded_least_recently_used_first() -> None:
    clock = Clock()
    limits = limiter(clock, read=Limit(1, 3600), max_tracked=100)
    limits.check("first", "read")
    for n in range(150):
        limits.check(f"cn-{n}", "read")
    assert limits.tracked == 100
    limits.check("first", "read")  # forgotten, so a fresh bucket


def test_over_mtls_a_429_with_retry_after_is_audited_and_counted(pki: Pki, tmp_path: Path) -> None:
    extra = "[rate_limit.read]\nrequests = 2\nper_seconds = 3600\n"
    config = write_config(tmp_path / "agent.toml", config_text(pki, tmp_path, extra=extra))
    body = {"kind": "zfs", "resource": "tank", "args": ["list"], "dry_run": True}
    with running_agent(config) as agent, client(agent, pki, "reader-1") as http:
        statuses = [http.post("/host/op", json=body).status_code for _ in range(3)]
        refused = http.post("/host/op", json=body)
        metrics = http.get("/metrics").text
    assert statuses == [200, 200, 429]
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 1800
    assert 'host_agent_rate_limited_requests_total{limit="read"} 2.0' in metrics
    rejected = [r for r in audit_records(config.audit.log_path) if r["event"] == "rejected"]
    assert [r["code"] for r in rejected] == ["rate_limited", "rate_limited"]


def test_the_approval_routes_share_one_bucket(pki: Pki, tmp_path: Path) -> None:
    extra = "[rate_limit.approval]\nrequests = 2\nper_seconds = 3600\n"
    config = write_config(tmp_path / "agent.toml", config_text(pki, tmp_path, extra=extra))
    with running_agent(config) as agent, client(agent, pki, "admin-1") as http:
        answers = [
            http.get("/admin/pending").status_code,
            http.get("/approvals/ap-0000000000000000").status_code,
            http.get("/pending").status_code,
        ]
    assert answers == [200, 404, 429]
