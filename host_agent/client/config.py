"""Where the client finds the agent and its mutual-TLS material.

Explicit values win over the HOST_AGENT_* environment variables, which win over a
TOML file (`server`, `cert`, `key`, `ca`, `timeout`; relative paths are relative to
the file). Every problem is collected and reported at once, naming where the value
came from, so an operator fixes them in one go.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from host_agent.client.errors import ClientConfigError

ENVIRONMENT = {
    "server": "HOST_AGENT_SERVER",
    "cert": "HOST_AGENT_CERT",
    "key": "HOST_AGENT_KEY",
    "ca": "HOST_AGENT_CA",
    "timeout": "HOST_AGENT_TIMEOUT",
}
CONFIG_FILE_ENVIRONMENT = "HOST_AGENT_CLIENT_CONFIG"
# Longer than the agent's default [runner] timeout_seconds (60): the client should hear
# the agent's own 504 rather than give up on an operation that may still finish.
DEFAULT_TIMEOUT = 90.0
_FILES = ("cert", "key", "ca")


@dataclass(frozen=True)
class ClientConfig:
    """A checked client configuration: an https:// agent URL and readable TLS files."""

    server: str
    cert: Path
    key: Path
    ca: Path
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        problems = _problems(
            {name: getattr(self, name) for name in ENVIRONMENT},
            origins={name: name for name in ENVIRONMENT},
        )
        if problems:
            raise ClientConfigError(problems)
        object.__setattr__(self, "server", self.server.rstrip("/"))

    @classmethod
    def load(
        cls,
        server: str | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        ca: str | Path | None = None,
        timeout: float | None = None,
        *,
        config_file: str | Path | None = None,
        environ: Mapping[str, str] = os.environ,
    ) -> ClientConfig:
        """Resolve each setting from the arguments, then `environ`, then the config file
        (`config_file`, else $HOST_AGENT_CLIENT_CONFIG, else ~/.config/host-agent/client.toml
        if it exists)."""
        problems: list[str] = []
        file, from_file = _read_file(config_file, environ, problems)
        explicit: dict[str, Any] = {
            "server": server,
            "cert": cert,
            "key": key,
            "ca": ca,
            "timeout": timeout,
        }
        values: dict[str, Any] = {}
        origins: dict[str, str] = {}
        for name, variable in ENVIRONMENT.items():
            base = None  # relative paths from the environment or arguments: the cwd's
            if explicit[name] is not None:
                value, origins[name] = explicit[name], name
            elif environ.get(variable):
                value, origins[name] = environ[variable], variable
            elif name in from_file:
                value, origins[name], base = from_file[name], f"{file}: {name}", file
            else:
                if name != "timeout":
                    where = file or default_config_file(environ) or "a client config file"
                    problems.append(
                        f"{name} is not set: pass it, set {variable}, "
                        f"or add `{name} = ...` to {where}"
                    )
                continue
            if name == "timeout":
                value = _seconds(value)
            elif name in _FILES:
                value = _path(value, base)
            values[name] = value
        problems += _problems(values, origins)
        if problems:
            raise ClientConfigError(problems)
        return cls(**values)


def default_config_file(environ: Mapping[str, str]) -> Path | None:
    """~/.config/host-agent/client.toml (honouring XDG_CONFIG_HOME), None without a home."""
    base = environ.get("XDG_CONFIG_HOME") or (
        str(Path(environ["HOME"]) / ".config") if environ.get("HOME") else None
    )
    return Path(base) / "host-agent" / "client.toml" if base else None


def _read_file(
    config_file: str | Path | None, environ: Mapping[str, str], problems: list[str]
) -> tuple[Path | None, dict[str, Any]]:
    """The config file to use and its table; a file named explicitly must exist."""
    named = config_file or environ.get(CONFIG_FILE_ENVIRONMENT)
    file = Path(named).expanduser() if named else default_config_file(environ)
    if file is None or (not named and not file.exists()):
        return None, {}
    try:
        table = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        problems.append(f"config file {file} does not exist")
        return file, {}
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"config file {file} cannot be read: {exc}")
        return file, {}
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"config file {file} is not valid TOML: {exc}")
        return file, {}
    for name in sorted(set(table) - set(ENVIRONMENT)):
        problems.append(f"{file}: unknown key {name!r} (known: {', '.join(ENVIRONMENT)})")
    for name in ("server", *_FILES):
        if name in table and not isinstance(table[name], str):
            problems.append(f"{file}: {name} must be a string")
            del table[name]
    return file, table


def _path(value: str | Path, file: Path | None) -> Path:
    """`~` expanded; relative to the config file when it came from one, else to the cwd."""
    path = Path(value).expanduser()
    return file.parent / path if file is not None and not path.is_absolute() else path


def _seconds(value: Any) -> float:
    """A timeout as a float; NaN (reported as a problem) when it is not a number."""
    if isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _problems(values: Mapping[str, Any], origins: Mapping[str, str]) -> list[str]:
    """What is wrong with the settings present in `values`, each named by its origin."""
    problems = []
    server = values.get("server")
    if server is not None:
        problems += [f"{origins['server']}: {server!r} {p}" for p in _bad_server(server)]
    timeout = values.get("timeout")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        problems.append(f"{origins['timeout']}: must be a positive number of seconds")
    for name in _FILES:
        if name in values:
            problems += [f"{origins[name]}: {values[name]} {p}" for p in _unreadable(values[name])]
    return problems


def _bad_server(server: str) -> list[str]:
    try:
        parts = urlsplit(server)
        _ = parts.port  # a port that is not a number in range raises ValueError
    except ValueError as exc:
        return [f"is not a URL: {exc}"]
    if parts.scheme != "https":
        return ["must start with https:// (the agent serves only mutual TLS)"]
    if not parts.hostname or parts.username or parts.password:
        return ["must be https://HOST[:PORT], with a host and no user"]
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return ["must be https://HOST[:PORT], with no path"]
    return []


def _unreadable(path: Path) -> list[str]:
    """Why the client could not read `path` (nothing when it can)."""
    if not path.exists():
        return ["does not exist"]
    if not path.is_file():
        return ["is not a regular file"]
    if not os.access(path, os.R_OK):
        return ["is not readable by this user"]
    return []
