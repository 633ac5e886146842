"""End to end as root: mTLS client → agent → real sudo as the service account →
the git wrapper → real git, run as the caller profile's own unix_user."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from host_agent.audit import verify
from host_agent.cli import main
from host_agent.cli.common import EXIT_OK
from host_agent.config import Config
from tests.hostile import HOSTILE_NAMES
from tests.support import Pki, RunningAgent, audit_records, client, running_agent
from tests.system import System, run, service_account
from tests.test_cli_op import connection

pytestmark = pytest.mark.root

GIT_OPERATIONS = '["git-status", "git-log", "git-fetch", "git-pull", "git-checkout", "git-diff"]'
# A git_user in the wrapper config that has no account on this host.
GHOST_USER = "ha-test-no-such-user"


@dataclass(frozen=True)
class Repos:
    """A bare remote, a clone of it in the allowed directory, and things around them."""

    user: str
    base: Path  # root-owned 0755, outside allowed_repos
    remote: Path
    app: Path  # $base/repos/app: the clone the agent works on
    pusher: Path  # another clone outside allowed_repos, to move the remote on
    outside: Path  # a clone outside allowed_repos
    escape: Path  # $base/repos/escape -> outside

    def git(self, repo: Path, *args: str, check: bool = True) -> str:
        """git as the repositories' owner, with no system or global config."""
        done = run(
            "env",
            "-i",
            "PATH=/usr/bin:/bin",
            "HOME=/",
            "LC_ALL=C",
            "GIT_CONFIG_NOSYSTEM=1",
            "GIT_CONFIG_GLOBAL=/dev/null",
            "git",
            "-C",
            str(repo),
            "-c",
            "user.name=Test Author",
            "-c",
            "user.email=author@example.invalid",
            *args,
            user=self.user,
            check=check,
        )
        return done.stdout.strip()

    def commit(self, repo: Path, name: str, text: str, message: str) -> str:
        write_as(self.user, repo / name, text)
        self.git(repo, "add", "--", name)
        self.git(repo, "commit", "-q", "-m", message)
        return self.git(repo, "rev-parse", "HEAD")

    def push_new_commit(self, text: str) -> str:
        """A new commit on the remote's main, changing README; its hash."""
        self.git(self.pusher, "pull", "-q", "--ff-only")
        new = self.commit(self.pusher, "README", text, f"remote: {text.strip()}")
        self.git(self.pusher, "push", "-q", "origin", "main")
        return new

    def state(self, repo: Path) -> tuple[str, str, str]:
        """HEAD, every ref and the work tree's status: what a refusal must leave alone."""
        return (
            self.git(repo, "rev-parse", "HEAD"),
            self.git(repo, "for-each-ref", "--format=%(refname) %(objectname)"),
            self.git(repo, "status", "--porcelain=v1", "--untracked-files=all"),
        )


def write_as(user: str, path: Path, text: str) -> None:
    path.write_text(text)
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


@pytest.fixture(scope="module")
def repo_owner() -> Iterator[str]:
    """The profile's unix_user: a throwaway account that owns the repositories."""
    with service_account() as name:
        yield name


