"""`host-agent approve` on the host, as root: real local accounts with real passwords,
real PAM (through the sudo wrapper), a real Unix socket with peer credentials, and a
real zfs destroy waiting for the decision."""

from __future__ import annotations

import json
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from host_agent import cli
from host_agent.approvals.local_client import Connection
from host_agent.config import Config
from tests.approval_flow import destroy, post, request_approval, status, token_sent
from tests.signal_bridge import BRIDGE_NUMBER, SignalBridge
from tests.support import Pki, RunningAgent, audit_records, running_agent
from tests.system import REPO, Outcome, Pool, System, as_user, run

pytestmark = pytest.mark.root

PAM_SERVICE = Path("/etc/pam.d/host-agent")
PASSWORD = "correct horse 1"


@dataclass(frozen=True)
class People:
    group: str
    approver: str  # in the group
    second: str  # in the group too
    outsider: str  # not in the group
    requester: str  # in the group, and the requesting profile's unix_user


@pytest.fixture(scope="module")
def pam_service() -> Iterator[Path]:
    """The shipped PAM service file, installed as install.sh does (restored afterwards)."""
    previous = PAM_SERVICE.read_bytes() if PAM_SERVICE.exists() else None
    shutil.copyfile(REPO / "pam" / "host-agent", PAM_SERVICE)
    PAM_SERVICE.chmod(0o644)
    try:
        yield PAM_SERVICE
    finally:
        if previous is None:
            PAM_SERVICE.unlink()
        else:
            PAM_SERVICE.write_bytes(previous)


@pytest.fixture(scope="module")
def people(pam_service: Path) -> Iterator[People]:
    """Throwaway accounts with passwords set by chpasswd, and the approvers group."""
    tag = secrets.token_hex(3)
    group = f"ha-approvers-{tag}"
    made = People(group, f"ha-ap-{tag}", f"ha-ap2-{tag}", f"ha-out-{tag}", f"ha-req-{tag}")
    run("groupadd", group)
    accounts = (made.approver, made.second, made.outsider, made.requester)
    try:
        for name in accounts:
            member = [] if name == made.outsider else ["-G", group]
            run("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", *member, name)
        run("chpasswd", stdin="".join(f"{name}:{PASSWORD}\n" for name in accounts))
        yield made
    finally:
        for name in accounts:
            run("userdel", name, check=False)
        run("groupdel", group, check=False)


@pytest.fixture
def socket_path() -> Iterator[Path]:
    # Not under pytest's 0700 tmp dir: the approvers must be able to reach the socket.
    directory = Path(tempfile.mkdtemp(prefix="ha-approve-"))
    directory.chmod(0o755)
    try:
        yield directory / "approve.sock"
    finally:
        shutil.rmtree(directory)


REQUESTER_PROFILE = """
[[agents]]
cn_pattern = "librarian*"
agent_type = "librarian"
unix_user = "{requester}"
autonomy = "supervised"
allowed_operations = ["zfs-list", "zfs-snapshot"]
requires_approval_for = ["zfs-destroy"]
"""


# Snapshots named two-* need two different approvers.
TWO_APPROVERS_RULE = """
[[rules]]
operation = "zfs-destroy"
pattern = ".*@two-.*"
approval_required = true
approvals_required = 2
"""


@pytest.fixture
def config(
    system: System,
    pool: Pool,
    pki: Pki,
    tmp_path: Path,
    bridge: SignalBridge,
    people: People,
    socket_path: Path,
) -> Config:
    keys = {
        "signal_url": f'"{bridge.url}"',
        "signal_number": f'"{BRIDGE_NUMBER}"',
        "local_socket": f'"{socket_path}"',
        "approvers_group": f'"{people.group}"',
    }
    return system.agent_config(
        pki,
        tmp_path,
        approval="\n".join(f"{key} = {value}" for key, value in keys.items()),
        profiles=REQUESTER_PROFILE.format(requester=people.requester),
        extra=TWO_APPROVERS_RULE,
    )


@pytest.fixture
def live(config: Config) -> Iterator[RunningAgent]:
    with running_agent(config) as agent:
        yield agent


