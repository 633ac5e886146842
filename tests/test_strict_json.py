"""One parser for untrusted JSON: every limit of Python's json is one NotJson."""

from __future__ import annotations

import pytest

from host_agent import strict_json


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        pytest.param(b"1" * 5000, "a number too long to read", id="int-digits"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "nested too deeply", id="deep"),
        pytest.param(b"NaN", "NaN is not JSON", id="nan"),
        pytest.param(b"[-Infinity]", "-Infinity is not JSON", id="minus-infinity"),
        pytest.param(b"1e999", "a number too large to represent", id="float-overflow"),
        pytest.param(b'"\\ud800"', "contains a lone surrogate", id="lone-surrogate"),
        pytest.param(b"\xff", "not UTF-8", id="not-utf8"),
        pytest.param(b"{", "not valid JSON", id="truncated"),
    ],
)
def test_every_parser_limit_is_one_error(data: bytes, reason: str) -> None:
    with pytest.raises(strict_json.NotJson) as refused:
        strict_json.loads(data)
    assert refused.value.reason == reason


def test_json_itself_parses() -> None:
    assert strict_json.loads('{"a": [1, 2.5, "é", null, true]}') == {"a": [1, 2.5, "é", None, True]}
