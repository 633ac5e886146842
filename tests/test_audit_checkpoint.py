"""Signed checkpoints and their witnesses: the note format, the checkpoint records
the writer takes, `audit verify --checkpoints` against a log cut or rewritten, the
PostgreSQL witness (insert-only), a real rsyslog over TLS, and shipping with the
witness down and then back."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from host_agent.audit import AuditLog, canonical, record_hash, verify
from host_agent.audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    SigningKey,
    Verifier,
    open_note,
)
from host_agent.audit.checkpoint_check import dedupe, load_checkpoints, split_notes
from host_agent.audit.pg_witness import PostgresWitness, read_notes
from host_agent.audit.syslog_witness import SyslogWitness
from host_agent.audit.witness import Outbox, Shipper, WitnessError
from host_agent.cli import main
from tests.postgres import FleetDatabase, Postgres, fleet_database
from tests.support import Pki, raised_without_waiting_on
from tests.syslog_collector import Collector, running_collector

NAME = "host-agent/pve-1/audit"
POINT = Checkpoint(NAME, 42, "ab" * 32, "2026-12-05T06:00:00.000000Z")


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return SigningKey.create(tmp_path / "checkpoint.key", NAME, None)


# --- the note ---------------------------------------------------------------------


def test_a_checkpoint_is_a_c2sp_signed_note_its_verifier_opens(key: SigningKey) -> None:
    note = key.sign(POINT)
    body, signature = note.split("\n\n")
    assert body.split("\n") == [
        NAME,
        "42",
        base64.b64encode(bytes.fromhex(POINT.head)).decode(),
        f"time {POINT.time}",
    ]
    dash, name, encoded = signature.rstrip("\n").split(" ")
    assert (dash, name) == ("\u2014", NAME)
    assert len(base64.b64decode(encoded)) == 4 + 64  # key id and an Ed25519 signature
    verifier = Verifier.parse(str(key.verifier))
    assert open_note(note, verifier) == POINT


@pytest.mark.parametrize(
    ("spoil", "said"),
    [
        pytest.param(lambda n: n.replace("\n42\n", "\n43\n"), "does not verify", id="size"),
        pytest.param(lambda n: n.replace("time 2026", "time 2025"), "does not verify", id="time"),
        pytest.param(lambda n: n.replace("\n\n", "\n"), "not a signed note", id="no-blank"),
        pytest.param(lambda n: n + "x\n", "not a signature line", id="trailing-junk"),
        pytest.param(lambda n: n.replace("42", "4\x012"), "control", id="control-char"),
        pytest.param(lambda n: n + "\u2014 a " + "A" * 6000 + "\n", "too large", id="huge"),
    ],
)
def test_a_spoilt_note_is_refused(key: SigningKey, spoil: Any, said: str) -> None:
    with pytest.raises(CheckpointError, match=said):
        open_note(spoil(key.sign(POINT)), key.verifier)


def test_a_note_from_another_key_is_not_this_hosts(key: SigningKey, tmp_path: Path) -> None:
    other = SigningKey.create(tmp_path / "other.key", NAME, None)
    with pytest.raises(CheckpointError, match="is not signed by"):
        open_note(other.sign(POINT), key.verifier)


def test_a_witness_cosignature_beside_ours_is_ignored(key: SigningKey, tmp_path: Path) -> None:
    witness = SigningKey.create(tmp_path / "witness.key", "witness.example/w1", None)
    note = key.sign(POINT)
    cosigned = note + witness.sign(POINT).split("\n\n")[1]
    assert open_note(cosigned, key.verifier) == POINT


def test_the_signing_key_file_must_be_private(key: SigningKey, tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.key"
    assert (os.stat(path).st_mode & 0o777) == 0o600
    assert SigningKey.load(path, NAME).verifier == key.verifier
    path.chmod(0o644)
    with pytest.raises(CheckpointError, match="readable by others"):
        SigningKey.load(path, NAME)


def test_a_verifier_key_with_a_wrong_id_is_refused(key: SigningKey) -> None:
    name, _, encoded = str(key.verifier).split("+", 2)
    with pytest.raises(CheckpointError, match="id does not match"):
        Verifier.parse(f"{name}+{'0' * 8}+{encoded}")


# --- the writer and verify --------------------------------------------------------


class Witnessed:
    """A log written with checkpoints, and the notes its witness took."""

    def __init__(self, tmp_path: Path, key: SigningKey) -> None:
        self.path = tmp_path / "audit.jsonl"
        self.key = key
        self.notes: list[str] = []
        self.log = AuditLog(self.path, checkpoints=(key, lambda note, _: self.notes.append(note)))
        self.log.open()

    def write(self, count: int) -> None:
        for n in range(count):
            self.log.append({"event": "decision", "n": n})

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.path.read_text().splitlines()]

    def checkpoints(self) -> list[Checkpoint]:
        return [open_note(note, self.key.verifier) for note in self.notes]


@pytest.fixture
def witnessed(tmp_path: Path, key: SigningKey) -> Iterator[Witnessed]:
    log = Witnessed(tmp_path, key)
    yield log
    log.log.close()


def test_a_checkpoint_record_signs_the_head_before_it(witnessed: Witnessed) -> None:
    witnessed.write(5)
    witnessed.log.checkpoint()
    *written, record = witnessed.records()
    assert record["event"] == "audit_checkpoint"
    assert (record["size"], record["head"]) == (5, written[-1]["hash"])
    assert witnessed.checkpoints() == [open_note(record["note"], witnessed.key.verifier)]


def test_a_new_file_begins_with_a_checkpoint_after_its_file_record(witnessed: Witnessed) -> None:
    witnessed.write(3)
    witnessed.path.rename(witnessed.path.with_name("audit.jsonl.1"))
    witnessed.write(1)
    first, checkpoint, _ = witnessed.records()
    assert (first["event"], checkpoint["event"]) == ("audit_file", "audit_checkpoint")
    assert checkpoint["size"] == first["seq"]


def test_verify_against_checkpoints_passes_an_untouched_log(witnessed: Witnessed) -> None:
    witnessed.write(4)
    witnessed.log.checkpoint()
    witnessed.write(4)
    witnessed.log.checkpoint()
    result = verify([witnessed.path], checkpoints=witnessed.checkpoints())
    assert result.ok, result.error
    assert result.witnessed == 2


def test_a_cut_tail_the_chain_cannot_see_the_witness_can(witnessed: Witnessed) -> None:
    witnessed.write(6)
    witnessed.log.checkpoint()
    witnessed.log.close()
    lines = witnessed.path.read_text().splitlines(keepends=True)
    witnessed.path.write_text("".join(lines[:4]))  # cut back, left that way
    assert verify([witnessed.path]).ok
    result = verify([witnessed.path], checkpoints=witnessed.checkpoints())
    assert result.error is not None
    assert "the files end at seq 4, but a witness holds a checkpoint of seq 6" in result.error


def test_a_rewrite_with_every_hash_recomputed_disagrees_with_the_witness(
    witnessed: Witnessed,
) -> None:
    witnessed.write(6)
    witnessed.log.checkpoint()
    witnessed.log.close()
    records = witnessed.records()
    records[2]["n"] = 99
    for index in range(2, len(records)):
        records[index]["prev"] = records[index - 1]["hash"]
        records[index]["hash"] = record_hash(records[index])
    witnessed.path.write_text("".join(canonical(r) + "\n" for r in records))
    assert verify([witnessed.path]).ok
    result = verify([witnessed.path], checkpoints=witnessed.checkpoints())
    assert result.error is not None
    assert f"{witnessed.path}:6: record 6 is not the one the witness saw" in result.error


def test_the_cli_reads_a_file_of_notes_skipping_other_hosts(
    witnessed: Witnessed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    witnessed.write(3)
    witnessed.log.checkpoint()
    other = SigningKey.create(tmp_path / "other.key", "host-agent/pve-2/audit", None)
    notes = tmp_path / "notes.txt"
    # The same checkpoint twice (shipped again), and another host's in between.
    notes.write_text(witnessed.notes[0] + other.sign(POINT) + "\n" + witnessed.notes[0])
    assert len(split_notes(notes.read_text())) == 3
    argv = ["audit", "verify", "--checkpoints", str(notes)]
    code = main([*argv, "--checkpoint-key", str(witnessed.key.verifier), str(witnessed.path)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "1 of 1 checkpoints checked" in out


def test_two_signed_histories_of_one_size_are_refused(key: SigningKey) -> None:
    """The host's key signed two different heads for one size: it told two witnesses
    two stories, which no rewrite of the files can settle."""
    other = Checkpoint(NAME, POINT.size, "cd" * 32, POINT.time)
    with pytest.raises(CheckpointError, match="two different heads for seq 42"):
        dedupe([POINT, other, POINT])


# --- witnesses --------------------------------------------------------------------


def agent_role(cluster: Postgres, database: FleetDatabase) -> psycopg.Connection[Any]:
    return psycopg.connect(database.url, password=database.password, autocommit=True)


@pytest.mark.root
def test_the_postgresql_witness_is_insert_only_for_the_agents(
    postgres: Postgres, key: SigningKey
) -> None:
    database = fleet_database(postgres)
    witness = PostgresWitness(database.url, database.password)
    note = key.sign(POINT)
    witness.ship(note, POINT)
    witness.ship(note, POINT)  # shipped again after a lost reply: kept once
    with agent_role(postgres, database) as db:
        for statement in (
            "SELECT note FROM audit_checkpoints",
            "UPDATE audit_checkpoints SET size = 1",
            "DELETE FROM audit_checkpoints",
            "TRUNCATE audit_checkpoints",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                db.execute(statement)
    owner = postgres.url(database=database.name)
    assert read_notes(owner, NAME) == [note]
    assert load_checkpoints(owner, key.verifier) == [POINT]


@pytest.mark.root
def test_the_postgresql_witness_down_is_a_witness_error(postgres: Postgres) -> None:
    witness = PostgresWitness("postgresql://nobody@127.0.0.1:1/none", None)
    with pytest.raises(WitnessError, match="PostgreSQL"):
        witness.ship("note", POINT)


@pytest.fixture
def collector(pki: Pki, tmp_path: Path) -> Iterator[Collector]:
    with running_collector(pki, tmp_path / "rsyslog") as running:
        yield running


@pytest.mark.root
def test_rsyslog_over_tls_keeps_the_note_as_one_message(
    collector: Collector, pki: Pki, key: SigningKey, tmp_path: Path
) -> None:
    note = key.sign(POINT)
    SyslogWitness(collector.address, pki.ca).ship(note, POINT)
    wait_until(lambda: collector.messages())
    [stored] = collector.messages()
    notes = tmp_path / "collected.log"
    notes.write_text(collector.received.read_text())
    assert load_checkpoints(str(notes), key.verifier) == [POINT]
    assert NAME in stored


@pytest.mark.root
def test_a_collector_with_a_certificate_of_another_ca_is_refused(
    collector: Collector, pki: Pki, key: SigningKey
) -> None:
    with pytest.raises(WitnessError, match="CERTIFICATE_VERIFY_FAILED"):
        SyslogWitness(collector.address, pki.other_ca / "ca.crt").ship(key.sign(POINT), POINT)
    assert collector.messages() == []


@pytest.mark.root
def test_shipping_with_the_witness_down_then_back_delivers_the_latest_once(
    collector: Collector, pki: Pki, key: SigningKey, tmp_path: Path
) -> None:
    """Two checkpoints taken while rsyslog is down: the outbox keeps the latest (it
    vouches for everything before it), survives a restart of the shipper, and reaches
    the collector once rsyslog is back."""
    witness = SyslogWitness(collector.address, pki.ca)
    outbox_path = tmp_path / "outbox.json"
    collector.stop()
    outbox = Outbox(outbox_path, [witness.name])
    later = Checkpoint(NAME, 50, "cd" * 32, "2026-12-05T06:05:00.000000Z")
    failures: list[str] = []

    async def round_with(box: Outbox) -> None:
        await Shipper(box, [witness], on_failure=failures.append).ship_due()

    outbox.taken(key.sign(POINT), POINT, time.time() - 10)
    outbox.taken(key.sign(later), later, time.time())
    asyncio.run(round_with(outbox))
    assert failures == ["syslog"]
    behind_since = outbox.oldest_behind()
    assert behind_since is not None and time.time() - behind_since >= 10
    restarted = Outbox(outbox_path, [witness.name])  # the agent restarts meanwhile
    assert restarted.checkpoint == later
    collector.start()
    asyncio.run(round_with(restarted))
    wait_until(lambda: collector.messages())
    assert len(collector.messages()) == 1 and "| 50 |" in collector.messages()[0]
    assert restarted.oldest_behind() is None
    asyncio.run(round_with(Outbox(outbox_path, [witness.name])))  # nothing owed: nothing sent
    time.sleep(0.5)
    assert len(collector.messages()) == 1


# Invariant 10: the outbox lies beside the checkpoint key, maybe in the service
# account's directory while the agent runs as root.


def test_a_fifo_in_place_of_the_outbox_is_not_waited_on_and_the_outbox_starts_afresh(
    tmp_path: Path,
) -> None:
    outbox_path = tmp_path / "outbox.json"
    os.mkfifo(outbox_path)
    opened: list[Outbox] = []
    raised = raised_without_waiting_on(
        outbox_path, lambda: opened.append(Outbox(outbox_path, ["syslog"]))
    )
    assert raised is None and opened[0].checkpoint is None


def test_an_outbox_larger_than_any_outbox_is_not_read_whole(tmp_path: Path) -> None:
    """A link to /dev/zero would be read until memory ran out; a huge file stands in."""
    outbox_path = tmp_path / "outbox.json"
    state = {"note": "x" * (2 << 20), "checkpoint": None, "taken_at": 0, "witnesses": {}}
    outbox_path.write_text(json.dumps(state))
    assert Outbox(outbox_path, ["syslog"]).note is None


def test_the_outbox_is_not_written_through_a_fifo_or_link_at_its_temporary_name(
    key: SigningKey, tmp_path: Path
) -> None:
    outbox_path = tmp_path / "outbox.json"
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    outbox = Outbox(outbox_path, ["syslog"])
    for planted in ("fifo", "link"):
        temporary = tmp_path / "outbox.json.tmp"
        if planted == "fifo":
            os.mkfifo(temporary)
        else:
            temporary.symlink_to(secret)
        raised = raised_without_waiting_on(
            temporary, lambda: outbox.taken(key.sign(POINT), POINT, time.time())
        )
        assert raised is None, planted
        assert Outbox(outbox_path, ["syslog"]).checkpoint == POINT
        assert not temporary.exists() and not temporary.is_symlink()
    assert secret.read_text() == "root only\n"


def wait_until(condition: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")
