"""Forward-secure seals on the real writer, on a clock the test moves: the key file,
the seal records, and `verify --seal-key` against an attacker who holds the key of
the moment (read from the key file) and rewrites what came before.

The same attacks on a log written by a running agent are in test_e2e_audit_seal.py."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from host_agent.audit import AuditLog, canonical, record_hash, verify
from host_agent.audit.seal import (
    Epochs,
    SealError,
    SealKey,
    VerificationKey,
    first_key,
    new_seed,
    next_key,
    seal_mac,
)
from host_agent.errors import AuditUnavailable
from tests.support import raised_without_waiting_on

START = 1_900_000_000
EPOCH = 60


class Clock:
    def __init__(self) -> None:
        self.now = float(START)

    def __call__(self) -> float:
        return self.now


class Sealed:
    """A sealed log on a movable clock, and what the operator keeps."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "audit.jsonl"
        self.key_path = tmp_path / "seal.key"
        seed = new_seed()
        self.verification = VerificationKey(seed, Epochs(START, EPOCH))
        SealKey.create(self.key_path, seed, self.verification.epochs, None)
        self.clock = Clock()
        self.log = self.reopened()

    def reopened(self) -> AuditLog:
        log = AuditLog(self.path, clock=self.clock, seal=SealKey.load(self.key_path))
        log.open()
        return log

    def write(self, count: int, every: float = 7.0) -> None:
        for n in range(count):
            self.log.append({"event": "decision", "n": n})
            self.clock.now += every

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.path.read_text().splitlines()]

    def verify(self, *paths: Path, now: float | None = None) -> Any:
        return verify(
            paths or [self.path],
            seal_key=self.verification,
            now=self.clock.now if now is None else now,
        )


@pytest.fixture
def sealed(tmp_path: Path) -> Iterator[Sealed]:
    log = Sealed(tmp_path)
    yield log
    log.log.close()


def seals(records: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return [(r["epoch"], r["through"]) for r in records if r["event"] == "audit_seal"]


def rechain(records: list[dict[str, Any]], start: int = 0) -> str:
    """What an attacker without the seal keys does after an edit: renumber and rehash
    every record from `start` on, so that the unkeyed chain holds again."""
    for index in range(start, len(records)):
        record = records[index]
        record["seq"] = index + 1
        record["prev"] = records[index - 1]["hash"] if index else "0" * 64
        record["hash"] = record_hash(record)
    return "".join(canonical(record) + "\n" for record in records)


# --- the key file -----------------------------------------------------------------


def test_seal_init_leaves_only_epoch_zeros_key_private_on_disk(sealed: Sealed) -> None:
    mode = os.stat(sealed.key_path).st_mode
    assert stat.S_IMODE(mode) == 0o600
    text = sealed.key_path.read_text()
    assert len(text) == 256 and text.endswith("\n")
    seed = sealed.verification.seed
    assert seed.hex() not in text  # the seed is never stored
    assert first_key(seed).hex() in text


def test_a_new_epoch_overwrites_the_old_key_in_place(sealed: Sealed) -> None:
    seed = sealed.verification.seed
    inode = os.stat(sealed.key_path).st_ino
    sealed.write(1)
    sealed.clock.now = START + 2 * EPOCH + 1  # epochs 0 and 1 are over
    sealed.log.append({"event": "decision"})
    text = sealed.key_path.read_text()
    assert first_key(seed).hex() not in text and next_key(first_key(seed)).hex() not in text
    assert next_key(next_key(first_key(seed))).hex() in text
    assert os.stat(sealed.key_path).st_ino == inode  # rewritten, not replaced


def _byte_in_field(path: Path, field: int, byte: int) -> None:
    """One byte of the key file's `field`th field (from 0) replaced by `byte`."""
    text = path.read_text()
    at = text.index(text.split()[field]) + 1
    data = bytearray(path.read_bytes())
    data[at] = byte
    path.write_bytes(bytes(data))


def _rechecked_key_not_hex(path: Path) -> None:
    """The key replaced by what is not hex, and the file's check (a plain hash) made
    again to match, as anyone who can write the file can."""
    fields = path.read_text().split()
    fields[6] = "zz" * 32
    line = " ".join(fields[:7])
    check = hashlib.sha256(line.encode("ascii")).hexdigest()[:16]
    path.write_text(f"{line} {check}".ljust(255) + "\n")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        pytest.param(lambda p: p.chmod(0o640), "readable by others", id="group-readable"),
        pytest.param(
            lambda p: p.write_text(p.read_text().replace(" 0 ", " 7 ", 1)),
            "damaged",
            id="epoch-edited",
        ),
        pytest.param(lambda p: p.write_text("x" * 255 + "\n"), "not a host-agent", id="garbage"),
        pytest.param(lambda p: _byte_in_field(p, 7, 0xE9), "damaged", id="check-not-ascii"),
        pytest.param(lambda p: _byte_in_field(p, 6, 0xE9), "damaged", id="key-not-ascii"),
        pytest.param(_rechecked_key_not_hex, "damaged", id="key-not-hex-check-redone"),
        pytest.param(lambda p: p.unlink(), "seal-init", id="missing"),
    ],
)
def test_a_seal_key_file_not_as_left_is_refused(sealed: Sealed, damage: Any, message: str) -> None:
    damage(sealed.key_path)
    with pytest.raises(SealError, match=message):
        SealKey.load(sealed.key_path)


