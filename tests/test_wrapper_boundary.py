"""As root, through real sudo as the real service account: the wrappers' own boundary.

A wrapper runs exactly the path it checked, and only from places no one but root
can change; it stops its tool as root when the time is up (the agent cannot signal
root's children); and its tool gets none of the environment sudo kept.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from host_agent.audit import verify
from host_agent.config import Config
from host_agent.errors import RunnerError
from host_agent.operations import Operation
from host_agent.runner import Runner
from tests.approval_flow import wait_for
from tests.support import Pki, audit_records, client, config_text, running_agent, write_config
from tests.system import REPO, SUDOERS_D, System, as_user, install_standin, run

pytestmark = pytest.mark.root

NOT_ROOTS_ALONE = "must be owned by root and not group/world-writable"


def configure(system: System, *lines: str) -> None:
    """Write the wrappers' root-owned config file, as an operator would."""
    system.wrappers.config.write_text("".join(f"{line}\n" for line in lines))


def call(
    system: System, wrapper: str, *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a wrapper through real sudo as the service account, with `env` added."""
    assignments = [f"{name}={value}" for name, value in (env or {}).items()]
    command = ("sudo", "-n", "--", str(system.wrappers.directory / wrapper), *argv)
    return run("env", *assignments, *command, user=system.user, check=False)


def standin(system: System, tmp_path: Path, name: str, text: str) -> Path:
    source = tmp_path / name
    source.write_text(text)
    return install_standin(system, source)


@pytest.fixture
def attacker_dir(system: System) -> Iterator[Path]:
    """A directory the service account owns (in /tmp, where it can reach it)."""
    directory = Path(tempfile.mkdtemp(prefix="ha-attacker-"))
    entry = pwd.getpwnam(system.user)
    os.chown(directory, entry.pw_uid, entry.pw_gid)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def user_symlink(system: System, directory: Path, name: str, target: Path) -> Path:
    link = directory / name
    run("ln", "-s", "--", str(target), str(link), user=system.user)
    return link


# --- item 3: exactly the checked path, only from places root alone controls ----------

RAN = "#!/bin/sh\necho standin ran\n"


@pytest.mark.parametrize(
    ("wrapper", "argv", "lines"),
    [
        pytest.param("host-agent-zfs", ("list",), ("zfs_bin={link}",), id="zfs_bin"),
        pytest.param(
            "host-agent-exec",
            ("run", "command", "{link}"),
            ("exec_enabled=true", "exec_command={link}"),
            id="exec_command",
        ),
    ],
)
def test_a_tool_linked_from_a_directory_the_service_account_owns_is_refused(
    system: System,
    tmp_path: Path,
    attacker_dir: Path,
    wrapper: str,
    argv: tuple[str, ...],
    lines: tuple[str, ...],
) -> None:
    real = standin(system, tmp_path, "real-tool", RAN)
    link = user_symlink(system, attacker_dir, "tool", real)
    configure(system, *(line.format(link=link) for line in lines))
    done = call(system, wrapper, *(arg.format(link=link) for arg in argv))
    assert done.returncode == 78, done.stderr
    assert f"{attacker_dir} {NOT_ROOTS_ALONE}" in done.stderr
    assert "standin ran" not in done.stdout


@pytest.mark.parametrize("way", ["below", "back-out"])
def test_a_tool_past_the_steps_the_wrapper_already_checked_is_still_checked_to_its_end(
    system: System, attacker_dir: Path, way: str
) -> None:
    """The wrapper remembers the steps it found root's alone (its own directory among
    them) for the rest of its run; a path that shares those steps and then goes on,
    deeper or back out with `..`, into a place the service account can change is
    still refused there."""
    handed_over = system.wrappers.directory / f"tools-{secrets.token_hex(3)}"
    handed_over.mkdir(mode=0o755)
    try:
        entry = pwd.getpwnam(system.user)
        os.chown(handed_over, entry.pw_uid, entry.pw_gid)
        shutil.copyfile("/bin/true", handed_over / "tool")
        (handed_over / "tool").chmod(0o755)  # root's own: only its directory is not
        run("cp", "/bin/true", str(attacker_dir / "tool"), user=system.user)
        up = "/".join([".."] * len(system.wrappers.directory.parts[1:]))
        tool, bad = {
            "below": (handed_over / "tool", handed_over),
            "back-out": (f"{system.wrappers.directory}/{up}{attacker_dir}/tool", attacker_dir),
        }[way]
        configure(system, "exec_enabled=true", f"exec_command={tool}")
        done = call(system, "host-agent-exec", "run", "command", str(tool))
        assert done.returncode == 78, done.stderr
        assert f"{bad} {NOT_ROOTS_ALONE}" in done.stderr
    finally:
        shutil.rmtree(handed_over)


def test_the_checked_tool_is_the_one_run_while_the_link_flips(
    system: System, tmp_path: Path, attacker_dir: Path
) -> None:
    """The race: a link flipped between the real tool and the attacker's script never
    gets the script run as root (before the fix it did, within a few calls)."""
    witness = system.root / f"race-{secrets.token_hex(3)}"
    witness.mkdir(mode=0o755)  # root's: only a process running as root can write here
    marker = witness / "ran-as-root"
    evil = attacker_dir / "evil"
    run("sh", "-c", f'printf "#!/bin/sh\\ntouch {marker}\\n" > {evil}', user=system.user)
    run("chmod", "0755", str(evil), user=system.user)
    link = user_symlink(system, attacker_dir, "zfs", Path("/bin/true"))
    configure(system, f"zfs_bin={link}")
    entry = pwd.getpwnam(system.user)
    flipper = subprocess.Popen(
        ["/usr/bin/python3", "-c", FLIP, str(link), str(evil)],
        user=entry.pw_uid,
        group=entry.pw_gid,
        extra_groups=[],
    )
    try:
        deadline = time.monotonic() + 20
        for _ in range(60):
            if marker.exists() or time.monotonic() > deadline:
                break
            call(system, "host-agent-zfs", "list")
    finally:
        flipper.kill()
        flipper.wait()
    assert not marker.exists(), "the attacker's script ran as root"
    done = call(system, "host-agent-zfs", "list")
    assert done.returncode == 78 and NOT_ROOTS_ALONE in done.stderr


# Flips LINK between /bin/true and EVIL by atomic renames, as fast as it can.
FLIP = """
import os, sys
link, evil = sys.argv[1], sys.argv[2]
spare = link + ".next"
while True:
    for target in ("/bin/true", evil):
        try:
            os.unlink(spare)
        except FileNotFoundError:
            pass
        os.symlink(target, spare)
        os.replace(spare, link)
