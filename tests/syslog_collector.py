"""A real rsyslog, listening for RFC 5424 over TLS (imtcp with the gtls driver) on a
loopback port with the test PKI's server certificate, writing each message's MSG
part to a file: the kind of collector an operator ships audit checkpoints to."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from host_agent import certs
from tests.support import Pki, free_port


@dataclass
class Collector:
    port: int
    received: Path
    config: Path
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def messages(self) -> list[str]:
        """Each message's MSG part, as the collector stored it."""
        if not self.received.exists():
            return []
        return [line.strip() for line in self.received.read_text().splitlines()]

    def start(self) -> None:
        rsyslogd = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
        self.process = subprocess.Popen(
            [rsyslogd, "-n", "-f", str(self.config), "-i", str(self.directory / "rsyslogd.pid")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            listening = subprocess.run(
                ["ss", "-Hltn", f"sport = :{self.port}"], capture_output=True
            )
            if listening.stdout.strip():
                return
            time.sleep(0.1)
        raise AssertionError("rsyslogd never listened")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(20)
        self.process = None


def _config(pki: Pki, directory: Path, port: int, received: Path) -> str:
    return f"""
global(
  workDirectory="{directory}"
  DefaultNetstreamDriver="gtls"
  DefaultNetstreamDriverCAFile="{pki.ca}"
  DefaultNetstreamDriverCertFile="{pki.directory / certs.SERVER_CERT}"
  DefaultNetstreamDriverKeyFile="{pki.directory / certs.SERVER_KEY}"
)
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1"
       StreamDriver.AuthMode="anon")
input(type="imtcp" address="127.0.0.1" port="{port}")
template(name="msg" type="string" string="%msg%\n")
action(type="omfile" file="{received}" template="msg")
"""


@contextmanager
def running_collector(pki: Pki, directory: Path) -> Iterator[Collector]:
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    received = directory / "received.log"
    config = directory / "rsyslog.conf"
    config.write_text(_config(pki, directory, port, received))
    collector = Collector(port, received, config, directory)
    collector.start()
    try:
        yield collector
    finally:
        collector.stop()
