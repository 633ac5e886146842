"""Tool schemas and adapter validation agree.

Values a tool's JSON Schema accepts pass the adapter's validation (hypothesis draws
them from the schema); every hostile or near-miss value the adapter refuses, in any
place a user value goes, the schema refuses too; and the schemas' regexes mean the
same in ECMA-262 (what JSON Schema specifies and LLM clients use) as in Python.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from jsonschema import Draft202012Validator

from host_agent.adapters import Registry, build_registry
from host_agent.adapters.base import NOT_PRINTABLE_ASCII, ecma_regex, integer_pattern
from host_agent.adapters.exec import argument_schema
from host_agent.errors import ValidationError
from host_agent.operations import OPERATION_NAMES
from host_agent.request import MAX_REASON, parse_host_op
from tests.hostile import HOSTILE_NAMES
from tests.support import Pki, config_text, write_config

# Bounded so the file runs in seconds; no example database written into the repo.
BOUNDED = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

SCHEMA_CONFIG = r"""
[git]
allowed_repos = ["/srv/app", "/srv/www.d"]

[exec]
enabled = true
allowed_commands = ["/usr/bin/du", "/usr/bin/uptime", "/usr/bin/journalctl"]
playbook_dir = "/etc/host-agent/playbooks"
allowed_playbooks = ["site.yml", "deploy.yaml"]

[exec.argument_patterns]
"/usr/bin/du" = ["-s", "/srv/[a-z]+"]
"/usr/bin/journalctl" = ['--unit=[a-z]+\.service', "--lines=[0-9]{,3}", "[^-][a-z]*"]

