"""Reading one TOML table: typed keys, checks that name the key at fault, leftovers
reported as unknown. Every section's reader is built from these."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from host_agent.operations import OPERATION_NAMES

Check = Callable[[Any], str | None]


_MISSING: Any = object()


class Reader:
    """Collects problems and warnings for one file."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{key}: {message}")

    def warn(self, message: str) -> None:
        self.warnings.append(message)


class Table:
    """One TOML table; every key read is ticked off so leftovers are reported."""

    def __init__(self, reader: Reader, prefix: str, data: dict[str, Any]) -> None:
        self.reader = reader
        self.prefix = prefix
        self.data = data
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def _take(self, name: str) -> Any:
        self.seen.add(name)
        return self.data.get(name, _MISSING)

    def get(
        self,
        name: str,
        kind: type | tuple[type, ...],
        default: Any,
        *,
        required: bool = False,
        item: type | None = None,
        check: Check | None = None,
        convert: Callable[[Any], Any] | None = None,
    ) -> Any:
        value = self._take(name)
        if value is _MISSING:
            if required:
                self.reader.problem(self.key(name), "is required")
            value = default
        elif not _is_instance(value, kind):
            self.reader.problem(
                self.key(name), f"must be {_type_name(kind)}, got {_type_name(type(value))}"
            )
            value = default
        elif item is not None and not all(isinstance(v, item) for v in value):
            self.reader.problem(self.key(name), f"must be a list of {_type_name(item)}")
            value = default
        elif check is not None and (message := check(value)) is not None:
            self.reader.problem(self.key(name), message)
            value = default
        if convert is not None:
            try:
                return convert(value)
            except (ValueError, re.error):
                return convert(default)
        return value

    def optional(
        self,
        name: str,
        kind: type,
        *,
        check: Check | None = None,
        convert: Callable[[Any], Any] | None = None,
    ) -> Any:
        if name not in self.data:
            self.seen.add(name)
            return None
        value = self.get(name, kind, _MISSING, check=check)
        if value is _MISSING:
            return None
        return convert(value) if convert is not None else value

    def path(self, name: str, *, required: bool = False, default: str = "") -> Path:
        value = self.get(name, str, default, required=required)
        return self._resolve(value)

    def optional_path(self, name: str) -> Path | None:
        value = self.optional(name, str, check=non_empty)
        return None if value is None else self._resolve(value)

    def _resolve(self, value: str) -> Path:
        path = Path(value)
        # Relative paths are relative to the config file, not the working directory.
        return path if path.is_absolute() else self.reader.source.parent.resolve() / path

    def table(self, name: str, *, required: bool = False) -> Table:
        value = self._take(name)
        if value is _MISSING:
            if required:
                self.reader.problem(self.key(name), f"section [{self.key(name)}] is required")
            value = {}
        elif not isinstance(value, dict):
            self.reader.problem(self.key(name), "must be a table")
            value = {}
        return Table(self.reader, self.key(name), dict(value))

    def array_of_tables(self, name: str) -> Iterator[Table]:
        value = self._take(name)
        if value is _MISSING:
            return
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.reader.problem(self.key(name), f"must be an array of tables ([[{name}]])")
            return
        for index, entry in enumerate(value):
            yield Table(self.reader, f"{self.key(name)}[{index}]", dict(entry))

    def finish(self) -> None:
        for name in sorted(set(self.data) - self.seen):
            self.reader.problem(self.key(name), "unknown key")


def _is_instance(value: Any, kind: type | tuple[type, ...]) -> bool:
    # TOML booleans are Python bools, which are also ints; never accept one for the other.
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)


def _type_name(kind: type | tuple[type, ...]) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def non_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def between(low: float, high: float) -> Check:
    def check(value: float) -> str | None:
        return None if low <= value <= high else f"must be between {low} and {high}"

    return check


def one_of(*choices: str) -> Check:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def check_bind(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        return "must be HOST:PORT, e.g. 127.0.0.1:18443"
    return None


def check_url(value: str) -> str | None:
    return None if re.fullmatch(r"https?://[^\s]+", value) else "must be an http(s) URL"


def check_phone(value: str) -> str | None:
    return None if re.fullmatch(r"\+[1-9][0-9]{6,14}", value) else "must be an E.164 number (+...)"


def check_secret(value: str) -> str | None:
    return None if len(value) >= 32 else "must be at least 32 characters"


def check_unix_name(value: str) -> str | None:
    if re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", value):
        return None
    return "must be a Unix account name (lower case, digits, _ and -)"


# What the wrappers' config file can carry on one line, and what a path may hold.
PLAIN_TEXT = re.compile(r"[\x21-\x7e]+")


def check_absolute_path(value: str) -> str | None:
    if not PLAIN_TEXT.fullmatch(value) or not value.startswith("/"):
        return f"{value!r} is not an absolute path (printable ASCII, no spaces)"
    if "/../" in f"{value}/" or "/./" in f"{value}/":
        return f"{value!r} must not contain '.' or '..' components"
    return None


def check_absolute_paths(values: list[str]) -> str | None:
    return next((m for v in values if (m := check_absolute_path(v)) is not None), None)


def check_regex(value: str) -> str | None:
    try:
        re.compile(value)
    except re.error as exc:
        return f"not a valid regular expression: {exc}"
    return None


def check_operation(value: str) -> str | None:
    if value in OPERATION_NAMES:
        return None
    return f"unknown operation {value!r} (known: {', '.join(sorted(OPERATION_NAMES))})"


def check_operation_globs(values: list[str]) -> str | None:
    for value in values:
        if not fnmatch.filter(OPERATION_NAMES, value):
            return f"{value!r} matches no known operation"
    return None
