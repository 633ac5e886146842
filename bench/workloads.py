"""The operations measured, and each way of doing one: bare sudo, the agent, ssh.

Every way runs the same sudo argv: the one the agent builds for the operation
(its adapter and runner, from the agent's config), after a dry run has shown the
agent allows it. Each action raises `WorkloadFailed` when the operation did not
succeed, so a broken set-up never passes for a fast one.
"""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import wire
from bench.harness import Action, WorkloadFailed
from bench.launcher import Launcher
from host_agent.adapters import build_registry
from host_agent.adapters.zfs import LIST_PROPERTIES
from host_agent.client import Client, ClientError, DryRun, OperationResult
from host_agent.config import Config
from host_agent.request import HostOpRequest
from host_agent.runner import CLEAN_ENV, Runner


@dataclass(frozen=True)
class Workload:
    """One operation: how a caller asks for it, and the sudo argv the agent runs for it."""

    key: str  # a short name for files and ssh keys
    title: str
    kind: str
    resource: str
    args: tuple[str, ...]
    argv: tuple[str, ...]
    # What the wrapper finally runs: the tool's own argv (the floor of the floor).
    tool: tuple[str, ...]

    @property
    def document(self) -> dict[str, Any]:
        return {"kind": self.kind, "resource": self.resource, "args": list(self.args)}

    @property
    def wrapper(self) -> tuple[str, ...]:
        """The wrapper and its arguments: `argv` without sudo in front."""
        return self.argv[self.argv.index("--") + 1 :]


def workloads(client: Client, pool: str, config: Config, unix_user: str) -> list[Workload]:
    """`zfs list` of the pool and `exec` of /bin/true, with the sudo argv the agent runs.

    A caller's dry run shows only the wrapper and its arguments (where sudo and the
    wrappers live is for admins), so the full argv comes from the agent's own adapter
    and runner; it must end with what the dry run showed."""
    # The tool's argv is the wrapper's (host-agent-zfs list; exec runs the command as is).
    listing = ("get", "-H", "-p", "-r", "-o", "name,property,value", ",".join(LIST_PROPERTIES))
    wanted = [
        (
            "zfs-list",
            "zfs list",
            "zfs",
            pool,
            ("list",),
            (str(config.binaries.zfs), *listing, "--", pool),
        ),
        ("exec-true", "exec /bin/true", "exec", "/bin/true", ("run",), ("/bin/true",)),
    ]
    registry, runner = build_registry(config), Runner(config.runner)
    found = []
    for key, title, kind, resource, args, tool in wanted:
        dry = client.run(kind, resource, args, dry_run=True)
        if not isinstance(dry, DryRun) or dry.decision.effect != "allow":
            raise RuntimeError(f"{title} is not allowed by the benchmark config: {dry}")
        request = HostOpRequest(kind, resource, args)
        argv = runner.argv_for(registry.adapter_for(kind).parse(request, unix_user))
        if not _ends_with(argv, dry.argv):
            raise RuntimeError(f"{title}: the agent would run {dry.argv}, not {argv}")
        found.append(Workload(key, title, kind, resource, args, argv, tool))
    return found


def _ends_with(argv: tuple[str, ...], shown: tuple[str, ...]) -> bool:
    """`argv` runs the wrapper `shown` names, with the arguments it shows."""
    start = len(argv) - len(shown)
    return start >= 0 and Path(argv[start]).name == shown[0] and argv[start + 1 :] == shown[1:]


def denied_request(pool: str) -> dict[str, Any]:
    """A snapshot asked for by a read_only caller: decided, audited, refused; nothing runs."""
    return {"kind": "zfs", "resource": f"{pool}/data", "args": ["snapshot", "bench"]}


def bare(workload: Workload, launcher: Launcher) -> Action:
    """The agent's sudo argv started directly by the service account, as the runner
    starts it (bench/launcher.py); it must exit 0."""

    def run() -> None:
        code, stderr = launcher.run(workload.argv)
        if code != 0:
            raise WorkloadFailed(f"{workload.title}: exit {code}: {stderr!r}")

    return run


def as_root(argv: tuple[str, ...], what: str) -> Action:
    """`argv` started as root with the runner's environment, from /, in a session of its
    own: the wrapper alone (what sudo then runs) or the tool alone (what the wrapper then
    runs); it must exit 0."""

    def run() -> None:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=dict(CLEAN_ENV),
            cwd="/",
            start_new_session=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise WorkloadFailed(f"{what}: exit {done.returncode}: {done.stderr[-200:]!r}")

    return run


def keep_alive(client: Client, workload: Workload) -> Action:
    """host_agent.client.Client on its one kept-alive connection."""

    def run() -> None:
        try:
            result = client.run(workload.kind, workload.resource, workload.args)
        except ClientError as exc:
            stderr = "" if exc.result is None else f": {exc.result.stderr[-200:]!r}"
            raise WorkloadFailed(f"{workload.title}: {exc}{stderr}") from exc
        if not isinstance(result, OperationResult) or result.exit_code != 0:
            raise WorkloadFailed(f"{workload.title}: {result}")

    return run


def fresh(port: int, context: ssl.SSLContext, workload: Workload) -> Action:
    """A new TCP connection and full TLS handshake (no session resumption) per operation."""
    request = wire.post("/host/op", workload.document, keep_alive=False)
    return expect(lambda: wire.once(port, context, request), 200, workload.title)


def over_connection(
    connection: wire.Connection, document: dict[str, Any], status: int, what: str
) -> Action:
    """One request after the other on `connection`, each answered with `status`."""
    request = wire.post("/host/op", document)
    return expect(lambda: connection.exchange(request), status, what)


def expect(send: Callable[[], wire.Reply], status: int, what: str) -> Action:
    """`send` must be answered with `status`."""

    def run() -> None:
        reply = send()
        if reply.status != status:
            raise WorkloadFailed(f"{what}: HTTP {reply.status}: {reply.body[:200]!r}")

    return run


def command(argv: list[str], what: str) -> Action:
    """A client program (ssh) run to completion; it must exit 0."""

    def run() -> None:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False
        )
        if done.returncode != 0:
            raise WorkloadFailed(f"{what}: exit {done.returncode}: {done.stderr[-200:]!r}")

    return run
