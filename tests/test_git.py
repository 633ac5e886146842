"""The git adapter without a server: validation, exact wrapper argv, parsing real git output."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from host_agent.adapters.git import GitAdapter, parse_fetch, parse_log, parse_pull, parse_status
from host_agent.config import GitConfig
from host_agent.errors import ValidationError
from host_agent.operations import Operation
from host_agent.request import HostOpRequest
from host_agent.runner import RunResult
from tests.hostile import HOSTILE_NAMES

USER = "librarian"
WRAPPER = Path(__file__).resolve().parent.parent / "wrappers" / "host-agent-git"
# What every hostile value may be refused as; which one depends on the value.
HOSTILE_CODES = {
    "missing_argument",
    "invalid_characters",
    "option_injection",
    "too_long",
    "invalid_path",
    "invalid_name",
    "invalid_ref",
    "invalid_argument",
    "repo_not_allowed",
}


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    """An allowed directory holding one (empty) repository directory."""
    (tmp_path / "repos" / "app").mkdir(parents=True)
    return tmp_path / "repos"


@pytest.fixture
def git(allowed: Path) -> GitAdapter:
    return GitAdapter(GitConfig(allowed_repos=(allowed,)))


def _parse(adapter: GitAdapter, resource: str, *args: str) -> Operation:
    return adapter.parse(HostOpRequest("git", resource, args), USER)


def _refused(adapter: GitAdapter, resource: str, *args: str) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        _parse(adapter, resource, *args)
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize(
    ("args", "tail"),
    [
        pytest.param(("status",), (), id="status"),
        pytest.param(("log",), ("10",), id="log-default-count"),
        pytest.param(("log", "1"), ("1",), id="log-1"),
        pytest.param(("log", "200"), ("200",), id="log-200"),
        pytest.param(("fetch",), ("origin",), id="fetch-default-remote"),
        pytest.param(("fetch", "upstream"), ("upstream",), id="fetch-remote"),
        pytest.param(("pull",), ("origin",), id="pull-default-remote"),
        pytest.param(("pull", "my.remote_2"), ("my.remote_2",), id="pull-remote"),
        pytest.param(("checkout", "main"), ("main",), id="checkout-branch"),
        pytest.param(("checkout", "feature/x-1.2"), ("feature/x-1.2",), id="checkout-nested"),
        pytest.param(("checkout", "v1.0.0+rc@2"), ("v1.0.0+rc@2",), id="checkout-tag"),
    ],
)
def test_valid_requests_become_exact_wrapper_argv(
    git: GitAdapter, allowed: Path, args: tuple[str, ...], tail: tuple[str, ...]
) -> None:
    repo = str(allowed / "app")
    operation = _parse(git, repo, *args)
    assert operation.wrapper == "host-agent-git"
    assert operation.wrapper_argv == (args[0], USER, repo, *tail)
    assert operation.mutating == (args[0] in ("fetch", "pull", "checkout"))
    assert operation.name == f"git-{args[0]}"


@pytest.mark.parametrize(
    "resource",
    [
        pytest.param("{allowed}", id="the-allowed-dir-itself"),
        pytest.param("{allowed}/not-yet-cloned", id="missing-below-allowed"),
        pytest.param("{allowed}/inner-link", id="symlink-staying-inside"),
    ],
)
def test_repositories_inside_allowed_repos_are_accepted(
    git: GitAdapter, allowed: Path, resource: str
) -> None:
    (allowed / "inner-link").symlink_to(allowed / "app")
    repo = resource.format(allowed=allowed)
    assert _parse(git, repo, "status").wrapper_argv == ("status", USER, repo)


def test_an_allowed_entry_that_is_a_symlink_still_contains_its_repositories(
    allowed: Path, tmp_path: Path
) -> None:
    (tmp_path / "alias").symlink_to(allowed)
    adapter = GitAdapter(GitConfig(allowed_repos=(tmp_path / "alias",)))
    repo = str(tmp_path / "alias" / "app")
    assert _parse(adapter, repo, "status").wrapper_argv == ("status", USER, repo)


@pytest.mark.parametrize("value", HOSTILE_NAMES)
def test_hostile_resources_are_refused(git: GitAdapter, value: str) -> None:
    error = _refused(git, value, "status")
    assert error.field == "resource"
    assert error.code in HOSTILE_CODES


@pytest.mark.parametrize("value", HOSTILE_NAMES)
@pytest.mark.parametrize("command", ["checkout", "fetch", "pull", "log"])
def test_hostile_arguments_are_refused(
    git: GitAdapter, allowed: Path, command: str, value: str
) -> None:
    error = _refused(git, str(allowed / "app"), command, value)
    assert error.field == "args[1]"
    assert error.code in HOSTILE_CODES - {"invalid_path", "repo_not_allowed"}


def test_a_symlink_out_of_the_allowed_directory_is_refused(
    git: GitAdapter, allowed: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (allowed / "escape").symlink_to(outside)
    (allowed / "app" / "deeper").symlink_to(outside)
    for resource in (allowed / "escape", allowed / "app" / "deeper"):
        error = _refused(git, str(resource), "status")
        assert (error.field, error.code) == ("resource", "repo_not_allowed")
    # Without the link the same target is refused too.
    assert _refused(git, str(outside), "status").code == "repo_not_allowed"


@pytest.mark.parametrize(
    ("resource", "code"),
    [
        pytest.param("/etc", "repo_not_allowed", id="elsewhere"),
        pytest.param("{allowed}-evil/app", "repo_not_allowed", id="sibling-with-same-prefix"),
        pytest.param("{parent}", "repo_not_allowed", id="parent-of-allowed"),
        pytest.param("{allowed}/../outside", "invalid_path", id="dotdot"),
        pytest.param("{allowed}/app/..", "invalid_path", id="trailing-dotdot"),
        pytest.param("{allowed}/./app", "invalid_path", id="dot"),
        pytest.param("{allowed}//app", "invalid_path", id="double-slash"),
        pytest.param("{allowed}/app/", "invalid_path", id="trailing-slash"),
        pytest.param("/", "invalid_path", id="root"),
        pytest.param("repos/app", "invalid_path", id="relative"),
        pytest.param("/" + "a" * 1024, "too_long", id="overlong"),
    ],
)
def test_paths_outside_or_malformed_are_refused(
    git: GitAdapter, allowed: Path, resource: str, code: str
) -> None:
    value = resource.format(allowed=allowed, parent=allowed.parent)
    error = _refused(git, value, "status")
    assert (error.field, error.code) == ("resource", code)


def test_no_allowed_repos_refuses_every_repository(allowed: Path) -> None:
    adapter = GitAdapter(GitConfig(allowed_repos=()))
    error = _refused(adapter, str(allowed / "app"), "status")
    assert (error.field, error.code) == ("resource", "repo_not_allowed")
    assert "allowed_repos is empty" in error.reason


@pytest.mark.parametrize(
    ("ref", "code"),
    [
        pytest.param("a..b", "invalid_ref", id="dotdot"),
        pytest.param("a.lock", "invalid_ref", id="lock-suffix"),
        pytest.param("dir.lock/x", "invalid_ref", id="lock-component"),
        pytest.param("@{x}", "invalid_ref", id="at-brace"),
        pytest.param("main@{1}", "invalid_ref", id="reflog-syntax"),
        pytest.param("@", "invalid_ref", id="lone-at"),
        pytest.param("x/", "invalid_ref", id="trailing-slash"),
        pytest.param("/x", "invalid_ref", id="leading-slash"),
        pytest.param("a//b", "invalid_ref", id="double-slash"),
        pytest.param(".x", "invalid_ref", id="leading-dot"),
        pytest.param("dir/.x", "invalid_ref", id="component-leading-dot"),
        pytest.param("x.", "invalid_ref", id="trailing-dot"),
        pytest.param("a~1", "invalid_ref", id="tilde"),
        pytest.param("a^", "invalid_ref", id="caret"),
        pytest.param("a:b", "invalid_ref", id="colon"),
        pytest.param("a?b", "invalid_ref", id="question"),
        pytest.param("a*", "invalid_ref", id="star"),
        pytest.param("a[b", "invalid_ref", id="bracket"),
        pytest.param("a\\b", "invalid_ref", id="backslash"),
        pytest.param("-x", "option_injection", id="leading-dash"),
        pytest.param("a\x7fb", "invalid_characters", id="delete-char"),
        pytest.param("a$b", "invalid_name", id="valid-for-git-but-dollar"),
        pytest.param("r" * 256, "too_long", id="overlong"),
    ],
)
def test_ref_names_follow_check_ref_format(
    git: GitAdapter, allowed: Path, ref: str, code: str
) -> None:
    error = _refused(git, str(allowed / "app"), "checkout", ref)
    assert (error.field, error.code) == ("args[1]", code)


@pytest.mark.parametrize("ref", ["a..b", "a.lock", "@{x}", "x/", ".x", "x.", "a//b", "@", "a~1"])
def test_refs_refused_here_are_refused_by_git_too(ref: str) -> None:
    """Every check-ref-format rule we apply is git's own, not one we made up."""
    done = subprocess.run(
        ["git", "check-ref-format", "--allow-onelevel", ref], capture_output=True, check=False
    )
    assert done.returncode != 0


