"""install.sh for real, as root, under --prefix: files, owners, modes, validation,
a second run that changes nothing, a dry run, the installed agent answering over
mutual TLS, log rotation, and --uninstall.

One install per module (the package install is the slow part). The tests read
it and leave it as they found it, except the last one, which uninstalls it.
"""

from __future__ import annotations

import datetime as dt
import grp
import gzip
import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import ssl
import stat
import subprocess
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from host_agent import __version__, certs
from host_agent.config import Config, load_config, parse_config
from tests.support import client_context, listening_port, raw_exchange
from tests.system import REPO, require_root_tools, run

pytestmark = pytest.mark.root

INSTALL_TIMEOUT = 600
# Installed with a listener on a free port, reported by the agent when it starts.
BIND = "127.0.0.1:0"
# Settings that imply NoNewPrivileges=yes for a unit with User= (systemd.exec(5)),
# which would stop sudo; or put the service in its own mount namespace, where
# the wrappers' zfs mounts would stay.
FORBIDDEN_UNIT_KEYS = {
    "NoNewPrivileges",
    "DynamicUser",
    "LockPersonality",
    "MemoryDenyWriteExecute",
    "PrivateDevices",
    "ProtectClock",
    "ProtectHostname",
    "ProtectKernelLogs",
    "ProtectKernelModules",
    "ProtectKernelTunables",
    "RestrictAddressFamilies",
    "RestrictNamespaces",
    "RestrictRealtime",
    "RestrictSUIDSGID",
    "SystemCallArchitectures",
    "SystemCallFilter",
    "SystemCallLog",
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "PrivateMounts",
    "ReadOnlyPaths",
    "ReadWritePaths",
    "InaccessiblePaths",
    "ProtectControlGroups",
    "ProtectProc",
    "ProcSubset",
    "BindPaths",
    "TemporaryFileSystem",
    "PrivateUsers",
    "PrivateNetwork",
    "CapabilityBoundingSet",
}