"""


def test_a_playbook_beside_a_file_the_service_account_can_change_is_refused(
    system: System, tmp_path: Path
) -> None:
    """ansible reads ansible.cfg (and roles/, group_vars/) beside the playbook as root:
    one of them being another account's is as bad as the playbook being theirs."""
    ansible = standin(system, tmp_path, "ansible-playbook", RAN)
    playbooks = system.root / f"playbooks-{secrets.token_hex(3)}"
    playbooks.mkdir(mode=0o755)
    (playbooks / "site.yml").write_text("- hosts: all\n  tasks: []\n")
    (playbooks / "site.yml").chmod(0o644)
    configure(
        system,
        "exec_enabled=true",
        f"exec_playbook_dir={playbooks}",
        "exec_playbook=site.yml",
        f"ansible_playbook_bin={ansible}",
    )
    assert "standin ran" in call(system, "host-agent-exec", "run", "playbook", "site.yml").stdout
    settings = playbooks / "ansible.cfg"
    settings.write_text("[defaults]\n")
    entry = pwd.getpwnam(system.user)
    os.chown(settings, entry.pw_uid, entry.pw_gid)
    done = call(system, "host-agent-exec", "run", "playbook", "site.yml")
    assert done.returncode == 78, done.stderr
    assert f"refused: playbook directory: {settings} is not root's alone" in done.stderr
    assert "standin ran" not in done.stdout


@pytest.fixture
def second_install(system: System) -> Iterator[Path]:
    """The wrappers installed again under a fresh root-owned directory (their config in
    its conf/), granted to the same service account by a drop-in of their own."""
    root = Path(tempfile.mkdtemp(prefix="ha-wrappers-"))
    root.chmod(0o755)
    (root / "conf").mkdir(mode=0o755)
    config = root / "conf" / "wrappers.conf"
    config.write_text(f"zfs_bin={shutil.which('true')}\n")
    config.chmod(0o644)
    sudoers = SUDOERS_D / f"host-agent-test-{system.user}-second"
    try:
        run(
            str(REPO / "scripts" / "install-wrappers.sh"),
            str(root / "libexec"),
            str(config),
            system.user,
            str(sudoers),
        )
        yield root
    finally:
        sudoers.unlink(missing_ok=True)
        shutil.rmtree(root)


