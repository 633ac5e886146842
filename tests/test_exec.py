"""The exec adapter: exact allowlists, argument patterns, playbooks, result mapping."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from host_agent.adapters import build_registry
from host_agent.adapters.exec import ExecAdapter, parse_recap
from host_agent.config import Config
from host_agent.errors import AdapterDisabled, ValidationError
from host_agent.operations import Operation
from host_agent.request import HostOpRequest
from host_agent.runner import RunResult
from tests.hostile import HOSTILE_NAMES
from tests.support import Pki, config_text, write_config

EXEC = """
[exec]
enabled = true
allowed_commands = [
    "/usr/bin/uptime", "/usr/bin/id", "/usr/bin/du", "/usr/bin/touch", "/usr/bin/loose",
    "/usr/bin/systemctl", "/usr/bin/nice",
]
playbook_dir = "/etc/host-agent/playbooks"
allowed_playbooks = ["site.yml", "restart-app.yaml"]

[exec.argument_patterns]
"/usr/bin/id" = ["-u"]
"/usr/bin/du" = ["-sh", "/srv/[a-z0-9_-]+"]
"/usr/bin/touch" = ["/srv/markers/[a-z]+"]
"/usr/bin/loose" = [".*"]
"/usr/bin/systemctl" = ["status|show"]
"/usr/bin/nice" = ["-n", "-?[0-9]+"]
"""


@pytest.fixture
def exec_config(pki: Pki, tmp_path: Path) -> Config:
    return write_config(tmp_path / "agent.toml", config_text(pki, tmp_path, extra=EXEC))


@pytest.fixture
def adapter(exec_config: Config) -> ExecAdapter:
    return ExecAdapter(exec_config.exec)


def parse(adapter: ExecAdapter, resource: str, *args: str) -> Operation:
    return adapter.parse(HostOpRequest("exec", resource, ("run", *args)), "librarian")


def refused(adapter: ExecAdapter, resource: str, *args: str) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        parse(adapter, resource, *args)
    assert caught.value.status == 400
    return caught.value


@pytest.mark.parametrize(
    ("resource", "args", "argv"),
    [
        pytest.param("/usr/bin/uptime", (), ("command", "/usr/bin/uptime"), id="no-patterns"),
        pytest.param("/usr/bin/id", (), ("command", "/usr/bin/id"), id="fewer-than-patterns"),
        pytest.param("/usr/bin/id", ("-u",), ("command", "/usr/bin/id", "-u"), id="option"),
        pytest.param(
            "/usr/bin/du",
            ("-sh", "/srv/app_1"),
            ("command", "/usr/bin/du", "-sh", "/srv/app_1"),
            id="two-patterns",
        ),
        pytest.param(
            "/usr/bin/nice",
            ("-n", "-5"),
            ("command", "/usr/bin/nice", "-n", "-5"),
            id="negative-number",
        ),
        pytest.param(
            "/usr/bin/systemctl",
            ("show",),
            ("command", "/usr/bin/systemctl", "show"),
            id="alternation",
        ),
        pytest.param("ansible://site.yml", (), ("playbook", "site.yml"), id="playbook"),
        pytest.param(
            "ansible://restart-app.yaml",
            ("check",),
            ("playbook", "restart-app.yaml", "check"),
            id="playbook-check",
        ),
    ],
)
def test_wrapper_argv(
    adapter: ExecAdapter, resource: str, args: tuple[str, ...], argv: tuple[str, ...]
) -> None:
    operation = parse(adapter, resource, *args)
    assert operation.wrapper == "host-agent-exec"
    assert operation.wrapper_argv == ("run", *argv)
    assert (operation.name, operation.mutating, operation.recursive) == ("exec-run", True, False)
    assert operation.resource == resource and operation.args == ("run", *args)


def _codes(codes: dict[str, str]) -> list[object]:
    """HOSTILE_NAMES, each with the error code it must get (every case needs one)."""
    return [pytest.param(case.values[0], codes[str(case.id)], id=case.id) for case in HOSTILE_NAMES]


_SHELL_LIKE = ("shell-substitution", "shell-backtick", "shell-pipe", "shell-and")
_UNPRINTABLE = ("nul-byte", "newline", "carriage-return", "tab", "space", "shell-semicolon")
_LOOKALIKE = (
    "unicode-cyrillic-a",
    "unicode-zero-width",
    "unicode-bidi-override",
    "unicode-fullwidth",
)
_OPTIONS = ("leading-dash", "long-option", "option-assign", "long-option-assign")
_COMMON = {
    "empty": "missing_argument",
    **dict.fromkeys((*_UNPRINTABLE, *_LOOKALIKE), "invalid_characters"),
    **dict.fromkeys(_OPTIONS, "option_injection"),
}

RESOURCE_CODES = {
    **_COMMON,
    **dict.fromkeys(
        (*_SHELL_LIKE, "shell-redirect", "quote", "dotdot-path", "dotdot-inside", "glob"),
        "invalid_name",
    ),
    "overlong": "invalid_name",
    "absolute-path": "command_not_allowed",
}
ARGUMENT_CODES = {
    **_COMMON,
    **dict.fromkeys(
        (*_SHELL_LIKE, "shell-redirect", "quote", "dotdot-path", "dotdot-inside", "glob"),
        "argument_not_allowed",
    ),
    "overlong": "too_long",
    "absolute-path": "argument_not_allowed",
}
# After "ansible://" nothing reads as an option: anything printable is just not listed.
PLAYBOOK_CODES = {
    **dict.fromkeys(ARGUMENT_CODES, "playbook_not_allowed"),
    **dict.fromkeys((*_UNPRINTABLE, *_LOOKALIKE), "invalid_characters"),
}


@pytest.mark.parametrize(("value", "code"), _codes(RESOURCE_CODES))
def test_hostile_resource_is_refused(adapter: ExecAdapter, value: str, code: str) -> None:
    error = refused(adapter, value)
    assert (error.field, error.code) == ("resource", code)


@pytest.mark.parametrize(("value", "code"), _codes(ARGUMENT_CODES))
def test_hostile_argument_is_refused(adapter: ExecAdapter, value: str, code: str) -> None:
    error = refused(adapter, "/usr/bin/touch", value)
    assert (error.field, error.code) == ("args[1]", code)
    if code != "argument_not_allowed":
        # A pattern that matches anything still keeps the text and option checks.
        error = refused(adapter, "/usr/bin/loose", value)
        assert (error.field, error.code) == ("args[1]", code)


@pytest.mark.parametrize(("value", "code"), _codes(PLAYBOOK_CODES))
def test_hostile_playbook_name_is_refused(adapter: ExecAdapter, value: str, code: str) -> None:
    error = refused(adapter, f"ansible://{value}")
    assert (error.field, error.code) == ("resource", code)


@pytest.mark.parametrize(
    ("resource", "code"),
    [
        pytest.param("/usr/bin/../bin/id", "command_not_allowed", id="dotdot"),
        pytest.param("/usr/bin/./id", "command_not_allowed", id="dot"),
        pytest.param("//usr/bin/id", "command_not_allowed", id="double-leading-slash"),
        pytest.param("/usr//bin/id", "command_not_allowed", id="double-slash"),
        pytest.param("/usr/bin/id/", "command_not_allowed", id="trailing-slash"),
        pytest.param("/bin/id", "command_not_allowed", id="merged-usr-alias"),
        pytest.param("/usr/bin/idx", "command_not_allowed", id="allowed-prefix"),
        pytest.param("/usr/bin/i", "command_not_allowed", id="allowed-truncated"),
        pytest.param("/usr/bin", "command_not_allowed", id="directory"),
        pytest.param("/USR/BIN/ID", "command_not_allowed", id="case"),
        pytest.param("usr/bin/id", "invalid_name", id="relative"),
        pytest.param("./id", "invalid_name", id="dot-relative"),
        pytest.param("id", "invalid_name", id="bare-name"),
        pytest.param("~root/id", "invalid_name", id="tilde"),
        pytest.param("ansible:/site.yml", "invalid_name", id="playbook-one-slash"),
        pytest.param("ANSIBLE://site.yml", "invalid_name", id="playbook-upper-scheme"),
        pytest.param("ansible://playbooks/site.yml", "playbook_not_allowed", id="predecessor-form"),
        pytest.param(
            "ansible:///etc/host-agent/playbooks/site.yml", "playbook_not_allowed", id="abs"
        ),
        pytest.param("ansible://./site.yml", "playbook_not_allowed", id="playbook-dot"),
        pytest.param("ansible://site.yml/", "playbook_not_allowed", id="playbook-slash"),
        pytest.param("ansible://site", "playbook_not_allowed", id="playbook-no-suffix"),
        pytest.param("ansible://other.yml", "playbook_not_allowed", id="playbook-unlisted"),
    ],
)
def test_resource_must_be_exactly_listed(adapter: ExecAdapter, resource: str, code: str) -> None:
    error = refused(adapter, resource)
    assert (error.field, error.code) == ("resource", code)


@pytest.mark.parametrize(
    ("resource", "args", "field", "code"),
    [
        pytest.param("/usr/bin/uptime", ("x",), "args[1]", "too_many_arguments", id="no-patterns"),
        pytest.param("/usr/bin/id", ("-u", "-u"), "args[2]", "too_many_arguments", id="extra"),
        pytest.param("/usr/bin/id", ("-g",), "args[1]", "argument_not_allowed", id="other-option"),
        pytest.param("/usr/bin/id", ("-ug",), "args[1]", "argument_not_allowed", id="longer"),
        pytest.param("/usr/bin/id", ("-u=1",), "args[1]", "argument_not_allowed", id="assign"),
        pytest.param(
            "/usr/bin/du", ("/srv/app",), "args[1]", "argument_not_allowed", id="wrong-position"
        ),
        pytest.param(
            "/usr/bin/du", ("-sh", "-x"), "args[2]", "option_injection", id="option-for-path"
        ),
        pytest.param(
            "/usr/bin/du", ("-sh", "/srv/a/../b"), "args[2]", "argument_not_allowed", id="escape"
        ),
        pytest.param(
            "/usr/bin/du", ("-sh", "/srv/app", "x"), "args[3]", "too_many_arguments", id="three"
        ),
        pytest.param(
            "/usr/bin/systemctl", ("statusshow",), "args[1]", "argument_not_allowed", id="alt-1"
        ),
        pytest.param(
            "/usr/bin/systemctl", ("status|show",), "args[1]", "argument_not_allowed", id="alt-2"
        ),
        pytest.param(
            "/usr/bin/systemctl", ("xstatus",), "args[1]", "argument_not_allowed", id="anchored"
        ),
        pytest.param("/usr/bin/loose", ("-rf",), "args[1]", "option_injection", id="dot-star"),
        pytest.param("/usr/bin/nice", ("-n", "--5"), "args[2]", "argument_not_allowed", id="n"),
        pytest.param("ansible://site.yml", ("--check",), "args[1]", "invalid_argument", id="pb"),
        pytest.param("ansible://site.yml", ("CHECK",), "args[1]", "invalid_argument", id="case"),
        pytest.param(
            "ansible://site.yml", ("check", "check"), "args[2]", "too_many_arguments", id="two"
        ),
    ],
)
def test_arguments_follow_their_patterns(
    adapter: ExecAdapter, resource: str, args: tuple[str, ...], field: str, code: str
) -> None:
    error = refused(adapter, resource, *args)
    assert (error.field, error.code) == (field, code)


def test_leading_dash_is_allowed_only_where_the_pattern_starts_with_one(
    adapter: ExecAdapter,
) -> None:
    assert parse(adapter, "/usr/bin/loose", "anything").wrapper_argv[-1] == "anything"
    assert parse(adapter, "/usr/bin/nice", "-n", "7").wrapper_argv[-2:] == ("-n", "7")
    error = refused(adapter, "/usr/bin/loose", "-rf")
    assert (error.field, error.code) == ("args[1]", "option_injection")


def test_unknown_command_is_refused(adapter: ExecAdapter) -> None:
    with pytest.raises(ValidationError) as caught:
        adapter.parse(HostOpRequest("exec", "/usr/bin/uptime", ("exec",)), "librarian")
    assert (caught.value.field, caught.value.code) == ("args[0]", "unknown_command")


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(HostOpRequest("exec", "/usr/bin/uptime", ("run",)), id="allowed-command"),
        pytest.param(HostOpRequest("exec", "ansible://site.yml", ("run",)), id="playbook"),
        pytest.param(HostOpRequest("exec", "x", ("bogus",)), id="anything"),
    ],
)
def test_disabled_refuses_everything(exec_config: Config, request_: HostOpRequest) -> None:
    adapter = ExecAdapter(dataclasses.replace(exec_config.exec, enabled=False))
    with pytest.raises(AdapterDisabled) as caught:
        adapter.parse(request_, "librarian")
    assert (caught.value.status, caught.value.code) == (403, "adapter_disabled")
    assert "[exec] enabled = true" in caught.value.message


def test_exec_is_disabled_by_default(config: Config) -> None:
    assert config.exec.enabled is False
    with pytest.raises(AdapterDisabled):
        build_registry(config)["exec"].parse(
            HostOpRequest("exec", "/usr/bin/uptime", ("run",)), "librarian"
        )


def test_registry_builds_the_adapter_from_the_config(exec_config: Config) -> None:
    adapter = build_registry(exec_config)["exec"]
    assert isinstance(adapter, ExecAdapter) and adapter.config is exec_config.exec


# Real `ansible-playbook` 2.19 output for two hosts (trailing spaces included).
RECAP_OUTPUT = """
PLAY [all] *********************************************************************

