"""People's output of `host-agent op`, in the parts real tools cannot show here: size
rounding at its edges, colour only for a terminal that wants it, and the tool's own
text whenever a table would mislead. The tables themselves are checked against real
zfs, git and the systemctl stand-in in the e2e tests (test_e2e_cli_op, test_e2e_git,
test_e2e_systemd_pct)."""

from __future__ import annotations

import io

import pytest

from host_agent.cli.op_output import HumanOutput, wants_colour
from host_agent.cli.op_views import PLAIN, Style, nice_size, render
from host_agent.client import OperationResult

LISTING = {
    "datasets": [
        {"name": "tank", "used": 1331200, "available": 94057267, "referenced": 114688,
         "mountpoint": "/tank", "type": "filesystem"},
    ]
}  # fmt: skip
RAW = "tank\tused\t1331200\n"


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (0, "0B"),
        (1023, "1023B"),
        (1024, "1K"),
        (1536, "1.50K"),
        (114688, "112K"),
        (1331200, "1.27M"),
        (12 * 1024**2 + 300 * 1024, "12.3M"),
        (1024**2 - 1, "1024K"),  # 1023.999K: no room for decimals, as zfs rounds it
        (5 * 1024**4, "5T"),
    ],
)
def test_sizes_read_as_zfs_writes_them(size: int, shown: str) -> None:
    assert nice_size(size) == shown


def result(*, truncated: bool = False, data: dict[str, object] | None = None) -> OperationResult:
    return OperationResult(
        request_id="r1",
        operation="zfs-list",
        resource="tank",
        exit_code=0,
        stdout=RAW,
        stderr="",
        truncated=truncated,
        duration_ms=1.0,
        data=LISTING if data is None else data,
    )


def shown(outcome: OperationResult, style: Style = PLAIN) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    HumanOutput(out, err, style).result(outcome)
    return out.getvalue(), err.getvalue()


def test_a_listing_is_a_table_and_p_gives_exact_bytes() -> None:
    assert shown(result())[0] == (
        "NAME   USED  AVAIL  REFER  MOUNTPOINT\ntank  1.27M  89.7M   112K  /tank\n"
    )
    exact = shown(result(), Style(exact=True))[0].splitlines()[1].split()
    assert exact == ["tank", "1331200", "94057267", "114688", "/tank"]


def test_output_the_agent_cut_short_is_shown_as_the_tool_wrote_it() -> None:
    out, err = shown(result(truncated=True))
    assert out == RAW and "truncated" in err


def test_an_operation_without_a_table_prints_the_tools_own_output() -> None:
    assert shown(result(data={}))[0] == RAW
    assert render("exec-run", {"anything": 1}, PLAIN) is None


def test_colour_only_when_asked_and_never_in_a_table() -> None:
    status = {"unit": "app.service", "properties": {"ActiveState": "failed", "SubState": "failed"}}
    coloured = render("systemd-status", status, Style(colour=True))
    assert coloured is not None and "\033[31m●\033[0m" in coloured
    plain = render("systemd-status", status, PLAIN)
    assert plain is not None and "\033" not in plain
    assert "\033" not in shown(result(), Style(colour=True))[0]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("stream", "environment", "colour"),
    [
        pytest.param(Terminal(), {"TERM": "xterm"}, True, id="terminal"),
        pytest.param(io.StringIO(), {"TERM": "xterm"}, False, id="pipe"),
        pytest.param(Terminal(), {"TERM": "xterm", "NO_COLOR": "1"}, False, id="no-color"),
        pytest.param(Terminal(), {"TERM": "dumb"}, False, id="dumb-terminal"),
    ],
)
def test_colour_is_for_terminals_that_want_it(
    monkeypatch: pytest.MonkeyPatch, stream: io.StringIO, environment: dict[str, str], colour: bool
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    assert wants_colour(stream) is colour


@pytest.mark.parametrize(
    ("operation", "data"),
    [
        pytest.param(
            "git-log",
            {"commits": [{"hash": "ab" * 20, "author": "x\x1b[2J", "email": "e@example.org",
                          "date": "2026-12-05T07:00:00+00:00",
                          "subject": "fix\x1b]0;owned\x07 \x9b31m"}]},
            id="git-commit",
        ),
        pytest.param(
            "systemd-status",
            {"unit": "a.service",
             "properties": {"Description": "app\r\x1b[1A", "ActiveState": "active"}},
            id="unit-description",
        ),
        pytest.param(
            "git-status",
            {"branch": {"head": "main"}, "entries": [{"path": "a\x1b[31m\nfake", "xy": "??",
                                                      "kind": "untracked"}]},
            id="file-name",
        ),
    ],
)  # fmt: skip
def test_what_the_host_holds_cannot_drive_the_operators_terminal(
    operation: str, data: dict[str, object]
) -> None:
    """A commit subject, unit description or file name is the host's, not ours: its control
    characters are shown escaped, never sent to the terminal (colour or not)."""
    for style in (PLAIN, Style(colour=True)):
        shown = render(operation, data, style)
        assert shown is not None
        ours = shown.replace("\033[0m", "").replace("\033[32m", "").replace("\033[31m", "")
        ours = ours.replace("\033[33m", "")
        assert not any(c in ours for c in "\x1b\x07\r\x9b"), repr(shown)
        assert "\\x1b" in shown