@pytest.fixture
def repos(repo_owner: str) -> Iterator[Repos]:
    # Not under pytest's 0700 tmp dir: the owner must be able to reach its repositories.
    base = Path(tempfile.mkdtemp(prefix="ha-git-"))
    base.chmod(0o755)
    entry = pwd.getpwnam(repo_owner)
    for name in ("repos", "outside", "pusher-home"):
        (base / name).mkdir()
        os.chown(base / name, entry.pw_uid, entry.pw_gid)
    try:
        made = Repos(
            user=repo_owner,
            base=base,
            remote=base / "outside" / "remote.git",
            app=base / "repos" / "app",
            pusher=base / "pusher-home" / "pusher",
            outside=base / "outside" / "other",
            escape=base / "repos" / "escape",
        )
        made.git(base, "init", "-q", "--bare", "-b", "main", str(made.remote))
        made.git(base, "clone", "-q", str(made.remote), str(made.app))
        made.commit(made.app, "README", "one\n", "first")
        made.git(made.app, "tag", "v1")
        made.commit(made.app, "notes.txt", "notes\n", "second")
        made.git(made.app, "switch", "-q", "-c", "feature")
        made.commit(made.app, "README", "feature\n", "feature work")
        made.git(made.app, "switch", "-q", "main")
        made.git(made.app, "push", "-q", "--all", "-u", "origin")
        made.git(made.app, "push", "-q", "--tags", "origin")
        made.git(base, "clone", "-q", str(made.remote), str(made.pusher))
        made.git(base, "clone", "-q", str(made.remote), str(made.outside))
        made.escape.symlink_to(made.outside)
        yield made
    finally:
        shutil.rmtree(base)


@pytest.fixture
def git_config(system: System, pki: Pki, tmp_path: Path, repos: Repos) -> Config:
    profile = f"""
[[agents]]
cn_pattern = "librarian*"
agent_type = "librarian"
unix_user = "{repos.user}"
autonomy = "supervised"
allowed_operations = {GIT_OPERATIONS}

[[agents]]
cn_pattern = "reader-*"
agent_type = "reader"
unix_user = "{GHOST_USER}"
autonomy = "read_only"
allowed_operations = ["git-status"]
"""
    return system.agent_config(
        pki,
        tmp_path,
        profiles=profile,
        extra=f'[git]\nallowed_repos = ["{repos.base / "repos"}"]\n',
    )


@pytest.fixture
def live(git_config: Config) -> Iterator[RunningAgent]:
    with running_agent(git_config) as agent:
        yield agent


@pytest.fixture
def post(live: RunningAgent, pki: Pki) -> Iterator[Any]:
    """POST one git operation as librarian-1; returns the reply."""
    with client(live, pki, "librarian-1") as http:

        def send(resource: Path | str, *args: str) -> Any:
            body = {"kind": "git", "resource": str(resource), "args": list(args)}
            return http.post("/host/op", json=body)

        yield send


def _data(reply: Any) -> Any:
    assert reply.status_code == 200, reply.text
    return reply.json()["data"]


def _error(reply: Any, status: int, code: str) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    error: dict[str, Any] = reply.json()["error"]
    assert error["code"] == code, error
    return error


def test_status_reports_branch_and_changes_and_is_audited(
    post: Any, repos: Repos, git_config: Config
) -> None:
    write_as(repos.user, repos.app / "README", "edited\n")
    write_as(repos.user, repos.app / "new file", "x\n")
    data = _data(post(repos.app, "status"))
    assert data["branch"] == {
        "head": "main",
        "oid": repos.git(repos.app, "rev-parse", "HEAD"),
        "upstream": "origin/main",
        "ahead": 0,
        "behind": 0,
    }
    assert data["entries"] == [
        {"path": "README", "xy": ".M", "kind": "changed"},
        {"path": "new file", "xy": "??", "kind": "untracked"},
    ]
    decision, result = audit_records(git_config.audit.log_path)
    assert (decision["event"], decision["decision"], decision["operation"]) == (
        "decision",
        "allow",
        "git-status",
    )
    assert decision["argv"][-4:] == [
        str(git_config.runner.wrapper_dir / "host-agent-git"),
        "status",
        repos.user,
        str(repos.app),
    ]
    assert (result["event"], result["outcome"], result["exit_code"]) == ("result", "ok", 0)
    assert result["request_id"] == decision["request_id"]
    assert verify([git_config.audit.log_path]).ok


def test_log_is_bounded_by_count(post: Any, repos: Repos) -> None:
    history = repos.git(repos.app, "rev-list", "HEAD").split()
    assert len(history) == 2
    one = _data(post(repos.app, "log", "1"))["commits"]
    assert [c["hash"] for c in one] == history[:1]
    assert one[0]["subject"] == "second"
    assert (one[0]["author"], one[0]["email"]) == ("Test Author", "author@example.invalid")
    every = _data(post(repos.app, "log"))["commits"]
    assert [c["hash"] for c in every] == history
    assert [c["subject"] for c in every] == ["second", "first"]


