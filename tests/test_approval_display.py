"""What `host-agent approve` prints of the agent's text: never a terminal control."""

from __future__ import annotations

import pytest

from host_agent.approvals.display import clean


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        pytest.param("free space", "free space", id="plain"),
        pytest.param("a\x1b[2Jb", "ab", id="csi-clear-screen"),
        pytest.param("a\x1b[38;5;1mb", "ab", id="csi-colour"),
        pytest.param("a\x1b]52;c;cm0gLXJmIH4K\x07b", "ab", id="osc52-bel"),
        pytest.param("a\x1b]0;title\x1b\\b", "ab", id="osc-st"),
        pytest.param("a\x1bPq#0\x1b\\b", "ab", id="dcs"),
        pytest.param("a\x1b]8;;http://x\x07", "a", id="osc-unterminated-tail"),
        pytest.param("a\x1bcb", "ab", id="esc-reset"),
        pytest.param("a\x1b", "a", id="esc-at-end"),
        pytest.param("a\x9b2Jb", "a?2Jb", id="c1-csi"),
        pytest.param("a\rb\nc\td\x00e\x7f", "a?b?c?d?e?", id="c0-and-del"),
        pytest.param("\u202egnp.exe", "?gnp.exe", id="bidi-override"),
        pytest.param("a\u2066b\u2069\u200bc\ufeff", "a?b??c?", id="isolates-zero-width"),
        pytest.param("zurück ✓", "zurück ✓", id="printable-unicode-kept"),
    ],
)
def test_clean_leaves_only_printable_text(text: str, shown: str) -> None:
    assert clean(text) == shown
