"""Group commit in the audit log: concurrent appends share fsyncs, none returns before
its own line is durable, and when an fsync fails every line it was to cover is cut and
every append waiting on it fails (fail closed), the chain going on intact.

Real files and the real fsync; only what no disk here will do on demand (an fsync
that is slow, or fails with EIO) is arranged around the real call."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from host_agent.audit import AuditLog, verify
from host_agent.audit import log as audit_log
from host_agent.errors import AuditUnavailable
from tests.support import audit_records

real_fsync = os.fsync


def around_fsync(monkeypatch: pytest.MonkeyPatch, before: Callable[[], None]) -> list[int]:
    """Run `before` ahead of every real fsync the audit log makes; the calls made."""
    calls: list[int] = []

    def fsync(fd: int) -> None:
        calls.append(fd)
        before()
        real_fsync(fd)

    monkeypatch.setattr(audit_log.os, "fsync", fsync)
    return calls


def held_fsyncs(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, list[float]]:
    """Every fsync waits for the event to be set; when each then ran."""
    release = threading.Event()
    synced: list[float] = []

    def hold() -> None:
        release.wait(10)
        synced.append(time.monotonic())

    around_fsync(monkeypatch, hold)
    return release, synced


def failing_once(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """The next fsync says it began, waits for the second event, then fails (EIO)."""
    began, release = threading.Event(), threading.Event()
    failing = {"next": True}

    def fail_once() -> None:
        if failing.pop("next", False):
            began.set()
            release.wait(10)
            raise OSError(errno.EIO, os.strerror(errno.EIO))

    around_fsync(monkeypatch, fail_once)
    return began, release


def opened(path: Path) -> AuditLog:
    audit = AuditLog(path)
    audit.open()
    return audit


def log_after_one_line(path: Path) -> AuditLog:
    audit = opened(path)
    audit.append({"event": "decision", "name": "before"})
    return audit


def assert_the_chain_goes_on(audit: AuditLog, path: Path, after: dict[str, object]) -> None:
    """After a cut, the next record continues from the last durable line: seq 2."""
    audit.close()
    assert after["seq"] == 2
    assert [r.get("name") for r in audit_records(path)] == ["before", "after"]
    assert verify([path]).ok


def test_lines_written_during_an_fsync_share_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """16 appends at once: the first one's fsync is held until all 16 lines are written,
    so it covers its own line only and one more fsync covers the other 15."""
    path = tmp_path / "audit.jsonl"
    audit = opened(path)

    def until_all_written() -> None:
        deadline = time.monotonic() + 10
        while path.read_bytes().count(b"\n") < 16 and time.monotonic() < deadline:
            time.sleep(0.01)

    calls = around_fsync(monkeypatch, until_all_written)
    threads = [
        threading.Thread(target=audit.append, args=({"event": "decision", "client": n},))
        for n in range(16)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    audit.close()
    assert len(audit_records(path)) == 16 and verify([path]).ok
    assert len(calls) == 2, f"{len(calls)} fsyncs for 16 lines written together"


def test_many_concurrent_appends_are_all_durable_in_one_chain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A disk whose fsync takes 5 ms: appends made meanwhile wait for the next one.
    calls = around_fsync(monkeypatch, lambda: time.sleep(0.005))
    audit = opened(tmp_path / "audit.jsonl")
    written: list[int] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        for index in range(25):
            entry = audit.append({"event": "decision", "client": number, "index": index})
            with lock:
                written.append(entry["seq"])

    threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    audit.close()
    assert sorted(written) == list(range(1, 401))
    assert verify([tmp_path / "audit.jsonl"]).ok
    assert len(audit_records(tmp_path / "audit.jsonl")) == 400
    assert len(calls) < 400  # shared: how much depends on how the threads are scheduled


def test_no_append_returns_before_the_fsync_that_covers_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release, synced = held_fsyncs(monkeypatch)
    audit = opened(tmp_path / "audit.jsonl")
    returned: list[float] = []
    thread = threading.Thread(
        target=lambda: (audit.append({"event": "decision"}), returned.append(time.monotonic()))
    )
    thread.start()
    time.sleep(0.2)
    assert returned == []  # written, not yet durable: no answer
    release.set()
    thread.join(10)
    assert returned and synced and synced[0] <= returned[0]
    audit.close()


def test_a_failed_fsync_cuts_every_line_it_covered_and_fails_their_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    audit = log_after_one_line(path)
    leader_in_fsync, release = failing_once(monkeypatch)
    outcomes: dict[str, str] = {}

    def append(name: str) -> None:
        try:
            audit.append({"event": "decision", "name": name})
            outcomes[name] = "kept"
        except AuditUnavailable:
            outcomes[name] = "refused"

    leader = threading.Thread(target=append, args=("leader",))
    leader.start()
    assert leader_in_fsync.wait(10)
    # Written while the leader's fsync runs: the cut takes them too.
    others = [threading.Thread(target=append, args=(f"during-{n}",)) for n in range(3)]
    for thread in others:
        thread.start()
    time.sleep(0.2)
    release.set()
    for thread in [leader, *others]:
        thread.join(10)
    assert outcomes == {name: "refused" for name in ("leader", "during-0", "during-1", "during-2")}
    assert [r.get("name") for r in audit_records(path)] == ["before"]
    assert_the_chain_goes_on(audit, path, audit.append({"event": "decision", "name": "after"}))


# --- the event loop's way in: `write` ----------------------------------------------
# Lines are written on the loop; the fsync that covers them runs in a thread, shared.


def test_writes_on_the_event_loop_share_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """16 writes at once, the first fsync held until all 16 lines are written: at most
    one more fsync covers the rest, and the loop never ran one itself."""
    path = tmp_path / "audit.jsonl"
    audit = opened(path)
    loop_thread = threading.get_ident()
    synced_on: list[int] = []

    def until_all_written() -> None:
        synced_on.append(threading.get_ident())
        deadline = time.monotonic() + 10
        while path.read_bytes().count(b"\n") < 16 and time.monotonic() < deadline:
            time.sleep(0.01)

    calls = around_fsync(monkeypatch, until_all_written)

    async def scenario() -> list[dict[str, object]]:
        writes = [audit.write({"event": "decision", "client": n}) for n in range(16)]
        return await asyncio.gather(*writes)

    entries = asyncio.run(scenario())
    audit.close()
    assert sorted(int(str(e["seq"])) for e in entries) == list(range(1, 17))
    assert len(audit_records(path)) == 16 and verify([path]).ok
    assert 1 <= len(calls) <= 2, f"{len(calls)} fsyncs for 16 lines written together"
    assert loop_thread not in synced_on


def test_no_write_returns_before_the_fsync_that_covers_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release, synced = held_fsyncs(monkeypatch)
    audit = opened(tmp_path / "audit.jsonl")

    async def scenario() -> float:
        task = asyncio.ensure_future(audit.write({"event": "decision"}))
        await asyncio.sleep(0.2)
        assert not task.done()  # written, not yet durable: no answer
        release.set()
        await task
        return time.monotonic()

    returned = asyncio.run(scenario())
    assert synced and synced[0] <= returned
    audit.close()


def test_a_failed_fsync_fails_every_write_waiting_on_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.jsonl"
    audit = log_after_one_line(path)
    leader_in_fsync, release = failing_once(monkeypatch)

    async def outcome(name: str) -> str:
        try:
            await audit.write({"event": "decision", "name": name})
        except AuditUnavailable:
            return "refused"
        return "kept"

    async def scenario() -> list[str]:
        leader = asyncio.ensure_future(outcome("leader"))
        assert await asyncio.to_thread(leader_in_fsync.wait, 10)
        others = [asyncio.ensure_future(outcome(f"during-{n}")) for n in range(3)]
        await asyncio.sleep(0.1)
        release.set()
        return await asyncio.gather(leader, *others)

    assert asyncio.run(scenario()) == ["refused"] * 4
    assert audit.failing is not None and "Input/output error" in audit.failing
    assert [r.get("name") for r in audit_records(path)] == ["before"]
    after = asyncio.run(audit.write({"event": "decision", "name": "after"}))
    assert audit.failing is None
    assert_the_chain_goes_on(audit, path, after)


def test_the_event_loop_never_waits_for_the_write_lock(tmp_path: Path) -> None:
    """A thread may hold the write lock across an fsync (opening the file, a seal, a
    checkpoint): a write meanwhile goes to a thread, and the loop keeps serving."""
    audit = opened(tmp_path / "audit.jsonl")
    held, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with audit._lock:  # as _sync_locked does around a slow fsync
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    assert held.wait(10)

    async def scenario() -> tuple[int, bool]:
        ticks = 0
        write = asyncio.ensure_future(audit.write({"event": "decision"}))
        for _ in range(20):
            await asyncio.sleep(0.01)
            ticks += 1
        waiting = not write.done()
        release.set()
        await write
        return ticks, waiting

    ticks, waiting = asyncio.run(scenario())
    holder.join(10)
    audit.close()
    assert ticks == 20 and waiting
    assert [r["event"] for r in audit_records(tmp_path / "audit.jsonl")] == ["decision"]


def test_a_write_cancelled_while_it_waits_leaves_the_others_their_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that goes away cancels its write; the fsync still runs for the rest."""
    release, synced = held_fsyncs(monkeypatch)
    audit = opened(tmp_path / "audit.jsonl")

    async def scenario() -> tuple[bool, list[dict[str, object]]]:
        # The first write's fsync is held; the next three wait for one more, together.
        staying = [asyncio.ensure_future(audit.write({"event": "decision"}))]
        await asyncio.sleep(0.1)
        gone = asyncio.ensure_future(audit.write({"event": "decision", "name": "gone"}))
        staying += [asyncio.ensure_future(audit.write({"event": "decision"})) for _ in range(2)]
        await asyncio.sleep(0.1)
        gone.cancel()
        release.set()
        kept = await asyncio.wait_for(asyncio.gather(*staying), 10)
        return gone.cancelled(), kept

    cancelled, kept = asyncio.run(scenario())
    audit.close()
    assert cancelled and len(kept) == 3 and synced
    # Its line was written before it was cancelled: it stays in the chain, durable.
    assert len(audit_records(tmp_path / "audit.jsonl")) == 4
    assert verify([tmp_path / "audit.jsonl"]).ok


def test_an_fsync_that_cannot_even_start_fails_its_writes_rather_than_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    audit = log_after_one_line(tmp_path / "audit.jsonl")

    def no_descriptors(fd: int) -> int:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(audit_log.os, "dup", no_descriptors)

    async def scenario() -> list[object]:
        writes = [audit.write({"event": "decision"}) for _ in range(3)]
        return await asyncio.wait_for(asyncio.gather(*writes, return_exceptions=True), 10)

    outcomes = asyncio.run(scenario())
    assert [type(outcome) for outcome in outcomes] == [OSError] * 3
    monkeypatch.undo()
    audit.close()
