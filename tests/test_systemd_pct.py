"""systemd and pct adapters: validation, output parsing, failure mapping, forced approval."""

from __future__ import annotations

from pathlib import Path

import pytest

from host_agent.adapters.base import Adapter, Failure
from host_agent.adapters.pct import PctAdapter, parse_status
from host_agent.adapters.systemd import STATUS_PROPERTIES, parse_show
from host_agent.config import PctConfig
from host_agent.errors import ValidationError
from host_agent.operations import Operation
from host_agent.policy import Effect, decide
from host_agent.request import HostOpRequest
from host_agent.runner import RunResult
from tests.hostile import HOSTILE_NAMES
from tests.support import Pki, config_text, open_systemd, write_config

systemd = open_systemd()
pct = PctAdapter(PctConfig(allowed_vmids=None))

# Codes a hostile name may be refused with; every one names the field.
HOSTILE_CODES = {
    "missing_argument",
    "invalid_characters",
    "option_injection",
    "invalid_name",
    "too_long",
    "glob_pattern",
}


def _operation(adapter: Adapter, resource: str, *args: str) -> Operation:
    return adapter.parse(HostOpRequest(adapter.kind, resource, args), "tester")


def _result(exit_code: int, stdout: str = "", stderr: str = "") -> RunResult:
    return RunResult(("sudo",), exit_code, stdout, stderr, False, 0.01)


# --- systemd -------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["status", "start", "stop", "restart"])
@pytest.mark.parametrize(
    "unit",
    [
        "nginx.service",
        "app@blue.service",
        "user@1000.service",
        "systemd-tmpfiles-clean.service",
        "cron.service",
        "apt-daily.timer",
        "multi-user.target",
        "home.mount",
        "systemd-ask-password-wall.path",
        "a.b_c:d.service",
    ],
)
def test_valid_units_become_exact_wrapper_argv(command: str, unit: str) -> None:
    operation = _operation(systemd, unit, command)
    assert operation.wrapper == "host-agent-systemd"
    assert operation.wrapper_argv == (command, unit)
    assert operation.mutating is (command != "status")
    assert not operation.always_requires_approval


