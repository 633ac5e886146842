"""`audit verify --processes`: a file checked in parts at once gives the verdict one
process gives, for every file and every edit, with seals and checkpoints checked
too: against the edits of an attacker who recomputes the chain after them."""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from host_agent.audit import AuditLog, canonical, record_hash, verify
from host_agent.audit.chain import stamp
from host_agent.audit.checkpoint import Checkpoint, SigningKey, open_note
from host_agent.audit.checkpoint_check import dedupe
from host_agent.audit.seal import (
    Epochs,
    SealKey,
    VerificationKey,
    first_key,
    new_seed,
    next_key,
    seal_mac,
)
from host_agent.cli import main

# The module itself (the package exports its function under the same name).
verify_module = importlib.import_module("host_agent.audit.verify")
trail_module = importlib.import_module("host_agent.audit.trail")


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


# Where `_recording` notes which process checked which part, and whether it gave its
# trail up.
_PIDS: list[Path] = []
_CHECK_PART = verify_module._check_part


def _recording(fd: int, start: int, stop: int | None, *checks: Any) -> Any:
    part = _CHECK_PART(fd, start, stop, *checks)
    with _PIDS[0].open("a") as out:
        out.write(f"{os.getpid()} {start} {stop} {part.kept is None}\n")
    return part


def _parts_checked(pids: Path, path: Path) -> list[list[str]]:
    """Which processes checked which parts of `path` (as `_recording` noted them); the
    parts join up at line starts and cover the file."""
    rows = [line.split() for line in pids.read_text().splitlines()]
    assert str(os.getpid()) not in {row[0] for row in rows}
    starts = sorted(int(row[1]) for row in rows)
    assert starts[0] == 0
    content = path.read_bytes()
    assert all(content[at - 1 : at] == b"\n" for at in starts[1:])
    return rows


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
    assert len(_parts_checked(pids, path)) == 3


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


# --- seals and checkpoints, checked in parts ---------------------------------------

START = 1_900_000_000
EPOCH = 60


@dataclass(frozen=True)
class Kept:
    """A real log, sealed every epoch and checkpointed every 10 records, rotated twice:
    each file's lines (oldest first), and what its operator and its witness keep."""

    files: list[list[bytes]]
    seal_key: VerificationKey
    checkpoints: list[Checkpoint]
    now: float


@pytest.fixture(scope="module")
def kept(tmp_path_factory: Any) -> Kept:
    directory = tmp_path_factory.mktemp("kept")
    seed = new_seed()
    seal_key = VerificationKey(seed, Epochs(START, EPOCH))
    SealKey.create(directory / "seal.key", seed, seal_key.epochs, None)
    signer = SigningKey.create(directory / "checkpoint.key", "host-agent/test/audit", None)
    notes: list[str] = []
    now = [float(START)]
    path = directory / "audit.jsonl"
    log = AuditLog(
        path,
        clock=lambda: now[0],
        seal=SealKey.load(directory / "seal.key"),
        checkpoints=(signer, lambda note, _: notes.append(note)),
    )
    log.open()
    names = ["audit.jsonl.2", "audit.jsonl.1", "audit.jsonl"]
    for name in names:
        for n in range(30):
            log.append({"event": "decision", "n": n})
            now[0] += 7
            if n % 10 == 9:
                log.checkpoint()
        if name != path.name:
            path.rename(directory / name)  # logrotate's move: the next append reopens
    log.close()
    return Kept(
        [(directory / name).read_bytes().splitlines(keepends=True) for name in names],
        seal_key,
        dedupe([open_note(note, signer.verifier) for note in notes]),
        now[0],
    )


def _verify_kept(files: list[Path], kept: Kept, processes: int, seals: bool, points: bool) -> Any:
    return verify(
        files,
        seal_key=kept.seal_key if seals else None,
        checkpoints=kept.checkpoints if points else None,
        now=kept.now,
        processes=processes,
    )


def _write_files(directory: Path, files: list[list[bytes]]) -> list[Path]:
    paths = []
    for number, lines in enumerate(files):
        path = directory / f"audit.jsonl.{len(files) - 1 - number}"
        path.write_bytes(b"".join(lines))
        paths.append(path)
    return paths


def test_the_kept_log_passes_with_its_seals_and_checkpoints_in_parts(
    kept: Kept, tmp_path: Path
) -> None:
    files = _write_files(tmp_path, kept.files)
    result = _verify_kept(files, kept, 3, seals=True, points=True)
    assert result == _verify_kept(files, kept, 1, seals=True, points=True)
    assert result.ok, result.error
    assert result.sealed_epoch is not None and result.sealed_epoch >= 8
    assert result.witnessed == len(kept.checkpoints) >= 9


