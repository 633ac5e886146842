"""How much of everything a run does: the full run (~15 minutes) or a quick smoke run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    name: str
    # Sequential latency: rounds x operations per variant per round.
    rounds: int
    per_round: int
    # Concurrent clients: rounds x operations per client per round.
    clients: int
    load_rounds: int
    per_client: int
    # Denied requests: rounds x requests per client per round; requests of one client alone.
    denied_rounds: int
    denied_per_client: int
    denied_alone: int
    # Agent RSS read after this many requests (the last one is the total).
    memory_checkpoints: tuple[int, ...]
    rule_counts: tuple[int, ...]
    decisions: int  # decide() calls timed per rule count
    approval_records: int
    approval_cycles: int  # create + approve + consume, per store size
    audit_lines: int
    audit_runs: int
    # Simulated agents sharing the fleet's store, and how long they run.
    fleet_agents: int = 100
    fleet_seconds: float = 10.0


FULL = Plan(
    name="full",
    rounds=10,
    per_round=20,
    clients=16,
    load_rounds=6,
    per_client=12,
    denied_rounds=5,
    denied_per_client=250,
    denied_alone=250,
    memory_checkpoints=(1_000, 10_000, 20_000, 30_000, 40_000, 50_000),
    rule_counts=(10, 1_000, 10_000),
    decisions=2_000,
    approval_records=100_000,
    approval_cycles=200,
    audit_lines=1_000_000,
    audit_runs=3,
)

QUICK = Plan(
    name="quick",
    rounds=2,
    per_round=5,
    clients=16,
    load_rounds=2,
    per_client=3,
    denied_rounds=2,
    denied_per_client=30,
    denied_alone=20,
    memory_checkpoints=(200, 1_000, 2_000),
    rule_counts=(10, 1_000, 10_000),
    decisions=100,
    approval_records=5_000,
    approval_cycles=10,
    audit_lines=20_000,
    audit_runs=1,
    fleet_seconds=2.0,
)