def approve(user: str, socket_path: Path, *args: str, password: str = PASSWORD) -> Outcome:
    argv = ["approve", *args, "--socket", str(socket_path), "--password-stdin"]
    return as_user(user, lambda: cli.main(argv), stdin=f"{password}\n")


def refusals(config: Config, code: str) -> list[dict[str, Any]]:
    return [
        record
        for record in audit_records(config.audit.log_path)
        if record["event"] == "approval_refused" and record.get("code") == code
    ]


def test_an_approver_with_the_right_password_approves_and_the_operation_runs(
    live: RunningAgent,
    config: Config,
    pki: Pki,
    pool: Pool,
    bridge: SignalBridge,
    snapshot: str,
    people: People,
    socket_path: Path,
) -> None:
    approval_id = request_approval(live, pki, snapshot)
    outcome = approve(people.approver, socket_path, token_sent(bridge))
    assert outcome.exit_code == 0, outcome.stderr
    assert outcome.stdout.startswith(f"approved {approval_id} (zfs-destroy {snapshot}")
    assert status(live, pki, approval_id) == "approved"

    done = post(live, pki, "librarian-1", "/host/op", destroy(snapshot, approval_id=approval_id))
    assert done.status_code == 200, done.text
    assert snapshot not in pool.datasets("snapshot")
    granted = [r for r in audit_records(config.audit.log_path) if r["event"] == "approval_granted"]
    assert [(r["approval_id"], r["approvers"]) for r in granted] == [
        (approval_id, [f"pam:{people.approver}"])
    ]
    assert granted[0]["peer_uid"] == pwd.getpwnam(people.approver).pw_uid


def test_on_the_host_the_approval_id_stands_for_the_token_and_deny_ends_it(
    live: RunningAgent,
    config: Config,
    pki: Pki,
    pool: Pool,
    snapshot: str,
    people: People,
    socket_path: Path,
) -> None:
    """When Signal is down the token never arrives: --list and the id are enough on the host."""
    approval_id = request_approval(live, pki, snapshot)
    listed = as_user(
        people.approver, lambda: cli.main(["approve", "--list", "--socket", str(socket_path)])
    )
    assert listed.exit_code == 0, listed.stderr
    assert f"{approval_id}  pending   zfs-destroy {snapshot}  by librarian-1" in listed.stdout
    assert "reason: free space" in listed.stdout

    denied = approve(people.second, socket_path, approval_id, "--deny")
    assert denied.exit_code == 0, denied.stderr
    assert denied.stdout.startswith(f"denied {approval_id}")
    again = post(live, pki, "librarian-1", "/host/op", destroy(snapshot, approval_id=approval_id))
    assert again.status_code == 403
    assert again.json()["error"]["code"] == "approval_denied"
    assert snapshot in pool.datasets("snapshot")


def test_two_approvers_on_the_host_each_count_once_and_json_shows_the_reply(
    live: RunningAgent, pki: Pki, pool: Pool, people: People, socket_path: Path
) -> None:
    snapshot = f"{pool.name}/data@two-{secrets.token_hex(3)}"
    run("zfs", "snapshot", snapshot)
    approval_id = request_approval(live, pki, snapshot)
    first = approve(people.approver, socket_path, approval_id)
    assert first.exit_code == 0, first.stderr
    assert first.stdout.startswith(f"vote recorded for {approval_id}")
    assert first.stdout.rstrip().endswith("1 of 2 approvals")
    again = approve(people.approver, socket_path, approval_id)
    assert (again.exit_code, "(already_voted)" in again.stderr) == (1, True)
    second = approve(people.second, socket_path, approval_id, "--json")
    assert second.exit_code == 0, second.stderr
    reply = json.loads(second.stdout)
    assert reply["ok"] is True
    assert reply["approval"]["status"] == "approved"
    assert reply["approval"]["approvers"] == [f"pam:{people.approver}", f"pam:{people.second}"]
    done = post(live, pki, "librarian-1", "/host/op", destroy(snapshot, approval_id=approval_id))
    assert done.status_code == 200, done.text
    assert snapshot not in pool.datasets("snapshot")


