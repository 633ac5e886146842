"""`host-agent approve` on the host: a Unix socket for people, not programs.

Who is asking comes from the kernel (SO_PEERCRED), never from the request.
The caller must be in `approvers_group`, and to approve or deny must prove
with their password that they are that person: PAM, checked as root by the
host-agent-pam wrapper because this unprivileged service cannot. One JSON
line in, one JSON line out.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import logging
import os
import pwd
import socket
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from host_agent.approvals.manager import ApprovalManager
from host_agent.approvals.model import Approver
from host_agent.errors import ApprovalError, HostAgentError, RunnerError
from host_agent.runner import Runner

log = logging.getLogger(__name__)

ACTIONS = ("approve", "deny", "list")
MAX_REQUEST_BYTES = 8192
MAX_PASSWORD_BYTES = 1024
# A person types a password after connecting; a program that holds the line longer is cut off.
READ_TIMEOUT_SECONDS = 120.0
MAX_CONNECTIONS = 8
STOP_GRACE_SECONDS = 5.0
# host-agent-pam's exit codes (see the wrapper).
_PAM_OK, _PAM_FAILED, _PAM_BAD_INPUT, _PAM_NOT_MEMBER = 0, 65, 64, 77


class LocalSocketError(HostAgentError):
    """The approval socket cannot be created safely where the config says."""

    code = "local_socket_unsafe"


@dataclass(frozen=True, slots=True)
class Peer:
    """The process at the other end, as the kernel reports it."""

    pid: int
    uid: int
    gid: int

    @property
    def user(self) -> str | None:
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return None


def peer_of(sock: socket.socket) -> Peer:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid)


@dataclass(frozen=True, slots=True)
class LocalRequest:
    action: str
    reference: str  # an approval token, or (on the host only) an approval id
    password: str


class LocalApprovals:
    """Serves the approval socket for one ApprovalManager."""

    def __init__(self, manager: ApprovalManager, runner: Runner, group: str) -> None:
        self.manager = manager
        self.runner = runner
        self.group = group
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        # One password check at a time: with PAM's delay on failure, guessing stays slow.
        self._pam = asyncio.Lock()

    async def serve(self, path: Path) -> None:
        """Listen on `path`; the directory must be one only root or this service can change."""
        try:
            grp.getgrnam(self.group)
        except KeyError:
            raise LocalSocketError(
                f"[approval] approvers_group {self.group!r} does not exist"
            ) from None
        self._server = await asyncio.start_unix_server(
            self._connection, sock=bind(path), limit=MAX_REQUEST_BYTES
        )

    async def stop(self, path: Path) -> None:
        """Stop listening, let sessions in progress answer (briefly), remove the socket."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await asyncio.sleep(0)  # sessions accepted but not yet started get to start
        if self._sessions:
            _, unfinished = await asyncio.wait(self._sessions, timeout=STOP_GRACE_SECONDS)
            for session in unfinished:
                session.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)
        path.unlink(missing_ok=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = asyncio.current_task()
        if session is not None:
            self._sessions.add(session)
            session.add_done_callback(self._sessions.discard)
        try:
            try:
                if self._slots.locked():
                    raise ApprovalError(503, "busy", "too many approval sessions; try again")
                async with self._slots:
                    reply = await self._answer(peer_of(writer.get_extra_info("socket")), reader)
            except ApprovalError as exc:
                reply = {"ok": False, "error": _error(exc)}
            except Exception:
                log.exception("local approval failed")
                reply = {
                    "ok": False,
                    "error": {"code": "internal_error", "message": "internal error"},
                }
            with contextlib.suppress(ConnectionError):
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        finally:  # also when the agent stops mid-request
            writer.close()

    async def _answer(self, peer: Peer, reader: asyncio.StreamReader) -> dict[str, Any]:
        user = peer.user
        approver = Approver("pam", user if user is not None else f"#{peer.uid}")
        seen: dict[str, Any] = {"peer_uid": peer.uid, "peer_pid": peer.pid}
        if user is None or not self._is_member(user):
            await self.manager.refuse(approver, "not_an_approver", **seen)
            raise ApprovalError(
                403, "not_an_approver", f"only members of the group {self.group} may approve here"
            )
        try:
            request = await _read_request(reader)
        except ApprovalError as exc:
            await self.manager.refuse(approver, exc.code, **seen)
            raise
        if request.action == "list":
            pending = await self.manager.open_approvals()
            return {"ok": True, "approvals": [approval.public() for approval in pending]}
        await self._authenticate(approver, request.password, seen)
        approval = await self.manager.decide(
            request.reference, request.action == "approve", approver, **seen
        )
        return {"ok": True, "approval": approval.public()}

    def _is_member(self, user: str) -> bool:
        """Primary or supplementary member, read now: a change to the group applies at once."""
        try:
            group = grp.getgrnam(self.group)
            entry = pwd.getpwnam(user)
        except KeyError:
            return False
        return group.gr_gid in os.getgrouplist(user, entry.pw_gid)

    async def _authenticate(self, approver: Approver, password: str, seen: dict[str, Any]) -> None:
        async with self._pam:
            try:
                result = await self.runner.check_password(approver.name, password)
            except RunnerError as exc:
                log.error("the PAM wrapper could not run: %s", exc)
                refusal: ApprovalError | None = _pam_unavailable()
            else:
                refusal = _pam_refusal(result.exit_code)
                if refusal is not None and refusal.code == "pam_unavailable":
                    log.error("the PAM wrapper failed (%d): %s", result.exit_code, result.stderr)
        if refusal is not None:
            await self.manager.refuse(approver, refusal.code, **seen)
            raise refusal


def _pam_refusal(exit_code: int) -> ApprovalError | None:
    """What host-agent-pam's exit code means for the person asking."""
    if exit_code == _PAM_OK:
        return None
    if exit_code == _PAM_FAILED:
        return ApprovalError(401, "authentication_failed", "wrong password", field="password")
    if exit_code == _PAM_BAD_INPUT:
        return ApprovalError(
            400, "invalid_password", "the password must be one line of UTF-8", field="password"
        )
    if exit_code == _PAM_NOT_MEMBER:
        return ApprovalError(403, "not_an_approver", "not a member of the approvers group")
    return _pam_unavailable()


def _pam_unavailable() -> ApprovalError:
    return ApprovalError(
        503, "pam_unavailable", "the password cannot be checked now; see the agent's log"
    )


async def _read_request(reader: asyncio.StreamReader) -> LocalRequest:
    try:
        line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT_SECONDS)
    except TimeoutError:
        raise _invalid("request", "no request line in time") from None
    except (ValueError, asyncio.LimitOverrunError):
        raise _invalid("request", f"longer than {MAX_REQUEST_BYTES} bytes") from None
    if len(line) > MAX_REQUEST_BYTES or not line.endswith(b"\n"):
        raise _invalid("request", f"one line of at most {MAX_REQUEST_BYTES} bytes")
    try:
        document = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _invalid("request", "not JSON") from None
    if not isinstance(document, dict):
        raise _invalid("request", "must be a JSON object")
    action = document.get("action")
    if action not in ACTIONS:
        raise _invalid("action", f"must be one of {', '.join(ACTIONS)}")
    if action == "list":
        return LocalRequest("list", "", "")
    reference, password = document.get("token"), document.get("password")
    if not isinstance(reference, str) or not 0 < len(reference) <= 64:
        raise _invalid("token", "an approval token or approval id")
    if not isinstance(password, str) or not 0 < len(password.encode()) <= MAX_PASSWORD_BYTES:
        raise _invalid("password", f"a string of 1 to {MAX_PASSWORD_BYTES} bytes")
    return LocalRequest(action, reference, password)


