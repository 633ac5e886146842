"""`python -m bench`: set everything up, run every benchmark, write docs/benchmarks.md.

Root only (a service account, sudoers, zfs-fuse, sshd); bench/run.sh installs
what it needs first. `--quick` is a smoke run of about a minute.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import time
from pathlib import Path

from bench import (
    concurrency,
    denied,
    fleet,
    growth,
    latency,
    memory,
    profiling,
    report,
    sudo_settings,
    verify,
)
from bench.environment import CALLER_UNIX_USER, prepared
from bench.plan import FULL, QUICK
from bench.results import Section
from bench.sshd import running_sshd
from bench.workloads import workloads
from host_agent.client import Client

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    options = _parser().parse_args(argv)
    if os.geteuid() != 0:
        print("bench: run as root (it creates a user, sudoers, a zfs pool, sshd)", file=sys.stderr)
        return 2
    # The approval benchmark creates approvals no one is told about, on purpose.
    logging.getLogger("host_agent").setLevel(logging.ERROR)
    plan = QUICK if options.quick else FULL
    started, began = dt.datetime.now(dt.UTC), time.monotonic()
    machine = report.machine()
    sections: list[Section] = []
    with prepared(options.agent_tree) as bench, bench.agent("agent") as agent:
        with Client(bench.client_config(agent)) as client:
            found = workloads(client, bench.pool.name, agent.config, CALLER_UNIX_USER)
            commands = {workload.key: workload.argv for workload in found}
            with running_sshd(bench.root / "ssh", bench.system.user, commands) as ssh:
                _step("latency")
                sections.append(latency.measure(bench, agent, ssh, client, found, plan))
            _step("sudo's settings")
            sections.append(sudo_settings.measure(bench, found, plan))
            if options.profile is not None:
                _step(f"profiling into {options.profile}")
                profiling.profile(bench, agent, client, found, plan, options.profile)
        _step("concurrency")
        sections.append(concurrency.measure(bench, agent, found, plan))
        _step("denied requests")
        with bench.agent("sealed", sealed=True) as sealed:
            sections.append(denied.measure(bench, agent, sealed, plan))
        _step("memory")
        sections.append(memory.measure(bench, plan))
        _step("rules")
        sections.append(growth.rules(bench, plan))
        _step("approvals")
        sections.append(growth.approvals(bench, plan))
        _step("fleet")
        sections.append(fleet.measure(bench, plan))
        _step("audit verify")
        sections.append(verify.measure(bench, agent.config.audit.log_path, plan))
    run = report.Run(plan, started, time.monotonic() - began, machine, options.agent_tree)
    options.output.write_text(report.render(run, sections))
    _step(f"wrote {options.output}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small n: a smoke run")
    parser.add_argument(
        "--output", type=Path, default=REPO / "docs" / "benchmarks.md", help="the report"
    )
    parser.add_argument(
        "--agent-tree",
        type=Path,
        help="run the agent from this checkout's host_agent (e.g. a candidate fix)",
    )
    parser.add_argument(
        "--profile", type=Path, help="also sample the agent with py-spy, into this directory"
    )
    return parser


def _step(what: str) -> None:
    print(f"bench {time.strftime('%H:%M:%S')} {what}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