[pct]
allowed_ostemplates = ["local:vztmpl/debian-12-*.tar.zst", "/var/lib/vz/template/cache/*"]
allowed_create_flags = ["hostname", "memory", "net0"]
"""

# One valid request per tool shape (args without the command); each string is a place.
VALID = [
    ("zfs-list", {"resource": "tank/a", "args": ["snapshot"]}),
    ("zfs-get", {"resource": "tank/a@s", "args": ["used", "compression"]}),
    ("zfs-snapshot", {"resource": "tank/a", "args": ["daily-1"]}),
    ("zfs-destroy", {"resource": "tank/a@s", "args": ["recursive"]}),
    ("zfs-destroy", {"resource": "tank/a/b"}),
    ("zfs-rollback", {"resource": "tank/a@s", "args": ["recursive"]}),
    ("systemd-status", {"resource": "app.service"}),
    ("systemd-start", {"resource": "nginx.service"}),
    ("systemd-stop", {"resource": "a-b_c:d.e.timer"}),
    ("systemd-restart", {"resource": "app@one.socket"}),
    ("pct-status", {"resource": "101"}),
    ("pct-start", {"resource": "100"}),
    ("pct-stop", {"resource": "12345"}),
    ("pct-destroy", {"resource": "999999"}),
    (
        "pct-create",
        {
            "resource": "105",
            "args": ["local:vztmpl/debian-12-std.tar.zst", "hostname=web1", "memory=512"],
        },
    ),
    ("git-status", {"resource": "/srv/app"}),
    ("git-log", {"resource": "/srv/www.d/site", "args": ["200"]}),
    ("git-fetch", {"resource": "/srv/app", "args": ["origin"]}),
    ("git-pull", {"resource": "/srv/app/sub", "args": ["up.stream"]}),
    ("git-checkout", {"resource": "/srv/app", "args": ["release/v1.2"]}),
    ("git-diff", {"resource": "/srv/app"}),
    ("git-diff", {"resource": "/srv/app", "args": ["v1.2"]}),
    ("exec-run", {"resource": "/usr/bin/du", "args": ["-s", "/srv/app"]}),
    (
        "exec-run",
        {"resource": "/usr/bin/journalctl", "args": ["--unit=a.service", "--lines=", "x"]},
    ),
    ("exec-run", {"resource": "ansible://site.yml", "args": ["check"]}),
]

# Values next to what validation accepts: range ends, ref and path rules, a final newline.
NEAR_MISSES = [
    *("99", "100", "999999", "1000000", "0101", "0", "1", "200", "201", "101\n"),
    *("a..b", "a/.b", ".a", "a.lock", "a.lock/b", "main.", "@", "a@{1}", "a/", "a//b", "main\n"),
    *("tank/", "tank@", "tank@s@t", "tank/a@", "mirror/a", "mirror", "raidz1@s", "a#b"),
    *("tank/.a", "tank/_a:b.c-d", "Tank", "1tank", "tank/a@b/c", "t" * 254, "t" * 256),
    *("app@.service", "app.service.", "a..service", "app.Service", "app", "@a.service"),
    *("/srv/app/..", "/srv/app/.", "/srv/app/", "/srv/app//x", "/srv/appx", "/srv", "/srv/www"),
    *("/srv/app/-x", "/srv/app/a b", "/srv/www.d/.git", "/srv/wwwxd/a", "/usr/bin/du/"),
    *("ansible://site.yml", "ansible://playbooks/site.yml", "site.yml", "check", "recursive"),
    *("snapshot", "all", "used", "origin", ".origin", "origin.", "a-b", "-s", "-sx", "--unit="),
    *("--lines=1234", "--lines=12", "--unit=a.service", "--unit=A.service", "/srv/a1", "x-"),
]

# (tool, place) where the schema is deliberately narrower than validation.
NARROWER = {
    # An empty resource lists every pool; the schema says "omit it" instead.
    ("zfs-list", "resource"),
    # Validation bounds DATASET@NAME together; the schema bounds each part.
    ("zfs-snapshot", "resource"),
    ("zfs-snapshot", "args[1]"),
    # A template glob's `*` stays within one name in the schema; fnmatch's crosses '/'.
    ("pct-create", "args[1]"),
}


@pytest.fixture(scope="module")
def registry(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    workdir = tmp_path_factory.mktemp("schemas")
    config = write_config(workdir / "agent.toml", config_text(pki, workdir, extra=SCHEMA_CONFIG))
    return build_registry(config)


def tool_schema(registry: Registry, name: str, *, recursive: bool = True) -> dict[str, Any]:
    kind, command = name.split("-", 1)
    schema = registry.adapter_for(kind).tool_parameters(command, recursive=recursive)
    assert schema is not None, name
    return schema


@cache
def _validator(text: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads(text))


def schema_accepts(schema: dict[str, Any], params: dict[str, Any]) -> bool:
    return _validator(json.dumps(schema, sort_keys=True)).is_valid(params)


def adapter_accepts(registry: Registry, name: str, params: dict[str, Any]) -> bool:
    """Whether /host/op would get past validation, the way the pipeline parses it."""
    kind, command = name.split("-", 1)
    document = {"kind": kind, "resource": params.get("resource"), "args": [command]}
    document["args"] += params.get("args", [])
    if "reason" in params:
        document["reason"] = params["reason"]
    try:
        request = parse_host_op(document)
        registry.adapter_for(kind).parse(request, "tester")
    except ValidationError:
        return False
    return True


def places(params: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Each place a user value goes (named as validation names the field), and a
    function putting another value there."""
    yield "resource", lambda value: {**params, "resource": value}
    for index in range(len(params.get("args", []))):
        yield (
            f"args[{index + 1}]",
            lambda value, i=index: {
                **params,
                "args": [*params["args"][:i], value, *params["args"][i + 1 :]],
            },
        )


