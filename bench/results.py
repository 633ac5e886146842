"""What each benchmark hands the report: a table, and the targets it checked."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.harness import Sample


@dataclass(frozen=True)
class Target:
    """One requirement from the issue, as measured in this run."""

    key: str  # which finding (report.FINDINGS) explains a miss
    goal: str
    measured: str
    # None: to be reported, with no threshold to meet.
    met: bool | None = None
    # Set by the report for missed targets: what profiling found and what is (not) ours.
    finding: str = ""


@dataclass(frozen=True)
class Section:
    title: str
    # How it was measured, in a few sentences (markdown).
    method: str
    headers: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def ms(seconds: float) -> str:
    return "—" if math.isnan(seconds) else f"{seconds * 1000:.2f} ms"


def us(seconds: float) -> str:
    return "—" if math.isnan(seconds) else f"{seconds * 1e6:.1f} µs"


def times(ratio: float, digits: int = 2) -> str:
    """A ratio; targets show three digits, so that one just over its line does not look on it."""
    return "—" if math.isnan(ratio) else f"{ratio:.{digits}f}x"


def per_second(rate: float) -> str:
    return f"{rate:,.0f}/s"


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def errors(sample: Sample) -> str:
    """The failure count, with the first failure's message when there was one."""
    if not sample.errors:
        return "0"
    return f"{sample.errors} (first: {sample.first_error})"


def mb(size: int) -> str:
    """Bytes in MB (10^6 bytes), the unit of the memory target."""
    return f"{size / 1e6:.1f} MB"
