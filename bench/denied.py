"""Requests policy refuses: a decision and one fsync'd audit record each, no process."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench import wire
from bench import workloads as ways
from bench.environment import REFUSED, Agent, Bench
from bench.harness import Load, concurrent, interleaved, pooled, rotations
from bench.plan import Plan
from bench.results import Section, Target, errors, ms, per_second

TARGET = 3_000  # per second, on 2 cores, every decision fsync'd before its reply
# What seals and checkpoints may cost, as a share of the plain agent's rate.
MAX_SEALING_COST = 0.05
PLAIN = "plain"
SEALED = "sealed"
FLOOR = "the stack alone"
# Slower than this alone, a denied request is waiting for a delayed ACK (40 ms on Linux).
NAGLE_SIGNATURE = 0.030
METHOD = (
    "A read_only caller (`{cn}`) asks for a snapshot: the agent parses it, policy denies it, "
    "the decision is written to the audit log and fsync'd, and a 403 goes back; no process "
    "is started. {clients} threads, each with its own kept-alive TLS connection, send "
    "{per_client} requests back to back per round, {rounds} rounds (HTTP/1.1: a new "
    "connection after every 1,000 requests, when Hypercorn closes it). The load generator is a "
    "minimal HTTP/1.1 client (bench/wire.py) so that it takes as little of the two cores "
    "as possible; it still shares them with the agent. One client alone gives the latency. "
    "Two agents in turn, round by round: a plain one, and one with forward-secure seals and "
    "signed checkpoints at their most frequent (a seal and a checkpoint every second); and, "
    "in the same rounds, the agent's HTTP stack alone (bench/stack_floor.py: the same "
    "Hypercorn and mutual TLS set-up, its config and limits, one process, a Starlette route "
    "that reads the body and sends the plain agent's own 403 back): no parsing, identity, "
    "policy or audit, the ceiling on this stack."
)


def measure(bench: Bench, agent: Agent, sealed: Agent, plan: Plan) -> Section:
    """The plain agent and one with seals and checkpoints, round by round in turn."""
    document = ways.denied_request(bench.pool.name)
    context = bench.tls_context(REFUSED)
    audited = {PLAIN: agent, SEALED: sealed}
    before = {name: _lines(each.config.audit.log_path) for name, each in audited.items()}
    with ExitStack() as stack:
        with wire.Connection(agent.port, context) as connection:
            reply = _check(connection, document)
        floor = stack.enter_context(bench.stack_floor(agent, reply.body))
        agents = {**audited, FLOOR: floor}
        actions = {}
        for name, each in agents.items():
            connections = [
                stack.enter_context(wire.Connection(each.port, context))
                for _ in range(plan.clients)
            ]
            if name in audited:
                _check(connections[0], document)
            actions[name] = [ways.over_connection(c, document, 403, "denied") for c in connections]
        alone = interleaved(
            {name: each[0] for name, each in actions.items()},
            rounds=plan.denied_rounds,
            per_round=plan.denied_alone // plan.denied_rounds,
            warmup=0,
        )
        loads: dict[str, list[Load]] = {name: [] for name in agents}
        for order in rotations(list(agents), plan.denied_rounds):
            for name in order:
                loads[name].append(concurrent(actions[name], plan.denied_per_client))
    rows, load = [], {}
    for name in agents:
        load[name] = pooled(loads[name])
        rates = sorted(each.throughput for each in loads[name])
        one = alone[name]
        rows += [
            (name, "1", "—", "—", ms(one.median), ms(one.p99), str(one.n), errors(one)),
            (
                name,
                str(plan.clients),
                per_second(load[name].throughput),
                f"{per_second(rates[0])} … {per_second(rates[-1])}",
                ms(load[name].sample.median),
                ms(load[name].sample.p99),
                str(load[name].sample.n),
                errors(load[name].sample),
            ),
        ]
    written = {
        name: _lines(each.config.audit.log_path) - before[name] for name, each in audited.items()
    }
    cost = load[SEALED].throughput / load[PLAIN].throughput
    share = load[PLAIN].throughput / load[FLOOR].throughput
    return Section(
        "Denied requests",
        METHOD.format(
            cn=REFUSED,
            clients=plan.clients,
            per_client=plan.denied_per_client,
            rounds=plan.denied_rounds,
        ),
        (
            "agent",
            "clients",
            "throughput",
            "rounds (slowest … fastest)",
            "median",
            "p99",
            "n",
            "failed",
        ),
        rows,
        [
            Target(
                "denied",
                f"denied request ≥ {TARGET:,}/s on 2 cores",
                per_second(load[PLAIN].throughput),
                load[PLAIN].throughput >= TARGET,
            ),
            Target(
                "sealing",
                "seals and checkpoints cost ≤ 5% of the denied-request rate",
                f"{cost:.3f}x of plain ({per_second(load[SEALED].throughput)})",
                cost >= 1 - MAX_SEALING_COST,
            ),
            Target(
                "floor",
                "denied requests: the agent's HTTP stack alone (Hypercorn, Starlette, mutual "
                "TLS; nothing of host-agent's), and the plain agent's share of its rate",
                f"{per_second(load[FLOOR].throughput)}; the plain agent {share:.2f}x of it",
            ),
        ],
        [
            f"Audit records written: {written[PLAIN]:,} by the plain agent, "
            f"{written[SEALED]:,} by the sealed one (its seals and checkpoints included).",
            *_diagnosis(alone[PLAIN].median),
        ],
    )


def _diagnosis(alone: float) -> list[str]:
    if alone < NAGLE_SIGNATURE:
        return []
    return [
        f"One request alone takes {ms(alone)}, for about a millisecond of work: the 40 ms "
        "delayed ACK of Linux, waited for because of Nagle's algorithm (see Findings)."
    ]


def _check(connection: wire.Connection, document: dict[str, Any]) -> wire.Reply:
    """The request must be refused by policy (read_only), not by validation."""
    reply = connection.exchange(wire.post("/host/op", document))
    code = reply.json().get("error", {}).get("code") if reply.status == 403 else None
    if code != "read_only":
        raise RuntimeError(f"the denied request got HTTP {reply.status}: {reply.body[:200]!r}")
    return reply


def _lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for _ in handle)
