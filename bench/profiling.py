"""py-spy on the agent while it serves one kind of load: where its time goes (`--profile DIR`).

Operations (one at a time, then from concurrent clients) are sampled only
while a thread holds the GIL: the agent's own CPU, not its threads waiting for
children. Denied requests are sampled twice: whatever the threads do, so time
spent waiting for the audit log's lock and fsync shows (`denied`), and only
while a thread holds the GIL, where their CPU goes (`denied-cpu`). For each load DIR gets
py-spy's raw collapsed stacks (`NAME.txt`, for any flame graph tool) and the
functions most often on the stack (`NAME-top.txt`).
"""

from __future__ import annotations

import functools
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench import wire
from bench import workloads as ways
from bench.environment import REFUSED, Agent, Bench
from bench.harness import concurrent
from bench.plan import Plan
from host_agent.client import Client

PY_SPY = Path(sys.executable).parent / "py-spy"
RATE = 250  # samples per second
TOP = 25


def profile(
    bench: Bench,
    agent: Agent,
    client: Client,
    found: list[ways.Workload],
    plan: Plan,
    directory: Path,
) -> None:
    """Sample the agent under kept-alive operations, one at a time and from concurrent
    clients, and under denied requests."""
    directory.mkdir(parents=True, exist_ok=True)
    count = plan.rounds * plan.per_round
    with ExitStack() as stack:
        clients = [
            stack.enter_context(Client(bench.client_config(agent))) for _ in range(plan.clients)
        ]
        for workload in found:
            action = ways.keep_alive(client, workload)
            repeat = functools.partial(_repeat, action, count)
            _record(agent.pid, directory / f"one-at-a-time-{workload.key}", repeat, gil=True)
            actions = [ways.keep_alive(each, workload) for each in clients]
            load = functools.partial(concurrent, actions, plan.per_client * plan.load_rounds)
            _record(agent.pid, directory / f"concurrent-{workload.key}", load, gil=True)
    document = ways.denied_request(bench.pool.name)
    with ExitStack() as stack:
        context = bench.tls_context(REFUSED)
        connections = [
            stack.enter_context(wire.Connection(agent.port, context)) for _ in range(plan.clients)
        ]
        actions = [ways.over_connection(c, document, 403, "denied") for c in connections]
        denied = functools.partial(concurrent, actions, plan.denied_per_client * plan.denied_rounds)
        _record(agent.pid, directory / "denied", denied, gil=False)
        _record(agent.pid, directory / "denied-cpu", denied, gil=True)


def _repeat(action: Callable[[], None], count: int) -> None:
    for _ in range(count):
        action()


def _record(pid: int, stem: Path, load: Callable[[], object], *, gil: bool) -> None:
    raw = stem.with_suffix(".txt")
    with _sampling(pid, raw, gil=gil):
        load()
    stem.with_name(f"{stem.name}-top.txt").write_text(summary(raw))


@contextmanager
def _sampling(pid: int, output: Path, *, gil: bool) -> Iterator[None]:
    argv = [str(PY_SPY), "record", "--pid", str(pid), "--rate", str(RATE)]
    argv += ["--format", "raw", "--output", str(output), *(["--gil"] if gil else [])]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        process.wait(60)


def summary(raw: Path) -> str:
    """The functions most often on the stack (inclusive) and on top of it (self)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [f"{total} samples at {RATE}/s", "", "on the stack (inclusive):"]
    lines += [f"{n / total:6.1%}  {frame}" for frame, n in inclusive.most_common(TOP)]
    lines += ["", "on top of the stack (self):"]
    lines += [f"{n / total:6.1%}  {frame}" for frame, n in own.most_common(TOP)]
    return "\n".join(lines) + "\n"
