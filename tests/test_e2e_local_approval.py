"""`host-agent approve` on the host, as root: real local accounts with real passwords,
real sudo running the root approval helper, real PAM (with pam_faillock), a real Unix
socket with peer credentials, and a real zfs destroy waiting for the decision.

The approvers' passwords are checked by the root helper alone: the attack tests at the
end play a compromised service account and show that no password reaches it
(threat model, invariant 11)."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import select
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
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
from tests.support import (
    Pki,
    RunningAgent,
    audit_records,
    reachable_directory,
    running_agent,
)
from tests.system import REPO, SUDOERS_D, Outcome, Pool, System, as_user, run

pytestmark = pytest.mark.root

PASSWORD = "correct horse 1"
# Test-only pam_faillock settings (the shipped PAM file reads the system's defaults):
# a short lock, so the lockout test need not wait ten minutes.
FAILLOCK_DENY, FAILLOCK_UNLOCK_SECONDS = 3, 4


@dataclass(frozen=True)
class People:
    group: str
    approver: str  # in the group
    second: str  # in the group too
    outsider: str  # not in the group
    requester: str  # in the group, and the requesting profile's unix_user

    @property
    def everyone(self) -> tuple[str, ...]:
        return (self.approver, self.second, self.outsider, self.requester)


@dataclass(frozen=True)
class PamService:
    name: str  # /etc/pam.d/NAME: the shipped file with a test-only faillock.conf
    tally_dir: Path


@pytest.fixture(scope="module")
def pam_service() -> Iterator[PamService]:
    """The shipped PAM service file under a unique name, its pam_faillock lines pointed at a
    test-only faillock.conf (short lock, own tally directory): the shipped file unchanged."""
    work = Path(tempfile.mkdtemp(prefix="ha-pam-"))
    tally = work / "tally"
    tally.mkdir(mode=0o700)
    settings = work / "faillock.conf"
    settings.write_text(
        f"dir = {tally}\ndeny = {FAILLOCK_DENY}\nunlock_time = {FAILLOCK_UNLOCK_SECONDS}\n"
    )
    name = f"host-agent-test-{secrets.token_hex(3)}"
    shipped = (REPO / "pam" / "host-agent").read_text()
    assert shipped.count("pam_faillock.so ") == 3
    service = Path("/etc/pam.d") / name
    service.write_text(shipped.replace("pam_faillock.so ", f"pam_faillock.so conf={settings} "))
    service.chmod(0o644)
    try:
        yield PamService(name, tally)
    finally:
        service.unlink()
        shutil.rmtree(work)


@pytest.fixture(scope="module")
def people(system: System) -> Iterator[People]:
    """Throwaway accounts with passwords set by chpasswd, the approvers group, and the
    approvers' sudoers drop-in rendered from the shipped template (checked by visudo)."""
    tag = secrets.token_hex(3)
    group = f"ha-approvers-{tag}"
    made = People(group, f"ha-ap-{tag}", f"ha-ap2-{tag}", f"ha-out-{tag}", f"ha-req-{tag}")
    run("groupadd", group)
    drop_in = SUDOERS_D / f"host-agent-test-approve-{tag}"
    try:
        for name in made.everyone:
            member = [] if name == made.outsider else ["-G", group]
            run("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", *member, name)
        run("chpasswd", stdin="".join(f"{name}:{PASSWORD}\n" for name in made.everyone))
        rendered = (REPO / "sudoers" / "host-agent-approve").read_text()
        rendered = rendered.replace("@APPROVERS@", group)
        rendered = rendered.replace("@WRAPPER_DIR@", str(system.wrappers.directory))
        staged = system.root / f"sudoers-approve-{tag}"
        staged.write_text(rendered)
        run("visudo", "-cf", str(staged))
        shutil.move(staged, drop_in)
        drop_in.chmod(0o440)
        yield made
    finally:
        drop_in.unlink(missing_ok=True)
        for name in made.everyone:
            run("userdel", name, check=False)
        run("groupdel", group, check=False)