def test_fetch_moves_the_remote_tracking_ref_only(post: Any, repos: Repos) -> None:
    head = repos.git(repos.app, "rev-parse", "HEAD")
    new = repos.push_new_commit("fetched\n")
    data = _data(post(repos.app, "fetch"))
    assert data["remote"] == "origin"
    assert [(u["from"], u["to"]) for u in data["updated"]] == [("main", "origin/main")]
    assert repos.git(repos.app, "rev-parse", "origin/main") == new
    assert repos.git(repos.app, "rev-parse", "HEAD") == head
    assert (repos.app / "README").read_text() == "one\n"


def test_pull_fast_forwards_and_git_writes_as_the_unix_user(post: Any, repos: Repos) -> None:
    new = repos.push_new_commit("pulled\n")
    data = _data(post(repos.app, "pull"))
    assert data["remote"] == "origin" and data["fast_forwarded"] is True
    assert new.startswith(data["to"])
    assert repos.git(repos.app, "rev-parse", "HEAD") == new
    assert (repos.app / "README").read_text() == "pulled\n"
    owner = pwd.getpwnam(repos.user).pw_uid
    written = [repos.app / "README", repos.app / ".git" / "ORIG_HEAD", repos.app / ".git" / "index"]
    assert {path.stat().st_uid for path in written} == {owner}
    assert (repos.app / "README").stat().st_mode & 0o777 == 0o644
    assert _data(post(repos.app, "pull"))["fast_forwarded"] is False


def test_checkout_switches_to_a_branch_or_detaches_at_a_tag(post: Any, repos: Repos) -> None:
    assert _data(post(repos.app, "checkout", "feature")) == {"ref": "feature", "detached": False}
    assert repos.git(repos.app, "symbolic-ref", "HEAD") == "refs/heads/feature"
    assert repos.git(repos.app, "rev-parse", "HEAD") == repos.git(
        repos.app, "rev-parse", "refs/heads/feature"
    )
    assert (repos.app / "README").read_text() == "feature\n"
    assert (repos.app / "README").stat().st_uid == pwd.getpwnam(repos.user).pw_uid

    assert _data(post(repos.app, "checkout", "v1")) == {"ref": "v1", "detached": True}
    assert repos.git(repos.app, "symbolic-ref", "-q", "HEAD", check=False) == ""
    assert repos.git(repos.app, "rev-parse", "HEAD") == repos.git(
        repos.app, "rev-parse", "v1^{commit}"
    )
    assert not (repos.app / "notes.txt").exists()


def test_repository_hooks_do_not_run(post: Any, repos: Repos) -> None:
    marker = repos.base / "repos" / "hook-ran"
    hook = repos.app / ".git" / "hooks" / "post-checkout"
    write_as(repos.user, hook, f"#!/bin/sh\ntouch '{marker}'\n")
    hook.chmod(0o755)
    _data(post(repos.app, "checkout", "feature"))
    assert not marker.exists()
    # Control: the same hook does run when the owner checks out by hand.
    repos.git(repos.app, "checkout", "-q", "main")
    assert marker.exists()


def test_diff_shows_the_work_tree_against_a_commit(post: Any, repos: Repos) -> None:
    write_as(repos.user, repos.app / "README", "edited\n")
    before = repos.state(repos.app)
    data = _data(post(repos.app, "diff"))
    assert data["ref"] == "HEAD"
    assert "--- a/README\n+++ b/README\n" in data["diff"]
    assert "\n-one\n+edited\n" in data["diff"]
    assert "notes.txt" not in data["diff"]
    against_tag = _data(post(repos.app, "diff", "v1"))
    assert against_tag["ref"] == "v1"
    assert "+++ b/notes.txt\n" in against_tag["diff"]
    assert repos.state(repos.app) == before
    _error(post(repos.app, "diff", "no-such-ref"), 404, "not_found")


