"""`host-agent approve` on the host, as root: real local accounts with real passwords,
real sudo running the root approval helper, real PAM (with pam_faillock), a real Unix
socket with peer credentials, and a real zfs destroy waiting for the decision.

The approvers' passwords are checked by the root helper alone: the attack tests at the
end play a compromised service account and show that no password reaches it
(threat model, invariant 11)."""

from __future__ import annotations

import json
import pwd
import secrets
import shutil
import socket
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