@pytest.mark.parametrize(
    ("who", "password", "code", "exit_code"),
    [
        pytest.param("approver", "wrong horse", "authentication_failed", 1, id="wrong-password"),
        pytest.param("outsider", PASSWORD, "not_an_approver", 1, id="not-in-group"),
        pytest.param("requester", PASSWORD, "self_approval", 1, id="requester-itself"),
    ],
)
def test_refused_and_audited_and_nothing_runs(
    live: RunningAgent,
    config: Config,
    pki: Pki,
    pool: Pool,
    bridge: SignalBridge,
    snapshot: str,
    people: People,
    socket_path: Path,
    who: str,
    password: str,
    code: str,
    exit_code: int,
) -> None:
    user = getattr(people, who)
    approval_id = request_approval(live, pki, snapshot)
    outcome = approve(user, socket_path, token_sent(bridge), password=password)
    assert outcome.exit_code == exit_code
    assert f"({code})" in outcome.stderr
    assert status(live, pki, approval_id) == "pending"
    (refused,) = refusals(config, code)
    assert refused["approver"] == f"pam:{user}"
    assert refused["peer_uid"] == pwd.getpwnam(user).pw_uid
    assert password not in config.audit.log_path.read_text()
    resubmitted = post(
        live, pki, "librarian-1", "/host/op", destroy(snapshot, approval_id=approval_id)
    )
    assert resubmitted.status_code == 409
    assert snapshot in pool.datasets("snapshot")


def test_an_outsider_cannot_even_list(
    live: RunningAgent, config: Config, people: People, socket_path: Path
) -> None:
    outcome = as_user(
        people.outsider, lambda: cli.main(["approve", "--list", "--socket", str(socket_path)])
    )
    assert outcome.exit_code == 1
    assert "(not_an_approver)" in outcome.stderr
    assert refusals(config, "not_an_approver")[0]["approver"] == f"pam:{people.outsider}"


def raw_exchange(path: Path, payload: bytes) -> Callable[[], int]:
    """A child action: send raw bytes on the socket, print the agent's reply line."""

    def exchange() -> int:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30)
            sock.connect(str(path))
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            print(sock.makefile("rb").readline().decode(), end="")
        return 0

    return exchange


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        pytest.param(b"not json\n", "request", id="not-json"),
        pytest.param(b"[1, 2]\n", "request", id="not-an-object"),
        pytest.param(b'{"action": "approve"}', "request", id="no-newline"),
        pytest.param(b'{"action": "grant", "token": "x"}\n', "action", id="unknown-action"),
        pytest.param(b'{"action": "approve", "password": "p"}\n', "token", id="no-token"),
        pytest.param(b'{"action": "approve", "token": 5, "password": "p"}\n', "token", id="int"),
        pytest.param(
            b'{"action": "approve", "token": "' + b"A" * 65 + b'", "password": "p"}\n',
            "token",
            id="overlong-token",
        ),
        pytest.param(b'{"action": "deny", "token": "x"}\n', "password", id="no-password"),
        pytest.param(
            b'{"action": "approve", "token": "x", "password": "' + b"p" * 1025 + b'"}\n',
            "password",
            id="overlong-password",
        ),
        pytest.param(b"{" + b" " * 9000 + b"}\n", "request", id="overlong-line"),
        pytest.param(b"\xff\xfe\n", "request", id="not-utf8"),
    ],
)
def test_malformed_requests_get_a_clear_error_and_are_audited(
    live: RunningAgent,
    config: Config,
    people: People,
    socket_path: Path,
    payload: bytes,
    field: str,
) -> None:
    outcome = as_user(people.approver, raw_exchange(socket_path, payload))
    assert outcome.exit_code == 0, outcome.stderr
    reply = json.loads(outcome.stdout)
    assert reply["ok"] is False
    assert reply["error"]["code"] == "invalid_request"
    assert reply["error"]["field"] == field
    assert refusals(config, "invalid_request")[0]["approver"] == f"pam:{people.approver}"