@pytest.mark.parametrize(
    ("handed_over", "what"),
    [
        pytest.param("conf", "wrapper config directory", id="config-directory"),
        pytest.param(".", "wrapper", id="wrapper-directory-parent"),
    ],
)
def test_wrappers_refuse_to_run_from_or_with_a_config_in_a_directory_not_roots_alone(
    system: System, second_install: Path, handed_over: str, what: str
) -> None:
    wrapper = str(second_install / "libexec" / "host-agent-zfs")
    assert run("sudo", "-n", "--", wrapper, "list", user=system.user, check=False).returncode == 0
    entry = pwd.getpwnam(system.user)
    os.chown(second_install / handed_over, entry.pw_uid, entry.pw_gid)
    done = run("sudo", "-n", "--", wrapper, "list", user=system.user, check=False)
    assert done.returncode == 78, done.stderr
    assert f"refused: {what} " in done.stderr and NOT_ROOTS_ALONE in done.stderr


def test_without_bash_s_own_stat_the_wrappers_refuse_rather_than_check_less(
    system: System, second_install: Path
) -> None:
    """The checks use the bash-builtins stat: where it cannot be loaded, nothing runs."""
    library = second_install / "libexec" / "host-agent-lib.sh"
    text = library.read_text()
    assert "readonly HA_STAT_BUILTIN=/usr/lib/bash/stat\n" in text
    library.write_text(text.replace("/usr/lib/bash/stat\n", "/usr/lib/bash/no-such-stat\n", 1))
    wrapper = str(second_install / "libexec" / "host-agent-zfs")
    done = run("sudo", "-n", "--", wrapper, "list", user=system.user, check=False)
    assert done.returncode == 78, done.stderr
    assert "install Debian's bash-builtins" in done.stderr
    assert done.stdout == ""


# --- item 5: the timeout is enforced as root, and the record says what happened -------

STUBBORN = """#!/bin/bash
# Ignores SIGTERM, then would finish as root long after the timeout.
trap '' TERM
echo $$ > "$0.state/pid"
sleep {seconds}
touch "$0.state/finished"
"""


