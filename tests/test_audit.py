"""The hash-chained audit log: chaining, rotation, tamper detection, crash and failure modes."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import logging
import os
import re
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from host_agent.audit import GENESIS, AuditLog, canonical, record_hash, verify
from host_agent.cli import main
from host_agent.errors import AuditUnavailable

NOW = 1700000000.0
NOW_ISO = "2023-11-14T22:13:20.000000Z"


def fixed_clock() -> float:
    return NOW


def write_records(path: Path, count: int, *, start: int = 0) -> list[dict[str, Any]]:
    """Append `count` records through a fresh AuditLog and close it; return them as written."""
    log = AuditLog(path, clock=fixed_clock)
    log.open()
    try:
        return [
            log.append({"event": "decision", "op": "zfs-list", "n": n})
            for n in range(start, start + count)
        ]
    finally:
        log.close()


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def run_verify(capsys: pytest.CaptureFixture[str], *paths: Path) -> tuple[int, str]:
    code = main(["audit", "verify", *map(str, paths)])
    return code, capsys.readouterr().out


# --- appending ------------------------------------------------------------------


def test_records_are_chained_from_genesis(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    written = write_records(path, 3)

    assert [entry["seq"] for entry in written] == [1, 2, 3]
    assert written[0]["prev"] == GENESIS
    assert written[1]["prev"] == written[0]["hash"]
    assert written[2]["prev"] == written[1]["hash"]
    assert [entry["n"] for entry in written] == [0, 1, 2]
    assert {entry["ts"] for entry in written} == {NOW_ISO}
    for entry in written:
        body = {key: value for key, value in entry.items() if key != "hash"}
        expected = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        assert entry["hash"] == hashlib.sha256(expected).hexdigest()
    assert len({entry["hash"] for entry in written}) == 3


def test_file_is_jsonl_of_canonical_records_as_returned(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    written = write_records(path, 3)

    raw = path.read_text()
    assert raw.endswith("\n")
    lines = raw.splitlines()
    assert len(lines) == 3
    for line, entry in zip(lines, written, strict=True):
        assert line == canonical(entry)
        assert json.loads(line) == entry


def test_append_overrides_chain_fields_given_by_the_caller(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", clock=fixed_clock)
    log.open()
    try:
        entry = log.append(
            {"event": "decision", "seq": 99, "ts": "yesterday", "prev": "f" * 64, "hash": "x"}
        )
    finally:
        log.close()
    assert entry["seq"] == 1
    assert entry["ts"] == NOW_ISO
    assert entry["prev"] == GENESIS
    assert entry["hash"] == record_hash(entry)


def test_timestamp_without_a_clock_is_utc_iso(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    try:
        entry = log.append({"event": "decision"})
    finally:
        log.close()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", entry["ts"])


def test_new_log_is_created_with_mode_0640(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    # With no umask the file shows exactly the mode the log asks for.
    previous = os.umask(0)
    try:
        write_records(path, 1)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


# --- continuing the chain -------------------------------------------------------


def test_chain_continues_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first = write_records(path, 3)
    second = write_records(path, 2, start=3)

    assert second[0]["seq"] == 4
    assert second[0]["prev"] == first[-1]["hash"]
    assert verify([path]).ok
    assert len(lines_of(path)) == 5


def test_same_instance_reopens_lazily_after_close(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, clock=fixed_clock)
    try:
        first = log.append({"event": "a"})
        log.close()
        second = log.append({"event": "b"})
    finally:
        log.close()
    assert (second["seq"], second["prev"]) == (2, first["hash"])


def _rotate(path: Path) -> Path:
    rotated = path.with_name(path.name + ".1")
    path.rename(rotated)
    return rotated


def _rotated_log(tmp_path: Path) -> tuple[Path, Path]:
    """Three records rotated to audit.jsonl.1, then a new audit.jsonl: its audit_file
    record and two more."""
    path = tmp_path / "audit.jsonl"
    write_records(path, 3)
    rotated = _rotate(path)
    write_records(path, 2, start=3)
    return path, rotated


def test_chain_continues_across_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    before = write_records(path, 3)
    rotated = _rotate(path)
    after = write_records(path, 2, start=3)

    # The new file begins by saying so, chained to the old file's last record.
    marker = json.loads(lines_of(path)[0])
    assert (marker["event"], marker["seq"], marker["prev"]) == (
        "audit_file",
        4,
        before[-1]["hash"],
    )
    assert (after[0]["seq"], after[0]["prev"]) == (5, marker["hash"])
    assert len(lines_of(rotated)) == 3
    assert len(lines_of(path)) == 3
    result = verify([rotated, path])
    assert result.ok, result.error
    assert (result.records, result.first_seq, result.last_seq) == (6, 1, 6)
    assert result.head == after[-1]["hash"]


def test_rotated_files_in_the_wrong_order_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, rotated = _rotated_log(tmp_path)

    result = verify([path, rotated])
    assert not result.ok
    assert result.error is not None
    assert result.error.startswith(f"{rotated}:1: ")

    code, out = run_verify(capsys, path, rotated)
    assert code == 1
    assert "BROKEN" in out
    assert f"{rotated}:1:" in out


def test_cli_verifies_rotated_files_oldest_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, rotated = _rotated_log(tmp_path)

    code, out = run_verify(capsys, rotated, path)
    assert code == 0
    assert out.startswith("OK: 6 records (seq 1..6)")


def _gzip(path: Path) -> Path:
    target = path.with_name(path.name + ".gz")
    with path.open("rb") as source, gzip.open(target, "wb") as sink:
        shutil.copyfileobj(source, sink)
    path.unlink()
    return target


def test_gzip_rotated_file_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, rotated = _rotated_log(tmp_path)
    compressed = _gzip(rotated)

    result = verify([compressed, path])
    assert result.ok, result.error
    assert result.records == 6
    code, out = run_verify(capsys, compressed, path)
    assert code == 0
    assert out.startswith("OK: 6 records")


def test_gzip_rotated_file_with_an_edited_line_fails(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_records(path, 3)
    rotated = _rotate(path)
    rotated.write_text(rotated.read_text().replace('"n":1', '"n":7'))
    compressed = _gzip(rotated)

    result = verify([compressed])
    assert not result.ok
    assert result.error is not None
    assert result.error.startswith(f"{compressed}:2: ")


# --- tampering ------------------------------------------------------------------

# Each tamper edits the lines of a clean 5-record log in place and returns the
# 1-based number of the first line verify must reject.
Tamper = Callable[[list[str]], int]


def _edit_value(lines: list[str]) -> int:
    lines[2] = lines[2].replace('"op":"zfs-list"', '"op":"zfs-destroy"')
    return 3


def _delete_line(lines: list[str]) -> int:
    del lines[2]
    return 3


def _swap_lines(lines: list[str]) -> int:
    lines[1], lines[2] = lines[2], lines[1]
    return 2


def _insert_forged(lines: list[str]) -> int:
    # A well-formed record with a correct hash of its own, claiming to follow seq 2.
    real = json.loads(lines[1])
    forged = {"event": "decision", "op": "zfs-destroy", "seq": 3, "ts": NOW_ISO}
    forged["prev"] = real["prev"]  # a plausible hash, but not the one of seq 2
    forged["hash"] = record_hash(forged)
    lines.insert(2, canonical(forged) + "\n")
    return 3


def _renumber(lines: list[str]) -> int:
    record = json.loads(lines[3])
    record["seq"] = 7
    record["hash"] = record_hash(record)
    lines[3] = canonical(record) + "\n"
    return 4


def _tear_middle(lines: list[str]) -> int:
    lines[2] = lines[2][:40] + "\n"
    return 3


def _tear_last(lines: list[str]) -> int:
    lines[4] = lines[4][:40]
    return 5


def _not_from_genesis(lines: list[str]) -> int:
    record = json.loads(lines[0])
    record["prev"] = "1" * 64
    record["hash"] = record_hash(record)
    lines[0] = canonical(record) + "\n"
    return 1


@pytest.mark.parametrize(
    ("tamper", "mentions"),
    [
        pytest.param(_edit_value, "edited", id="edited-value"),
        pytest.param(_delete_line, "prev does not match", id="deleted-line"),
        pytest.param(_swap_lines, "prev does not match", id="swapped-lines"),
        pytest.param(_insert_forged, "prev does not match", id="inserted-forged-line"),
        pytest.param(_renumber, "seq 7 follows seq 3", id="renumbered-seq"),
        pytest.param(_tear_middle, "not valid JSON", id="torn-middle-line"),
        pytest.param(_tear_last, "not valid JSON", id="torn-last-line"),
        pytest.param(_not_from_genesis, "genesis", id="first-not-from-genesis"),
    ],
)
def test_tampering_is_reported_at_the_offending_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tamper: Tamper, mentions: str
) -> None:
    path = tmp_path / "audit.jsonl"
    write_records(path, 5)
    assert verify([path]).ok
    lines = lines_of(path)
    bad_line = tamper(lines)
    path.write_text("".join(lines))

    result = verify([path])
    assert not result.ok
    assert result.error is not None
    assert result.error.startswith(f"{path}:{bad_line}: "), result.error
    assert mentions in result.error
    assert result.records == bad_line - 1

    code, out = run_verify(capsys, path)
    assert code == 1
    assert out.startswith(f"BROKEN after {bad_line - 1} good records: {path}:{bad_line}: ")


def test_clean_log_passes_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    written = write_records(path, 5)

    code, out = run_verify(capsys, path)
    assert code == 0
    assert out == f"OK: 5 records (seq 1..5), head {written[-1]['hash']}\n"


def test_missing_file_fails_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_verify(capsys, tmp_path / "absent.jsonl")
    assert code == 1
    assert "BROKEN" in out
    assert "absent.jsonl" in out


# --- crash safety ---------------------------------------------------------------


def test_torn_tail_is_dropped_on_open_and_the_chain_continues(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    written = write_records(path, 3)
    complete = path.read_bytes()
    with path.open("ab") as handle:
        handle.write(b'{"event":"decision","op":"zfs-destroy","seq":4,"ts":"2023-')
    assert not verify([path]).ok

    with caplog.at_level(logging.WARNING, logger="host_agent.audit"):
        log = AuditLog(path, clock=fixed_clock)
        log.open()
    assert "torn" in caplog.text
    assert path.read_bytes() == complete
    try:
        entry = log.append({"event": "decision", "n": 3})
    finally:
        log.close()

    assert (entry["seq"], entry["prev"]) == (4, written[-1]["hash"])
    assert path.read_bytes().startswith(complete)
    result = verify([path])
    assert result.ok, result.error
    assert result.records == 4


def test_log_holding_only_a_torn_line_starts_from_genesis(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"event":"decision","seq":1,')

    entry = write_records(path, 1)[0]
    assert (entry["seq"], entry["prev"]) == (1, GENESIS)
    assert verify([path]).ok
    assert len(lines_of(path)) == 1


def test_complete_but_unreadable_last_line_fails_closed(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_records(path, 2)
    with path.open("a") as handle:
        handle.write("not json at all\n")

    with pytest.raises(AuditUnavailable):
        AuditLog(path).open()


# --- what the service account plants where the agent, maybe root, opens its log -------
# Invariant 10: the log directory may be the service account's while the agent runs as
# root; a link or a FIFO there must not make root write, cut or read anything.


def hard_link(name: Path, target: Path) -> None:
    """What the service account can make of a file of root's where the kernel allows it
    (fs.protected_hardlinks=0); root makes it here."""
    os.link(target, name)


LINKS = [pytest.param(Path.symlink_to, id="symlink"), pytest.param(hard_link, id="hard-link")]


@pytest.mark.parametrize("link", LINKS)
def test_a_log_linked_to_another_file_is_refused_and_that_file_left_whole(
    tmp_path: Path, link: Callable[[Path, Path], None]
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("line one\nno newline after this line")  # a torn tail to drop
    link(tmp_path / "audit.jsonl", secret)
    log = AuditLog(tmp_path / "audit.jsonl")
    with pytest.raises(AuditUnavailable, match="cannot open audit log"):
        log.append({"event": "decision"})
    assert secret.read_text() == "line one\nno newline after this line"


def test_a_fifo_in_place_of_the_log_is_refused() -> None:
    with tempfile.TemporaryDirectory() as directory:
        os.mkfifo(Path(directory) / "audit.jsonl")
        log = AuditLog(Path(directory) / "audit.jsonl")
        with pytest.raises(AuditUnavailable, match="a FIFO"):
            log.open()


@pytest.mark.parametrize("link", LINKS)
def test_a_rotated_file_linked_elsewhere_is_not_read_to_continue_the_chain(
    tmp_path: Path, link: Callable[[Path, Path], None]
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text('{"seq": 41, "hash": "' + "0" * 64 + '"}\n')
    link(tmp_path / "audit.jsonl.1", elsewhere)
    log = AuditLog(tmp_path / "audit.jsonl")
    with pytest.raises(AuditUnavailable, match="cannot open audit log"):
        log.open()
    assert not (tmp_path / "audit.jsonl").read_text()


# --- failing closed -------------------------------------------------------------


def test_append_to_a_full_device_raises_audit_unavailable() -> None:
    if not Path("/dev/full").exists():
        pytest.skip("/dev/full is not available")
    log = AuditLog(Path("/dev/full"))
    try:
        with pytest.raises(AuditUnavailable, match="cannot write"):
            log.append({"event": "decision"})
        assert log.failing is not None and "No space left" in log.failing  # for /health
    finally:
        log.close()


def test_async_write_to_a_full_device_raises_audit_unavailable() -> None:
    if not Path("/dev/full").exists():
        pytest.skip("/dev/full is not available")
    log = AuditLog(Path("/dev/full"))
    try:
        with pytest.raises(AuditUnavailable):
            asyncio.run(log.write({"event": "decision"}))
    finally:
        log.close()


def test_async_write_appends_like_append(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, clock=fixed_clock)
    try:
        entry = asyncio.run(log.write({"event": "decision"}))
    finally:
        log.close()
    assert (entry["seq"], entry["ts"], entry["prev"]) == (1, NOW_ISO, GENESIS)
    assert lines_of(path) == [canonical(entry) + "\n"]


def test_directory_as_log_path_raises_audit_unavailable_on_open(tmp_path: Path) -> None:
    with pytest.raises(AuditUnavailable, match="cannot open"):
        AuditLog(tmp_path).open()
    with pytest.raises(AuditUnavailable):
        AuditLog(tmp_path).append({"event": "decision"})


def test_short_write_leaves_no_partial_line_and_does_not_advance(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, clock=fixed_clock)
    try:
        first = log.append({"event": "decision"})
        size = path.stat().st_size
        # Let the file grow by only 10 more bytes: the next record is cut short.
        limits = resource.getrlimit(resource.RLIMIT_FSIZE)
        handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 10, limits[1]))
        try:
            with pytest.raises(AuditUnavailable):
                log.append({"event": "decision", "op": "zfs-destroy"})
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, limits)
            signal.signal(signal.SIGXFSZ, handler)
        assert path.stat().st_size == size
        second = log.append({"event": "decision"})
    finally:
        log.close()
    assert (second["seq"], second["prev"]) == (2, first["hash"])
    assert verify([path]).ok


# --- concurrency ----------------------------------------------------------------


def test_concurrent_appends_keep_one_contiguous_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.open()
    start = threading.Barrier(8)
    seqs: list[list[int]] = [[] for _ in range(8)]

    def worker(index: int) -> None:
        start.wait()
        for n in range(200):
            seqs[index].append(log.append({"thread": index, "n": n})["seq"])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        log.close()

    records = [json.loads(line) for line in lines_of(path)]
    assert [record["seq"] for record in records] == list(range(1, 1601))
    assert sorted(seq for per_thread in seqs for seq in per_thread) == list(range(1, 1601))
    for index, per_thread in enumerate(seqs):
        # Each thread's own appends land in the order it made them.
        assert per_thread == sorted(per_thread)
        mine = [record["n"] for record in records if record["thread"] == index]
        assert mine == list(range(200))
    result = verify([path])
    assert result.ok, result.error
    assert (result.records, result.last_seq) == (1600, 1600)


# --- rotation: the chain continues across files -------------------------------------


def _seqs(*paths: Path) -> list[int]:
    return [json.loads(line)["seq"] for path in paths for line in path.read_text().splitlines()]


def test_a_renamed_log_is_followed_without_a_signal(tmp_path: Path) -> None:
    """logrotate's `create` without the postrotate signal (or before it): nothing lost."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.open()
    for n in range(3):
        log.append({"event": "before", "n": n})
    path.rename(tmp_path / "audit.jsonl.1")
    for n in range(2):
        log.append({"event": "after", "n": n})
    log.close()
    rotated = tmp_path / "audit.jsonl.1"
    assert _seqs(rotated) == [1, 2, 3]
    assert _seqs(path) == [4, 5, 6]  # 4: the new file's audit_file record
    assert verify([rotated, path]).ok


