"""CPU time spent, and by whom: the agent, the programs it starts, the client.

Throughput on two shared cores is bounded by CPU per operation, so the
concurrency figures say where each variant's CPU goes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Times:
    """CPU seconds (user + system) of a process itself, and of its waited-for children."""

    own: float
    children: float

    def __sub__(self, other: Times) -> Times:
        return Times(self.own - other.own, self.children - other.children)

    def __add__(self, other: Times) -> Times:
        return Times(self.own + other.own, self.children + other.children)


def of(pid: int) -> Times:
    """From /proc/PID/stat: utime, stime, cutime, cstime (fields 14-17)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    utime, stime, cutime, cstime = (int(value) / _TICK for value in fields[11:15])
    return Times(utime + stime, cutime + cstime)


def of_self() -> Times:
    times = os.times()
    return Times(times.user + times.system, times.children_user + times.children_system)
