"""host_agent.child: real processes read on the event loop (what the runner starts every
wrapper with), without sudo: the pipes, the exit status and what is left behind."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time

import pytest

from host_agent import child as child_module
from host_agent.child import Child

ENV = {"PATH": "/usr/bin:/bin"}


def run(argv: tuple[str, ...], stdin: bytes | None, cap: int) -> Child:
    async def finished() -> Child:
        started = Child(argv, stdin, cap, env=ENV, cwd="/", start_new_session=True)
        try:
            await asyncio.wait_for(started.finish(), 30)
        finally:
            started.close()
        return started

    return asyncio.run(finished())


def test_a_large_stdin_is_fed_while_the_output_is_drained_and_capped() -> None:
    """cat echoes 2 MiB: neither side may block on a full pipe (64 KiB) while the other
    waits, and only the cap is kept."""
    data = os.urandom(2 * 1024 * 1024)
    done = run(("/bin/cat",), data, 4096)
    assert done.exited.result() == 0
    assert bytes(done.stdout.kept) == data[:4096] and done.stdout.truncated
    assert bytes(done.stderr.kept) == b"" and not done.stderr.truncated


def test_a_child_that_never_reads_its_stdin_is_not_an_error() -> None:
    done = run(("/bin/sh", "-c", "exec 0<&-; echo read nothing"), b"x" * (1024 * 1024), 4096)
    assert done.exited.result() == 0
    assert bytes(done.stdout.kept) == b"read nothing\n"


def test_a_child_ended_by_a_signal_has_a_negative_status() -> None:
    done = run(("/bin/sh", "-c", "echo before >&2; kill -TERM $$"), None, 4096)
    assert done.exited.result() == -15
    assert bytes(done.stderr.kept) == b"before\n"


def test_terminate_ends_the_whole_process_group() -> None:
    """A child that ignores SIGTERM, with a child of its own: the grandchild ends with
    the group's SIGTERM, the child with the SIGKILL after the grace."""
    grandchild = f"sleep 30.{os.getpid() % 1000:03d}"  # to find it by

    async def terminated() -> int:
        started = Child(
            ("/bin/sh", "-c", f"trap '' TERM; {grandchild} & wait"),
            None,
            4096,
            env=ENV,
            start_new_session=True,
        )
        try:
            while not _running(grandchild):
                await asyncio.sleep(0.05)
            await started.terminate(0.5)
            return started.exited.result()
        finally:
            started.close()

    assert asyncio.run(asyncio.wait_for(terminated(), 30)) == -9
    assert not _running(grandchild)


def test_a_child_the_loop_cannot_watch_is_killed_not_left_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marker = f"host-agent-child-test-{os.getpid()}"

    def refused(fd: int, blocking: bool) -> None:
        raise OSError(24, "Too many open files")

    async def start() -> None:
        monkeypatch.setattr(child_module.os, "set_blocking", refused)
        try:
            Child(("/bin/sh", "-c", f"sleep 30; : {marker}"), None, 4096, start_new_session=True)
        finally:
            monkeypatch.undo()

    with pytest.raises(OSError, match="Too many open files"):
        asyncio.run(start())
    deadline = time.monotonic() + 10
    while _running(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(marker)


def _running(marker: str) -> bool:
    found = subprocess.run(["pgrep", "-f", marker], capture_output=True, check=False)
    return found.returncode == 0
