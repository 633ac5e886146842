"""Requests policy refuses: a decision and one fsync'd audit record each, no process."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench import wire
from bench import workloads as ways
from bench.environment import REFUSED, Agent, Bench
from bench.harness import concurrent, interleaved, pooled
from bench.plan import Plan
from bench.results import Section, Target, errors, ms, per_second

TARGET = 1_000  # per second, on 2 cores
# Slower than this alone, a denied request is waiting for a delayed ACK (40 ms on Linux).
NAGLE_SIGNATURE = 0.030
METHOD = (
    "A read_only caller (`{cn}`) asks for a snapshot: the agent parses it, policy denies it, "
    "the decision is written to the audit log and fsync'd, and a 403 goes back; no process "
    "is started. {clients} threads, each with its own kept-alive TLS connection, send "
    "{per_client} requests back to back per round, {rounds} rounds (HTTP/1.1: a new "
    "connection after every 1,000 requests, when Hypercorn closes it). The load generator is a "
    "minimal HTTP/1.1 client (bench/wire.py) so that it takes as little of the two cores "
    "as possible; it still shares them with the agent. One client alone gives the latency."
)


def measure(bench: Bench, agent: Agent, plan: Plan) -> Section:
    document = ways.denied_request(bench.pool.name)
    context = bench.tls_context(REFUSED)
    audit = agent.config.audit.log_path
    before = _lines(audit)
    with ExitStack() as stack:
        connections = [
            stack.enter_context(wire.Connection(agent.port, context)) for _ in range(plan.clients)
        ]
        _check(connections[0], document)
        actions = [ways.over_connection(c, document, 403, "denied") for c in connections]
        alone = interleaved(
            {"one": actions[0]},
            rounds=plan.denied_rounds,
            per_round=plan.denied_alone // plan.denied_rounds,
            warmup=0,
        )["one"]
        loads = [concurrent(actions, plan.denied_per_client) for _ in range(plan.denied_rounds)]
    load = pooled(loads)
    written = _lines(audit) - before
    sent = 1 + alone.n + alone.errors + load.sample.n + load.sample.errors
    rates = sorted(each.throughput for each in loads)
    rows = [
        ("1", "—", "—", ms(alone.median), ms(alone.p99), str(alone.n), errors(alone)),
        (
            str(plan.clients),
            per_second(load.throughput),
            f"{per_second(rates[0])} … {per_second(rates[-1])}",
            ms(load.sample.median),
            ms(load.sample.p99),
            str(load.sample.n),
            errors(load.sample),
        ),
    ]
    return Section(
        "Denied requests",
        METHOD.format(
            cn=REFUSED,
            clients=plan.clients,
            per_client=plan.denied_per_client,
            rounds=plan.denied_rounds,
        ),
        ("clients", "throughput", "rounds (slowest … fastest)", "median", "p99", "n", "failed"),
        rows,
        [
            Target(
                "denied",
                f"denied request ≥ {TARGET:,}/s on 2 cores",
                per_second(load.throughput),
                load.throughput >= TARGET,
            )
        ],
        [
            f"Audit records written: {written:,} for {sent:,} requests (one decision each).",
            *_diagnosis(alone.median),
        ],
    )


def _diagnosis(alone: float) -> list[str]:
    if alone < NAGLE_SIGNATURE:
        return []
    return [
        f"One request alone takes {ms(alone)}, for about a millisecond of work: the 40 ms "
        "delayed ACK of Linux, waited for because of Nagle's algorithm (see Findings)."
    ]


def _check(connection: wire.Connection, document: dict[str, Any]) -> None:
    """The request must be refused by policy (read_only), not by validation."""
    reply = connection.exchange(wire.post("/host/op", document))
    code = reply.json().get("error", {}).get("code") if reply.status == 403 else None
    if code != "read_only":
        raise RuntimeError(f"the denied request got HTTP {reply.status}: {reply.body[:200]!r}")


def _lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for _ in handle)
