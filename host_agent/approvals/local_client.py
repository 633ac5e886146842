"""Talking to the agent's approval socket: make sure it is the agent, then ask.

No password ever travels on this socket. An approver lists open approvals
here directly; decisions come only from the root helper (approvals/helper.py),
which checked the password itself. Either side first checks who listens: a
listener that root or the socket's owner started, in a directory no one else
can write to, and for the root helper only the service account or root.
"""

from __future__ import annotations

import json
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from host_agent import strict_json
from host_agent.approvals.peer import Peer, peer_of
from host_agent.errors import HostAgentError
from host_agent.trusted_path import changeable_by_others

DEFAULT_SOCKET = Path("/run/host-agent/approve.sock")
MAX_REPLY_BYTES = 4 * 2**20
TIMEOUT_SECONDS = 60.0


class LocalApprovalUnavailable(HostAgentError):
    """The agent cannot be reached, or what listens at the socket is not trusted."""

    code = "local_approval_unavailable"


class Connection:
    """One request/reply exchange with the agent over its approval socket."""

    def __init__(self, path: Path, check: Callable[[Path, Peer], None] | None = None) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(TIMEOUT_SECONDS)
        try:
            self._sock.connect(str(path))
        except OSError as exc:
            self._sock.close()
            raise LocalApprovalUnavailable(
                f"cannot reach the agent at {path}: {exc.strerror} "
                "(is it running, with [approval] local_socket set to this path?)"
            ) from None
        try:
            (check or check_listener)(path, peer_of(self._sock))
        except BaseException:
            self._sock.close()
            raise

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request; the agent answers once and closes."""
        try:
            self._sock.sendall(json.dumps(request).encode() + b"\n")
            reply = self._read_line()
        except OSError as exc:
            raise LocalApprovalUnavailable(f"{self.path}: {exc.strerror or exc}") from None
        finally:
            self._sock.close()
        try:
            document = strict_json.loads(reply)
        except strict_json.NotJson:
            raise LocalApprovalUnavailable(f"{self.path}: the reply is not JSON") from None
        if not isinstance(document, dict) or not isinstance(document.get("ok"), bool):
            raise LocalApprovalUnavailable(f"{self.path}: unexpected reply")
        return document

    def close(self) -> None:
        self._sock.close()

    def _read_line(self) -> bytes:
        received = bytearray()
        while not received.endswith(b"\n"):
            chunk = self._sock.recv(65536)
            if not chunk:
                break
            received += chunk
            if len(received) > MAX_REPLY_BYTES:
                raise LocalApprovalUnavailable(f"{self.path}: reply too large")
        return bytes(received)


def check_listener(path: Path, peer: Peer) -> None:
    """Refuse a socket that someone other than root or the agent could have put there."""
    try:
        node = path.lstat()
        changeable = changeable_by_others(path, (0, peer.uid))
    except OSError as exc:
        raise LocalApprovalUnavailable(f"{path}: {exc.strerror}") from None
    problem = None
    if not stat.S_ISSOCK(node.st_mode):
        problem = "is not a socket"
    elif node.st_uid != peer.uid:
        problem = f"is served by uid {peer.uid}, who did not create it"
    elif changeable is not None:
        problem = f"is below {changeable}, which others can change"
    if problem is not None:
        raise LocalApprovalUnavailable(f"refusing to talk to {path}: it {problem}")


def agent_listener_check(service_uid: int) -> Callable[[Path, Peer], None]:
    """The root helper's check: the listener is the service account, or root in a root-only
    directory (check_listener trusts only root's directories when the peer is root), so the
    service account cannot point root at another program's socket and be believed."""

    def check(path: Path, peer: Peer) -> None:
        if peer.uid not in (service_uid, 0):
            raise LocalApprovalUnavailable(
                f"refusing to talk to {path}: uid {peer.uid} listens, not the agent"
            )
        check_listener(path, peer)

    return check
