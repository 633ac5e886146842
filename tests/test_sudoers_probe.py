"""The sudoers probe against real sudoers text.

Every sample is written to a temp tree and checked with `visudo -cf` first, so
it is syntax sudo itself accepts (or, where a test says so, rejects the way the
test expects). Accounts and groups are real, made with useradd/groupadd.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from host_agent.sudoers_probe import (
    DEFAULT_SUDOERS,
    MAX_INCLUDE_DEPTH,
    Finding,
    Severity,
    findings_from_json,
    main,
    scan,
)
from tests.system import REPO, require_root_tools, run

WRAPPERS = Path("/usr/local/libexec/host-agent")
UPSTREAM_EXAMPLE = Path("/usr/share/doc/sudo/examples/sudoers")

# Debian 12's /etc/sudoers, its comments shortened; {includedir} is the drop-in directory.
DEBIAN_DEFAULT = """\
# This file MUST be edited with the 'visudo' command as root.
Defaults	env_reset
Defaults	mail_badpass
Defaults	secure_path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
Defaults	use_pty
#Defaults:%sudo env_keep += "http_proxy https_proxy ftp_proxy all_proxy no_proxy"

# User privilege specification
root	ALL=(ALL:ALL) ALL

# Allow members of group sudo to execute any command
%sudo	ALL=(ALL:ALL) ALL

# See sudoers(5) for more information on "@include" directives:

@includedir {includedir}
"""
DEBIAN_ROOT_LINE = 9
DEBIAN_SUDO_LINE = 12


@dataclass(frozen=True)
class Account:
    """A real account with a primary group of its own and one supplementary group."""

    user: str
    uid: int
    primary: str
    gid: int
    group: str
    group_gid: int


def make_account(stack: ExitStack, *extra_groups: str) -> Account:
    tag = secrets.token_hex(3)
    user, primary, group = f"ha-sp-{tag}", f"ha-spp-{tag}", f"ha-spg-{tag}"
    for name in (primary, group):
        run("groupadd", name)
        stack.callback(run, "groupdel", name, check=False)
    groups = ",".join((group, *extra_groups))
    system_account = ("--system", "--no-create-home", "--shell", "/usr/sbin/nologin")
    run("useradd", *system_account, "-g", primary, "-G", groups, user)
    stack.callback(run, "userdel", user, check=False)
    uid = int(run("id", "-u", user).stdout)
    return Account(user, uid, primary, _gid(primary), group, _gid(group))


def _gid(group: str) -> int:
    return int(run("getent", "group", group).stdout.split(":")[2])


@pytest.fixture(scope="module")
def account() -> Iterator[Account]:
    require_root_tools("visudo", "useradd", "groupadd")
    with ExitStack() as stack:
        yield make_account(stack)


@pytest.fixture(scope="module")
def sudo_member() -> Iterator[Account]:
    """An account in Debian's `sudo` group, which the default sudoers grants ALL."""
    require_root_tools("visudo", "useradd", "groupadd")
    if run("getent", "group", "sudo", check=False).returncode != 0:
        pytest.skip("no 'sudo' group: not a Debian-style system")
    with ExitStack() as stack:
        yield make_account(stack, "sudo")


def write_tree(directory: Path, files: dict[str, str | bytes]) -> Path:
    """Write files (0440, as sudo installs them); the first one named is the root."""
    for name, content in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        path.chmod(0o440)
    return directory / next(iter(files))


def visudo(path: Path) -> subprocess.CompletedProcess[str]:
    return run("visudo", "-cf", str(path), check=False)


def sudoers(directory: Path, files: dict[str, str | bytes]) -> Path:
    """A tree that `visudo -cf` accepts, with every include it follows."""
    root = write_tree(directory, files)
    checked = visudo(root)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return root