def running(pid: str) -> bool:
    """Whether the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def stubborn_config(
    system: System, pki: Pki, tmp_path: Path, *, wrapper_timeout: int, sleep: int = 5
) -> Config:
    """An agent config whose zfs is a fresh stubborn stand-in (finishing after `sleep` s)
    and whose runner times out after 1 s; the wrappers' file says `wrapper_timeout`
    (rendered as an operator would, then edited when it is meant to differ)."""
    text = STUBBORN.replace("{seconds}", str(sleep))
    tool = standin(system, tmp_path, f"stubborn-{secrets.token_hex(3)}", text)
    text = config_text(
        pki,
        tmp_path,
        service_user=system.user,
        wrapper_dir=system.wrappers.directory,
        extra=f'[binaries]\nzfs = "{tool}"\n',
    ).replace("timeout_seconds = 30", "timeout_seconds = 1")
    config = write_config(tmp_path / "agent.toml", text)
    system.wrappers.configure(config)
    rendered = system.wrappers.config.read_text()
    system.wrappers.config.write_text(
        rendered.replace("timeout_seconds=1\n", f"timeout_seconds={wrapper_timeout}\n")
    )
    return config


def run_as_service_account(system: System, config: Config) -> dict[str, Any]:
    """zfs-list through the real runner in a process that really is the service account
    (the agent in production): what it returned or raised, and when it started."""

    def action() -> int:
        operation = Operation(
            kind="zfs",
            command="list",
            resource="",
            args=("list",),
            wrapper="host-agent-zfs",
            wrapper_argv=("list",),
            mutating=False,
        )
        try:
            result = asyncio.run(Runner(config.runner).run(operation))
        except RunnerError as exc:
            print(json.dumps({"error": str(exc), **exc.audit_fields()}))
        else:
            print(json.dumps({"exit_code": result.exit_code}))
        return 0

    return dict(json.loads(as_user(system.user, action).stdout))


def test_a_tool_that_ignores_sigterm_is_killed_as_root_at_the_timeout(
    system: System, pki: Pki, tmp_path: Path
) -> None:
    config = stubborn_config(system, pki, tmp_path, wrapper_timeout=1)
    state = Path(f"{config.binaries.zfs}.state")
    started = time.monotonic()
    outcome = run_as_service_account(system, config)
    assert outcome == {
        "error": "operation timed out after 1s and was killed as root (SIGKILL)",
        "timed_out": True,
        "killed_as_root": True,
        "exit_code": -9,
    }
    pid = (state / "pid").read_text().strip()
    wait_for(lambda: not running(pid))
    # Past the moment the tool would have finished, had it survived the kill.
    time.sleep(max(0.0, started + 7 - time.monotonic()))
    assert not (state / "finished").exists()


def test_when_only_the_agents_backstop_fires_it_does_not_claim_a_kill(
    system: System, pki: Pki, tmp_path: Path
) -> None:
    """A wrappers' file with a longer limit than the agent's (not re-rendered): the
    agent gives up at its backstop and says only that it could not confirm the end.
    Its SIGTERM, relayed by sudo, still reaches the wrapper's timeout, which ends the
    tool as root after the grace."""
    config = stubborn_config(system, pki, tmp_path, wrapper_timeout=30, sleep=12)
    state = Path(f"{config.binaries.zfs}.state")
    started = time.monotonic()
    outcome = run_as_service_account(system, config)
    assert outcome == {
        "error": "operation timed out after 8s; the agent could not confirm the process ended",
        "timed_out": True,
        "killed_as_root": False,
    }
    pid = (state / "pid").read_text().strip()
    wait_for(lambda: not running(pid))
    time.sleep(max(0.0, started + 14 - time.monotonic()))
    assert not (state / "finished").exists()


def test_the_audit_says_the_wrapper_killed_it_as_root(
    system: System, pki: Pki, tmp_path: Path
) -> None:
    config = stubborn_config(system, pki, tmp_path, wrapper_timeout=1)
    with running_agent(config) as agent, client(agent, pki, "librarian-1") as http:
        reply = http.post("/host/op", json={"kind": "zfs", "resource": "tank", "args": ["list"]})
    assert reply.status_code == 504, reply.text
    error = reply.json()["error"]
    assert error["code"] == "operation_timeout"
    assert error["message"] == "operation timed out after 1s and was killed as root (SIGKILL)"
    (result,) = [r for r in audit_records(config.audit.log_path) if r["event"] == "result"]
    assert {
        key: result[key] for key in ("outcome", "timed_out", "killed_as_root", "exit_code")
    } == {
        "outcome": "operation_timeout",
        "timed_out": True,
        "killed_as_root": True,
        "exit_code": -9,
    }
    assert verify([config.audit.log_path]).ok


def test_a_tool_that_exits_124_by_itself_is_not_reported_as_timed_out(
    system: System, pki: Pki, tmp_path: Path
) -> None:
    """Only timeout's own report makes a timeout: a tool's status 124 is its own."""
    tool = standin(system, tmp_path, f"exits-124-{secrets.token_hex(3)}", "#!/bin/sh\nexit 124\n")
    text = config_text(
        pki,
        tmp_path,
        service_user=system.user,
        wrapper_dir=system.wrappers.directory,
        extra=f'[binaries]\nzfs = "{tool}"\n',
    )
    config = write_config(tmp_path / "agent.toml", text)
    system.wrappers.configure(config)
    assert run_as_service_account(system, config) == {"exit_code": 124}


# --- item 6: no environment from sudo reaches a root tool ----------------------------

KEPT = {
    "DISPLAY": ":7",
    "XAUTHORITY": "/tmp/ha-xauthority",
    "KRB5CCNAME": "FILE:/tmp/ha-krb5cc",
    "TERM": "xterm",
    "LANGUAGE": "de",
    "ZFS_COLOR": "1",
}

# Prints its environment as JSON; as git, answers `rev-parse --show-toplevel` with -C's path.
ENV_TOOL = """#!/usr/bin/python3 -I
import json, os, sys
args = sys.argv[1:]
if "rev-parse" in args:
    print(args[args.index("-C") + 1])
