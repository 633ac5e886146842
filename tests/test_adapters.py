"""The closed adapter registry and what every adapter must honour."""

from __future__ import annotations

import pytest

from host_agent.adapters import Registry, build_registry
from host_agent.adapters.zfs import ZfsAdapter
from host_agent.config import Config
from host_agent.errors import UnknownKind
from host_agent.operations import OPERATION_NAMES


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
