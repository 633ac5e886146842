"""The root side of `host-agent approve`: the password never leaves this process.

Started by the host-agent-approve wrapper, which an approver runs through
sudo (members of approvers_group may run exactly that). The approver is
sudo's SUDO_UID, never an argument. The password comes from the approver's
terminal (or their own stdin), is checked with PAM here, as root, one check at
a time, with pam_faillock counting failures; only then is the agent told,
over its socket, which approver decided what. The socket's listener is checked
before a byte is sent: the service account, or root in a root-only directory.

    python -m host_agent.approvals.helper GROUP SERVICE_USER SOCKET PAM_SERVICE \\
        approve|deny REFERENCE [--password-stdin] [--json]

The first four come from the wrapper (root-owned wrappers.conf), the rest from
the approver.
"""

from __future__ import annotations

import argparse
import fcntl
import grp
import os
import pwd
import sys
import termios
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pam
from host_agent.approvals import display
from host_agent.approvals.local_client import (
    Connection,
    LocalApprovalUnavailable,
    agent_listener_check,
)
from host_agent.cli.common import EXIT_FAILED, EXIT_UNAVAILABLE, EXIT_USAGE

MAX_PASSWORD_BYTES = 1024
# Only root can create files in /run: no one else can pre-create or hold this lock.
LOCK_PATH = Path("/run/host-agent-approve.lock")


class Refused(Exception):
    """The helper refuses before it asks the agent anything."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Settings:
    """From the root-owned wrappers.conf, through the wrapper's argv."""

    group: str
    service_user: str
    socket: Path
    pam_service: str


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 4:
        print("host-agent-approve: run through the host-agent-approve wrapper", file=sys.stderr)
        return EXIT_USAGE
    settings = Settings(args[0], args[1], Path(args[2]), args[3])
    request = _parser().parse_args(args[4:])
    try:
        service_uid = _uid_of(settings.service_user)
        approver = approver_from_sudo(settings, service_uid)
        # Connected and checked before a password is typed: never to a dead or fake agent.
        connection = Connection(settings.socket, check=agent_listener_check(service_uid))
        try:
            password = read_password(request.password_stdin, approver)
            check_password(approver, password, settings.pam_service)
        except Refused as exc:
            connection.ask({"action": "refused", "approver": approver, "code": exc.code})
            raise
        reply = connection.ask(
            {"action": request.verdict, "token": request.reference, "approver": approver}
        )
    except Refused as exc:
        print(f"host-agent: refused: {exc.message} ({exc.code})", file=sys.stderr)
        return EXIT_FAILED
    except LocalApprovalUnavailable as exc:
        print(f"host-agent: {display.clean(exc)}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:  # the approver gave up at the prompt: nothing was decided
        print("host-agent: interrupted; nothing decided", file=sys.stderr)
        return EXIT_FAILED
    return display.report(reply, as_json=request.json)


def _uid_of(service_user: str) -> int:
    try:
        return pwd.getpwnam(service_user).pw_uid
    except KeyError:
        raise LocalApprovalUnavailable(f"no service account {service_user!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="host-agent-approve")
    parser.add_argument("verdict", choices=("approve", "deny"))
    parser.add_argument("reference", metavar="TOKEN")
    parser.add_argument("--password-stdin", action="store_true")
    parser.add_argument("--json", action="store_true")
    return parser


def approver_from_sudo(settings: Settings, service_uid: int) -> str:
    """The approver is who ran sudo: SUDO_UID, which sudo sets and the caller cannot."""
    raw = os.environ.get("SUDO_UID", "")
    if not raw.isdigit():
        raise Refused("not_an_approver", "run through sudo, as the approver")
    uid = int(raw)
    try:
        entry = pwd.getpwuid(uid)
        group = grp.getgrnam(settings.group)
    except KeyError:
        raise Refused("not_an_approver", f"uid {uid} is not an approver") from None
    if uid in (0, service_uid) or group.gr_gid not in os.getgrouplist(entry.pw_name, entry.pw_gid):
        raise Refused("not_an_approver", f"only members of the group {settings.group} may approve")
    return entry.pw_name


def read_password(from_stdin: bool, user: str) -> str:
    """One line from the approver's stdin, or from their terminal without echo."""
    if from_stdin:
        data = sys.stdin.buffer.readline(MAX_PASSWORD_BYTES + 2)
    else:
        data = _read_terminal(f"Password for {user}: ".encode())
    data = data.removesuffix(b"\n")
    try:
        password = data.decode("utf-8")
    except UnicodeDecodeError:
        password = ""
    if not password or len(data) > MAX_PASSWORD_BYTES or "\0" in password or "\n" in password:
        raise Refused("invalid_password", "the password must be one line of UTF-8")
    return password


def _read_terminal(prompt: bytes) -> bytes:
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        raise Refused(
            "invalid_password", "no terminal to read the password from (use --password-stdin)"
        ) from None
    try:
        saved = termios.tcgetattr(fd)
        quiet: list[Any] = list(saved)
        quiet[3] &= ~termios.ECHO
        # Echo off before the prompt: what is typed after it is never shown (nor flushed).
        termios.tcsetattr(fd, termios.TCSAFLUSH, quiet)
        try:
            os.write(fd, prompt)
            data = b""
            while not data.endswith(b"\n") and len(data) <= MAX_PASSWORD_BYTES:
                chunk = os.read(fd, MAX_PASSWORD_BYTES + 2 - len(data))
                if not chunk:
                    break
                data += chunk
        finally:
            termios.tcsetattr(fd, termios.TCSAFLUSH, saved)
            os.write(fd, b"\n")
        return data
    finally:
        os.close(fd)


def check_password(user: str, password: str, service: str) -> None:
    """PAM as root, one check at a time on this host, so pam_faillock counts every guess."""
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        # python-pam ships no types that mypy can follow.
        if pam.authenticate(user, password, service=service, resetcreds=False):  # type: ignore[attr-defined]
            return
    finally:
        os.close(fd)
    raise Refused("authentication_failed", "wrong password, or locked after too many failures")


if __name__ == "__main__":
    sys.exit(main())
