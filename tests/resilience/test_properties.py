"""Properties of every validator on arbitrary input, and a fuzz run of request parsing.

Each validator, given any text (surrogates, controls, look-alikes, near misses and valid
values drawn from its own pattern), either refuses with the project's typed error naming
the field and a documented code, or accepts a value its documented JSON Schema (the tool
manifest's, docs/api.md) accepts too. The request parsers, given any JSON value or any
bytes, raise nothing but their typed refusals. `request_parsing.parse_everything` is the
fuzz target: hypothesis feeds it bytes here; fuzz_request.py runs it under atheris.
"""

from __future__ import annotations

import json
import re
import string
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator  # type: ignore[import-untyped, unused-ignore]

from host_agent.adapters import Registry
from host_agent.adapters.base import check_text
from host_agent.adapters.exec import argument_schema, check_argument
from host_agent.adapters.git import GitAdapter, log_count, ref_name
from host_agent.adapters.pct import PctAdapter, vmid
from host_agent.adapters.systemd import unit_name
from host_agent.adapters.zfs import name_schema, zfs_name
from host_agent.app import parse_verdict
from host_agent.approvals import tokens
from host_agent.approvals.model import APPROVAL_ID
from host_agent.approvals.signal import InvalidWebhookBody, parse_webhook
from host_agent.config import GitConfig, PctConfig
from host_agent.errors import RequestError, ValidationError
from host_agent.request import MAX_ARGS, HostOpRequest, decode_json, parse_host_op
from tests.resilience.request_parsing import (
    DOCUMENTED_CODES,
    SEEDS,
    check_operation,
    contract_registry,
    parse_everything,
)
from tests.support import open_systemd

REPO = Path(__file__).resolve().parents[2]
FIELD = "resource"

# Bounded so the module runs in seconds; no example database written into the repo.
BOUNDED = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
FUZZ = settings(BOUNDED, max_examples=3000)

# Any text at all, surrogates and controls included; near misses from the characters
# the validators care about; hostile shapes in ASCII.
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=300)
NEAR_TEXT = st.text(string.ascii_letters + string.digits + "-_.:@/+~^*?[]{}$;|&' \\", max_size=64)


def text_and(valid: str | None = None) -> st.SearchStrategy[str]:
    """Any text, near misses, and (to see acceptances too) values matching `valid`."""
    options = [ANY_TEXT, NEAR_TEXT]
    if valid is not None:
        options.append(st.from_regex(valid, fullmatch=True))
    return st.one_of(options)


def refused_or_accepted(check: Callable[[], str], field: str = FIELD) -> str | None:
    """The accepted value, or None after checking the refusal is the typed one."""
    try:
        return check()
    except ValidationError as exc:
        assert (exc.field, exc.status) == (field, 400), exc
        assert exc.code in DOCUMENTED_CODES, exc.code
        return None


def documented(schema: dict[str, Any], value: str) -> bool:
    return bool(Draft202012Validator(schema).is_valid(value))


# --- one property per validator ------------------------------------------------------


@BOUNDED
@given(value=text_and(r"[\x21-\x7e]{1,20}"), max_length=st.integers(1, 300), option=st.booleans())
@example(value="tank", max_length=4, option=False)
def test_check_text_accepts_only_bounded_printable_ascii(
    value: str, max_length: int, option: bool
) -> None:
    checked = refused_or_accepted(
        lambda: check_text(FIELD, value, max_length=max_length, allow_option=option)
    )
    if checked is not None:
        assert checked == value and 0 < len(value) <= max_length
        assert re.fullmatch(r"[\x21-\x7e]+", value)
        assert option or not value.startswith("-")


@BOUNDED
@given(
    value=text_and(r"[a-z][a-z0-9_.:-]{0,8}(/[a-z0-9_][a-z0-9_.:-]{0,8}){0,3}(@[a-z0-9_]{1,8})?"),
    kinds=st.sampled_from([(True, True), (True, False), (False, True)]),
)
@example(value="tank/a@s", kinds=(True, True))
def test_zfs_names_match_the_documented_schema(value: str, kinds: tuple[bool, bool]) -> None:
    dataset, snapshot = kinds
    checked = refused_or_accepted(
        lambda: zfs_name(FIELD, value, dataset=dataset, snapshot=snapshot)
    )
    if checked is not None:
        assert documented(name_schema("", dataset=dataset, snapshot=snapshot), value)


@BOUNDED
@given(value=text_and(r"[a-z0-9][a-z0-9:_.-]{0,12}(@[a-z0-9]{0,6})?\.(service|timer|mount|x)"))
@example(value="getty@tty1.service")
def test_unit_names_match_the_documented_schema(value: str) -> None:
    if refused_or_accepted(lambda: unit_name(FIELD, value)) is not None:
        parameters = open_systemd().tool_parameters("status")
        assert parameters is not None
        assert documented(parameters["properties"]["resource"], value)


