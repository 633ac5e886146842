"""Signed checkpoints: "this host's log had N records, the last one hashing to H, at
time T", in the C2SP tlog-checkpoint body inside a C2SP signed note (Ed25519).

A checkpoint shipped off the host is a witness the host cannot take back: a log
later cut, rewritten or replaced disagrees with it (`audit verify --checkpoints`).
The format is the one transparency logs use, so a witness need not know anything
about host-agent to keep it and anyone with the verifier key can check it.

    host-agent.example/pve-1/audit          the origin: this host's log
    48211                                   size: records 1..48211
    XB7p...=                                root hash: record 48211's hash (base64)
    time 2026-12-05T06:30:00.000000Z        an extension line

    — host-agent.example/pve-1/audit Ab3d...   key ID and Ed25519 signature
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from host_agent.audit.private_file import PrivateFileError, create_private, opened_private

CHECKPOINT_EVENT = "audit_checkpoint"
_ED25519 = b"\x01"
_DASH = "\u2014"
# Notes we read are small: a few lines and our one signature (plus a witness's few).
MAX_NOTE_BYTES = 4096
_KEY_NAME = re.compile(r"[^\s+]+")
_TIME = re.compile(r"time (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z)")


class CheckpointError(Exception):
    """A note that is not a valid checkpoint signed by the expected key, or a key
    that cannot be used."""


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int  # the seq of the last record covered (records 1..size)
    head: str  # that record's hash, hex
    time: str  # when it was taken, as audit records write time

    def body(self) -> str:
        root = base64.b64encode(bytes.fromhex(self.head)).decode("ascii")
        return f"{self.origin}\n{self.size}\n{root}\ntime {self.time}\n"


def key_id(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + _ED25519 + public).digest()[:4]


@dataclass(frozen=True)
class Verifier:
    """A checkpoint key's public half, written as Go's note verifier keys are:
    `name+hex(key id)+base64(0x01 || public key)`."""

    name: str
    public: bytes

    def __str__(self) -> str:
        encoded = base64.b64encode(_ED25519 + self.public).decode("ascii")
        return f"{self.name}+{key_id(self.name, self.public).hex()}+{encoded}"

    @classmethod
    def parse(cls, text: str) -> Verifier:
        name, _, rest = text.strip().partition("+")
        ident, _, encoded = rest.partition("+")
        try:
            raw = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raw = b""
        if not _KEY_NAME.fullmatch(name) or len(raw) != 33 or raw[:1] != _ED25519:
            raise CheckpointError("a checkpoint verifier key is NAME+KEYID+BASE64, as printed")
        verifier = cls(name, raw[1:])
        if key_id(name, verifier.public).hex() != ident.lower():
            raise CheckpointError("the checkpoint verifier key's id does not match its key")
        return verifier


class SigningKey:
    """The host's Ed25519 checkpoint key, kept in a private file (PKCS#8 PEM)."""

    def __init__(self, name: str, key: Ed25519PrivateKey) -> None:
        if not _KEY_NAME.fullmatch(name):
            raise CheckpointError(f"a checkpoint key name has no spaces or '+': {name!r}")
        self.name = name
        self._key = key
        public = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.verifier = Verifier(name, public)

    @classmethod
    def create(cls, path: Path, name: str, owner: tuple[int, int] | None) -> SigningKey:
        key = Ed25519PrivateKey.generate()
        signing = cls(name, key)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            create_private(path, pem, owner)
        except PrivateFileError as exc:
            raise CheckpointError(str(exc)) from None
        return signing

    @classmethod
    def load(cls, path: Path, name: str) -> SigningKey:
        try:
            with opened_private(path, os.O_RDONLY) as fd:
                pem = os.read(fd, 4096)
            key = serialization.load_pem_private_key(pem, password=None)
        except PrivateFileError as exc:
            raise CheckpointError(str(exc)) from None
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{path} is not an Ed25519 key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise CheckpointError(f"{path} is not an Ed25519 key")
        return cls(name, key)

    def sign(self, checkpoint: Checkpoint) -> str:
        """The whole signed note."""
        body = checkpoint.body()
        signature = key_id(self.name, self.verifier.public) + self._key.sign(body.encode())
        encoded = base64.b64encode(signature).decode("ascii")
        return f"{body}\n{_DASH} {self.name} {encoded}\n"


def open_note(text: str, verifier: Verifier) -> Checkpoint:
    """The checkpoint in `text`, if `verifier`'s key signed it; signatures of other keys
    (a witness's cosignature) are ignored, as the signed-note spec says."""
    if len(text.encode("utf-8", "replace")) > MAX_NOTE_BYTES:
        raise CheckpointError("the note is too large")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise CheckpointError("the note holds control characters")
    body, separator, signatures = text.rpartition("\n\n")
    if not separator or not signatures.endswith("\n"):
        raise CheckpointError("not a signed note (text, a blank line, signature lines)")
    body += "\n"
    ours = key_id(verifier.name, verifier.public)
    verified = False
    for line in signatures[:-1].split("\n"):
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != _DASH or not _KEY_NAME.fullmatch(parts[1]):
            raise CheckpointError(f"not a signature line: {line[:80]!r}")
        name, encoded = parts[1], parts[2]
        try:
            signature = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise CheckpointError("a signature is not base64") from None
        if len(signature) < 5 or name != verifier.name or signature[:4] != ours:
            continue  # another key's: not ours to judge
        try:
            Ed25519PublicKey.from_public_bytes(verifier.public).verify(signature[4:], body.encode())
        except InvalidSignature:
            raise CheckpointError("the checkpoint's signature does not verify") from None
        verified = True
    if not verified:
        raise CheckpointError(f"the note is not signed by {verifier.name}")
    return _parse_body(body)


def _parse_body(body: str) -> Checkpoint:
    lines = body[:-1].split("\n")
    if len(lines) != 4:
        raise CheckpointError("a checkpoint is origin, size, root hash and a time line")
    origin, size, root, when = lines
    match = _TIME.fullmatch(when)
    try:
        head = base64.b64decode(root, validate=True)
    except binascii.Error:
        head = b""
    if not size.isdigit() or len(head) != 32 or match is None or not origin:
        raise CheckpointError("a checkpoint's size, root hash or time is malformed")
    return Checkpoint(origin, int(size), head.hex(), match.group(1))