def test_diff_never_runs_the_repository_s_diff_programs(post: Any, repos: Repos) -> None:
    """External diff drivers and textconv filters named in the repository's config are
    programs: a diff through the agent runs none of them."""
    marker = repos.base / "repos" / "driver-ran"
    driver = repos.base / "repos" / "driver"
    write_as(repos.user, driver, f"#!/bin/sh\ntouch '{marker}'\ncat \"$1\"\n")
    driver.chmod(0o755)
    repos.git(repos.app, "config", "diff.external", str(driver))
    repos.git(repos.app, "config", "diff.evil.command", str(driver))
    repos.git(repos.app, "config", "diff.evil.textconv", str(driver))
    write_as(repos.user, repos.app / ".gitattributes", "* diff=evil\n")
    write_as(repos.user, repos.app / "README", "edited\n")
    data = _data(post(repos.app, "diff"))
    assert "\n-one\n+edited\n" in data["diff"]
    assert not marker.exists()
    # Control: the same diff run by the owner by hand does run the driver.
    repos.git(repos.app, "diff")
    assert marker.exists()


def test_a_diverged_pull_is_refused_and_changes_nothing(post: Any, repos: Repos) -> None:
    repos.push_new_commit("theirs\n")
    repos.commit(repos.app, "notes.txt", "ours\n", "local work")
    head = repos.git(repos.app, "rev-parse", "HEAD")
    _error(post(repos.app, "pull"), 409, "not_fast_forward")
    assert repos.git(repos.app, "rev-parse", "HEAD") == head
    assert (repos.app / "README").read_text() == "one\n"


def test_checkout_over_conflicting_local_changes_is_refused(post: Any, repos: Repos) -> None:
    write_as(repos.user, repos.app / "README", "uncommitted\n")
    before = repos.state(repos.app)
    _error(post(repos.app, "checkout", "feature"), 409, "local_changes")
    assert repos.state(repos.app) == before
    assert (repos.app / "README").read_text() == "uncommitted\n"


def test_missing_refs_are_not_found(post: Any, repos: Repos) -> None:
    before = repos.state(repos.app)
    _error(post(repos.app, "checkout", "no-such-branch"), 404, "not_found")
    _error(post(repos.app, "fetch", "no-such-remote"), 404, "not_found")
    assert repos.state(repos.app) == before
    # The upstream branch of the checked-out branch was deleted on the remote.
    repos.git(repos.app, "switch", "-q", "feature")
    repos.git(repos.pusher, "push", "-q", "origin", "--delete", "feature")
    _error(post(repos.app, "pull"), 404, "not_found")


def test_a_repository_owned_by_someone_else_is_refused_by_git(post: Any, repos: Repos) -> None:
    run("chown", "-R", "root:root", str(repos.app))
    _error(post(repos.app, "status"), 500, "repo_owner_mismatch")


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("escape", id="symlink-escape"),
        pytest.param("outside", id="outside-allowed-repos"),
    ],
)
def test_repositories_outside_allowed_repos_are_refused_before_git_runs(
    post: Any, repos: Repos, git_config: Config, target: str
) -> None:
    resource = repos.escape if target == "escape" else repos.outside
    repos.push_new_commit("never fetched\n")
    before = repos.state(repos.outside)
    for args in (("status",), ("fetch",), ("pull",), ("checkout", "v1")):
        error = _error(post(resource, *args), 400, "repo_not_allowed")
        assert error["field"] == "resource"
    assert repos.state(repos.outside) == before
    events = {record["event"] for record in audit_records(git_config.audit.log_path)}
    assert events == {"rejected"}


