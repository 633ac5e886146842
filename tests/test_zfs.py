"""ZFS adapter validation and output parsing, without a server."""

from __future__ import annotations

import pytest

from host_agent.adapters.zfs import GET_PROPERTIES, parse_get, parse_properties
from host_agent.errors import ValidationError
from host_agent.operations import Operation
from host_agent.request import HostOpRequest
from host_agent.runner import RunResult
from tests.hostile import HOSTILE_NAMES
from tests.support import open_zfs

zfs = open_zfs()


def _parse(resource: str, *args: str) -> tuple[str, ...]:
    return zfs.parse(HostOpRequest("zfs", resource, args), "tester").wrapper_argv


@pytest.mark.parametrize(
    ("resource", "args", "argv"),
    [
        pytest.param("", ("list",), ("list",), id="list-all"),
        pytest.param("tank", ("list", "snapshot"), ("list", "tank"), id="list-pool-snapshots"),
        pytest.param(
            "tank/media_01.x:y", ("list",), ("list", "tank/media_01.x:y"), id="list-nested"
        ),
        pytest.param(
            "tank/media",
            ("snapshot", "daily-2024-01-15"),
            ("snapshot", "tank/media@daily-2024-01-15"),
            id="snapshot",
        ),
        pytest.param(
            "tank/media",
            ("get", "used", "compression", "used"),
            ("get", "used,compression", "tank/media"),
            id="get-properties-deduplicated",
        ),
        pytest.param(
            "tank/media@s1",
            ("get",),
            ("get", ",".join(GET_PROPERTIES), "tank/media@s1"),
            id="get-all-allowlisted-of-snapshot",
        ),
        pytest.param("tank/old@s", ("destroy",), ("destroy", "tank/old@s"), id="destroy-snapshot"),
        pytest.param("tank/old", ("destroy",), ("destroy", "tank/old"), id="destroy-dataset"),
        pytest.param(
            "tank/old",
            ("destroy", "recursive"),
            ("destroy", "tank/old", "recursive"),
            id="destroy-recursive",
        ),
        pytest.param("tank/a@s", ("rollback",), ("rollback", "tank/a@s"), id="rollback"),
        pytest.param(
            "tank/a@s",
            ("rollback", "recursive"),
            ("rollback", "tank/a@s", "recursive"),
            id="rollback-recursive",
        ),
    ],
)
def test_valid_requests_become_exact_wrapper_argv(
    resource: str, args: tuple[str, ...], argv: tuple[str, ...]
) -> None:
    assert _parse(resource, *args) == argv


