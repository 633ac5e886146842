"""People's output for `host-agent op`: the structured result the agent returns, drawn
the way operators know it from the tools themselves (`zfs list`'s table, `systemctl
status`'s first lines, `git log`). The agent sends machine output (`zfs get -H -p`,
`systemctl show`, porcelain git); this turns it back into what a person reads.

Only the client draws: what is audited and returned to scripts (`--json`) is unchanged.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# ZFS properties that are sizes in bytes (shown as 1.23M unless exact numbers are asked).
ZFS_SIZES = frozenset(
    {
        "used",
        "available",
        "referenced",
        "quota",
        "reservation",
        "refquota",
        "refreservation",
        "recordsize",
        "usedbysnapshots",
        "usedbydataset",
        "usedbychildren",
    }
)
# `zfs list`'s default columns: heading, property, right-aligned.
ZFS_LIST_COLUMNS = (
    ("NAME", "name", False),
    ("USED", "used", True),
    ("AVAIL", "available", True),
    ("REFER", "referenced", True),
    ("MOUNTPOINT", "mountpoint", False),
)
_SIZE_UNITS = "BKMGTPE"
# What git's long status calls each change letter.
_GIT_CHANGES = {
    "M": "modified:",
    "T": "typechange:",
    "A": "new file:",
    "D": "deleted:",
    "R": "renamed:",
    "C": "copied:",
}


@dataclass(frozen=True)
class Style:
    """How to draw: exact numbers (`-p`), and colour only for a terminal that wants it."""

    exact: bool = False
    colour: bool = False

    def paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour else text


# Exact numbers off, no colour: what a pipe or a log gets.
PLAIN = Style()


def render(operation: str, data: dict[str, Any], style: Style) -> str | None:
    """The people's form of one operation's result, or None to show the tool's own text."""
    draw = _VIEWS.get(operation)
    if draw is None or not data:
        return None
    return draw(visible(data), style)


# C0 and C1 controls and DEL: what a terminal would act on rather than show.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def visible(value: Any) -> Any:
    """`value` with every control character in its strings shown as an escape (\\x1b):
    a commit subject, a unit's description or a file name is the host's, and must not
    move the cursor, retitle the window or colour the operator's terminal."""
    if isinstance(value, str):
        return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)
    if isinstance(value, dict):
        return {key: visible(item) for key, item in value.items()}
    if isinstance(value, list):
        return [visible(item) for item in value]
    return value


def nice_size(size: int) -> str:
    """A size as `zfs list` shows it: 512B, 24K, 1.23M, 12.3G; exact multiples whole."""
    index = 0
    while index < len(_SIZE_UNITS) - 1 and size >= 1024 ** (index + 1):
        index += 1
    unit = _SIZE_UNITS[index]
    if size % (1024**index) == 0:
        return f"{size // 1024**index}{unit}"
    value = size / 1024**index
    for precision in (2, 1, 0):
        text = f"{value:.{precision}f}{unit}"
        if len(text) <= 5:
            return text
    return text


