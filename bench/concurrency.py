"""Many clients at once: the agent's throughput against bare sudo at the same concurrency."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

from bench import cpu, wire
from bench import workloads as ways
from bench.environment import Agent, Bench
from bench.harness import Action, Load, concurrent, pooled, rotations
from bench.launcher import Launcher
from bench.plan import Plan
from bench.results import Section, Target, errors, ms, per_second, ratio, times
from host_agent.client import Client

BARE = "bare sudo"
AGENT = "agent, `Client` (httpx)"
LEAN = "agent, minimal client"
FLOOR = "the stack and runner alone, minimal client"
METHOD = (
    "{clients} client threads in the benchmark process, all started together, each doing "
    "{per_client} operations back to back; {rounds} rounds, the variants alternating (the "
    "order rotating). Bare: each thread has a launcher of its own (bench/launcher.py), a "
    "lean process of the service account's that starts the sudo argv as the runner does. "
    "Agent: each thread has "
    "its own kept-alive connection, through `host_agent.client.Client` (what callers use) or "
    "through the minimal HTTP/1.1 client of bench/wire.py (so that less of the two shared "
    "cores goes to the load generator). The stack and runner alone: bench/stack_floor.py, "
    "the agent's HTTP stack (Hypercorn, mutual TLS, its config and limits) whose one route "
    "runs the operation, parsed once at its start, through the agent's own runner, reached "
    "by the minimal client: everything of an operation but host-agent's own work on each "
    "request (parsing, identity, policy, two fsync'd audit records), the ceiling for the "
    "agent on this stack. Throughput is all operations over all wall time of a "
    "variant; latency is per operation. CPU per operation: the agent process itself (for "
    "bare, the launchers), the processes started for the operation (sudo, the wrapper, the "
    "tool), and the benchmark process driving the load."
)


@dataclass(frozen=True)
class Measured:
    load: Load
    cpu: dict[str, float]  # seconds per operation, by whom


def measure(bench: Bench, agent: Agent, found: list[ways.Workload], plan: Plan) -> Section:
    rows: list[tuple[str, ...]] = []
    targets: list[Target] = []
    with ExitStack() as stack:
        clients = [
            stack.enter_context(Client(bench.client_config(agent))) for _ in range(plan.clients)
        ]
        connections = [
            stack.enter_context(wire.Connection(agent.port, bench.tls_context()))
            for _ in range(plan.clients)
        ]
        launchers = [stack.enter_context(Launcher(bench.account)) for _ in range(plan.clients)]
        for workload in found:
            floor = stack.enter_context(bench.stack_and_runner(agent, workload.document))
            to_floor = [
                stack.enter_context(wire.Connection(floor.port, bench.tls_context()))
                for _ in range(plan.clients)
            ]
            starters = {
                BARE: [each.pid for each in launchers],
                AGENT: [agent.pid],
                LEAN: [agent.pid],
                FLOOR: [floor.pid],
            }
            variants: dict[str, list[Action]] = {
                BARE: [ways.bare(workload, launcher) for launcher in launchers],
                AGENT: [ways.keep_alive(client, workload) for client in clients],
                LEAN: _over(connections, workload),
                FLOOR: _over(to_floor, workload),
            }
            measured = _interleaved(starters, variants, plan)
            rows += _rows(workload.title, measured)
            targets += _targets(workload.title, measured, plan.clients)
    return Section(
        f"Throughput: {plan.clients} concurrent clients",
        METHOD.format(clients=plan.clients, per_client=plan.per_client, rounds=plan.load_rounds),
        (
            "workload",
            "variant",
            "throughput",
            "median",
            "p99",
            "n",
            "failed",
            "÷ bare",
            "CPU/op: agent, launcher or floor",
            "sudo+wrapper+tool",
            "load generator",
        ),
        rows,
        targets,
    )


def _interleaved(
    starters: dict[str, list[int]], variants: dict[str, list[Action]], plan: Plan
) -> dict[str, Measured]:
    """Each variant's load, and the CPU of who started its children (`starters`: the
    agent, or bare's launchers), of those children, and of the load generator."""
    loads: dict[str, list[Load]] = {name: [] for name in variants}
    spent = {name: (cpu.Times(0, 0), cpu.Times(0, 0)) for name in variants}
    for order in rotations(list(variants), plan.load_rounds):
        for name in order:
            starter_before, self_before = _of(starters[name]), cpu.of_self()
            loads[name].append(concurrent(variants[name], plan.per_client))
            starter_used = _of(starters[name]) - starter_before
            self_used = cpu.of_self() - self_before
            spent[name] = (spent[name][0] + starter_used, spent[name][1] + self_used)
    measured = {}
    for name, parts in loads.items():
        load = pooled(parts)
        starter_used, self_used = spent[name]
        count = max(1, load.sample.n + load.sample.errors)
        measured[name] = Measured(
            load,
            {
                "starter": starter_used.own / count,
                "children": (starter_used.children + self_used.children) / count,
                "client": self_used.own / count,
            },
        )
    return measured


def _over(connections: list[wire.Connection], workload: ways.Workload) -> list[Action]:
    return [ways.over_connection(c, workload.document, 200, workload.title) for c in connections]


def _of(pids: list[int]) -> cpu.Times:
    return sum((cpu.of(pid) for pid in pids), cpu.Times(0, 0))


# Throughput with 16 clients, as a share of bare sudo's at the same concurrency.
TARGET_SHARE = 0.95


def _targets(title: str, measured: dict[str, Measured], clients: int) -> list[Target]:
    bare = measured[BARE].load
    found = []
    for name in (AGENT, LEAN):
        load = measured[name].load
        share = ratio(load.throughput, bare.throughput)
        found.append(
            Target(
                "concurrency",
                f"{clients} concurrent clients: throughput ≥ {TARGET_SHARE}x bare "
                f"({title}, {name})",
                f"{times(share, 3)} (p99 {ms(load.sample.p99)} vs {ms(bare.sample.p99)} bare)",
                share >= TARGET_SHARE,
            )
        )
    floor, lean = measured[FLOOR], measured[LEAN]
    share = ratio(lean.load.throughput, floor.load.throughput)
    extra = lean.cpu["starter"] - floor.cpu["starter"]
    found.append(
        Target(
            "concurrency_floor",
            f"{clients} concurrent clients ({title}): the agent's stack and runner alone "
            "(nothing of host-agent's own per request), and the agent's share of its throughput",
            f"{times(ratio(floor.load.throughput, bare.throughput), 3)} of bare; the agent "
            f"(minimal client) {times(share, 3)} of it, {ms(extra)} more CPU an operation",
        )
    )
    return found


def _rows(title: str, measured: dict[str, Measured]) -> list[tuple[str, ...]]:
    bare = measured[BARE].load.throughput
    return [
        (
            title,
            name,
            per_second(each.load.throughput),
            ms(each.load.sample.median),
            ms(each.load.sample.p99),
            str(each.load.sample.n),
            errors(each.load.sample),
            times(ratio(each.load.throughput, bare)),
            ms(each.cpu["starter"]),
            ms(each.cpu["children"]),
            ms(each.cpu["client"]),
        )
        for name, each in measured.items()
    ]
