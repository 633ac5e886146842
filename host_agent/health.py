"""What /health says beyond "up": problems an operator must fix before they bite.

Computed when the config is (re)loaded, never per request: the CRL's
remaining life (an expired CRL fails every handshake) and sudoers grants
to the service account broader than the wrappers. An agent that cannot
read /etc/sudoers (the unit runs it unprivileged) asks the read-only root
wrapper host-agent-sudoers; if that fails too, sudoers is reported as
unchecked, never as clean.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import os
import pwd
from collections.abc import Callable
from typing import Any

from host_agent.config import Config
from host_agent.crl import CrlStatus, read_crl_status
from host_agent.errors import RunnerError
from host_agent.metrics import Metrics
from host_agent.runner import SUDOERS_WRAPPER, Runner
from host_agent.sudoers_probe import Finding, findings_from_json, scan

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
        self.sudoers: tuple[Finding, ...] | None = None
        self.sudoers_unchecked: str | None = None

    async def refresh(self, config: Config, runner: Runner) -> None:
        """Re-read what the config points at (start-up and every reload)."""
        self.crl = read_crl_status(config.server.crl_file)
        if self.crl.next_update is not None:
            self.metrics.crl_next_update.set(self.crl.next_update.timestamp())
        try:
            self.sudoers, self.sudoers_unchecked = await _sudoers_findings(config, runner), None
        except SudoersUnchecked as exc:
            self.sudoers, self.sudoers_unchecked = None, str(exc)
            self.metrics.sudoers_risky_entries.set(math.nan)
            log.warning("sudoers not checked: %s", exc)
        else:
            self.metrics.sudoers_risky_entries.set(len(self.sudoers))
            for finding in self.sudoers:
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

    def report(
        self,
        audit_failing: str | None = None,
        store_failing: str | None = None,
        checkpoints: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """`audit_failing`: why the last audit write failed, if the next may fail too
        (then every operation is refused until the log can be written). `store_failing`:
        why the approval store's last call failed (then whatever needs a human gets 503).
        `checkpoints`: the audit checkpoints' witnesses, when kept."""
        crl = self.crl.public(self.clock())
        bad = ("expired", "expiring", "unreadable")
        problems = [f"crl_{crl['state']}"] if crl["state"] in bad else []
        if audit_failing is not None:
            problems.append("audit_unwritable")
        if store_failing is not None:
            problems.append("approval_store_unavailable")
        if checkpoints is not None and checkpoints["state"] != "ok":
            problems.append("audit_checkpoints_behind")
        risky = len(self.sudoers) if self.sudoers is not None else None
        if risky:
            problems.append("sudoers_risky_entries")
        return {
            "status": "degraded" if problems else "ok",
            "problems": problems,
            "audit": {"state": "ok"}
            if audit_failing is None
            else {"state": "unwritable", "error": audit_failing},
            "approval_store": {"state": "ok"}
            if store_failing is None
            else {"state": "unavailable", "error": store_failing},
            **({"audit_checkpoints": checkpoints} if checkpoints is not None else {}),
            "crl": crl,
            "sudoers_risky_entries": risky,
            **({"sudoers_unchecked": self.sudoers_unchecked} if self.sudoers_unchecked else {}),
        }

    def permission_findings(self) -> dict[str, Any]:
        if self.sudoers is None:
            return {"checked": False, "reason": self.sudoers_unchecked, "count": None}
        findings = [finding.public() for finding in self.sudoers]
        return {"checked": True, "count": len(findings), "findings": findings}


def for_caller(report: dict[str, Any], *, admin: bool, profile: bool) -> dict[str, Any]:
    """What one caller may read of `report`: paths and error texts (audit log, CRL,
    sudoers, wrappers) are for admins; a CN with no profile learns only whether the agent
    is well and its version, which is what a monitoring probe needs."""
    if admin:
        return report
    if not profile:
        return {key: report[key] for key in ("status", "problems", "version")}
    shown = {
        **report,
        "audit": {"state": report["audit"]["state"]},
        "approval_store": {"state": report["approval_store"]["state"]},
        "crl": {key: value for key, value in report["crl"].items() if key != "error"},
    }
    shown.pop("sudoers_unchecked", None)
    return shown


class SudoersUnchecked(Exception):
    """Why the sudoers grants could not be listed."""


async def _sudoers_findings(config: Config, runner: Runner) -> tuple[Finding, ...]:
    """Scanned here when readable (an agent run as root), else by the root wrapper."""
    path = config.server.sudoers_file
    if os.access(path, os.R_OK):
        wrapper_dir = config.runner.wrapper_dir
        return await asyncio.to_thread(scan, path, _service_user(config), wrapper_dir)
    try:
        result = await runner.list_sudoers_grants()
    except RunnerError as exc:
        raise SudoersUnchecked(f"{path} is not readable and {exc}") from exc
    if result.truncated:
        why = "its output was cut at [runner] max_output_bytes"
    elif result.exit_code != 0:
        last_lines = result.stderr.strip().splitlines()[-1:]
        why = last_lines[0] if last_lines else f"exit status {result.exit_code}"
    else:
        try:
            return findings_from_json(result.stdout)
        except ValueError as exc:
            why = f"unexpected output: {exc}"
    raise SudoersUnchecked(f"{path} is not readable and {SUDOERS_WRAPPER} failed: {why}")


def _service_user(config: Config) -> str:
    """The account sudoers is checked for: the configured one, or whoever runs the agent."""
    return config.runner.service_user or pwd.getpwuid(os.geteuid()).pw_name