def rejected(directory: Path, files: dict[str, str | bytes], message: str) -> Path:
    """A tree that `visudo -cf` refuses with `message`."""
    root = write_tree(directory, files)
    checked = visudo(root)
    assert checked.returncode != 0 and message in checked.stderr, checked.stderr
    return root


def summary(root: Path, user: str) -> list[tuple[str, int, str, str]]:
    """(file relative to the tree, line, code, command) of each finding, in order."""
    return [
        (os.path.relpath(f.file, root.parent), f.line, f.code, f.command)
        for f in scan(root, user, WRAPPERS)
    ]


def rendered_grant(user: str) -> str:
    """sudoers/host-agent filled in as scripts/install-wrappers.sh does."""
    template = (REPO / "sudoers" / "host-agent").read_text()
    return template.replace("@SERVICE_USER@", user).replace("@WRAPPER_DIR@", str(WRAPPERS))


# --- the grant we install, and Debian's default ----------------------------------------------


def test_debian_default_with_our_grant_has_no_findings(account: Account, tmp_path: Path) -> None:
    root = sudoers(
        tmp_path,
        {
            "sudoers": DEBIAN_DEFAULT.format(includedir=tmp_path / "sudoers.d"),
            "sudoers.d/host-agent": rendered_grant(account.user),
        },
    )
    assert scan(root, account.user, WRAPPERS) == ()