@pytest.fixture(autouse=True)
def fresh_tallies(pam_service: PamService, people: People) -> Iterator[None]:
    """Each test starts with nobody locked out by an earlier test's wrong passwords."""
    yield
    for name in people.everyone:
        (pam_service.tally_dir / name).unlink(missing_ok=True)


@pytest.fixture
def socket_path() -> Iterator[Path]:
    # Not under pytest's 0700 tmp dir: the approvers must be able to reach the socket.
    with reachable_directory("ha-approve-") as directory:
        yield directory / "approve.sock"


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
    pam_service: PamService,
) -> Config:
    keys = {
        "signal_url": f'"{bridge.url}"',
        "signal_number": f'"{BRIDGE_NUMBER}"',
        "local_socket": f'"{socket_path}"',
        "approvers_group": f'"{people.group}"',
    }
    config = system.agent_config(
        pki,
        tmp_path,
        approval="\n".join(f"{key} = {value}" for key, value in keys.items()),
        profiles=REQUESTER_PROFILE.format(requester=people.requester),
        extra=TWO_APPROVERS_RULE,
    )
    override_wrappers_conf(system, f"pam_service={pam_service.name}")
    return config


def override_wrappers_conf(system: System, line: str) -> None:
    """Append a line to the rendered wrappers.conf (the wrappers use a key's last value)."""
    with system.wrappers.config.open("a") as conf:
        conf.write(line + "\n")


@pytest.fixture
def live(config: Config) -> Iterator[RunningAgent]:
    with running_agent(config) as agent:
        yield agent


def approve(system: System, user: str, *args: str, password: str = PASSWORD) -> Outcome:
    """`host-agent approve ARGS` as `user`, the password on its stdin (read by the helper)."""
    helper = str(system.wrappers.directory / "host-agent-approve")
    argv = ["approve", *args, "--helper", helper, "--password-stdin"]
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
    system: System,
) -> None:
    approval_id = request_approval(live, pki, snapshot)
    outcome = approve(system, people.approver, token_sent(bridge))
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
    # The decision came from root's helper, on behalf of the approver sudo named.
    assert granted[0]["peer_uid"] == 0
    assert granted[0]["approver_uid"] == pwd.getpwnam(people.approver).pw_uid


def test_on_the_host_the_approval_id_stands_for_the_token_and_deny_ends_it(
    live: RunningAgent,
    config: Config,
    pki: Pki,
    pool: Pool,
    snapshot: str,
    people: People,
    socket_path: Path,
    system: System,
) -> None:
    """When Signal is down the token never arrives: --list and the id are enough on the host."""
    approval_id = request_approval(live, pki, snapshot)
    listed = as_user(
        people.approver, lambda: cli.main(["approve", "--list", "--socket", str(socket_path)])
    )
    assert listed.exit_code == 0, listed.stderr
    assert f"{approval_id}  pending   zfs-destroy {snapshot}  by librarian-1" in listed.stdout
    assert "reason: free space" in listed.stdout

    denied = approve(system, people.second, approval_id, "--deny")
    assert denied.exit_code == 0, denied.stderr
    assert denied.stdout.startswith(f"denied {approval_id}")
    again = post(live, pki, "librarian-1", "/host/op", destroy(snapshot, approval_id=approval_id))
    assert again.status_code == 403
    assert again.json()["error"]["code"] == "approval_denied"
    assert snapshot in pool.datasets("snapshot")


def test_two_approvers_on_the_host_each_count_once_and_json_shows_the_reply(
    live: RunningAgent, pki: Pki, pool: Pool, people: People, system: System
) -> None:
    snapshot = f"{pool.name}/data@two-{secrets.token_hex(3)}"
    run("zfs", "snapshot", snapshot)
    approval_id = request_approval(live, pki, snapshot)
    first = approve(system, people.approver, approval_id)
    assert first.exit_code == 0, first.stderr
    assert first.stdout.startswith(f"vote recorded for {approval_id}")
    assert first.stdout.rstrip().endswith("1 of 2 approvals")
    again = approve(system, people.approver, approval_id)
    assert (again.exit_code, "(already_voted)" in again.stderr) == (1, True)
    second = approve(system, people.second, approval_id, "--json")
    assert second.exit_code == 0, second.stderr
    reply = json.loads(second.stdout)
    assert reply["ok"] is True
    assert reply["approval"]["status"] == "approved"
    assert reply["approval"]["approvers"] == [f"pam:{people.approver}", f"pam:{people.second}"]
    done = post(live, pki, "librarian-1", "/host/op", destroy(snapshot, approval_id=approval_id))
    assert done.status_code == 200, done.text
    assert snapshot not in pool.datasets("snapshot")


