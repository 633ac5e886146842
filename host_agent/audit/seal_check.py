"""Checking a log's seals with the operator's verification key (see seal.py).

Fed every record in chain order, it holds the seals to these rules, each learnt
from a break of journald's sealing (CVE-2023-31437, -31438, -31439):
- seals are continuous: the seal after epoch e's (or after the epochs its
  `through` declares empty) is for the next epoch, never a later one, so cutting
  sealed epochs out shows;
- a seal's MAC is checked under the key of the epoch it names, derived from the
  seed, so no later key can seal an earlier epoch;
- every record a seal covers is dated within that seal's epoch: nothing from an
  earlier epoch is sealed with a newer key, nothing from a later one with an older;
- records after the last seal must belong to the epoch after it: cutting the log
  back and writing on leaves records dated after their epoch ended.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import Any

from host_agent.audit.chain import FILE_EVENT, stamp
from host_agent.audit.seal import (
    SEAL_EVENT,
    VerificationKey,
    first_key,
    next_key,
    seal_id,
    seal_mac,
)

_SEAL_FIELDS = {"seal_id": str, "epoch": int, "through": int, "mac": str}
_MAC_TEXT = re.compile("[0-9a-f]{64}")


@dataclass
class Dated:
    """Records no seal covers yet, as the check needs them: how many, and the span of
    their dates (a file's first line, written when the file was opened, has none)."""

    count: int = 0
    earliest: str | None = None
    latest: str | None = None

    def add(self, record: dict[str, Any]) -> None:
        self.count += 1
        if record.get("event") != FILE_EVENT:
            ts = str(record["ts"])
            if self.earliest is None or ts < self.earliest:
                self.earliest = ts
            if self.latest is None or ts > self.latest:
                self.latest = ts

    def join(self, later: Dated) -> None:
        """Count the records `later` holds, which follow these."""
        self.count += later.count
        if later.earliest is not None and (self.earliest is None or later.earliest < self.earliest):
            self.earliest = later.earliest
        if later.latest is not None and (self.latest is None or later.latest > self.latest):
            self.latest = later.latest


class SealCheck:
    def __init__(self, key: VerificationKey, now: float) -> None:
        self.ident = seal_id(key.seed)
        self.epochs = key.epochs
        self._first_key = first_key(key.seed)
        self._latest_epoch = key.epochs.at(now)
        self.expected: int | None = None  # the epoch the next seal must be for
        self._key: bytes | None = None  # that epoch's key
        self.sealed_seq: int | None = None
        self._since = Dated()  # the records since the last seal

    @property
    def sealed_epoch(self) -> int | None:
        """The last epoch the seals vouch for (its `through`); None before any seal."""
        return None if self.sealed_seq is None or self.expected is None else self.expected - 1

    @property
    def unsealed(self) -> int:
        """How many records follow the last seal."""
        return self._since.count

    @staticmethod
    def looks_at(record: dict[str, Any]) -> bool:
        """Whether the check needs `record` itself, not only its count and date: a seal,
        or the log's first record."""
        return record["seq"] == 1 or record.get("event") == SEAL_EVENT

    def feed(self, record: dict[str, Any]) -> str | None:
        """Take the next record; what is wrong with it, if anything."""
        if record["seq"] == 1:
            self.expected = 0  # the log's very beginning: its first seal is epoch 0's
        if record.get("event") == SEAL_EVENT:
            return self._seal(record)
        self._since.add(record)
        return None

    def take(self, records: Dated) -> None:
        """Take the next records at once, none of which `looks_at` (they cannot be wrong
        by themselves: only a seal, or the end, finds their dates wrong)."""
        self._since.join(records)

    def finish(self, last_seq: int | None) -> str | None:
        """What is wrong with the end of the log, if anything."""
        if self.expected is None:  # neither a seal nor the log's beginning
            return (
                "no seal record in the files given (the first is written when epoch 0 ends, "
                f"at {stamp(self.epochs.end(0))})"
            )
        # From the log's beginning, a log younger than epoch 0 has no seal yet: fine, as
        # long as its records are dated within epoch 0.
        return self._dated_within(self.expected, "records after the last seal")

    def _seal(self, record: dict[str, Any]) -> str | None:
        for name, kind in _SEAL_FIELDS.items():
            if not isinstance(record.get(name), kind) or isinstance(record.get(name), bool):
                return f"seal record without a valid {name}"
        if not _MAC_TEXT.fullmatch(record["mac"]):  # compare_digest takes ASCII alone
            return "seal record without a valid mac"
        if record["seal_id"] != self.ident:
            return (
                f"sealed under another seed (seal id {record['seal_id']}; this verification "
                f"key's is {self.ident})"
            )
        epoch, through = int(record["epoch"]), int(record["through"])
        if not 0 <= epoch <= through <= self._latest_epoch:
            return f"seal for epochs {epoch}..{through}, which have not all begun yet"
        if self.expected is not None and epoch != self.expected:
            if epoch > self.expected:
                return (
                    f"seal for epoch {epoch} where epoch {self.expected}'s was next: the "
                    f"seals of epochs {self.expected}..{epoch - 1} are missing (records cut "
                    "out, or sealed with a later key)"
                )
            return (
                f"a second seal for epoch {epoch} (epoch {self.expected} was next): "
                "sealed again, or moved"
            )
        key = self._key_for(epoch)
        if not hmac.compare_digest(_mac_of(key, record), record["mac"]):
            return f"the seal's MAC does not match under epoch {epoch}'s key (forged or edited)"
        problem = self._dated_within(epoch, f"records sealed as epoch {epoch}'s")
        if problem is not None:
            return problem
        self.expected, self._key = through + 1, self._advance(key, through + 1 - epoch)
        self.sealed_seq = int(record["seq"])
        self._since = Dated()
        return None

    def _dated_within(self, epoch: int, what: str) -> str | None:
        """The records since the last seal must all be dated within `epoch`."""
        begins, ends = stamp(self.epochs.begin(epoch)), stamp(self.epochs.end(epoch))
        latest, earliest = self._since.latest, self._since.earliest
        if latest is not None and latest >= ends:
            return (
                f"{what} are dated up to {latest}, but epoch {epoch} ended at {ends}: "
                "seals are missing (the log was cut and written on) or records were sealed "
                "with an older key"
            )
        # Epoch 0's seal also vouches for whatever the log held before sealing began.
        if epoch > 0 and earliest is not None and earliest < begins:
            return (
                f"{what} are dated from {earliest}, but epoch {epoch} began at "
                f"{begins}: sealed with a key newer than their epoch (or the clock went back)"
            )
        return None

    def _key_for(self, epoch: int) -> bytes:
        if self._key is not None:
            return self._key  # continuity held: `epoch` is the one expected
        return self._advance(self._first_key, epoch)

    @staticmethod
    def _advance(key: bytes, steps: int) -> bytes:
        for _ in range(steps):
            key = next_key(key)
        return key


def _mac_of(key: bytes, record: dict[str, Any]) -> str:
    """The MAC the seal record should carry; none (matching no MAC) for a record nested
    too deep to serialise again, which the agent never writes."""
    try:
        return seal_mac(key, record)
    except RecursionError:
        return ""