def test_an_ext_remote_never_executes(post: Any, repos: Repos) -> None:
    pwned = repos.base / "repos" / f"pwned-{secrets.token_hex(3)}"
    repos.git(repos.app, "remote", "add", "evil", f"ext::sh -c touch% {pwned}")
    # A rewrite rule can turn an innocent-looking URL into ext:: too.
    repos.git(repos.app, "config", f"url.ext::sh -c touch% {pwned} #.insteadOf", "https://evil/")
    repos.git(repos.app, "remote", "add", "sneaky", "https://evil/x")
    before = repos.state(repos.app)
    for args in (("fetch", "evil"), ("pull", "evil"), ("fetch", "sneaky")):
        _error(post(repos.app, *args), 403, "wrapper_not_permitted")
    assert not pwned.exists()
    assert repos.state(repos.app) == before
    # Control: git itself would have run it had the transport been allowed.
    repos.git(repos.app, "-c", "protocol.ext.allow=always", "fetch", "evil", check=False)
    assert pwned.exists()


@pytest.mark.parametrize(
    ("url", "status", "code"),
    [
        pytest.param("git://127.0.0.1:9/x", 403, "wrapper_not_permitted", id="git-protocol"),
        pytest.param("http://127.0.0.1:9/x", 403, "wrapper_not_permitted", id="plain-http"),
        pytest.param("fd::3", 403, "wrapper_not_permitted", id="fd-helper"),
        pytest.param("relative/path.git", 403, "wrapper_not_permitted", id="relative-path"),
        pytest.param("-oProxyCommand=x:y", 403, "wrapper_not_permitted", id="option-as-host"),
        pytest.param("https://127.0.0.1:9/x.git", 502, "remote_unreachable", id="https"),
        pytest.param("ssh://127.0.0.1:9/x.git", 502, "remote_unreachable", id="ssh"),
        pytest.param("git@127.0.0.1:x.git", 502, "remote_unreachable", id="scp-like-ssh"),
        pytest.param("file:///nonexistent/x.git", 502, "remote_unreachable", id="file"),
    ],
)
def test_fetch_uses_only_the_transport_of_the_remote(
    post: Any, repos: Repos, url: str, status: int, code: str
) -> None:
    repos.git(repos.app, "config", "remote.other.url", url)
    before = repos.state(repos.app)
    _error(post(repos.app, "fetch", "other"), status, code)
    assert repos.state(repos.app) == before


def test_a_unix_user_missing_on_the_host_is_a_server_error(
    live: RunningAgent, pki: Pki, repos: Repos
) -> None:
    with client(live, pki, "reader-1") as http:
        reply = http.post(
            "/host/op", json={"kind": "git", "resource": str(repos.app), "args": ["status"]}
        )
    _error(reply, 500, "unix_user_missing")


# --- the wrapper on its own, called directly through sudo as the service account ------

ARGV_HOSTILE_NAMES = [case for case in HOSTILE_NAMES if "\x00" not in case.values[0]]


@pytest.fixture
def wrapper(system: System, git_config: Config) -> Any:
    """Run the installed git wrapper through sudo as the service account."""
    path = str(system.wrappers.directory / "host-agent-git")

    def call(*argv: str) -> Any:
        return run("sudo", "-n", path, *argv, user=system.user, check=False)

    return call


@pytest.mark.parametrize("value", ARGV_HOSTILE_NAMES)
def test_wrapper_rejects_hostile_values_on_its_own(wrapper: Any, repos: Repos, value: str) -> None:
    app, user = str(repos.app), repos.user
    before = repos.state(repos.app)
    for argv in (
        ("checkout", user, app, value),
        ("fetch", user, app, value),
        ("pull", user, app, value),
        ("log", user, app, value),
        ("diff", user, app, value),
        ("status", value, app),
        ("status", user, value),
        (value, user, app),
    ):
        done = wrapper(*argv)
        # An absolute path is well-formed; it is refused by the git_repo allowlist instead.
        expected = 77 if argv == ("status", user, "/etc/passwd") else 64
        assert done.returncode == expected, (argv, done.stderr)
        assert "refused" in done.stderr
    assert repos.state(repos.app) == before


