"""Find sudoers grants to the service account that reach past the wrappers.

Invariant 5 of DESIGN.md rests on sudoers letting the service account run the
host-agent wrappers and nothing else. A grant added by hand or by a package
(`ALL`, a shell, a bare `zfs`) quietly undoes every check the agent and the
wrappers make. This module reads a sudoers file and everything it includes the
way sudo does, keeps the user specifications that apply to the service
account, and reports each granted command that is not exactly a wrapper.

Only the grammar that says who may run what is understood: Defaults are
ignored, and host and runas lists are not evaluated (a grant for another host
or target user is reported all the same). Scanning never raises: a file that
cannot be read or a line that cannot be parsed may hide a grant, so each is a
finding too. docs/operations.md lists every finding code and why it matters.
"""

from __future__ import annotations

import errno
import grp
import json
import os
import pwd
import re
import socket
import stat
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

DEFAULT_SUDOERS = Path("/etc/sudoers")

# sudo's own limit on nested includes; also what stops an include loop.
MAX_INCLUDE_DEPTH = 128
# Deeper alias nesting (or an alias cycle, which sudo rejects) is reported, not followed.
MAX_ALIAS_DEPTH = 64

# A grant of any of these is a root shell, or runs whatever it is told to.
SHELLS = frozenset(
    {"sh", "bash", "dash", "zsh", "ksh", "csh", "tcsh", "fish", "su", "sudo", "env", "perl"}
)
# The tools the wrappers exist to fence in.
WRAPPED_TOOLS = frozenset({"zfs", "zpool", "pct", "systemctl", "git"})
WRAPPER_PREFIX = "host-agent-"

# Where a wildcard or regular-expression command is tried for the names above.
_BIN_DIRS = ("/bin", "/sbin", "/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin")
_CANDIDATES = tuple(
    f"{directory}/{name}"
    for directory in _BIN_DIRS
    for name in (*sorted(SHELLS), "python", "python3", *sorted(WRAPPED_TOOLS))
)

_OPPOSITE_TAGS = {
    "EXEC": "NOEXEC",
    "FOLLOW": "NOFOLLOW",
    "LOG_INPUT": "NOLOG_INPUT",
    "LOG_OUTPUT": "NOLOG_OUTPUT",
    "MAIL": "NOMAIL",
    "INTERCEPT": "NOINTERCEPT",
    "PASSWD": "NOPASSWD",
    "SETENV": "NOSETENV",
}
_OPPOSITE_TAGS |= {negative: positive for positive, negative in _OPPOSITE_TAGS.items()}
_OPTIONS = frozenset({"CWD", "CHROOT", "ROLE", "TYPE", "TIMEOUT", "NOTBEFORE", "NOTAFTER"})

_INCLUDE = re.compile(r"(?:#|[ \t]*@)include(dir)?[ \t]+(.*)")
_DEFAULTS = re.compile(r"[ \t]*Defaults(?:[\s@:!>]|$)")
_ALIAS_LINE = re.compile(r"[ \t]*(User_Alias|Runas_Alias|Host_Alias|Cmnd_Alias|Cmd_Alias)[ \t]")
_ALIAS_NAME = re.compile(r"[A-Z][A-Z0-9_]*")
_TAG_OR_OPTION = re.compile(r"([A-Z_]+)[ \t]*([:=])")
_DIGEST = re.compile(r"sha(?:224|256|384|512)[ \t]*:")
_NEXT_DIGEST = re.compile(r"[ \t]*,(?=[ \t]*sha(?:224|256|384|512)[ \t]*:)")
_ID_AFTER_HASH = re.compile(r"-?[0-9]")
# A regex command or argument list runs to a `$` that a separator or the end follows.
_REGEX_END = re.compile(r"(?<!\\)\$(?=[ \t,:]|$)")
_SUDOERS_ESCAPE = re.compile(r"\\([^*?\[\]])")
_GLOB_META = re.compile(r"[*?\[\\]")
_POSIX_CLASS = re.compile(r"\[:([a-z]+):\]")
_POSIX_CLASSES = {
    "alpha": "a-zA-Z",
    "digit": "0-9",
    "alnum": "a-zA-Z0-9",
    "upper": "A-Z",
    "lower": "a-z",
    "xdigit": "0-9A-Fa-f",
}
# An unknown character class may match anything, as far as this probe can tell.
_ANY_CHARACTER = r"\s\S"
_WORD_STOPS = ",:=()!"


