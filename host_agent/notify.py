"""Telling the service manager what the agent is doing (systemd's sd_notify protocol).

`Type=notify` units wait for READY=1, and RELOADING=1 / STOPPING=1 let
`systemctl` show reloads and stops as they happen. Without $NOTIFY_SOCKET
(no systemd, or tests) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


def notify(*states: str) -> bool:
    """Send `states` (e.g. "READY=1") to $NOTIFY_SOCKET; False if there is none or it failed."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    message = "\n".join(states).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as exc:
        log.warning("cannot notify the service manager at %s: %s", address, exc.strerror)
        return False
    return True


def reloading() -> bool:
    """RELOADING=1 with the monotonic timestamp newer systemd versions ask for."""
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
