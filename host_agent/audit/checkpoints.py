"""The agent's checkpoints, put together from [audit.checkpoints]: the signing key,
the outbox, the witnesses, and what /health, the metrics and the fail-closed
option read of them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from host_agent.audit.checkpoint import Checkpoint, CheckpointError, SigningKey
from host_agent.audit.witness import Outbox, Witness
from host_agent.config.audit import CheckpointConfig
from host_agent.errors import ConfigError, HostAgentError


class WitnessBehind(HostAgentError):
    """A witness has lacked a checkpoint for longer than fail_closed_after_seconds:
    mutating operations wait until it has one (as Vault does with a blocked audit
    device)."""

    status = 503
    code = "audit_witness_behind"


class Checkpoints:
    def __init__(self, config: CheckpointConfig, witnesses: list[Witness]) -> None:
        self.config = config
        try:
            self.key = SigningKey.load(config.key_file, config.name)
        except CheckpointError as exc:
            raise ConfigError(
                str(config.key_file),
                [f"audit.checkpoints.key_file: {exc} (create it with "
                 "`host-agent audit checkpoint-init`)"],
            ) from exc  # fmt: skip
        self.witnesses = witnesses
        self.outbox = Outbox(config.outbox_file, [witness.name for witness in witnesses])
        # Called (from any thread) when a checkpoint is taken: wakes the shipper.
        self.wake: Callable[[], object] = lambda: None

    def taken(self, note: str, checkpoint: Checkpoint) -> None:
        """The audit log wrote a checkpoint: it is what every witness is owed now."""
        self.outbox.taken(note, checkpoint, time.time())
        self.wake()

    def behind(self, now: float) -> dict[str, float]:
        """Seconds each witness has lacked the latest checkpoint, for those behind."""
        return {
            name: now - backlog.behind_since
            for name, backlog in self.outbox.backlog.items()
            if backlog.behind_since is not None
        }

    def check_mutating(self, now: float) -> None:
        """Refuse a mutating operation while a witness is too far behind (if asked to)."""
        limit = self.config.fail_closed_after_seconds
        late = {name: age for name, age in self.behind(now).items() if age > limit}
        if limit and late:
            names = ", ".join(sorted(late))
            raise WitnessBehind(
                f"audit checkpoints have not reached {names} for over {limit} s: mutating "
                "operations wait until they do"
            )

    def status(self, now: float) -> dict[str, Any]:
        """For /health: the latest checkpoint, and each witness's backlog."""
        latest = self.outbox.checkpoint
        behind = self.behind(now)
        late = any(age > self.config.every_seconds for age in behind.values())
        return {
            "state": "behind" if late else "ok",
            "latest_size": None if latest is None else latest.size,
            "witnesses": {
                name: {"shipped_size": backlog.shipped, "behind_seconds": behind.get(name)}
                for name, backlog in self.outbox.backlog.items()
            },
        }


def digest(note: str, checkpoint: Checkpoint, host: str) -> str:
    """The approvers' daily message: the latest checkpoint, to keep off the host."""
    return (
        f"host-agent audit checkpoint of {host}: {checkpoint.size} records, at "
        f"{checkpoint.time}.\n"
        "Keep this message: checked against the host's log later, it shows whether "
        "that log was rewritten or cut (host-agent audit verify --checkpoints).\n\n"
        f"{note}"
    )