class Severity(StrEnum):
    """How bad a finding is: critical gives root outright, medium grants more than needed."""

    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"


@dataclass(frozen=True, slots=True)
class Finding:
    """One sudoers problem: where it is, its stable code, and the command it grants."""

    file: str
    line: int
    code: str
    severity: Severity
    # The granted command as written (alias members one by one); "" for unreadable/unparsed.
    command: str
    detail: str
    # The whole user specification (one logical line, whitespace collapsed).
    spec: str = ""

    def public(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "code": self.code,
            "severity": self.severity.value,
            "command": self.command,
            "detail": self.detail,
            "spec": self.spec,
        }


def scan(root_file: Path, service_user: str, wrapper_dir: Path) -> tuple[Finding, ...]:
    """Every finding for `service_user` in `root_file` and its includes, in reading order."""
    reader = _Reader()
    reader.read_file(root_file)
    account = _Account.lookup(service_user)
    evaluator = _Evaluator(reader, account, os.path.normpath(wrapper_dir))
    return tuple(dict.fromkeys(evaluator.run(reader.entries)))


# What `main` prints for each finding (see Finding.public).
_FINDING_TYPES = {
    "file": str,
    "line": int,
    "code": str,
    "severity": str,
    "command": str,
    "detail": str,
    "spec": str,
}


def findings_from_json(text: str) -> tuple[Finding, ...]:
    """Read what `main` printed (as root, for the agent); anything else is a ValueError."""
    document = json.loads(text)
    items = document.get("findings") if isinstance(document, dict) else None
    if not isinstance(items, list):
        raise ValueError("expected an object with a list of findings")
    findings = []
    for item in items:
        if not isinstance(item, dict) or set(item) != set(_FINDING_TYPES):
            raise ValueError(f"not a finding: {item!r:.200}")
        if not all(type(item[key]) is kind for key, kind in _FINDING_TYPES.items()):
            raise ValueError(f"a finding with a value of the wrong type: {item!r:.200}")
        findings.append(Finding(**{**item, "severity": Severity(item["severity"])}))
    return tuple(findings)


# --- reading files ---------------------------------------------------------------------------


class _ParseError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Member:
    """An item of a user, host or runas list."""

    name: str
    negated: bool


@dataclass(frozen=True, slots=True)
class _Cmnd:
    """An item of a command list: a path or regex with arguments, ALL, an alias or a built-in."""

    command: str
    args: str
    negated: bool
    tags: frozenset[str] = frozenset()

    @property
    def text(self) -> str:
        return f"{self.command} {self.args}".rstrip()


@dataclass(frozen=True, slots=True)
class _Directive:
    """An include line, remembered while what it includes is read."""

    file: Path
    line: int
    text: str


@dataclass(frozen=True, slots=True)
class _Spec:
    file: str
    line: int
    text: str
    users: tuple[_Member, ...]
    cmnds: tuple[_Cmnd, ...]


