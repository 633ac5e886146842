"""Root never acts on a path the service account can change (threat model, invariant 10).

Each test plays the compromised service account against a real install (install.sh
under --prefix): it plants symlinks, FIFOs and foreign pids in its own directories,
then runs what root runs there (the rendered reload script, a real logrotate,
install.sh again and --uninstall) and checks that nothing root-only was read,
signalled, written or chowned. strace records every argv and every byte read by
the whole process tree, so a secret that was read would show.
"""

from __future__ import annotations

import os
import pty
import secrets
import select
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.system import run
from tests.test_install import (
    Installed,
    attributes,
    install_sh,
    installation,
    remove_accounts,
    scratch_checkout,
)

RELOAD = "/usr/local/sbin/host-agent-reload"
PID_FILE = "/run/host-agent/host-agent.pid"
LOG_DIR = "/var/log/host-agent"


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    tools = ("visudo", "logrotate", "useradd", "runuser", "strace", "setsid")
    with scratch_checkout("ha-rootpaths", *tools) as directory:
        yield directory


@pytest.fixture(scope="module")
def installed(base: Path) -> Iterator[Installed]:
    with installation(base, "rp") as done:
        yield done


@dataclass(frozen=True)
class Secret:
    """A root-only file; what it holds must never leave root's hands."""

    path: Path
    marker: str

    def state(self) -> tuple[str, tuple[str, str, str]]:
        return self.path.read_text(), attributes(self.path)


@pytest.fixture
def secret(base: Path) -> Secret:
    marker = f"ha-secret-{secrets.token_hex(8)}"
    path = base / f"secret-{secrets.token_hex(3)}"
    path.write_text(f"{marker}\n")
    path.chmod(0o600)
    return Secret(path, marker)