@dataclass(frozen=True)
class Installed:
    source: Path  # the checkout install.sh runs from
    prefix: Path
    user: str
    approvers: str
    first_run: str

    def path(self, absolute: str) -> Path:
        return self.prefix / absolute.lstrip("/")

    def install(self, *options: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return install_sh(
            self.source, self.prefix, self.user, self.approvers, *options, check=check
        )

    @property
    def ids(self) -> tuple[int, int]:
        entry = pwd.getpwnam(self.user)
        return entry.pw_uid, entry.pw_gid


def install_sh(
    source: Path, prefix: Path, user: str, approvers: str, *options: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    argv = [str(source / "install.sh"), "--prefix", str(prefix), "--user", user]
    argv += ["--approvers-group", approvers, *options]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    if check and done.returncode != 0:
        raise AssertionError(f"install.sh failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return done


def remove_accounts(user: str, *groups: str) -> None:
    run("userdel", user, check=False)
    for group in groups:
        run("groupdel", group, check=False)


@contextmanager
def scratch_checkout(name: str, *tools: str) -> Iterator[Path]:
    """A world-readable scratch directory (the service account must reach into it) with
    a snapshot of the checkout in `source`, so edits made meanwhile change no install."""
    require_root_tools(*tools)
    directory = Path(tempfile.mkdtemp(prefix=f"{name}-", dir="/tmp"))
    directory.chmod(0o755)
    shutil.copytree(
        REPO,
        directory / "source",
        ignore=shutil.ignore_patterns(
            ".git", ".venv", ".demo", "build", "*.egg-info", "__pycache__", ".*_cache", "tests"
        ),
    )
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


@contextmanager
def installation(base: Path, tag: str) -> Iterator[Installed]:
    """install.sh run for real under `base/prefix`, with accounts named after `tag`."""
    prefix = base / "prefix"
    prefix.mkdir(mode=0o755)
    suffix = secrets.token_hex(3)
    user, approvers = f"ha-{tag}-{suffix}", f"ha-{tag}a-{suffix}"
    try:
        done = install_sh(base / "source", prefix, user, approvers, "--bind", BIND)
        yield Installed(base / "source", prefix, user, approvers, done.stdout)
    finally:
        remove_accounts(user, user, approvers)


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    with scratch_checkout(
        "ha-install", "visudo", "logrotate", "useradd", "groupadd", "runuser"
    ) as directory:
        yield directory


@pytest.fixture(scope="module")
def installed(base: Path) -> Iterator[Installed]:
    with installation(base, "inst") as done:
        yield done


def attributes(path: Path) -> tuple[str, str, str]:
    info = path.lstat()
    return (
        oct(stat.S_IMODE(info.st_mode)),
        pwd.getpwuid(info.st_uid).pw_name,
        grp.getgrgid(info.st_gid).gr_name,
    )


def manifest(root: Path) -> list[tuple[str, int, int, int, str]]:
    """Every entry under `root`: path, mode, owner, group, and content hash or link target."""
    entries = []
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            content = os.readlink(path)
        elif stat.S_ISREG(info.st_mode):
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            content = ""
        entries.append(
            (str(path.relative_to(root)), info.st_mode, info.st_uid, info.st_gid, content)
        )
    return entries


def test_first_run_reports_every_step_and_counts_the_changes(installed: Installed) -> None:
    lines = installed.first_run.splitlines()
    steps = lines[: lines.index("")]
    assert all(line.split()[0] in ("created", "updated", "unchanged") for line in steps[:-1])
    created = sum(line.startswith(("created", "updated")) for line in steps)
    assert steps[-1] == f"{created} change(s) made"
    assert f"created user {installed.user} (system account, no login shell, no home)" in steps


def test_service_account_is_a_system_account_without_login_or_home(installed: Installed) -> None:
    entry = pwd.getpwnam(installed.user)
    assert entry.pw_uid < 1000
    assert entry.pw_shell == "/usr/sbin/nologin"
    assert not Path(entry.pw_dir).exists()
    assert grp.getgrgid(entry.pw_gid).gr_name == installed.user
    assert grp.getgrnam(installed.approvers).gr_gid < 1000


@pytest.mark.parametrize(
    ("path", "mode", "owner", "group"),
    [
        ("/etc/host-agent", "0o750", "root", "SERVICE"),
        ("/etc/host-agent/agent.toml", "0o640", "root", "SERVICE"),
        ("/etc/host-agent/wrappers.conf", "0o644", "root", "root"),
        ("/etc/host-agent/certs", "0o750", "root", "SERVICE"),
        ("/etc/host-agent/certs/ca.crt", "0o644", "root", "root"),
        ("/etc/host-agent/certs/ca.key", "0o600", "root", "root"),
        ("/etc/host-agent/certs/server.crt", "0o644", "root", "root"),
        ("/etc/host-agent/certs/server.key", "0o640", "root", "SERVICE"),
        ("/etc/host-agent/certs/crl.pem", "0o644", "root", "root"),
        ("/etc/sudoers.d/host-agent", "0o440", "root", "root"),
        ("/etc/sudoers.d/host-agent-approve", "0o440", "root", "root"),
        ("/etc/pam.d/host-agent", "0o644", "root", "root"),
        ("/etc/logrotate.d/host-agent", "0o644", "root", "root"),
        ("/etc/cron.d/host-agent", "0o644", "root", "root"),
        ("/etc/systemd/system/host-agent.service", "0o644", "root", "root"),
        ("/etc/systemd/system/host-agent-crl.service", "0o644", "root", "root"),
        ("/etc/systemd/system/host-agent-crl.timer", "0o644", "root", "root"),
        ("/usr/local/sbin/host-agent-reload", "0o755", "root", "root"),
        ("/usr/local/libexec/host-agent", "0o755", "root", "root"),
        ("/usr/local/libexec/host-agent/host-agent-lib.sh", "0o644", "root", "root"),
        ("/opt/host-agent/venv", "0o755", "root", "root"),
        ("/opt/host-agent/venv/bin/host-agent", "0o755", "root", "root"),
        ("/var/log/host-agent", "0o750", "SERVICE", "SERVICE"),
        ("/var/lib/host-agent", "0o700", "SERVICE", "SERVICE"),
        ("/run/host-agent", "0o755", "SERVICE", "SERVICE"),
    ],
)
def test_installed_file_has_its_owner_and_mode(
    installed: Installed, path: str, mode: str, owner: str, group: str
) -> None:
    service = installed.user
    expected = (mode, owner.replace("SERVICE", service), group.replace("SERVICE", service))
    assert attributes(installed.path(path)) == expected


def test_every_wrapper_is_installed_root_owned_and_executable(installed: Installed) -> None:
    sources = sorted(
        path
        for path in (REPO / "wrappers").glob("host-agent-*")
        if path.name != "host-agent-lib.sh"
    )
    directory = installed.path("/usr/local/libexec/host-agent")
    assert sorted(path.name for path in directory.iterdir()) == sorted(
        [*(path.name for path in sources), "host-agent-lib.sh"]
    )
    for source in sources:
        assert attributes(directory / source.name) == ("0o755", "root", "root")
        assert (directory / source.name).read_bytes() == source.read_bytes()


def test_nothing_installed_is_writable_by_anyone_but_its_owner(installed: Installed) -> None:
    writable = [
        str(path)
        for path in installed.prefix.rglob("*")
        if not path.is_symlink() and path.lstat().st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    ]
    assert writable == []


def test_command_link_points_into_the_virtualenv(installed: Installed) -> None:
    link = installed.path("/usr/local/bin/host-agent")
    assert os.readlink(link) == str(installed.path("/opt/host-agent/venv/bin/host-agent"))
    assert run(str(link), "--version").stdout == f"host-agent {__version__}\n"


def test_sudoers_drop_in_validates_and_grants_exactly_the_installed_wrappers(
    installed: Installed,
) -> None:
    sudoers = installed.path("/etc/sudoers.d/host-agent")
    assert run("visudo", "-cf", str(sudoers)).returncode == 0
    text = sudoers.read_text()
    rules = " ".join(line for line in text.splitlines() if not line.startswith("#"))
    directory = installed.path("/usr/local/libexec/host-agent")
    grants = {word.rstrip(",") for word in rules.split() if word.startswith(str(installed.prefix))}
    assert grants == {
        str(directory / name)
        for name in (
            "host-agent-zfs",
            "host-agent-systemd",
            "host-agent-pct",
            "host-agent-git",
            "host-agent-exec",
            "host-agent-sudoers",
        )
    }
    assert f"{installed.user} ALL=(root) NOPASSWD:" in text
    assert "@SERVICE_USER@" not in text and "@WRAPPER_DIR@" not in text


def test_approvers_may_run_exactly_the_approval_helper(installed: Installed) -> None:
    """Members of the approvers group, through sudo: the helper checks their password as
    root, so the service account (which has no grant for it) never sees it."""
    sudoers = installed.path("/etc/sudoers.d/host-agent-approve")
    assert run("visudo", "-cf", str(sudoers)).returncode == 0
    rules = [line for line in sudoers.read_text().splitlines() if line and line[0] not in "#D"]
    helper = installed.path("/usr/local/libexec/host-agent/host-agent-approve")
    assert rules == [f"%{installed.approvers} ALL=(root) NOPASSWD: {helper}"]


def test_pam_service_file_is_the_shipped_one(installed: Installed) -> None:
    assert (
        installed.path("/etc/pam.d/host-agent").read_bytes()
        == (REPO / "pam/host-agent").read_bytes()
    )


def test_wrappers_read_the_installed_allowlist_file(installed: Installed) -> None:
    conf = installed.path("/etc/host-agent/wrappers.conf")
    lib = installed.path("/usr/local/libexec/host-agent/host-agent-lib.sh").read_text()
    assert f"readonly HA_WRAPPER_CONFIG={conf}\n" in lib
    lines = conf.read_text().splitlines()
    assert f"python_bin={installed.path('/opt/host-agent/venv/bin/python')}" in lines
    assert f"approvers_group={installed.approvers}" in lines


def test_config_skeleton_passes_check_config_with_the_installed_paths(installed: Installed) -> None:
    path = installed.path("/etc/host-agent/agent.toml")
    checked = run(str(installed.path("/usr/local/bin/host-agent")), "check-config", str(path))
    assert checked.stdout.strip() == f"{path}: OK (1 agent profile(s), 6 rule(s))"
    assert checked.stderr == ""
    config = load_config(path)
    certs = installed.path("/etc/host-agent/certs")
    assert config.server.bind == BIND
    assert (config.server.cert, config.server.key) == (certs / "server.crt", certs / "server.key")
    assert (config.server.client_ca, config.server.crl_file) == (
        certs / "ca.crt",
        certs / "crl.pem",
    )
    assert config.runner.service_user == installed.user
    assert config.runner.wrapper_dir == installed.path("/usr/local/libexec/host-agent")
    assert config.audit.log_path == installed.path("/var/log/host-agent/audit.jsonl")
    assert config.audit.retention_days == 90
    assert config.approval.store_path == installed.path("/var/lib/host-agent/approvals.sqlite3")
    assert config.approval.local_socket == installed.path("/run/host-agent/approve.sock")
    assert config.approval.approvers_group == installed.approvers
    assert config.binaries.python == installed.path("/opt/host-agent/venv/bin/python")
    [profile] = config.agents
    assert profile.autonomy.value == "read_only"


def test_logrotate_config_validates_and_rotates_by_renaming(installed: Installed) -> None:
    config = installed.path("/etc/logrotate.d/host-agent")
    with tempfile.TemporaryDirectory() as scratch:
        checked = run("logrotate", "-d", "-s", f"{scratch}/state", str(config), check=False)
    assert checked.returncode == 0, checked.stderr
    assert "error" not in checked.stderr.lower()
    audit, serve_log = stanzas(config)
    assert audit[0] == [str(installed.path("/var/log/host-agent/audit.jsonl")), "{"]
    group = installed.user
    for expected in (
        ["daily"],
        ["maxsize", "100M"],
        ["rotate", "90"],
        ["compress"],
        ["delaycompress"],
        ["nodateext"],
        ["missingok"],
        ["notifempty"],
        ["sharedscripts"],
        ["nocreate"],
        ["su", installed.user, group],
    ):
        assert expected in audit
    assert ["copytruncate"] not in audit
    reload = str(installed.path("/usr/local/sbin/host-agent-reload"))
    assert audit[audit.index(["postrotate"]) + 1 : audit.index(["endscript"])] == [[reload]]
    # The agent's own output without systemd: root's file, which the agent cannot reopen.
    assert serve_log[0] == [str(installed.path("/var/log/host-agent-serve.log")), "{"]
    for expected in (["daily"], ["maxsize", "100M"], ["rotate", "14"], ["copytruncate"]):
        assert expected in serve_log
    assert not any(directive[0] in ("su", "postrotate", "create") for directive in serve_log)


def stanzas(config: Path) -> list[list[list[str]]]:
    """Each `PATH { ... }` block of a logrotate file, as its directives' words."""
    blocks: list[list[list[str]]] = []
    for line in config.read_text().splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[-1] == "{":
            blocks.append([])
        blocks[-1].append(words)
    return blocks


def test_logrotate_looks_at_the_size_every_hour(installed: Installed) -> None:
    jobs = cron_jobs(installed)
    config = installed.path("/etc/logrotate.d/host-agent")
    assert ["43", "*", "*", "*", "*", "root", f"logrotate {config}"] in jobs


def cron_jobs(installed: Installed) -> list[list[str]]:
    lines = installed.path("/etc/cron.d/host-agent").read_text().splitlines()
    jobs = [line for line in lines if line and not line.startswith("#")]
    return [job.split(maxsplit=6) for job in jobs if "=" not in job.split()[0]]


@pytest.mark.parametrize(
    "name", ["host-agent.service", "host-agent-crl.service", "host-agent-crl.timer"]
)
def test_unit_file_passes_systemd_analyze_verify(installed: Installed, name: str) -> None:
    require_root_tools("systemd-analyze")
    unit = installed.path(f"/etc/systemd/system/{name}")
    done = run("systemd-analyze", "verify", str(unit), check=False)
    assert done.returncode == 0, done.stderr
    assert unit.name not in done.stdout + done.stderr


def test_unit_runs_the_installed_agent_as_the_service_account_with_sudo_intact(
    installed: Installed,
) -> None:
    settings = [
        line.split("=", 1)
        for line in installed.path("/etc/systemd/system/host-agent.service")
        .read_text()
        .splitlines()
        if "=" in line and not line.startswith("#")
    ]
    values = dict(settings)
    venv, config = (
        installed.path("/opt/host-agent/venv"),
        installed.path("/etc/host-agent/agent.toml"),
    )
    assert values["Type"] == "notify"
    assert values["ExecStart"] == f"{venv}/bin/host-agent serve --config {config}"
    assert values["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert (values["User"], values["Group"]) == (installed.user, installed.user)
    assert (values["RuntimeDirectory"], values["RuntimeDirectoryMode"]) == ("host-agent", "0755")
    assert (values["StateDirectory"], values["StateDirectoryMode"]) == ("host-agent", "0700")
    assert (values["LogsDirectory"], values["LogsDirectoryMode"]) == ("host-agent", "0750")
    assert values["UMask"] == "0027"
    assert FORBIDDEN_UNIT_KEYS.isdisjoint(key for key, _ in settings)


def test_second_run_changes_nothing_and_says_so(installed: Installed) -> None:
    before = manifest(installed.prefix)
    done = installed.install("--bind", BIND)
    assert manifest(installed.prefix) == before
    lines = done.stdout.splitlines()
    assert lines[-1] == "nothing to change"
    assert [line for line in lines[:-1] if not line.startswith("unchanged ")] == []
    assert done.stderr == ""


def test_dry_run_on_the_installed_prefix_finds_nothing_to_change(installed: Installed) -> None:
    before = manifest(installed.prefix)
    done = installed.install("--dry-run")
    assert done.stdout.splitlines()[-1] == "nothing to change"
    assert manifest(installed.prefix) == before


def test_a_changed_mode_is_put_right_and_reported(installed: Installed) -> None:
    conf = installed.path("/etc/host-agent/wrappers.conf")
    conf.chmod(0o666)
    done = installed.install()
    assert f"updated {conf} (mode 0644, root:root)" in done.stdout.splitlines()
    assert attributes(conf) == ("0o644", "root", "root")
    assert installed.install().stdout.splitlines()[-1] == "nothing to change"


def test_an_upgrade_removes_the_old_pam_wrapper(installed: Installed) -> None:
    """Older installs let the service account check passwords with host-agent-pam: gone."""
    old = installed.path("/usr/local/libexec/host-agent/host-agent-pam")
    old.write_text("#!/bin/bash\n")
    old.chmod(0o755)
    done = installed.install()
    assert f"removed {old}" in done.stdout.splitlines()
    assert not old.exists()
    assert installed.install().stdout.splitlines()[-1] == "nothing to change"


def test_a_ca_brought_without_a_crl_gets_an_empty_one(installed: Installed) -> None:
    """As after an upgrade from the predecessor, whose CA never made a CRL."""
    crl = installed.path("/etc/host-agent/certs/crl.pem")
    crl.unlink()
    planned = installed.install("--dry-run").stdout.splitlines()
    assert f"would create {crl} (empty, signed by the existing CA)" in planned
    assert not crl.exists()
    done = installed.install().stdout.splitlines()
    assert f"created {crl} (empty, signed by the existing CA)" in done
    assert attributes(crl) == ("0o644", "root", "root")
    assert len(certs.load_crl(crl.parent)) == 0
    assert installed.install().stdout.splitlines()[-1] == "nothing to change"


def test_dry_run_on_a_fresh_prefix_changes_nothing(installed: Installed, base: Path) -> None:
    prefix = Path(tempfile.mkdtemp(dir=base))
    suffix = secrets.token_hex(3)
    user, approvers = f"ha-dry-{suffix}", f"ha-dryap-{suffix}"
    try:
        done = install_sh(installed.source, prefix, user, approvers, "--dry-run")
        assert list(prefix.iterdir()) == []
        assert run("id", user, check=False).returncode != 0
        assert run("getent", "group", approvers, check=False).returncode != 0
    finally:
        remove_accounts(user, user, approvers)
    lines = done.stdout.splitlines()
    assert f"would create user {user} (system account, no login shell, no home)" in lines
    assert f"would create {prefix}/etc/sudoers.d/host-agent (mode 0440, root:root)" in lines
    assert lines[-1].startswith("dry run: ") and lines[-1].endswith("none was")


def test_refuses_to_run_as_another_user_than_root(installed: Installed) -> None:
    before = manifest(installed.prefix)
    argv = [str(installed.source / "install.sh"), "--prefix", str(installed.prefix)]
    done = run("runuser", "-u", "nobody", "--", *argv, check=False)
    assert done.returncode == 77
    assert "run as root" in done.stderr
    assert manifest(installed.prefix) == before


@contextmanager
def installed_agent(installed: Installed, *options: str) -> Iterator[int]:
    """The installed agent, started as the service account as the unit would; its port."""
    uid, gid = installed.ids
    process = subprocess.Popen(
        [
            str(installed.path("/opt/host-agent/venv/bin/host-agent")),
            "serve",
            "--config",
            str(installed.path("/etc/host-agent/agent.toml")),
            *options,
        ],
        user=uid,
        group=gid,
        extra_groups=[],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    # Keep reading its log once it listens, so that a busy agent never blocks on a full pipe.
    drain = threading.Thread(target=process.stderr.read, daemon=True)
    try:
        port = listening_port(process)
        drain.start()
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)
        if drain.is_alive():
            drain.join(timeout=30)
        process.stderr.close()


@pytest.fixture
def agent_port(installed: Installed) -> Iterator[int]:
    with installed_agent(installed) as port:
        yield port


def client_certificate(installed: Installed, cn: str) -> ssl.SSLContext:
    """A client certificate from the installed CA, as an operator would issue it."""
    certs_dir = installed.path("/etc/host-agent/certs")
    run(str(installed.path("/usr/local/bin/host-agent")), "certs", "client", str(certs_dir), cn)
    return client_context(certs_dir / "ca.crt", certs_dir / f"{cn}.crt", certs_dir / f"{cn}.key")


def test_installed_agent_answers_a_client_of_the_installed_ca(
    installed: Installed, agent_port: int
) -> None:
    certs = installed.path("/etc/host-agent/certs")
    context = client_certificate(installed, f"monitor-{secrets.token_hex(3)}")
    with httpx.Client(base_url=f"https://127.0.0.1:{agent_port}", verify=context) as client:
        reply = client.get("/health")
    assert reply.status_code == 200
    health = reply.json()
    assert (health["version"], health["crl"]["state"], health["status"]) == (
        __version__,
        "ok",
        "ok",
    )
    # As the service account it cannot read /etc/sudoers, and with --prefix its sudoers
    # drop-in is not where sudo looks, so the root wrapper is refused: unchecked, not clean.
    assert health["sudoers_risky_entries"] is None
    # Why (it names /etc/sudoers) is for an admin CN, and the skeleton names none.
    assert "sudoers_unchecked" not in health
    try:
        anonymous = raw_exchange(agent_port, client_context(certs / "ca.crt"))
    except (ssl.SSLError, OSError):
        anonymous = b""
    assert anonymous == b""
    log = installed.path("/var/log/host-agent/audit.jsonl")
    assert attributes(log) == ("0o640", installed.user, installed.user)
    assert stat.S_ISSOCK(installed.path("/run/host-agent/approve.sock").lstat().st_mode)


# Stands in for the agent behind the pid file: reports the SIGHUP it receives.
HUP_RECORDER = """
import signal
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
print("ready", flush=True)
signal.sigwait({signal.SIGHUP})
print("HUP", flush=True)
"""


def hup_recorder(user: int | None = None) -> subprocess.Popen[str]:
    # The system Python: the service account cannot reach the test's interpreter.
    process = subprocess.Popen(
        ["/usr/bin/python3", "-c", HUP_RECORDER], user=user, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    return process


def test_logrotate_renames_creates_compresses_and_signals_only_the_service(
    installed: Installed, base: Path
) -> None:
    uid, gid = installed.ids
    log = installed.path("/var/log/host-agent/audit.jsonl")
    pid_file = installed.path("/run/host-agent/host-agent.pid")
    argv = ["logrotate", "-f", "-s", str(base / "logrotate.state")]
    argv.append(str(installed.path("/etc/logrotate.d/host-agent")))

    def write(text: str) -> None:
        log.write_text(text)
        os.chown(log, uid, gid)
        log.chmod(0o640)

    def rotate(recorder: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
        pid_file.write_text(f"{recorder.pid}\n")
        try:
            return run(*argv, check=False)
        finally:
            pid_file.unlink()

    try:
        write('{"seq": 1}\n')
        recorder = hup_recorder(uid)
        assert rotate(recorder).returncode == 0
        assert recorder.communicate(timeout=10)[0] == "HUP\n"
        assert installed.path("/var/log/host-agent/audit.jsonl.1").read_text() == '{"seq": 1}\n'
        # nocreate: the agent makes its new log itself when it reopens (no race with logrotate).
        assert not log.exists()

        write('{"seq": 2}\n')
        recorder = hup_recorder(uid)
        assert rotate(recorder).returncode == 0
        assert recorder.communicate(timeout=10)[0] == "HUP\n"
        assert installed.path("/var/log/host-agent/audit.jsonl.1").read_text() == '{"seq": 2}\n'
        rotated = installed.path("/var/log/host-agent/audit.jsonl.2.gz")
        assert gzip.decompress(rotated.read_bytes()) == b'{"seq": 1}\n'

        # A stale pid file naming someone else's process: that process gets nothing.
        write('{"seq": 3}\n')
        stranger = hup_recorder()
        try:
            failed = rotate(stranger)
            with pytest.raises(subprocess.TimeoutExpired):
                stranger.wait(1)
        finally:
            stranger.kill()
            stranger.communicate()
        assert failed.returncode != 0
        assert "is not a process of" in failed.stderr
    finally:
        for rotated_log in installed.path("/var/log/host-agent").glob("audit.jsonl.*"):
            rotated_log.unlink()


CLIENTS = 4
ROTATIONS = 5
# Refused (the installed config allows no git repository): audited, no process started.
REFUSED = {"kind": "git", "resource": "/srv/app", "args": ["status"]}


def audit_files(log_dir: Path) -> list[Path]:
    """The audit log and its rotations, oldest first, as `audit verify` wants them."""
    rotated = sorted(log_dir.glob("audit.jsonl.*"), key=lambda path: int(path.name.split(".")[2]))
    return [*reversed(rotated), log_dir / "audit.jsonl"]


def audit_lines(path: Path) -> list[dict[str, object]]:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return [json.loads(line) for line in data.decode().splitlines()]


def test_rotation_under_load_loses_no_audit_line(installed: Installed, base: Path) -> None:
    """Forced logrotate runs while clients keep sending: every request's record is in one
    of the files, seq runs on without a gap across them, and the chain verifies."""
    log_dir = installed.path("/var/log/host-agent")
    for old in log_dir.glob("audit.jsonl*"):
        old.unlink()
    pid_file = installed.path("/run/host-agent/host-agent.pid")
    logrotate = ["logrotate", "-f", "-s", str(base / "rotation.state")]
    logrotate.append(str(installed.path("/etc/logrotate.d/host-agent")))
    contexts = [
        client_certificate(installed, f"monitor-{secrets.token_hex(3)}") for _ in range(CLIENTS)
    ]
    request_ids: list[str] = []
    failures: list[str] = []
    sending = threading.Event()
    sending.set()

    with installed_agent(installed, "--pid-file", str(pid_file)) as port:

        def send(context: ssl.SSLContext) -> None:
            url = f"https://127.0.0.1:{port}"
            try:
                with httpx.Client(base_url=url, verify=context, timeout=30) as http:
                    while sending.is_set():
                        reply = http.post("/host/op", json=REFUSED)
                        if reply.status_code not in (400, 429):
                            failures.append(f"{reply.status_code} {reply.text}")
                        request_ids.append(reply.json()["request_id"])
            except Exception as exc:  # a dead client is a failure, reported below
                failures.append(repr(exc))

        clients = [threading.Thread(target=send, args=(context,)) for context in contexts]
        for client in clients:
            client.start()

        def after_more_requests() -> None:
            """Let 20 more requests through; each client in its tight loop keeps one in flight."""
            before = len(request_ids)
            while len(request_ids) < before + 20 and all(c.is_alive() for c in clients):
                time.sleep(0.01)

        try:
            for _ in range(ROTATIONS):
                after_more_requests()
                done = run(*logrotate, check=False)
                assert done.returncode == 0, done.stderr
            after_more_requests()
        finally:
            sending.clear()
            for client in clients:
                client.join(timeout=60)
    assert failures == []

    files = audit_files(log_dir)
    assert len(files) == ROTATIONS + 1
    verified = run(
        str(installed.path("/usr/local/bin/host-agent")),
        "audit",
        "verify",
        *map(str, files),
        check=False,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    records = [record for path in files for record in audit_lines(path)]
    seqs = [record["seq"] for record in records]
    assert seqs == list(range(1, len(records) + 1))
    audited = [
        record["request_id"] for record in records if record["event"] in ("decision", "rejected")
    ]
    assert sorted(audited) == sorted(request_ids)
    assert all(audit_lines(path) for path in files)


def test_the_crl_is_re_signed_daily_and_the_agent_told_to_reload(installed: Installed) -> None:
    """The cron line (hosts without systemd) runs for real; the timer's service does the same."""
    certs_dir = installed.path("/etc/host-agent/certs")
    host_agent = installed.path("/opt/host-agent/venv/bin/host-agent")
    reload = installed.path("/usr/local/sbin/host-agent-reload")
    [fields] = [job for job in cron_jobs(installed) if "certs crl" in job[6]]
    assert fields[:6] == ["17", "4", "*", "*", "*", "root"]
    assert fields[6] == (
        f"[ -d /run/systemd/system ] || {{ {host_agent} certs crl {certs_dir} >/dev/null "
        f"&& {reload}; }}"
    )
    service = dict(
        line.split("=", 1)
        for line in installed.path("/etc/systemd/system/host-agent-crl.service")
        .read_text()
        .splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert service["ExecStart"] == f"{host_agent} certs crl {certs_dir}"
    assert service["ExecStartPost"] == str(reload)
    timer = installed.path("/etc/systemd/system/host-agent-crl.timer").read_text().splitlines()
    assert {"OnCalendar=daily", "Persistent=true", "WantedBy=timers.target"} <= set(timer)

    run(str(host_agent), "certs", "crl", str(certs_dir), "--days", "10")
    uid, _ = installed.ids
    pid_file = installed.path("/run/host-agent/host-agent.pid")
    recorder = hup_recorder(uid)
    pid_file.write_text(f"{recorder.pid}\n")
    try:
        done = run("sh", "-c", fields[6])
        assert recorder.communicate(timeout=10)[0] == "HUP\n"
    finally:
        pid_file.unlink()
        recorder.kill()
    assert done.stdout == ""
    crl = certs.load_crl(certs_dir)
    assert crl.next_update_utc is not None
    remaining = crl.next_update_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=29) < remaining <= dt.timedelta(days=30)
    assert attributes(certs_dir / "crl.pem") == ("0o644", "root", "root")


def test_a_rotation_for_size_keeps_the_audit_chain(installed: Installed, base: Path) -> None:
    """Past its maxsize the audit log rotates before its day is over, the agent carries
    on in a new file and the chain verifies across both. The shipped value is 100M
    (above); a copy with 2k makes the size reachable here."""
    log_dir = installed.path("/var/log/host-agent")
    for old in log_dir.glob("audit.jsonl*"):
        old.unlink()
    shipped = installed.path("/etc/logrotate.d/host-agent").read_text()
    small = base / "logrotate-small"
    small.write_text(shipped.replace("maxsize 100M", "maxsize 2k", 1))
    state = base / "size.state"
    log = log_dir / "audit.jsonl"
    today = time.strftime("%Y-%-m-%-d-0:0:0")
    # Rotated today already: only the size can make it rotate again.
    state.write_text(f'logrotate state -- version 2\n"{log}" {today}\n')
    pid_file = installed.path("/run/host-agent/host-agent.pid")
    context = client_certificate(installed, f"monitor-{secrets.token_hex(3)}")
    with (
        installed_agent(installed, "--pid-file", str(pid_file)) as port,
        httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=context) as http,
    ):
        while not log.exists() or log.stat().st_size < 4096:
            http.post("/host/op", json=REFUSED)
        rotated = run("logrotate", "-s", str(state), str(small), check=False)
        assert rotated.returncode == 0, rotated.stderr
        assert (log_dir / "audit.jsonl.1").exists()
        for _ in range(5):
            assert http.post("/host/op", json=REFUSED).status_code == 400
    files = audit_files(log_dir)
    assert len(files) == 2 and audit_lines(files[1])
    verified = run(
        str(installed.path("/usr/local/bin/host-agent")), "audit", "verify", *map(str, files),
        check=False,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_the_service_log_is_copied_and_truncated_under_its_writer(
    installed: Installed, base: Path
) -> None:
    """The agent's output file is held open (for appending) by the process root started:
    after copytruncate the writer goes on at the start of the same file, nothing lost
    before the rotation, no hole after it."""
    serve_log = installed.path("/var/log/host-agent-serve.log")
    with serve_log.open("a") as writer:
        writer.write("before\n")
        writer.flush()
        state = base / "serve.state"
        done = run(
            "logrotate", "-f", "-s", str(state), str(installed.path("/etc/logrotate.d/host-agent")),
            check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        writer.write("after\n")
        writer.flush()
    assert installed.path("/var/log/host-agent-serve.log.1").read_text() == "before\n"
    assert serve_log.read_bytes() == b"after\n"


def test_install_wrappers_script_keeps_its_interface(installed: Installed, base: Path) -> None:
    """`install-wrappers.sh DIR CONFIG USER SUDOERS`, as demo.sh and tests/system.py run it."""
    root = Path(tempfile.mkdtemp(dir=base))
    root.chmod(0o755)
    argv = [str(installed.source / "scripts/install-wrappers.sh"), str(root / "libexec")]
    argv += [str(root / "wrappers.conf"), installed.user, str(root / "sudoers")]
    first = run(*argv)
    assert f"created {root}/sudoers (mode 0440, root:root)" in first.stdout.splitlines()
    assert run("visudo", "-cf", str(root / "sudoers")).returncode == 0
    lib = (root / "libexec/host-agent-lib.sh").read_text()
    assert f"readonly HA_WRAPPER_CONFIG={root}/wrappers.conf\n" in lib
    assert all(line.startswith("unchanged ") for line in run(*argv).stdout.splitlines())


def test_uninstall_removes_what_it_installed_and_keeps_logs_approvals_and_config(
    installed: Installed,
) -> None:
    """Runs last: it takes the module's install away."""
    marker = installed.path("/var/lib/host-agent/approvals.sqlite3")
    marker.touch()
    kept = [
        "/etc/host-agent/agent.toml",
        "/etc/host-agent/wrappers.conf",
        "/etc/host-agent/certs/ca.key",
        "/etc/host-agent/certs/server.key",
        "/var/log/host-agent",
        "/var/lib/host-agent/approvals.sqlite3",
    ]
    removed = [
        "/opt/host-agent",
        "/usr/local/libexec/host-agent",
        "/usr/local/bin/host-agent",
        "/etc/sudoers.d/host-agent",
        "/etc/sudoers.d/host-agent-approve",
        "/etc/pam.d/host-agent",
        "/etc/logrotate.d/host-agent",
        "/etc/cron.d/host-agent",
        "/etc/systemd/system/host-agent.service",
        "/etc/systemd/system/host-agent-crl.service",
        "/etc/systemd/system/host-agent-crl.timer",
        "/usr/local/sbin/host-agent-reload",
        "/run/host-agent",
    ]
    before = manifest(installed.prefix)
    planned = installed.install("--uninstall", "--dry-run").stdout.splitlines()
    assert manifest(installed.prefix) == before
    assert f"would remove {installed.path('/etc/sudoers.d/host-agent')}" in planned

    done = installed.install("--uninstall")
    assert [path for path in removed if os.path.lexists(installed.path(path))] == []
    assert [path for path in kept if not installed.path(path).exists()] == []
    lines = done.stdout.splitlines()
    assert f"kept {installed.path('/var/log/host-agent')} (audit logs)" in lines
    assert f"kept {installed.path('/var/lib/host-agent')} (approvals)" in lines
    assert lines[-1].startswith("To remove the rest too: rm -rf ")
    assert pwd.getpwnam(installed.user).pw_name == installed.user

    again = installed.install("--uninstall").stdout.splitlines()
    assert "nothing to change" in again
    assert [line for line in again if line.startswith(("removed", "updated", "created"))] == []


def test_the_readmes_config_example_names_the_installed_paths(installed: Installed) -> None:
    """An operator copies the README's example: every path in it is one install.sh
    really writes (as the skeleton names it)."""
    block = re.search(r"```toml\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert block is not None
    example = parse_config(tomllib.loads(block.group(1)), Path("/etc/host-agent/agent.toml"))
    skeleton = load_config(installed.path("/etc/host-agent/agent.toml"))

    def paths(config: Config) -> list[Path | None]:
        return [
            config.server.cert,
            config.server.key,
            config.server.client_ca,
            config.server.crl_file,
            config.runner.wrapper_dir,
            config.audit.log_path,
            config.approval.store_path,
            config.approval.local_socket,
        ]

    assert [installed.path(str(p)) for p in paths(example)] == paths(skeleton)