class _Reader:
    """Follows includes like sudo; collects aliases, user specs and the problems met."""

    def __init__(self) -> None:
        # Host and Runas aliases are parsed but not kept: those lists are not evaluated.
        self.user_aliases: dict[str, tuple[_Member, ...]] = {}
        self.cmnd_aliases: dict[str, tuple[_Cmnd, ...]] = {}
        # User specs and the problems met, in reading order.
        self.entries: list[_Spec | Finding] = []

    def read_file(self, path: Path, stack: tuple[_Directive, ...] = ()) -> None:
        """Read `path`; `stack` holds the include directives that led here, outermost first."""
        try:
            text = _read_text(path)
        except (OSError, ValueError) as exc:
            self.entries.append(_unreadable(path, exc))
            return
        for line, directive, body in _statements(text):
            if not directive:
                try:
                    self._statement(path, line, body)
                except _ParseError as exc:
                    self.entries.append(_unparsed(path, line, _cannot_parse(exc), body))
                continue
            here = _Directive(path, line, body)
            try:
                target = path.parent / _include_path(body)
            except _ParseError as exc:
                self.entries.append(_unparsed(path, line, _cannot_parse(exc), body))
                continue
            if len(stack) + 1 >= MAX_INCLUDE_DEPTH:
                self._refuse(here, f"includes nested deeper than {MAX_INCLUDE_DEPTH}; not followed")
            elif directive == "include":
                self._include(target, (*stack, here))
            else:
                self._include_dir(target, (*stack, here))

    def _include(self, path: Path, stack: tuple[_Directive, ...]) -> None:
        real = os.path.realpath(path)
        if any(os.path.realpath(d.file) == real for d in stack):
            self._refuse(stack[-1], f"include loop: {path} is already being read; not followed")
        else:
            self.read_file(path, stack)

    def _include_dir(self, directory: Path, stack: tuple[_Directive, ...]) -> None:
        """Each regular file, in sorted order, skipping the names sudo skips (`~`, `.`)."""
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return  # sudo ignores a missing include directory, so it grants nothing
        except (OSError, ValueError) as exc:
            self.entries.append(_unreadable(directory, exc))
            return
        for name in names:
            path = directory / name
            if not (name.endswith("~") or "." in name) and path.is_file():
                self._include(path, stack)

    def _refuse(self, directive: _Directive, reason: str) -> None:
        self.entries.append(_unparsed(directive.file, directive.line, reason, directive.text))

    def _statement(self, path: Path, line: int, body: str) -> None:
        if _DEFAULTS.match(body):
            return
        parser = _LineParser(body)
        alias = _ALIAS_LINE.match(body)
        if alias is not None:
            parser.pos = alias.end()
            self._alias_definitions(parser, alias.group(1))
            return
        users, cmnds = parser.user_spec()
        self.entries.append(_Spec(str(path), line, " ".join(body.split()), users, cmnds))

    def _alias_definitions(self, parser: _LineParser, kind: str) -> None:
        while True:
            name = parser.word()
            if not _ALIAS_NAME.fullmatch(name) or name == "ALL":
                raise parser.error(f"{name!r} is not an alias name")
            parser.expect("=")
            if kind in ("Cmnd_Alias", "Cmd_Alias"):
                self.cmnd_aliases[name] = parser.cmnd_list()
            elif kind == "User_Alias":
                self.user_aliases[name] = parser.members()
            else:
                parser.members()
            if parser.at_end():
                return
            parser.expect(":")


def _read_text(path: Path) -> str:
    # O_NONBLOCK so that a FIFO named by an include cannot hang the scan.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return handle.read().decode("utf-8", errors="replace")


def _statements(text: str) -> Iterator[tuple[int, str, str]]:
    """(first line number, include directive or "", text) per logical line, comments removed."""
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.split("\n"), 1):
        if not pending:
            start = number
            include = _INCLUDE.fullmatch(raw)
            if include is not None:
                yield number, "includedir" if include.group(1) else "include", raw.strip()
                continue
        line = _strip_comment(raw).rstrip(" \t\r")
        if _continues(line):
            pending.append(line[:-1])
            continue
        body = " ".join((*pending, line)).strip()
        pending = []
        if body:
            yield start, "", body
    if pending:  # the file ends in a continuation
        yield start, "", " ".join(pending).strip()


def _strip_comment(line: str) -> str:
    """Cut at `#`, unless escaped, quoted, or a user/group ID (`#1000`, `%#27`)."""
    quoted = escaped = False
    for index, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "#" and not quoted and not _ID_AFTER_HASH.match(line, index + 1):
            return line[:index]
    return line


def _continues(line: str) -> bool:
    """Whether the line ends in an unescaped backslash."""
    return (len(line) - len(line.rstrip("\\"))) % 2 == 1


def _include_path(directive: str) -> str:
    path = "".join(re.split(r"[ \t]+", directive.strip(), maxsplit=1)[1:])
    parser = _LineParser(_strip_comment(path))
    target = parser.word(stops="")
    if not parser.at_end():
        raise parser.error("unexpected text after the include path")
    if "\0" in target:
        raise parser.error("NUL in the include path")
    return target.replace("%h", socket.gethostname().split(".")[0])


