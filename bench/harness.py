"""Timing and statistics: interleaved rounds, concurrent load, medians and p99.

These machines are shared and noisy, so nothing is measured "A then B": every
variant runs a little in each round, in an order that rotates from round to
round (ABC, BCA, CAB, ...), and figures are pooled over the rounds.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

Action = Callable[[], None]
T = TypeVar("T")


class WorkloadFailed(Exception):
    """One operation did not do what it should (wrong status, exit code); counted, not timed."""


@dataclass(frozen=True)
class Sample:
    """Durations in seconds of one variant, pooled over rounds; failed operations counted apart."""

    durations: tuple[float, ...]
    errors: int = 0
    # What went wrong the first time, for the report.
    first_error: str | None = None

    @property
    def n(self) -> int:
        return len(self.durations)

    @property
    def median(self) -> float:
        return statistics.median(self.durations) if self.durations else math.nan

    @property
    def p99(self) -> float:
        return percentile(self.durations, 99) if self.durations else math.nan


@dataclass(frozen=True)
class Load:
    """Operations done by concurrent clients in `seconds` of wall time."""

    sample: Sample
    seconds: float

    @property
    def throughput(self) -> float:
        return self.sample.n / self.seconds


def percentile(values: tuple[float, ...] | list[float], q: float) -> float:
    """Nearest-rank percentile: a value that was really measured, never an interpolation."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class _Tally:
    """Durations and failures of one variant, as they come in (shared by client threads)."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self.errors = 0
        self.first_error: str | None = None
        self._lock = threading.Lock()

    def run(self, action: Action) -> None:
        started = time.perf_counter()
        try:
            action()
        except (WorkloadFailed, OSError) as exc:  # OSError: the connection broke; counted too
            with self._lock:
                self.errors += 1
                self.first_error = self.first_error or str(exc)
            return
        took = time.perf_counter() - started
        with self._lock:
            self.durations.append(took)

    def sample(self) -> Sample:
        return Sample(tuple(self.durations), self.errors, self.first_error)


def rotations(names: list[T], rounds: int) -> list[list[T]]:
    """The order of variants in each round: ABC, BCA, CAB, ABC, ..."""
    return [names[r % len(names) :] + names[: r % len(names)] for r in range(rounds)]


def interleaved(
    variants: Mapping[str, Action], *, rounds: int, per_round: int, warmup: int = 3
) -> dict[str, Sample]:
    """Run each variant `per_round` times in every round, one after the other, rotating."""
    warm = _Tally()
    for action in variants.values():
        for _ in range(warmup):
            warm.run(action)
    tallies = {name: _Tally() for name in variants}
    for order in rotations(list(variants), rounds):
        for name in order:
            for _ in range(per_round):
                tallies[name].run(variants[name])
    return {name: tally.sample() for name, tally in tallies.items()}


def concurrent(clients: list[Action], per_client: int) -> Load:
    """Every client (one thread each) runs its action `per_client` times, all at once."""
    tally = _Tally()
    start = threading.Barrier(len(clients) + 1)

    def client(action: Action) -> None:
        start.wait()
        for _ in range(per_client):
            tally.run(action)

    threads = [threading.Thread(target=client, args=(action,)) for action in clients]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return Load(tally.sample(), time.perf_counter() - began)


def pooled(loads: list[Load]) -> Load:
    """Several loads of one variant as one: all operations over all their wall time."""
    durations = tuple(d for load in loads for d in load.sample.durations)
    errors = sum(load.sample.errors for load in loads)
    first = next((load.sample.first_error for load in loads if load.sample.first_error), None)
    return Load(Sample(durations, errors, first), sum(load.seconds for load in loads))
