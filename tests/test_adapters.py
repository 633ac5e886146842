"""The closed adapter registry and what every adapter must honour."""

from __future__ import annotations

from pathlib import Path

import pytest

from host_agent.adapters import Registry, build_registry
from host_agent.config import Config
from host_agent.errors import UnknownKind, ValidationError
from host_agent.operations import OPERATION_NAMES, Operation
from host_agent.request import HostOpRequest
from tests.hostile import HOSTILE_NAMES
from tests.support import Pki, config_text, open_zfs, write_config


def test_registry_is_closed_and_rejects_duplicates(config: Config) -> None:
    registry = build_registry(config)
    assert list(registry) == ["zfs", "systemd", "pct", "git", "exec"]
    with pytest.raises(UnknownKind):
        registry.adapter_for("kubectl")
    with pytest.raises(ValueError, match="duplicate adapter kind 'zfs'"):
        Registry([open_zfs(), open_zfs()])
    with pytest.raises(TypeError):
        registry["pct"] = open_zfs()  # type: ignore[index]


def test_every_adapter_operation_is_a_known_operation_name(config: Config) -> None:
    for adapter in build_registry(config).values():
        assert adapter.operation_names() <= OPERATION_NAMES


def test_registry_covers_every_operation_name(config: Config) -> None:
    offered = set().union(*(a.operation_names() for a in build_registry(config).values()))
    assert offered == OPERATION_NAMES


# --- the shared hostile-input contract ------------------------------------------

CONTRACT_CONFIG = """
[git]
allowed_repos = ["/srv"]

[exec]
enabled = true
allowed_commands = ["/usr/bin/du"]
playbook_dir = "/etc/host-agent/playbooks"
allowed_playbooks = ["site.yml"]

[exec.argument_patterns]
"/usr/bin/du" = ["-s", "/srv/[a-z]+"]

[pct]
allowed_ostemplates = ["local:vztmpl/*.tar.zst"]
allowed_create_flags = ["hostname"]
"""
# A caller (admin-1) that may run every operation of every adapter without approval, and
# the contract config without rate limits: for targets that must reach the code under
# test with every request (the hostile corpus, the OpenAPI check), not a 429.
EVERY_OPERATION_PROFILE = """
[[agents]]
cn_pattern = "admin-*"
agent_type = "operator"
unix_user = "operator"
autonomy = "full"
allowed_operations = ["zfs-*", "systemd-*", "pct-*", "git-*", "exec-*"]
allow_recursive = true
"""
UNLIMITED_CONTRACT_CONFIG = CONTRACT_CONFIG + "\n[rate_limit]\nenabled = false\n"


# One valid request per command shape; every string in it is a place to attack.
VALID_REQUESTS = [
    ("zfs", "tank/a", ("list", "snapshot")),
    ("zfs", "tank/a", ("get", "used")),
    ("zfs", "tank/a", ("snapshot", "s")),
    ("zfs", "tank/a@s", ("destroy", "recursive")),
    ("zfs", "tank/a@s", ("rollback",)),
    ("systemd", "app.service", ("status",)),
    ("systemd", "app@one.service", ("restart",)),
    ("pct", "101", ("status",)),
    ("pct", "101", ("destroy",)),
    ("pct", "105", ("create", "local:vztmpl/debian.tar.zst", "hostname=web1")),
    ("git", "/srv/app", ("status",)),
    ("git", "/srv/app", ("log", "5")),
    ("git", "/srv/app", ("fetch", "origin")),
    ("git", "/srv/app", ("pull", "origin")),
    ("git", "/srv/app", ("checkout", "main")),
    ("git", "/srv/app", ("diff", "main")),
    ("exec", "/usr/bin/du", ("run", "-s", "/srv/app")),
    ("exec", "ansible://site.yml", ("run",)),
]


@pytest.fixture
def contract_registry(pki: Pki, tmp_path: Path) -> Registry:
    config = write_config(
        tmp_path / "agent.toml", config_text(pki, tmp_path, extra=CONTRACT_CONFIG)
    )
    return build_registry(config)


def _parse(registry: Registry, kind: str, resource: str, args: tuple[str, ...]) -> Operation:
    return registry.adapter_for(kind).parse(HostOpRequest(kind, resource, args), "tester")


@pytest.mark.parametrize(
    ("kind", "resource", "args"), [pytest.param(*r, id=f"{r[0]}-{r[2][0]}") for r in VALID_REQUESTS]
)
def test_every_valid_request_parses(
    contract_registry: Registry, kind: str, resource: str, args: tuple[str, ...]
) -> None:
    operation = _parse(contract_registry, kind, resource, args)
    assert operation.wrapper_argv[0] == args[0]


@pytest.mark.parametrize("value", HOSTILE_NAMES)
@pytest.mark.parametrize(
    ("kind", "resource", "args"), [pytest.param(*r, id=f"{r[0]}-{r[2][0]}") for r in VALID_REQUESTS]
)
def test_every_adapter_rejects_the_hostile_table_everywhere(
    contract_registry: Registry, kind: str, resource: str, args: tuple[str, ...], value: str
) -> None:
    """Each hostile value, in each place a user value goes, is a 400 naming that place."""
    places = [("resource", resource, args)] + [
        (f"args[{i}]", resource, (*args[:i], value, *args[i + 1 :])) for i in range(len(args))
    ]
    for field, attacked_resource, attacked_args in places:
        if (field, value, kind, args[0]) == ("resource", "", "zfs", "list"):
            continue  # an empty resource lists every pool
        attacked_resource = value if field == "resource" else attacked_resource
        with pytest.raises(ValidationError) as caught:
            _parse(contract_registry, kind, attacked_resource, attacked_args)
        assert caught.value.status == 400
        assert caught.value.field == field, (field, caught.value.field, caught.value.message)