class _LineParser:
    """Recursive descent over one logical line of the user-spec and alias grammar."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, reason: str) -> _ParseError:
        return _ParseError(f"column {self.pos + 1}: {reason}")

    def blank(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def peek(self) -> str:
        self.blank()
        return self.text[self.pos : self.pos + 1]

    def at_end(self) -> bool:
        return self.peek() == ""

    def take(self, char: str) -> bool:
        if self.peek() == char:
            self.pos += 1
            return True
        return False

    def expect(self, char: str) -> None:
        if not self.take(char):
            raise self.error(f"expected {char!r}")

    def word(self, stops: str = _WORD_STOPS, *, raw: bool = False) -> str:
        """A name, quoted or with backslash escapes; `raw` keeps the escapes (for patterns)."""
        self.blank()
        if self.peek() == '"':
            end = self.text.find('"', self.pos + 1)
            if end < 0:
                raise self.error("unterminated quote")
            value, self.pos = self.text[self.pos + 1 : end], end + 1
            return value
        out: list[str] = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in " \t" or char in stops:
                break
            if char == "\\" and self.pos + 1 < len(self.text):
                self.pos += 1
                out.append(char + self.text[self.pos] if raw else self.text[self.pos])
            else:
                out.append(char)
            self.pos += 1
        if not out:
            raise self.error("expected a name")
        return "".join(out)

    def bangs(self) -> bool:
        negated = False
        while self.take("!"):
            negated = not negated
        return negated

    def member(self) -> _Member:
        negated = self.bangs()
        prefix = "%:" if self.text.startswith("%:", self.pos) else ""
        self.pos += len(prefix)
        return _Member(prefix + self.word(), negated)

    def members(self) -> tuple[_Member, ...]:
        found = [self.member()]
        while self.take(","):
            found.append(self.member())
        return tuple(found)

    def user_spec(self) -> tuple[tuple[_Member, ...], tuple[_Cmnd, ...]]:
        """`users hosts = cmnds (: hosts = cmnds)*`; runas and tags reset at each `:`."""
        users = self.members()
        cmnds: list[_Cmnd] = []
        while True:
            self.members()
            self.expect("=")
            cmnds += self._cmnd_specs()
            if self.at_end():
                return users, tuple(cmnds)
            self.expect(":")

    def _cmnd_specs(self) -> list[_Cmnd]:
        tags: set[str] = set()
        found: list[_Cmnd] = []
        while True:
            self._runas()
            self._tags_and_options(tags)
            found.append(self.cmnd(frozenset(tags)))
            if not self.take(","):
                return found

    def _runas(self) -> None:
        if not self.take("("):
            return
        if self.peek() not in (":", ")"):
            self.members()
        if self.take(":") and self.peek() != ")":
            self.members()
        self.expect(")")

    def _tags_and_options(self, tags: set[str]) -> None:
        """Tags stay set for the commands that follow until their opposite appears."""
        while True:
            self.blank()
            match = _TAG_OR_OPTION.match(self.text, self.pos)
            if match is None:
                return
            name, separator = match.groups()
            if separator == ":" and name in _OPPOSITE_TAGS:
                self.pos = match.end()
                tags.discard(_OPPOSITE_TAGS[name])
                tags.add(name)
            elif separator == "=" and name in _OPTIONS:
                self.pos = match.end()
                self.word(stops=",:")
            else:
                return

    def cmnd_list(self) -> tuple[_Cmnd, ...]:
        found = [self.cmnd(frozenset())]
        while self.take(","):
            found.append(self.cmnd(frozenset()))
        return tuple(found)

    def cmnd(self, tags: frozenset[str]) -> _Cmnd:
        negated = self.bangs()
        self._digests()
        negated ^= self.bangs()
        command = self._regex() if self.peek() == "^" else self.word(stops=",:=", raw=True)
        return _Cmnd(command, self._args(), negated, tags)

    def _digests(self) -> None:
        """Skip `sha256:HEX[, sha512:HEX]`: a digest narrows a grant, never widens it."""
        while True:
            self.blank()
            match = _DIGEST.match(self.text, self.pos)
            if match is None:
                return
            self.pos = match.end()
            self.word(stops=",:")
            following = _NEXT_DIGEST.match(self.text, self.pos)
            if following is None:
                return
            self.pos = following.end()

    def _regex(self) -> str:
        """`^...$`, which may hold sudoers' separators; it ends at a `$` before one."""
        end = _REGEX_END.search(self.text, self.pos)
        if end is None:
            raise self.error("regular expression without a closing '$'")
        value, self.pos = self.text[self.pos : end.end()], end.end()
        return value

    def _args(self) -> str:
        if self.peek() in ("", ",", ":"):
            return ""
        if self.peek() == "^":
            return self._regex()
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in ",:=":
            self.pos += 2 if self.text[self.pos] == "\\" else 1
        return self.text[start : self.pos].strip()


def _unreadable(path: Path, exc: OSError | ValueError) -> Finding:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return Finding(
        str(path),
        0,
        "unreadable",
        Severity.HIGH,
        "",
        f"cannot read: {reason}; its grants are unknown",
    )


def _unparsed(path: Path, line: int, detail: str, text: str) -> Finding:
    return Finding(str(path), line, "unparsed", Severity.MEDIUM, "", detail, " ".join(text.split()))