@BOUNDED
@given(value=text_and(r"0?[0-9]{1,8}"))
@example(value="101")
def test_vmids_match_the_documented_schema(value: str) -> None:
    if refused_or_accepted(lambda: vmid(FIELD, value)) is not None:
        parameters = PctAdapter(PctConfig(allowed_vmids=None)).tool_parameters("status")
        assert parameters is not None
        assert documented(parameters["properties"]["resource"], value)
        assert str(int(value)) == value and 100 <= int(value) <= 999_999


GIT = GitAdapter(GitConfig((Path("/srv/app"), Path("/srv/www.d"))))


def _git_item(command: str) -> dict[str, Any]:
    parameters = GIT.tool_parameters(command)
    assert parameters is not None
    item: dict[str, Any] = parameters["properties"]["args"]["items"]
    return item


@BOUNDED
@given(value=text_and(r"[a-z.@/{^~-]{1,6}(/[a-z.]{0,6}){0,2}(\.lock)?"))
@example(value="release/v1.2")
def test_ref_names_match_the_documented_schema(value: str) -> None:
    if refused_or_accepted(lambda: ref_name(FIELD, value)) is not None:
        assert documented(_git_item("checkout"), value)


@BOUNDED
@given(value=text_and(r"0?[0-9]{1,4}"))
@example(value="200")
def test_log_counts_match_the_documented_schema(value: str) -> None:
    if refused_or_accepted(lambda: log_count(FIELD, value)) is not None:
        assert documented(_git_item("log"), value)
        assert 1 <= int(value) <= 200


@BOUNDED
@given(value=text_and(r"(/srv(/(app|www\.d|\.|\.\.|x|))?){1,3}(/[a-z.]{0,4}){0,3}"))
@example(value="/srv/www.d/site")
def test_repositories_match_the_documented_schema(value: str) -> None:
    if refused_or_accepted(lambda: GIT.allowed_repo(FIELD, value)) is not None:
        parameters = GIT.tool_parameters("status")
        assert parameters is not None
        assert documented(parameters["properties"]["resource"], value)
        assert not {".", "..", ""} & set(value.split("/")[1:])


# The kinds of patterns an admin writes for [exec] argument_patterns.
EXEC_PATTERNS = ["-s", "/srv/[a-z]+", r"--unit=[a-z]+\.service", "--lines=[0-9]{,3}", "[^-][a-z]*"]


@BOUNDED
@given(case=st.sampled_from(EXEC_PATTERNS).flatmap(lambda p: st.tuples(st.just(p), text_and(p))))
@example(case=("--unit=[a-z]+\\.service", "--unit=app.service"))
def test_exec_arguments_match_their_documented_schema(case: tuple[str, str]) -> None:
    pattern, value = case
    compiled = re.compile(pattern)
    if refused_or_accepted(lambda: check_argument(FIELD, value, compiled)) is not None:
        schema = argument_schema(compiled)
        assert schema is not None
        assert documented(schema, value)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return contract_registry(tmp_path_factory.mktemp("registry"))


def _requests(registry: Registry) -> st.SearchStrategy[HostOpRequest]:
    """Requests for every adapter: a real command or any text, any resource and args."""
    kinds = sorted(registry)
    commands = sorted({c for kind in kinds for c in registry[kind].commands})
    return st.builds(
        HostOpRequest,
        kind=st.sampled_from(kinds),
        resource=text_and(r"(/srv/app|/usr/bin/du|ansible://site\.yml|tank(/a)?(@s)?|101)"),
        args=st.lists(st.one_of(st.sampled_from(commands), text_and()), min_size=1, max_size=4).map(
            tuple
        ),
    )


@BOUNDED
@given(data=st.data())
def test_every_adapter_refuses_typed_or_builds_a_safe_operation(
    registry: Registry, data: st.DataObject
) -> None:
    request = data.draw(_requests(registry))
    try:
        operation = registry.adapter_for(request.kind).parse(request, "tester")
    except ValidationError as exc:
        assert exc.status == 400 and exc.code in DOCUMENTED_CODES, exc
        assert exc.field == "resource" or re.fullmatch(r"args\[[0-9]+\]", exc.field or ""), exc
        return
    check_operation(operation)
    assert operation.args == request.args and operation.resource == request.resource