def test_a_seal_key_behind_a_link_is_refused(sealed: Sealed, tmp_path: Path) -> None:
    link = tmp_path / "link.key"
    link.symlink_to(sealed.key_path)
    with pytest.raises(SealError, match="cannot open"):
        SealKey.load(link)


# Invariant 10: the key's directory may be the service account's while the agent runs
# as root; what it plants there must neither hold the agent nor be written through.


def test_a_fifo_in_place_of_the_seal_key_is_refused_without_waiting(sealed: Sealed) -> None:
    sealed.key_path.unlink()
    os.mkfifo(sealed.key_path, 0o600)
    raised = raised_without_waiting_on(sealed.key_path, lambda: SealKey.load(sealed.key_path))
    assert isinstance(raised, SealError) and "not a regular file" in str(raised)


def test_the_next_epochs_key_is_not_written_into_a_fifo_put_in_its_place(
    sealed: Sealed,
) -> None:
    key = SealKey.load(sealed.key_path)
    sealed.key_path.unlink()
    os.mkfifo(sealed.key_path, 0o600)
    raised = raised_without_waiting_on(sealed.key_path, lambda: key.advance(1))
    assert isinstance(raised, SealError) and "not a regular file" in str(raised)


def test_a_seal_key_with_a_second_name_is_refused(sealed: Sealed, tmp_path: Path) -> None:
    """A hard link is what the service account could make of a file of root's where the
    kernel allows it (fs.protected_hardlinks=0): the next epoch's key would overwrite it."""
    os.link(sealed.key_path, tmp_path / "second-name")
    with pytest.raises(SealError, match="other names"):
        SealKey.load(sealed.key_path)


def test_seal_init_never_overwrites_a_running_sequence(sealed: Sealed) -> None:
    with pytest.raises(SealError, match="exists"):
        SealKey.create(sealed.key_path, new_seed(), Epochs(START, EPOCH), None)


# --- sealing --------------------------------------------------------------------


def test_each_epoch_is_sealed_once_before_the_next_ones_records(sealed: Sealed) -> None:
    sealed.write(20)  # 7 s apart: epochs 0, 1, 2
    records = sealed.lines()
    assert seals(records) == [(0, 0), (1, 1)]
    covered: list[list[int]] = [[]]
    for record in records:
        if record["event"] == "audit_seal":
            covered.append([])
        else:
            covered[-1].append(record["n"])
    # Every record is sealed by the seal of the epoch it was written in.
    assert covered == [list(range(0, 9)), list(range(9, 18)), [18, 19]]
    result = sealed.verify()
    assert result.ok, result.error
    assert (result.sealed_epoch, result.unsealed) == (1, 20 - 18)


def test_empty_epochs_are_sealed_too(sealed: Sealed) -> None:
    sealed.write(2)
    sealed.clock.now = START + 5 * EPOCH + 3  # nothing written in epochs 1..4
    sealed.log.seal_due()
    assert seals(sealed.lines()) == [(0, 4)]
    sealed.write(1)
    sealed.clock.now = START + 7 * EPOCH
    sealed.log.seal_due()
    assert seals(sealed.lines()) == [(0, 4), (5, 6)]
    assert sealed.verify().ok


