"""One operation at a time: the agent against bare sudo and against ssh, interleaved.

Every variant runs the same sudo argv. `bare` is the floor (process start,
sudo, the wrapper, the tool); the agent adds mutual TLS, policy, two fsync'd
audit records and JSON; ssh adds its own connection, authentication, session
and the account's shell.
"""

from __future__ import annotations

from contextlib import ExitStack

from bench import workloads as ways
from bench.environment import Agent, Bench
from bench.harness import Action, Sample, interleaved
from bench.launcher import Launcher
from bench.plan import Plan
from bench.results import Section, Target, errors, ms, ratio, times
from bench.sshd import Ssh
from host_agent.client import Client

TOOL, WRAPPER = "the tool alone, as root", "the wrapper alone, as root"
BARE, KEEP_ALIVE, FRESH = "bare sudo", "agent, kept-alive connection", "agent, fresh connection"
SSH_FRESH, SSH_MUX = "ssh, fresh connection", "ssh, multiplexed (ControlMaster)"
METHOD = (
    "One client, one operation at a time. Each round runs every variant {per_round} times "
    "in a row, the order rotating from round to round; {rounds} rounds. The kept-alive "
    "variant is `host_agent.client.Client` (httpx) on one connection; the fresh one opens a "
    "TCP connection and does a full TLS 1.3 handshake with a client certificate for every "
    "operation (no session resumption), from Python. ssh is the OpenSSH client started for "
    "every operation, as an operator's script does."
)


def measure(
    bench: Bench, agent: Agent, ssh: Ssh, client: Client, found: list[ways.Workload], plan: Plan
) -> Section:
    rows: list[tuple[str, ...]] = []
    targets: list[Target] = []
    context = bench.tls_context()
    with ExitStack() as stack:
        for workload in found:
            stack.enter_context(ssh.master(workload.key))
        launcher = stack.enter_context(Launcher(bench.account))
        for workload in found:
            variants: dict[str, Action] = {
                TOOL: ways.as_root(workload.tool, f"{workload.title}: the tool"),
                WRAPPER: ways.as_root(workload.wrapper, f"{workload.title}: the wrapper"),
                BARE: ways.bare(workload, launcher),
                KEEP_ALIVE: ways.keep_alive(client, workload),
                FRESH: ways.fresh(agent.port, context, workload),
                SSH_FRESH: ways.command(ssh.fresh(workload.key), workload.title),
                SSH_MUX: ways.command(ssh.multiplexed(workload.key), workload.title),
            }
            samples = interleaved(variants, rounds=plan.rounds, per_round=plan.per_round)
            rows += _rows(workload.title, samples)
            targets += _targets(workload, samples)
    return Section(
        "Latency: one operation at a time",
        METHOD.format(per_round=plan.per_round, rounds=plan.rounds),
        ("workload", "variant", "median", "p99", "n", "failed", "÷ tool", "÷ bare", "÷ ssh fresh"),
        rows,
        targets,
    )


def _rows(title: str, samples: dict[str, Sample]) -> list[tuple[str, ...]]:
    tool, bare, ssh = samples[TOOL], samples[BARE], samples[SSH_FRESH]
    return [
        (
            title,
            name,
            ms(sample.median),
            ms(sample.p99),
            str(sample.n),
            errors(sample),
            times(ratio(sample.median, tool.median)),
            times(ratio(sample.median, bare.median)),
            times(ratio(sample.median, ssh.median)),
        )
        for name, sample in samples.items()
    ]


def _targets(workload: ways.Workload, samples: dict[str, Sample]) -> list[Target]:
    found = []
    if workload.key == "zfs-list":
        tool = samples[TOOL].median
        wrapper = ratio(samples[WRAPPER].median, tool)
        found.append(
            Target(
                "wrapper",
                "the wrapper alone ≤ 1.5x the tool alone (`zfs list`, as root)",
                f"{times(wrapper, 3)} (median; {ms(samples[WRAPPER].median)} vs {ms(tool)})",
                wrapper <= 1.5,
            )
        )
        through = ratio(samples[KEEP_ALIVE].median, tool)
        found.append(
            Target(
                "keep-alive-tool",
                "keep-alive `zfs list` through the agent ≤ 3x the tool alone, and ahead of ssh "
                "with ControlMaster",
                f"{times(through, 3)} (median); "
                f"{times(ratio(samples[KEEP_ALIVE].median, samples[SSH_MUX].median), 3)} of ssh",
                through <= 3 and samples[KEEP_ALIVE].median < samples[SSH_MUX].median,
            )
        )
        kept = ratio(samples[KEEP_ALIVE].median, samples[BARE].median)
        kept_p99 = ratio(samples[KEEP_ALIVE].p99, samples[BARE].p99)
        found.append(
            Target(
                "keep-alive",
                "keep-alive mTLS round trip ≤ 1.25x bare for `zfs list`",
                f"{times(kept, 3)} (median; p99 {times(kept_p99, 3)})",
                kept <= 1.25,
            )
        )
    fresh = ratio(samples[FRESH].median, samples[SSH_FRESH].median)
    found.append(
        Target(
            "fresh",
            f"fresh mTLS connection + operation ≤ 1/3 of fresh ssh ({workload.title})",
            f"{times(fresh, 3)} of ssh (median)",
            fresh <= 1 / 3,
        )
    )
    return found
