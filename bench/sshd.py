"""The baseline operators use today: OpenSSH on loopback, key auth, a forced command.

A dedicated `sshd` (Debian's openssh-server) with its own host key and config
in the benchmark's directory, never the system's. Each workload has its own
client key whose authorized_keys line forces exactly the sudo argv the agent
would run, so ssh does the same work as the agent, plus its own. Both ways
operators run it are measured: a fresh connection per operation, and a
multiplexed one (`ControlMaster`) whose sessions skip the key exchange.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"
PRIVSEP_DIR = Path("/run/sshd")
_STARTUP_SECONDS = 15.0

_CONFIG = """\
ListenAddress 127.0.0.1
Port {port}
HostKey {directory}/host_ed25519
PidFile {directory}/sshd.pid
AuthorizedKeysFile {directory}/authorized_keys
AllowUsers {user}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM no
# The benchmark's directory sits under the world-writable /tmp, which StrictModes refuses;
# the files themselves are root's, 0644 in a 0755 directory.
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
LogLevel ERROR
# Many sessions on one multiplexed connection, many fresh connections at once.
MaxSessions 64
MaxStartups 64
"""


@dataclass(frozen=True)
class Ssh:
    """How to reach the forced command of each workload over ssh."""

    directory: Path
    port: int
    user: str

    def _options(self, workload: str) -> list[str]:
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-p",
            str(self.port),
            "-i",
            str(self.directory / f"client-{workload}"),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={self.directory / 'known_hosts'}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "LogLevel=ERROR",
        ]

    def fresh(self, workload: str) -> list[str]:
        """A new connection (key exchange, authentication) for one operation."""
        return [*self._options(workload), f"{self.user}@127.0.0.1", workload]

    def multiplexed(self, workload: str) -> list[str]:
        """A new session on the workload's master connection."""
        control = f"ControlPath={self._control(workload)}"
        return [*self._options(workload), "-o", control, f"{self.user}@127.0.0.1", workload]

    def _control(self, workload: str) -> Path:
        return self.directory / f"mux-{workload}"

    @contextmanager
    def master(self, workload: str) -> Iterator[None]:
        """The long-lived connection that multiplexed sessions of `workload` share."""
        control = f"ControlPath={self._control(workload)}"
        argv = [*self._options(workload), "-M", "-N", "-o", control, f"{self.user}@127.0.0.1"]
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        try:
            _wait(lambda: self._control(workload).exists(), "ssh master connection")
            yield
        finally:
            process.terminate()
            process.wait(30)


@contextmanager
def running_sshd(
    directory: Path, user: str, commands: Mapping[str, tuple[str, ...]]
) -> Iterator[Ssh]:
    """sshd on a free loopback port; `commands` maps each workload to the argv it forces.

    The service account gets a shell (sshd runs forced commands through it) and
    a password field that is not locked (sshd without PAM refuses locked accounts).
    """
    directory.mkdir(mode=0o755)
    _run("usermod", "--shell", "/bin/sh", "--password", "*", user)
    _keygen(directory / "host_ed25519")
    keys = []
    for workload, argv in commands.items():
        _keygen(directory / f"client-{workload}")
        public = (directory / f"client-{workload}.pub").read_text().strip()
        keys.append(f'restrict,command="{shlex.join(argv)}" {public}\n')
    (directory / "authorized_keys").write_text("".join(keys))
    port = _free_port()
    host_key = (directory / "host_ed25519.pub").read_text().split()[:2]
    (directory / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(host_key)}\n")
    config = directory / "sshd_config"
    config.write_text(_CONFIG.format(port=port, directory=directory, user=user))
    with ExitStack() as stack:
        if not PRIVSEP_DIR.exists():
            PRIVSEP_DIR.mkdir(mode=0o755)
            stack.callback(PRIVSEP_DIR.rmdir)
        log = stack.enter_context((directory / "sshd.log").open("w"))
        daemon = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL, stderr=log
        )
        stack.callback(daemon.wait, 30)
        stack.callback(daemon.terminate)
        _wait(lambda: _listening(port), "sshd")
        yield Ssh(directory, port, user)


def _keygen(path: Path) -> None:
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "host-agent-bench", "-f", str(path))


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _wait(ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + _STARTUP_SECONDS
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up in {_STARTUP_SECONDS:g}s")
        time.sleep(0.05)