def traced(base: Path, *argv: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run argv as root under strace: every execve argv and every byte read, of the whole tree."""
    trace = base / f"trace-{secrets.token_hex(3)}"
    done = subprocess.run(
        ["strace", "-f", "-qq", "-s", "65536", "-e", "trace=execve,read", "-o", str(trace), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    text = trace.read_text(errors="replace")
    trace.unlink()
    return done, text


def as_account(installed: Installed, *argv: str) -> None:
    run(*argv, user=installed.user)


def test_reload_never_reads_a_pid_file_symlinked_to_a_root_secret(
    installed: Installed, base: Path, secret: Secret
) -> None:
    pid_file = installed.path(PID_FILE)
    as_account(installed, "ln", "-s", str(secret.path), str(pid_file))
    before = secret.state()
    try:
        done, trace = traced(base, str(installed.path(RELOAD)))
    finally:
        pid_file.unlink()
    assert secret.marker not in trace
    assert done.returncode == 65
    assert "is not a regular file; nothing signalled" in done.stderr
    assert secret.state() == before


def test_reload_does_not_hang_on_a_fifo_pid_file(installed: Installed) -> None:
    pid_file = installed.path(PID_FILE)
    as_account(installed, "mkfifo", str(pid_file))
    try:
        done = subprocess.run(
            [str(installed.path(RELOAD))], capture_output=True, text=True, timeout=20, check=False
        )
    finally:
        pid_file.unlink()
    assert done.returncode == 65
    assert "is not a regular file" in done.stderr


@pytest.mark.parametrize(
    "owner", [pytest.param(None, id="root"), pytest.param("nobody", id="other-user")]
)
def test_reload_signals_no_process_but_the_service_accounts(
    installed: Installed, owner: str | None
) -> None:
    """A pid file naming root's or another user's process: that process gets no SIGHUP."""
    argv = ["sleep", "60"]
    victim = subprocess.Popen(["runuser", "-u", owner, "--", *argv] if owner else argv)
    pid_file = installed.path(PID_FILE)
    try:
        time.sleep(0.2)  # runuser has forked its sleep
        target = victim.pid if owner is None else int(run("pgrep", "-P", str(victim.pid)).stdout)
        as_account(installed, "sh", "-c", f"echo {target} > {pid_file}")
        done = run(str(installed.path(RELOAD)), check=False)
        time.sleep(0.2)
        assert victim.poll() is None
    finally:
        pid_file.unlink(missing_ok=True)
        victim.kill()
        victim.wait()
    assert done.returncode == 65
    assert f"pid {target} is not a process of {installed.user}; nothing signalled" in done.stderr


def test_reload_refuses_a_pid_file_that_holds_no_pid(installed: Installed) -> None:
    pid_file = installed.path(PID_FILE)
    as_account(installed, "sh", "-c", f"echo '1 2' > {pid_file}")
    try:
        done = run(str(installed.path(RELOAD)), check=False)
    finally:
        pid_file.unlink()
    assert (done.returncode, done.stderr.strip()) == (
        65,
        f"host-agent-reload: {pid_file} holds no pid; nothing signalled",
    )


def logrotate(installed: Installed, base: Path) -> list[str]:
    return [
        "logrotate",
        "-f",
        "-s",
        str(base / f"logrotate-{secrets.token_hex(3)}.state"),
        str(installed.path("/etc/logrotate.d/host-agent")),
    ]


def write_audit_log(installed: Installed, text: str) -> None:
    log = installed.path(LOG_DIR) / "audit.jsonl"
    as_account(installed, "sh", "-c", f"umask 027; printf '%s' '{text}' > {log}")


def clear_log_dir(installed: Installed) -> None:
    for entry in installed.path(LOG_DIR).iterdir():
        entry.unlink()


def test_logrotate_postrotate_never_puts_a_root_secret_in_an_argv(
    installed: Installed, base: Path, secret: Secret
) -> None:
    write_audit_log(installed, '{"seq": 1}\n')
    as_account(installed, "ln", "-s", str(secret.path), str(installed.path(PID_FILE)))
    try:
        done, trace = traced(base, *logrotate(installed, base))
    finally:
        installed.path(PID_FILE).unlink()
        clear_log_dir(installed)
    assert secret.marker not in trace
    assert "is not a regular file; nothing signalled" in done.stderr


@pytest.mark.parametrize("planted", ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2.gz"])
def test_logrotate_follows_no_link_the_service_account_planted(
    installed: Installed, base: Path, secret: Secret, planted: str
) -> None:
    log_dir = installed.path(LOG_DIR)
    if planted != "audit.jsonl":
        write_audit_log(installed, '{"seq": 1}\n')
    as_account(installed, "ln", "-s", str(secret.path), str(log_dir / planted))
    before = secret.state()
    try:
        done, trace = traced(base, *logrotate(installed, base))
        assert secret.state() == before
        assert secret.marker not in trace
        for entry in log_dir.iterdir():
            assert entry.lstat().st_uid == installed.ids[0], (entry, done.stderr)
    finally:
        clear_log_dir(installed)


def test_rotated_audit_files_keep_mode_0640(installed: Installed, base: Path) -> None:
    log_dir = installed.path(LOG_DIR)
    argv = logrotate(installed, base)
    try:
        write_audit_log(installed, '{"seq": 1}\n')
        run(*argv)
        write_audit_log(installed, '{"seq": 2}\n')
        run(*argv)
        modes = {entry.name: attributes(entry) for entry in log_dir.iterdir()}
    finally:
        clear_log_dir(installed)
    owner = (installed.user, installed.user)
    # No audit.jsonl: logrotate leaves making the new one to the agent (nocreate).
    assert modes == {
        "audit.jsonl.1": ("0o640", *owner),
        "audit.jsonl.2.gz": ("0o640", *owner),
    }


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(
            ["usermod", "--shell", "/bin/bash"],
            "is a login account (shell /bin/bash)",
            id="login-shell",
        ),
        pytest.param(["chpasswd"], "has a usable (or empty) password", id="password"),
        pytest.param(["passwd", "-d"], "has a usable (or empty) password", id="empty-password"),
        pytest.param(["usermod", "-aG", "sudo"], "is in group sudo", id="sudo-group"),
    ],
)
def test_install_refuses_a_service_user_that_can_log_in_or_holds_more(
    base: Path, make: list[str], message: str
) -> None:
    name = f"ha-pw-{secrets.token_hex(3)}"
    run("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name)
    if make == ["chpasswd"]:
        run("chpasswd", stdin=f"{name}:{secrets.token_hex(12)}\n")
    else:
        run(*make, name)
    prefix = Path(tempfile.mkdtemp(dir=base))
    prefix.chmod(0o755)
    try:
        done = install_sh(base / "source", prefix, name, f"{name}-a", check=False)
    finally:
        remove_accounts(name, name, f"{name}-a")
    assert done.returncode == 64
    assert f"--user {name} {message}" in done.stderr
    assert list(prefix.iterdir()) == []


@pytest.mark.parametrize("hands", ["world-writable", "service-account"])
def test_install_refuses_a_prefix_below_a_directory_not_roots_alone(
    installed: Installed, base: Path, hands: str
) -> None:
    """Whoever can write a directory above the wrappers or wrappers.conf could swap them."""
    above = Path(tempfile.mkdtemp(dir=base))
    if hands == "world-writable":
        above.chmod(0o777)
    else:
        above.chmod(0o755)
        os.chown(above, *installed.ids)
    prefix = above / "prefix"
    prefix.mkdir(mode=0o755)
    done = install_sh(installed.source, prefix, installed.user, installed.approvers, check=False)
    assert done.returncode == 73
    assert f"{above} (above {prefix}/" in done.stderr
    assert "is not root's alone" in done.stderr
    assert list(prefix.iterdir()) == []


# Run by the printed start command in place of the agent: tries to type into the
# terminal it was started from, and says how far it got.
TIOCSTI_PROBE = """
import fcntl, os, sys, termios
results = []
fds = [("fd0", 0), ("fd1", 1), ("fd2", 2)]
try:
    fds.append(("dev-tty", os.open("/dev/tty", os.O_RDWR)))
except OSError as exc:
    results.append(f"dev-tty unopened {exc.errno}")
for name, fd in fds:
    try:
        for byte in ("echo INJ" + "ECTED-by-agent\\n").encode():
            fcntl.ioctl(fd, termios.TIOCSTI, bytes([byte]))
        results.append(f"{name} injected")
    except OSError as exc:
        results.append(f"{name} refused {exc.errno}")
with open(sys.argv[1], "w") as out:
    out.write("\\n".join(results) + "\\n")
"""


def start_command(installed: Installed) -> str:
    lines = installed.first_run.splitlines()
    return lines[lines.index("    detached from your terminal, with") + 1].strip()


def run_in_terminal(command: str, until: Path) -> tuple[bytes, int]:
    """Run `command` from a shell on a fresh terminal (a pty), as root would type it.

    Returns what the terminal showed until one second after `until` appeared (so
    that anything typed into it has been echoed), or until the shell ended; and
    the shell's pid, which is also its session id.
    """
    pid, master = pty.fork()
    if pid == 0:  # pragma: no cover (child)
        os.execv("/bin/bash", ["bash", "-c", f"{command}\nsleep 4"])
    shown = b""
    deadline = time.monotonic() + 15
    try:
        while time.monotonic() < deadline:
            if until.exists():
                deadline = min(deadline, time.monotonic() + 1)
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    shown += os.read(master, 4096)
                except OSError:  # the shell has ended and the terminal with it
                    break
    finally:
        os.waitpid(pid, 0)
        os.close(master)
    return shown, pid


def test_printed_start_command_detaches_the_agent_from_roots_terminal(
    installed: Installed, base: Path
) -> None:
    command = start_command(installed)
    assert command.startswith("setsid -f runuser ")
    pid_file = installed.path(PID_FILE)
    _, shell = run_in_terminal(command, pid_file)
    for _ in range(100):
        if pid_file.exists():
            break
        time.sleep(0.1)
    pid = int(pid_file.read_text())
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        session, tty_nr = int(fields[3]), int(fields[4])
        assert tty_nr == 0
        assert session not in (shell, os.getsid(0))
        assert Path(f"/proc/{pid}").stat().st_uid == installed.ids[0]
    finally:
        os.kill(pid, 15)
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)

    # The same command with a probe in place of the agent: it cannot type into the terminal.
    probe = base / "tiocsti_probe.py"
    probe.write_text(TIOCSTI_PROBE)
    probe.chmod(0o644)
    out_dir = Path(tempfile.mkdtemp(dir=base))
    os.chown(out_dir, *installed.ids)
    result = out_dir / "result"
    serve = command.split(" -- ", 1)[1].split(" <", 1)[0]
    probed = f"/usr/bin/python3 {probe} {result}"
    shown, _ = run_in_terminal(command.replace(serve, probed), result)
    assert b"INJECTED-by-agent" not in shown
    outcomes = result.read_text().splitlines()
    assert not [line for line in outcomes if line.endswith("injected")], outcomes

    # The control: started as the old instructions did, the probe does type into the terminal.
    result.unlink()
    shown, _ = run_in_terminal(f"runuser -u {installed.user} -- {probed} &", result)
    assert b"INJECTED-by-agent" in shown
    assert "dev-tty injected" in result.read_text().splitlines()


def test_install_rerun_and_uninstall_follow_no_planted_link(
    installed: Installed, base: Path, secret: Secret
) -> None:
    """Runs last: it takes the module's install away."""
    planted = {
        PID_FILE: secret.path,
        "/run/host-agent/approve.sock": secret.path,
        f"{LOG_DIR}/audit.jsonl": secret.path,
        "/var/lib/host-agent/approvals.sqlite3": secret.path,
    }
    for link, target in planted.items():
        as_account(installed, "ln", "-sfn", str(target), str(installed.path(link)))
    before = secret.state()

    _, trace = traced(base, *install_argv(installed))
    assert secret.state() == before
    assert secret.marker not in trace

    done, trace = traced(base, *install_argv(installed), "--uninstall")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"not stopped: {installed.path(PID_FILE)} names no process of" in done.stdout
    assert secret.state() == before
    assert secret.marker not in trace
    assert not installed.path("/run/host-agent").exists()


def install_argv(installed: Installed) -> list[str]:
    return [
        str(installed.source / "install.sh"),
        "--prefix",
        str(installed.prefix),
        "--user",
        installed.user,
        "--approvers-group",
        installed.approvers,
    ]
