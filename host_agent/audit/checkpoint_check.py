"""Checking a log against the checkpoints its witnesses hold (`audit verify
--checkpoints`): every checkpoint a witness took of this log must name a record
the files have, hashing as it did then."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from host_agent.audit.checkpoint import Checkpoint, CheckpointError, Verifier, open_note
from host_agent.audit.syslog_witness import SEPARATOR, note_from_message

_SIGNATURE = "\u2014 "


def load_checkpoints(source: str, verifier: Verifier) -> list[Checkpoint]:
    """The checkpoints of `verifier`'s log in `source`: a PostgreSQL witness (a libpq
    URL) or a file of notes one after the other (what a syslog collector kept)."""
    if source.startswith(("postgresql://", "postgres://")):
        from host_agent.audit.pg_witness import read_notes

        notes = read_notes(source, verifier.name)
    else:
        notes = split_notes(Path(source).read_text(encoding="utf-8"))
    found = []
    for note in notes:
        try:
            found.append(open_note(note, verifier))
        except CheckpointError as exc:
            if "is not signed by" in str(exc):
                continue  # another host's, in a shared file
            raise
    return dedupe(found)


def dedupe(checkpoints: list[Checkpoint]) -> list[Checkpoint]:
    """One checkpoint per size, by size; two heads signed for one size are refused."""
    by_size: dict[int, Checkpoint] = {}
    for checkpoint in checkpoints:
        seen = by_size.setdefault(checkpoint.size, checkpoint)
        if seen.head != checkpoint.head:
            raise CheckpointError(
                f"the host's key signed two different heads for seq {checkpoint.size} "
                f"({seen.time} and {checkpoint.time}): two histories"
            )
    return [by_size[size] for size in sorted(by_size)]


def split_notes(text: str) -> list[str]:
    """Notes written one after the other (each ends with its signature lines), or one
    a line as a syslog collector stores them (see syslog_witness.py)."""
    if all(SEPARATOR in line for line in text.splitlines() if line.strip()):
        return [note_from_message(line.strip()) for line in text.splitlines() if line.strip()]
    notes: list[str] = []
    current: list[str] = []
    signing = False
    for line in text.splitlines(keepends=True):
        if signing and not line.startswith(_SIGNATURE):
            notes.append("".join(current))
            current, signing = [], False
            if not line.strip():
                continue
        current.append(line)
        signing = signing or line.startswith(_SIGNATURE)
    if current:
        notes.append("".join(current))
    return notes


class CheckpointCheck:
    """Fed each record in order; the first divergence from a witness."""

    def __init__(self, checkpoints: list[Checkpoint]) -> None:
        self._by_size = {checkpoint.size: checkpoint for checkpoint in checkpoints}
        self._sizes = sorted(self._by_size)
        self.named = frozenset(self._by_size)  # the seqs of the records it looks at
        self.checked = 0
        self._last_good: int | None = None

    def feed(self, record: dict[str, Any]) -> str | None:
        seq = record["seq"]
        checkpoint = self._by_size.get(seq)
        if checkpoint is None:
            return None
        if checkpoint.head != record["hash"]:
            since = "" if self._last_good is None else f", after seq {self._last_good}"
            return (
                f"record {seq} is not the one the witness saw at {checkpoint.time} (its "
                f"hash was {checkpoint.head[:16]}...): the log was rewritten at or before "
                f"this record{since}"
            )
        self.checked += 1
        self._last_good = seq
        return None

    def finish(self, last_seq: int | None) -> str | None:
        beyond = [size for size in self._sizes if last_seq is None or size > last_seq]
        if not beyond:
            return None
        checkpoint = self._by_size[beyond[-1]]
        return (
            f"the files end at seq {last_seq}, but a witness holds a checkpoint of seq "
            f"{checkpoint.size} taken at {checkpoint.time}: records were cut from the end"
        )
