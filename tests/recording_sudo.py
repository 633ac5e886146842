"""A stand-in for sudo that records each process the agent would start and succeeds
silently: an agent on it runs every operation policy allows and starts nothing real.

The runner starts every child as `SUDO -n -- WRAPPER ARGV` (host_agent/runner.py is the
only module allowed to start one), so a line in the record is a process the agent
started, whatever path led there.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

RECORDER = """#!/bin/sh
# Stands in for sudo: every process the agent starts is recorded, then succeeds silently.
printf '%s\\n' "$*" >> {record}
"""


@dataclass(frozen=True)
class RecordingSudo:
    sudo: Path  # the value for `[runner] sudo`
    record: Path  # one line per process started

    def configure(self, text: str) -> str:
        """`text` (a config_text) with `[runner] sudo` set to the recorder."""
        return with_runner_key(text, f'sudo = "{self.sudo}"')


def with_runner_key(text: str, line: str) -> str:
    """config_text has no parameter for [runner] sudo: add the key to that table."""
    assert text.count("\n[runner]\n") == 1
    return text.replace("\n[runner]\n", f"\n[runner]\n{line}\n")


@contextmanager
def recording_sudo() -> Iterator[RecordingSudo]:
    """The recorder in a fresh world-readable directory: it runs as the service account
    (nobody, under root), which must reach it. Removed afterwards."""
    shared = Path(tempfile.mkdtemp(prefix="ha-sudo-", dir="/tmp"))
    try:
        shared.chmod(0o755)
        record = shared / "started.log"
        record.touch()
        record.chmod(0o666)
        sudo = shared / "sudo"
        sudo.write_text(RECORDER.format(record=record))
        sudo.chmod(0o755)
        yield RecordingSudo(sudo, record)
    finally:
        shutil.rmtree(shared)