@pytest.mark.parametrize(
    "password",
    [
        pytest.param("line\nbreak", id="newline"),
        pytest.param("nul\x00byte", id="nul"),
        pytest.param("$(touch /tmp/pwned)`id`;|&", id="shell-metachar"),
        pytest.param("-n", id="leading-dash"),
        pytest.param("\u202eevil\u200b", id="unicode-tricks"),
    ],
)
def test_hostile_passwords_are_only_ever_wrong(
    live: RunningAgent,
    config: Config,
    people: People,
    socket_path: Path,
    bridge: SignalBridge,
    pki: Pki,
    snapshot: str,
    password: str,
) -> None:
    approval_id = request_approval(live, pki, snapshot)
    body = json.dumps(
        {"action": "approve", "token": token_sent(bridge), "password": password}
    ).encode()
    outcome = as_user(people.approver, raw_exchange(socket_path, body + b"\n"))
    reply = json.loads(outcome.stdout)
    assert reply["ok"] is False
    assert reply["error"]["code"] in ("authentication_failed", "invalid_password")
    assert status(live, pki, approval_id) == "pending"
    assert not Path("/tmp/pwned").exists()


def test_the_client_sends_no_password_to_a_socket_others_could_have_planted(
    people: People, tmp_path: Path
) -> None:
    """A look-alike listener in a world-writable directory gets nothing."""
    directory = Path(tempfile.mkdtemp(prefix="ha-planted-"))
    directory.chmod(0o777)
    path = directory / "approve.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        path.chmod(0o666)
        listener.listen(1)
        outcome = approve(people.approver, path, "0" * 16)
        assert outcome.exit_code == cli.EXIT_UNAVAILABLE
        assert "refusing to send a password" in outcome.stderr
        listener.settimeout(0.5)
        connection, _ = listener.accept()
        with connection:
            connection.settimeout(0.5)
            assert connection.recv(100) == b""  # connected, checked, closed: nothing sent
    finally:
        listener.close()
        shutil.rmtree(directory)


def test_no_agent_listening_is_exit_3_before_any_password_prompt(
    people: People, socket_path: Path
) -> None:
    outcome = approve(people.approver, socket_path, "0" * 16)
    assert outcome.exit_code == cli.EXIT_UNAVAILABLE
    assert "cannot reach the agent" in outcome.stderr


def test_root_trusts_the_agents_socket_but_is_no_approver(
    live: RunningAgent, socket_path: Path
) -> None:
    """The listener passes the client's checks (it is the agent's uid); the agent then
    refuses root, which is not in the approvers group."""
    reply = Connection(socket_path).ask({"action": "list"})
    assert reply == {
        "ok": False,
        "error": {
            "code": "not_an_approver",
            "message": reply["error"]["message"],
        },
    }


# --- the PAM wrapper on its own, through sudo as the service account ---------------


def pam_wrapper(
    system: System, *argv: str, password: str = PASSWORD
) -> subprocess.CompletedProcess[str]:
    wrapper = str(system.wrappers.directory / "host-agent-pam")
    return run(
        "sudo", "-n", "--", wrapper, *argv, user=system.user, check=False, stdin=f"{password}\n"
    )


def test_the_wrapper_checks_membership_and_password_itself(
    config: Config, system: System, people: People
) -> None:
    assert pam_wrapper(system, people.approver).returncode == 0
    assert pam_wrapper(system, people.approver, password="nope").returncode == 65
    assert pam_wrapper(system, people.outsider).returncode == 77
    assert pam_wrapper(system, "ha-no-such-user").returncode == 67


@pytest.mark.parametrize(
    "user",
    [
        pytest.param("-n", id="leading-dash"),
        pytest.param("../etc", id="dotdot-path"),
        pytest.param("root;id", id="shell-metachar"),
        pytest.param("a" * 300, id="overlong"),
        pytest.param("ro\u043ev", id="unicode-lookalike"),
        pytest.param("", id="empty"),
    ],
)
def test_the_wrapper_refuses_hostile_user_names(
    config: Config, system: System, people: People, user: str
) -> None:
    done = pam_wrapper(system, user)
    assert done.returncode == 64, done.stderr
    assert "refused" in done.stderr


def test_the_wrapper_refuses_without_its_pam_service(
    config: Config, system: System, people: People, pam_service: Path
) -> None:
    """PAM would fall back to the "other" service; the wrapper refuses instead."""
    saved = pam_service.read_bytes()
    pam_service.unlink()
    try:
        done = pam_wrapper(system, people.approver)
    finally:
        pam_service.write_bytes(saved)
        pam_service.chmod(0o644)
    assert done.returncode == 66, done.stderr
