"""Untrusted JSON in one place: every parser limit is one error, never a traceback.

Python's json raises more than JSONDecodeError on hostile input: ValueError for an
integer past 4,300 digits, RecursionError for deep nesting, UnicodeDecodeError for
bytes that are not UTF-8. It also accepts what JSON does not (NaN, Infinity, a float
too large to be finite) and lone surrogates that no UTF-8 log line can hold.
"""

from __future__ import annotations

import json
import math
from typing import Any


class NotJson(ValueError):
    """The data is not JSON this agent accepts; `reason` says why, without echoing it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def loads(data: bytes | str) -> Any:
    try:
        document = json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise NotJson("nested too deeply") from None
    except NotJson:
        raise
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, integer digit limit
        raise NotJson(_reason(exc)) from None
    try:
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise NotJson("contains a lone surrogate") from None
    return document


def _refuse_constant(name: str) -> Any:
    raise NotJson(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotJson("a number too large to represent")
    return value


def _reason(exc: ValueError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8"
    if isinstance(exc, json.JSONDecodeError):
        return "not valid JSON"
    return "a number too long to read"
