"""Shipping checkpoints off the host: an outbox that survives restarts, and witnesses.

Only the latest checkpoint matters to a witness: the chain links every record to
the one before, so a witness holding (size N, head H) can tell whether any of
records 1..N changed. The outbox therefore keeps the latest signed note and, per
witness, the size it last took and since when it has been behind. Shipping runs
in the background, retried with backoff, and never holds up a request; how far
behind each witness is shows in /health and a metric, and, if the operator asks,
stops mutating operations (`fail_closed_after_seconds`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from host_agent import small_files
from host_agent.audit.checkpoint import Checkpoint

log = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 300.0
# The latest note and a line per witness: far less, unless something else was put there.
_MAX_OUTBOX_BYTES = 1 << 20


class WitnessError(Exception):
    """A witness could not take a checkpoint now (retried later)."""


class Witness(Protocol):
    name: str

    def ship(self, note: str, checkpoint: Checkpoint) -> None:
        """Hand one signed checkpoint to the witness; raise WitnessError on failure."""
        ...


@dataclass(frozen=True)
class Backlog:
    """One witness's state: the size it last took, and since when it is behind."""

    shipped: int
    behind_since: float | None


class Outbox:
    """The latest note and each witness's backlog, in one small JSON file replaced
    atomically (written when a checkpoint is taken and when a witness takes one)."""

    def __init__(self, path: Path, witnesses: Sequence[str]) -> None:
        self.path = path
        self._lock = threading.Lock()
        state = self._read()
        self.note: str | None = state.get("note")
        self.checkpoint: Checkpoint | None = (
            Checkpoint(**state["checkpoint"]) if state.get("checkpoint") else None
        )
        self.taken_at = float(state.get("taken_at") or 0.0)
        known = state.get("witnesses", {})
        self.backlog = {
            name: Backlog(int(known.get(name, {}).get("shipped", 0)), None)
            if name not in known or known[name].get("behind_since") is None
            else Backlog(int(known[name]["shipped"]), float(known[name]["behind_since"]))
            for name in witnesses
        }

    def taken(self, note: str, checkpoint: Checkpoint, now: float) -> None:
        """A new checkpoint: every witness that lacks it is behind from now (or still
        behind since its earlier miss)."""
        with self._lock:
            self.note, self.checkpoint, self.taken_at = note, checkpoint, now
            self.backlog = {
                name: backlog
                if backlog.shipped >= checkpoint.size
                else Backlog(backlog.shipped, backlog.behind_since or now)
                for name, backlog in self.backlog.items()
            }
            self._write()

    def shipped(self, name: str, size: int) -> None:
        with self._lock:
            current = self.checkpoint.size if self.checkpoint else 0
            # Behind still if a newer checkpoint was taken meanwhile: since that one.
            self.backlog[name] = Backlog(size, None if size >= current else self.taken_at)
            self._write()

    def oldest_behind(self) -> float | None:
        """Since when the witness furthest behind has lacked a checkpoint (None: none)."""
        times = [b.behind_since for b in self.backlog.values() if b.behind_since is not None]
        return min(times) if times else None

    def _read(self) -> dict[str, Any]:
        try:
            state = json.loads(small_files.read_regular(self.path, _MAX_OUTBOX_BYTES))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("checkpoint outbox %s unreadable (%s): starting afresh", self.path, exc)
            return {}
        return state if isinstance(state, dict) else {}

    def _write(self) -> None:
        state = {
            "note": self.note,
            "checkpoint": None if self.checkpoint is None else vars(self.checkpoint),
            "taken_at": self.taken_at,
            "witnesses": {
                name: {"shipped": b.shipped, "behind_since": b.behind_since}
                for name, b in self.backlog.items()
            },
        }
        data = json.dumps(state, sort_keys=True).encode()
        temporary = self.path.with_name(f"{self.path.name}.tmp")
        small_files.replace_with(self.path, data, 0o600, temporary=temporary, durable=True)


class Shipper:
    """Hands the latest checkpoint to every witness that lacks it, each on its own
    backoff; `wake` (a new checkpoint) starts a round at once."""

    def __init__(
        self,
        outbox: Outbox,
        witnesses: Sequence[Witness],
        on_failure: Callable[[str], None] = lambda name: None,
    ) -> None:
        self.outbox = outbox
        self.witnesses = list(witnesses)
        self.on_failure = on_failure
        self._wake = asyncio.Event()
        self._retry_at = {witness.name: 0.0 for witness in self.witnesses}
        self._delay = {witness.name: FIRST_RETRY_SECONDS for witness in self.witnesses}

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self.ship_due()
            self._wake.clear()
            waits = [at - time.monotonic() for at in self._retry_at.values()]
            idle = max(0.1, min([w for w in waits if w > 0], default=MAX_RETRY_SECONDS))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), idle)

    async def ship_due(self) -> None:
        note, checkpoint = self.outbox.note, self.outbox.checkpoint
        if note is None or checkpoint is None:
            return
        for witness in self.witnesses:
            name = witness.name
            if self.outbox.backlog[name].shipped >= checkpoint.size:
                continue
            if time.monotonic() < self._retry_at[name]:
                continue
            try:
                await asyncio.to_thread(witness.ship, note, checkpoint)
            except WitnessError as exc:
                log.warning("checkpoint witness %s: %s", name, exc)
                self.on_failure(name)
                self._retry_at[name] = time.monotonic() + self._delay[name]
                self._delay[name] = min(MAX_RETRY_SECONDS, self._delay[name] * 2)
                continue
            self._delay[name] = FIRST_RETRY_SECONDS
            self._retry_at[name] = 0.0
            await asyncio.to_thread(self.outbox.shipped, name, checkpoint.size)