def test_with_seals_and_checkpoints_each_part_is_checked_by_a_process_of_its_own(
    kept: Kept, tmp_path: Path
) -> None:
    [path] = _write_files(tmp_path, [[line for lines in kept.files for line in lines]])
    pids = tmp_path / "pids"
    with (
        mock.patch.object(verify_module, "_check_part", _recording),
        mock.patch(f"{__name__}._PIDS", [pids]),
    ):
        result = _verify_kept([path], kept, 3, seals=True, points=True)
    assert result.ok, result.error
    assert result.witnessed == len(kept.checkpoints)
    assert len(_parts_checked(pids, path)) == 3


# An attacker's edits: each rewrites the records (file, record) from `at` on, and the
# chain is then recomputed from there, so that only the seals and the witness see it;
# and the seals too, by one who holds every epoch's key (more than an attacker could),
# so that the seal check's rules on dates are reached past every seal.
Entries = list[tuple[int, dict[str, Any]]]


def _alter(entries: Entries, at: int, spot: int) -> None:
    entries[at][1]["n"] = -1


def _cut(entries: Entries, at: int, spot: int) -> None:
    del entries[at : at + 1 + spot % 3]


def _cut_a_seal(entries: Entries, at: int, spot: int) -> None:
    seals = [i for i, (_, record) in enumerate(entries) if record["event"] == "audit_seal"]
    del entries[next((i for i in seals if i >= at), seals[-1])]


def _move(entries: Entries, at: int, spot: int) -> None:
    moved = entries.pop(at)
    entries.insert(min(at + 1 + spot % 12, len(entries)), moved)


def _redate(entries: Entries, at: int, spot: int) -> None:
    entries[at][1]["ts"] = stamp(START + (spot % 12) * EPOCH / 2)


def _rechain(entries: Entries, start: int, seed: bytes | None) -> None:
    """Recompute the chain from `start` on, and with `seed`, every seal's MAC."""
    for index in range(start, len(entries)):
        record = entries[index][1]
        record["seq"] = index + 1
        record["prev"] = entries[index - 1][1]["hash"] if index else "0" * 64
        if seed is not None and record["event"] == "audit_seal":
            key = first_key(seed)
            for _ in range(record["epoch"]):
                key = next_key(key)
            record["mac"] = seal_mac(key, record)
        record["hash"] = record_hash(record)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    edit=st.sampled_from([_keep, _alter, _cut, _cut_a_seal, _move, _redate]),
    raw=st.sampled_from([_keep, _flip, _drop, _tear, _duplicate]),
    at=st.integers(0, 10_000),
    spot=st.integers(0, 10_000),
    processes=st.integers(min_value=2, max_value=5),
    seals=st.booleans(),
    points=st.booleans(),
    resealed=st.booleans(),
)
def test_seals_and_checkpoints_in_parts_give_one_process_s_verdict(
    kept: Kept,
    tmp_path_factory: Any,
    edit: Any,
    raw: Any,
    at: int,
    spot: int,
    processes: int,
    seals: bool,
    points: bool,
    resealed: bool,
) -> None:
    entries = [
        (number, json.loads(line)) for number, lines in enumerate(kept.files) for line in lines
    ]
    at %= len(entries)
    if edit is not _keep:
        edit(entries, at, spot)
        _rechain(entries, min(at, len(entries) - 1), kept.seal_key.seed if resealed else None)
    files: list[list[bytes]] = [[] for _ in kept.files]
    for number, record in entries:
        files[number].append((canonical(record) + "\n").encode())
    # And perhaps a line broken outright, the chain left as it is.
    number = spot % len(files)
    if files[number]:
        line = at % len(files[number])
        files[number][line : line + 1] = raw(files[number][line], spot)
    paths = _write_files(tmp_path_factory.mktemp("edited"), files)
    assert _verify_kept(paths, kept, processes, seals, points) == _verify_kept(
        paths, kept, 1, seals, points
    )