@pytest.mark.parametrize(
    ("who", "password", "code"),
    [
        pytest.param("approver", "wrong horse", "authentication_failed", id="wrong-password"),
        pytest.param("requester", PASSWORD, "self_approval", id="requester-itself"),
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
    system: System,
    who: str,
    password: str,
    code: str,
) -> None:
    user = getattr(people, who)
    approval_id = request_approval(live, pki, snapshot)
    outcome = approve(system, user, token_sent(bridge), password=password)
    assert outcome.exit_code == 1
    assert f"({code})" in outcome.stderr
    assert status(live, pki, approval_id) == "pending"
    (refused,) = refusals(config, code)
    assert refused["approver"] == f"pam:{user}"
    assert (refused["peer_uid"], refused["approver_uid"]) == (0, pwd.getpwnam(user).pw_uid)
    assert password not in config.audit.log_path.read_text()
    resubmitted = post(
        live, pki, "librarian-1", "/host/op", destroy(snapshot, approval_id=approval_id)
    )
    assert resubmitted.status_code == 409
    assert snapshot in pool.datasets("snapshot")


def test_an_outsider_cannot_run_the_helper_nor_list(
    live: RunningAgent,
    config: Config,
    pki: Pki,
    bridge: SignalBridge,
    snapshot: str,
    people: People,
    socket_path: Path,
    system: System,
) -> None:
    approval_id = request_approval(live, pki, snapshot)
    decided = approve(system, people.outsider, token_sent(bridge))
    assert decided.exit_code == 1
    assert "sudo:" in decided.stderr  # sudo itself refuses: the rule is for the group only
    assert status(live, pki, approval_id) == "pending"
    listed = as_user(
        people.outsider, lambda: cli.main(["approve", "--list", "--socket", str(socket_path)])
    )
    assert listed.exit_code == 1
    assert "(not_an_approver)" in listed.stderr
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
        pytest.param(b'{"action": "list"}', "request", id="no-newline"),
        pytest.param(b'{"action": "grant", "token": "x"}\n', "action", id="unknown-action"),
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
    ("request_line", "field"),
    [
        pytest.param({"action": "approve", "token": "x"}, "approver", id="no-approver"),
        pytest.param({"action": "approve", "approver": 5, "token": "x"}, "approver", id="int"),
        pytest.param({"action": "approve", "approver": "a" * 33}, "approver", id="overlong"),
        pytest.param({"action": "deny", "approver": "{approver}"}, "token", id="no-token"),
        pytest.param(
            {"action": "approve", "approver": "{approver}", "token": "A" * 65},
            "token",
            id="overlong-token",
        ),
        pytest.param(
            {"action": "refused", "approver": "{approver}", "code": "self_approval"},
            "code",
            id="refusal-code-not-the-helpers",
        ),
    ],
)
def test_malformed_helper_requests_are_refused_too(
    live: RunningAgent,
    people: People,
    socket_path: Path,
    request_line: dict[str, Any],
    field: str,
) -> None:
    """Root's word is checked like anyone's: the helper's requests have a strict shape."""
    text = json.dumps(request_line).replace("{approver}", people.approver)
    reply = json.loads(as_user("root", raw_exchange(socket_path, text.encode() + b"\n")).stdout)
    assert reply["ok"] is False
    assert (reply["error"]["code"], reply["error"]["field"]) == ("invalid_request", field)


