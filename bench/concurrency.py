"""Many clients at once: the agent's throughput against bare sudo at the same concurrency."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

from bench import cpu, wire
from bench import workloads as ways
from bench.environment import Agent, Bench
from bench.harness import Action, Load, concurrent, pooled, rotations
from bench.plan import Plan
from bench.results import Section, Target, errors, ms, per_second, ratio, times
from host_agent.client import Client

BARE = "bare sudo"
AGENT = "agent, `Client` (httpx)"
LEAN = "agent, minimal client"
METHOD = (
    "{clients} client threads in the benchmark process, all started together, each doing "
    "{per_client} operations back to back; {rounds} rounds, the variants alternating (the "
    "order rotating). Bare: each thread starts the sudo argv itself. Agent: each thread has "
    "its own kept-alive connection, through `host_agent.client.Client` (what callers use) or "
    "through the minimal HTTP/1.1 client of bench/wire.py (so that less of the two shared "
    "cores goes to the load generator). Throughput is all operations over all wall time of a "
    "variant; latency is per operation. CPU per operation: the agent process itself, the "
    "processes started for the operation (sudo, the wrapper, the tool: the children of the "
    "agent, or of the benchmark for bare), and the benchmark process driving the load."
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
        for workload in found:
            variants: dict[str, list[Action]] = {
                BARE: [ways.bare(workload, bench.account)] * plan.clients,
                AGENT: [ways.keep_alive(client, workload) for client in clients],
                LEAN: [
                    ways.over_connection(c, workload.document, 200, workload.title)
                    for c in connections
                ],
            }
            measured = _interleaved(agent.pid, variants, plan)
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
            "CPU/op: agent",
            "sudo+wrapper+tool",
            "load generator",
        ),
        rows,
        targets,
    )


def _interleaved(
    agent_pid: int, variants: dict[str, list[Action]], plan: Plan
) -> dict[str, Measured]:
    loads: dict[str, list[Load]] = {name: [] for name in variants}
    spent = {name: (cpu.Times(0, 0), cpu.Times(0, 0)) for name in variants}
    for order in rotations(list(variants), plan.load_rounds):
        for name in order:
            agent_before, self_before = cpu.of(agent_pid), cpu.of_self()
            loads[name].append(concurrent(variants[name], plan.per_client))
            agent_used, self_used = cpu.of(agent_pid) - agent_before, cpu.of_self() - self_before
            spent[name] = (spent[name][0] + agent_used, spent[name][1] + self_used)
    measured = {}
    for name, parts in loads.items():
        load = pooled(parts)
        agent_used, self_used = spent[name]
        count = max(1, load.sample.n + load.sample.errors)
        measured[name] = Measured(
            load,
            {
                "agent": agent_used.own / count,
                "children": (agent_used.children + self_used.children) / count,
                "client": self_used.own / count,
            },
        )
    return measured


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
            "—" if name == BARE else ms(each.cpu["agent"]),
            ms(each.cpu["children"]),
            ms(each.cpu["client"]),
        )
        for name, each in measured.items()
    ]