def test_a_record_dated_into_an_earlier_epoch_is_caught_in_parts_wherever_it_is(
    kept: Kept, tmp_path: Path
) -> None:
    """Each record of the middle file in turn (but its file record and its seals, which
    carry no date the check looks at), by one who holds every key: dated back
    into epoch 0 and every seal made again. Wherever the parts are cut, the seal after
    it (or the end) finds it, at the line one process names."""
    middle = sum(len(lines) for lines in kept.files[:1])
    for at in range(middle, middle + len(kept.files[1])):
        entries = [
            (number, json.loads(line)) for number, lines in enumerate(kept.files) for line in lines
        ]
        if entries[at][1]["event"] in ("audit_file", "audit_seal"):
            continue  # dated by nothing the seal check looks at
        _redate(entries, at, 0)
        _rechain(entries, at, kept.seal_key.seed)
        files: list[list[bytes]] = [[] for _ in kept.files]
        for number, record in entries:
            files[number].append((canonical(record) + "\n").encode())
        paths = _write_files(tmp_path, files)
        one = _verify_kept(paths, kept, 1, seals=True, points=False)
        assert one.error is not None and "dated from" in one.error, (at, one.error)
        assert _verify_kept(paths, kept, 3, seals=True, points=False) == one, at


def test_a_log_of_forged_seals_is_not_held_in_memory_by_the_parts(
    kept: Kept, tmp_path: Path
) -> None:
    """Every record of the log turned into a seal, the chain recomputed: a part keeps
    seals whole for the parent, so past its budget it gives them up and the file is
    checked in one process, holding a line at a time, to the verdict one process
    gives."""
    entries = [
        (number, json.loads(line)) for number, lines in enumerate(kept.files) for line in lines
    ]
    for _, record in entries[1:]:
        if record["event"] == "decision":
            record.update(event="audit_seal", seal_id="0" * 16, epoch=0, through=0, mac="0" * 64)
    _rechain(entries, 1, None)
    [path] = _write_files(tmp_path, [[(canonical(r) + "\n").encode() for _, r in entries]])
    pids = tmp_path / "pids"
    with (
        mock.patch.object(trail_module, "BUDGET", 4096),
        mock.patch.object(verify_module, "_check_part", _recording),
        mock.patch(f"{__name__}._PIDS", [pids]),
    ):
        result = _verify_kept([path], kept, 3, seals=True, points=True)
    rows = _parts_checked(pids, path)
    assert len(rows) == 3 and {row[3] for row in rows} == {"True"}
    assert result == _verify_kept([path], kept, 1, seals=True, points=True)
    assert result.error is not None and f"{path}:2: sealed under another seed" in result.error


@pytest.mark.parametrize("seq", [[1], "1", True, 1.0, {"n": 1}, None], ids=repr)
def test_a_seq_that_is_no_whole_number_is_refused_where_it_stands(tmp_path: Path, seq: Any) -> None:
    """Every record given a seq of another type, its hash made again: wherever a part
    begins, and with every check on (the first record alone is linked to nothing),
    verify names the first line, as one process does; it used to fail with a
    TypeError instead (a list in a set, a dict as a key)."""
    path = tmp_path / "audit.jsonl"
    _write(path, 12)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        record["seq"] = seq
        record["hash"] = record_hash(record)
    path.write_text("".join(canonical(record) + "\n" for record in records))
    witness = [Checkpoint("host-agent/test/audit", 5, "ab" * 32, "2026-12-06T00:00:00.000000Z")]
    for processes in (1, 3):
        result = verify([path], unmarked_head=True, checkpoints=witness, processes=processes)
        assert (result.records, result.error) == (0, f"{path}:1: seq is not a whole number")


@pytest.mark.parametrize("depth", [600, 900])
def test_records_nested_deeper_than_pickle_goes_are_checked_in_parts(
    kept: Kept, tmp_path: Path, depth: int
) -> None:
    """A whole chain of records each holding a value nested `depth` deep (json writes
    it, pickle cannot: ~500): the parts hand their first records and what their trails
    keep back as lines, so the verdict is one process's, where the parts used to fail
    to send their records back."""
    path = tmp_path / "audit.jsonl"
    nested: Any = []
    for _ in range(depth - 1):
        nested = [nested]
    records: list[dict[str, Any]] = []
    for n in range(12):
        record = {"event": "decision", "n": n, "x": nested, "seq": n + 1, "ts": "x"}
        record["prev"] = records[-1]["hash"] if records else "0" * 64
        record["hash"] = record_hash(record)
        records.append(record)
    path.write_text("".join(canonical(record) + "\n" for record in records))
    witness = [Checkpoint("host-agent/test/audit", 5, records[4]["hash"], "x")]
    for options in ({}, {"seal_key": kept.seal_key, "now": kept.now, "checkpoints": witness}):
        one = verify([path], processes=1, **options)
        assert verify([path], processes=3, **options) == one
        assert options or one.ok, one.error
