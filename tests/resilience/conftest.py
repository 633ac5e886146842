"""What the resilience tests count (inputs by category, answers by status, ...), shown in
pytest's terminal summary so a run states its own figures (docs/reliability.md)."""

from __future__ import annotations

from collections import Counter

import pytest


class Figures:
    """Named tallies the tests add to while they run."""

    def __init__(self) -> None:
        self.tables: dict[str, Counter[str]] = {}

    def add(self, table: str, key: str, count: int = 1) -> None:
        self.tables.setdefault(table, Counter())[key] += count


_FIGURES = pytest.StashKey[Figures]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_FIGURES] = Figures()


@pytest.fixture(scope="session")
def figures(pytestconfig: pytest.Config) -> Figures:
    return pytestconfig.stash[_FIGURES]


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    tables = config.stash[_FIGURES].tables
    if not tables:
        return
    terminalreporter.section("resilience figures")
    for table, counts in tables.items():
        terminalreporter.write_line(f"{table}:")
        for key, count in sorted(counts.items()):
            terminalreporter.write_line(f"    {key}: {count}")
