"""The shared hostile-input table every adapter (and its wrapper) must reject.

Each value is offered wherever an adapter takes a name; ids are stable so a
failure names the attack.
"""

from __future__ import annotations

import pytest

HOSTILE_NAMES = [
    pytest.param("", id="empty"),
    pytest.param("tank; rm -rf /", id="shell-semicolon"),
    pytest.param("tank$(id)", id="shell-substitution"),
    pytest.param("tank`id`", id="shell-backtick"),
    pytest.param("tank|cat", id="shell-pipe"),
    pytest.param("tank&&id", id="shell-and"),
    pytest.param("tank>x", id="shell-redirect"),
    pytest.param("tank'x", id="quote"),
    pytest.param("-r", id="leading-dash"),
    pytest.param("--help", id="long-option"),
    pytest.param("-o=all", id="option-assign"),
    pytest.param("--opt=value", id="long-option-assign"),
    pytest.param("../etc", id="dotdot-path"),
    pytest.param("tank/../etc", id="dotdot-inside"),
    pytest.param("/etc/passwd", id="absolute-path"),
    pytest.param("tank\x00x", id="nul-byte"),
    pytest.param("tank\nx", id="newline"),
    pytest.param("tank\rx", id="carriage-return"),
    pytest.param("tank\tx", id="tab"),
    pytest.param("tank x", id="space"),
    pytest.param("t" * 300, id="overlong"),
    pytest.param("tаnk", id="unicode-cyrillic-a"),
    pytest.param("tank\u200b", id="unicode-zero-width"),
    pytest.param("tank\u202e", id="unicode-bidi-override"),
    pytest.param("ｔａｎｋ", id="unicode-fullwidth"),
    pytest.param("*", id="glob"),
]

WRONG_TYPES = [
    pytest.param(None, id="null"),
    pytest.param(7, id="number"),
    pytest.param(True, id="bool"),
    pytest.param(["tank"], id="list"),
    pytest.param({"name": "tank"}, id="object"),
]