@pytest.mark.parametrize("value", HOSTILE_NAMES)
def test_hostile_dataset_names_are_rejected(value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _parse(value, "snapshot", "s")
    assert caught.value.field == "resource"
    if value:  # an empty resource is simply "missing"
        assert caught.value.code in {
            "invalid_characters",
            "option_injection",
            "invalid_name",
            "too_long",
        }


@pytest.mark.parametrize("value", HOSTILE_NAMES)
def test_hostile_snapshot_names_are_rejected(value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _parse("tank/data", "snapshot", value)
    assert caught.value.field == "args[1]"


@pytest.mark.parametrize(
    ("resource", "args", "field", "code"),
    [
        pytest.param("tank", ("snapshot",), "args[1]", "missing_argument", id="snapshot-no-name"),
        pytest.param(
            "tank", ("snapshot", "a", "b"), "args[2]", "too_many_arguments", id="snapshot-extra"
        ),
        pytest.param("tank", ("list", "bogus"), "args[1]", "invalid_argument", id="list-bad-type"),
        pytest.param("tank@s", ("list",), "resource", "invalid_name", id="list-snapshot-name"),
        pytest.param("1tank", ("list",), "resource", "invalid_name", id="pool-starts-digit"),
        pytest.param("tank/", ("list",), "resource", "invalid_name", id="trailing-slash"),
        pytest.param("tank//x", ("list",), "resource", "invalid_name", id="empty-component"),
        pytest.param("/".join(["t"] * 60), ("list",), "resource", "too_long", id="too-deep"),
        pytest.param(
            "tank/" + "a" * 240,
            ("snapshot", "b" * 20),
            "args[1]",
            "too_long",
            id="full-name-too-long",
        ),
        pytest.param("tank", ("clone",), "args[0]", "unknown_command", id="unknown-command"),
        pytest.param("tank", ("get", "all"), "args[1]", "invalid_argument", id="get-all-keyword"),
        pytest.param(
            "tank", ("get", "used", "sharenfs"), "args[2]", "invalid_argument", id="get-unlisted"
        ),
        pytest.param("tank", ("destroy",), "resource", "pool_root", id="destroy-pool-root"),
        pytest.param("tank/a", ("destroy", "-r"), "args[1]", "invalid_argument", id="destroy-flag"),
        pytest.param(
            "tank/a",
            ("destroy", "recursive", "x"),
            "args[2]",
            "too_many_arguments",
            id="destroy-extra",
        ),
        pytest.param("tank/a", ("rollback",), "resource", "invalid_name", id="rollback-dataset"),
        pytest.param("tank/a@s@t", ("rollback",), "resource", "invalid_name", id="double-at"),
        pytest.param("tank/a#mark", ("destroy",), "resource", "invalid_name", id="bookmark"),
        pytest.param("tank/a@", ("destroy",), "resource", "invalid_name", id="empty-snapshot"),
        pytest.param("mirror/a", ("list",), "resource", "invalid_name", id="reserved-pool"),
        pytest.param("tank/.x", ("list",), "resource", "invalid_name", id="dot-component"),
        pytest.param(
            "tank/a", ("snapshot", "x@y"), "args[1]", "invalid_name", id="snapshot-name-with-at"
        ),
    ],
)
def test_structural_errors_name_the_field(
    resource: str, args: tuple[str, ...], field: str, code: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        _parse(resource, *args)
    assert (caught.value.field, caught.value.code) == (field, code)


def test_operation_is_frozen_and_digest_binds_kind_resource_args() -> None:
    one = zfs.parse(HostOpRequest("zfs", "tank/a", ("snapshot", "s1")), "tester")
    assert one.name == "zfs-snapshot" and one.mutating
    with pytest.raises(AttributeError):
        one.resource = "tank/b"  # type: ignore[misc]
    same = zfs.parse(HostOpRequest("zfs", "tank/a", ("snapshot", "s1")), "tester")
    other = zfs.parse(HostOpRequest("zfs", "tank/a", ("snapshot", "s2")), "tester")
    assert one.digest() == same.digest() != other.digest()


def test_parse_properties_groups_machine_output() -> None:
    text = (
        "tank\ttype\tfilesystem\ntank\tused\t536576\ntank\tmountpoint\tnone\n"
        "tank@s\ttype\tsnapshot\ntank@s\tavailable\t-\ngarbage line\n"
    )
    assert parse_properties(text) == [
        {"name": "tank", "type": "filesystem", "used": 536576, "mountpoint": "none"},
        {"name": "tank@s", "type": "snapshot", "available": None},
    ]


@pytest.mark.parametrize("command", ["destroy", "rollback"])
@pytest.mark.parametrize("value", HOSTILE_NAMES)
def test_hostile_names_are_rejected_by_destructive_commands(command: str, value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        _parse(value, command)
    assert caught.value.field == "resource"
    with pytest.raises(ValidationError) as caught:
        _parse("tank/a@s", command, value)
    assert caught.value.field == "args[1]"


def _operation(resource: str, *args: str) -> Operation:
    return zfs.parse(HostOpRequest("zfs", resource, args), "tester")


def test_only_an_explicit_recursive_reaches_beyond_the_resource() -> None:
    assert _operation("tank/a", "destroy", "recursive").recursive
    assert _operation("tank/a@s", "rollback", "recursive").recursive
    assert not _operation("tank/a", "destroy").recursive
    assert not _operation("tank/a", "snapshot", "recursive").recursive
    assert _operation("tank/a", "destroy").mutating and not _operation("tank", "get").mutating


def test_get_output_becomes_values_with_their_source() -> None:
    operation = _operation("tank/a", "get", "used", "compression", "origin")
    output = "used\t200704\t-\ncompression\toff\tdefault\norigin\t-\t-\n"
    result = RunResult(operation.wrapper_argv, 0, output, "", False, 0.01)
    assert zfs.interpret(operation, result) == {
        "name": "tank/a",
        "properties": {
            "used": {"value": 200704, "source": None},
            "compression": {"value": "off", "source": "default"},
            "origin": {"value": None, "source": None},
        },
    }
    assert parse_get("garbage\n") == {}


@pytest.mark.parametrize(
    ("stderr", "status", "code"),
    [
        pytest.param(
            "cannot open 'tank/x': dataset does not exist", 404, "not_found", id="missing"
        ),
        pytest.param(
            "cannot rollback to 'tank/a@s': more recent snapshots exist\nuse '-r' to force",
            409,
            "newer_snapshots_exist",
            id="newer-snapshots",
        ),
        pytest.param(
            "cannot destroy 'tank/a': filesystem has children", 409, "has_dependents", id="children"
        ),
        pytest.param("cannot unmount '/m': Device or resource busy", 409, "busy", id="busy"),
        pytest.param(
            "cannot open 'tank': permission denied", 403, "permission_denied", id="denied"
        ),
        pytest.param("sudo: a password is required", 500, "sudo_refused", id="sudo"),
        pytest.param("internal error: out of memory", 502, "operation_failed", id="other"),
    ],
)
def test_tool_failures_map_to_status_and_code(stderr: str, status: int, code: str) -> None:
    operation = _operation("tank/a@s", "rollback")
    failure = zfs.outcome(operation, RunResult(operation.wrapper_argv, 1, "", stderr, False, 0.1))
    assert failure is not None
    assert (failure.status, failure.code) == (status, code)
