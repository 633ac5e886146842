"""Bare sudo's starter: a lean process of the service account's that starts each
command as the installed agent's runner does (the same account, so no uid switch and
a vfork; the runner's environment, cwd and session), so that the floor pays what the
agent pays to start a child, and nothing more. The benchmark itself runs as root: a
child it started under another uid would be forked, which costs more than the agent's
start of the same child."""

from __future__ import annotations

import json
import subprocess
import sys
from types import TracebackType
from typing import IO

from bench.environment import Account
from host_agent.runner import CLEAN_ENV

# Run with `python -I -c`: nothing imported beyond what it needs, no project on the path.
_SCRIPT = r"""
import json, subprocess, sys
env = json.loads(sys.argv[1])
for line in sys.stdin:
    done = subprocess.run(
        json.loads(line), stdin=subprocess.DEVNULL, capture_output=True, env=env, cwd="/",
        start_new_session=True, timeout=60, check=False,
    )
    print(json.dumps([done.returncode, done.stderr[-200:].decode("utf-8", "replace")]), flush=True)
"""


class Launcher:
    """One command at a time, as the service account; one launcher per client thread."""

    def __init__(self, account: Account) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-I", "-c", _SCRIPT, json.dumps(CLEAN_ENV)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd="/",
            user=account.uid,
            group=account.gid,
            extra_groups=list(account.groups),
        )

    @property
    def pid(self) -> int:
        return self._process.pid

    def run(self, argv: tuple[str, ...]) -> tuple[int, str]:
        """Its exit status and the end of its stderr."""
        request, reply = self._streams()
        request.write(json.dumps(argv) + "\n")
        request.flush()
        answer = reply.readline()
        if not answer:
            raise RuntimeError(f"the launcher exited ({self._process.wait()})")
        code, stderr = json.loads(answer)
        return int(code), str(stderr)

    def _streams(self) -> tuple[IO[str], IO[str]]:
        assert self._process.stdin is not None and self._process.stdout is not None
        return self._process.stdin, self._process.stdout

    def __enter__(self) -> Launcher:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        request, _ = self._streams()
        request.close()  # its loop ends at end of input
        self._process.wait(30)
