"""A child process run on the event loop without asyncio's subprocess transports.

asyncio gives every child a transport, a protocol and a StreamReader per pipe and a
child watcher: ~300 µs of the loop's CPU per child of /bin/true, one at a time, where
this takes ~190 µs: a Popen (vfork and exec), a pidfd the loop watches for the exit,
and the loop's own readers on the pipes, each keeping at most `cap` bytes and draining
the rest so the child never blocks on a full pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass, field
from typing import IO, Any

_READ_CHUNK = 65536


@dataclass
class Output:
    """What one pipe gave, up to the cap."""

    cap: int
    kept: bytearray = field(default_factory=bytearray)
    truncated: bool = False

    def add(self, chunk: bytes) -> None:
        room = self.cap - len(self.kept)
        if room > 0:
            self.kept += chunk[:room]
        if len(chunk) > room:
            self.truncated = True


class Child:
    """One started process: its exit status, its output, and a way to end it."""

    def __init__(self, argv: tuple[str, ...], stdin: bytes | None, cap: int, **popen: Any) -> None:
        """Start `argv` (raises OSError when it cannot be); `stdin`: bytes written to it
        and then closed (None: /dev/null); `popen`: environment, cwd, session, account."""
        self._loop = asyncio.get_running_loop()
        self._process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            **popen,
        )
        self.pid = self._process.pid
        self.exited: asyncio.Future[int] = self._loop.create_future()
        self._done: asyncio.Future[None] = self._loop.create_future()
        self.stdout, self.stderr = Output(cap), Output(cap)
        # The pipes still open, by descriptor: closed through their Popen file objects.
        self._open: dict[int, IO[bytes]] = {}
        try:
            self._watch(self._process.stdout, self.stdout)
            self._watch(self._process.stderr, self.stderr)
            self._feed(self._process.stdin, stdin)
            self._wait_for_exit()
        except BaseException:
            self._abandon()
            raise

    async def finish(self) -> int:
        """The exit status (negative: the signal that ended it), once it has exited and
        both pipes are at their end."""
        await asyncio.shield(self._done)
        return self.exited.result()

    async def terminate(self, grace: float) -> None:
        """SIGTERM its process group (sudo relays it to the wrapper), then SIGKILL."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
            try:
                await asyncio.wait_for(asyncio.shield(self.exited), grace)
                return
            except TimeoutError:
                continue

    def close(self) -> None:
        """Stop reading and close the pipes; a child still running is reaped when it exits."""
        for fd in list(self._open):
            self._close(fd)

    def _opened(self, stream: IO[bytes] | None) -> int:
        assert stream is not None  # a pipe Popen made
        fd = stream.fileno()
        os.set_blocking(fd, False)
        self._open[fd] = stream
        return fd

    def _abandon(self) -> None:
        """A child the loop could not be set up to watch: killed, none of its pipes left
        open, and reaped by a thread."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.close()
        for stream in (self._process.stdin, self._process.stdout, self._process.stderr):
            if stream is not None:
                stream.close()
        self._loop.run_in_executor(None, self._process.wait)

    def _watch(self, stream: IO[bytes] | None, output: Output) -> None:
        fd = self._opened(stream)
        self._loop.add_reader(fd, self._read, fd, output)

    def _read(self, fd: int, output: Output) -> None:
        try:
            chunk = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            output.add(chunk)
        else:
            self._close(fd)

    def _feed(self, stream: IO[bytes] | None, data: bytes | None) -> None:
        """Write `data` to stdin, then close it; a child that exits without reading it
        is not an error."""
        if data is None:
            return
        fd = self._opened(stream)
        left = memoryview(data)

        def write() -> None:
            nonlocal left
            try:
                left = left[os.write(fd, left) :]
            except BlockingIOError:
                return
            except OSError:  # the child closed its end
                left = left[:0]
            if not left:
                self._close(fd)

        if left:
            self._loop.add_writer(fd, write)
        else:
            self._close(fd)

    def _wait_for_exit(self) -> None:
        try:
            pidfd = os.pidfd_open(self.pid)
        except OSError:  # a kernel before 5.3: a thread waits instead
            waiting = self._loop.run_in_executor(None, self._process.wait)
            waiting.add_done_callback(lambda done: self._exited(done.result()))
            return

        def reap() -> None:
            status = self._process.poll()
            if status is None:
                return
            self._loop.remove_reader(pidfd)
            os.close(pidfd)
            self._exited(status)

        self._loop.add_reader(pidfd, reap)

    def _exited(self, status: int) -> None:
        self.exited.set_result(status)
        self._settle()

    def _close(self, fd: int) -> None:
        stream = self._open.pop(fd, None)
        if stream is None:
            return
        self._loop.remove_reader(fd)
        self._loop.remove_writer(fd)
        stream.close()
        self._settle()

    def _settle(self) -> None:
        if not self._open and self.exited.done() and not self._done.done():
            self._done.set_result(None)
