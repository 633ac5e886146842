"""`host-agent audit verify` on a long log: lines checked per second."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.environment import Bench
from bench.plan import Plan
from bench.results import Section, Target
from host_agent.audit import GENESIS, canonical, record_hash

METHOD = (
    "A log of {lines:,} records, each a copy of a real decision record from this run's "
    "agent with its own request id, chained as the agent chains them (seq, prev, hash). "
    "Timed: the whole `host-agent audit verify FILE` command (interpreter start included), "
    "{runs} run(s); lines per second from the median."
)


def measure(bench: Bench, agent_log: Path, plan: Plan) -> Section:
    log = bench.root / "verify.jsonl"
    _write_chain(log, _template(agent_log), plan.audit_lines)
    argv = [sys.executable, "-m", "host_agent", "audit", "verify", str(log)]
    env = None if bench.env is None else {**os.environ, **bench.env}
    runs = []
    for _ in range(plan.audit_runs):
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        runs.append(time.perf_counter() - started)
        if done.returncode != 0 or f"OK: {plan.audit_lines} records" not in done.stdout:
            raise RuntimeError(f"audit verify did not accept the log: {done.stdout}{done.stderr}")
    seconds = statistics.median(runs)
    size = log.stat().st_size
    log.unlink()
    rate = plan.audit_lines / seconds
    return Section(
        f"Growth: `audit verify` on a {plan.audit_lines:,}-line log",
        METHOD.format(lines=plan.audit_lines, runs=plan.audit_runs),
        ("lines", "log size", "median time", "runs", "lines per second"),
        [
            (
                f"{plan.audit_lines:,}",
                f"{size / 1e6:,.0f} MB",
                f"{seconds:.2f} s",
                ", ".join(f"{r:.2f} s" for r in runs),
                f"{rate:,.0f}/s",
            )
        ],
        [
            Target(
                "verify",
                f"`audit verify` lines per second ({plan.audit_lines:,} lines)",
                f"{rate:,.0f}/s",
            )
        ],
    )


def _template(agent_log: Path) -> dict[str, Any]:
    """The first allowed decision the benchmark's agent audited, without its chain fields."""
    with agent_log.open() as lines:
        for line in lines:
            record = json.loads(line)
            if record.get("event") == "decision" and record.get("decision") == "allow":
                return {k: v for k, v in record.items() if k not in ("seq", "prev", "hash")}
    raise RuntimeError(f"{agent_log} holds no allowed decision to copy")


def _write_chain(path: Path, template: dict[str, Any], lines: int) -> None:
    """The chain AuditLog writes, without an fsync per line (a million would take minutes)."""
    prev = GENESIS
    with path.open("w", encoding="ascii") as out:
        for seq in range(1, lines + 1):
            entry = {**template, "request_id": f"{seq:016x}", "seq": seq, "prev": prev}
            entry["hash"] = prev = record_hash(entry)
            out.write(canonical(entry) + "\n")