@pytest.mark.parametrize(
    "password",
    [
        pytest.param("nul\x00byte", id="nul"),
        pytest.param("$(touch /tmp/pwned)`id`;|&", id="shell-metachar"),
        pytest.param("-n", id="leading-dash"),
        pytest.param("\u202eevil\u200b", id="unicode-tricks"),
        pytest.param("p" * 1025, id="overlong"),
        pytest.param("", id="empty"),
    ],
)
def test_hostile_passwords_are_only_ever_wrong(
    live: RunningAgent,
    people: People,
    system: System,
    bridge: SignalBridge,
    pki: Pki,
    snapshot: str,
    password: str,
) -> None:
    approval_id = request_approval(live, pki, snapshot)
    outcome = approve(system, people.approver, token_sent(bridge), password=password)
    assert outcome.exit_code == 1
    assert "(authentication_failed)" in outcome.stderr or "(invalid_password)" in outcome.stderr
    assert status(live, pki, approval_id) == "pending"
    assert not Path("/tmp/pwned").exists()


def test_listing_trusts_no_socket_others_could_have_planted(people: People) -> None:
    """A look-alike listener in a world-writable directory is not even asked."""
    directory = Path(tempfile.mkdtemp(prefix="ha-planted-"))
    directory.chmod(0o777)
    path = directory / "approve.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        path.chmod(0o666)
        listener.listen(1)
        outcome = as_user(
            people.approver, lambda: cli.main(["approve", "--list", "--socket", str(path)])
        )
        assert outcome.exit_code == cli.EXIT_UNAVAILABLE
        assert "refusing to talk to" in outcome.stderr
        listener.settimeout(0.5)
        connection, _ = listener.accept()
        with connection:
            connection.settimeout(0.5)
            assert connection.recv(100) == b""  # connected, checked, closed: nothing sent
    finally:
        listener.close()
        shutil.rmtree(directory)


def test_no_agent_listening_is_exit_3_before_any_password_is_read(
    config: Config, people: People, system: System
) -> None:
    outcome = approve(system, people.approver, "0" * 16, password="never read")
    assert outcome.exit_code == cli.EXIT_UNAVAILABLE
    assert "cannot reach the agent" in outcome.stderr


def test_root_trusts_the_agents_socket_but_lists_nothing(
    live: RunningAgent, socket_path: Path
) -> None:
    """Root's only business here is the helper's decisions; it is no approver."""
    reply = Connection(socket_path).ask({"action": "list"})
    assert reply == {
        "ok": False,
        "error": {
            "code": "not_an_approver",
            "message": reply["error"]["message"],
        },
    }


# --- attacks: a compromised service account, a local approver, a guesser ------------
# Invariant 11: no approver's password ever reaches a process the service account
# controls, and the service account has no way left to check passwords.


@pytest.fixture
def service_dir(system: System) -> Iterator[Path]:
    """A socket directory as in production (/run/host-agent): the service account's."""
    with reachable_directory("ha-run-") as directory:
        shutil.chown(directory, system.user)
        yield directory


def planted_listener(path: Path, reply: bytes) -> Callable[[], int]:
    """A child action: listen at `path`, print (hex) every byte the first client sends."""

    def listen() -> int:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
            server.bind(str(path))
            path.chmod(0o666)
            server.listen(1)
            server.settimeout(30)
            connection, _ = server.accept()
            with connection:
                connection.settimeout(30)
                received = bytearray()
                while not received.endswith(b"\n"):
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    received += chunk
                connection.sendall(reply)
            print(received.hex())
        return 0

    return listen


class Planted:
    """The service account's own listener at `path`, run in a child as that account."""

    def __init__(self, system: System, path: Path, reply: bytes = b'{"ok": false}\n') -> None:
        self.path = path
        self._outcome: Outcome | None = None
        self._thread = threading.Thread(target=self._run, args=(system.user, reply))
        self._thread.start()
        deadline = time.monotonic() + 30
        while not path.exists():
            assert time.monotonic() < deadline, "the planted listener did not start"
            time.sleep(0.05)

    def _run(self, user: str, reply: bytes) -> None:
        self._outcome = as_user(user, planted_listener(self.path, reply))

    def received(self) -> bytes:
        self._thread.join(60)
        assert self._outcome is not None and self._outcome.exit_code == 0, self._outcome
        return bytes.fromhex(self._outcome.stdout.strip())


