"""`host-agent approve` on the host: a Unix socket for people, not programs.

Who is asking comes from the kernel (SO_PEERCRED), never from the request.
Members of `approvers_group` may list open approvals here. Decisions come
only from root: the host-agent-approve helper, which an approver runs through
sudo, checks their password with PAM itself and then tells this socket which
approver decided what. No password ever reaches this unprivileged service
(threat model, invariant 11). One JSON line in, one JSON line out.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from host_agent import strict_json
from host_agent.approvals.manager import ApprovalManager
from host_agent.approvals.model import Approver
from host_agent.approvals.peer import Peer, peer_of
from host_agent.errors import ApprovalError, HostAgentError

log = logging.getLogger(__name__)

# "refused": the helper reports a failed password check, for the audit log.
ACTIONS = ("approve", "deny", "list", "refused")
REFUSAL_CODES = ("authentication_failed", "invalid_password")
MAX_REQUEST_BYTES = 8192
READ_TIMEOUT_SECONDS = 120.0  # the helper connects before its approver types the password
MAX_CONNECTIONS = 8
STOP_GRACE_SECONDS = 5.0


class LocalSocketError(HostAgentError):
    """The approval socket cannot be created safely where the config says."""

    code = "local_socket_unsafe"


@dataclass(frozen=True, slots=True)
class LocalRequest:
    action: str
    reference: str  # an approval token, or (on the host only) an approval id
    approver: str  # the approver the root helper authenticated ("" from anyone else)
    code: str  # why the helper refused ("refused" only)


class LocalApprovals:
    """Serves the approval socket for one ApprovalManager."""

    def __init__(self, manager: ApprovalManager, group: str) -> None:
        self.manager = manager
        self.group = group
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()

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
        if peer.uid == 0:
            return await self._answer_helper(peer, reader)
        user = peer.user
        approver = Approver("pam", user if user is not None else f"#{peer.uid}")
        seen: dict[str, Any] = {"peer_uid": peer.uid, "peer_pid": peer.pid}
        if user is None or not self._is_member(user):
            await self.manager.refuse(approver, "not_an_approver", **seen)
            raise _not_an_approver(self.group)
        request = await self._read(reader, approver, seen)
        if request.action != "list":
            # Only root's helper has checked a password; a member's own word is not enough.
            await self.manager.refuse(approver, "decision_needs_helper", **seen)
            raise ApprovalError(
                403,
                "decision_needs_helper",
                "decisions come only from the root helper: run `host-agent approve TOKEN`",
                field="action",
            )
        pending = await self.manager.open_approvals()
        return {"ok": True, "approvals": [approval.public() for approval in pending]}

    async def _answer_helper(self, peer: Peer, reader: asyncio.StreamReader) -> dict[str, Any]:
        """Root's helper, which authenticated the approver it names (or says why not)."""
        seen: dict[str, Any] = {"peer_uid": peer.uid, "peer_pid": peer.pid}
        request = await self._read(reader, Approver("pam", "root"), seen)
        if request.action == "list":
            await self.manager.refuse(Approver("pam", "root"), "not_an_approver", **seen)
            raise _not_an_approver(self.group)
        approver = Approver("pam", request.approver)
        seen["approver_uid"] = _uid_of(request.approver)
        if not self._is_member(request.approver):  # the helper checked; the group may have changed
            await self.manager.refuse(approver, "not_an_approver", **seen)
            raise _not_an_approver(self.group)
        if request.action == "refused":
            await self.manager.refuse(approver, request.code, **seen)
            return {"ok": True, "recorded": request.code}
        approval = await self.manager.decide(
            request.reference, request.action == "approve", approver, **seen
        )
        return {"ok": True, "approval": approval.public()}

    async def _read(
        self, reader: asyncio.StreamReader, approver: Approver, seen: dict[str, Any]
    ) -> LocalRequest:
        try:
            return await _read_request(reader, from_helper=seen["peer_uid"] == 0)
        except ApprovalError as exc:
            await self.manager.refuse(approver, exc.code, **seen)
            raise

    def _is_member(self, user: str) -> bool:
        """Primary or supplementary member, read now: a change to the group applies at once."""
        try:
            group = grp.getgrnam(self.group)
            entry = pwd.getpwnam(user)
        except KeyError:
            return False
        return group.gr_gid in os.getgrouplist(user, entry.pw_gid)


def _not_an_approver(group: str) -> ApprovalError:
    return ApprovalError(
        403, "not_an_approver", f"only members of the group {group} may approve here"
    )


def _uid_of(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


async def _read_request(reader: asyncio.StreamReader, *, from_helper: bool) -> LocalRequest:
    try:
        line = await asyncio.wait_for(reader.readline(), READ_TIMEOUT_SECONDS)
    except TimeoutError:
        raise _invalid("request", "no request line in time") from None
    except (ValueError, asyncio.LimitOverrunError):
        raise _invalid("request", f"longer than {MAX_REQUEST_BYTES} bytes") from None
    if len(line) > MAX_REQUEST_BYTES or not line.endswith(b"\n"):
        raise _invalid("request", f"one line of at most {MAX_REQUEST_BYTES} bytes")
    try:
        document = strict_json.loads(line)
    except strict_json.NotJson:
        raise _invalid("request", "not JSON") from None
    if not isinstance(document, dict):
        raise _invalid("request", "must be a JSON object")
    action = document.get("action")
    if action not in ACTIONS:
        raise _invalid("action", f"must be one of {', '.join(ACTIONS)}")
    if action == "list" or not from_helper:
        return LocalRequest(action, "", "", "")
    approver = document.get("approver")
    if not isinstance(approver, str) or not 0 < len(approver) <= 32:
        raise _invalid("approver", "the user name the helper authenticated")
    if action == "refused":
        code = document.get("code")
        if code not in REFUSAL_CODES:
            raise _invalid("code", f"must be one of {', '.join(REFUSAL_CODES)}")
        return LocalRequest(action, "", approver, code)
    reference = document.get("token")
    if not isinstance(reference, str) or not 0 < len(reference) <= 64:
        raise _invalid("token", "an approval token or approval id")
    return LocalRequest(action, reference, approver, "")


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
    else: otherwise another user could put their own socket there and answer
    in the agent's name. Access is decided per connection (peer check).
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
