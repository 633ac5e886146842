"""How long the loaded CRL stays usable.

Python's ssl refuses every handshake once the CRL is past its next update
("CRL has expired"), so an operator must hear about it before that: in the
log, on /health and as a metric.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

# Warn this long before the CRL's next update.
WARN_BEFORE = dt.timedelta(days=3)


@dataclass(frozen=True, slots=True)
class CrlStatus:
    path: Path | None
    next_update: dt.datetime | None
    error: str | None = None

    def state(self, now: dt.datetime) -> str:
        """none, unreadable, ok, expiring (within WARN_BEFORE) or expired."""
        if self.path is None:
            return "none"
        if self.next_update is None:
            return "unreadable"
        if now >= self.next_update:
            return "expired"
        return "expiring" if now >= self.next_update - WARN_BEFORE else "ok"

    def public(self, now: dt.datetime) -> dict[str, Any]:
        return {
            "state": self.state(now),
            "next_update": None if self.next_update is None else self.next_update.isoformat(),
            **({"error": self.error} if self.error else {}),
        }


def read_crl_status(path: Path | None) -> CrlStatus:
    """Parse `path` (PEM or DER); a problem is reported in the status, never raised."""
    if path is None:
        return CrlStatus(None, None)
    try:
        data = path.read_bytes()
        crl = (
            x509.load_pem_x509_crl(data)
            if data.lstrip().startswith(b"-----")
            else x509.load_der_x509_crl(data)
        )
    except (OSError, ValueError) as exc:
        return CrlStatus(path, None, f"cannot read {path}: {exc}")
    if crl.next_update_utc is None:
        return CrlStatus(path, None, f"{path} has no next update")
    return CrlStatus(path, crl.next_update_utc)
