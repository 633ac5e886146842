"""What the seal and checkpoint checks need of one part of a log, for `audit verify
--processes`: gathered by the process that reads the part, replayed in order by the
one that holds the checks, so that a log split across CPUs is held to every rule one
process holds it to. The records the checks look at one by one (seals, the log's
first record, the records a witness named) are kept whole, as their lines (a record
nested deeper than pickle goes could not cross between processes; its line can);
between them the seal check needs only how many records there were and the span of
their dates.

The log is the service account's and root verifies it, so what a part keeps is
bounded: a log of nothing but forged seals would otherwise be held whole in memory.
Past the bound the part gives its trail up, and the file is checked in one process,
which holds one line at a time."""

from __future__ import annotations

from typing import Any

from host_agent.audit.checkpoint_check import CheckpointCheck
from host_agent.audit.seal_check import Dated, SealCheck

# A line of the part, and the record there, or the records from there to the next step.
Step = tuple[int, dict[str, Any] | Dated]
# The same as a part's process keeps it: the record as its line.
Kept = tuple[int, bytes | Dated]
# What the parts of a file may keep whole between them, as lines: an epoch's seal is
# ~400 bytes, so ~40,000 seals (400 days of 15-minute epochs, 11 hours of the shortest,
# a second each).
BUDGET = 16 << 20


class Trail:
    """Fed a part's records in order from its first line; `dated` when seals are
    checked, `named` the seqs witnesses hold checkpoints of, `parts` how many parts
    share the budget. `kept` is None once what it keeps outgrows its share."""

    def __init__(self, *, dated: bool, named: frozenset[int], parts: int) -> None:
        self.kept: list[Kept] | None = []
        self._dated = dated
        self._named = named
        self._budget = BUDGET // parts
        self._lines = 0
        self._run: Dated | None = None
        self._kept = 0  # the bytes of the lines kept

    def feed(self, record: dict[str, Any], line: bytes) -> None:
        """Take the part's next record, read from `line`."""
        self._lines += 1
        if self.kept is None:
            return
        if (self._dated and SealCheck.looks_at(record)) or record["seq"] in self._named:
            self._kept += len(line)
            if self._kept > self._budget:
                self.kept = self._run = None
                return
            self.kept.append((self._lines, line))
            self._run = None
        elif self._dated:
            if self._run is None:
                self._run = Dated()
                self.kept.append((self._lines, self._run))
            self._run.add(record)


def replay(
    steps: list[Step], seals: SealCheck | None, witnessed: CheckpointCheck | None
) -> tuple[int, str, dict[str, Any]] | None:
    """Feed a part's `steps` to the checks in order; the first problem, with its line
    and its record."""
    for line, step in steps:
        if isinstance(step, Dated):
            if seals is not None:
                seals.take(step)
            continue
        for check in (seals, witnessed):
            problem = None if check is None else check.feed(step)
            if problem is not None:
                return line, problem, step
    return None
