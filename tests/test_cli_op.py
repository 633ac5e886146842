"""`host-agent op` against a real agent over real mutual TLS: what people and scripts see,
and an exit status for each way a request can end. Operations that really run on a pool
are in test_e2e_cli_op.py (root)."""

from __future__ import annotations

import json
import os
import pty
import re
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from host_agent.cli import _parser, main
from host_agent.cli.common import (
    EXIT_DENIED,
    EXIT_EXPIRED,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PENDING,
    EXIT_REFUSED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)
from tests.approval_flow import approvals_config, get, post, token_sent
from tests.hostile import HOSTILE_NAMES
from tests.signal_bridge import SignalBridge
from tests.support import Pki, RunningAgent, running_agent

SNAPSHOT = "tank/media@old"


@dataclass
class Ran:
    status: int
    stdout: str
    stderr: str

    def document(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.stdout)
        return parsed


def connection(server: str, pki: Pki, cn: str) -> list[str]:
    cert, key = pki.client(cn)
    return ["--server", server, "--cert", str(cert), "--key", str(key), "--ca", str(pki.ca)]


@pytest.fixture
def op(capsys: pytest.CaptureFixture[str]) -> Any:
    def run(agent: RunningAgent | str, pki: Pki, cn: str, *words: str) -> Ran:
        server = agent if isinstance(agent, str) else agent.url
        status = main(["op", *connection(server, pki, cn), *words])
        out, err = capsys.readouterr()
        return Ran(status, out, err)

    return run


def deny_soon(agent: RunningAgent, pki: Pki, bridge: SignalBridge) -> threading.Thread:
    """An admin denies the approval whose token the bridge receives, while the client waits."""

    def deny() -> None:
        post(agent, pki, "admin-1", "/approve", {"token": token_sent(bridge), "decision": "deny"})

    thread = threading.Thread(target=deny)
    thread.start()
    return thread


