"""The agent's resident memory as requests accumulate: no growth means no leak."""

from __future__ import annotations

import itertools
from contextlib import ExitStack
from pathlib import Path

from bench import wire
from bench import workloads as ways
from bench.environment import CALLER, REFUSED, Bench
from bench.harness import Action, WorkloadFailed, concurrent
from bench.plan import Plan
from bench.results import Section, Target, mb

LIMIT = 80_000_000  # bytes: "≤ 80 MB"
# RSS may still settle (allocator arenas, caches filled on first use); more than this
# from 10,000 requests to the last checkpoint is counted as growth.
GROWTH_TOLERANCE = 0.05
SETTLED = 10_000  # requests after which RSS is compared
FRESH_EVERY, RUN_EVERY = 50, 100
METHOD = (
    "A fresh agent process, then {clients} client threads with kept-alive connections "
    "sending a mix: policy-denied snapshots and dry runs of `zfs list` (decided and audited, "
    "nothing started), every {fresh}th request over a new TLS connection instead, every "
    "{run}th an `exec` of /bin/true that really runs. VmRSS of the agent process is read "
    "from /proc at each checkpoint. 'No growth' is taken to mean less than {tolerance:.0%} "
    "more RSS at the last checkpoint than at the first one at or past 10,000 requests."
)


def measure(bench: Bench, plan: Plan) -> Section:
    readings: list[tuple[int, int, int]] = []
    with bench.agent("memory") as agent, ExitStack() as stack:
        clients = [_mixed(bench, agent.port, stack) for _ in range(plan.clients)]
        served = 0
        for checkpoint in plan.memory_checkpoints:
            per_client = (checkpoint - served) // plan.clients
            load = concurrent(clients, per_client)
            if load.sample.errors:
                raise WorkloadFailed(f"memory load: {load.sample.first_error}")
            served += per_client * plan.clients
            readings.append((served, *_memory(agent.pid)))
    return Section(
        "Memory",
        METHOD.format(
            clients=plan.clients, fresh=FRESH_EVERY, run=RUN_EVERY, tolerance=GROWTH_TOLERANCE
        ),
        ("requests served", "VmRSS", "VmHWM (peak RSS)"),
        [(f"{served:,}", mb(rss), mb(peak)) for served, rss, peak in readings],
        _targets(readings),
    )


def _mixed(bench: Bench, port: int, stack: ExitStack) -> Action:
    """One client's share of the mix, on its own two kept-alive connections."""
    refused_context, caller_context = bench.tls_context(REFUSED), bench.tls_context(CALLER)
    refused = stack.enter_context(wire.Connection(port, refused_context))
    caller = stack.enter_context(wire.Connection(port, caller_context))
    denied = wire.post("/host/op", ways.denied_request(bench.pool.name))
    dry_run = wire.post(
        "/host/op", {"kind": "zfs", "resource": bench.pool.name, "args": ["list"], "dry_run": True}
    )
    run = wire.post("/host/op", {"kind": "exec", "resource": "/bin/true", "args": ["run"]})
    fresh_denied = wire.post("/host/op", ways.denied_request(bench.pool.name), keep_alive=False)
    counter = itertools.count(1)

    def next_request() -> None:
        index = next(counter)
        if index % RUN_EVERY == 0:
            reply, status = caller.exchange(run), 200
        elif index % FRESH_EVERY == 0:
            reply, status = wire.once(port, refused_context, fresh_denied), 403
        elif index % 2:
            reply, status = refused.exchange(denied), 403
        else:
            reply, status = caller.exchange(dry_run), 200
        if reply.status != status:
            raise WorkloadFailed(f"HTTP {reply.status}: {reply.body[:200]!r}")

    return next_request


def _memory(pid: int) -> tuple[int, int]:
    """VmRSS and VmHWM of `pid`, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields["VmRSS"], fields["VmHWM"]


def _targets(readings: list[tuple[int, int, int]]) -> list[Target]:
    served, last, _ = readings[-1]
    highest = max(rss for _, rss, _ in readings)
    limit = Target(
        "memory",
        f"memory ≤ 80 MB (RSS, through {served:,} requests)",
        f"{mb(highest)} at most",
        highest <= LIMIT,
    )
    settled = [(n, rss) for n, rss, _ in readings if n >= SETTLED]
    if len(settled) < 2:
        return [limit, Target("leak", "no growth (too few requests to judge)", "—")]
    start, first = settled[0]
    growth = (last - first) / first
    return [
        limit,
        Target(
            "leak",
            f"no growth from {start:,} to {served:,} requests",
            f"{growth:+.1%} ({mb(first)} → {mb(last)})",
            growth <= GROWTH_TOLERANCE,
        ),
    ]
