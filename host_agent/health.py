"""What /health says beyond "up": problems an operator must fix before they bite.

Computed when the config is (re)loaded, never per request: the CRL's
remaining life (an expired CRL fails every handshake) and sudoers grants
to the service account broader than the wrappers (an agent not running as
root cannot read /etc/sudoers: that is a finding of its own).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import pwd
from collections.abc import Callable
from typing import Any

from host_agent.config import Config
from host_agent.crl import CrlStatus, read_crl_status
from host_agent.metrics import Metrics
from host_agent.sudoers_probe import SudoersProbe

log = logging.getLogger(__name__)


class HostHealth:
    def __init__(
        self,
        metrics: Metrics,
        *,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.metrics = metrics
        self.clock = clock
        self.crl = CrlStatus(None, None)
        self.sudoers: SudoersProbe | None = None
        self.sudoers_unchecked: str | None = None

    def refresh(self, config: Config) -> None:
        """Re-read what the config points at (start-up and every reload)."""
        self.crl = read_crl_status(config.server.crl_file)
        if self.crl.next_update is not None:
            self.metrics.crl_next_update.set(self.crl.next_update.timestamp())
        sudoers = config.server.sudoers_file
        if os.geteuid() != 0 and not os.access(sudoers, os.R_OK):
            # The usual case under the systemd unit (User=): not a finding, but not a pass.
            self.sudoers = None
            self.sudoers_unchecked = f"{sudoers} is not readable by this unprivileged process"
            self.metrics.sudoers_risky_entries.set(math.nan)
            log.warning("sudoers not checked: %s", self.sudoers_unchecked)
            self.warn()
            return
        self.sudoers_unchecked = None
        self.sudoers = SudoersProbe(sudoers, _service_user(config), config.runner.wrapper_dir)
        self.metrics.sudoers_risky_entries.set(self.sudoers.count)
        for finding in self.sudoers.findings:
            log.warning(
                "sudoers %s:%s: %s %s (%s)",
                finding.file,
                finding.line,
                finding.code,
                finding.command,
                finding.detail,
            )
        self.warn()

    def warn(self) -> None:
        """Log what needs an operator (also called periodically while running)."""
        state = self.crl.state(self.clock())
        if state == "expired":
            log.error(
                "the CRL %s expired at %s: every TLS handshake fails until it is replaced",
                self.crl.path,
                self.crl.next_update,
            )
        elif state == "expiring":
            log.warning(
                "the CRL %s must be replaced before %s", self.crl.path, self.crl.next_update
            )
        elif state == "unreadable":
            log.error("the CRL cannot be checked: %s", self.crl.error)

    def report(self) -> dict[str, Any]:
        crl = self.crl.public(self.clock())
        bad = ("expired", "expiring", "unreadable")
        problems = [f"crl_{crl['state']}"] if crl["state"] in bad else []
        risky = self.sudoers.count if self.sudoers is not None else None
        if risky:
            problems.append("sudoers_risky_entries")
        return {
            "status": "degraded" if problems else "ok",
            "problems": problems,
            "crl": crl,
            "sudoers_risky_entries": risky,
            **({"sudoers_unchecked": self.sudoers_unchecked} if self.sudoers_unchecked else {}),
        }

    def permission_findings(self) -> dict[str, Any]:
        if self.sudoers is None:
            return {"checked": False, "reason": self.sudoers_unchecked, "count": None}
        findings = [finding.public() for finding in self.sudoers.findings]
        return {"checked": True, "count": len(findings), "findings": findings}


def _service_user(config: Config) -> str:
    """The account sudoers is checked for: the configured one, or whoever runs the agent."""
    return config.runner.service_user or pwd.getpwuid(os.geteuid()).pw_name