# --- the command line itself ---------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "problem"),
    [
        pytest.param([], "give KIND COMMAND RESOURCE", id="nothing"),
        pytest.param(["zfs", "list"], "give KIND COMMAND RESOURCE", id="no-resource"),
        pytest.param(
            ["--follow", "ap-0123456789abcdef", "zfs"], "--follow takes no KIND", id="follow-op"
        ),
        pytest.param(
            ["--follow", "ap-0123456789abcdef", "--dry-run"], "cannot be combined", id="follow-dry"
        ),
        pytest.param(["--max-wait", "-1", "zfs", "list", "tank"], "not be negative", id="wait"),
        pytest.param(["--poll-interval", "0", "zfs", "list", "tank"], "positive", id="poll"),
    ],
)
def test_a_wrong_command_line_sends_nothing(
    words: list[str], problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # No connection options and no agent: the problem is found before any of them matters.
    assert main(["op", *words]) == EXIT_USAGE
    assert problem in capsys.readouterr().err


def test_arguments_that_start_with_a_dash_go_after_double_dash() -> None:
    # Options go before KIND (or after the last ARG); the arguments after --.
    words = ["op", "--reason", "disk", "exec", "run", "/usr/bin/du", "--", "-sh", "/srv/app"]
    options = _parser(words).parse_args(words)
    assert (options.kind, options.command, options.resource) == ("exec", "run", "/usr/bin/du")
    assert options.args == ["-sh", "/srv/app"] and options.reason == "disk"


def test_missing_settings_are_all_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for variable in ("SERVER", "CERT", "KEY", "CA", "TIMEOUT", "CLIENT_CONFIG"):
        monkeypatch.delenv(f"HOST_AGENT_{variable}", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert main(["op", "--json", "zfs", "list", "tank"]) == EXIT_USAGE
    document = json.loads(capsys.readouterr().out)
    assert document["status"] == "usage"
    for name in ("server", "cert", "key", "ca"):
        assert f"{name} is not set" in document["error"]["message"]


def test_settings_come_from_the_environment_in_a_real_process(
    approving_agent: RunningAgent, pki: Pki, tmp_path: Path
) -> None:
    cert, key = pki.client("librarian-1")
    environment = {
        **os.environ,
        "HOME": str(tmp_path),
        "HOST_AGENT_SERVER": approving_agent.url,
        "HOST_AGENT_CERT": str(cert),
        "HOST_AGENT_KEY": str(key),
        "HOST_AGENT_CA": str(pki.ca),
    }
    command = [sys.executable, "-m", "host_agent", "op", "--json", "--dry-run"]
    ran = subprocess.run(
        [*command, "zfs", "destroy", SNAPSHOT],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == EXIT_OK, ran.stderr
    assert ran.stderr == ""  # no log line per HTTP request
    dry_run = json.loads(ran.stdout)["dry_run"]
    assert dry_run["decision"]["effect"] == "approval_required"
    assert dry_run["argv"][-2:] == ["destroy", SNAPSHOT]


# --- how requests end ----------------------------------------------------------------


def test_a_dry_run_shows_the_decision_and_argv(agent: RunningAgent, pki: Pki, op: Any) -> None:
    ran = op(agent, pki, "librarian-1", "--dry-run", "zfs", "destroy", SNAPSHOT)
    assert ran.status == EXIT_OK
    assert "decision:  approval_required (approval_required)" in ran.stdout
    assert ran.stdout.splitlines()[-1].endswith(f"destroy {SNAPSHOT}")


def test_policy_refusal_is_its_own_exit_status(agent: RunningAgent, pki: Pki, op: Any) -> None:
    ran = op(agent, pki, "reader-1", "zfs", "snapshot", "tank/media", "daily")
    assert ran.status == EXIT_REFUSED and ran.stdout == ""
    assert ran.stderr.startswith("host-agent: refused: ")
    assert "request " in ran.stderr  # the audited request, to look it up

    ran = op(agent, pki, "reader-1", "--json", "zfs", "snapshot", "tank/media", "daily")
    document = ran.document()
    assert (ran.status, document["status"]) == (EXIT_REFUSED, "refused")
    assert document["error"]["http_status"] == 403 and len(document["error"]["request_id"]) == 16


# An empty resource is not hostile to `zfs list`: it lists every dataset.
@pytest.mark.parametrize("resource", [name for name in HOSTILE_NAMES if name.id != "empty"])
def test_hostile_resources_are_invalid_with_the_field_named(
    agent: RunningAgent, pki: Pki, op: Any, resource: str
) -> None:
    # After --, a resource such as -r or --help is the resource, not an option.
    ran = op(agent, pki, "librarian-1", "--json", "--", "zfs", "list", resource)
    document = ran.document()
    assert (ran.status, document["status"]) == (EXIT_USAGE, "invalid")
    assert document["error"]["field"] == "resource"
    assert document["error"]["http_status"] == 400


def test_a_revoked_certificate_is_refused(agent: RunningAgent, pki: Pki, op: Any) -> None:
    ran = op(agent, pki, "revoked-1", "zfs", "list", "tank")
    assert ran.status == EXIT_REFUSED
    assert "certificate_rejected" in ran.stderr


def test_no_agent_listening_is_unavailable(pki: Pki, op: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"https://127.0.0.1:{probe.getsockname()[1]}"
    ran = op(closed, pki, "librarian-1", "--json", "zfs", "list", "tank")
    assert (ran.status, ran.document()["status"]) == (EXIT_UNAVAILABLE, "unavailable")


# --- approvals -----------------------------------------------------------------------


def test_without_wait_it_says_what_is_pending_and_how_to_follow(
    approving_agent: RunningAgent, pki: Pki, op: Any
) -> None:
    ran = op(approving_agent, pki, "librarian-1", "zfs", "destroy", SNAPSHOT, "--reason", "free")
    assert ran.status == EXIT_PENDING and ran.stdout == ""
    (listed,) = get(approving_agent, pki, "librarian-1", "/pending").json()["approvals"]
    approval_id = listed["approval_id"]
    lines = ran.stderr.splitlines()
    assert lines[0] == f"zfs-destroy on {SNAPSHOT} waits for approval {approval_id}"
    assert lines[1] == "  needs:   1 approval(s)"
    assert lines[2] == "  asked:   Signal approvers …0001, …0002"
    assert "admin-*" in lines[3]
    assert lines[4].startswith("  expires: ") and "(in 4m5" in lines[4]
    assert lines[5] == f"  then:    host-agent op --follow {approval_id} --wait"
    assert "+15555550001" not in ran.stderr

    ran = op(approving_agent, pki, "librarian-1", "--json", "zfs", "destroy", SNAPSHOT)
    document = ran.document()
    assert (ran.status, document["status"]) == (EXIT_PENDING, "pending")
    approval = document["approval"]
    assert approval["request"] == {"kind": "zfs", "resource": SNAPSHOT, "args": ["destroy"]}
    assert approval["asked"][0] == {"channel": "signal", "who": "Signal approvers …0001, …0002"}
    assert approval["approval_id"] != approval_id  # a new request is a new approval

    # Following it without --wait looks once: still pending.
    ran = op(approving_agent, pki, "librarian-1", "--follow", approval_id)
    assert ran.status == EXIT_PENDING
    assert "host-agent: pending: " in ran.stderr


def test_waiting_ends_with_the_denial(
    approving_agent: RunningAgent, pki: Pki, bridge: SignalBridge, op: Any
) -> None:
    denial = deny_soon(approving_agent, pki, bridge)
    ran = op(
        approving_agent,
        pki,
        "librarian-1",
        *("zfs", "destroy", SNAPSHOT, "--wait", "--poll-interval", "0.1"),
    )
    denial.join()
    assert ran.status == EXIT_DENIED
    assert ran.stderr.splitlines()[-1].startswith("host-agent: denied: ")
    # Who decided, and when (UTC, to the second).
    when = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00"
    assert re.search(rf"was denied by admin at {when} \(approval_denied\)", ran.stderr)


def test_waiting_has_a_limit_and_json_tells_the_approval(
    approving_agent: RunningAgent, pki: Pki, op: Any
) -> None:
    words = ("--max-wait", "0.5", "--poll-interval", "0.1")
    ran = op(approving_agent, pki, "librarian-1", *words, "zfs", "destroy", SNAPSHOT)
    assert ran.status == EXIT_PENDING
    # Not on a terminal: one line while nothing changes, not one per poll.
    progress = [line for line in ran.stderr.splitlines() if line.startswith("  pending: ")]
    assert len(progress) == 1 and progress[0].startswith("  pending: 0 of 1 approval(s), ")

    ran = op(approving_agent, pki, "librarian-1", "--json", *words, "zfs", "destroy", SNAPSHOT)
    document = ran.document()
    assert (ran.status, document["status"]) == (EXIT_PENDING, "pending")
    assert document["error"]["code"] == "still_pending"
    assert document["approval"]["status"] == "pending"


def test_an_approval_that_runs_out_of_time_is_expired(
    pki: Pki, tmp_path: Path, bridge: SignalBridge, op: Any
) -> None:
    config = approvals_config(pki, tmp_path, bridge, ttl=10)  # the shortest ttl allowed
    with running_agent(config) as agent:
        words = ("--wait", "--poll-interval", "0.5", "zfs", "destroy", SNAPSHOT)
        ran = op(agent, pki, "librarian-1", *words)
    assert ran.status == EXIT_EXPIRED
    assert ran.stderr.splitlines()[-1].startswith("host-agent: expired: ")


def test_someone_elses_approval_cannot_be_followed(
    approving_agent: RunningAgent, pki: Pki, op: Any
) -> None:
    op(approving_agent, pki, "librarian-1", "zfs", "destroy", SNAPSHOT)
    (listed,) = get(approving_agent, pki, "librarian-1", "/pending").json()["approvals"]
    ran = op(approving_agent, pki, "reader-1", "--follow", listed["approval_id"])
    assert ran.status == EXIT_FAILED
    assert "approval_not_found" in ran.stderr


def test_a_terminal_sees_a_countdown_redrawn_in_place(
    approving_agent: RunningAgent, pki: Pki
) -> None:
    """stderr on a pseudo-terminal: the waiting line is redrawn with \\r, not repeated."""
    leader, follower = pty.openpty()
    words = ("zfs", "destroy", SNAPSHOT, "--max-wait", "1", "--poll-interval", "0.2")
    command = [sys.executable, "-m", "host_agent", "op"]
    process = subprocess.Popen(
        [*command, *connection(approving_agent.url, pki, "librarian-1"), *words],
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closes when the process ends
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert process.wait(timeout=60) == EXIT_PENDING
    text = seen.decode()
    assert text.count("\r\x1b[K  pending: 0 of 1 approval(s), expires in 4m5") >= 3
    assert "host-agent: pending: " in text
