"""How costs grow with what the agent holds: rules, stored approvals, audit log length.

These run in the benchmark process against the real components (policy,
SqliteStore behind the ApprovalManager, `host-agent audit verify`), each at a
small and a large size, interleaved.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from bench.environment import CALLER, EXTRA, PROFILE, Bench
from bench.harness import Sample, rotations
from bench.plan import Plan
from bench.results import Section, Target, errors, ms, ratio, times, us
from host_agent.adapters import build_registry
from host_agent.approvals.manager import ApprovalManager
from host_agent.approvals.model import Approver
from host_agent.approvals.store import SqliteStore
from host_agent.audit import AuditLog
from host_agent.config import Config, load_config
from host_agent.operations import OPERATION_NAMES, Operation
from host_agent.policy import Decision, Effect, decide
from host_agent.request import parse_host_op
from tests.support import config_text, write_config

BATCH = 50  # decide() calls per timed batch: one call is too short for the clock
RULES_METHOD = (
    "`policy.decide` for an allowed `zfs list`, timed in batches of {batch} calls "
    "({calls:,} calls per config, configs interleaved). Every added rule has a resource "
    "pattern that does not match. Either every rule names `zfs-list`, the worst case (each "
    "pattern is tried at every decision), or the rules are spread over all "
    f"{len(OPERATION_NAMES)} operations (only those naming `zfs-list` are tried). Config "
    "load is the time to read and validate the file (`load_config`)."
)
SHAPES = {"same": "`zfs-list` only", "spread": "every operation"}
APPROVALS_METHOD = (
    "`ApprovalManager` over `SqliteStore` (WAL, synchronous=FULL) with an `AuditLog`, as the "
    "agent builds them: create (audited, stored), approve by a host approver, consume. "
    "{cycles} cycles per store size, sizes interleaved. The large store is filled with "
    "copies of a real approval (mostly closed, a tenth pending), as months of use would."
)


def rules(bench: Bench, plan: Plan) -> Section:
    configs = {
        (shape, count): _config_with_rules(bench, shape, count)
        for shape in SHAPES
        for count in plan.rule_counts
    }
    loads = {key: _load_time(config.source) for key, config in configs.items()}
    operation = bench_operation(next(iter(configs.values())), "list", bench.pool.name)
    batches: dict[tuple[str, int], list[float]] = {key: [] for key in configs}
    for order in rotations(list(configs), plan.decisions // BATCH):
        for key in order:
            batches[key].append(_decide_batch(configs[key], operation))
    samples = {key: Sample(tuple(batches[key])) for key in configs}
    fewest, most = plan.rule_counts[0], plan.rule_counts[-1]
    rows = [
        (
            SHAPES[shape],
            f"{len(configs[shape, count].rules):,}",
            us(samples[shape, count].median),
            us(samples[shape, count].p99),
            str(samples[shape, count].n * BATCH),
            times(ratio(samples[shape, count].median, samples[shape, fewest].median)),
            f"{loads[shape, count] * 1000:,.0f} ms",
        )
        for shape, count in configs
    ]
    growth = [
        f"{SHAPES[shape]}: {us(samples[shape, fewest].median)} → {us(samples[shape, most].median)}"
        for shape in SHAPES
    ]
    return Section(
        "Growth: decision time against the number of rules",
        RULES_METHOD.format(batch=BATCH, calls=plan.decisions),
        (
            "rules for",
            "rules",
            "median per decision",
            "p99 (of batch means)",
            "decisions",
            "÷ fewest rules",
            "config load",
        ),
        rows,
        [
            Target(
                "rules",
                f"decision time with {fewest:,} / … / {most:,} rules",
                "; ".join(growth),
            )
        ],
    )


def _config_with_rules(bench: Bench, shape: str, count: int) -> Config:
    """The benchmark's config with rules added up to `count` (none of them matching)."""
    workdir = bench.root / f"rules-{shape}-{count}"
    workdir.mkdir(mode=0o755)
    base = write_config(workdir / "base.toml", _text(bench, workdir, ""))
    names = ["zfs-list"] if shape == "same" else sorted(OPERATION_NAMES)
    added = "".join(
        f'[[rules]]\noperation = "{names[index % len(names)]}"\npattern = "bench{index}/.*"\n'
        for index in range(max(0, count - len(base.rules)))
    )
    return write_config(workdir / "agent.toml", _text(bench, workdir, added))


def _load_time(path: Path) -> float:
    started = time.perf_counter()
    load_config(path)
    return time.perf_counter() - started


def _text(bench: Bench, workdir: Path, rules_text: str) -> str:
    return config_text(
        bench.pki,
        workdir,
        service_user=bench.system.user,
        wrapper_dir=bench.system.wrappers.directory,
        profiles=PROFILE,
        extra=EXTRA + rules_text,
    )


def bench_operation(config: Config, command: str, resource: str) -> Operation:
    request = parse_host_op({"kind": "zfs", "resource": resource, "args": [command]})
    return build_registry(config).adapter_for("zfs").parse(request, "bench")


