"""Git working trees under `[git] allowed_repos`, as the caller profile's unix_user.

Requests (the predecessor's shape):
    {"kind": "git", "resource": "/srv/myapp", "args": ["status"]}
    {"kind": "git", "resource": "/srv/myapp", "args": ["log", "20"]}
    {"kind": "git", "resource": "/srv/myapp", "args": ["fetch", "origin"]}
    {"kind": "git", "resource": "/srv/myapp", "args": ["pull"]}
    {"kind": "git", "resource": "/srv/myapp", "args": ["checkout", "main"]}
    {"kind": "git", "resource": "/srv/myapp", "args": ["diff", "v1.2.0"]}

The wrapper argv is always `COMMAND UNIX_USER REPO [ARG]`, defaults filled in
here so the audit log shows exactly what ran.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from host_agent.adapters.base import (
    Adapter,
    Call,
    Failure,
    args_schema,
    check_text,
    ecma_escape,
    expect_args,
    integer_pattern,
    parameters_schema,
    text_schema,
)
from host_agent.config import GitConfig
from host_agent.errors import ValidationError
from host_agent.operations import Operation
from host_agent.runner import RunResult

MAX_PATH = 1024
MAX_NAME = 255
DEFAULT_COUNT = "10"
MAX_COUNT = 200
DEFAULT_REMOTE = "origin"
# `diff` compares the work tree with this commit: staged and unstaged changes both show.
DEFAULT_DIFF_REF = "HEAD"
COUNT_RE = re.compile(r"[1-9][0-9]{0,2}")
_COUNT_DIGITS = len(str(MAX_COUNT))
# No leading '.', no '..', no trailing '.': always a valid remote (and refspec) name.
REMOTE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*")
# Stricter than git: refs that also pass check-ref-format may still carry shell
# metacharacters (`$`, `;`, `|`, ...); those are refused too.
_REF_CHARS = "A-Za-z0-9._+@-"  # within one '/'-separated component
REF_RE = re.compile(rf"[/{_REF_CHARS}]+")
_REF_FORBIDDEN = frozenset("~^:?*[\\")
# What `ref_name` accepts, in portable syntax: components that do not start with '.'
# nor end with '.lock', no '..', no trailing '.', not '@' ('@{' and the forbidden
# characters are outside REF_RE already).
_REF_COMPONENT = rf"[{_REF_CHARS.replace('.', '')}][{_REF_CHARS}]*"
REF_SCHEMA_PATTERN = (
    rf"(?!.*\.\.)(?!.*\.lock(?:/|$))(?!.*\.$)(?!@$){_REF_COMPONENT}(?:/{_REF_COMPONENT})*"
)
# One component of a repository path: not empty, not '.' or '..' ('/' ends it).
_PATH_COMPONENT = r"(?!\.\.?(?:/|$))[^/]+"

# `git fetch` reports each updated ref on stderr: " * [new branch]  x -> origin/x".
_FETCH_UPDATE = re.compile(r"^ [ +\-*!=t] (\[[^\]]*\]|\S+)\s+(\S+)\s+-> (\S+)", re.MULTILINE)
_PULL_UPDATE = re.compile(r"^Updating ([0-9a-f]+)\.\.([0-9a-f]+)$", re.MULTILINE)
# Porcelain v2 entry types → fields before the path (which may contain spaces).
_STATUS_FIELDS = {"1": 7, "2": 8, "u": 9}
_NOT_FOUND = Failure(404, "not_found", "no such ref")
_UNREACHABLE = Failure(502, "remote_unreachable", "the remote could not be reached or read")


class GitAdapter(Adapter):
    kind = "git"
    wrapper = "host-agent-git"
    commands: ClassVar[Mapping[str, bool]] = {
        "status": False,
        "log": False,
        "fetch": True,
        "pull": True,
        "checkout": True,
        "diff": False,
    }
    summaries: ClassVar[Mapping[str, str]] = {
        "status": "Show a git working tree's branch, upstream, ahead/behind counts and "
        "changed files.",
        "log": "Show the latest commits of a git working tree: hash, author, date, subject.",
        "fetch": "Fetch from a remote into a git working tree.",
        "pull": "Fast-forward a git working tree from its remote (never merges).",
        "checkout": "Check out a branch or tag in a git working tree; refuses when local "
        "changes would be overwritten.",
        "diff": "Show how a git working tree differs from a commit (default HEAD), as a "
        "unified diff; output is capped.",
    }
    # git 2.39's messages, most specific first.
    stderr_failures = (
        (
            "dubious ownership",
            Failure(
                500, "repo_owner_mismatch", "the repository is not owned by the agent's unix_user"
            ),
        ),
        ("not a git repository", Failure(404, "not_found", "not a git repository")),
        (
            "would be overwritten",
            Failure(409, "local_changes", "local changes would be overwritten; commit them first"),
        ),
        (
            "not possible to fast-forward",
            Failure(
                409,
                "not_fast_forward",
                "the branch has diverged from its upstream; pull only fast-forwards",
            ),
        ),
        (
            "not currently on a branch",
            Failure(409, "detached_head", "HEAD is detached; pull needs a branch"),
        ),
        (
            # "You asked to pull from the remote 'x', but did not specify a branch."
            "you asked to pull from the remote",
            Failure(
                409, "no_upstream", "the current branch does not track a branch of this remote"
            ),
        ),
        ("couldn't find remote ref", _NOT_FOUND),
        ("no such ref was fetched", _NOT_FOUND),
        # The wrapper checks the ref first; this is a ref deleted in between.
        ("invalid reference", _NOT_FOUND),
        ("could not read from remote", _UNREACHABLE),
        ("unable to access", _UNREACHABLE),
        ("permission denied", Failure(403, "permission_denied", "git refused: permission denied")),
    )

    def __init__(self, config: GitConfig) -> None:
        self.config = config

    def validate(self, call: Call) -> tuple[str, ...]:
        repo = self.allowed_repo("resource", call.resource)
        head = (call.unix_user, repo)
        if call.command == "status":
            expect_args(call, most=0)
            return head
        if call.command == "checkout":
            expect_args(call, least=1, most=1)
            return (*head, ref_name("args[1]", call.args[0]))
        expect_args(call, most=1)
        if call.command == "diff":
            return (*head, ref_name("args[1]", call.args[0] if call.args else DEFAULT_DIFF_REF))
        if call.command == "log":
            return (*head, log_count("args[1]", call.args[0] if call.args else DEFAULT_COUNT))
        remote = call.args[0] if call.args else DEFAULT_REMOTE
        return (
            *head,
            check_text("args[1]", remote, max_length=MAX_NAME, pattern=REMOTE_RE, what="remote"),
        )

    def tool_parameters(self, command: str, *, recursive: bool = True) -> dict[str, Any] | None:
        repos = self.repo_patterns()
        if not repos:
            return None
        example = repos[0][1]
        resource = text_schema(
            "Absolute path of a working tree inside one of "
            + ", ".join(str(r) for r in self.config.allowed_repos)
            + f", e.g. {example}",
            max_length=MAX_PATH,
            pattern="|".join(pattern for pattern, _ in repos),
        )
        if command == "status":
            return parameters_schema(resource=resource, examples=[{"resource": example}])
        if command == "log":
            count = text_schema(
                f"How many commits, 1 to {MAX_COUNT}",
                max_length=_COUNT_DIGITS,
                pattern=integer_pattern(1, MAX_COUNT),
            )
            return parameters_schema(
                resource=resource,
                args=args_schema(f"Optional [COUNT] (default {DEFAULT_COUNT})", [count]),
                examples=[{"resource": example, "args": ["20"]}],
            )
        if command == "checkout":
            ref = text_schema(
                "Branch or tag, e.g. main or v1.2.0",
                max_length=MAX_NAME,
                pattern=REF_SCHEMA_PATTERN,
            )
            return parameters_schema(
                resource=resource,
                args=args_schema("[REF]: the branch or tag to check out", [ref], least=1),
                examples=[{"resource": example, "args": ["main"]}],
            )
        if command == "diff":
            ref = text_schema(
                "Branch, tag or commit hash to compare the working tree with, e.g. v1.2.0",
                max_length=MAX_NAME,
                pattern=REF_SCHEMA_PATTERN,
            )
            return parameters_schema(
                resource=resource,
                args=args_schema(f"Optional [REF] (default {DEFAULT_DIFF_REF})", [ref]),
                examples=[{"resource": example}, {"resource": example, "args": ["main"]}],
            )
        remote = text_schema("Remote name", max_length=MAX_NAME, pattern=REMOTE_RE.pattern)
        return parameters_schema(
            resource=resource,
            args=args_schema(f"Optional [REMOTE] (default {DEFAULT_REMOTE})", [remote]),
            examples=[{"resource": example}, {"resource": example, "args": [DEFAULT_REMOTE]}],
        )

    def repo_patterns(self) -> list[tuple[str, str]]:
        """For each allowed repository that can admit a path: the portable regex of the
        paths `allowed_repo` accepts inside it (before symlinks), and an example path."""
        patterns = []
        for allowed in map(str, self.config.allowed_repos):
            base = allowed.rstrip("/")
            if "//" in base:
                continue  # a leading '//': no path without empty components is inside it
            inside = f"{ecma_escape(base)}(?:/{_PATH_COMPONENT})"
            # Only "/" ends in '/' (Path drops a trailing one): paths below it, not itself.
            example = allowed if base == allowed else f"{base}/app"
            if len(example) <= MAX_PATH:
                patterns.append((inside + ("*" if base == allowed else "+"), example))
        return patterns

    def allowed_repo(self, field: str, value: str) -> str:
        """A repository path inside `[git] allowed_repos`, before and after resolving symlinks."""
        check_text(field, value, max_length=MAX_PATH, what="repository path")
        parts = value.split("/")
        if parts[0] or not all(parts[1:]) or {".", ".."} & set(parts):
            raise ValidationError(
                field,
                "must be an absolute path without '.', '..', empty components or a trailing '/'",
                code="invalid_path",
            )
        if not self.config.allowed_repos:
            raise ValidationError(
                field,
                "no repository is allowed: [git] allowed_repos is empty on this agent",
                code="repo_not_allowed",
            )
        real = os.path.realpath(value)
        for allowed in map(str, self.config.allowed_repos):
            if _inside(value, allowed) and _inside(real, os.path.realpath(allowed)):
                return value
        raise ValidationError(
            field,
            "not inside any of [git] allowed_repos (symlinks resolved)",
            code="repo_not_allowed",
        )

    def outcome(self, operation: Operation, result: RunResult) -> Failure | None:
        # `git log` on a branch without commits fails; for the caller that is an empty history.
        if operation.command == "log" and "does not have any commits yet" in result.stderr:
            return None
        return super().outcome(operation, result)

    def interpret(self, operation: Operation, result: RunResult) -> dict[str, Any]:
        command, argument = operation.command, operation.wrapper_argv[-1]
        if command == "status":
            return parse_status(result.stdout)
        if command == "log":
            return {"commits": parse_log(result.stdout)}
        if command == "fetch":
            return {"remote": argument, "updated": parse_fetch(result.stderr)}
        if command == "pull":
            return {"remote": argument, **parse_pull(result.stdout)}
        if command == "diff":
            return {"ref": argument, "diff": result.stdout}
        # A tag is checked out detached: git then says where HEAD is now.
        return {"ref": argument, "detached": "HEAD is now at" in result.stderr}


def _inside(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")


def ref_name(field: str, value: str) -> str:
    """A branch or tag name: `git check-ref-format --allow-onelevel` rules on a narrow charset."""
    check_text(field, value, max_length=MAX_NAME, what="ref name")
    problem = _ref_format_problem(value)
    if problem is not None:
        raise ValidationError(field, f"not a valid ref name: {problem}", code="invalid_ref")
    if not REF_RE.fullmatch(value):
        raise ValidationError(
            field, "ref names may use letters, digits and . _ / + @ - only", code="invalid_name"
        )
    return value


def _ref_format_problem(value: str) -> str | None:
    """What `git check-ref-format` would object to (control characters and space excepted:
    check_text refuses those already)."""
    if ".." in value:
        return "contains '..'"
    if "@{" in value:
        return "contains '@{'"
    if value == "@":
        return "is '@'"
    if _REF_FORBIDDEN & set(value):
        return "contains one of ~ ^ : ? * [ \\"
    if value.startswith("/") or value.endswith("/") or "//" in value:
        return "has an empty component"
    if value.endswith("."):
        return "ends with '.'"
    for component in value.split("/"):
        if component.startswith("."):
            return "has a component starting with '.'"
        if component.endswith(".lock"):
            return "has a component ending with '.lock'"
    return None


def log_count(field: str, value: str) -> str:
    """How many commits `log` shows: 1..MAX_COUNT, plain decimal."""
    check_text(field, value, max_length=_COUNT_DIGITS, what="count")
    if not COUNT_RE.fullmatch(value) or int(value) > MAX_COUNT:
        raise ValidationError(
            field, f"count must be a whole number from 1 to {MAX_COUNT}", code="invalid_argument"
        )
    return value


def parse_status(text: str) -> dict[str, Any]:
    """`git status --porcelain=v2 --branch -z` → branch headers and one entry per path."""
    branch: dict[str, Any] = {
        "head": None,
        "oid": None,
        "upstream": None,
        "ahead": None,
        "behind": None,
    }
    entries: list[dict[str, Any]] = []
    records = iter(text.split("\0"))
    for record in records:
        kind, _, rest = record.partition(" ")
        if kind == "#":
            key, _, value = rest.partition(" ")
            if key == "branch.oid":
                branch["oid"] = None if value == "(initial)" else value
            elif key == "branch.head":
                branch["head"] = None if value == "(detached)" else value
            elif key == "branch.upstream":
                branch["upstream"] = value
            elif key == "branch.ab":
                ahead, _, behind = value.partition(" ")
                branch["ahead"], branch["behind"] = int(ahead), -int(behind)
        elif kind in _STATUS_FIELDS:
            fields = rest.split(" ", _STATUS_FIELDS[kind])
            if len(fields) <= _STATUS_FIELDS[kind]:
                continue  # cut short by the output cap
            entry = {"path": fields[-1], "xy": fields[0], "kind": "changed"}
            if kind == "2":
                # The original path follows as the next NUL-terminated record.
                entry["kind"] = "renamed" if fields[-2].startswith("R") else "copied"
                entry["orig_path"] = next(records, "")
            elif kind == "u":
                entry["kind"] = "unmerged"
            entries.append(entry)
        elif kind in ("?", "!"):
            entries.append(
                {"path": rest, "xy": kind * 2, "kind": "untracked" if kind == "?" else "ignored"}
            )
    return {"branch": branch, "entries": entries}


def parse_log(text: str) -> list[dict[str, str]]:
    """`git log -z --format=%H%x1f%an%x1f%ae%x1f%aI%x1f%s` → one dict per commit."""
    commits = []
    for record in text.split("\0"):
        fields = record.split("\x1f", 4)
        if len(fields) == 5:
            commit, author, email, date, subject = fields
            commits.append(
                {
                    "hash": commit,
                    "author": author,
                    "email": email,
                    "date": date,
                    "subject": subject,
                }
            )
    return commits


def parse_fetch(stderr: str) -> list[dict[str, str]]:
    """The ref updates `git fetch` reports on stderr."""
    return [
        {"summary": summary, "from": source, "to": target}
        for summary, source, target in _FETCH_UPDATE.findall(stderr)
    ]


def parse_pull(stdout: str) -> dict[str, Any]:
    """Whether `git pull --ff-only` moved HEAD, and from where to where (abbreviated)."""
    match = _PULL_UPDATE.search(stdout)
    if match is None:
        return {"fast_forwarded": False, "from": None, "to": None}
    return {"fast_forwarded": True, "from": match.group(1), "to": match.group(2)}