@pytest.mark.parametrize(
    ("password", "expected"),
    [
        pytest.param(PASSWORD, {"action": "approve"}, id="right-password"),
        pytest.param("wrong horse", {"action": "refused"}, id="wrong-password"),
    ],
)
def test_a_listener_the_service_account_planted_never_gets_the_password(
    live: RunningAgent,
    pki: Pki,
    bridge: SignalBridge,
    snapshot: str,
    people: People,
    system: System,
    service_dir: Path,
    password: str,
    expected: dict[str, str],
) -> None:
    """The service account owns the socket's directory, so it can replace the agent's
    socket with its own listener: that listener hears who decided what, never a password."""
    approval_id = request_approval(live, pki, snapshot)
    token = token_sent(bridge)
    planted = Planted(system, service_dir / "approve.sock")
    override_wrappers_conf(system, f"local_socket={planted.path}")
    outcome = approve(system, people.approver, token, password=password)
    received = planted.received()
    assert password.encode() not in received
    assert PASSWORD.encode() not in received
    message = json.loads(received)
    assert message["action"] == expected["action"]  # it was asked: the check is not vacuous
    assert message["approver"] == people.approver
    assert set(message) <= {"action", "token", "approver", "code"}
    assert outcome.exit_code == 1
    assert status(live, pki, approval_id) == "pending"  # the real agent heard nothing


def test_the_helper_follows_no_link_the_service_account_put_in_its_directory(
    live: RunningAgent,
    pki: Pki,
    bridge: SignalBridge,
    snapshot: str,
    people: People,
    system: System,
    service_dir: Path,
    socket_path: Path,
) -> None:
    """A symlink from the service account's directory to a root-owned socket (here the
    agent's own) would make root's helper talk to whatever root listener it chose."""
    approval_id = request_approval(live, pki, snapshot)
    link = service_dir / "approve.sock"
    link.symlink_to(socket_path)
    os.lchown(link, pwd.getpwnam(system.user).pw_uid, -1)
    override_wrappers_conf(system, f"local_socket={link}")
    outcome = approve(system, people.approver, token_sent(bridge))
    assert outcome.exit_code == cli.EXIT_UNAVAILABLE
    assert "refusing to talk to" in outcome.stderr
    assert status(live, pki, approval_id) == "pending"


def test_the_service_account_can_no_longer_check_passwords(
    config: Config, system: System, people: People
) -> None:
    """The old PAM wrapper was a password oracle for the service account: it is gone from
    sudoers, and the approval helper is not the service account's to run either."""
    listed = run("sudo", "-n", "-l", user=system.user, check=False)
    _, commands = listed.stdout.split("may run the following commands")
    assert "host-agent-zfs" in commands  # the listing works; no password check is in it
    assert "host-agent-pam" not in commands
    assert "host-agent-approve" not in commands
    for wrapper, argv in (
        ("host-agent-pam", [people.approver]),
        ("host-agent-approve", ["--password-stdin", "approve", "--", "0" * 16]),
    ):
        done = run(
            "sudo",
            "-n",
            "--",
            str(system.wrappers.directory / wrapper),
            *argv,
            user=system.user,
            check=False,
            stdin=f"{PASSWORD}\n",
        )
        assert done.returncode == 1
        assert done.stderr.startswith("sudo:"), done.stderr


@pytest.mark.parametrize("who", ["approver", "service"])
def test_a_decision_sent_to_the_socket_directly_is_refused_and_audited(
    live: RunningAgent,
    config: Config,
    pki: Pki,
    bridge: SignalBridge,
    snapshot: str,
    people: People,
    system: System,
    socket_path: Path,
    who: str,
) -> None:
    """Only root's helper has checked a password: a member's (or the agent's) own claim to
    be an approver is refused."""
    user = people.approver if who == "approver" else system.user
    approval_id = request_approval(live, pki, snapshot)
    claim = {"action": "approve", "token": token_sent(bridge), "approver": people.approver}
    outcome = as_user(user, raw_exchange(socket_path, json.dumps(claim).encode() + b"\n"))
    reply = json.loads(outcome.stdout)
    code = "decision_needs_helper" if who == "approver" else "not_an_approver"
    assert (reply["ok"], reply["error"]["code"]) == (False, code)
    (refused,) = refusals(config, code)
    assert refused["approver"] == f"pam:{user}"
    assert refused["peer_uid"] == pwd.getpwnam(user).pw_uid
    assert status(live, pki, approval_id) == "pending"


