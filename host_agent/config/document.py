"""The whole file: read it, hand each section to its reader, check what spans sections."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from host_agent.config.adapters import (
    BinariesConfig,
    ExecConfig,
    GitConfig,
    PctConfig,
    SystemdConfig,
    ZfsConfig,
    check_zfs_accounts,
    read_binaries,
    read_exec,
    read_git,
    read_pct,
    read_systemd,
    read_zfs,
    warn_about_targets,
)
from host_agent.config.agents import AgentProfile, Rule, may_overlap, read_agent, read_rules
from host_agent.config.approval import ApprovalConfig, read_approval, warn_about_channels
from host_agent.config.audit import AuditConfig, read_audit
from host_agent.config.fields import Reader, Table
from host_agent.config.metrics import MetricsConfig, read_metrics
from host_agent.config.policy import PolicyConfig, read_policy
from host_agent.config.rate_limit import RateLimitConfig, read_rate_limit
from host_agent.config.runner import RunnerConfig, read_runner
from host_agent.config.server import ServerConfig, read_server
from host_agent.config.wrappers import WrappersConfig, read_wrappers
from host_agent.errors import ConfigError


@dataclass(frozen=True)
class Config:
    source: Path
    server: ServerConfig
    runner: RunnerConfig
    audit: AuditConfig
    approval: ApprovalConfig
    metrics: MetricsConfig
    rate_limit: RateLimitConfig
    agents: tuple[AgentProfile, ...]
    rules: tuple[Rule, ...]
    git: GitConfig
    exec: ExecConfig
    binaries: BinariesConfig
    systemd: SystemdConfig = field(default_factory=SystemdConfig)
    zfs: ZfsConfig = field(default_factory=ZfsConfig)
    pct: PctConfig = field(default_factory=PctConfig)
    wrappers: WrappersConfig = field(default_factory=WrappersConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    warnings: tuple[str, ...] = field(default=(), compare=False)


def load_config(path: str | Path) -> Config:
    """Read and validate `path`; raise `ConfigError` naming every problem."""
    source = Path(path)
    return parse_config(read_document(source), source)


def read_document(source: Path) -> dict[str, Any]:
    """The decoded TOML of `source`, or `ConfigError` saying why it is none."""
    try:
        return tomllib.loads(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(source), [f"cannot read file: {exc.strerror}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(str(source), ["file is not valid UTF-8"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(source), [f"not valid TOML: {exc}"]) from exc


def parse_config(raw: dict[str, Any], source: Path) -> Config:
    """Validate an already-decoded TOML document."""
    reader = Reader(source)
    document = Table(reader, "", dict(raw))
    # The predecessor's README wrote [[agent]]/[[rule]] while its parser wanted
    # [[agents]]/[[rules]]; accept both spellings, never both at once.
    for singular, plural in (("agent", "agents"), ("rule", "rules")):
        if singular in document.data:
            if plural in document.data:
                reader.problem(singular, f"use either [[{singular}]] or [[{plural}]], not both")
            document.data[plural] = document.data.pop(singular)

    server = read_server(document.table("server", required=True))
    runner = read_runner(document.table("runner"))
    audit = read_audit(document.table("audit", required=True))
    approval = read_approval(document.table("approval"))
    metrics = read_metrics(document.table("metrics"))
    rate_limit = read_rate_limit(document.table("rate_limit"))
    agents = tuple(read_agent(table) for table in document.array_of_tables("agents"))
    rules = read_rules(document)
    git = read_git(document.table("git"))
    exec_ = read_exec(document.table("exec"))
    binaries = read_binaries(document.table("binaries"))
    systemd = read_systemd(document.table("systemd"))
    zfs = read_zfs(document.table("zfs"))
    pct = read_pct(document.table("pct"))
    wrappers = read_wrappers(document.table("wrappers"))
    policy = read_policy(document.table("policy"))
    document.finish()

    if not agents:
        reader.problem("agents", "at least one [[agents]] profile is required")
    bridge = approval.bridge_cn
    if bridge is not None and any(profile.matches(bridge) for profile in agents):
        reader.problem(
            "approval.bridge_cn",
            f"{bridge!r} matches an [[agents]] cn_pattern: an agent must never be the bridge",
        )
    warn_about_channels(approval, reader)
    admin = approval.admin_cn_pattern
    for profile in agents:
        if admin is not None and may_overlap(profile.cn_pattern, admin):
            reader.warn(
                f"[[agents]] cn_pattern {profile.cn_pattern!r} and [approval] admin_cn_pattern "
                f"{admin!r} can match the same CN: such a caller may both request operations "
                "and approve other callers' (never its own). Give agents CNs the admin "
                "pattern cannot match, unless the admins' own profile is meant"
            )
    warn_about_targets(agents, systemd, zfs, exec_, reader)
    check_zfs_accounts(agents, zfs, wrappers, runner.service_user, reader)
    if reader.problems:
        raise ConfigError(str(source), reader.problems)
    return Config(
        source=source,
        server=server,
        runner=runner,
        audit=audit,
        approval=approval,
        metrics=metrics,
        rate_limit=rate_limit,
        agents=agents,
        rules=rules,
        git=git,
        exec=exec_,
        binaries=binaries,
        systemd=systemd,
        zfs=zfs,
        pct=pct,
        wrappers=wrappers,
        policy=policy,
        warnings=tuple(reader.warnings),
    )
