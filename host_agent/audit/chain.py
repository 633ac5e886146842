"""The hash chain every audit record is part of.

Each record carries `seq`, `ts`, `prev` (the hash of the record before it) and
`hash` (SHA-256 of its own canonical JSON without `hash`), so deleting,
reordering or editing any line breaks the chain at that line.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

GENESIS = "0" * 64
CHAIN_FIELDS = ("seq", "ts", "prev", "hash")
# The first record of every file after the first (see log.py).
FILE_EVENT = "audit_file"


def canonical(record: dict[str, Any]) -> str:
    """The one serialisation that is hashed and written: sorted keys, ASCII only."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def record_hash(record: dict[str, Any]) -> str:
    body = {key: value for key, value in record.items() if key != "hash"}
    return hashlib.sha256(canonical(body).encode("ascii")).hexdigest()


def stamp(seconds: float) -> str:
    """A record's `ts`: UTC to the microsecond, one fixed width, so stamps compare as text."""
    moment = dt.datetime.fromtimestamp(seconds, dt.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