else:
    print(json.dumps(dict(os.environ)))
"""


@pytest.fixture
def keeping_sudo(system: System) -> Iterator[None]:
    """sudoers that keeps every variable of KEPT for the service account."""
    drop_in = SUDOERS_D / f"host-agent-test-{system.user}-env"
    drop_in.write_text(f'Defaults:{system.user} env_keep += "{" ".join(KEPT)}"\n')
    drop_in.chmod(0o440)
    try:
        run("visudo", "-cf", str(drop_in))
        yield
    finally:
        drop_in.unlink()


@pytest.mark.parametrize(
    ("wrapper", "argv", "lines", "expected"),
    [
        pytest.param(
            "host-agent-zfs", ("list",), ("zfs_bin={tool}",), {"PATH", "LC_ALL"}, id="zfs"
        ),
        pytest.param(
            "host-agent-systemd",
            ("status", "app.service"),
            ("systemctl_bin={tool}",),
            {"PATH", "LC_ALL"},
            id="systemd",
        ),
        pytest.param(
            "host-agent-pct", ("status", "101"), ("pct_bin={tool}",), {"PATH", "LC_ALL"}, id="pct"
        ),
        pytest.param(
            "host-agent-exec",
            ("run", "command", "{tool}"),
            ("exec_enabled=true", "exec_command={tool}"),
            {"PATH", "LC_ALL", "HOME"},
            id="exec",
        ),
    ],
)
@pytest.mark.usefixtures("keeping_sudo")
def test_root_tools_get_only_their_fixed_environment(
    system: System,
    tmp_path: Path,
    wrapper: str,
    argv: tuple[str, ...],
    lines: tuple[str, ...],
    expected: set[str],
) -> None:
    tool = standin(system, tmp_path, "env-tool", ENV_TOOL)
    configure(system, *(line.format(tool=tool) for line in lines))
    done = call(system, wrapper, *(arg.format(tool=tool) for arg in argv), env=KEPT)
    assert done.returncode == 0, done.stderr
    environment = json.loads(done.stdout)
    assert set(environment) == expected
    assert environment["PATH"] == "/usr/sbin:/usr/bin:/sbin:/bin"
    assert environment["LC_ALL"] == "C"


@pytest.mark.usefixtures("keeping_sudo")
def test_git_runs_with_its_own_environment_only(system: System) -> None:
    # Outside the test's own 0700 tree: git runs as the git user, who must reach it.
    tools = Path(tempfile.mkdtemp(prefix="ha-git-"))
    try:
        tools.chmod(0o755)
        tool = tools / "git"
        tool.write_text(ENV_TOOL)
        tool.chmod(0o755)
        (tools / "repo" / ".git").mkdir(parents=True)
        repo = tools / "repo"
        configure(system, f"git_bin={tool}", f"git_repo={repo}", "git_user=nobody")
        done = call(system, "host-agent-git", "status", "nobody", str(repo), env=KEPT)
    finally:
        shutil.rmtree(tools)
    assert done.returncode == 0, done.stderr
    environment = json.loads(done.stdout)
    assert not set(KEPT) & set(environment)
    assert {name for name in environment if not name.startswith("GIT_")} == {
        "HOME",
        "PATH",
        "LC_ALL",
        "PAGER",
    }


def test_an_exec_pattern_is_never_expanded_as_a_file_name_glob(
    system: System, attacker_dir: Path
) -> None:
    """The exec wrapper splits each exec_command line by the shell itself: a pattern that
    is also a glob (`a?`) must reach the check as written, whatever files lie in the
    directory the caller starts the wrapper in (there `ab`, which the glob would give)."""
    run("touch", str(attacker_dir / "ab"), user=system.user)
    configure(system, "exec_enabled=true", "exec_command=/bin/echo\ta?")
    wrapper = str(system.wrappers.directory / "host-agent-exec")
    argv = ("env", "-C", str(attacker_dir), "sudo", "-n", "--", wrapper, "run", "command")
    done = run(*argv, "/bin/echo", "a", user=system.user, check=False)
    assert (done.returncode, done.stdout) == (0, "a\n"), done.stderr
    done = run(*argv, "/bin/echo", "ab", user=system.user, check=False)
    assert done.returncode == 64 and "does not match 'a?'" in done.stderr, done.stderr