def table(rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """Columns two spaces apart, each as wide as its widest cell (a right-aligned one, a
    number, at least 5: zfs's widest 1.23M); the last one unpadded."""
    widths = [max(5 if right[i] else 0, *(len(row[i]) for row in rows)) for i in range(len(right))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(width) if aligned else cell.ljust(width)
            for cell, width, aligned in zip(row, widths, right, strict=True)
        ]
        if not right[-1]:
            cells[-1] = row[-1]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _zfs_value(prop: str, value: Any, style: Style) -> str:
    if value is None:
        return "-"
    if style.exact or not isinstance(value, int):
        return str(value)
    if prop in ZFS_SIZES:
        return nice_size(value)
    if prop == "creation":
        # zfs get's own form: Sat Dec  5  7:39 2026 (local time, as zfs prints it).
        moment = dt.datetime.fromtimestamp(value).astimezone()
        return moment.strftime("%a %b %e %k:%M %Y")
    return str(value)


def _zfs_list(data: dict[str, Any], style: Style) -> str:
    heading = [name for name, _, _ in ZFS_LIST_COLUMNS]
    rows = [heading] + [
        [_zfs_value(prop, dataset.get(prop), style) for _, prop, _ in ZFS_LIST_COLUMNS]
        for dataset in data.get("datasets", [])
    ]
    return table(rows, [aligned for _, _, aligned in ZFS_LIST_COLUMNS])


def _zfs_get(data: dict[str, Any], style: Style) -> str:
    name = str(data.get("name", ""))
    rows = [["NAME", "PROPERTY", "VALUE", "SOURCE"]]
    for prop, found in data.get("properties", {}).items():
        source = found.get("source") or "-"
        rows.append([name, prop, _zfs_value(prop, found.get("value"), style), source])
    return table(rows, [False, False, False, False])


def _systemd_status(data: dict[str, Any], style: Style) -> str:
    """`systemctl status`'s first lines: the unit, whether it is loaded, its state."""
    shown = data.get("properties", {})
    active, sub = shown.get("ActiveState") or "unknown", shown.get("SubState") or ""
    dot = {"active": "32", "failed": "31"}.get(active)
    marker = style.paint("●", dot) if dot else "○"
    title = shown.get("Id") or data.get("unit", "")
    description = shown.get("Description")
    lines = [f"{marker} {title}" + (f" - {description}" if description else "")]
    loaded = shown.get("LoadState") or "unknown"
    enabled = shown.get("UnitFileState")
    lines.append(f"     Loaded: {loaded}" + (f" ({enabled})" if enabled else ""))
    state = f"{active} ({sub})" if sub else active
    if dot:
        state = style.paint(state, dot)
    since = shown.get("ActiveEnterTimestamp")
    lines.append(f"     Active: {state}" + (f" since {since}" if since else ""))
    pid = shown.get("MainPID")
    if pid not in (None, "", "0", 0):
        lines.append(f"   Main PID: {pid}")
    status = shown.get("ExecMainStatus")
    if status not in (None, "", "0", 0):
        lines.append(f"     Status: exited with {status}")
    return "\n".join(lines) + "\n"


def _git_log(data: dict[str, Any], style: Style) -> str:
    """`git log`'s default form (the subject line of each message)."""
    entries = []
    for commit in data.get("commits", []):
        date = dt.datetime.fromisoformat(commit["date"])
        entries.append(
            f"{style.paint('commit ' + commit['hash'], '33')}\n"
            f"Author: {commit['author']} <{commit['email']}>\n"
            f"Date:   {_git_date(date)}\n\n"
            f"    {commit['subject']}\n"
        )
    return "\n".join(entries)


def _git_date(moment: dt.datetime) -> str:
    """git's default date: Sat Dec 5 07:39:00 2026 +0000, in the author's own zone."""
    return moment.strftime("%a %b %-d %H:%M:%S %Y %z")


def _git_status(data: dict[str, Any], style: Style) -> str:
    """`git status`'s long form, as git prints it with its hints off."""
    branch = data.get("branch", {})
    head = branch.get("head")
    lines = [f"On branch {head}" if head else f"HEAD detached at {str(branch.get('oid'))[:7]}"]
    upstream = branch.get("upstream")
    if upstream:
        lines += [_tracking(upstream, branch.get("ahead") or 0, branch.get("behind") or 0), ""]
    entries = data.get("entries", [])
    sections = [
        ("Changes to be committed:", "32", [_change(e, 0) for e in entries]),
        ("Unmerged paths:", "31", [_unmerged(e) for e in entries]),
        ("Changes not staged for commit:", "31", [_change(e, 1) for e in entries]),
        ("Untracked files:", "31", [_plain(e, "untracked") for e in entries]),
    ]
    shown = {title: [line for line in found if line is not None] for title, _, found in sections}
    for title, colour, _ in sections:
        if shown[title]:
            lines += [title, *(f"\t{style.paint(line, colour)}" for line in shown[title]), ""]
    if not shown["Changes to be committed:"]:
        lines.append(_nothing_staged(shown))
    return "\n".join(lines) + "\n"


def _nothing_staged(shown: dict[str, list[str]]) -> str:
    """git's last line when the index holds no change."""
    if shown["Changes not staged for commit:"] or shown["Unmerged paths:"]:
        return "no changes added to commit"
    if shown["Untracked files:"]:
        return "nothing added to commit but untracked files present"
    return "nothing to commit, working tree clean"


def _tracking(upstream: str, ahead: int, behind: int) -> str:
    def commits(count: int) -> str:
        return f"{count} commit{'s' if count != 1 else ''}"

    if ahead and behind:
        return (
            f"Your branch and '{upstream}' have diverged,\nand have {ahead} and {behind} "
            "different commits each, respectively."
        )
    if ahead:
        return f"Your branch is ahead of '{upstream}' by {commits(ahead)}."
    if behind:
        return (
            f"Your branch is behind '{upstream}' by {commits(behind)}, and can be fast-forwarded."
        )
    return f"Your branch is up to date with '{upstream}'."


def _change(entry: dict[str, Any], side: int) -> str | None:
    """An entry of the index (side 0) or the work tree (side 1) section."""
    if entry.get("kind") not in ("changed", "renamed", "copied"):
        return None
    label = _GIT_CHANGES.get(str(entry.get("xy", "..")).ljust(2, ".")[side])
    if label is None:
        return None
    path = entry["path"]
    if side == 0 and entry.get("orig_path"):
        path = f"{entry['orig_path']} -> {path}"
    return f"{label:<12}{path}"


def _unmerged(entry: dict[str, Any]) -> str | None:
    return f"{'both modified:':<17}{entry['path']}" if entry.get("kind") == "unmerged" else None


def _plain(entry: dict[str, Any], kind: str) -> str | None:
    return str(entry["path"]) if entry.get("kind") == kind else None


_VIEWS: dict[str, Callable[[dict[str, Any], Style], str]] = {
    "zfs-list": _zfs_list,
    "zfs-get": _zfs_get,
    "systemd-status": _systemd_status,
    "git-log": _git_log,
    "git-status": _git_status,
}