# --- the request parsers on any JSON value and any bytes -------------------------------

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(ANY_TEXT, inner, max_size=5),
    max_leaves=20,
)
ENVELOPE = st.fixed_dictionaries(
    {},
    optional={
        "kind": JSON | st.sampled_from(["zfs", "systemd", "pct", "git", "exec"]),
        "resource": JSON,
        "args": st.lists(JSON | st.sampled_from(["list", "status", "run"]), max_size=40),
        "dry_run": JSON,
        "reason": JSON,
        "approval_id": JSON | st.from_regex(APPROVAL_ID, fullmatch=True),
        "token": JSON,
    },
)


@BOUNDED
@given(document=JSON | ENVELOPE)
def test_the_envelope_refuses_typed_or_returns_a_well_typed_request(document: Any) -> None:
    try:
        request = parse_host_op(document)
    except ValidationError as exc:
        assert exc.status == 400 and exc.code in DOCUMENTED_CODES, exc
        return
    assert isinstance(request.kind, str) and request.kind
    assert isinstance(request.resource, str)
    assert 0 < len(request.args) <= MAX_ARGS
    assert all(isinstance(arg, str) for arg in request.args)
    assert request.approval_id is None or APPROVAL_ID.fullmatch(request.approval_id)


@BOUNDED
@given(body=st.binary(max_size=512) | JSON.map(lambda d: json.dumps(d).encode()))
def test_any_body_decodes_or_is_a_typed_400(body: bytes) -> None:
    try:
        decode_json(body)
    except RequestError as exc:
        assert (exc.status, exc.code, exc.field) == (400, "bad_request", "body")


@BOUNDED
@given(document=JSON | ENVELOPE)
def test_approve_bodies_refuse_typed_or_give_a_verdict(document: Any) -> None:
    try:
        token, approve, approval_id = parse_verdict(document)
    except ValidationError as exc:
        assert exc.status == 400 and exc.code in DOCUMENTED_CODES, exc
        return
    assert isinstance(token, str) and len(token) <= 64 and isinstance(approve, bool)
    assert approval_id is None or APPROVAL_ID.fullmatch(approval_id)


def _webhook_documents() -> st.SearchStrategy[Any]:
    envelope = st.fixed_dictionaries(
        {},
        optional={
            "sourceNumber": JSON | st.sampled_from(["+15555550001", "+1;id"]),
            "timestamp": JSON,
            "dataMessage": JSON | st.fixed_dictionaries({"message": JSON}),
            "syncMessage": JSON,
        },
    )
    item = st.fixed_dictionaries({"envelope": envelope}, optional={"account": JSON})
    rpc = st.fixed_dictionaries(
        {"jsonrpc": st.just("2.0"), "method": st.just("receive"), "params": item}
    )
    return JSON | item | rpc | st.lists(rpc, max_size=3)


@BOUNDED
@given(body=st.binary(max_size=512) | _webhook_documents().map(lambda d: json.dumps(d).encode()))
def test_webhook_bodies_refuse_typed_or_give_replies(body: bytes) -> None:
    try:
        replies = parse_webhook(body)
    except InvalidWebhookBody as exc:
        assert exc.status == 400 and exc.code in DOCUMENTED_CODES, exc
        return
    for reply in replies:
        assert isinstance(reply.text, str) and reply.text.strip()
        assert isinstance(reply.timestamp_ms, int) and reply.timestamp_ms >= 0


@BOUNDED
@given(text=text_and(r"[0-9A-Za-z -]{14,20}"))
def test_typed_tokens_normalise_to_a_token_or_nothing(text: str) -> None:
    token = tokens.normalize(text)
    assert token is None or (
        len(token) == tokens.TOKEN_LENGTH and set(token) <= set(tokens.TOKEN_ALPHABET)
    )


# --- the fuzz target -----------------------------------------------------------------


def _mutations() -> st.SearchStrategy[bytes]:
    """A seed with some bytes replaced, inserted or cut: near-valid bodies."""

    def mutate(seed: bytes, at: int, cut: int, insert: bytes) -> bytes:
        at %= len(seed) + 1
        return seed[:at] + insert + seed[at + cut :]

    return st.builds(
        mutate,
        st.sampled_from(SEEDS),
        st.integers(0, 400),
        st.integers(0, 8),
        st.binary(max_size=8),
    )


@FUZZ
@given(data=st.binary(max_size=4096) | _mutations())
def test_request_parsing_survives_any_bytes(registry: Registry, data: bytes) -> None:
    parse_everything(registry, data)


@pytest.fixture
def seeds(tmp_path: Path) -> Iterator[Path]:
    for number, seed in enumerate(SEEDS):
        (tmp_path / f"seed-{number}").write_bytes(seed)
    yield tmp_path


def test_the_atheris_target_runs_clean(seeds: Path) -> None:
    """A short, seeded, coverage-guided run: the target works and finds no crash."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.resilience.fuzz_request",
            "-runs=30000",
            "-seed=7",
            str(seeds),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Done 30000 runs" in done.stderr
