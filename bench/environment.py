"""The real set-up the benchmarks share, built from the root tests' own helpers.

A service account with the wrappers and their sudoers drop-in
(`tests.system.installed_system`), a zfs-fuse pool (`tests.system.zfs_pool`),
a PKI (`tests.support.make_pki`) and agents as real processes
(`tests.support.serve_process`), so the client and the agent never share a GIL.
Everything lives in one temporary directory and is removed at the end.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pwd
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from host_agent.cli import main
from host_agent.client import ClientConfig
from host_agent.config import Config
from tests.support import Pki, client_context, listening_port, make_pki, serve_process
from tests.system import Pool, System, installed_system, zfs_pool

REPO = Path(__file__).resolve().parent.parent

# May list the pool and run /bin/true; nothing needs a human.
CALLER = "librarian-1"
# read_only in the standard test config: every snapshot it asks for is refused by policy.
REFUSED = "reader-1"
# The caller's unix_user, which the exec adapter runs commands as.
CALLER_UNIX_USER = "bench"

PROFILE = f"""
[[agents]]
cn_pattern = "librarian*"
agent_type = "bench"
unix_user = "{CALLER_UNIX_USER}"
autonomy = "full"
allowed_operations = ["zfs-list", "exec-run"]
"""
# Every benchmark client connects from 127.0.0.1: when the concurrency benchmark's
# clients reconnect together (after the idle timeout, between variants), the
# per-address handshake cap (8) would refuse some. Throughput is measured without it.
SERVER = "max_handshakes_per_address = 64\n"
# Seals and checkpoints at their most frequent: an epoch and a checkpoint a second (no
# witness: shipping runs off the request path, once per checkpoint and witness).
SEALED = """seal_key_file = "{workdir}/seal.key"
seal_epoch_seconds = 1
[audit.checkpoints]
key_file = "{workdir}/checkpoint.key"
every_seconds = 1
"""
# The rate limiter would refuse a benchmark's request rate; it is measured without it.
EXTRA = """
[rate_limit]
enabled = false

[exec]
enabled = true
allowed_commands = ["/bin/true"]
"""


@dataclass(frozen=True)
class Account:
    """The service account as the agent's runner starts children with it."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    @classmethod
    def of(cls, name: str) -> Account:
        entry = pwd.getpwnam(name)
        groups = tuple(g for g in os.getgrouplist(name, entry.pw_gid) if g != entry.pw_gid)
        return cls(name, entry.pw_uid, entry.pw_gid, groups)