TASK [write marker] ************************************************************
changed: [localhost]
fatal: [web-1.example.org]: FAILED! => {"changed": false, "msg": "boom"}

PLAY RECAP *********************************************************************
localhost                  : ok=1    changed=1    unreachable=0    failed=0    skipped=0    rescued=0    ignored=0   
web-1.example.org          : ok=3    changed=0    unreachable=1    failed=1    skipped=2    rescued=4    ignored=5   

"""  # noqa: E501, W291


def _result(stdout: str = "", stderr: str = "", exit_code: int = 0) -> RunResult:
    return RunResult(("sudo",), exit_code, stdout, stderr, False, 0.1)


def test_interpret_parses_the_play_recap(adapter: ExecAdapter) -> None:
    operation = parse(adapter, "ansible://site.yml", "check")
    assert adapter.interpret(operation, _result(RECAP_OUTPUT)) == {
        "playbook": "site.yml",
        "check": True,
        "recap": {
            "localhost": {
                "ok": 1,
                "changed": 1,
                "unreachable": 0,
                "failed": 0,
                "skipped": 0,
                "rescued": 0,
                "ignored": 0,
            },
            "web-1.example.org": {
                "ok": 3,
                "changed": 0,
                "unreachable": 1,
                "failed": 1,
                "skipped": 2,
                "rescued": 4,
                "ignored": 5,
            },
        },
    }


def test_recap_lines_count_only_after_the_recap_header() -> None:
    assert parse_recap("localhost : ok=1 changed=1\n") == {}
    assert parse_recap("no playbook output at all") == {}


def test_interpret_names_the_command(adapter: ExecAdapter) -> None:
    operation = parse(adapter, "/usr/bin/id", "-u")
    assert adapter.interpret(operation, _result("0\n")) == {"command": "/usr/bin/id"}
    playbook = parse(adapter, "ansible://site.yml")
    assert adapter.interpret(playbook, _result(""))["check"] is False


@pytest.mark.parametrize(
    ("resource", "exit_code", "stderr", "status", "code"),
    [
        pytest.param("/usr/bin/uptime", 1, "", 502, "operation_failed", id="command-fails"),
        pytest.param(
            "/usr/bin/uptime", 77, "usage\n", 502, "operation_failed", id="command-exits-77"
        ),
        pytest.param("/usr/bin/uptime", 64, "", 502, "operation_failed", id="command-exits-64"),
        pytest.param(
            "/usr/bin/uptime",
            77,
            "host-agent-exec: refused: command '/usr/bin/uptime' is not an exec_command\n",
            403,
            "wrapper_not_permitted",
            id="wrapper-refuses-command",
        ),
        pytest.param(
            "/usr/bin/uptime",
            66,
            "host-agent-exec: refused: no command /usr/bin/uptime\n",
            404,
            "not_found",
            id="wrapper-finds-no-command",
        ),
        pytest.param(
            "ansible://site.yml",
            78,
            "host-agent-exec: refused: playbook ...: must be owned by root\n",
            500,
            "wrapper_misconfigured",
            id="wrapper-unsafe-playbook",
        ),
        pytest.param(
            "ansible://site.yml", 2, "", 502, "operation_failed", id="playbook-task-failed"
        ),
        pytest.param(
            "/usr/bin/uptime",
            1,
            "uptime: /proc/uptime: Permission denied\n",
            403,
            "permission_denied",
            id="permission-denied",
        ),
        pytest.param(
            "/usr/bin/uptime",
            1,
            "sudo: a password is required\n",
            500,
            "sudo_refused",
            id="sudo",
        ),
    ],
)
def test_failures_map_to_status_and_code(
    adapter: ExecAdapter, resource: str, exit_code: int, stderr: str, status: int, code: str
) -> None:
    operation = parse(adapter, resource)
    failure = adapter.outcome(operation, _result(stderr=stderr, exit_code=exit_code))
    assert failure is not None
    assert (failure.status, failure.code) == (status, code)
    assert adapter.outcome(operation, _result()) is None
