"""Adapter validation and the closed registry, without a server."""

from __future__ import annotations

import pytest

from host_agent.adapters import Registry, build_registry
from host_agent.adapters.zfs import ZfsAdapter, parse_properties
from host_agent.config import Config
from host_agent.errors import UnknownKind, ValidationError
from host_agent.operations import OPERATION_NAMES
from host_agent.request import HostOpRequest
from tests.hostile import HOSTILE_NAMES

zfs = ZfsAdapter()


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


def test_registry_is_closed_and_rejects_duplicates(config: Config) -> None:
    registry = build_registry(config)
    assert list(registry) == ["zfs", "systemd", "pct", "git", "exec"]
    with pytest.raises(UnknownKind):
        registry.adapter_for("kubectl")
    with pytest.raises(ValueError, match="duplicate adapter kind 'zfs'"):
        Registry([ZfsAdapter(), ZfsAdapter()])
    with pytest.raises(TypeError):
        registry["pct"] = ZfsAdapter()  # type: ignore[index]


def test_every_adapter_operation_is_a_known_operation_name(config: Config) -> None:
    for adapter in build_registry(config).values():
        assert adapter.operation_names() <= OPERATION_NAMES