def test_guessing_locks_the_approver_out(
    live: RunningAgent,
    config: Config,
    pki: Pki,
    bridge: SignalBridge,
    snapshot: str,
    people: People,
    system: System,
) -> None:
    """pam_faillock: after FAILLOCK_DENY wrong passwords even the right one is refused
    until the lock ends (test-only: seconds; shipped: the system's faillock.conf)."""
    approval_id = request_approval(live, pki, snapshot)
    token = token_sent(bridge)
    for _ in range(FAILLOCK_DENY):
        wrong = approve(system, people.approver, token, password="wrong horse")
        assert "(authentication_failed)" in wrong.stderr
    locked = approve(system, people.approver, token)
    assert (locked.exit_code, "(authentication_failed)" in locked.stderr) == (1, True)
    assert status(live, pki, approval_id) == "pending"
    assert len(refusals(config, "authentication_failed")) == FAILLOCK_DENY + 1
    time.sleep(FAILLOCK_UNLOCK_SECONDS + 1)
    unlocked = approve(system, people.approver, token)
    assert unlocked.exit_code == 0, unlocked.stderr
    assert status(live, pki, approval_id) == "approved"


def test_the_approver_is_who_ran_sudo_never_an_argument_or_variable(
    live: RunningAgent,
    config: Config,
    pki: Pki,
    bridge: SignalBridge,
    snapshot: str,
    people: People,
    system: System,
) -> None:
    approval_id = request_approval(live, pki, snapshot)
    token = token_sent(bridge)
    helper = str(system.wrappers.directory / "host-agent-approve")
    # Another approver's name as an argument: refused before any password is read.
    named = run(
        "sudo", "-n", "--", helper, "--password-stdin", "approve", "--", token, people.second,
        user=people.approver, check=False, stdin=f"{PASSWORD}\n",
    )  # fmt: skip
    assert named.returncode == cli.EXIT_USAGE, named.stderr
    assert status(live, pki, approval_id) == "pending"

    # SUDO_UID and SUDO_USER in the caller's environment: sudo sets its own.
    def spoofed() -> int:
        os.environ.update(SUDO_UID=str(pwd.getpwnam(people.second).pw_uid), SUDO_USER=people.second)
        helper_argv = ["approve", token, "--helper", helper, "--password-stdin"]
        return cli.main(helper_argv)

    outcome = as_user(people.approver, spoofed, stdin=f"{PASSWORD}\n")
    assert outcome.exit_code == 0, outcome.stderr
    granted = [r for r in audit_records(config.audit.log_path) if r["event"] == "approval_granted"]
    assert granted[-1]["approvers"] == [f"pam:{people.approver}"]


# Terminal control sequences in every field the agent (or whoever answers in its name)
# sends back: clear screen, OSC 52 (set the clipboard), a title, C1 CSI, bidi override.
HOSTILE = "\x1b[2J\x1b]52;c;cm0gLXJmIH4K\x07\x1b]0;title\x1b\\\x9b31m\u202egnp.exe\u2066"
CONTROLS = ("\x1b", "\x07", "\x9b", "\u202e", "\u2066")


def hostile_approval() -> dict[str, Any]:
    return {
        "approval_id": f"ap-{HOSTILE}",
        "status": "approved",
        "operation": f"zfs-destroy{HOSTILE}",
        "resource": f"tank/data@x{HOSTILE}",
        "requester": f"librarian{HOSTILE}",
        "expires_at": f"soon{HOSTILE}",
        "args": [f"destroy{HOSTILE}"],
        "reason": f"free space{HOSTILE}",
        "approvers": [],
        "approvals_required": 1,
    }


def assert_inert(text: str) -> None:
    assert text.strip(), "nothing printed: the test would prove nothing"
    for control in CONTROLS:
        assert control not in text, repr(text)