@dataclass(frozen=True)
class Agent:
    """`host-agent serve` running as its own process."""

    process: subprocess.Popen[str]
    port: int
    config: Config

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass(frozen=True)
class Bench:
    """Everything a benchmark needs to start agents and reach them as any test CN."""

    root: Path
    pki: Pki
    system: System
    pool: Pool
    # A checkout whose host_agent the agents run instead of the installed one (a candidate fix).
    agent_tree: Path | None = None

    @property
    def env(self) -> dict[str, str] | None:
        """Extra environment for host-agent processes (None: the installed host_agent)."""
        return None if self.agent_tree is None else {"PYTHONPATH": str(self.agent_tree)}

    @property
    def account(self) -> Account:
        return Account.of(self.system.user)

    def config(self, name: str, *, sealed: bool = False) -> Config:
        """An agent config of its own (audit log, approval store) under `root/name`;
        `sealed`: with forward-secure seals and signed checkpoints, each at its most
        frequent (every second), their keys made as an operator makes them."""
        workdir = self.root / name
        workdir.mkdir(mode=0o755, exist_ok=True)
        account = self.account
        os.chown(workdir, account.uid, account.gid)  # its audit log, store and keys
        audit = SEALED.format(workdir=workdir) if sealed else ""
        config = self.system.agent_config(
            self.pki, workdir, name=name, profiles=PROFILE, extra=EXTRA, server=SERVER, audit=audit
        )
        if sealed:
            for command in ("seal-init", "checkpoint-init"):
                with contextlib.redirect_stdout(io.StringIO()):  # the keys are not kept
                    main(["audit", command, "--config", str(config.source)])
        return config

    @contextmanager
    def agent(self, name: str, *, sealed: bool = False) -> Iterator[Agent]:
        config = self.config(name, sealed=sealed)
        account = self.account
        os.chown(config.server.key, account.uid, account.gid)
        process = serve_process(config.source, env=self.env, user=account.name)
        with _listening(process) as port:
            yield Agent(process, port, config)

    @contextmanager
    def stack_floor(self, agent: Agent, reply: bytes) -> Iterator[Agent]:
        """bench/stack_floor.py on `agent`'s config (its certificates and limits, a port
        of its own) answering every request with `reply`, as the service account."""
        with self._floor(agent, "--reply", "reply", reply) as floor:
            yield floor

    @contextmanager
    def stack_and_runner(self, agent: Agent, document: dict[str, Any]) -> Iterator[Agent]:
        """bench/stack_floor.py on `agent`'s config running the operation `document`
        asks for (as CALLER's unix user) through the agent's runner on every request."""
        operation = json.dumps({**document, "unix_user": CALLER_UNIX_USER}).encode()
        with self._floor(agent, "--operation", f"{document['kind']}-run", operation) as floor:
            yield floor

    @contextmanager
    def _floor(self, agent: Agent, option: str, name: str, content: bytes) -> Iterator[Agent]:
        given = self.root / f"{agent.config.source.parent.name}-{name}.json"
        given.write_bytes(content)
        given.chmod(0o644)
        account = self.account
        tree = None if self.agent_tree is None else str(self.agent_tree)
        argv = [sys.executable, "-m", "bench.stack_floor", "--config", str(agent.config.source)]
        process = subprocess.Popen(
            [*argv, option, str(given)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            # bench/ from here, host_agent (its tls_server) from the agent's own tree.
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (tree, str(REPO))))},
            user=account.uid,
            group=account.gid,
            extra_groups=list(account.groups),
        )
        with _listening(process) as port:
            yield Agent(process, port, agent.config)

    def client_config(self, agent: Agent, cn: str = CALLER) -> ClientConfig:
        cert, key = self.pki.client(cn)
        return ClientConfig(f"https://127.0.0.1:{agent.port}", cert, key, self.pki.ca, 60)

    def tls_context(self, cn: str = CALLER) -> ssl.SSLContext:
        return client_context(self.pki.ca, *self.pki.client(cn))


@contextmanager
def _listening(process: subprocess.Popen[str]) -> Iterator[int]:
    """The port of a server process once it listens; the process stopped (SIGTERM) at the end."""
    try:
        port = listening_port(process)
        _drain(process)
        yield port
    finally:
        process.terminate()
        process.wait(30)


def _drain(process: subprocess.Popen[str]) -> None:
    """Keep reading the agent's log so a full pipe never stalls it."""
    stream = process.stderr
    if stream is not None:
        threading.Thread(target=stream.read, daemon=True).start()


@contextmanager
def prepared(agent_tree: Path | None = None) -> Iterator[Bench]:
    """Service account, wrappers, pool and PKI in a fresh directory; all removed afterwards.

    The working directory moves there too, so an agent started with `agent_tree`
    cannot pick up this checkout's host_agent by accident.
    """
    root = Path(tempfile.mkdtemp(prefix="ha-bench-"))
    here = Path.cwd()
    try:
        root.chmod(0o755)
        os.chdir(root)
        (root / "zpool").mkdir(mode=0o755)
        (root / "system").mkdir(mode=0o755)
        with (
            installed_system(root / "system") as system,
            zfs_pool(root / "zpool") as pool,
        ):
            yield Bench(root, make_pki(root), system, pool, agent_tree)
    finally:
        os.chdir(here)
        shutil.rmtree(root, ignore_errors=True)
