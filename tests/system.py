"""Real system parts for root tests: a service account, wrappers, sudoers, a zfs-fuse pool.

Everything created here has a per-session unique name and is removed at the end.
"""

from __future__ import annotations

import io
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from host_agent import wrapper_config
from host_agent.config import Config
from tests.support import Pki, config_text, write_config

REPO = Path(__file__).resolve().parent.parent
SUDOERS_D = Path("/etc/sudoers.d")
PROBE = REPO / "tests" / "wrappers" / "host-agent-test-probe"


def require_root_tools(*tools: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a user, installs sudoers, runs zfs-fuse (CI runs as root)")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (the test command installs them)")


def run(
    *argv: str, user: str | None = None, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    if user is not None:
        argv = ("runuser", "-u", user, "--", *argv)
    return subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=60, check=check
    )


def until_done(*argv: str, seconds: float = 20) -> None:
    """Run a teardown command until it succeeds, or fail with what it said last: a
    teardown that fails quietly leaves a user or a pool behind for every later run."""
    deadline = time.monotonic() + seconds
    while (done := run(*argv, check=False)).returncode:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stdout}{done.stderr}")
        time.sleep(0.2)


@contextmanager
def service_account() -> Iterator[str]:
    name = f"ha-test-{secrets.token_hex(3)}"
    run("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name)
    try:
        yield name
    finally:
        # userdel refuses an account any process still runs as (really or effectively:
        # a sudo it started counts): whatever a test left running as it goes first.
        for selector in ("--euid", "--uid"):
            run("pkill", "--signal", "KILL", selector, name, check=False)
        until_done("userdel", name)


@dataclass(frozen=True)
class Wrappers:
    directory: Path
    config: Path
    sudoers: Path

    def configure(self, config: Config) -> None:
        """Render the wrappers' allowlist file from `config`, as an operator would."""
        wrapper_config.write(config, self.config)


@dataclass(frozen=True)
class System:
    """The service account and the wrappers installed for it (one per test session)."""

    user: str
    wrappers: Wrappers
    root: Path

    def agent_config(
        self, pki: Pki, workdir: Path, *, name: str = "agent", **options: Any
    ) -> Config:
        """A test config (see `config_text`) wired to these wrappers; their file rendered."""
        text = config_text(
            pki,
            workdir,
            service_user=self.user,
            wrapper_dir=self.wrappers.directory,
            **options,
        )
        config = write_config(workdir / f"{name}.toml", text)
        self.wrappers.configure(config)
        return config


def install_wrappers(root: Path, user: str, extra: tuple[Path, ...] = ()) -> Wrappers:
    """Install the wrappers with scripts/install-wrappers.sh, as an operator would.

    `extra` wrappers (test probes) are installed beside them and granted in the
    same drop-in, which is validated again afterwards.
    """
    directory = root / "libexec"
    config = root / "wrappers.conf"
    config.write_text("# empty until a test renders it from its agent config\n")
    config.chmod(0o644)
    sudoers = SUDOERS_D / f"host-agent-test-{user}"
    run(
        str(REPO / "scripts" / "install-wrappers.sh"),
        str(directory),
        str(config),
        user,
        str(sudoers),
    )
    try:
        with sudoers.open("a") as grants:
            for source in extra:
                shutil.copyfile(source, directory / source.name)
                (directory / source.name).chmod(0o755)
                grants.write(f"{user} ALL=(root) NOPASSWD: {directory / source.name}\n")
        run("visudo", "-cf", str(sudoers))
    except BaseException:
        sudoers.unlink()  # a broken drop-in would break sudo for the whole machine
        raise
    return Wrappers(directory, config, sudoers)


@contextmanager
def installed_system(root: Path, extra: tuple[Path, ...] = ()) -> Iterator[System]:
    """A fresh service account with every wrapper installed; all removed at the end."""
    root.chmod(0o755)
    with service_account() as user:
        wrappers = install_wrappers(root, user, extra)
        try:
            yield System(user, wrappers, root)
        finally:
            wrappers.sudoers.unlink()


def install_standin(system: System, source: Path) -> Path:
    """Install a stand-in tool root-owned 0755 (wrappers refuse anything else).

    Its state directory, `<name>.state` beside it, is where it records argv.
    """
    directory = system.root / "standins"
    directory.mkdir(mode=0o755, exist_ok=True)
    target = directory / source.name
    shutil.copyfile(source, target)
    target.chmod(0o755)
    state = directory / f"{source.name}.state"
    state.mkdir(mode=0o755, exist_ok=True)
    return target


@dataclass(frozen=True)
class StandIn:
    """An installed stand-in tool, its state file and the argv it recorded."""

    path: Path

    @property
    def state_dir(self) -> Path:
        return self.path.with_name(f"{self.path.name}.state")

    def reset(self, state: dict[str, Any]) -> None:
        (self.state_dir / "state.json").write_text(json.dumps(state))
        (self.state_dir / "argv.jsonl").unlink(missing_ok=True)

    def state(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.state_dir / "state.json").read_text())
        return loaded

    def calls(self) -> list[list[str]]:
        log = self.state_dir / "argv.jsonl"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]


@dataclass(frozen=True)
class Pool:
    name: str

    def datasets(self, kind: str = "all") -> list[str]:
        done = run("zfs", "list", "-H", "-r", "-t", kind, "-o", "name", self.name)
        return done.stdout.split()


@contextmanager
def zfs_pool(root: Path) -> Iterator[Pool]:
    """A fresh pool on a file vdev, served by zfs-fuse (started here unless already running)."""
    daemon = None
    if run("pgrep", "-x", "zfs-fuse", check=False).returncode != 0:
        daemon = subprocess.Popen(
            ["zfs-fuse", "--no-daemon"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    name = f"hatest{secrets.token_hex(3)}"
    vdev = root / "vdev"
    with open(vdev, "wb") as handle:
        handle.truncate(128 * 2**20)
    try:
        deadline = time.monotonic() + 20
        while run("zpool", "create", "-m", "none", name, str(vdev), check=False).returncode:
            if time.monotonic() > deadline:
                raise RuntimeError("zfs-fuse did not come up")
            time.sleep(0.2)
        try:
            run("zfs", "create", f"{name}/data")
            yield Pool(name)
        finally:
            until_done("zpool", "destroy", "-f", name)
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(30)


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    stdout: str
    stderr: str


def as_user(user: str, action: Callable[[], int], stdin: str = "") -> Outcome:
    """Run `action` in a child process that really is `user` (uid, gid, groups).

    Forked rather than exec'd: the child needs no access to this checkout or
    its virtualenv, which another account may not be able to read.
    """
    entry = pwd.getpwnam(user)
    groups = os.getgrouplist(user, entry.pw_gid)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        stdin_read, stdin_write = os.pipe()
        os.write(stdin_write, stdin.encode())
        os.close(stdin_write)
        pid = os.fork()
        if pid == 0:  # pragma: no cover (child)
            code = 70
            try:
                os.setgroups(groups)
                os.setgid(entry.pw_gid)
                os.setuid(entry.pw_uid)
                sys.stdin = io.TextIOWrapper(io.FileIO(stdin_read, "r"))
                sys.stdout = io.TextIOWrapper(io.FileIO(os.dup(out.fileno()), "w"))
                sys.stderr = io.TextIOWrapper(io.FileIO(os.dup(err.fileno()), "w"))
                code = action()
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
        os.close(stdin_read)
        _, wait_status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return Outcome(
            os.waitstatus_to_exitcode(wait_status), out.read().decode(), err.read().decode()
        )
