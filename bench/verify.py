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
from host_agent.audit.chain import stamp
from host_agent.audit.seal import (
    SEAL_EVENT,
    Epochs,
    VerificationKey,
    first_key,
    new_seed,
    next_key,
    seal_id,
    seal_mac,
)

TARGET = 300_000
# Records per sealed epoch in the sealed log: many more seals than 15-minute epochs give.
PER_EPOCH = 1_000
EPOCH_SECONDS = 60
METHOD = (
    "A log of {lines:,} records, each a copy of a real decision record from this run's "
    "agent with its own request id, chained as the agent chains them (seq, prev, hash); "
    "and the same with forward-secure seals: {per_epoch:,} records an epoch, then its seal "
    "record (MAC'd under the epoch's key), counted among the lines. Timed: the whole "
    "`host-agent audit verify [--seal-key KEY] FILE` command (interpreter start included; "
    "as an operator runs it, so in parts, one process for each of the {cpus} CPUs, the "
    "seals too), {runs} run(s) each; lines per second from the median."
)


def measure(bench: Bench, agent_log: Path, plan: Plan) -> Section:
    template = _template(agent_log)
    env = None if bench.env is None else {**os.environ, **bench.env}
    rows, rates = [], {}
    for name, write, options in (
        ("chain", _write_chain, []),
        ("chain and seals", _write_sealed_chain, ["--seal-key", "KEY"]),
    ):
        log = bench.root / "verify.jsonl"
        key = write(log, template, plan.audit_lines)
        argv = [sys.executable, "-m", "host_agent", "audit", "verify"]
        argv += [key if option == "KEY" else option for option in options] + [str(log)]
        runs = []
        for _ in range(plan.audit_runs):
            started = time.perf_counter()
            done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
            runs.append(time.perf_counter() - started)
            if done.returncode != 0 or f"OK: {plan.audit_lines} records" not in done.stdout:
                raise RuntimeError(
                    f"audit verify did not accept the log: {done.stdout}{done.stderr}"
                )
        seconds = statistics.median(runs)
        size = log.stat().st_size
        log.unlink()
        rates[name] = plan.audit_lines / seconds
        rows.append(
            (
                name,
                f"{plan.audit_lines:,}",
                f"{size / 1e6:,.0f} MB",
                f"{seconds:.2f} s",
                ", ".join(f"{r:.2f} s" for r in runs),
                f"{rates[name]:,.0f}/s",
            )
        )
    sealed = rates["chain and seals"]
    return Section(
        f"Growth: `audit verify` on a {plan.audit_lines:,}-line log",
        METHOD.format(
            lines=plan.audit_lines,
            runs=plan.audit_runs,
            per_epoch=PER_EPOCH,
            cpus=len(os.sched_getaffinity(0)),
        ),
        ("checked", "lines", "log size", "median time", "runs", "lines per second"),
        rows,
        [
            Target(
                "verify",
                f"`audit verify` ≥ {TARGET:,} lines per second ({plan.audit_lines:,} lines)",
                f"{rates['chain']:,.0f}/s",
                rates["chain"] >= TARGET,
            ),
            Target(
                "verify-seals",
                f"`audit verify --seal-key` ≥ {TARGET:,} lines per second",
                f"{sealed:,.0f}/s",
                sealed >= TARGET,
            ),
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


def _write_chain(path: Path, template: dict[str, Any], lines: int) -> str:
    """The chain AuditLog writes, without an fsync per line (a million would take minutes)."""
    prev = GENESIS
    with path.open("w", encoding="ascii") as out:
        for seq in range(1, lines + 1):
            entry = {**template, "request_id": f"{seq:016x}", "seq": seq, "prev": prev}
            entry["hash"] = prev = record_hash(entry)
            out.write(canonical(entry) + "\n")
    return ""


def _write_sealed_chain(path: Path, template: dict[str, Any], lines: int) -> str:
    """The chain with a seal record after every PER_EPOCH records, as AuditLog seals
    one-minute epochs (dated so that the last epoch has just ended); the verification
    key."""
    seed = new_seed()
    epochs = Epochs(int(time.time()) - (lines // PER_EPOCH + 2) * EPOCH_SECONDS, EPOCH_SECONDS)
    key, epoch, prev = first_key(seed), 0, GENESIS
    with path.open("w", encoding="ascii") as out:
        for seq in range(1, lines + 1):
            if seq % (PER_EPOCH + 1) == 0:
                entry = {"event": SEAL_EVENT, "seal_id": seal_id(seed), "epoch": epoch}
                entry |= {"through": epoch, "ts": stamp(epochs.end(epoch))}
                entry |= {"seq": seq, "prev": prev}
                entry["mac"] = seal_mac(key, entry)
                key, epoch = next_key(key), epoch + 1
            else:
                moment = epochs.begin(epoch) + (seq % (PER_EPOCH + 1)) * 0.01
                entry = {**template, "request_id": f"{seq:016x}", "ts": stamp(moment)}
                entry |= {"seq": seq, "prev": prev}
            entry["hash"] = prev = record_hash(entry)
            out.write(canonical(entry) + "\n")
    return str(VerificationKey(seed, epochs))
