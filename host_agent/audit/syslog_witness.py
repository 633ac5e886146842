"""A remote syslog collector as a checkpoint witness: RFC 5424 messages over TLS
(RFC 5425, octet-counted frames), the kind of trail rsyslog or syslog-ng keeps on
another machine, out of the host's reach."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

from host_agent.audit.chain import stamp
from host_agent.audit.checkpoint import Checkpoint
from host_agent.audit.witness import WitnessError

TIMEOUT_SECONDS = 10.0
# authpriv.notice: where security records go, kept apart from the host's chatter.
_PRI = 10 * 8 + 5
# The note's lines in one message line (a frame may hold newlines, but collectors
# keep a message per line); no note line contains it.
SEPARATOR = " | "


class SyslogWitness:
    name = "syslog"

    def __init__(
        self,
        address: str,
        ca: Path,
        cert: Path | None = None,
        key: Path | None = None,
        hostname: str | None = None,
    ) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.hostname = hostname or socket.gethostname()
        self._context = ssl.create_default_context(cafile=str(ca))
        if cert is not None:
            self._context.load_cert_chain(str(cert), str(key) if key else None)

    def message(self, note: str) -> bytes:
        """One RFC 5424 message: APP-NAME host-agent, MSGID checkpoint, no structured
        data (its IDs are for registered enterprises), the note as MSG."""
        text = SEPARATOR.join(note.rstrip("\n").split("\n"))
        header = f"<{_PRI}>1 {stamp(time.time())} {self.hostname} host-agent - checkpoint"
        return f"{header} - {text}".encode()

    def ship(self, note: str, checkpoint: Checkpoint) -> None:
        payload = self.message(note)
        frame = str(len(payload)).encode() + b" " + payload
        try:
            with (
                socket.create_connection((self.host, self.port), TIMEOUT_SECONDS) as raw,
                self._context.wrap_socket(raw, server_hostname=self.host) as tls,
            ):
                tls.sendall(frame)
                tls.unwrap()  # close_notify: the collector has had it all
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise WitnessError(f"syslog {self.host}:{self.port}: {exc}") from exc


def note_from_message(text: str) -> str:
    """The note back from a collector's stored message (its MSG part)."""
    return text.replace(SEPARATOR, "\n") + "\n"