@pytest.mark.parametrize("value", HOSTILE_NAMES)
def test_hostile_unit_names_are_rejected(value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _operation(systemd, value, "start")
    assert caught.value.field == "resource"
    assert caught.value.code in HOSTILE_CODES


@pytest.mark.parametrize(
    ("resource", "args", "field", "code"),
    [
        pytest.param(
            "app.service", ("status", "now"), "args[1]", "too_many_arguments", id="extra-arg"
        ),
        pytest.param(
            "app.service", ("start", "--now"), "args[1]", "too_many_arguments", id="extra-option"
        ),
        pytest.param("app.service", ("enable",), "args[0]", "unknown_command", id="enable"),
        pytest.param("app.service", ("kill",), "args[0]", "unknown_command", id="kill"),
        pytest.param("getty@.service", ("start",), "resource", "template_unit", id="template"),
        pytest.param("app.sevice", ("start",), "resource", "unsupported_unit_type", id="typo"),
        pytest.param("nginx", ("start",), "resource", "unsupported_unit_type", id="no-type"),
        pytest.param("sda.device", ("start",), "resource", "unsupported_unit_type", id="device"),
        pytest.param("user.slice", ("stop",), "resource", "unsupported_unit_type", id="slice"),
        pytest.param("app.service.", ("start",), "resource", "unsupported_unit_type", id="dot"),
        pytest.param("app*.service", ("stop",), "resource", "glob_pattern", id="glob-star"),
        pytest.param("app?.service", ("stop",), "resource", "glob_pattern", id="glob-question"),
        pytest.param("app[12].service", ("stop",), "resource", "glob_pattern", id="glob-class"),
        pytest.param("-.mount", ("stop",), "resource", "option_injection", id="root-mount"),
        pytest.param(
            r"mnt-my\x2ddisk.mount", ("stop",), "resource", "invalid_name", id="backslash"
        ),
        pytest.param("a@b@c.service", ("start",), "resource", "invalid_name", id="two-at"),
        pytest.param("@x.service", ("start",), "resource", "invalid_name", id="no-prefix"),
        pytest.param(".app.service", ("start",), "resource", "invalid_name", id="leading-dot"),
        pytest.param("a..b.service", ("start",), "resource", "invalid_name", id="dotdot"),
        pytest.param("app/x.service", ("start",), "resource", "invalid_name", id="slash"),
        pytest.param("a" * 248 + ".service", ("start",), "resource", "too_long", id="256-chars"),
    ],
)
def test_systemd_structural_errors_name_the_field(
    resource: str, args: tuple[str, ...], field: str, code: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        _operation(systemd, resource, *args)
    assert (caught.value.field, caught.value.code) == (field, code)


def test_longest_unit_name_is_accepted() -> None:
    unit = "a" * 247 + ".service"
    assert len(unit) == 255
    assert _operation(systemd, unit, "status").wrapper_argv == ("status", unit)


SHOW_ACTIVE = """\
MainPID=1234
ExecMainStatus=0
Id=nginx.service
Description=A high performance web server and a reverse proxy server
LoadState=loaded
ActiveState=active
SubState=running
UnitFileState=enabled
ActiveEnterTimestamp=Mon 2024-01-15 10:00:00 UTC
"""

SHOW_MISSING = """\
MainPID=0
ExecMainStatus=0
Id=nosuch.service
Description=nosuch.service
LoadState=not-found
ActiveState=inactive
SubState=dead
UnitFileState=
ActiveEnterTimestamp=
"""


def test_status_is_parsed_into_typed_properties() -> None:
    operation = _operation(systemd, "nginx.service", "status")
    result = _result(0, SHOW_ACTIVE)
    assert systemd.outcome(operation, result) is None
    assert systemd.interpret(operation, result) == {
        "unit": "nginx.service",
        "properties": {
            "Id": "nginx.service",
            "Description": "A high performance web server and a reverse proxy server",
            "LoadState": "loaded",
            "ActiveState": "active",
            "SubState": "running",
            "UnitFileState": "enabled",
            "MainPID": 1234,
            "ExecMainStatus": 0,
            "ActiveEnterTimestamp": "Mon 2024-01-15 10:00:00 UTC",
        },
    }


def test_show_parsing_keeps_only_asked_properties_and_fills_missing_with_none() -> None:
    # A .target has no Service properties; stray lines and values with '=' are handled.
    text = "Id=multi-user.target\nDescription=a=b\nNames=multi-user.target\ngarbage\nMainPID=\n"
    parsed = parse_show(text)
    assert list(parsed) == list(STATUS_PROPERTIES)
    assert parsed["Description"] == "a=b"
    assert parsed["MainPID"] is None and parsed["LoadState"] is None
    assert "Names" not in parsed


def test_inactive_unit_status_is_success() -> None:
    operation = _operation(systemd, "app.service", "status")
    text = SHOW_MISSING.replace("nosuch", "app").replace("not-found", "loaded")
    assert systemd.outcome(operation, _result(0, text)) is None
    properties = systemd.interpret(operation, _result(0, text))["properties"]
    assert (properties["ActiveState"], properties["MainPID"]) == ("inactive", 0)
    assert properties["UnitFileState"] is None


def test_status_of_a_unit_that_does_not_exist_is_not_found() -> None:
    operation = _operation(systemd, "nosuch.service", "status")
    failure = systemd.outcome(operation, _result(0, SHOW_MISSING))
    assert failure is not None
    assert (failure.status, failure.code) == (404, "not_found")


@pytest.mark.parametrize(
    ("unit", "command", "exit_code", "stderr", "status", "code"),
    [
        pytest.param(
            "nosuch.service",
            "start",
            5,
            "Failed to start nosuch.service: Unit nosuch.service not found.\n",
            404,
            "not_found",
            id="start-not-found",
        ),
        pytest.param(
            "nosuch.service",
            "stop",
            5,
            "Failed to stop nosuch.service: Unit nosuch.service not loaded.\n",
            404,
            "not_found",
            id="stop-not-loaded",
        ),
        pytest.param(
            "app.service",
            "restart",
            4,
            "Failed to restart app.service: Access denied\n",
            403,
            "permission_denied",
            id="access-denied",
        ),
        pytest.param(
            "app.service",
            "start",
            4,
            "Failed to start app.service: Interactive authentication required.\n",
            403,
            "permission_denied",
            id="polkit-auth",
        ),
        pytest.param(
            "app.service", "start", 1, "Job for app.service canceled.\n", 409, "busy", id="canceled"
        ),
        pytest.param(
            "app.service",
            "stop",
            4,
            "Failed to stop app.service: Transaction for app.service/stop is destructive "
            "(db.service has 'start' job queued, but 'stop' is included in transaction).\n",
            409,
            "busy",
            id="destructive-transaction",
        ),
        pytest.param(
            "app.service",
            "stop",
            1,
            "Failed to stop app.service: Device or resource busy\n",
            409,
            "busy",
            id="ebusy",
        ),
        pytest.param(
            "app.service",
            "start",
            1,
            "Failed to start app.service: Unit app.service is masked.\n",
            409,
            "unit_masked",
            id="masked",
        ),
        pytest.param(
            "busybox.service",
            "start",
            1,
            "Job for busybox.service failed because the control process exited with error "
            'code.\nSee "systemctl status busybox.service" and "journalctl -xeu '
            'busybox.service" for details.\n',
            502,
            "unit_failed",
            id="unit-named-busy-fails",
        ),
        pytest.param(
            "canceled.service",
            "start",
            5,
            "Failed to start canceled.service: Unit canceled.service not found.\n",
            404,
            "not_found",
            id="unit-named-canceled-missing",
        ),
        pytest.param(
            "app.service",
            "start",
            1,
            "Job for app.service timed out.\n",
            504,
            "unit_timeout",
            id="timeout",
        ),
        pytest.param(
            "app.service",
            "status",
            1,
            "System has not been booted with systemd as init system (PID 1). Can't operate.\n"
            "Failed to connect to bus: Host is down\n",
            503,
            "systemd_unavailable",
            id="no-systemd",
        ),
        pytest.param("app.service", "start", 64, "refused\n", 400, "wrapper_rejected", id="64"),
        pytest.param("app.service", "start", 3, "odd\n", 502, "operation_failed", id="other"),
    ],
)
def test_systemctl_failures_map_to_status_and_code(
    unit: str, command: str, exit_code: int, stderr: str, status: int, code: str
) -> None:
    operation = _operation(systemd, unit, command)
    failure = systemd.outcome(operation, _result(exit_code, stderr=stderr))
    assert isinstance(failure, Failure)
    assert (failure.status, failure.code) == (status, code)


@pytest.mark.parametrize(
    ("command", "data"),
    [
        ("start", {"started": "app.service"}),
        ("stop", {"stopped": "app.service"}),
        ("restart", {"restarted": "app.service"}),
    ],
)
def test_unit_jobs_report_what_was_done(command: str, data: dict[str, str]) -> None:
    operation = _operation(systemd, "app.service", command)
    assert systemd.outcome(operation, _result(0)) is None
    assert systemd.interpret(operation, _result(0)) == data


# --- pct -----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["status", "start", "stop", "destroy"])
@pytest.mark.parametrize("vmid", ["100", "101", "1000", "999999"])
def test_valid_vmids_become_exact_wrapper_argv(command: str, vmid: str) -> None:
    operation = _operation(pct, vmid, command)
    assert operation.wrapper == "host-agent-pct"
    assert operation.wrapper_argv == (command, vmid)
    assert operation.mutating is (command != "status")


@pytest.mark.parametrize("value", HOSTILE_NAMES)
def test_hostile_vmids_are_rejected(value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _operation(pct, value, "stop")
    assert caught.value.field == "resource"
    assert caught.value.code in HOSTILE_CODES


@pytest.mark.parametrize(
    ("resource", "args", "field", "code"),
    [
        pytest.param("99", ("start",), "resource", "vmid_out_of_range", id="99"),
        pytest.param("1000000", ("start",), "resource", "vmid_out_of_range", id="1000000"),
        pytest.param("0101", ("start",), "resource", "invalid_name", id="leading-zero"),
        pytest.param("0", ("start",), "resource", "invalid_name", id="zero"),
        pytest.param("1e3", ("start",), "resource", "invalid_name", id="exponent"),
        pytest.param("101.0", ("start",), "resource", "invalid_name", id="decimal"),
        pytest.param("+101", ("start",), "resource", "invalid_name", id="plus"),
        pytest.param("-101", ("start",), "resource", "option_injection", id="negative"),
        pytest.param("١٠١", ("start",), "resource", "invalid_characters", id="arabic-digits"),
        pytest.param("9" * 17, ("start",), "resource", "too_long", id="huge"),
        pytest.param("", ("status",), "resource", "missing_argument", id="missing"),
        pytest.param("101", ("start", "--force"), "args[1]", "too_many_arguments", id="extra"),
        pytest.param("101", ("destroy", "purge"), "args[1]", "too_many_arguments", id="purge"),
        pytest.param("101", ("exec",), "args[0]", "unknown_command", id="exec"),
        pytest.param("101", ("enter",), "args[0]", "unknown_command", id="enter"),
    ],
)
def test_pct_structural_errors_name_the_field(
    resource: str, args: tuple[str, ...], field: str, code: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        _operation(pct, resource, *args)
    assert (caught.value.field, caught.value.code) == (field, code)


@pytest.mark.parametrize(
    ("stdout", "status"),
    [
        ("status: running\n", "running"),
        ("status: stopped\n", "stopped"),
        ("name: web\nstatus: running\nvmid: 101\n", "running"),
        ("", None),
    ],
)
def test_pct_status_is_parsed(stdout: str, status: str | None) -> None:
    assert parse_status(stdout) == status
    operation = _operation(pct, "101", "status")
    assert pct.interpret(operation, _result(0, stdout)) == {"vmid": 101, "status": status}


@pytest.mark.parametrize(
    ("command", "data"),
    [("start", {"started": 101}), ("stop", {"stopped": 101}), ("destroy", {"destroyed": 101})],
)
def test_pct_actions_report_what_was_done(command: str, data: dict[str, int]) -> None:
    assert pct.interpret(_operation(pct, "101", command), _result(0)) == data


@pytest.mark.parametrize(
    ("command", "stderr", "status", "code"),
    [
        pytest.param(
            "status",
            "Configuration file 'nodes/pve/lxc/101.conf' does not exist\n",
            404,
            "not_found",
            id="missing",
        ),
        pytest.param("start", "CT is locked (backup)\n", 409, "busy", id="locked"),
        pytest.param(
            "stop",
            "can't lock file '/run/lock/lxc/pve-config-101.lock' - got timeout\n",
            409,
            "busy",
            id="lock-timeout",
        ),
        pytest.param(
            "destroy",
            "unable to destroy CT 101 - container is running\n",
            409,
            "container_running",
            id="destroy-running",
        ),
        pytest.param(
            "destroy",
            "can't remove CT 101 - protection mode enabled\n",
            409,
            "protected",
            id="protected",
        ),
        pytest.param("start", "CT 101 already running\n", 409, "already_running", id="running"),
        pytest.param("stop", "CT 101 not running\n", 409, "not_running", id="not-running"),
        pytest.param("stop", "please run as root\n", 403, "permission_denied", id="not-root"),
        pytest.param(
            "start",
            "Permission check failed (/vms/101, VM.PowerMgmt)\n",
            403,
            "permission_denied",
            id="acl",
        ),
        pytest.param(
            "start", "startup for container '101' failed\n", 502, "operation_failed", id="other"
        ),
    ],
)
def test_pct_failures_map_to_status_and_code(
    command: str, stderr: str, status: int, code: str
) -> None:
    operation = _operation(pct, "101", command)
    failure = pct.outcome(operation, _result(255, stderr=stderr))
    assert isinstance(failure, Failure)
    assert (failure.status, failure.code) == (status, code)


@pytest.mark.parametrize(
    ("command", "forced"), [("status", False), ("start", False), ("stop", False), ("destroy", True)]
)
def test_only_pct_destroy_always_requires_approval(command: str, forced: bool) -> None:
    assert _operation(pct, "101", command).always_requires_approval is forced


BYPASS_PROFILE = """
[[agents]]
cn_pattern = "admin-*"
agent_type = "admin"
unix_user = "root-helper"
autonomy = "full"
allow_full_autonomy_bypass = true
allowed_operations = ["pct-*", "systemd-*"]
"""

APPROVAL_RULES = """
[[rules]]
operation = "pct-stop"
approval_required = true

[[rules]]
operation = "pct-destroy"
approval_required = true
"""


def test_pct_destroy_needs_approval_even_with_full_autonomy_bypass(
    pki: Pki, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "agent.toml",
        config_text(pki, tmp_path, profiles=BYPASS_PROFILE, extra=APPROVAL_RULES),
    )
    # The same rule on pct-stop is bypassed, so the bypass is really in effect...
    stop = decide(config, "admin-1", _operation(pct, "101", "stop"))
    assert (stop.effect, stop.code) == (Effect.ALLOW, "allowed")
    # ...but not for destroy, which the adapter forces.
    destroy = decide(config, "admin-1", _operation(pct, "101", "destroy"))
    assert (destroy.effect, destroy.code, destroy.rule) == (
        Effect.APPROVAL,
        "approval_required",
        "adapter pct",
    )