def _cannot_parse(exc: _ParseError) -> str:
    return f"cannot parse ({exc}); a grant here would go unnoticed"


# --- deciding what applies and what is risky -------------------------------------------------


class _TooDeep(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Account:
    name: str
    uid: int | None
    gids: frozenset[int]

    @classmethod
    def lookup(cls, name: str) -> _Account:
        """Primary and supplementary groups; an unknown account matches by name and ALL only."""
        try:
            entry = pwd.getpwnam(name)
            return cls(name, entry.pw_uid, frozenset(os.getgrouplist(name, entry.pw_gid)))
        except (KeyError, ValueError, OSError):
            return cls(name, None, frozenset())

    def is_named(self, word: str) -> bool:
        """Whether a user-list word names this account. Netgroups and non-Unix groups never do."""
        if word.startswith(("%:", "+")):
            return False
        if word.startswith("%#"):
            return _number(word[2:]) in self.gids
        if word.startswith("%"):
            return _group_id(word[1:]) in self.gids
        if word.startswith("#"):
            return self.uid is not None and _number(word[1:]) == self.uid
        return word == self.name


def _number(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() else None


def _group_id(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except (KeyError, ValueError):  # ValueError: a NUL in the name
        return None


class _Evaluator:
    def __init__(self, reader: _Reader, account: _Account, wrapper_dir: str) -> None:
        self.user_aliases = reader.user_aliases
        self.cmnd_aliases = reader.cmnd_aliases
        self.account = account
        self.wrapper_dir = wrapper_dir

    def run(self, entries: list[_Spec | Finding]) -> Iterator[Finding]:
        for spec in entries:
            if isinstance(spec, Finding):
                yield spec
                continue
            try:
                applies = self._list_matches(spec.users, 0)
                grants = list(self._expand(spec.cmnds, False, "", 0)) if applies else []
            except _TooDeep:
                yield _unparsed(
                    Path(spec.file),
                    spec.line,
                    f"aliases nested deeper than {MAX_ALIAS_DEPTH} or in a loop; entry not checked",
                    spec.text,
                )
                continue
            for cmnd, via in grants:
                verdict = self._classify(cmnd)
                if verdict is not None:
                    code, severity, detail = verdict
                    via_text = f" (via Cmnd_Alias {via})" if via else ""
                    yield Finding(
                        spec.file,
                        spec.line,
                        code,
                        severity,
                        cmnd.text,
                        detail + via_text,
                        spec.text,
                    )

    def _list_matches(self, members: tuple[_Member, ...], depth: int) -> bool | None:
        """sudo's rule: the last member that matches decides, `!` inverting it."""
        result = None
        for member in members:
            hit = self._member_matches(member.name, depth)
            if hit is not None:
                result = hit != member.negated
        return result

    def _member_matches(self, name: str, depth: int) -> bool | None:
        if name == "ALL":
            return True
        if _ALIAS_NAME.fullmatch(name):
            alias = self.user_aliases.get(name)
            if alias is None:
                return None
            if depth >= MAX_ALIAS_DEPTH:
                raise _TooDeep
            return self._list_matches(alias, depth + 1)
        return True if self.account.is_named(name) else None

    def _expand(
        self, cmnds: tuple[_Cmnd, ...], negated: bool, via: str, depth: int
    ) -> Iterator[tuple[_Cmnd, str]]:
        """The granted (not `!`-ed) commands, aliases replaced by their members."""
        for cmnd in cmnds:
            inverted = negated != cmnd.negated
            members = self.cmnd_aliases.get(cmnd.command)
            if members is not None:
                if depth >= MAX_ALIAS_DEPTH:
                    raise _TooDeep
                inherited = tuple(_Cmnd(m.command, m.args, m.negated, cmnd.tags) for m in members)
                yield from self._expand(inherited, inverted, via or cmnd.command, depth + 1)
            elif not inverted and (
                cmnd.command == "ALL" or not _ALIAS_NAME.fullmatch(cmnd.command)
            ):
                yield cmnd, via  # an undefined alias grants nothing

    def _classify(self, cmnd: _Cmnd) -> tuple[str, Severity, str] | None:
        command = cmnd.command
        if command == "ALL":
            if "NOPASSWD" in cmnd.tags:
                return "nopasswd_all", Severity.CRITICAL, "any command, no password asked"
            return "all_commands", Severity.HIGH, "any command, once a password is given"
        if self._is_wrapper(command):
            if "SETENV" not in cmnd.tags:
                return None
            reason = "SETENV lets the caller pass BASH_ENV or LD_PRELOAD to a wrapper run as root"
            return "setenv", Severity.CRITICAL, reason
        reachable = _reachable(command)
        if reachable is None:
            reason = "a pattern this probe cannot evaluate; review it by hand"
            return "outside_wrappers", Severity.MEDIUM, reason
        runs = "runs" if reachable == [command] else "matches"
        for path in reachable:
            if _is_shell(path):
                reason = f"{runs} {path}: a shell, or a program that runs any other"
                return "shell", Severity.CRITICAL, reason
        for path in reachable:
            if _basename(path) in WRAPPED_TOOLS:
                reason = f"{runs} {path}: {_basename(path)} without the wrapper's checks"
                return "bare_tool", Severity.HIGH, reason
        return (
            "outside_wrappers",
            Severity.MEDIUM,
            f"not a host-agent wrapper in {self.wrapper_dir}",
        )

    def _is_wrapper(self, command: str) -> bool:
        directory, _, name = command.rpartition("/")
        return (
            directory == self.wrapper_dir
            and name.startswith(WRAPPER_PREFIX)
            and len(name) > len(WRAPPER_PREFIX)
            and _GLOB_META.search(command) is None
        )


def _basename(path: str) -> str:
    return path.rpartition("/")[2]


def _is_shell(path: str) -> bool:
    name = _basename(path)
    return name in SHELLS or name.startswith("python")


def _reachable(command: str) -> list[str] | None:
    """The shell or tool paths a command can run: itself, or what its pattern matches.

    None when the pattern cannot be evaluated here.
    """
    if command.startswith("/") and not command.endswith("/") and not _GLOB_META.search(command):
        return [command]
    if command.startswith("^"):
        regex = _POSIX_CLASS.sub(_posix_class, command)
    elif command.startswith("/"):
        # A directory grants every file directly in it.
        glob = _SUDOERS_ESCAPE.sub(r"\1", command + "*" if command.endswith("/") else command)
        regex = _glob_regex(glob)
    else:
        return []  # sudoedit, list: built-ins, not programs
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Python's re warns about some POSIX syntax
            pattern = re.compile(regex)
    except re.error:
        return None
    return [path for path in _CANDIDATES if pattern.fullmatch(path)]


def _posix_class(match: re.Match[str]) -> str:
    return _POSIX_CLASSES.get(match.group(1), _ANY_CHARACTER)


def _glob_regex(pattern: str) -> str:
    """fnmatch(3) with FNM_PATHNAME, as sudo matches command paths: wildcards stop at `/`."""
    out: list[str] = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "\\" and index + 1 < len(pattern):
            index += 1
            out.append(re.escape(pattern[index]))
        elif char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and (end := _bracket_end(pattern, index)) > 0:
            out.append(_bracket(pattern[index + 1 : end]))
            index = end
        else:
            out.append(re.escape(char))
        index += 1
    return "".join(out)


def _bracket_end(pattern: str, start: int) -> int:
    index = start + 1
    if pattern[index : index + 1] in ("!", "^"):
        index += 1
    if pattern[index : index + 1] == "]":
        index += 1
    while index < len(pattern):
        if pattern.startswith("[:", index) and (close := pattern.find(":]", index + 2)) > 0:
            index = close + 2
        elif pattern[index] == "]":
            return index
        else:
            index += 1
    return -1


def _bracket(body: str) -> str:
    negated = body[:1] in ("!", "^")
    if negated:
        body = body[1:]
    out: list[str] = []
    index = 0
    while index < len(body):
        posix = _POSIX_CLASS.match(body, index)
        if posix is not None:
            out.append(_posix_class(posix))
            index = posix.end()
            continue
        # `-` makes a range only between two characters, as in fnmatch(3).
        is_range = body[index] == "-" and 0 < index < len(body) - 1
        out.append("-" if is_range else re.escape(body[index]))
        index += 1
    return f"[^/{''.join(out)}]" if negated else f"[{''.join(out)}]"


def main(argv: list[str] | None = None) -> int:
    """`python -m host_agent.sudoers_probe SUDOERS USER WRAPPER_DIR`: the findings as JSON.

    Run as root by the host-agent-sudoers wrapper for an agent that cannot read sudoers.
    """
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python -m host_agent.sudoers_probe SUDOERS USER WRAPPER_DIR", file=sys.stderr)
        return 64
    findings = scan(Path(args[0]), args[1], Path(args[2]))
    json.dump({"findings": [finding.public() for finding in findings]}, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
