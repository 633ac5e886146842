"""What the zfs wrapper decides on its own, as root, from its root-owned file: the
predecessor's `[wrappers.zfs_destroy]` opt-in, and running zfs as the caller's account
(`[zfs] run_as_caller`) so that ZFS delegation limits each caller.

zfs-fuse has no delegation, so the caller's account is checked with a stand-in zfs that
reports who ran it; destroy's opt-in is checked on real zfs-fuse datasets."""

from __future__ import annotations

import json
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from host_agent import certs
from host_agent.config import Config, load_config
from host_agent.errors import ConfigError
from tests.support import Pki, audit_records, client, running_agent, write_config
from tests.system import REPO, Pool, System, run, service_account

pytestmark = pytest.mark.root

DISABLED = "enabled = false\nallowed_uids = []"


def call(system: System, *argv: str) -> tuple[int, str, str]:
    """The installed zfs wrapper through sudo, as the service account: what the agent runs."""
    path = str(system.wrappers.directory / "host-agent-zfs")
    done = run("sudo", "-n", path, *argv, user=system.user, check=False)
    return done.returncode, done.stdout, done.stderr


@pytest.mark.parametrize(
    "zfs_destroy",
    [
        pytest.param(DISABLED, id="not-enabled"),
        pytest.param("enabled = true\nallowed_uids = [0]", id="not-this-account"),
        pytest.param("enabled = true\nallowed_uids = []", id="nobody-listed"),
    ],
)
def test_the_wrapper_refuses_destroy_unless_its_own_file_opts_in(
    system: System, pool: Pool, pki: Pki, tmp_path: Path, snapshot: str, zfs_destroy: str
) -> None:
    """The exact argv the agent would send, straight to the wrapper: refused, whatever the
    agent decided, while snapshots still work."""
    system.agent_config(pki, tmp_path, zfs_destroy=zfs_destroy)
    status, _, stderr = call(system, "destroy", snapshot)
    assert status == 77, stderr
    assert "wrappers.zfs_destroy" in stderr
    assert snapshot in pool.datasets("snapshot")
    assert call(system, "snapshot", f"{pool.name}/data@still-{tmp_path.name[-8:]}")[0] == 0


def test_the_wrapper_destroys_for_a_listed_account(
    system: System, pool: Pool, pki: Pki, tmp_path: Path, snapshot: str
) -> None:
    uid = pwd.getpwnam(system.user).pw_uid
    system.agent_config(pki, tmp_path, zfs_destroy=f"enabled = true\nallowed_uids = [{uid}]")
    status, _, stderr = call(system, "destroy", snapshot)
    assert status == 0, stderr
    assert snapshot not in pool.datasets("snapshot")


def test_the_agent_names_the_hosts_refusal(
    system: System, pool: Pool, pki: Pki, tmp_path: Path, snapshot: str
) -> None:
    config = system.agent_config(pki, tmp_path, zfs_destroy=DISABLED)
    assert any(w.startswith("wrappers.zfs_destroy: not enabled") for w in config.warnings)
    with running_agent(config) as agent, client(agent, pki, "admin-1") as http:
        reply = http.post(
            "/host/op", json={"kind": "zfs", "resource": snapshot, "args": ["destroy"]}
        )
    assert reply.status_code == 403, reply.text
    assert reply.json()["error"]["code"] == "destroy_disabled_on_host"
    assert snapshot in pool.datasets("snapshot")
    result = audit_records(config.audit.log_path)[-1]
    assert (result["event"], result["code"]) == ("result", "destroy_disabled_on_host")


# --- zfs as the caller's account -------------------------------------------------------


@pytest.fixture(scope="module")
def caller_account() -> Iterator[str]:
    with service_account() as name:
        yield name


@pytest.fixture(scope="module")
def zfs_standin() -> Iterator[Path]:
    """The stand-in in a directory of root's that any account may enter (pytest's
    temporary directories are root's alone: the caller's account could not run it)."""
    directory = Path(tempfile.mkdtemp(prefix="ha-zfs-standin-"))
    directory.chmod(0o755)
    target = directory / "zfs"
    shutil.copyfile(REPO / "tests" / "standins" / "zfs", target)
    target.chmod(0o755)
    yield target
    shutil.rmtree(directory)