@pytest.mark.parametrize(
    ("count", "code"),
    [
        pytest.param("0", "invalid_argument", id="zero"),
        pytest.param("201", "invalid_argument", id="above-200"),
        pytest.param("010", "invalid_argument", id="leading-zero"),
        pytest.param("abc", "invalid_argument", id="letters"),
        pytest.param("1e2", "invalid_argument", id="exponent"),
        pytest.param("+5", "invalid_argument", id="plus-sign"),
        pytest.param("1000", "too_long", id="four-digits"),
        pytest.param("-1", "option_injection", id="negative"),
    ],
)
def test_log_count_is_1_to_200_in_plain_decimal(
    git: GitAdapter, allowed: Path, count: str, code: str
) -> None:
    error = _refused(git, str(allowed / "app"), "log", count)
    assert (error.field, error.code) == ("args[1]", code)


@pytest.mark.parametrize(
    ("remote", "code"),
    [
        pytest.param(".origin", "invalid_name", id="leading-dot"),
        pytest.param("a..b", "invalid_name", id="dotdot"),
        pytest.param("origin.", "invalid_name", id="trailing-dot"),
        pytest.param("up/stream", "invalid_name", id="slash"),
        pytest.param("ext::sh", "invalid_name", id="transport-syntax"),
    ],
)
def test_remote_names_are_plain_words(
    git: GitAdapter, allowed: Path, remote: str, code: str
) -> None:
    for command in ("fetch", "pull"):
        error = _refused(git, str(allowed / "app"), command, remote)
        assert (error.field, error.code) == ("args[1]", code)


