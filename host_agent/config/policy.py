"""[policy]: an external policy check (clashd's `POST /evaluate`), which can only tighten."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from host_agent.config.fields import Table, between


@dataclass(frozen=True)
class ExternalPolicyConfig:
    url: str  # the service's base URL; host-agent POSTs to {url}/evaluate
    timeout_seconds: float = 2.0
    # The CA that signs an https service's certificate (default: the system's).
    ca: Path | None = None


@dataclass(frozen=True)
class PolicyConfig:
    external: ExternalPolicyConfig | None = None


def read_policy(t: Table) -> PolicyConfig:
    url = t.optional("external_url", str, check=_http_url)
    config = PolicyConfig(
        None
        if url is None
        else ExternalPolicyConfig(
            url,
            float(t.get("external_timeout_seconds", (int, float), 2.0, check=between(0.1, 30))),
            t.optional_path("external_ca"),
        )
    )
    t.finish()
    return config


def _http_url(value: str) -> str | None:
    ok = value.startswith(("http://", "https://")) and "@" not in value and value.isprintable()
    return None if ok else "must be an http:// or https:// URL without credentials"
