"""The sudoers probe as the unit runs it, as root: an agent that cannot read sudoers asks
the read-only root wrapper host-agent-sudoers, through real sudo, as the real service
account."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from host_agent.config import Config
from host_agent.health import HostHealth
from host_agent.metrics import Metrics
from host_agent.runner import Runner
from tests.support import Pki
from tests.system import System, as_user, run

pytestmark = pytest.mark.root

WRAPPER = "host-agent-sudoers"


def probed_config(system: System, pki: Pki, tmp_path: Path, grants: str) -> Config:
    """A sudoers file only root can read: the drop-in we install plus `grants`."""
    sudoers = tmp_path / "sudoers"
    sudoers.write_text(f"#include {system.wrappers.sudoers}\n{grants}")
    sudoers.chmod(0o440)
    assert run("visudo", "-cf", str(sudoers)).returncode == 0
    config = system.agent_config(pki, tmp_path)
    config = dataclasses.replace(
        config, server=dataclasses.replace(config.server, sudoers_file=sudoers)
    )
    system.wrappers.configure(config)
    return config


def health_as_service_account(system: System, config: Config) -> dict[str, object]:
    """HostHealth.refresh in a process that really is the service account, as under the unit."""

    def check() -> int:
        assert not os.access(config.server.sudoers_file, os.R_OK)
        health = HostHealth(Metrics(CollectorRegistry()))
        asyncio.run(health.refresh(config, Runner(config.runner)))
        print(json.dumps({"report": health.report(), "listed": health.permission_findings()}))
        return 0

    outcome = as_user(system.user, check)
    assert outcome.exit_code == 0, outcome.stderr
    result: dict[str, object] = json.loads(outcome.stdout)
    return result


def test_an_unprivileged_agent_gets_its_grants_from_the_root_wrapper(
    system: System, pki: Pki, tmp_path: Path
) -> None:
    config = probed_config(system, pki, tmp_path, f"{system.user} ALL=(root) NOPASSWD: /bin/sh\n")
    result = health_as_service_account(system, config)
    report, listed = result["report"], result["listed"]
    assert isinstance(report, dict) and isinstance(listed, dict)
    assert (report["status"], report["sudoers_risky_entries"]) == ("degraded", 1)
    assert "sudoers_unchecked" not in report
    assert (listed["checked"], listed["count"]) == (True, 1)
    [finding] = listed["findings"]
    assert (finding["file"], finding["line"], finding["code"], finding["command"]) == (
        str(config.server.sudoers_file),
        2,
        "shell",
        "/bin/sh",
    )


def test_only_the_wrappers_granted_is_a_clean_bill(
    system: System, pki: Pki, tmp_path: Path
) -> None:
    config = probed_config(system, pki, tmp_path, "")
    result = health_as_service_account(system, config)
    assert result["listed"] == {"checked": True, "count": 0, "findings": []}


def test_a_failing_wrapper_leaves_sudoers_unchecked_not_clean(
    system: System, pki: Pki, tmp_path: Path
) -> None:
    config = probed_config(system, pki, tmp_path, "")
    elsewhere = tmp_path / "no-wrappers-here"
    config = dataclasses.replace(
        config, runner=dataclasses.replace(config.runner, wrapper_dir=elsewhere)
    )
    result = health_as_service_account(system, config)
    report = result["report"]
    assert isinstance(report, dict)
    assert report["sudoers_risky_entries"] is None
    assert f"{WRAPPER} failed: sudo: a password is required" in str(report["sudoers_unchecked"])
    assert result["listed"] == {
        "checked": False,
        "reason": report["sudoers_unchecked"],
        "count": None,
    }


def test_the_wrapper_reports_for_its_caller_only(system: System, pki: Pki, tmp_path: Path) -> None:
    """SUDO_USER comes from sudo: the caller cannot ask about another account's grants."""
    probed_config(system, pki, tmp_path, "root ALL=(ALL) NOPASSWD: ALL\n")
    wrapper = str(system.wrappers.directory / WRAPPER)
    done = run("sudo", "-n", wrapper, user=system.user)
    assert json.loads(done.stdout) == {"findings": []}
    spoofed = run("env", "SUDO_USER=root", "sudo", "-n", wrapper, user=system.user)
    assert json.loads(spoofed.stdout) == {"findings": []}


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (("extra",), {}, "usage: host-agent-sudoers"),
        (("--file=/etc/shadow",), {}, "usage: host-agent-sudoers"),
        ((), {}, "run through sudo"),
        ((), {"SUDO_USER": "-x"}, "starts with '-'"),
        ((), {"SUDO_USER": "a;id"}, "user is not valid"),
        ((), {"SUDO_USER": "a\nb"}, "user is not valid"),
        ((), {"SUDO_USER": "x" * 300}, "user is too long"),
    ],
)
def test_the_wrapper_refuses_arguments_and_callers_sudo_did_not_name(
    system: System, argv: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    wrapper = str(system.wrappers.directory / WRAPPER)
    done = run("env", "-i", *(f"{k}={v}" for k, v in env.items()), wrapper, *argv, check=False)
    assert done.returncode == 64
    assert message in done.stderr
    assert done.stdout == ""
