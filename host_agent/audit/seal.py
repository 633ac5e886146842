"""Forward-secure seals: what the host's keys cannot forge about the past.

`host-agent audit seal-init` draws a random seed, prints it once for the operator
to keep off the host, and leaves only epoch 0's key on disk: k0 = PRF(seed).
Time is cut into epochs (15 minutes by default) from the moment of the init. When
an epoch ends the agent writes one seal record, MAC'd under that epoch's key, and
then replaces the key with k(i+1) = PRF(k(i)), one-way, overwriting it in place.
A seal is a chained record: its MAC covers its `prev`, so it vouches for every
record before it. Whoever takes the host at time T holds only the key of T's
epoch: they cannot seal an earlier epoch again, so any change to what was sealed
before T shows, and so does cutting the log back and writing it on (the seals of
the epochs cut are missing: seals must be continuous).

One seal per epoch rather than a MAC per record: the same protection (a record of
the current epoch is forgeable either way, by whoever holds its key), at the cost
of one record per epoch instead of one MAC per record.

The verifier re-derives every key from the seed. As in journald's sealing, the
seed can forge seals too: it is for the operator's eyes only.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from host_agent.audit.chain import canonical
from host_agent.audit.private_file import PrivateFileError, create_private, opened_private

SEAL_EVENT = "audit_seal"
SEED_BYTES = 32
DEFAULT_EPOCH_SECONDS = 900
# The key file is one fixed-size line, rewritten in place (never a new file, whose
# old blocks would keep the previous key).
_KEY_FILE_SIZE = 256
_KEY_FILE_MAGIC = "host-agent-seal 1"
_FIRST = b"host-agent audit seal: epoch 0"
_NEXT = b"host-agent audit seal: next epoch"
_ID = b"host-agent audit seal: id"
_MAC = b"host-agent audit seal: seal record\n"


class SealError(Exception):
    """The seal key cannot be used: missing, damaged, or not safely kept."""


def _prf(key: bytes, label: bytes) -> bytes:
    return hmac.new(key, label, hashlib.sha256).digest()


def first_key(seed: bytes) -> bytes:
    return _prf(seed, _FIRST)


def next_key(key: bytes) -> bytes:
    return _prf(key, _NEXT)


def seal_id(seed: bytes) -> str:
    """Which seed a seal was made under (a seed is never recoverable from it)."""
    return _prf(seed, _ID)[:8].hex()


def seal_mac(key: bytes, record: dict[str, Any]) -> str:
    """The MAC of a seal record: over its canonical form without `hash` and `mac`."""
    body = {name: value for name, value in record.items() if name not in ("hash", "mac")}
    return hmac.new(key, _MAC + canonical(body).encode("ascii"), hashlib.sha256).hexdigest()


def format_seed(seed: bytes) -> str:
    text = seed.hex()
    return "-".join(text[i : i + 8] for i in range(0, len(text), 8))


@dataclass(frozen=True)
class Epochs:
    """How time is cut: epoch i is [start + i*interval, start + (i+1)*interval)."""

    start: int
    interval: int

    def at(self, now: float) -> int:
        return max(0, int((now - self.start) // self.interval))

    def begin(self, epoch: int) -> float:
        return float(self.start + epoch * self.interval)

    def end(self, epoch: int) -> float:
        return self.begin(epoch + 1)


@dataclass(frozen=True)
class VerificationKey:
    """What the operator keeps off the host: the seed and the epochs, as one line,
    `SEED/START-INTERVAL` (start and interval in hex seconds, as journald writes its
    verification keys). The epochs come from here, never from the log being checked."""

    seed: bytes
    epochs: Epochs

    def __str__(self) -> str:
        return f"{format_seed(self.seed)}/{self.epochs.start:x}-{self.epochs.interval:x}"

    @classmethod
    def parse(cls, text: str) -> VerificationKey:
        seed_text, _, timing = text.strip().partition("/")
        start, _, interval = timing.partition("-")
        digits = re.sub(r"[\s-]", "", seed_text).lower()
        if (
            not re.fullmatch(f"[0-9a-f]{{{2 * SEED_BYTES}}}", digits)
            or not re.fullmatch(r"[0-9a-f]{1,12}", start)
            or not re.fullmatch(r"[0-9a-f]{1,8}", interval)
            or int(interval, 16) == 0
        ):
            raise SealError(
                "a seal verification key is SEED/START-INTERVAL, as seal-init printed it"
            )
        return cls(bytes.fromhex(digits), Epochs(int(start, 16), int(interval, 16)))


class SealKey:
    """The current epoch's key, kept in its file and moved forward in place."""

    def __init__(self, path: Path, ident: str, epochs: Epochs, epoch: int, key: bytes):
        self.path = path
        self.ident = ident
        self.epochs = epochs
        self.epoch = epoch
        self._key = bytearray(key)

    @classmethod
    def create(
        cls, path: Path, seed: bytes, epochs: Epochs, owner: tuple[int, int] | None
    ) -> SealKey:
        """Write epoch 0's key to a new file (0600, `owner`'s); never over an old one."""
        try:
            create_private(path, b"", owner)
        except PrivateFileError as exc:
            raise SealError(f"{exc}: a seal sequence was started already?") from None
        key = cls(path, seal_id(seed), epochs, 0, first_key(seed))
        key._store()
        return key

    @classmethod
    def load(cls, path: Path) -> SealKey:
        """The key file as the agent left it; refused unless it is a private regular
        file whose content checks out."""
        if not path.exists():
            raise SealError(f"{path} does not exist: run `host-agent audit seal-init` first")
        try:
            with opened_private(path, os.O_RDONLY) as fd:
                text = os.pread(fd, _KEY_FILE_SIZE, 0).decode("ascii", "replace")
        except PrivateFileError as exc:
            raise SealError(str(exc)) from None
        return cls(path, *_parse_key_file(path, text))

    def mac(self, record: dict[str, Any]) -> str:
        return seal_mac(bytes(self._key), record)

    def advance(self, epoch: int) -> None:
        """Move to `epoch`'s key, writing it over the old one before it is forgotten."""
        if epoch <= self.epoch:
            return
        key = bytes(self._key)
        for _ in range(epoch - self.epoch):
            key = next_key(key)
        old = self._key
        self._key, self.epoch = bytearray(key), epoch
        self._store()
        old[:] = bytes(len(old))  # best effort: Python may hold other copies

    def _store(self) -> None:
        line = (
            f"{_KEY_FILE_MAGIC} {self.ident} {self.epochs.start} {self.epochs.interval} "
            f"{self.epoch} {bytes(self._key).hex()}"
        )
        line = f"{line} {_check(line)}"
        data = line.ljust(_KEY_FILE_SIZE - 1).encode("ascii") + b"\n"
        try:
            with opened_private(self.path, os.O_WRONLY) as fd:
                if os.pwrite(fd, data, 0) != len(data):
                    raise SealError(f"short write to {self.path}")
                os.fsync(fd)
        except PrivateFileError as exc:
            raise SealError(str(exc)) from None


def _parse_key_file(path: Path, text: str) -> tuple[str, Epochs, int, bytes]:
    fields = text.split()
    if len(fields) != 8 or " ".join(fields[:2]) != _KEY_FILE_MAGIC:
        raise SealError(f"{path} is not a host-agent seal key file")
    # The check is a hash, not a MAC: whatever passes it is still read with care.
    damaged = SealError(f"{path} is damaged (its check does not match)")
    if not text.isascii():  # a byte past ASCII, read as U+FFFD
        raise damaged
    line = " ".join(fields[:7])
    if not hmac.compare_digest(_check(line), fields[7]):
        raise damaged
    ident, start, interval, epoch, key = fields[2:7]
    try:
        return ident, Epochs(int(start), int(interval)), int(epoch), bytes.fromhex(key)
    except ValueError:
        raise damaged from None


def _check(line: str) -> str:
    return hashlib.sha256(line.encode("ascii")).hexdigest()[:16]


def new_seed() -> bytes:
    return secrets.token_bytes(SEED_BYTES)
