"""[rate_limit]: per-CN token buckets and the refusal-audit bound."""

from __future__ import annotations

from dataclasses import dataclass

from host_agent.config.fields import Table, between


@dataclass(frozen=True)
class Limit:
    """`requests` per `per_seconds`, refilled continuously (a token bucket)."""

    requests: int
    per_seconds: int


@dataclass(frozen=True)
class RateLimitConfig:
    enabled: bool
    # The predecessor's: max_requests per window_seconds per CN on each of `endpoints`.
    max_requests: int
    window_seconds: int
    endpoints: tuple[str, ...]
    # New: per CN and class of request.
    read: Limit = Limit(600, 60)
    mutating: Limit = Limit(120, 60)
    approval: Limit = Limit(120, 60)
    # Refusals written to the audit log one by one, per source; past it they are counted.
    refusals: Limit = Limit(120, 60)
    max_tracked: int = 10_000


def read_rate_limit(t: Table) -> RateLimitConfig:
    config = RateLimitConfig(
        enabled=t.get("enabled", bool, True),
        max_requests=t.get("max_requests", int, 5, check=between(1, 1_000_000)),
        window_seconds=t.get("window_seconds", int, 60, check=between(1, 86400)),
        endpoints=tuple(
            t.get("endpoints", list, ["/zfs/destroy", "/approve", "/pending"], item=str)
        ),
        read=_limit(t.table("read"), Limit(600, 60)),
        mutating=_limit(t.table("mutating"), Limit(120, 60)),
        approval=_limit(t.table("approval"), Limit(120, 60)),
        refusals=_limit(t.table("refusals"), Limit(120, 60)),
        max_tracked=t.get("max_tracked", int, 10_000, check=between(100, 10_000_000)),
    )
    t.finish()
    return config


def _limit(t: Table, default: Limit) -> Limit:
    limit = Limit(
        requests=t.get("requests", int, default.requests, check=between(1, 1_000_000)),
        per_seconds=t.get("per_seconds", int, default.per_seconds, check=between(1, 86400)),
    )
    t.finish()
    return limit
