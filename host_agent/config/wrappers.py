"""[wrappers]: what the root-side wrappers themselves allow, whatever the agent decides.

The predecessor's `[wrappers.zfs_destroy]`: destroying is opt-in at the OS layer too.
Rendered into the wrappers' root-owned file; the zfs wrapper refuses a destroy unless
it is enabled, for an account listed by uid. Policy is the agent's decision; this
holds even against an agent that is taken over.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from host_agent.config.fields import Table


@dataclass(frozen=True)
class ZfsDestroyWrapper:
    enabled: bool = False
    # The accounts a destroy may be run for: the profile's unix_user with
    # [zfs] run_as_caller, else the agent's service account.
    allowed_uids: tuple[int, ...] = ()


@dataclass(frozen=True)
class WrappersConfig:
    zfs_destroy: ZfsDestroyWrapper = field(default_factory=ZfsDestroyWrapper)


def read_wrappers(t: Table) -> WrappersConfig:
    table = t.table("zfs_destroy")
    uids = table.get("allowed_uids", list, [], item=int, check=_check_uids)
    zfs_destroy = ZfsDestroyWrapper(
        enabled=table.get("enabled", bool, False), allowed_uids=tuple(uids)
    )
    if zfs_destroy.enabled and not zfs_destroy.allowed_uids:
        t.reader.warn(
            f"{table.key('allowed_uids')}: empty, so the zfs wrapper refuses every destroy "
            "although enabled = true"
        )
    table.finish()
    t.finish()
    return WrappersConfig(zfs_destroy)


def _check_uids(values: list[int]) -> str | None:
    bad = [v for v in values if isinstance(v, bool) or not 0 <= v < 2**32]
    return f"not user ids: {bad}" if bad else None