def caller_config(
    system: System, pki: Pki, tmp_path: Path, user: str, standin: Path, zfs_destroy: str
) -> Config:
    """One caller whose zfs runs as `user`: every profile granted zfs must name an
    account that exists, so the standard test profiles are not here."""
    config = write_config(
        tmp_path / "agent.toml",
        f"""
rules = []

[server]
bind = "127.0.0.1:0"
cert = "{pki.directory / certs.SERVER_CERT}"
key = "{pki.directory / certs.SERVER_KEY}"
client_ca = "{pki.ca}"

[runner]
service_user = "{system.user}"
wrapper_dir = "{system.wrappers.directory}"

[audit]
log_path = "{tmp_path / "audit.jsonl"}"

[approval]
enabled = false

[[agents]]
cn_pattern = "librarian-1"
agent_type = "librarian"
unix_user = "{user}"
allowed_operations = ["zfs-*"]

[zfs]
allowed_datasets = ["*"]
run_as_caller = true

[binaries]
zfs = "{standin}"

[wrappers.zfs_destroy]
{zfs_destroy}
""",
    )
    system.wrappers.configure(config)
    return config


def test_zfs_runs_as_the_callers_account_with_nothing_of_root(
    system: System, pki: Pki, tmp_path: Path, caller_account: str, zfs_standin: Path
) -> None:
    account = pwd.getpwnam(caller_account)
    config = caller_config(system, pki, tmp_path, caller_account, zfs_standin, DISABLED)
    with running_agent(config) as agent, client(agent, pki, "librarian-1") as http:
        reply = http.post("/host/op", json={"kind": "zfs", "resource": "", "args": ["list"]})
    assert reply.status_code == 200, reply.text
    ran = json.loads(reply.json()["stdout"])
    assert (ran["uid"], ran["euid"], ran["gid"]) == (account.pw_uid,) * 2 + (account.pw_gid,)
    assert 0 not in ran["groups"]
    assert ran["argv"][:3] == ["get", "-H", "-p"]
    decided = [r for r in audit_records(config.audit.log_path) if r["event"] == "decision"]
    assert decided[-1]["argv"][-len(["as", caller_account, "list"]) :] == [
        "as",
        caller_account,
        "list",
    ]


def test_destroy_as_the_caller_needs_the_callers_uid_listed(
    system: System, pki: Pki, tmp_path: Path, caller_account: str, zfs_standin: Path
) -> None:
    uid = pwd.getpwnam(caller_account).pw_uid
    service_uid = pwd.getpwnam(system.user).pw_uid
    caller_config(
        system, pki, tmp_path, caller_account, zfs_standin,
        f"enabled = true\nallowed_uids = [{service_uid}]",
    )  # fmt: skip
    status, _, stderr = call(system, "as", caller_account, "destroy", "tank/a@old")
    assert status == 77 and f"uid '{uid}' is not in wrappers.zfs_destroy" in stderr, stderr
    caller_config(
        system, pki, tmp_path, caller_account, zfs_standin,
        f"enabled = true\nallowed_uids = [{uid}]",
    )  # fmt: skip
    status, stdout, stderr = call(system, "as", caller_account, "destroy", "tank/a@old")
    assert status == 0, stderr
    assert json.loads(stdout)["uid"] == uid


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(("list",), "expected 'as USER' first", id="no-account"),
        pytest.param(("as", "root", "list"), "is not a zfs_user", id="root"),
        pytest.param(("as", "nobody", "list"), "is not a zfs_user", id="unlisted"),
        pytest.param(("as", "-u", "list"), "user starts with '-'", id="option"),
    ],
)
def test_the_wrapper_drops_only_to_a_listed_account(
    system: System,
    pki: Pki,
    tmp_path: Path,
    caller_account: str,
    zfs_standin: Path,
    argv: tuple[str, ...],
    message: str,
) -> None:
    caller_config(system, pki, tmp_path, caller_account, zfs_standin, DISABLED)
    status, stdout, stderr = call(system, *argv)
    assert status in (64, 77) and message in stderr, stderr
    assert stdout == ""


def test_without_run_as_caller_the_wrapper_refuses_an_account(
    system: System, pki: Pki, tmp_path: Path
) -> None:
    system.agent_config(pki, tmp_path)
    status, _, stderr = call(system, "as", "nobody", "list")
    assert status == 64 and "'as USER' needs zfs_run_as_caller=yes" in stderr


@pytest.mark.parametrize(
    ("user", "message"),
    [
        pytest.param("root", "unix_user 'root' is root or the agent's own account"),
        pytest.param("no-such-user-here", "unix_user 'no-such-user-here' does not exist here"),
    ],
)
def test_run_as_caller_that_cannot_work_is_refused_at_start(
    tmp_path: Path, user: str, message: str
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        f"""
rules = []

[server]
cert = "server.crt"
key = "server.key"
client_ca = "ca.crt"

[audit]
log_path = "audit.jsonl"

[[agents]]
cn_pattern = "librarian-*"
agent_type = "librarian"
unix_user = "{user}"
allowed_operations = ["zfs-list"]

[zfs]
run_as_caller = true
"""
    )
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert any(p.startswith(f"zfs.run_as_caller: {message}") for p in refused.value.problems)