@pytest.mark.parametrize(
    ("args", "field", "code"),
    [
        pytest.param(("status", "x"), "args[1]", "too_many_arguments", id="status-extra"),
        pytest.param(("log", "5", "x"), "args[2]", "too_many_arguments", id="log-extra"),
        pytest.param(("fetch", "a", "b"), "args[2]", "too_many_arguments", id="fetch-extra"),
        pytest.param(("checkout",), "args[1]", "missing_argument", id="checkout-no-ref"),
        pytest.param(("checkout", "a", "--"), "args[2]", "too_many_arguments", id="checkout-path"),
        pytest.param(("clone", "x"), "args[0]", "unknown_command", id="unknown-command"),
    ],
)
def test_structural_errors_name_the_field(
    git: GitAdapter, allowed: Path, args: tuple[str, ...], field: str, code: str
) -> None:
    error = _refused(git, str(allowed / "app"), *args)
    assert (error.field, error.code) == (field, code)


# --- interpreting real git output ---------------------------------------------------------

GIT_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/",
    "LC_ALL": "C",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "Ada Lovelace",
    "GIT_AUTHOR_EMAIL": "ada@example.invalid",
    "GIT_COMMITTER_NAME": "Ada Lovelace",
    "GIT_COMMITTER_EMAIL": "ada@example.invalid",
}


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True, check=True
    )


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A clone of a bare remote with two commits on main, tracking origin/main."""
    _git(tmp_path, "init", "-q", "--bare", "-b", "main", "remote.git")
    _git(tmp_path, "clone", "-q", "remote.git", "clone")
    work = tmp_path / "clone"
    (work / "keep me.txt").write_text("one\n")
    (work / "old name").write_text("rename me\n")
    _git(work, "add", ".")
    _git(work, "commit", "-q", "-m", "first commit")
    (work / "keep me.txt").write_text("two\n")
    _git(work, "commit", "-q", "-am", "second: with\x1fodd subject")
    _git(work, "push", "-q", "origin", "main")
    return work


def _result(stdout: str = "", stderr: str = "", exit_code: int = 0) -> RunResult:
    return RunResult(("sudo",), exit_code, stdout, stderr, False, 0.1)


def _wrapper_log_format() -> str:
    match = re.search(r"^readonly LOG_FORMAT='([^']+)'$", WRAPPER.read_text(), re.MULTILINE)
    assert match is not None
    return match.group(1)


def test_status_parses_branch_headers_and_every_entry_kind(clone: Path) -> None:
    _git(clone, "commit", "-q", "--allow-empty", "-m", "ahead by one")
    (clone / "keep me.txt").write_text("changed\n")
    _git(clone, "mv", "old name", "new name")
    (clone / "untracked file").write_text("x\n")
    status = _git(clone, "status", "--porcelain=v2", "--branch", "-z").stdout
    head = _git(clone, "rev-parse", "HEAD").stdout.strip()
    assert parse_status(status) == {
        "branch": {
            "head": "main",
            "oid": head,
            "upstream": "origin/main",
            "ahead": 1,
            "behind": 0,
        },
        "entries": [
            {"path": "keep me.txt", "xy": ".M", "kind": "changed"},
            {"path": "new name", "xy": "R.", "kind": "renamed", "orig_path": "old name"},
            {"path": "untracked file", "xy": "??", "kind": "untracked"},
        ],
    }


def test_status_of_a_detached_head_and_an_unmerged_path(clone: Path) -> None:
    _git(clone, "switch", "-q", "-c", "other", "HEAD~1")
    (clone / "keep me.txt").write_text("conflict\n")
    _git(clone, "commit", "-q", "-am", "conflicting")
    merge = subprocess.run(
        ["git", "merge", "-q", "main"], cwd=clone, env=GIT_ENV, capture_output=True, check=False
    )
    assert merge.returncode != 0
    parsed = parse_status(_git(clone, "status", "--porcelain=v2", "--branch", "-z").stdout)
    assert parsed["branch"]["head"] == "other"
    assert parsed["branch"]["upstream"] is None and parsed["branch"]["ahead"] is None
    assert parsed["entries"] == [{"path": "keep me.txt", "xy": "UU", "kind": "unmerged"}]
    _git(clone, "merge", "--abort")
    _git(clone, "switch", "-q", "--detach", "main")
    detached = parse_status(_git(clone, "status", "--porcelain=v2", "--branch", "-z").stdout)
    assert detached["branch"]["head"] is None
    assert detached["entries"] == []


def test_status_cut_short_by_the_output_cap_keeps_whole_entries() -> None:
    assert parse_status("# branch.head main\x001 .M N...") == {
        "branch": {"head": "main", "oid": None, "upstream": None, "ahead": None, "behind": None},
        "entries": [],
    }


def test_log_parses_the_wrappers_own_format(clone: Path) -> None:
    text = _git(
        clone, "log", "--no-color", "--max-count=5", "-z", f"--format={_wrapper_log_format()}"
    )
    hashes = _git(clone, "rev-list", "HEAD").stdout.split()
    commits = parse_log(text.stdout)
    assert [c["hash"] for c in commits] == hashes
    assert [c["subject"] for c in commits] == ["second: with\x1fodd subject", "first commit"]
    assert {(c["author"], c["email"]) for c in commits} == {("Ada Lovelace", "ada@example.invalid")}
    assert all(
        re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", c["date"]) for c in commits
    )


def test_fetch_and_pull_report_what_moved(clone: Path, tmp_path: Path) -> None:
    _git(tmp_path, "clone", "-q", "remote.git", "pusher")
    pusher = tmp_path / "pusher"
    (pusher / "keep me.txt").write_text("three\n")
    _git(pusher, "commit", "-q", "-am", "third")
    _git(pusher, "push", "-q", "origin", "main", "main:topic")
    old = _git(clone, "rev-parse", "--short", "HEAD").stdout.strip()
    new = _git(pusher, "rev-parse", "--short", "HEAD").stdout.strip()

    fetched = _git(clone, "fetch", "--end-of-options", "origin")
    assert parse_fetch(fetched.stderr) == [
        {"summary": f"{old}..{new}", "from": "main", "to": "origin/main"},
        {"summary": "[new branch]", "from": "topic", "to": "origin/topic"},
    ]
    pulled = _git(clone, "pull", "--ff-only", "--no-rebase", "--end-of-options", "origin")
    assert parse_pull(pulled.stdout) == {"fast_forwarded": True, "from": old, "to": new}
    again = _git(clone, "pull", "--ff-only", "--no-rebase", "--end-of-options", "origin")
    assert parse_pull(again.stdout) == {"fast_forwarded": False, "from": None, "to": None}


def test_interpret_shapes_each_command(git: GitAdapter, allowed: Path) -> None:
    repo = str(allowed / "app")
    checkout = _parse(git, repo, "checkout", "v1")
    assert git.interpret(checkout, _result(stderr="HEAD is now at 1234567 one\n")) == {
        "ref": "v1",
        "detached": True,
    }
    branch = _parse(git, repo, "checkout", "main")
    assert git.interpret(branch, _result(stderr="Switched to branch 'main'\n")) == {
        "ref": "main",
        "detached": False,
    }
    fetch = _parse(git, repo, "fetch")
    assert git.interpret(fetch, _result()) == {"remote": "origin", "updated": []}
    pull = _parse(git, repo, "pull", "upstream")
    assert git.interpret(pull, _result(stdout="Already up to date.\n")) == {
        "remote": "upstream",
        "fast_forwarded": False,
        "from": None,
        "to": None,
    }


def test_log_of_a_branch_without_commits_is_an_empty_history(
    git: GitAdapter, allowed: Path
) -> None:
    log = _parse(git, str(allowed / "app"), "log")
    empty = _result(
        stderr="fatal: your current branch 'main' does not have any commits yet\n", exit_code=128
    )
    assert git.outcome(log, empty) is None
    assert git.interpret(log, _result()) == {"commits": []}
    # The same message from any other command is still a failure.
    status = _parse(git, str(allowed / "app"), "status")
    assert git.outcome(status, empty) is not None


# stderr of real git 2.39 failures (captured from the commands the wrapper runs).
@pytest.mark.parametrize(
    ("stderr", "exit_code", "status", "code"),
    [
        pytest.param(
            "fatal: detected dubious ownership in repository at '/srv/app'\n",
            128,
            500,
            "repo_owner_mismatch",
            id="dubious-ownership",
        ),
        pytest.param(
            "fatal: not a git repository (or any of the parent directories): .git\n",
            128,
            404,
            "not_found",
            id="not-a-repository",
        ),
        pytest.param(
            "error: Your local changes to the following files would be overwritten by "
            "checkout:\n\tf\nPlease commit your changes or stash them before you switch "
            "branches.\nAborting\n",
            1,
            409,
            "local_changes",
            id="local-changes",
        ),
        pytest.param(
            "error: The following untracked working tree files would be overwritten by "
            "checkout:\n\tf\n",
            1,
            409,
            "local_changes",
            id="untracked-in-the-way",
        ),
        pytest.param(
            "From /srv/remote\n   6301ea9..d85ee30  main       -> origin/main\n"
            "fatal: Not possible to fast-forward, aborting.\n",
            128,
            409,
            "not_fast_forward",
            id="diverged",
        ),
        pytest.param(
            "You are not currently on a branch.\nPlease specify which branch you want to "
            "merge with.\n",
            1,
            409,
            "detached_head",
            id="pull-detached",
        ),
        pytest.param(
            "You asked to pull from the remote 'origin', but did not specify\na branch. "
            "Because this is not the default configured remote\n",
            1,
            409,
            "no_upstream",
            id="pull-no-upstream",
        ),
        pytest.param(
            "fatal: couldn't find remote ref gone\n", 128, 404, "not_found", id="remote-ref"
        ),
        pytest.param(
            "Your configuration specifies to merge with the ref 'refs/heads/gone'\nfrom the "
            "remote, but no such ref was fetched.\n",
            1,
            404,
            "not_found",
            id="upstream-deleted",
        ),
        pytest.param("fatal: invalid reference: gone\n", 128, 404, "not_found", id="ref-raced"),
        pytest.param(
            "fatal: '/srv/gone.git' does not appear to be a git repository\nfatal: Could not "
            "read from remote repository.\n",
            128,
            502,
            "remote_unreachable",
            id="remote-missing",
        ),
        pytest.param(
            "ssh: connect to host h port 22: Connection refused\nfatal: Could not read from "
            "remote repository.\n",
            128,
            502,
            "remote_unreachable",
            id="ssh-refused",
        ),
        pytest.param(
            "git@h: Permission denied (publickey).\nfatal: Could not read from remote "
            "repository.\n",
            128,
            502,
            "remote_unreachable",
            id="ssh-key-refused",
        ),
        pytest.param(
            "fatal: unable to access 'https://h/x.git/': Failed to connect to h port 443\n",
            128,
            502,
            "remote_unreachable",
            id="https-unreachable",
        ),
        pytest.param(
            "error: unable to create file f: Permission denied\n",
            1,
            403,
            "permission_denied",
            id="permission-denied",
        ),
        pytest.param("host-agent-git: refused: no remote\n", 66, 404, "not_found", id="exit-66"),
        pytest.param("host-agent-git: refused: x\n", 77, 403, "wrapper_not_permitted", id="77"),
        pytest.param("fatal: something new\n", 128, 502, "operation_failed", id="unknown"),
    ],
)
def test_failures_map_to_status_and_code(
    git: GitAdapter, allowed: Path, stderr: str, exit_code: int, status: int, code: str
) -> None:
    operation = _parse(git, str(allowed / "app"), "pull")
    failure = git.outcome(operation, _result(stderr=stderr, exit_code=exit_code))
    assert failure is not None
    assert (failure.status, failure.code) == (status, code)
