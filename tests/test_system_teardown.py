"""As root: the root tests' own set-up leaves nothing behind, even when a test did.

A user or a pool that outlives its test piles up on the machine run after run, so
their teardown must either remove them or fail, never go quietly.
"""

from __future__ import annotations

import pwd
import subprocess

import pytest

from tests.approval_flow import wait_for
from tests.system import require_root_tools, run, service_account, until_done

pytestmark = pytest.mark.root


def running_as(name: str) -> bool:
    return run("pgrep", "--euid", name, "-x", "sleep", check=False).returncode == 0


def test_an_account_still_running_a_process_is_removed() -> None:
    require_root_tools("useradd", "runuser")
    with service_account() as name:
        left = subprocess.Popen(["runuser", "-u", name, "--", "sleep", "300"])
        try:
            wait_for(lambda: running_as(name))
        except AssertionError:
            left.kill()
            left.wait()
            raise
    assert left.wait(10) != 0  # its sleep was killed, not finished
    with pytest.raises(KeyError):
        pwd.getpwnam(name)


def test_a_teardown_step_that_keeps_failing_fails_with_what_it_said() -> None:
    require_root_tools()
    with pytest.raises(RuntimeError, match=r"ls /nonexistent failed: .*No such file"):
        until_done("ls", "/nonexistent", seconds=0.5)