def _decide_batch(config: Config, operation: Operation) -> float:
    started = time.perf_counter()
    for _ in range(BATCH):
        decision = decide(config, CALLER, operation)
    took = (time.perf_counter() - started) / BATCH
    if decision.effect is not Effect.ALLOW:
        raise RuntimeError(f"the benchmark's zfs list is not allowed: {decision}")
    return took


def approvals(bench: Bench, plan: Plan) -> Section:
    config = bench.config("approvals")
    operation = bench_operation(config, "destroy", f"{bench.pool.name}/data@bench")
    sizes = (0, plan.approval_records)
    steps = ("create", "approve", "consume")
    timings: dict[tuple[int, str], list[float]] = {(s, step): [] for s in sizes for step in steps}
    rounds = 10 if plan.approval_cycles >= 10 else 1
    with asyncio.Runner() as loop:
        managers = {size: loop.run(_manager(bench, config, operation, size)) for size in sizes}
        for order in rotations(list(sizes), rounds):
            for size in order:
                for _ in range(plan.approval_cycles // rounds):
                    took = loop.run(approval_cycle(managers[size], operation))
                    for step, seconds in zip(steps, took, strict=True):
                        timings[size, step].append(seconds)
        for manager in managers.values():
            manager.store.close()
            manager.audit.close()
    rows = []
    growths = []
    for step in steps:
        empty = Sample(tuple(timings[0, step]))
        full = Sample(tuple(timings[sizes[-1], step]))
        growths.append(f"{step} {ms(empty.median)} → {ms(full.median)}")
        for size in sizes:
            sample = Sample(tuple(timings[size, step]))
            rows.append(
                (
                    step,
                    f"{size:,}",
                    ms(sample.median),
                    ms(sample.p99),
                    str(sample.n),
                    errors(sample),
                    times(ratio(sample.median, empty.median)),
                )
            )
    return Section(
        f"Growth: approvals with {plan.approval_records:,} records in the store",
        APPROVALS_METHOD.format(cycles=plan.approval_cycles),
        ("step", "records stored", "median", "p99", "n", "failed", "÷ empty store"),
        rows,
        [
            Target(
                "approvals",
                f"approval create and consume with {plan.approval_records:,} records stored",
                "; ".join(growths),
            )
        ],
    )


_WHO = {"request_id": "bench", "cn": CALLER, "fingerprint": "bench", "serial": "1"}
_DECISION = Decision(Effect.APPROVAL, "approval_required", "benchmark", "benchmark")
_APPROVER = Approver("pam", "bench-approver")


async def _manager(
    bench: Bench, config: Config, operation: Operation, size: int
) -> ApprovalManager:
    """A manager over its own store and audit log, the store holding `size` records."""
    directory = bench.root / f"approvals-{size}"
    directory.mkdir(mode=0o700)
    audit = AuditLog(directory / "audit.jsonl")
    audit.open()
    manager = ApprovalManager(config.approval, SqliteStore(directory / "store.sqlite3"), audit)
    if size:
        template = await manager.create(_WHO, operation, _DECISION, "template", "bench")
        _fill(directory / "store.sqlite3", template.id, size - 1)
    return manager


async def approval_cycle(
    manager: ApprovalManager, operation: Operation
) -> tuple[float, float, float]:
    started = time.perf_counter()
    approval = await manager.create(_WHO, operation, _DECISION, "benchmark", "bench")
    created = time.perf_counter()
    await manager.decide(approval.id, True, _APPROVER)
    approved = time.perf_counter()
    await manager.consume(approval.id, _WHO, operation)
    consumed = time.perf_counter()
    return created - started, approved - created, consumed - approved


_SEQUENCE = "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < ?) "
_TEMPLATE = "(SELECT * FROM approvals WHERE id = ?)"


def _fill(path: Path, template_id: str, count: int) -> None:
    """Copy the template approval `count` times in one transaction, each with its own id,
    token hash and status (nine in ten closed), over the store's own columns."""
    varied: dict[str, str] = {
        "id": "printf('ap-%016x', n)",
        "token_hash": "printf('%064x', n)",
        "status": "CASE n % 10 WHEN 0 THEN 'pending' WHEN 1 THEN 'expired' "
        "WHEN 2 THEN 'denied' ELSE 'consumed' END",
        "created_at": "created_at - n",
        "expires_at": "expires_at - n",
    }
    with closing(sqlite3.connect(path)) as db, db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(approvals)")]
        chosen = ", ".join(varied.get(column, column) for column in columns)
        # Only the store's own column names and the expressions above are interpolated.
        copies = f"INSERT INTO approvals ({', '.join(columns)}) SELECT {chosen} FROM seq, "  # noqa: S608
        db.execute(_SEQUENCE + copies + _TEMPLATE, (count, template_id))
    _count_check(path, count + 1)


def _count_check(path: Path, expected: int) -> None:
    with closing(sqlite3.connect(path)) as db:
        (stored,) = db.execute("SELECT COUNT(*) FROM approvals").fetchone()
    if stored != expected:
        raise RuntimeError(f"approval store holds {stored} records, expected {expected}")
