"""A fleet's approval store: PostgreSQL against SQLite in one run.

Latency: the same create / approve / consume cycle as bench/growth.approvals, on a
manager over each store, interleaved. Throughput: simulated agents, each a task that
runs whole cycles back to back, spread over managers that stand for the fleet's hosts
(each with its own connection pool), for a fixed time; SQLite runs the same agents
on one host (one store can only be one host's).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from bench.environment import Bench
from bench.growth import approval_cycle, bench_operation
from bench.harness import Sample, rotations
from bench.plan import Plan
from bench.results import Section, Target, errors, ms, per_second, ratio, times
from host_agent.approvals.manager import ApprovalManager
from host_agent.approvals.pg_store import PostgresStore
from host_agent.approvals.store import ApprovalStore, SqliteStore
from host_agent.audit import AuditLog
from host_agent.config import Config
from host_agent.operations import Operation
from tests.postgres import fleet_database, postgres_cluster

METHOD = (
    "`ApprovalManager` as the agent builds it, with an `AuditLog`, over `SqliteStore` and "
    "over `PostgresStore` (psycopg 3, a pool per manager) on a PostgreSQL cluster run on "
    "this machine (Debian's package, a loopback TCP connection, default settings): create, "
    "approve by a host approver, consume. {cycles} cycles per store, interleaved. Then "
    "{agents} simulated agents, each running whole cycles back to back for {seconds:g} s, "
    "over {hosts} managers (the fleet's hosts) on PostgreSQL, and over one on SQLite."
)
STEPS = ("create", "approve", "consume")
HOSTS = 4


def measure(bench: Bench, plan: Plan) -> Section:
    config = bench.config("fleet")
    operation = bench_operation(config, "destroy", f"{bench.pool.name}/data@fleet")
    with postgres_cluster() as cluster:
        database = fleet_database(cluster)

        def postgres() -> ApprovalStore:
            return PostgresStore(database.url, database.password)

        stores: dict[str, Callable[[], ApprovalStore]] = {
            "SQLite": lambda: SqliteStore(bench.root / "fleet-sqlite" / "store.sqlite3"),
            "PostgreSQL": postgres,
        }
        latency = _latency(bench, config, operation, stores, plan)
        rates = {
            "SQLite": _throughput(bench, config, operation, [stores["SQLite"]], plan),
            "PostgreSQL": _throughput(bench, config, operation, [postgres] * HOSTS, plan),
        }
    rows = []
    for step in STEPS:
        base = Sample(tuple(latency["SQLite", step]))
        for name in stores:
            sample = Sample(tuple(latency[name, step]))
            ratio_text = times(ratio(sample.median, base.median))
            rows.append(
                (step, name, ms(sample.median), ms(sample.p99), str(sample.n), errors(sample),
                 ratio_text)
            )  # fmt: skip
    for name, (rate, failed) in rates.items():
        rows.append(
            (f"{plan.fleet_agents} agents", name, per_second(rate), "", "", str(failed), "")
        )
    consume = ratio(
        Sample(tuple(latency["PostgreSQL", "consume"])).median,
        Sample(tuple(latency["SQLite", "consume"])).median,
    )
    return Section(
        "Fleet: approvals on PostgreSQL against SQLite",
        METHOD.format(
            cycles=plan.approval_cycles,
            agents=plan.fleet_agents,
            seconds=plan.fleet_seconds,
            hosts=HOSTS,
        ),
        ("step", "store", "median (or approvals/s)", "p99", "n", "failed", "÷ SQLite"),
        rows,
        [
            Target(
                "fleet",
                "consume on the fleet's PostgreSQL against a host's SQLite",
                f"{times(consume, 3)} (median)",
            ),
            Target(
                "fleet",
                f"approvals per second one PostgreSQL serves {plan.fleet_agents} agents",
                per_second(rates["PostgreSQL"][0]),
            ),
        ],
    )


def _latency(
    bench: Bench,
    config: Config,
    operation: Operation,
    stores: dict[str, Callable[[], ApprovalStore]],
    plan: Plan,
) -> dict[tuple[str, str], list[float]]:
    timings: dict[tuple[str, str], list[float]] = {(n, s): [] for n in stores for s in STEPS}
    rounds = 10 if plan.approval_cycles >= 10 else 1
    with asyncio.Runner() as loop:
        managers = {
            name: _manager(bench, config, f"latency-{index}", open_store())
            for index, (name, open_store) in enumerate(stores.items())
        }
        for order in rotations(list(stores), rounds):
            for name in order:
                for _ in range(plan.approval_cycles // rounds):
                    took = loop.run(approval_cycle(managers[name], operation))
                    for step, seconds in zip(STEPS, took, strict=True):
                        timings[name, step].append(seconds)
        for manager in managers.values():
            manager.store.close()
            manager.audit.close()
    return timings


def _throughput(
    bench: Bench,
    config: Config,
    operation: Operation,
    hosts: list[Callable[[], ApprovalStore]],
    plan: Plan,
) -> tuple[float, int]:
    """Completed cycles per second, and the cycles that failed."""
    label = f"throughput-{len(hosts)}-{time.monotonic_ns()}"
    managers = [
        _manager(bench, config, f"{label}-{n}", open_store()) for n, open_store in enumerate(hosts)
    ]
    done, failed = 0, 0

    async def agent(manager: ApprovalManager, until: float) -> None:
        nonlocal done, failed
        while time.monotonic() < until:
            try:
                await approval_cycle(manager, operation)
                done += 1
            except Exception:  # counted: a benchmark reports failures, it does not stop
                failed += 1

    async def run() -> float:
        started = time.monotonic()
        until = started + plan.fleet_seconds
        await asyncio.gather(
            *(agent(managers[n % len(managers)], until) for n in range(plan.fleet_agents))
        )
        return time.monotonic() - started

    seconds = asyncio.run(run())
    for manager in managers:
        manager.store.close()
        manager.audit.close()
    return done / seconds, failed


def _manager(bench: Bench, config: Config, name: str, store: ApprovalStore) -> ApprovalManager:
    directory: Path = bench.root / f"fleet-{name}"
    directory.mkdir(mode=0o700, exist_ok=True)
    audit = AuditLog(directory / "audit.jsonl")
    audit.open()
    return ApprovalManager(config.approval, store, audit, host=name)
