"""The only place host-agent starts a process: `sudo -n -- <wrapper> <argv...>`.

Argv only (never a shell), a clean environment, a timeout, and a cap on how
much output is kept. The timeout is enforced as root by the wrappers (the
service account cannot signal root's children); the runner's own timer is a
backstop a little later, and says so when it is the one that fired. When the
agent itself was started as root (as in tests and first-run set-ups) the
child is started as the configured service account, so sudoers, not root,
decides what may run.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import signal
import time
from dataclasses import dataclass
from typing import Any

from host_agent.child import Child
from host_agent.config import RunnerConfig
from host_agent.errors import HostAgentError, RunnerError
from host_agent.operations import Operation

CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
_KILL_GRACE_SECONDS = 2.0
# The wrappers' SIGTERM-to-SIGKILL grace (HA_KILL_GRACE in host-agent-lib.sh); the
# backstop waits for it and for sudo's start and exit on top of the timeout.
WRAPPER_KILL_GRACE_SECONDS = 2.0
_BACKSTOP_MARGIN_SECONDS = 5.0
# What the wrappers' coreutils `timeout --verbose` prints when it ends the tool at the
# limit, and the exit statuses then: 124 after SIGTERM; after SIGKILL, which timeout
# sends its own process group, sudo dies of it too (-9), or a shell reports 137.
_WRAPPER_TIMEOUT = re.compile(r"^timeout: sending signal TERM to command ", re.M)
_TIMEOUT_STATUSES = {124: "SIGTERM", 137: "SIGKILL", -signal.SIGKILL: "SIGKILL"}
SUDOERS_WRAPPER = "host-agent-sudoers"


class RunnerSetupError(HostAgentError):
    """The runner cannot run as configured (e.g. root without a service account)."""

    code = "runner_setup_failed"


@dataclass(frozen=True, slots=True)
class RunResult:
    argv: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str
    truncated: bool
    duration_seconds: float


@dataclass(frozen=True, slots=True)
class _Account:
    uid: int
    gid: int
    groups: tuple[int, ...]


class Runner:
    """Runs validated operations through their sudo wrapper."""

    def __init__(self, config: RunnerConfig) -> None:
        self.config = config
        self._account = _resolve_account(config.service_user)

    def argv_for(self, operation: Operation) -> tuple[str, ...]:
        return self._wrapper_argv(operation.wrapper, *operation.wrapper_argv)

    async def run(self, operation: Operation) -> RunResult:
        if not isinstance(operation, Operation):
            raise TypeError("the runner accepts only validated Operation values")
        return await self._execute(self.argv_for(operation))

    async def run_program(
        self, argv: tuple[str, ...], stdin: bytes, timeout_seconds: float
    ) -> RunResult:
        """Run an operator's own program (not a wrapper: no sudo) as the service account,
        killed after `timeout_seconds`."""
        return await self._execute(argv, stdin=stdin, limit=timeout_seconds)

    async def list_sudoers_grants(self) -> RunResult:
        """Ask the read-only root wrapper for the service account's risky sudoers grants."""
        return await self._execute(self._wrapper_argv(SUDOERS_WRAPPER))

    def _wrapper_argv(self, wrapper: str, *argv: str) -> tuple[str, ...]:
        return (str(self.config.sudo), "-n", "--", str(self.config.wrapper_dir / wrapper), *argv)

    async def _execute(
        self, argv: tuple[str, ...], stdin: bytes | None = None, *, limit: float | None = None
    ) -> RunResult:
        """`limit`: a program of our own account, which the agent can kill itself; without
        it a wrapper, whose root-side timeout the agent's timer only backs up."""
        started = time.monotonic()
        try:
            child = Child(
                argv,
                stdin,
                self.config.max_output_bytes,
                env=dict(CLEAN_ENV),
                cwd="/",
                start_new_session=True,
                **self._drop_privileges(),
            )
        except OSError as exc:
            raise RunnerError(f"cannot start {argv[0]}: {exc.strerror}", argv) from exc
        backstop = (
            self.config.timeout_seconds + WRAPPER_KILL_GRACE_SECONDS + _BACKSTOP_MARGIN_SECONDS
        )
        try:
            exit_code = await asyncio.wait_for(child.finish(), backstop if limit is None else limit)
        except TimeoutError as exc:
            await child.terminate(_KILL_GRACE_SECONDS)
            if limit is not None:
                raise RunnerError(
                    f"{argv[0]} timed out after {limit:g}s and was killed", argv, timed_out=True
                ) from exc
            # Only sudo is ours to signal: whatever runs as root may still be running.
            raise RunnerError(
                f"operation timed out after {backstop:g}s; "
                "the agent could not confirm the process ended",
                argv,
                timed_out=True,
            ) from exc
        except asyncio.CancelledError:
            # The client went away or the server is stopping: leave no runaway child.
            await asyncio.shield(child.terminate(_KILL_GRACE_SECONDS))
            raise
        finally:
            child.close()
        out, err = child.stdout, child.stderr
        result = RunResult(
            argv=argv,
            exit_code=exit_code,
            stdout=out.kept.decode("utf-8", "replace"),
            stderr=err.kept.decode("utf-8", "replace"),
            truncated=out.truncated or err.truncated,
            duration_seconds=time.monotonic() - started,
        )
        if limit is None:
            _raise_if_wrapper_timed_out(result, self.config.timeout_seconds)
        return result

    def _drop_privileges(self) -> dict[str, Any]:
        if self._account is None:
            return {}
        return {
            "user": self._account.uid,
            "group": self._account.gid,
            "extra_groups": list(self._account.groups),
        }


def _resolve_account(service_user: str | None) -> _Account | None:
    """The account to start children as when running as root; None when not root."""
    if os.geteuid() != 0:
        if service_user is not None and pwd.getpwuid(os.geteuid()).pw_name != service_user:
            raise RunnerSetupError(
                f"[runner] service_user is {service_user!r} but the agent runs as "
                f"{pwd.getpwuid(os.geteuid()).pw_name!r}; start it as that account"
            )
        return None
    if service_user is None:
        raise RunnerSetupError(
            "the agent runs as root: set [runner] service_user to the unprivileged account "
            "that sudoers allows to run the wrappers"
        )
    try:
        entry = pwd.getpwnam(service_user)
    except KeyError as exc:
        raise RunnerSetupError(f"[runner] service_user {service_user!r} does not exist") from exc
    if entry.pw_uid == 0:
        raise RunnerSetupError("[runner] service_user must not be root")
    groups = tuple(g for g in os.getgrouplist(service_user, entry.pw_gid) if g != entry.pw_gid)
    return _Account(entry.pw_uid, entry.pw_gid, groups)


def _raise_if_wrapper_timed_out(result: RunResult, timeout_seconds: float) -> None:
    """A wrapper that ended its tool at the root-side timeout ran nothing to completion."""
    signal_name = _TIMEOUT_STATUSES.get(result.exit_code)
    if signal_name is None or not _WRAPPER_TIMEOUT.search(result.stderr):
        return
    raise RunnerError(
        f"operation timed out after {timeout_seconds:g}s and was killed as root ({signal_name})",
        result.argv,
        timed_out=True,
        killed_as_root=True,
        exit_code=result.exit_code,
    )
