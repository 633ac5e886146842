"""`audit verify` reads lines with orjson and json: its verdicts must be json's alone;
and whatever a line holds, root's verify holds no more than the longest record."""

from __future__ import annotations

import gzip
import hashlib
import importlib
import json
import resource
import string
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from host_agent.audit import GENESIS, AuditLog, canonical, record_hash, verify
from host_agent.audit.chain import stamp
from host_agent.audit.checkpoint import Checkpoint
from host_agent.audit.seal import Epochs, VerificationKey, seal_id

# The module itself (the package exports its function under the same name).
verify_module = importlib.import_module("host_agent.audit.verify")

# What orjson reads differently from json, or refuses: integers beyond 64 bits, NaN and
# infinities, lone surrogates.
AWKWARD: dict[str, Any] = {
    "big": 2**70,
    "negative_big": -(2**80),
    "not_a_number": float("nan"),
    "infinite": float("inf"),
    "lone_surrogate": "\ud800 and \udfff",
}


def _write(path: Path, metadata: list[Any]) -> list[dict[str, Any]]:
    log = AuditLog(path, clock=lambda: 1_700_000_000.0)
    log.open()
    try:
        return [log.append({"event": "decision", "metadata": each}) for each in metadata]
    finally:
        log.close()


def _by_json_alone(paths: list[Path]) -> verify_module.VerifyResult:
    with mock.patch.object(verify_module, "_parse", verify_module._exact):
        return verify(paths)


def test_records_orjson_cannot_read_as_written_still_verify(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, [{name: value} for name, value in AWKWARD.items()])
    result = verify([path])
    assert result.ok, result.error
    assert result.records == len(AWKWARD)


def test_a_re_serialised_line_with_a_big_integer_is_hashed_by_its_exact_value(
    tmp_path: Path,
) -> None:
    # Not as the agent writes it (keys reordered, spaces), but with the right hash: its
    # hash comes from the record serialised again, where 2**70 must not become a float.
    path = tmp_path / "audit.jsonl"
    written = _write(path, [{"big": 2**70}, {"big": 2**70 + 1}])
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = (json.dumps(dict(reversed(list(written[1].items())))) + "\n").encode()
    path.write_bytes(b"".join(lines))
    result = verify([path])
    assert result.ok, result.error
    assert result.records == 2


def test_a_line_nested_past_what_any_parser_reads_is_reported_not_raised(
    tmp_path: Path,
) -> None:
    # No agent writes this (json cannot); an attacker can, and verify must say where.
    path = tmp_path / "audit.jsonl"
    _write(path, [1, 2])
    with path.open("ab") as log:
        log.write(b"[" * 100_000 + b"\n")
    result = verify([path])
    assert not result.ok
    assert result.error == f"{path}:3: not valid JSON (torn or edited line)"
    assert result.records == 2