def test_a_seal_written_just_before_a_crash_is_not_written_again(
    sealed: Sealed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed between writing the seal and moving the key on: on restart the key
    moves on, and no second seal for that epoch appears."""
    sealed.write(3)
    sealed.clock.now = START + EPOCH + 1

    def dies(self: SealKey, epoch: int) -> None:
        raise OSError("killed")

    monkeypatch.setattr(SealKey, "advance", dies)
    with pytest.raises(AuditUnavailable):
        sealed.log.append({"event": "decision"})
    monkeypatch.undo()
    sealed.log.close()
    sealed.log = sealed.reopened()  # the restart
    sealed.log.append({"event": "decision"})
    assert seals(sealed.lines()) == [(0, 0)]
    assert SealKey.load(sealed.key_path).epoch == 1
    assert sealed.verify().ok


# --- what the seals catch ---------------------------------------------------------


def tampered(sealed: Sealed, records: list[dict[str, Any]], start: int = 0) -> str | None:
    sealed.path.write_text(rechain(records, start))
    assert verify([sealed.path]).ok  # the unkeyed chain alone is fooled...
    result = sealed.verify()
    assert not result.ok  # ...the seals are not
    return result.error


def test_an_edited_sealed_record_is_caught_though_the_chain_was_recomputed(
    sealed: Sealed,
) -> None:
    sealed.write(20)
    records = sealed.lines()
    records[3]["n"] = 99
    error = tampered(sealed, records, 3)
    assert error is not None and "MAC does not match under epoch 0's key" in error


def test_records_cut_from_a_sealed_epoch_are_caught(sealed: Sealed) -> None:
    sealed.write(20)
    records = sealed.lines()
    del records[10:12]
    error = tampered(sealed, records, 10)
    assert error is not None and "MAC does not match" in error


def test_a_whole_sealed_epoch_cut_out_is_caught(sealed: Sealed) -> None:
    sealed.write(30)  # epochs 0..3
    records = sealed.lines()
    first, second = [i for i, r in enumerate(records) if r["event"] == "audit_seal"][:2]
    # Epoch 1 goes, seal and all; epoch 2's seal still holds its real MAC.
    del records[first + 1 : second + 1]
    error = tampered(sealed, records, first + 1)
    assert error is not None and "the seals of epochs 1..1 are missing" in error


def test_resealing_the_past_with_the_current_key_is_caught(sealed: Sealed) -> None:
    """The attacker reads the key of the moment from the key file and seals a rewritten
    epoch 0 with it, naming epoch 0 (the MAC is wrong) or the current epoch (the seals
    are no longer continuous)."""
    sealed.write(30)
    stolen = SealKey.load(sealed.key_path)
    records = sealed.lines()
    first_seal = next(i for i, r in enumerate(records) if r["event"] == "audit_seal")
    records[1]["n"] = 99
    for claimed, expected in ((0, "MAC does not match under epoch 0's key"), (None, "missing")):
        forged = [dict(record) for record in records]
        seal = forged[first_seal]
        if claimed is None:
            seal["epoch"] = seal["through"] = stolen.epoch
        rechain(forged[: first_seal + 1], 1)
        seal["mac"] = stolen.mac(seal)
        error = tampered(sealed, forged, 1)
        assert error is not None and expected in error, error


def test_cutting_the_tail_and_writing_on_is_caught(sealed: Sealed) -> None:
    """Back to just after epoch 0's seal, then the agent (or the attacker, with the
    current key) writes on: the seals of the epochs cut out are missing."""
    sealed.write(30)
    records = sealed.lines()
    first_seal = next(i for i, r in enumerate(records) if r["event"] == "audit_seal")
    sealed.log.close()
    sealed.path.write_text("".join(canonical(r) + "\n" for r in records[: first_seal + 1]))
    sealed.log = sealed.reopened()
    sealed.write(2)
    result = sealed.verify()
    assert not result.ok
    assert result.error is not None and "seals are missing" in result.error
    sealed.clock.now += EPOCH
    sealed.log.seal_due()  # and once the current epoch is sealed too
    result = sealed.verify()
    assert result.error is not None and "are missing" in result.error


def test_a_log_under_another_seed_is_refused(sealed: Sealed) -> None:
    sealed.write(20)
    stranger = VerificationKey(new_seed(), sealed.verification.epochs)
    result = verify([sealed.path], seal_key=stranger, now=sealed.clock.now)
    assert result.error is not None and "sealed under another seed" in result.error


def test_a_record_dated_outside_its_sealed_epoch_is_caught(sealed: Sealed) -> None:
    """A record of epoch 2 moved, with its date, in front of epoch 1's seal (the
    attacker still holds epoch 1's key then): no key newer than a record's epoch may
    seal it, nor an older one."""
    sealed.write(20)
    records = sealed.lines()
    seal_at = [i for i, r in enumerate(records) if r["event"] == "audit_seal"][1]
    later = records.pop(seal_at + 1)
    records.insert(seal_at, later)
    rechain(records, seal_at)
    epoch_1_key = next_key(first_key(sealed.verification.seed))
    records[seal_at + 1]["mac"] = seal_mac(epoch_1_key, records[seal_at + 1])
    records[seal_at + 1]["hash"] = record_hash(records[seal_at + 1])
    error = tampered(sealed, records, seal_at + 2)
    assert error is not None and "but epoch 1 ended" in error


def test_a_log_younger_than_its_first_epoch_has_no_seal_and_passes(sealed: Sealed) -> None:
    sealed.write(3)
    result = sealed.verify()
    assert result.ok, result.error
    assert (result.sealed_epoch, result.unsealed) == (None, 3)


def test_files_without_a_seal_or_the_logs_beginning_fail(sealed: Sealed) -> None:
    """A rotated-on file with no seal in it: nothing vouches for it."""
    sealed.write(3)
    sealed.path.rename(sealed.path.with_name("audit.jsonl.1"))
    sealed.write(3)
    result = sealed.verify(sealed.path)
    assert result.error is not None and "no seal record" in result.error
    assert sealed.verify(sealed.path.with_name("audit.jsonl.1"), sealed.path).ok