def draft7(schema: Any) -> Any:
    """The same schema in draft-07 tuple syntax, which hypothesis-jsonschema reads."""
    if isinstance(schema, list):
        return [draft7(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    # No draft-07 form says "at most one item like this" (maxContains): generated values
    # the full schema refuses are set aside by the tests that draw them.
    dropped = ("examples", "contains", "minContains", "maxContains")
    converted = {key: draft7(value) for key, value in schema.items() if key not in dropped}
    if "prefixItems" in converted:
        converted["additionalItems"] = converted.pop("items", True)
        converted["items"] = converted.pop("prefixItems")
    return converted


def params_strategy(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Parameter objects drawn from a tool schema: each property from its own schema
    (the installed hypothesis-jsonschema cannot build objects with this hypothesis),
    one `anyOf` branch at a time, optional properties present or not."""
    branches = [
        {
            name: {"allOf": [draft7(prop), draft7(branch.get("properties", {}).get(name, {}))]}
            for name, prop in schema["properties"].items()
        }
        for branch in schema.get("anyOf", [{}])
    ]
    required = set(schema.get("required", ()))

    def drawn(properties: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
        return st.fixed_dictionaries(
            {name: from_schema(prop) for name, prop in properties.items() if name in required},
            optional={
                name: from_schema(prop) for name, prop in properties.items() if name not in required
            },
        )

    return st.one_of([drawn(properties) for properties in branches])


def patterns_in(schema: Any) -> Iterator[str]:
    if isinstance(schema, list):
        for item in schema:
            yield from patterns_in(item)
    elif isinstance(schema, dict):
        for key, value in schema.items():
            if key == "pattern" and isinstance(value, str):
                yield value
            elif key != "examples":
                yield from patterns_in(value)


def test_every_operation_has_a_tool_schema(registry: Registry) -> None:
    offered = {
        f"{kind}-{command}"
        for kind, adapter in registry.items()
        for command in adapter.commands
        if adapter.tool_parameters(command) is not None
    }
    assert offered == OPERATION_NAMES
    assert {name for name, _ in VALID} == OPERATION_NAMES


@pytest.mark.parametrize("name", sorted(OPERATION_NAMES))
def test_schemas_are_valid_2020_12_and_their_examples_parse(registry: Registry, name: str) -> None:
    for recursive in (True, False):
        schema = tool_schema(registry, name, recursive=recursive)
        Draft202012Validator.check_schema(schema)
        assert schema["additionalProperties"] is False
        assert schema["properties"]["reason"]["maxLength"] == MAX_REASON
        assert schema["examples"]
        for example in schema["examples"]:
            assert schema_accepts(schema, example), example
            assert adapter_accepts(registry, name, example), example


@pytest.mark.parametrize(("name", "params"), [pytest.param(*v, id=v[0]) for v in VALID])
def test_valid_requests_pass_both(registry: Registry, name: str, params: dict[str, Any]) -> None:
    assert adapter_accepts(registry, name, params)
    assert schema_accepts(tool_schema(registry, name), params)


@pytest.mark.parametrize(
    ("name", "recursive"),
    [(name, True) for name in sorted(OPERATION_NAMES)]
    + [("zfs-destroy", False), ("zfs-rollback", False)],
)
def test_values_the_schema_generates_pass_validation(
    registry: Registry, name: str, recursive: bool
) -> None:
    schema = tool_schema(registry, name, recursive=recursive)

    @BOUNDED
    @given(params_strategy(schema))
    def check(params: dict[str, Any]) -> None:
        if name == "pct-create":  # drawn without maxContains (see draft7)
            assume(schema_accepts(schema, params))
        assert schema_accepts(schema, params), params
        assert adapter_accepts(registry, name, params), params

    check()


@pytest.mark.parametrize(
    "value", [*HOSTILE_NAMES, *(pytest.param(v, id=f"near-{i}") for i, v in enumerate(NEAR_MISSES))]
)
@pytest.mark.parametrize(("name", "params"), [pytest.param(*v, id=v[0]) for v in VALID])
def test_the_schema_refuses_what_validation_refuses(
    registry: Registry, name: str, params: dict[str, Any], value: str
) -> None:
    """The brief's property on the hostile table, plus near misses: in every place,
    schema accepts ⇒ validation accepts. Outside NARROWER places they agree exactly."""
    schema = tool_schema(registry, name)
    for place, put in places(params):
        attacked = put(value)
        by_schema = schema_accepts(schema, attacked)
        by_adapter = adapter_accepts(registry, name, attacked)
        assert by_adapter or not by_schema, (place, attacked)
        if (name, place) not in NARROWER:
            assert by_schema == by_adapter, (place, attacked)


# Characters that matter to some rule, and a few that never pass.
_ALPHABET = "aZ09./-_@:+=#~^*?[]{}\\ \n\t\x00é"


@pytest.mark.parametrize(("name", "params"), [pytest.param(*v, id=v[0]) for v in VALID])
def test_random_values_get_the_same_answer(
    registry: Registry, name: str, params: dict[str, Any]
) -> None:
    schema = tool_schema(registry, name)
    values = st.text(_ALPHABET, max_size=14) | st.sampled_from(NEAR_MISSES)

    @BOUNDED
    @given(st.sampled_from(list(places(params))), values)
    def check(place: tuple[str, Any], value: str) -> None:
        where, put = place
        attacked = put(value)
        by_schema = schema_accepts(schema, attacked)
        by_adapter = adapter_accepts(registry, name, attacked)
        assert by_adapter or not by_schema, (where, attacked)
        if (name, where) not in NARROWER:
            assert by_schema == by_adapter, (where, attacked)

    check()


def test_reason_is_bounded_as_the_server_bounds_it(registry: Registry) -> None:
    schema = tool_schema(registry, "pct-status")
    for reason, ok in (("x" * MAX_REASON, True), ("x" * (MAX_REASON + 1), False)):
        params = {"resource": "101", "reason": reason}
        assert schema_accepts(schema, params) is ok
        assert adapter_accepts(registry, "pct-status", params) is ok


def test_a_reason_the_schema_accepts_the_server_accepts(registry: Registry) -> None:
    """The schema admits printable ASCII and Latin-1 text, a subset of what the server
    takes (every showable character): checked for every character up to U+2FFF."""
    schema = tool_schema(registry, "pct-status")
    admitted = []
    for code in range(0x3000):
        params = {"resource": "101", "reason": f"because {chr(code)}"}
        if schema_accepts(schema, params):
            assert adapter_accepts(registry, "pct-status", params), hex(code)
            admitted.append(code)
    assert len(admitted) == 95 + 94  # ASCII 0x20-0x7e, Latin-1 0xa1-0xff but 0xad


def test_schemas_refuse_unknown_parameters_and_a_missing_resource(registry: Registry) -> None:
    for name in ("systemd-start", "git-status", "exec-run", "zfs-get"):
        schema = tool_schema(registry, name)
        assert not schema_accepts(schema, {})
        valid = next(params for tool, params in VALID if tool == name)
        assert not schema_accepts(schema, {**valid, "kind": "zfs"})
        assert not schema_accepts(schema, {**valid, "args": [*valid.get("args", []), "x", "y"]})


def test_an_exec_command_with_an_unportable_pattern_is_left_out(pki: Pki, tmp_path: Path) -> None:
    extra = """
[exec]
enabled = true
allowed_commands = ["/usr/bin/du", "/usr/bin/id"]

[exec.argument_patterns]
"/usr/bin/du" = ["a*+"]
"""
    registry = build_registry(
        write_config(tmp_path / "a.toml", config_text(pki, tmp_path, extra=extra))
    )
    schema = tool_schema(registry, "exec-run")
    assert schema["properties"]["resource"]["enum"] == ["/usr/bin/id"]


@pytest.mark.parametrize(
    ("low", "high"), [(0, 0), (0, 9), (1, 200), (5, 1234), (37, 4021), (100, 999), (99, 101)]
)
def test_integer_pattern_is_exactly_the_range(low: int, high: int) -> None:
    pattern = re.compile(integer_pattern(low, high))
    for number in range(12_000):
        assert bool(pattern.fullmatch(str(number))) == (low <= number <= high), number
        assert not pattern.fullmatch(f"0{number}")


@pytest.mark.parametrize(
    ("python", "ecma"),
    [
        ("-s", "-s"),
        ("/srv/[a-z]+", "/srv/[a-z]+"),
        (r"a\.b", r"a\.b"),
        (r"a\-b", "a-b"),
        (r"a\/b", "a/b"),
        (r"a\_b", "a_b"),
        ("x{,3}", "x{0,3}"),
        ("x{2,}", "x{2,}"),
        ("x{2}?", "x{2}?"),
        ("x*?", "x*?"),
        ("a{", r"a\{"),
        ("a{}", r"a\{\}"),
        ("a{1,2", r"a\{1,2"),
        ("a}", r"a\}"),
        ("a]", r"a\]"),
        ("[]a]", r"[\]a]"),
        ("[^]a]", r"[^\]a]"),
        (r"[\-a]", r"[\-a]"),
        (r"[\!a]", "[!a]"),
        ("[a-]", "[a-]"),
        ("(ab|cd)+", "(ab|cd)+"),
        ("a*+", None),
        ("a++", None),
        ("a?+", None),
        ("a{2}+", None),
        (r"\d+", None),
        ("(?P<x>a)", None),
    ],
)
def test_ecma_regex_translates_admin_patterns(python: str, ecma: str | None) -> None:
    assert ecma_regex(python) == ecma


def _ecma_samples() -> list[str]:
    samples = [case.values[0] for case in HOSTILE_NAMES] + NEAR_MISSES
    for _, params in VALID:
        samples.append(params["resource"])
        samples.extend(params.get("args", []))
    return [*samples, "x", "xx", "xxxx", "ab", "abcd", "a{1,2", "a}", "a]", "]", "!", "-a"]


def _node_search(cases: list[tuple[str, str]]) -> list[bool | str]:
    """ECMA-262's answer (`u` flag, as JSON Schema asks) to re.search for each case."""
    script = """
const cases = JSON.parse(require("fs").readFileSync(0, "utf8"));
console.log(JSON.stringify(cases.map(([p, s]) => {
  try { return new RegExp(p, "u").test(s); } catch (e) { return String(e); }
})));
"""
    node = shutil.which("node")
    assert node is not None
    done = subprocess.run(
        [node, "-e", script], input=json.dumps(cases), capture_output=True, text=True, check=True
    )
    answers: list[bool | str] = json.loads(done.stdout)
    return answers


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node for an ECMA-262 engine")
def test_schema_patterns_mean_the_same_in_ecma_262(registry: Registry) -> None:
    patterns = {
        pattern
        for name in OPERATION_NAMES
        for recursive in (True, False)
        for pattern in patterns_in(tool_schema(registry, name, recursive=recursive))
    }
    # Every pattern comes with `not` NOT_PRINTABLE_ASCII, which hides the one known
    # difference (Python's `$` also matches before a final newline); compare both together.
    cases = [(p, s) for p in sorted(patterns) for s in _ecma_samples()]
    expected = [
        re.search(p, s) is not None and not re.search(NOT_PRINTABLE_ASCII, s) for p, s in cases
    ]
    answers = _node_search([(f"(?![^]*{NOT_PRINTABLE_ASCII})(?:{p})", s) for p, s in cases])
    assert [case for case, a, e in zip(cases, answers, expected, strict=True) if a != e] == []


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node for an ECMA-262 engine")
def test_translated_admin_patterns_mean_the_same_in_ecma_262() -> None:
    admin = [
        "-s", "/srv/[a-z]+", r"a\.b", r"a\-b", r"a\/b", "x{,3}", "x{2,}", "a{", "a{}",
        "a{1,2", "a}", "a]", "[]a]", "[^]a]", r"[\-a]", r"[\!a]", "[a-]", "(ab|cd)+",
        "[^-][a-z]*", r"--unit=[a-z]+\.service", "--lines=[0-9]{,3}",
    ]  # fmt: skip
    cases = []
    expected = []
    for python in admin:
        schema = argument_schema(re.compile(python))
        assert schema is not None
        for sample in _ecma_samples():
            cases.append((schema["pattern"], sample))
            allow = python.startswith("-") or not sample.startswith("-")
            expected.append(allow and re.fullmatch(python, sample) is not None)
    answers = _node_search(cases)
    assert [case for case, a, e in zip(cases, answers, expected, strict=True) if a != e] == []
