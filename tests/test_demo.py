"""scripts/demo.sh, run as the README says, on what a clean clone holds: it must bring
up an agent and tell the whole story (a snapshot, a destroy held for a person, the
approver's message and reply, the destroy on resubmission, the approvers told, the
audit log verified), and `demo.sh stop` must take away all it made, and only that: a
pid file naming a process the demo did not start is stale, and kills nothing."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_port
from tests.system import REPO, run

pytestmark = pytest.mark.root


def demo_names() -> dict[str, str]:
    """Names and ports of the demo's own, unique to one test (beside anything else)."""
    suffix = secrets.token_hex(3)
    return {
        "HOST_AGENT_DEMO_USER": f"ha-demo-{suffix}",
        "HOST_AGENT_DEMO_POOL": f"hademo{suffix}",
        "HOST_AGENT_DEMO_PORT": str(free_port()),
        "HOST_AGENT_DEMO_SIGNAL_PORT": str(free_port()),
    }


@pytest.fixture
def clone() -> Iterator[Path]:
    """The repository's tracked files as they are now (a clone, with any uncommitted
    edits): no virtualenv, no .demo, no caches."""
    root = Path(tempfile.mkdtemp(prefix="ha-demo-"))
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    try:
        yield root
    finally:
        shutil.rmtree(root)


def test_the_demo_tells_the_whole_story_and_stop_cleans_up(clone: Path) -> None:
    names = demo_names()
    environment = {**os.environ, **names}
    demo = [str(clone / "scripts" / "demo.sh")]
    try:
        shown = subprocess.run(
            demo,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # as a terminal shows them: in order
            text=True,
            timeout=600,
            check=False,
        )
        output = shown.stdout
        assert shown.returncode == 0, output
        # Each step of the story, in order.
        steps = [
            r'"status":"ok"',
            r"NAME +USED +AVAIL +REFER +MOUNTPOINT\n\S+/data@demo-\S+ ",
            r"waits for approval (ap-[0-9a-f]{16})",
            r"asked: +Signal approvers …0001",
            r"\| Requester: librarian-demo\n +\| Operation: zfs-destroy",
            r"\| Reply APPROVE [0-9A-Z]{16} to allow it",
            r"approved by signal:…0001 at \S+: running it",
            r": APPROVED\n.*by signal:…0001",
            r": USED\n",
            r"approval_granted .* zfs-destroy +approved",
            r"result .* zfs-destroy +ok",
            r"OK: \d+ records",
        ]
        position = 0
        for step in steps:
            found = re.compile(step).search(output, position)
            assert found is not None, f"{step!r} not after position {position}:\n{output}"
            position = found.end()
        snapshot = re.search(r"zfs destroy (\S+@demo-\S+)", output)
        assert snapshot is not None
        listed = run(
            "zfs", "list", "-H", "-t", "snapshot", "-o", "name", "-r", names["HOST_AGENT_DEMO_POOL"]
        )
        assert snapshot.group(1) not in listed.stdout.split()
    finally:
        state = clone / ".demo"
        pids = [int(f.read_text()) for f in state.glob("*.pid") if f.read_text().strip()]
        # Each beside its start time, which tells the process from a later one with its pid.
        unpaired = {f"{f.name}.start" for f in state.glob("*.pid")} ^ {
            f.name for f in state.glob("*.pid.start")
        }
        stopped = subprocess.run(
            [*demo, "stop"], env=environment, capture_output=True, text=True, timeout=120
        )
    assert stopped.returncode == 0, stopped.stderr
    assert not unpaired, unpaired
    assert "stale" not in stopped.stderr, stopped.stderr
    assert run("id", names["HOST_AGENT_DEMO_USER"], check=False).returncode != 0
    assert not Path("/etc/sudoers.d", names["HOST_AGENT_DEMO_USER"]).exists()
    assert run("zpool", "list", names["HOST_AGENT_DEMO_POOL"], check=False).returncode != 0
    assert not list(state.glob("*.pid*"))
    # The agent and the bridge stand-in are gone (a moment to exit after the signal).
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pids and not any(Path(f"/proc/{pid}").exists() for pid in pids)


def start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat (the command name, field 2, may hold spaces and ')')."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[19]