# Plain JSON values, with what orjson reads differently mixed in.
_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()
    | st.text(st.characters(min_codepoint=0, max_codepoint=0xDFFF), max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(string.ascii_letters, max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


def _flip(lines: list[bytes], at: int, to: int) -> None:
    line = lines[at % len(lines)]
    spot = to % len(line)
    lines[at % len(lines)] = line[:spot] + bytes([line[spot] ^ 0x20]) + line[spot + 1 :]


def _drop(lines: list[bytes], at: int, to: int) -> None:
    del lines[at % len(lines)]


def _pad(lines: list[bytes], at: int, to: int) -> None:
    padding = (b" ", b"\r", b"\t", b"\n")[to % 4]
    line = lines[at % len(lines)].rstrip(b"\n")
    lines[at % len(lines)] = (padding + line if to % 2 else line + padding) + b"\n"


def _reserialise(lines: list[bytes], at: int, to: int) -> None:
    record = json.loads(lines[at % len(lines)])
    record["hash"] = record_hash(record)
    lines[at % len(lines)] = (
        json.dumps(record, indent=None, separators=(", ", ": ")) + "\n"
    ).encode()


def _untouched(lines: list[bytes], at: int, to: int) -> None:
    pass


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    metadata=st.lists(_VALUES, min_size=1, max_size=5),
    change=st.sampled_from([_untouched, _flip, _drop, _pad, _reserialise]),
    at=st.integers(min_value=0, max_value=10),
    to=st.integers(min_value=0, max_value=10_000),
)
def test_verify_gives_json_alone_s_verdict_on_any_log(
    tmp_path_factory: Any, metadata: list[Any], change: Any, at: int, to: int
) -> None:
    path = tmp_path_factory.mktemp("verify") / "audit.jsonl"
    _write(path, metadata)
    lines = path.read_bytes().splitlines(keepends=True)
    change(lines, at, to)
    path.write_bytes(b"".join(lines))
    assert verify([path]) == _by_json_alone([path])


# --- what the service account's log can make root's verify hold -------------------


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_line_that_never_ends_is_refused_without_reading_it_whole(
    tmp_path: Path, processes: str
) -> None:
    """A record, then 3 GiB without a newline (a sparse file: no disk spent): root's
    verify reads the line no further than the longest record could be, and says so;
    it used to read it whole, past its memory."""
    path = tmp_path / "audit.jsonl"
    _write(path, [1])
    with path.open("ab") as log:
        log.write(b'{"seq":2,"note":"')
        log.truncate(3 << 30)
    _refused_at_line_2(path, "--processes", processes)


def test_a_compressed_line_that_never_ends_is_refused_without_reading_it_whole(
    tmp_path: Path,
) -> None:
    """The same line in a rotated, compressed file: 1.5 GiB from a few MB."""
    path = tmp_path / "audit.jsonl.1.gz"
    plain = tmp_path / "audit.jsonl"
    _write(plain, [1])
    with gzip.open(path, "wb", compresslevel=1) as packed:
        packed.write(plain.read_bytes() + b'{"seq":2,"note":"')
        for _ in range(24):
            packed.write(bytes(64 << 20))
    _refused_at_line_2(path)


def _refused_at_line_2(path: Path, *options: str) -> None:
    """`host-agent audit verify` as an operator runs it, in 1 GiB of memory at most."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    done = subprocess.run(
        [sys.executable, "-m", "host_agent", "audit", "verify", *options, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=cap,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    limit = verify_module.MAX_LINE >> 20
    assert done.stdout == (
        f"BROKEN after 1 good records: {path}:2: a line longer than any record the agent "
        f"writes ({limit} MiB)\n"
    )


# --- records no agent writes get a verdict, never an exception ---------------------

SEALED_AT = 1_900_000_000
SEAL_KEY = VerificationKey(b"\x01" * 32, Epochs(SEALED_AT, 60))


def _canonical_line(fields: dict[str, str]) -> bytes:
    """A line in the agent's form (keys sorted, no spaces) from fields already written
    as JSON, with its hash taken as verify takes it from the line's bytes: for values
    nested too deep for json.dumps to write."""
    body = "{" + ",".join(f'"{key}":{fields[key]}' for key in sorted(fields)) + "}"
    digest = hashlib.sha256(body.encode()).hexdigest()
    fields = {**fields, "hash": f'"{digest}"'}
    return ("{" + ",".join(f'"{key}":{fields[key]}' for key in sorted(fields)) + "}\n").encode()


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("processes", [1, 2])
def test_a_record_nested_too_deep_to_write_again_gets_a_verdict(
    tmp_path: Path, processes: int
) -> None:
    """Past some depth json reads a value that json.dumps cannot write again (its
    recursion limit comes sooner): recomputing such a record's hash raised
    RecursionError out of verify. Every depth around that limit now gets a verdict."""
    path = tmp_path / "audit.jsonl"
    for depth in range(900, 1060):
        # A hash that is not the line's: verify recomputes it from the record. Twice,
        # so that with two processes each part begins with one.
        line = (
            '{"hash":"' + "0" * 64 + f'","prev":"{GENESIS}","seq":1,"ts":"x","x":'
            + _nested(depth) + "}\n"
        )  # fmt: skip
        path.write_text(line * 2)
        with mock.patch.object(verify_module, "SPLIT_SIZE", 1):
            result = verify([path], processes=processes)
        assert result.error in (
            f"{path}:1: hash does not match the record's content (edited line)",
            f"{path}:1: not valid JSON (torn or edited line)",
        ), depth


def test_a_seal_nested_too_deep_to_write_again_gets_a_verdict(tmp_path: Path) -> None:
    """A seal record whose hash holds (taken from its bytes) but which holds a value too
    deep to serialise for its MAC: the MAC does not match, where it raised before."""
    path = tmp_path / "audit.jsonl"
    for depth in range(900, 1060):
        line = _canonical_line(
            {
                "epoch": "0", "event": '"audit_seal"', "mac": '"' + "0" * 64 + '"',
                "prev": f'"{GENESIS}"', "seal_id": f'"{seal_id(SEAL_KEY.seed)}"', "seq": "1",
                "through": "0", "ts": f'"{stamp(SEALED_AT + 1)}"', "x": _nested(depth),
            }
        )  # fmt: skip
        path.write_bytes(line)
        result = verify([path], seal_key=SEAL_KEY, now=SEALED_AT + 90)
        assert result.error in (
            f"{path}:1: the seal's MAC does not match under epoch 0's key (forged or edited)",
            f"{path}:1: not valid JSON (torn or edited line)",
        ), depth


def test_a_seal_whose_mac_is_not_hex_gets_a_verdict(tmp_path: Path) -> None:
    """hmac.compare_digest refuses text that is not ASCII with a TypeError."""
    path = tmp_path / "audit.jsonl"
    seal = {
        "epoch": 0, "event": "audit_seal", "mac": "é" * 64, "prev": GENESIS,
        "seal_id": seal_id(SEAL_KEY.seed), "seq": 1, "through": 0, "ts": stamp(SEALED_AT + 1),
    }  # fmt: skip
    seal["hash"] = record_hash(seal)
    path.write_text(canonical(seal) + "\n")
    result = verify([path], seal_key=SEAL_KEY, now=SEALED_AT + 90)
    assert result.error == f"{path}:1: seal record without a valid mac"


_ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)
# Records whose every field may be right, or any JSON at all, chained and hashed.
_HOSTILE_RECORDS = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "seq": st.integers(-2, 12) | _ANY_JSON,
            "ts": st.just(stamp(SEALED_AT + 10)) | _ANY_JSON,
            "prev": _ANY_JSON,
            "event": st.sampled_from(["audit_seal", "audit_file", "decision"]) | _ANY_JSON,
            "epoch": st.integers(-1, 2) | _ANY_JSON,
            "through": st.integers(-1, 2) | _ANY_JSON,
            "mac": st.just("0" * 64) | _ANY_JSON,
            "seal_id": st.just(seal_id(SEAL_KEY.seed)) | _ANY_JSON,
            "x": _ANY_JSON,
        },
    ),
    max_size=6,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(records=_HOSTILE_RECORDS, unmarked=st.booleans())
def test_any_log_gets_a_verdict_in_parts_as_in_one_process(
    tmp_path_factory: Any, records: list[dict[str, Any]], unmarked: bool
) -> None:
    """Whatever the service account writes, with every check on: a verdict, the same
    from the parts as from one process, never an exception."""
    prev = GENESIS
    lines = []
    for record in records:
        if "prev" in record:
            record["prev"] = prev
        record["hash"] = prev = record_hash(record)
        lines.append(canonical(record) + "\n")
    path = tmp_path_factory.mktemp("hostile") / "audit.jsonl"
    path.write_text("".join(lines))
    witness = [Checkpoint("host-agent/test/audit", 2, "ab" * 32, "x")]
    options: dict[str, Any] = {"seal_key": SEAL_KEY, "now": SEALED_AT + 90}
    with mock.patch.object(verify_module, "SPLIT_SIZE", 1):
        one = verify([path], checkpoints=witness, unmarked_head=unmarked, **options)
        assert (
            verify([path], checkpoints=witness, unmarked_head=unmarked, processes=3, **options)
            == one
        )
