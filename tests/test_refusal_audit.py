"""Refusals reach the audit log at a bounded rate per source: past `[rate_limit.refusals]`
they are counted, the first of a run leaves a marker, and the count is written with the
source's next refusal or at shutdown. The client's answer never changes."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from host_agent.audit import AuditLog, verify
from host_agent.config import Limit, RateLimitConfig
from host_agent.metrics import Metrics
from host_agent.refusal_audit import RefusalAudit
from tests.support import (
    Pki,
    RunningAgent,
    audit_records,
    client,
    config_text,
    running_agent,
    write_config,
)

LIMITS = RateLimitConfig(
    enabled=True, max_requests=5, window_seconds=60, endpoints=(), refusals=Limit(3, 60)
)


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def refusal(code: str = "invalid_json") -> dict[str, Any]:
    return {"event": "rejected", "code": code}


def events(path: Path) -> list[tuple[str, Any]]:
    return [(r["event"], r.get("suppressed_before") or r.get("count")) for r in audit_records(path)]


def test_past_its_budget_a_source_is_counted_not_written(tmp_path: Path) -> None:
    log, clock, metrics = AuditLog(tmp_path / "audit.jsonl"), Clock(), Metrics()
    refusals = RefusalAudit(log, LIMITS, metrics, clock=clock)

    async def scenario() -> None:
        for _ in range(10):
            await refusals.write("flooder", refusal())
        await refusals.write("bystander", refusal())  # a budget of its own
        clock.now += 20  # one refusal's worth of budget back
        await refusals.write("flooder", refusal())
        await refusals.write("flooder", refusal())  # a new run
        await refusals.flush()

    asyncio.run(scenario())
    log.close()
    assert events(log.path) == [
        ("rejected", None),
        ("rejected", None),
        ("rejected", None),
        ("refusals_suppressed", None),  # the marker: counting starts
        ("rejected", None),  # bystander
        ("rejected", 7),  # flooder's next written refusal carries the count
        ("refusals_suppressed", None),
        ("refusals_suppressed", 1),  # flushed at shutdown
    ]
    marker = audit_records(log.path)[3]
    assert (marker["source"], marker["code"], marker["resumes_in_seconds"]) == (
        "flooder",
        "invalid_json",
        20,
    )
    assert metrics.refusals_suppressed._value.get() == 8
    assert verify([log.path]).ok


def test_with_rate_limits_off_every_refusal_is_written(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    refusals = RefusalAudit(log, replace(LIMITS, enabled=False), Metrics())

    async def scenario() -> None:
        for _ in range(10):
            await refusals.write("flooder", refusal())

    asyncio.run(scenario())
    log.close()
    assert [event for event, _ in events(log.path)] == ["rejected"] * 10


def test_a_flood_of_bad_requests_and_unknown_cns_cannot_flood_the_log(
    pki: Pki, tmp_path: Path
) -> None:
    extra = (
        "[rate_limit.refusals]\nrequests = 5\nper_seconds = 3600\n"
        "[rate_limit.read]\nrequests = 10\nper_seconds = 3600\n"
    )
    config = write_config(tmp_path / "agent.toml", config_text(pki, tmp_path, extra=extra))
    answers: Counter[tuple[int, str]] = Counter()
    with running_agent(config) as agent:
        for cn, body in (("librarian-1", b"{not json"), ("stranger", b"{}")):
            with client(agent, pki, cn) as http:
                for _ in range(30):
                    reply = http.post("/host/op", content=body)
                    answers[reply.status_code, reply.json()["error"]["code"]] += 1
        with client(agent, pki, "reader-1") as http:  # another source still gets its own
            assert http.post("/host/op", content=b"[").status_code == 400
    # An unknown CN is decided on (and refused) until its read limit, then answered 429.
    assert answers == {(400, "bad_request"): 30, (403, "unknown_cn"): 10, (429, "rate_limited"): 20}
    records = audit_records(config.audit.log_path)
    by_source = Counter((r["event"], r.get("cn") or r.get("source")) for r in records)
    assert by_source == {
        ("rejected", "librarian-1"): 5,
        ("decision", "stranger"): 10,  # every decision is written, never counted
        ("rejected", "stranger"): 5,  # its 429s are refusals: bounded
        ("rejected", "reader-1"): 1,
        ("refusals_suppressed", "librarian-1"): 2,  # the marker, then the count at shutdown
        ("refusals_suppressed", "stranger"): 2,
    }
    counts = {r["source"]: r["count"] for r in records if "count" in r}
    assert counts == {"librarian-1": 25, "stranger": 15}
    assert verify([config.audit.log_path]).ok


def test_a_refusal_made_before_the_body_is_read_closes_the_connection(
    agent: RunningAgent, pki: Pki
) -> None:
    """An unknown CN is refused before its body is read: the reply says the connection
    ends, so a client never sends its next request after a body the server left unread
    (which raced the close: "server disconnected" on a kept-alive connection). A
    refusal after the body was read keeps the connection."""
    with client(agent, pki, "stranger") as http:
        refused = http.post("/host/op", content=b"{}")
        assert (refused.status_code, refused.headers.get("connection")) == (403, "close")
    with client(agent, pki, "librarian-1") as http:
        invalid = http.post("/host/op", content=b"{not json")
        assert invalid.status_code == 400 and invalid.headers.get("connection") != "close"
        assert http.post("/host/op", content=b"{not json").status_code == 400
