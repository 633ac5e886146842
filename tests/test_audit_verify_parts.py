"""`audit verify --processes`: a file checked in parts at once gives the verdict one
process gives, for every file and every edit."""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from host_agent.audit import AuditLog, canonical, record_hash, verify
from host_agent.cli import main

# The module itself (the package exports its function under the same name).
verify_module = importlib.import_module("host_agent.audit.verify")


@pytest.fixture(autouse=True)
def split_every_file() -> Iterator[None]:
    """Files of any size split (the real threshold keeps small files in one process)."""
    with mock.patch.object(verify_module, "SPLIT_SIZE", 1):
        yield


def _write(path: Path, count: int, start: int = 0) -> None:
    log = AuditLog(path, clock=lambda: 1_700_000_000.0)
    log.open()
    try:
        for n in range(start, start + count):
            log.append({"event": "decision", "n": n, "text": "x" * (n % 7)})
    finally:
        log.close()


# Where `_recording` notes which process checked which part.
_PIDS: list[Path] = []
_CHECK_PART = verify_module._check_part


def _recording(fd: int, start: int, stop: int | None) -> Any:
    with _PIDS[0].open("a") as out:
        out.write(f"{os.getpid()} {start} {stop}\n")
    return _CHECK_PART(fd, start, stop)


def test_each_part_is_checked_by_a_process_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, 40)
    pids = tmp_path / "pids"
    with (
        mock.patch.object(verify_module, "_check_part", _recording),
        mock.patch(f"{__name__}._PIDS", [pids]),
    ):
        result = verify([path], processes=3)
    assert result.ok and result.records == 40
    rows = [line.split() for line in pids.read_text().splitlines()]
    assert len(rows) == 3
    assert str(os.getpid()) not in {row[0] for row in rows}
    # The parts join up at line starts and cover the file.
    starts = sorted(int(row[1]) for row in rows)
    assert starts[0] == 0
    content = path.read_bytes()
    assert all(content[at - 1 : at] == b"\n" for at in starts[1:])


def test_a_file_of_fewer_lines_than_processes_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, 2)
    assert verify([path], processes=8) == verify([path], processes=1)
    assert verify([path], processes=8).records == 2


# Edits anywhere in a log of rotated files: (file index, line index, edit).
def _flip(line: bytes, spot: int) -> list[bytes]:
    spot %= len(line)
    return [line[:spot] + bytes([line[spot] ^ 0x01]) + line[spot + 1 :]]


def _drop(line: bytes, spot: int) -> list[bytes]:
    return []


def _tear(line: bytes, spot: int) -> list[bytes]:
    return [line[: spot % len(line)]]


def _duplicate(line: bytes, spot: int) -> list[bytes]:
    return [line, line]


def _forge(line: bytes, spot: int) -> list[bytes]:
    # A record with a hash of its own that claims the seq of the line it replaces.
    record = json.loads(line)
    record["n"] = -1
    record["hash"] = record_hash(record)
    return [(canonical(record) + "\n").encode()]


def _keep(line: bytes, spot: int) -> list[bytes]:
    return [line]


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=3),
    edit=st.sampled_from([_keep, _flip, _drop, _tear, _duplicate, _forge]),
    where=st.tuples(st.integers(0, 2), st.integers(0, 40), st.integers(0, 10_000)),
    processes=st.integers(min_value=2, max_value=5),
    no_final_newline=st.booleans(),
)
def test_parts_at_once_give_one_process_s_verdict(
    tmp_path_factory: Any,
    sizes: list[int],
    edit: Any,
    where: tuple[int, int, int],
    processes: int,
    no_final_newline: bool,
) -> None:
    directory = tmp_path_factory.mktemp("parts")
    live = directory / "audit.jsonl"
    _write(live, sum(sizes))
    lines = live.read_bytes().splitlines(keepends=True)
    files, at = [], 0
    for number, size in enumerate(sizes):
        path = directory / f"part{number}.jsonl"
        chunk = lines[at : at + size]
        at += size
        which, line, spot = where
        if which == number and chunk:
            index = line % len(chunk)
            chunk[index : index + 1] = edit(chunk[index], spot)
        content = b"".join(chunk)
        path.write_bytes(content[:-1] if no_final_newline and content else content)
        files.append(path)
    assert verify(files, processes=processes) == verify(files, processes=1)


def test_the_command_takes_processes_from_1_to_64(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, 5)
    assert main(["audit", "verify", "--processes", "2", str(path)]) == 0
    assert capsys.readouterr().out.startswith("OK: 5 records")
    for wrong in ("0", "65", "two", "-1"):
        with pytest.raises(SystemExit) as refused:
            main(["audit", "verify", "--processes", wrong, str(path)])
        assert refused.value.code == 2
        assert "--processes: a whole number from 1 to 64" in capsys.readouterr().err
