"""As root, through real sudo: what the service account may run, and the runner's
limits (timeout, output cap, environment) on a real child behind sudo."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path

import pytest

from host_agent.errors import RunnerError
from host_agent.operations import Operation
from host_agent.runner import Runner
from tests.support import Pki
from tests.system import PROBE, System, installed_system, run

pytestmark = pytest.mark.root


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(("/usr/sbin/zfs", "list"), id="zfs"),
        pytest.param(("/usr/sbin/zpool", "list"), id="zpool"),
        pytest.param(("/bin/sh", "-c", "id"), id="shell"),
        pytest.param(("/bin/bash",), id="bash"),
        pytest.param(("/usr/bin/git", "--version"), id="git"),
        pytest.param(("/bin/systemctl", "status"), id="systemctl"),
        pytest.param(("-u", "root", "/usr/bin/id"), id="other-command"),
    ],
)
def test_service_account_can_run_only_the_wrappers(system: System, argv: tuple[str, ...]) -> None:
    user = system.user
    done = run("sudo", "-n", *argv, user=user, check=False)
    assert done.returncode != 0
    assert "password is required" in done.stderr or "not allowed" in done.stderr


def test_installed_sudoers_passes_visudo_and_grants_exactly_the_wrappers(system: System) -> None:
    wrappers = system.wrappers
    assert run("visudo", "-cf", str(wrappers.sudoers)).returncode == 0
    listing = run("sudo", "-l", "-U", system.user).stdout
    granted = sorted(
        word.rstrip(",") for word in listing.split() if word.startswith(str(wrappers.directory))
    )
    expected = [
        str(wrappers.directory / name)
        for name in (
            "host-agent-exec",
            "host-agent-git",
            "host-agent-pct",
            "host-agent-sudoers",
            "host-agent-systemd",
            "host-agent-test-probe",
            "host-agent-zfs",
        )
    ]
    assert granted == sorted(expected)


def test_sudo_still_checks_the_service_account_without_its_pam_session(tmp_path: Path) -> None:
    """The drop-in switches sudo's PAM session off for speed (docs/operations.md); the
    account check is not part of it: an expired service account runs no wrapper."""
    with installed_system(tmp_path, extra=(PROBE,)) as fresh:
        probe = ("sudo", "-n", "--", str(fresh.wrappers.directory / PROBE.name), "env")
        assert run(*probe, user=fresh.user, check=False).returncode == 0
        run("usermod", "--expiredate", "1", fresh.user)
        done = run(*probe, user=fresh.user, check=False)
    assert done.returncode == 1 and "account validation failure" in done.stderr, done
    assert "SUDO_USER" not in done.stdout  # the probe never ran


# --- the runner's limits, through real sudo and a test-only probe wrapper -----------


def _probe(runner: Runner, *argv: str) -> Operation:
    return Operation(
        kind="test",
        command=argv[0],
        resource="",
        args=argv,
        wrapper=PROBE.name,
        wrapper_argv=argv,
        mutating=False,
    )


@pytest.fixture
def runner(system: System, pki: Pki, tmp_path: Path) -> Runner:
    config = system.agent_config(pki, tmp_path)
    return Runner(dataclasses.replace(config.runner, timeout_seconds=1.0, max_output_bytes=4096))


def test_runner_kills_a_runaway_child(runner: Runner) -> None:
    marker = "17.31"  # an unusual sleep length to find the process by, past the backstop
    with pytest.raises(RunnerError) as caught:
        asyncio.run(runner.run(_probe(runner, "sleep", marker)))
    assert caught.value.timed_out and caught.value.status == 504
    # The probe has no root-side timeout of its own: only the agent's backstop fired.
    assert not caught.value.killed_as_root
    assert str(caught.value).endswith("the agent could not confirm the process ended")
    assert run("pgrep", "-f", f"sleep {marker}", check=False).returncode == 1


def test_a_run_whose_caller_goes_away_leaves_no_child_running(runner: Runner) -> None:
    """The request is cancelled (the client disconnected) while sudo and the wrapper
    run: the runner ends them before the cancellation goes on."""
    marker = "23.71"  # an unusual sleep length to find the process by

    async def cancelled_midway() -> None:
        run_task = asyncio.ensure_future(runner.run(_probe(runner, "sleep", marker)))
        while run("pgrep", "-f", f"sleep {marker}", check=False).returncode:
            await asyncio.sleep(0.05)
        run_task.cancel()
        await run_task

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(asyncio.wait_for(cancelled_midway(), 30))
    assert run("pgrep", "-f", f"sleep {marker}", check=False).returncode == 1


def test_runner_caps_output_and_drains_the_rest(runner: Runner) -> None:
    result = asyncio.run(runner.run(_probe(runner, "flood", "1000000")))
    assert result.exit_code == 0
    assert result.truncated
    assert len(result.stdout) == 4096
    assert result.stderr == "done\n"


def test_runner_child_gets_a_clean_environment(
    runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LD_PRELOAD", "/tmp/evil.so")
    monkeypatch.setenv("HOST_AGENT_SECRET", "leak")
    result = asyncio.run(runner.run(_probe(runner, "env")))
    assert "LD_PRELOAD" not in result.stdout and "leak" not in result.stdout
    assert "SUDO_USER=" in result.stdout and "SUDO_UID=0" not in result.stdout


def _pidfds() -> int:
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if _link(fd) == "anon_inode:[pidfd]")


def _link(fd: Path) -> str:
    try:
        return str(fd.readlink())
    except OSError:  # the directory's own descriptor, closed by now
        return ""


def test_a_running_child_is_waited_for_by_the_event_loop_not_a_thread_of_its_own(
    runner: Runner,
) -> None:
    async def while_a_child_runs() -> tuple[list[str], int]:
        child = asyncio.create_task(runner.run(_probe(runner, "sleep", "0.6")))
        await asyncio.sleep(0.3)
        seen = [thread.name for thread in threading.enumerate()], _pidfds()
        assert (await child).exit_code == 0
        return seen

    threads, pidfds = asyncio.run(while_a_child_runs())
    assert not [name for name in threads if name.startswith("waitpid-")], threads
    assert pidfds == 1
