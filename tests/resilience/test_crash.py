"""kill -9 under load, many times, on a real `host-agent serve` process running real zfs
snapshots through sudo and the wrappers.

Each snapshot that exists on the pool is an operation that ran, so the invariant can be
checked from the outside: every one has its allow decision in the audit log, the log
holds no torn line but possibly the last, and after a restart the chain verifies. An
operation cut off mid-run shows as a decision without a result, never as missing.
"""

from __future__ import annotations

import json
import random
import signal
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from host_agent.audit import verify
from host_agent.config import Config
from tests.served import agent_process
from tests.support import Pki, client_context
from tests.system import Pool, System, run

pytestmark = pytest.mark.root

ROUNDS = 12
CLIENTS = 4
PREFIX = "crash-"


@dataclass
class Tally:
    """What the clients saw, and what the kills did to the log."""

    sent: int = 0
    answered: Counter[int] = field(default_factory=Counter)
    no_answer: int = 0
    torn_tails: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, status: int | None) -> None:
        with self.lock:
            self.sent += 1
            if status is None:
                self.no_answer += 1
            else:
                self.answered[status] += 1


def snapshot_load(
    port: int, context: ssl.SSLContext, dataset: str, name: str, tally: Tally
) -> None:
    """Snapshots one after another until the agent is gone."""
    with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=context, timeout=30) as http:
        for number in range(10_000):
            body = {"kind": "zfs", "resource": dataset, "args": ["snapshot", f"{name}-{number}"]}
            try:
                status: int | None = http.post("/host/op", json=body).status_code
            except httpx.HTTPError:
                status = None
            tally.count(status)
            if status is None:
                return


def lines(log: Path) -> list[str]:
    return log.read_text(encoding="utf-8").splitlines()


def test_kill_9_under_load_never_runs_an_operation_without_its_decision(
    system: System, pool: Pool, pki: Pki, tmp_path: Path
) -> None:
    config = system.agent_config(pki, tmp_path)
    seed = time.time_ns()
    cert, key = pki.client("librarian-1")
    context = client_context(pki.ca, cert, key)
    dataset = f"{pool.name}/crash"
    run("zfs", "create", dataset)
    try:
        crash_under_load(config, context, dataset, seed)
    finally:
        run("zfs", "destroy", "-r", dataset)


def crash_under_load(config: Config, context: ssl.SSLContext, dataset: str, seed: int) -> None:
    """Kill the agent at random moments while clients snapshot `dataset`, then hold the
    audit log up against the snapshots that exist."""
    log = config.audit.log_path
    chance = random.Random(seed)
    tally = Tally()

    for round_number in range(ROUNDS):
        with agent_process(config.source) as (process, port):
            clients = [
                threading.Thread(
                    target=snapshot_load,
                    args=(port, context, dataset, f"{PREFIX}{round_number}-{n}", tally),
                )
                for n in range(CLIENTS)
            ]
            for client in clients:
                client.start()
            time.sleep(chance.uniform(0.2, 1.5))
            process.send_signal(signal.SIGKILL)
            for client in clients:
                client.join(60)
        # Only the very last line may be torn: every earlier one is a whole record.
        written = lines(log)
        for line in written[:-1]:
            json.loads(line)
        try:
            json.loads(written[-1])
        except json.JSONDecodeError:
            tally.torn_tails += 1

    # A clean start repairs a torn tail; then the whole chain must verify.
    with agent_process(config.source) as (process, _):
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    checked = verify([log])
    assert checked.ok, f"seed {seed}: {checked.error}"

    records = [json.loads(line) for line in lines(log)]
    decisions: dict[str, dict[str, Any]] = {}
    results: dict[str, dict[str, Any]] = {}
    for record in records:
        if record["event"] == "decision" and record["args"][0] == "snapshot":
            decisions[record["request_id"]] = record
        elif record["event"] == "result":
            results[record["request_id"]] = record
    decided = {
        record["args"][1]: request_id
        for request_id, record in decisions.items()
        if record["decision"] == "allow"
    }
    made = [
        name.split("@", 1)[1]
        for name in run(
            "zfs", "list", "-H", "-t", "snapshot", "-o", "name", "-r", dataset
        ).stdout.split()
        if name.startswith(f"{dataset}@{PREFIX}")
    ]
    ran_undecided = [name for name in made if name not in decided]
    assert ran_undecided == [], f"seed {seed}: ran without a decision record"
    succeeded = {
        decisions[request_id]["args"][1]
        for request_id, result in results.items()
        if request_id in decisions and result["outcome"] == "ok"
    }
    assert succeeded <= set(made), f"seed {seed}: a result says ok for a missing snapshot"
    assert tally.answered[200] <= len(succeeded)  # every 200 a client saw is on record
    cut_off = [name for name, request_id in decided.items() if request_id not in results]
    assert tally.sent > ROUNDS * CLIENTS and len(made) > ROUNDS
    print(
        f"\nkill -9 under load (seed {seed}): {ROUNDS} kills, {tally.sent} requests, "
        f"{dict(tally.answered)} answered, {tally.no_answer} cut off by the kill; "
        f"{len(made)} snapshots made, {len(decided)} allow decisions, "
        f"{len(cut_off)} decisions without a result (cut off mid-run, "
        f"{sum(name in made for name in cut_off)} of them had run), "
        f"{tally.torn_tails} torn last lines repaired; {len(records)} records verify; "
        "0 operations without a decision record"
    )