def test_list_prints_no_terminal_controls_from_the_agent(
    people: People, system: System, service_dir: Path
) -> None:
    reply = {"ok": True, "approvals": [hostile_approval()]}
    planted = Planted(system, service_dir / "approve.sock", json.dumps(reply).encode() + b"\n")
    listed = as_user(
        people.approver, lambda: cli.main(["approve", "--list", "--socket", str(planted.path)])
    )
    planted.received()
    assert listed.exit_code == 0, listed.stderr
    assert "reason: free space" in listed.stdout
    assert_inert(listed.stdout)


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param({"ok": True, "approval": hostile_approval()}, id="decision"),
        pytest.param(
            {"ok": False, "error": {"code": f"x{HOSTILE}", "message": f"no{HOSTILE}"}},
            id="refusal",
        ),
    ],
)
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_the_helper_prints_no_terminal_controls_from_the_agent(
    config: Config,
    people: People,
    system: System,
    service_dir: Path,
    reply: dict[str, Any],
    as_json: bool,
) -> None:
    planted = Planted(system, service_dir / "approve.sock", json.dumps(reply).encode() + b"\n")
    override_wrappers_conf(system, f"local_socket={planted.path}")
    outcome = approve(system, people.approver, "0" * 16, *(["--json"] if as_json else []))
    planted.received()
    assert_inert(outcome.stdout + outcome.stderr)


def test_the_password_is_read_from_the_approvers_terminal_without_echo(
    live: RunningAgent,
    pki: Pki,
    bridge: SignalBridge,
    snapshot: str,
    people: People,
    system: System,
) -> None:
    """No --password-stdin: the root helper prompts on the approver's terminal (a pty made
    by script(1)), with echo off, and the password typed there approves."""
    approval_id = request_approval(live, pki, snapshot)
    helper = str(system.wrappers.directory / "host-agent-approve")
    command = [sys.executable, "-m", "host_agent", "approve", token_sent(bridge)]
    command += ["--helper", helper]
    argv = ["runuser", "-u", people.approver, "--", "script", "-qec", shlex.join(command)]
    with subprocess.Popen(
        [*argv, "/dev/null"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd="/"
    ) as session:
        assert session.stdin is not None and session.stdout is not None
        shown = b""
        deadline = time.monotonic() + 60
        while b"Password for " + people.approver.encode() not in shown:
            assert time.monotonic() < deadline, shown
            ready, _, _ = select.select([session.stdout], [], [], 1)
            if ready:
                chunk = os.read(session.stdout.fileno(), 4096)
                assert chunk, shown
                shown += chunk
        session.stdin.write(f"{PASSWORD}\n".encode())
        session.stdin.flush()
        rest, _ = session.communicate(timeout=60)
    shown += rest
    assert session.returncode == 0, shown
    assert PASSWORD.encode() not in shown  # not echoed
    assert f"approved {approval_id}".encode() in shown
    assert status(live, pki, approval_id) == "approved"


def test_the_helper_imports_nothing_from_the_approvers_directory(
    live: RunningAgent,
    pki: Pki,
    bridge: SignalBridge,
    snapshot: str,
    people: People,
    system: System,
) -> None:
    """The approver chooses the working directory of a root process: a `host_agent`
    package there must not be what root runs (python -I: no cwd on sys.path)."""
    approval_id = request_approval(live, pki, snapshot)
    token = token_sent(bridge)
    planted = Path(tempfile.mkdtemp(prefix="ha-cwd-"))
    marker = planted / "ran-as-root"
    try:
        (planted / "host_agent").mkdir()
        (planted / "host_agent" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
        planted.chmod(0o755)
        helper = str(system.wrappers.directory / "host-agent-approve")

        def from_there() -> int:
            os.chdir(planted)
            return cli.main(["approve", token, "--helper", helper, "--password-stdin"])

        outcome = as_user(people.approver, from_there, stdin=f"{PASSWORD}\n")
        assert outcome.exit_code == 0, outcome.stderr
        assert not marker.exists()
        assert status(live, pki, approval_id) == "approved"
    finally:
        shutil.rmtree(planted)
