"""The closed adapter registry: built once at start-up, duplicate kinds refused."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType

from host_agent.adapters.base import Adapter
from host_agent.adapters.exec import ExecAdapter
from host_agent.adapters.git import GitAdapter
from host_agent.adapters.pct import PctAdapter
from host_agent.adapters.systemd import SystemdAdapter
from host_agent.adapters.zfs import ZfsAdapter
from host_agent.config import Config
from host_agent.errors import UnknownKind
from host_agent.operations import OPERATION_NAMES
from host_agent.root_equivalent import PROTECTED_PATHS, read_protected_datasets


class Registry(Mapping[str, Adapter]):
    """Read-only kind → adapter mapping."""

    def __init__(self, adapters: Iterable[Adapter]) -> None:
        table: dict[str, Adapter] = {}
        for adapter in adapters:
            if adapter.kind in table:
                raise ValueError(f"duplicate adapter kind {adapter.kind!r}")
            unknown = adapter.operation_names() - OPERATION_NAMES
            if unknown:
                raise ValueError(f"adapter {adapter.kind!r} offers unknown operations {unknown}")
            table[adapter.kind] = adapter
        self._table = MappingProxyType(table)

    def adapter_for(self, kind: str) -> Adapter:
        try:
            return self._table[kind]
        except KeyError:
            raise UnknownKind(kind) from None

    def __getitem__(self, kind: str) -> Adapter:
        return self._table[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)


def build_registry(config: Config) -> Registry:
    """Every adapter, built once from the config that shapes its validation (and, for
    zfs, the mount table as it is now: at start and on each reload)."""
    return Registry(
        [
            ZfsAdapter(config.zfs, read_protected_datasets(protected_paths(config))),
            SystemdAdapter(config.systemd),
            PctAdapter(config.pct),
            GitAdapter(config.git),
            ExecAdapter(config.exec),
        ]
    )


def protected_paths(config: Config) -> tuple[str, ...]:
    """Directories whose datasets are never destroyed or rolled back: the built-in
    ones, the audit log's and approval store's directories, and `[zfs] protected_paths`."""
    return (
        *PROTECTED_PATHS,
        str(config.audit.log_path.parent),
        str(config.approval.store_path.parent),
        *(str(path) for path in config.zfs.protected_paths),
    )