def _invalid(field: str, message: str) -> ApprovalError:
    return ApprovalError(400, "invalid_request", f"{field}: {message}", field=field)


def _error(exc: ApprovalError) -> dict[str, Any]:
    error = {"code": exc.code, "message": exc.message}
    if exc.field is not None:
        error["field"] = exc.field
    return error


def bind(path: Path) -> socket.socket:
    """A listening socket at `path`, connectable by anyone who can reach the directory.

    The directory must be owned by root or this service and writable by no one
    else: otherwise another user could put their own socket there and collect
    the passwords people type. Access is decided per connection (peer check).
    """
    directory = path.parent
    try:
        info = directory.stat()
    except OSError as exc:
        raise LocalSocketError(f"{directory}: {exc.strerror} (create it at install)") from None
    if info.st_uid not in (0, os.geteuid()) or info.st_mode & 0o022:
        raise LocalSocketError(
            f"{directory} must be owned by root or the service account and not group/world-writable"
        )
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise LocalSocketError(f"{path} exists and is not a socket; refusing to replace it")
        path.unlink()  # left by an agent that did not stop cleanly
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        # Anyone who can reach the directory may connect; each connection is then checked.
        os.chmod(path, 0o666)  # noqa: S103
        sock.listen(MAX_CONNECTIONS)
    except OSError as exc:
        sock.close()
        raise LocalSocketError(f"cannot listen on {path}: {exc.strerror}") from None
    return sock