@pytest.mark.parametrize(
    ("argv", "status"),
    [
        pytest.param(("status", "{user}", "{outside}"), 77, id="repo-not-in-git-repo"),
        pytest.param(("fetch", "{user}", "{escape}", "origin"), 77, id="symlink-escape"),
        pytest.param(("pull", "{user}", "{remote}", "origin"), 77, id="bare-remote"),
        pytest.param(("checkout", "{service}", "{app}", "feature"), 77, id="user-not-git-user"),
        pytest.param(("checkout", "root", "{app}", "feature"), 77, id="root"),
        pytest.param(("status", GHOST_USER, "{app}"), 67, id="user-missing"),
        pytest.param(("checkout", "{user}", "{app}", "nope"), 66, id="missing-ref"),
        pytest.param(("checkout", "{user}", "{app}/nope", "feature"), 66, id="missing-repo"),
        pytest.param(("status", "{user}", "{repos}"), 66, id="not-a-work-tree"),
        pytest.param(("log", "{user}", "{app}", "201"), 64, id="count-too-big"),
        pytest.param(("log", "{user}", "{app}"), 64, id="count-missing"),
        pytest.param(("checkout", "{user}", "{app}", "a..b"), 64, id="bad-ref"),
        pytest.param(("diff", "{user}", "{app}", "nope"), 66, id="diff-missing-ref"),
        pytest.param(("diff", "{user}", "{app}"), 64, id="diff-ref-missing"),
        pytest.param(("checkout", "{user}", "{app}", "feature", "--"), 64, id="extra-arg"),
    ],
)
def test_wrapper_refuses_what_its_own_config_does_not_allow(
    wrapper: Any, repos: Repos, system: System, argv: tuple[str, ...], status: int
) -> None:
    before = repos.state(repos.app), repos.state(repos.outside)
    names = {
        "user": repos.user,
        "service": system.user,
        "app": str(repos.app),
        "outside": str(repos.outside),
        "escape": str(repos.escape),
        "remote": str(repos.remote),
        "repos": str(repos.base / "repos"),
    }
    done = wrapper(*(part.format(**names) for part in argv))
    assert done.returncode == status, done.stderr
    assert "refused" in done.stderr
    assert (repos.state(repos.app), repos.state(repos.outside)) == before


# --- what `host-agent op` shows people ----------------------------------------------


def op_text(live: RunningAgent, pki: Pki, capsys: pytest.CaptureFixture[str], *words: str) -> str:
    status = main(["op", *connection(live.url, pki, "librarian-1"), "git", *words])
    out, err = capsys.readouterr()
    assert status == EXIT_OK, err
    return out


def test_op_shows_status_and_log_as_git_does(
    live: RunningAgent, pki: Pki, repos: Repos, capsys: pytest.CaptureFixture[str]
) -> None:
    def git_says(*args: str) -> str:
        return repos.git(repos.app, "-c", "advice.statusHints=false", *args)

    clean = op_text(live, pki, capsys, "status", str(repos.app))
    assert clean.strip() == git_says("status")
    # Staged, unstaged and untracked, one behind its upstream.
    repos.push_new_commit("remote change\n")
    repos.git(repos.app, "fetch", "-q")
    write_as(repos.user, repos.app / "README", "edited\n")
    write_as(repos.user, repos.app / "staged.txt", "new\n")
    repos.git(repos.app, "add", "staged.txt")
    write_as(repos.user, repos.app / "loose.txt", "x\n")
    busy = op_text(live, pki, capsys, "status", str(repos.app))
    assert busy.strip() == git_says("status")
    assert "Changes to be committed:" in busy and "Untracked files:" in busy
    assert "is behind 'origin/main' by 1 commit" in busy
    assert op_text(live, pki, capsys, "log", str(repos.app)).strip() == git_says(
        "log", "--no-decorate"
    )