@pytest.fixture
def stop_only(tmp_path: Path) -> Path:
    """demo.sh alone in a fresh directory: `stop` needs nothing else."""
    script = tmp_path / "scripts" / "demo.sh"
    script.parent.mkdir()
    shutil.copy2(REPO / "scripts" / "demo.sh", script)
    (tmp_path / ".demo").mkdir()
    return script


def stop(script: Path) -> subprocess.CompletedProcess[str]:
    """`demo.sh stop`, as a user runs it."""
    return subprocess.run(
        [str(script), "stop"],
        env={**os.environ, **demo_names()},
        capture_output=True,
        text=True,
        timeout=120,
    )


def record(pid_file: Path, pid: int) -> None:
    """What demo.sh keeps for a process it started: its pid and its start time."""
    pid_file.write_text(f"{pid}\n")
    pid_file.with_name(f"{pid_file.name}.start").write_text(f"{start_time(pid)}\n")


@pytest.fixture
def unrelated() -> Iterator[subprocess.Popen[bytes]]:
    """A long-lived process the demo did not start, in a session of its own."""
    process = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def still_running(process: subprocess.Popen[bytes]) -> bool:
    try:
        process.wait(timeout=0.5)
    except subprocess.TimeoutExpired:
        return True
    return False


@pytest.mark.parametrize(
    "recorded",
    [
        pytest.param(None, id="bare-pid"),
        pytest.param("wrong", id="wrong-start-time"),
    ],
)
def test_stop_kills_nothing_a_stale_pid_file_names(
    stop_only: Path, unrelated: subprocess.Popen[bytes], recorded: str | None
) -> None:
    # An earlier demo, killed, left its pid files; their pids are now another process's.
    state = stop_only.parent.parent / ".demo"
    for name in ("agent.pid", "signal.pid", "zfs-fuse.pid"):
        (state / name).write_text(f"{unrelated.pid}\n")
        if recorded is not None:
            earlier = int(start_time(unrelated.pid)) - 1
            (state / f"{name}.start").write_text(f"{earlier}\n")
    stopped = stop(stop_only)
    assert stopped.returncode == 0, stopped.stderr
    assert still_running(unrelated)
    assert not list(state.glob("*.pid*"))
    for name in ("agent.pid", "signal.pid", "zfs-fuse.pid"):
        assert re.search(rf"{name} is stale: .*pid {unrelated.pid}.* not killed", stopped.stderr), (
            stopped.stderr
        )


def test_stop_kills_the_process_its_pid_file_names_whatever_its_name(
    stop_only: Path, tmp_path: Path
) -> None:
    # The command name, field 2 of /proc/PID/stat, may hold spaces and ')': the start
    # time is counted from after the last ')'.
    odd = tmp_path / "x) 1 2 ) 3"
    odd.symlink_to(shutil.which("sleep") or "/bin/sleep")
    process = subprocess.Popen([str(odd), "300"], start_new_session=True)
    try:
        state = stop_only.parent.parent / ".demo"
        record(state / "signal.pid", process.pid)
        stopped = stop(stop_only)
        assert stopped.returncode == 0, stopped.stderr
        assert process.wait(timeout=10) == -15
        assert "stale" not in stopped.stderr
        assert not list(state.glob("*.pid*"))
    finally:
        process.kill()
        process.wait()


def test_stop_returns_once_the_process_has_exited(stop_only: Path) -> None:
    # A restart starts the next agent on the same port and pid file: the one it
    # replaces must be gone first (the agent removes its pid file as it exits).
    slow = "import signal, sys, time\n" + (
        "signal.signal(signal.SIGTERM, lambda *_: (time.sleep(1), sys.exit(0)))\n"
        "print(flush=True)\n"
        "time.sleep(300)\n"
    )
    with subprocess.Popen(
        ["python3", "-c", slow], stdout=subprocess.PIPE, start_new_session=True
    ) as process:
        try:
            assert process.stdout is not None
            process.stdout.readline()  # its handler is in place
            state = stop_only.parent.parent / ".demo"
            record(state / "agent.pid", process.pid)
            stopped = stop(stop_only)
            assert stopped.returncode == 0, stopped.stderr
            assert process.poll() == 0
        finally:
            process.kill()