@pytest.mark.parametrize(
    ("who", "line", "spec"),
    [
        pytest.param("root", DEBIAN_ROOT_LINE, "root ALL=(ALL:ALL) ALL", id="root"),
        pytest.param(
            "sudo_member", DEBIAN_SUDO_LINE, "%sudo ALL=(ALL:ALL) ALL", id="sudo-group-member"
        ),
    ],
)
def test_debian_default_flags_root_and_the_sudo_group(
    who: str, line: int, spec: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    user = "root" if who == "root" else request.getfixturevalue(who).user
    root = sudoers(tmp_path, {"sudoers": DEBIAN_DEFAULT.format(includedir=tmp_path / "none")})
    [finding] = scan(root, user, WRAPPERS)
    assert (finding.line, finding.code, finding.command) == (line, "all_commands", "ALL")
    assert (finding.severity, finding.spec) == (Severity.HIGH, spec)


# --- what is flagged -------------------------------------------------------------------------

W = str(WRAPPERS)


@pytest.mark.parametrize(
    ("grant", "code", "command", "severity"),
    [
        pytest.param("(ALL) NOPASSWD: ALL", "nopasswd_all", "ALL", Severity.CRITICAL,
                     id="nopasswd-all"),
        pytest.param("(ALL:ALL) ALL", "all_commands", "ALL", Severity.HIGH, id="all"),
        pytest.param(f"NOPASSWD: {W}/host-agent-zfs, (root) ALL", "nopasswd_all", "ALL",
                     Severity.CRITICAL, id="nopasswd-carries-past-runas"),
        pytest.param(f"NOPASSWD: {W}/host-agent-zfs, PASSWD: ALL", "all_commands", "ALL",
                     Severity.HIGH, id="passwd-overrides-nopasswd"),
        pytest.param(f"NOPASSWD: {W}/host-agent-zfs : otherhost = ALL", "all_commands", "ALL",
                     Severity.HIGH, id="tags-reset-at-host-group"),
        pytest.param("NOPASSWD: /bin/bash", "shell", "/bin/bash", Severity.CRITICAL, id="bash"),
        pytest.param("/usr/bin/dash", "shell", "/usr/bin/dash", Severity.CRITICAL, id="dash"),
        pytest.param("/usr/bin/env", "shell", "/usr/bin/env", Severity.CRITICAL, id="env"),
        pytest.param("/usr/bin/python3.11 -c *", "shell", "/usr/bin/python3.11 -c *",
                     Severity.CRITICAL, id="python"),
        pytest.param("/usr/bin/perl", "shell", "/usr/bin/perl", Severity.CRITICAL, id="perl"),
        pytest.param("/bin/su", "shell", "/bin/su", Severity.CRITICAL, id="su"),
        pytest.param("/usr/bin/sudo", "shell", "/usr/bin/sudo", Severity.CRITICAL, id="sudo"),
        pytest.param("CWD=* TIMEOUT=1h NOEXEC: /usr/bin/zsh", "shell", "/usr/bin/zsh",
                     Severity.CRITICAL, id="options-and-noexec"),
        pytest.param(f"{W}/host-agent-zfs : otherhost = /bin/sh", "shell", "/bin/sh",
                     Severity.CRITICAL, id="second-host-group"),
        pytest.param("/usr/bin/", "shell", "/usr/bin/", Severity.CRITICAL, id="directory"),
        pytest.param("/usr/*/ba?h", "shell", "/usr/*/ba?h", Severity.CRITICAL, id="glob"),
        pytest.param("/usr/bin/[[\\:alpha\\:]]*", "shell", "/usr/bin/[[\\:alpha\\:]]*",
                     Severity.CRITICAL, id="glob-character-class"),
        pytest.param("/usr/sbin/zfs", "bare_tool", "/usr/sbin/zfs", Severity.HIGH, id="zfs"),
        pytest.param("/usr/sbin/zpool status", "bare_tool", "/usr/sbin/zpool status",
                     Severity.HIGH, id="zpool-with-args"),
        pytest.param("/usr/sbin/pct", "bare_tool", "/usr/sbin/pct", Severity.HIGH, id="pct"),
        pytest.param("/usr/bin/systemctl restart nginx", "bare_tool",
                     "/usr/bin/systemctl restart nginx", Severity.HIGH, id="systemctl"),
        pytest.param("/usr/bin/git", "bare_tool", "/usr/bin/git", Severity.HIGH, id="git"),
        pytest.param("^/usr/s?bin/z(fs|pool)$", "bare_tool", "^/usr/s?bin/z(fs|pool)$",
                     Severity.HIGH, id="regex"),
        pytest.param("/usr/bin/apt-get update", "outside_wrappers", "/usr/bin/apt-get update",
                     Severity.MEDIUM, id="other-program"),
        pytest.param("^/opt/tools/[a-z]+$", "outside_wrappers", "^/opt/tools/[a-z]+$",
                     Severity.MEDIUM, id="regex-elsewhere"),
        pytest.param(f"{W}/*", "outside_wrappers", f"{W}/*", Severity.MEDIUM,
                     id="wildcard-in-wrapper-dir"),
        pytest.param("/usr/bin/[z-a]sh", "outside_wrappers", "/usr/bin/[z-a]sh", Severity.MEDIUM,
                     id="pattern-python-cannot-read"),
        pytest.param(f"{W}/host-agent-*", "outside_wrappers", f"{W}/host-agent-*",
                     Severity.MEDIUM, id="wildcard-wrapper-name"),
        pytest.param(f"{W}/../host-agent-zfs", "outside_wrappers", f"{W}/../host-agent-zfs",
                     Severity.MEDIUM, id="path-leaves-wrapper-dir"),
        pytest.param("sudoedit /etc/hosts", "outside_wrappers", "sudoedit /etc/hosts",
                     Severity.MEDIUM, id="sudoedit"),
        pytest.param(f"NOPASSWD: SETENV: {W}/host-agent-zfs", "setenv", f"{W}/host-agent-zfs",
                     Severity.CRITICAL, id="setenv-wrapper"),
    ],
)  # fmt: skip
def test_each_risky_grant_is_one_finding(
    account: Account, tmp_path: Path, grant: str, code: str, command: str, severity: Severity
) -> None:
    spec = f"{account.user} ALL = {grant}"
    root = sudoers(tmp_path, {"sudoers": f"Defaults:{account.user} !requiretty\n{spec}\n"})
    [finding] = scan(root, account.user, WRAPPERS)
    assert finding == Finding(str(root), 2, code, severity, command, finding.detail, spec)


def test_exactly_the_wrappers_is_no_finding(account: Account, tmp_path: Path) -> None:
    root = sudoers(
        tmp_path,
        {
            "sudoers": f"{account.user} ALL = (root) NOPASSWD: {W}/host-agent-zfs, "
            f"{W}/host-agent-git status *, NOSETENV: {W}/host-agent-pct\n"
        },
    )
    assert scan(root, account.user, WRAPPERS) == ()


def test_wrapper_dir_is_what_the_scanner_is_given(account: Account, tmp_path: Path) -> None:
    root = sudoers(tmp_path, {"sudoers": f"{account.user} ALL = {W}/host-agent-zfs\n"})
    [finding] = scan(root, account.user, Path("/opt/host-agent"))
    assert (finding.code, finding.command) == ("outside_wrappers", f"{W}/host-agent-zfs")
    assert "/opt/host-agent" in finding.detail


def test_negated_commands_grant_nothing(account: Account, tmp_path: Path) -> None:
    root = sudoers(
        tmp_path,
        {
            "sudoers": "Cmnd_Alias TOOLS = /usr/sbin/zfs, !/usr/bin/id\n"
            f"{account.user} ALL = /usr/bin/id, !/bin/bash, !!/usr/bin/uptime, !TOOLS\n"
            f"{account.user} ALL = ALL, !/bin/sh\n"
        },
    )
    assert summary(root, account.user) == [
        ("sudoers", 2, "outside_wrappers", "/usr/bin/id"),
        # `!!` cancels out, and `!TOOLS` flips TOOLS' own `!`, as in sudo.
        ("sudoers", 2, "outside_wrappers", "/usr/bin/uptime"),
        ("sudoers", 2, "outside_wrappers", "/usr/bin/id"),
        # sudoers(5): taking commands out of ALL "rarely works as intended".
        ("sudoers", 3, "all_commands", "ALL"),
    ]


def test_aliases_expand_and_decide_who(account: Account, tmp_path: Path) -> None:
    user = account.user
    root = sudoers(
        tmp_path,
        {
            "sudoers": f"User_Alias OPS = nobody, {user} : OTHERS = nobody\n"
            f"User_Alias NOTME = ALL, !{user}\n"
            "User_Alias NESTED_OPS = OPS\n"
            "Cmnd_Alias SHELLS = /bin/sh, /usr/bin/zsh : TOOLS = /usr/sbin/zfs\n"
            "Cmd_Alias NESTED = TOOLS, /usr/bin/git\n"
            "Runas_Alias ADMINS = root, #0\n"
            "Host_Alias HERE = ALL, !elsewhere\n"
            "OPS HERE = (ADMINS) NOPASSWD: SHELLS\n"
            "OTHERS ALL = ALL\n"
            "NOTME ALL = ALL\n"
            "NESTED_OPS ALL = NESTED\n"
        },
    )
    findings = scan(root, user, WRAPPERS)
    assert [(f.line, f.code, f.command) for f in findings] == [
        (8, "shell", "/bin/sh"),
        (8, "shell", "/usr/bin/zsh"),
        (11, "bare_tool", "/usr/sbin/zfs"),
        (11, "bare_tool", "/usr/bin/git"),
    ]
    assert findings[0].detail.endswith("(via Cmnd_Alias SHELLS)")
    assert findings[2].detail.endswith("(via Cmnd_Alias NESTED)")


@pytest.mark.parametrize(
    ("users", "applies"),
    [
        pytest.param("{user}", True, id="name"),
        pytest.param('"{user}"', True, id="quoted-name"),
        pytest.param("ALL", True, id="ALL"),
        pytest.param("#{uid}", True, id="uid"),
        pytest.param("%{group}", True, id="supplementary-group"),
        pytest.param("%{primary}", True, id="primary-group"),
        pytest.param("%#{gid}", True, id="primary-gid"),
        pytest.param("%#{group_gid}", True, id="supplementary-gid"),
        pytest.param('"%{group}"', True, id="quoted-group"),
        pytest.param("nobody, {user}", True, id="in-a-list"),
        pytest.param("!{user}, ALL", True, id="last-match-wins"),
        pytest.param("nobody", False, id="other-user"),
        pytest.param("#0", False, id="other-uid"),
        pytest.param("%sudo", False, id="group-not-member"),
        pytest.param("%#0", False, id="gid-not-member"),
        pytest.param("ALL, !{user}", False, id="excluded"),
        pytest.param("ALL, !%{group}", False, id="group-excluded"),
        pytest.param("+{user}", False, id="netgroup"),
    ],
)
def test_which_user_lists_apply(
    account: Account, tmp_path: Path, users: str, applies: bool
) -> None:
    spec = users.format(**vars(account)) + " ALL = /usr/bin/id"
    root = sudoers(tmp_path, {"sudoers": spec + "\n"})
    expected = [("sudoers", 1, "outside_wrappers", "/usr/bin/id")] if applies else []
    assert summary(root, account.user) == expected


@pytest.mark.parametrize(
    "definition",
    [
        pytest.param("User_Alias A = B : B = A\nA ALL = ALL\n", id="user-alias"),
        pytest.param("Cmnd_Alias A = B : B = A\n{user} ALL = A\n", id="cmnd-alias"),
    ],
)
def test_alias_loop_is_reported_not_followed(
    account: Account, tmp_path: Path, definition: str
) -> None:
    root = write_tree(tmp_path, {"sudoers": definition.format(user=account.user)})
    assert "cycle in" in visudo(root).stderr
    [finding] = scan(root, account.user, WRAPPERS)
    assert (finding.line, finding.code) == (2, "unparsed")
    assert "in a loop" in finding.detail


# --- reading files ---------------------------------------------------------------------------


def test_every_include_form(account: Account, tmp_path: Path) -> None:
    """Relative paths resolve against the including file; includedir skips `~`/`.` names."""
    grant = f"{account.user} ALL = /usr/bin/"
    root = sudoers(
        tmp_path,
        {
            "sudoers": f"{grant}top\n"
            "#include inc/a\n"
            f"@include {tmp_path}/inc/b\n"
            "#includedir d1\n"
            f"   @includedir {tmp_path}/d2\n"
            '@include "with space"\n'
            "@include other\\ space\n",
            "inc/a": f"{grant}a\n@include c\n",
            "inc/c": f"{grant}c\n",
            "inc/b": f"{grant}b\n",
            "d1/20-second": f"{grant}second\n",
            "d1/10-first": f"{grant}first\n",
            # sudo skips these names, so their syntax does not matter.
            "d1/30-editor~": "this is not sudoers\n",
            "d1/40-backup.bak": "this is not sudoers\n",
            "d1/subdirectory/x": "this is not sudoers\n",
            "d2/x": f"{grant}x\n",
            "with space": f"{grant}quoted\n",
            "other space": f"{grant}escaped\n",
        },
    )
    assert [(f, line, c) for f, line, _, c in summary(root, account.user)] == [
        ("sudoers", 1, "/usr/bin/top"),
        ("inc/a", 1, "/usr/bin/a"),
        ("inc/c", 1, "/usr/bin/c"),
        ("inc/b", 1, "/usr/bin/b"),
        ("d1/10-first", 1, "/usr/bin/first"),
        ("d1/20-second", 1, "/usr/bin/second"),
        ("d2/x", 1, "/usr/bin/x"),
        ("with space", 1, "/usr/bin/quoted"),
        ("other space", 1, "/usr/bin/escaped"),
    ]


@pytest.mark.parametrize(
    ("files", "where"),
    [
        pytest.param(
            {"sudoers": "@include a\n", "a": "{grant}\n@include sudoers\n"}, "a", id="include"
        ),
        pytest.param(
            {"sudoers": "@includedir d\n", "d/a": "{grant}\n#include ../sudoers\n"},
            "d/a",
            id="includedir",
        ),
    ],
)
def test_include_loop_is_reported_once(
    account: Account, tmp_path: Path, files: dict[str, str], where: str
) -> None:
    grant = f"{account.user} ALL = /usr/bin/id"
    tree: dict[str, str | bytes] = {n: t.format(grant=grant) for n, t in files.items()}
    root = rejected(tmp_path, tree, "too many levels of includes")
    assert summary(root, account.user) == [
        (where, 1, "outside_wrappers", "/usr/bin/id"),
        (where, 2, "unparsed", ""),
    ]
    assert "include loop" in scan(root, account.user, WRAPPERS)[1].detail


def test_includes_nested_too_deep(account: Account, tmp_path: Path) -> None:
    depth = MAX_INCLUDE_DEPTH + 72  # past sudo's limit as well as ours
    chain: dict[str, str | bytes] = {f"f{n}": f"@include f{n + 1}\n" for n in range(depth)}
    chain[f"f{depth}"] = f"{account.user} ALL = /usr/bin/id\n"
    root = rejected(tmp_path, chain, "too many levels of includes")
    [finding] = scan(root, account.user, WRAPPERS)
    assert (finding.code, finding.line) == ("unparsed", 1)
    assert f"deeper than {MAX_INCLUDE_DEPTH}" in finding.detail


def test_continuations_comments_and_ids(account: Account, tmp_path: Path) -> None:
    root = sudoers(
        tmp_path,
        {
            "sudoers": "# a comment does not continue, even ending in a backslash \\\n"
            f"{account.user} ALL = /usr/bin/one, \\\n"
            "    /usr/bin/two  # a trailing comment, /bin/sh\n"
            f"#{account.uid} ALL = /usr/bin/three\n"
            f"{account.user} ALL = /usr/bin/four \\#not-a-comment\n"
        },
    )
    assert summary(root, account.user) == [
        ("sudoers", 2, "outside_wrappers", "/usr/bin/one"),
        ("sudoers", 2, "outside_wrappers", "/usr/bin/two"),
        ("sudoers", 4, "outside_wrappers", "/usr/bin/three"),
        ("sudoers", 5, "outside_wrappers", "/usr/bin/four \\#not-a-comment"),
    ]


def test_unparsable_line_is_a_finding_and_the_rest_is_read(
    account: Account, tmp_path: Path
) -> None:
    user = account.user
    root = rejected(
        tmp_path,
        {
            "sudoers": f"{user} ALL = /usr/bin/one\n"
            f"{user} ALL = (root /usr/bin/two\n"
            "# not UTF-8: \xff\xfe\n".encode("latin-1")
            + f"{user} ALL = /bin/sh\n".encode()
        },
        "syntax error",
    )
    assert summary(root, user) == [
        ("sudoers", 1, "outside_wrappers", "/usr/bin/one"),
        ("sudoers", 2, "unparsed", ""),
        ("sudoers", 4, "shell", "/bin/sh"),
    ]
    unparsed = scan(root, user, WRAPPERS)[1]
    assert unparsed.severity is Severity.MEDIUM
    assert unparsed.spec == f"{user} ALL = (root /usr/bin/two"
    assert "cannot parse" in unparsed.detail


def test_missing_files_are_unreadable(account: Account, tmp_path: Path) -> None:
    root = rejected(
        tmp_path,
        {"sudoers": "@include missing\n@includedir absent-directory\n"},
        "No such file or directory",
    )
    [finding] = scan(root, account.user, WRAPPERS)
    assert (finding.file, finding.line, finding.code) == (
        str(tmp_path / "missing"),
        0,
        "unreadable",
    )
    assert finding.severity is Severity.HIGH
    assert "No such file or directory" in finding.detail
    [gone] = scan(tmp_path / "no-sudoers", account.user, WRAPPERS)
    assert (gone.file, gone.code) == (str(tmp_path / "no-sudoers"), "unreadable")


def test_fifo_include_is_unreadable_not_a_hang(account: Account, tmp_path: Path) -> None:
    """The FIFO has no writer: a blocking open would hang the scan (and the agent)."""
    os.mkfifo(tmp_path / "pipe")
    root = write_tree(tmp_path, {"sudoers": "@include pipe\n"})
    [finding] = scan(root, account.user, WRAPPERS)
    assert (finding.file, finding.code) == (str(tmp_path / "pipe"), "unreadable")
    assert "not a regular file" in finding.detail


def test_sudoers_unreadable_to_an_unprivileged_agent(account: Account) -> None:
    """An agent not running as root cannot read /etc/sudoers (0440): reported, not raised."""
    program = (
        "import json, pathlib\n"
        "from host_agent.sudoers_probe import scan\n"
        f"found = scan(pathlib.Path('{DEFAULT_SUDOERS}'), '{account.user}', pathlib.Path('{W}'))\n"
        "print(json.dumps([f.public() for f in found]))\n"
    )
    python = str(REPO / ".venv" / "bin" / "python")
    done = subprocess.run(
        ["runuser", "-u", account.user, "--", python, "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=REPO,
    )
    [finding] = json.loads(done.stdout)
    assert finding["file"] == str(DEFAULT_SUDOERS)
    assert finding["code"] == "unreadable"
    assert "Permission denied" in finding["detail"]


# --- real files ------------------------------------------------------------------------------


def test_upstream_example_sudoers(account: Account, tmp_path: Path) -> None:
    """sudo's own example exercises most of the grammar; only its `ALL CDROM` line applies."""
    if not UPSTREAM_EXAMPLE.is_file():
        pytest.skip(f"{UPSTREAM_EXAMPLE} is not installed (docs excluded by dpkg?)")
    text = UPSTREAM_EXAMPLE.read_text()
    root = sudoers(tmp_path, {"sudoers": text})
    line = text.splitlines().index("ALL\t\tCDROM = NOPASSWD: /sbin/umount /CDROM,\\") + 1
    assert summary(root, account.user) == [
        ("sudoers", line, "outside_wrappers", "/sbin/umount /CDROM"),
        ("sudoers", line, "outside_wrappers", "/sbin/mount -o nosuid\\,nodev /dev/cd0a /CDROM"),
    ]


def test_this_machines_sudoers(account: Account) -> None:
    assert run("visudo", "-c", check=False).returncode == 0, "this machine's sudoers is invalid"
    findings = scan(DEFAULT_SUDOERS, account.user, WRAPPERS)
    assert all(isinstance(f, Finding) for f in findings)
    assert [f for f in findings if f.code in ("unparsed", "unreadable")] == []


def test_mangled_sudoers_never_raise(account: Account, tmp_path: Path) -> None:
    """A probe failure must not take the agent down: mangle real samples, scan each."""
    sample = "\n".join(
        (
            DEBIAN_DEFAULT.format(includedir=tmp_path / "d"),
            rendered_grant(account.user),
            'User_Alias OPS = %wheel, "#0" : X = !ALL\nCmnd_Alias C = sha256:ab /bin/ls\n',
            "OPS ALL, !h = (root : #0) NOPASSWD: CWD=/ C, ^/usr/bin/[a-z$, /bin/f ^x{1,2}$\n",
            UPSTREAM_EXAMPLE.read_text() if UPSTREAM_EXAMPLE.is_file() else "",
        )
    )
    noise = [*'\\#"!,:=()^$[]*?%-+ \t\n\0\r', "²", "[!", "@include ", "#includedir ", "ALL"]
    rng = random.Random(20240611)
    for attempt in range(300):
        text = list(sample)
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(len(text))
            if rng.random() < 0.5:
                del text[at : at + rng.randint(1, 20)]
            else:
                text.insert(at, rng.choice(noise))
        path = tmp_path / f"mangled-{attempt}"
        path.write_text("".join(text))
        findings = scan(path, account.user, WRAPPERS)
        assert all(isinstance(f, Finding) for f in findings)


@pytest.mark.parametrize(
    ("line", "codes"),
    [
        pytest.param("%ha\0x ALL = ALL", [], id="nul-in-group"),
        pytest.param("%#1\N{SUPERSCRIPT TWO} ALL = ALL", [], id="non-ascii-digit-gid"),
        pytest.param("@include a\0b", ["unparsed"], id="nul-in-include-path"),
        pytest.param("{user} ALL = ^/usr/bin/(sh$", ["outside_wrappers"], id="bad-regex"),
    ],
)
def test_hostile_lines_are_findings_not_exceptions(
    account: Account, tmp_path: Path, line: str, codes: list[str]
) -> None:
    """Lines sudo would refuse (a NUL, an unbalanced regex) must not crash the probe either."""
    root = write_tree(tmp_path, {"sudoers": line.format(user=account.user) + "\n"})
    assert [f.code for f in scan(root, account.user, WRAPPERS)] == codes
    assert scan(root, "no\0such-user", WRAPPERS) == tuple(
        f for f in scan(root, account.user, WRAPPERS) if f.code == "unparsed"
    )


# --- the report the root wrapper prints for an unprivileged agent ----------------------------


def test_findings_travel_as_json_and_back(
    account: Account, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grant = rendered_grant(account.user)
    root = sudoers(tmp_path, {"sudoers": f"{grant}{account.user} ALL = (root) NOPASSWD: ALL\n"})
    [finding] = scan(root, account.user, WRAPPERS)
    assert main([str(root), account.user, str(WRAPPERS)]) == 0
    printed = capsys.readouterr().out
    assert findings_from_json(printed) == (finding,)
    assert json.loads(printed) == {
        "findings": [
            {
                "file": str(root),
                "line": len(grant.splitlines()) + 1,
                "code": "nopasswd_all",
                "severity": "critical",
                "command": "ALL",
                "detail": finding.detail,
                "spec": f"{account.user} ALL = (root) NOPASSWD: ALL",
            }
        ]
    }


def test_the_report_needs_exactly_three_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(DEFAULT_SUDOERS), "root"]) == 64
    assert "usage:" in capsys.readouterr().err


GOOD = {
    "file": "/etc/sudoers",
    "line": 3,
    "code": "nopasswd_all",
    "severity": "critical",
    "command": "ALL",
    "detail": "d",
    "spec": "s",
}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        '{"findings": {}}',
        json.dumps({"findings": [[]]}),
        json.dumps({"findings": [{**GOOD, "extra": 1}]}),
        json.dumps({"findings": [{k: v for k, v in GOOD.items() if k != "spec"}]}),
        json.dumps({"findings": [{**GOOD, "line": "3"}]}),
        json.dumps({"findings": [{**GOOD, "line": True}]}),
        json.dumps({"findings": [{**GOOD, "severity": "catastrophic"}]}),
        json.dumps({"findings": [{**GOOD, "command": None}]}),
    ],
)
def test_anything_but_the_report_is_refused(text: str) -> None:
    """The agent trusts the wrapper's output no further than its shape."""
    assert findings_from_json(json.dumps({"findings": [GOOD]}))[0].severity is Severity.CRITICAL
    with pytest.raises(ValueError):
        findings_from_json(text)


def test_a_vanished_root_file_is_a_finding(account: Account, tmp_path: Path) -> None:
    root = sudoers(tmp_path, {"sudoers": rendered_grant(account.user)})
    shutil.move(root, tmp_path / "elsewhere")
    [finding] = scan(root, account.user, WRAPPERS)
    assert (finding.file, finding.code) == (str(root), "unreadable")