def test_reopen_starts_the_new_file_where_the_old_one_ended(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.open()
    log.append({"event": "one"})
    path.rename(tmp_path / "audit.jsonl.1")
    path.touch(mode=0o640)  # what `create` does
    log.reopen()
    last = log.append({"event": "two"})
    log.close()
    marker = json.loads(path.read_text().splitlines()[0])
    assert (marker["event"], marker["seq"]) == ("audit_file", 2)
    assert marker["prev"] == json.loads((tmp_path / "audit.jsonl.1").read_text())["hash"]
    assert (last["seq"], last["prev"]) == (3, marker["hash"])
    assert verify([tmp_path / "audit.jsonl.1", path]).ok


def test_after_two_rotations_the_chain_continues_from_memory_not_from_dot_one(
    tmp_path: Path,
) -> None:
    """With `.1` already replaced by a newer rotation, only what was written counts."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    log.open()
    log.append({"event": "one"})
    path.rename(tmp_path / "audit.jsonl.2")
    (tmp_path / "audit.jsonl.1").write_text("")  # an unrelated, empty .1
    log.append({"event": "two"})
    path.rename(tmp_path / "audit.jsonl.1")
    log.reopen()
    log.append({"event": "three"})
    log.close()
    files = [tmp_path / "audit.jsonl.2", tmp_path / "audit.jsonl.1", path]
    assert [_seqs(file) for file in files] == [[1], [2, 3], [4, 5]]  # 2, 4: audit_file
    assert verify(files).ok


def test_verify_refuses_a_link_in_the_log_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Admins verify as root in the service account's directory: a link planted there
    (to /dev/zero, or a secret) is not followed."""
    secret = tmp_path / "secret"
    write_records(secret, 2)
    link = tmp_path / "audit.jsonl"
    link.symlink_to(secret)
    code, out = run_verify(capsys, link)
    assert code == 1
    assert f"{link}: a symbolic link; name the log file itself" in out


def test_verify_refuses_a_fifo_instead_of_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "audit.jsonl"
    os.mkfifo(fifo)
    done = subprocess.run(
        [sys.executable, "-m", "host_agent", "audit", "verify", str(fifo)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert f"{fifo}: not a regular file" in done.stdout + done.stderr
