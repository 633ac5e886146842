"""TOML configuration, loaded once into frozen, validated objects.

The shape is the predecessor's (`clash-host-agent`) so its config files load
unchanged; keys added here are documented in docs/configuration.md. Loading
collects every problem, each naming its key, and raises one `ConfigError`.
Unknown keys are errors. Keys the predecessor had that have no effect here are
accepted and reported in `Config.warnings`, never dropped silently.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import sys
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from host_agent.errors import ConfigError
from host_agent.operations import OPERATION_NAMES

T = TypeVar("T")


class Autonomy(StrEnum):
    READ_ONLY = "read_only"
    SUPERVISED = "supervised"
    FULL = "full"


class Secret:
    """A string that never shows itself in repr, str or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class _Listener:
    """A `host:port` bind (IPv6 in brackets) with its parts."""

    bind: str

    @property
    def host(self) -> str:
        return self.bind.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.bind.rpartition(":")[2])


@dataclass(frozen=True)
class ConnectionLimits:
    """What peers can make the listener hold (invariant 12): time per phase, and how many
    connections overall, per source address before the handshake, and per CN after it."""

    handshake_timeout_seconds: float = 5.0
    # Keep-alive idle time, which also bounds how long a request's head may take.
    idle_timeout_seconds: float = 15.0
    body_timeout_seconds: float = 10.0
    # Lowered at start to half the process's descriptor limit (see tls_server).
    max_connections: int = 512
    max_handshakes: int = 128
    max_handshakes_per_address: int = 8
    max_connections_per_cn: int = 64
    h2_max_concurrent_streams: int = 16


@dataclass(frozen=True)
class ServerConfig(_Listener):
    bind: str
    cert: Path
    key: Path
    client_ca: Path
    crl_file: Path | None
    max_body_bytes: int
    # Scanned for grants to the service account broader than the wrappers.
    sudoers_file: Path = Path("/etc/sudoers")
    limits: ConnectionLimits = ConnectionLimits()


@dataclass(frozen=True)
class RunnerConfig:
    sudo: Path
    wrapper_dir: Path
    service_user: str | None
    timeout_seconds: float
    max_output_bytes: int


@dataclass(frozen=True)
class AuditConfig:
    log_path: Path
    rotation: str
    retention_days: int


@dataclass(frozen=True)
class Person:
    """One human and every identity they approve with: their votes count once."""

    name: str
    identities: frozenset[str]  # "signal:+15555550001", "admin:admin-ops-1", "pam:ops1"


@dataclass(frozen=True)
class ApprovalConfig:
    enabled: bool
    ttl_seconds: int
    token_entropy_bits: int
    signal_webhook: str | None
    allowed_approvers: tuple[str, ...]
    token_secret: Secret | None
    admin_cn_pattern: str | None
    # New in host-agent: where approvals live, so they survive a restart.
    store_path: Path
    # signal-cli-rest-api: base URL and the bridge's own number (sender).
    signal_url: str | None = None
    signal_number: str | None = None
    # POST /webhook/signal is authenticated by this HMAC secret, or by the
    # caller being exactly `bridge_cn` (a CN no agent profile matches).
    webhook_secret: Secret | None = None
    bridge_cn: str | None = None
    # Poll signal-cli-rest-api's receive endpoint this often (0: do not poll).
    poll_interval_seconds: float = 0
    # `host-agent approve` on the host: members of approvers_group reach the agent
    # through this Unix socket and authenticate with their password (PAM).
    local_socket: Path | None = None
    approvers_group: str | None = None
    # Who is who across channels, so a quorum counts people, not phones and logins.
    people: tuple[Person, ...] = ()
    # The predecessor's hook: "command:/abs/path" or an http(s) URL that must also say
    # yes before any approver's approval counts (approvals/identity_plugin.py).
    identity_plugin: str | None = None

    def is_admin(self, cn: str) -> bool:
        return self.admin_cn_pattern is not None and fnmatch.fnmatchcase(cn, self.admin_cn_pattern)

    def person_of(self, identity: str) -> str:
        """`person:<name>` for an identity listed under [[approval.people]], else itself."""
        for person in self.people:
            if identity in person.identities:
                return f"person:{person.name}"
        return identity


@dataclass(frozen=True)
class MetricsConfig(_Listener):
    """The optional plain-HTTP /metrics listener, meant for loopback."""

    enabled: bool
    bind: str


@dataclass(frozen=True)
class Limit:
    """`requests` per `per_seconds`, refilled continuously (a token bucket)."""

    requests: int
    per_seconds: int


@dataclass(frozen=True)
class RateLimitConfig:
    enabled: bool
    # The predecessor's: max_requests per window_seconds per CN on each of `endpoints`.
    max_requests: int
    window_seconds: int
    endpoints: tuple[str, ...]
    # New: per CN and class of request.
    read: Limit = Limit(600, 60)
    mutating: Limit = Limit(120, 60)
    approval: Limit = Limit(120, 60)
    # Refusals written to the audit log one by one, per source; past it they are counted.
    refusals: Limit = Limit(120, 60)
    max_tracked: int = 10_000


@dataclass(frozen=True)
class PatternRule:
    """Per-agent resource restriction: `operation` only on resources matching `pattern`."""

    operation: str
    pattern: re.Pattern[str]


@dataclass(frozen=True)
class AgentProfile:
    cn_pattern: str
    agent_type: str
    unix_user: str
    autonomy: Autonomy
    allowed_operations: tuple[str, ...]
    requires_approval_for: tuple[str, ...]
    pattern_rules: tuple[PatternRule, ...]
    allow_full_autonomy_bypass: bool
    # Recursive zfs destroy/rollback, which reach past the named resource.
    allow_recursive: bool = False

    def matches(self, cn: str) -> bool:
        return fnmatch.fnmatchcase(cn, self.cn_pattern)


@dataclass(frozen=True)
class Rule:
    index: int
    operation: str
    pattern: re.Pattern[str] | None
    approval_required: bool
    always_ask: bool
    approval_admin_only: bool
    deny: bool
    # Distinct approvers needed (new in host-agent).
    approvals_required: int = 1

    def describe(self) -> str:
        where = f" pattern={self.pattern.pattern!r}" if self.pattern else ""
        return f"rules[{self.index}] (operation={self.operation}{where})"


@dataclass(frozen=True)
class GitConfig:
    allowed_repos: tuple[Path, ...]


@dataclass(frozen=True)
class ExecConfig:
    enabled: bool
    allowed_commands: tuple[Path, ...]
    # command -> one full-match pattern per positional argument; absent = no arguments.
    argument_patterns: Mapping[Path, tuple[str, ...]]
    playbook_dir: Path | None
    allowed_playbooks: tuple[str, ...]
    ansible_inventory: str


@dataclass(frozen=True)
class SystemdConfig:
    """Units start/stop/restart may act on (fnmatch patterns); None: the key is absent,
    so none (the predecessor allowed any unit; check-config says so)."""

    allowed_units: tuple[str, ...] | None


@dataclass(frozen=True)
class ZfsConfig:
    """Datasets snapshot/destroy/rollback may act on (fnmatch patterns over the dataset
    name; None: the key is absent, so none), and directories, beyond the built-in ones,
    whose datasets are never destroyed or rolled back."""

    allowed_datasets: tuple[str, ...] | None
    protected_paths: tuple[Path, ...]


@dataclass(frozen=True)
class PctConfig:
    """Containers start/stop/destroy may act on (fnmatch patterns over VMIDs); None:
    the key is absent, so every one, as the predecessor did (not root-equivalent:
    a container's privileges and host mounts are in its config, out of reach)."""

    allowed_vmids: tuple[str, ...] | None


@dataclass(frozen=True)
class BinariesConfig:
    """Where the wrappers find the real tools; rendered into the wrappers' own config."""

    zfs: Path
    systemctl: Path
    pct: Path
    git: Path
    ansible_playbook: Path
    # The Python that runs host-agent (python-pam installed): the PAM wrapper's interpreter.
    python: Path


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
    systemd: SystemdConfig = SystemdConfig(allowed_units=None)
    zfs: ZfsConfig = ZfsConfig(allowed_datasets=None, protected_paths=())
    pct: PctConfig = PctConfig(allowed_vmids=None)
    warnings: tuple[str, ...] = field(default=(), compare=False)


def load_config(path: str | Path) -> Config:
    """Read and validate `path`; raise `ConfigError` naming every problem."""
    source = Path(path)
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(str(source), [f"cannot read file: {exc.strerror}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(str(source), ["file is not valid UTF-8"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(source), [f"not valid TOML: {exc}"]) from exc
    return parse_config(raw, source)


def parse_config(raw: dict[str, Any], source: Path) -> Config:
    """Validate an already-decoded TOML document."""
    reader = _Reader(source)
    document = _Table(reader, "", dict(raw))
    # The predecessor's README wrote [[agent]]/[[rule]] while its parser wanted
    # [[agents]]/[[rules]]; accept both spellings, never both at once.
    for singular, plural in (("agent", "agents"), ("rule", "rules")):
        if singular in document.data:
            if plural in document.data:
                reader.problem(singular, f"use either [[{singular}]] or [[{plural}]], not both")
            document.data[plural] = document.data.pop(singular)

    server = _server(document.table("server", required=True))
    runner = _runner(document.table("runner"))
    audit = _audit(document.table("audit", required=True))
    approval = _approval(document.table("approval"))
    metrics = _metrics(document.table("metrics"))
    rate_limit = _rate_limit(document.table("rate_limit"))
    agents = tuple(_agent(table) for table in document.array_of_tables("agents"))
    rules = tuple(
        _rule(table, index) for index, table in enumerate(document.array_of_tables("rules"))
    )
    git = _git(document.table("git"))
    exec_ = _exec(document.table("exec"))
    binaries = _binaries(document.table("binaries"))
    systemd = _systemd(document.table("systemd"))
    zfs = _zfs(document.table("zfs"))
    pct = _pct(document.table("pct"))
    document.finish()

    if not agents:
        reader.problem("agents", "at least one [[agents]] profile is required")
    bridge = approval.bridge_cn
    if bridge is not None and any(profile.matches(bridge) for profile in agents):
        reader.problem(
            "approval.bridge_cn",
            f"{bridge!r} matches an [[agents]] cn_pattern: an agent must never be the bridge",
        )
    _warn_about_channels(approval, reader)
    admin = approval.admin_cn_pattern
    for profile in agents:
        if admin is not None and _may_overlap(profile.cn_pattern, admin):
            reader.warn(
                f"[[agents]] cn_pattern {profile.cn_pattern!r} and [approval] admin_cn_pattern "
                f"{admin!r} can match the same CN: such a caller may both request operations "
                "and approve other callers' (never its own). Give agents CNs the admin "
                "pattern cannot match, unless the admins' own profile is meant"
            )
    _warn_about_targets(agents, systemd, zfs, exec_, reader)
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
        warnings=tuple(reader.warnings),
    )


# --- sections ---------------------------------------------------------------


def _server(t: _Table) -> ServerConfig:
    config = ServerConfig(
        bind=t.get("bind", str, "127.0.0.1:18443", check=_check_bind),
        cert=t.path("cert", required=True),
        key=t.path("key", required=True),
        client_ca=t.path("client_ca", required=True),
        crl_file=t.optional_path("crl_file"),
        max_body_bytes=t.get("max_body_bytes", int, 65536, check=_between(1024, 16 * 2**20)),
        sudoers_file=t.path("sudoers_file", default="/etc/sudoers"),
        limits=_connection_limits(t),
    )
    t.finish()
    return config


def _connection_limits(t: _Table) -> ConnectionLimits:
    """[server]'s timeouts and connection caps; each key is optional."""
    defaults = ConnectionLimits()

    def seconds(key: str, default: float) -> float:
        return float(t.get(key, (int, float), default, check=_between(0.5, 3600)))

    def count(key: str, default: int) -> int:
        return int(t.get(key, int, default, check=_between(1, 1_000_000)))

    limits = ConnectionLimits(
        handshake_timeout_seconds=seconds(
            "handshake_timeout_seconds", defaults.handshake_timeout_seconds
        ),
        idle_timeout_seconds=seconds("idle_timeout_seconds", defaults.idle_timeout_seconds),
        body_timeout_seconds=seconds("body_timeout_seconds", defaults.body_timeout_seconds),
        max_connections=count("max_connections", defaults.max_connections),
        max_handshakes=count("max_handshakes", defaults.max_handshakes),
        max_handshakes_per_address=count(
            "max_handshakes_per_address", defaults.max_handshakes_per_address
        ),
        max_connections_per_cn=count("max_connections_per_cn", defaults.max_connections_per_cn),
        h2_max_concurrent_streams=count(
            "h2_max_concurrent_streams", defaults.h2_max_concurrent_streams
        ),
    )
    if limits.max_handshakes > limits.max_connections:
        t.reader.problem(t.key("max_handshakes"), "must not be above max_connections")
    return limits


def _runner(t: _Table) -> RunnerConfig:
    config = RunnerConfig(
        sudo=t.path("sudo", default="/usr/bin/sudo"),
        wrapper_dir=t.path("wrapper_dir", default="/usr/local/libexec/host-agent"),
        service_user=t.optional("service_user", str, check=_check_unix_name),
        timeout_seconds=float(
            t.get("timeout_seconds", (int, float), 60, check=_between(0.1, 24 * 3600))
        ),
        max_output_bytes=t.get("max_output_bytes", int, 1048576, check=_between(1024, 2**28)),
    )
    t.finish()
    return config


def _audit(t: _Table) -> AuditConfig:
    config = AuditConfig(
        log_path=t.path("log_path", required=True),
        rotation=t.get("rotation", str, "daily", check=_one_of("daily", "hourly", "never")),
        retention_days=t.get("retention_days", int, 90, check=_between(1, 36500)),
    )
    shipped = {"rotation": "daily", "retention_days": 90}  # what logrotate/host-agent does
    for key, value in shipped.items():
        if getattr(config, key) != value:
            t.reader.warn(
                f"{t.key(key)} = {getattr(config, key)!r} is not applied by the agent: "
                "logrotate rotates the audit log (/etc/logrotate.d/host-agent: daily, "
                "90 kept); change it there"
            )
    t.finish()
    return config


def _approval(t: _Table) -> ApprovalConfig:
    secret = t.optional("token_secret", str)
    config = ApprovalConfig(
        enabled=t.get("enabled", bool, True),
        ttl_seconds=t.get("ttl_seconds", int, 300, check=_between(10, 7 * 86400)),
        token_entropy_bits=t.get("token_entropy_bits", int, 80, check=_check_entropy),
        signal_webhook=t.optional("signal_webhook", str, check=_check_url),
        allowed_approvers=tuple(t.get("allowed_approvers", list, [], item=str)),
        token_secret=Secret(secret) if secret is not None else None,
        admin_cn_pattern=t.optional("admin_cn_pattern", str, check=_non_empty),
        store_path=t.path("store_path", default="/var/lib/host-agent/approvals.sqlite3"),
        signal_url=t.optional("signal_url", str, check=_check_url),
        signal_number=t.optional("signal_number", str, check=_check_phone),
        webhook_secret=t.optional("webhook_secret", str, check=_check_secret, convert=Secret),
        bridge_cn=t.optional("bridge_cn", str, check=_non_empty),
        poll_interval_seconds=float(
            t.get("poll_interval_seconds", (int, float), 0, check=_between(0, 3600))
        ),
        local_socket=t.optional_path("local_socket"),
        approvers_group=t.optional("approvers_group", str, check=_check_unix_name),
        people=_people(t),
        identity_plugin=t.optional("identity_plugin", str, check=_check_identity_plugin),
    )
    if config.signal_url is not None and config.signal_number is None:
        t.reader.problem(t.key("signal_number"), "is required with signal_url")
    if config.local_socket is not None and config.approvers_group is None:
        t.reader.problem(t.key("approvers_group"), "is required with local_socket")
    for number in config.allowed_approvers:
        if (message := _check_phone(number)) is not None:
            t.reader.problem(t.key("allowed_approvers"), f"{number!r}: {message}")
    t.finish()
    return config


def _people(approval: _Table) -> tuple[Person, ...]:
    # Each key of [[approval.people]], the channel it names identities on, and its check.
    channels = {
        "signal": ("signal", _check_phone),
        "admin_cn": ("admin", _non_empty),
        "login": ("pam", _check_unix_name),
    }
    people: list[Person] = []
    owner: dict[str, str] = {}
    for t in approval.array_of_tables("people"):
        name = t.get("name", str, "", required=True, check=_non_empty)
        identities = set()
        for key, (channel, check) in channels.items():
            for value in t.get(key, list, [], item=str):
                if (message := check(value)) is not None:
                    t.reader.problem(t.key(key), f"{value!r}: {message}")
                identities.add(f"{channel}:{value}")
        for identity in sorted(identities):
            if identity in owner:
                t.reader.problem(
                    t.key("name"), f"{identity} is already {owner[identity]!r}'s: one person each"
                )
            owner[identity] = name
        if name in (person.name for person in people):
            t.reader.problem(t.key("name"), f"{name!r} is listed twice")
        t.finish()
        people.append(Person(name, frozenset(identities)))
    return tuple(people)


def _metrics(t: _Table) -> MetricsConfig:
    config = MetricsConfig(
        enabled=t.get("enabled", bool, False),
        bind=t.get("bind", str, "127.0.0.1:19090", check=_check_bind),
    )
    if config.enabled and not _is_loopback(config.host):
        t.reader.warn(
            f"{t.key('bind')}: {config.bind} is not a loopback address; the metrics "
            "listener is plain HTTP without authentication"
        )
    t.finish()
    return config


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _rate_limit(t: _Table) -> RateLimitConfig:
    config = RateLimitConfig(
        enabled=t.get("enabled", bool, True),
        max_requests=t.get("max_requests", int, 5, check=_between(1, 1_000_000)),
        window_seconds=t.get("window_seconds", int, 60, check=_between(1, 86400)),
        endpoints=tuple(
            t.get("endpoints", list, ["/zfs/destroy", "/approve", "/pending"], item=str)
        ),
        read=_limit(t.table("read"), Limit(600, 60)),
        mutating=_limit(t.table("mutating"), Limit(120, 60)),
        approval=_limit(t.table("approval"), Limit(120, 60)),
        refusals=_limit(t.table("refusals"), Limit(120, 60)),
        max_tracked=t.get("max_tracked", int, 10_000, check=_between(100, 10_000_000)),
    )
    t.finish()
    return config


def _limit(t: _Table, default: Limit) -> Limit:
    limit = Limit(
        requests=t.get("requests", int, default.requests, check=_between(1, 1_000_000)),
        per_seconds=t.get("per_seconds", int, default.per_seconds, check=_between(1, 86400)),
    )
    t.finish()
    return limit


def _agent(t: _Table) -> AgentProfile:
    pattern_rules = []
    for sub in t.array_of_tables("pattern_rules"):
        pattern_rules.append(
            PatternRule(
                operation=sub.get("operation", str, "", required=True, check=_check_operation),
                pattern=sub.get(
                    "pattern", str, ".*", required=True, check=_check_regex, convert=re.compile
                ),
            )
        )
        sub.finish()
    profile = AgentProfile(
        cn_pattern=t.get("cn_pattern", str, "", required=True, check=_non_empty),
        agent_type=t.get("agent_type", str, "", required=True, check=_non_empty),
        unix_user=t.get("unix_user", str, "", required=True, check=_check_unix_name),
        autonomy=t.get(
            "autonomy",
            str,
            "supervised",
            check=_one_of(*(a.value for a in Autonomy)),
            convert=Autonomy,
        ),
        allowed_operations=tuple(
            t.get("allowed_operations", list, [], item=str, check=_check_operation_globs)
        ),
        requires_approval_for=tuple(
            t.get("requires_approval_for", list, [], item=str, check=_check_operation_globs)
        ),
        pattern_rules=tuple(pattern_rules),
        allow_full_autonomy_bypass=t.get("allow_full_autonomy_bypass", bool, False),
        allow_recursive=t.get("allow_recursive", bool, False),
    )
    t.finish()
    return profile


def _rule(t: _Table, index: int) -> Rule:
    rule = Rule(
        index=index,
        operation=t.get("operation", str, "", required=True, check=_check_operation),
        pattern=t.optional("pattern", str, check=_check_regex, convert=re.compile),
        approval_required=t.get("approval_required", bool, False),
        always_ask=t.get("always_ask", bool, False),
        approval_admin_only=t.get("approval_admin_only", bool, False),
        deny=t.get("deny", bool, False),
        approvals_required=t.get("approvals_required", int, 1, check=_between(1, 10)),
    )
    if rule.deny and (rule.approval_required or rule.always_ask):
        t.reader.problem(t.key("deny"), "a deny rule cannot also ask for approval")
    t.finish()
    return rule


def _git(t: _Table) -> GitConfig:
    repos = t.get("allowed_repos", list, [], item=str, check=_check_absolute_paths)
    config = GitConfig(allowed_repos=tuple(Path(r) for r in repos))
    t.finish()
    return config


def _exec(t: _Table) -> ExecConfig:
    commands = tuple(t.get("allowed_commands", list, [], item=str, check=_check_absolute_paths))
    if t.optional("ansible_job_queue", str) is not None:
        t.reader.warn(
            f"{t.key('ansible_job_queue')}: job files are not written; playbooks run directly"
        )
    patterns_table = t.table("argument_patterns")
    patterns: dict[Path, tuple[str, ...]] = {}
    for command in sorted(patterns_table.data):
        if command not in commands:
            t.reader.problem(
                patterns_table.key(command), "names a command that is not in allowed_commands"
            )
        patterns[Path(command)] = tuple(
            patterns_table.get(command, list, [], item=str, check=_check_argument_patterns)
        )
    config = ExecConfig(
        enabled=t.get("enabled", bool, False),
        allowed_commands=tuple(Path(c) for c in commands),
        argument_patterns=MappingProxyType(patterns),
        playbook_dir=t.optional_path("playbook_dir"),
        allowed_playbooks=tuple(
            t.get("allowed_playbooks", list, [], item=str, check=_check_playbook_names)
        ),
        ansible_inventory=t.get("ansible_inventory", str, "localhost,", check=_check_inventory),
    )
    if config.allowed_playbooks and config.playbook_dir is None:
        t.reader.problem(t.key("allowed_playbooks"), "needs exec.playbook_dir")
    t.finish()
    return config


def _binaries(t: _Table) -> BinariesConfig:
    def binary(name: str, default: str) -> Path:
        return Path(t.get(name, str, default, check=_check_absolute_path))

    config = BinariesConfig(
        zfs=binary("zfs", "/usr/sbin/zfs"),
        systemctl=binary("systemctl", "/usr/bin/systemctl"),
        pct=binary("pct", "/usr/sbin/pct"),
        git=binary("git", "/usr/bin/git"),
        ansible_playbook=binary("ansible_playbook", "/usr/bin/ansible-playbook"),
        python=binary("python", sys.executable),
    )
    t.finish()
    return config


def _systemd(t: _Table) -> SystemdConfig:
    units = t.get("allowed_units", list, None, item=str, check=_check_unit_patterns)
    config = SystemdConfig(allowed_units=None if units is None else tuple(units))
    t.finish()
    return config


def _zfs(t: _Table) -> ZfsConfig:
    datasets = t.get("allowed_datasets", list, None, item=str, check=_check_dataset_patterns)
    paths = t.get("protected_paths", list, [], item=str, check=_check_absolute_paths)
    config = ZfsConfig(
        allowed_datasets=None if datasets is None else tuple(datasets),
        protected_paths=tuple(Path(p) for p in paths),
    )
    t.finish()
    return config


def _pct(t: _Table) -> PctConfig:
    vmids = t.get("allowed_vmids", list, None, item=str, check=_check_vmid_patterns)
    config = PctConfig(allowed_vmids=None if vmids is None else tuple(vmids))
    t.finish()
    return config


# Commands that hand whoever picks their arguments a root shell, root's files or a
# new root process: a shell or interpreter, a privilege tool, a command runner, a
# file owner/mode changer, an editor or pager with a shell escape.
ROOT_EQUIVALENT_COMMANDS = frozenset(
    {
        "sh", "bash", "dash", "zsh", "ksh", "csh", "tcsh", "fish", "busybox",
        "python", "python3", "perl", "ruby", "node", "lua", "php", "tclsh", "awk", "gawk",
        "mawk", "sed", "sudo", "su", "doas", "runuser", "pkexec", "env", "nohup", "xargs",
        "find", "nice", "timeout", "setsid", "chroot", "nsenter", "unshare", "systemd-run",
        "systemctl", "chmod", "chown", "chgrp", "setfacl", "cp", "mv", "ln", "dd", "tee",
        "install", "rsync", "tar", "vi", "vim", "nano", "less", "more", "man", "crontab",
        "at", "ssh", "scp", "git", "make", "apt", "apt-get", "dpkg", "pip", "pip3",
        "insmod", "modprobe", "kexec", "mount", "useradd", "usermod", "passwd", "chpasswd",
        "visudo",
    }
)  # fmt: skip
# A pattern using any of these matches more than one fixed string.
_REGEX_SYNTAX = re.compile(r"[.^$*+?{}\[\]\\|()]")


def _warn_about_targets(
    agents: tuple[AgentProfile, ...],
    systemd: SystemdConfig,
    zfs: ZfsConfig,
    exec_: ExecConfig,
    reader: _Reader,
) -> None:
    """Say where this agent now refuses what the predecessor ran (invariant 13), and
    where an exec allowlist hands out root."""
    granted = [(*p.allowed_operations, *p.requires_approval_for) for p in agents]

    def any_granted(*names: str) -> bool:
        return any(fnmatch.fnmatchcase(n, g) for grants in granted for g in grants for n in names)

    if systemd.allowed_units is None and any_granted(
        "systemd-start", "systemd-stop", "systemd-restart"
    ):
        reader.warn(
            "systemd.allowed_units: not set, so systemd start/stop/restart refuse every "
            "unit (the predecessor allowed any unit). List the units agents may manage, "
            'e.g. [systemd] allowed_units = ["nginx.service", "app-*.service"]'
        )
    if zfs.allowed_datasets is None and any_granted("zfs-snapshot", "zfs-destroy", "zfs-rollback"):
        reader.warn(
            "zfs.allowed_datasets: not set, so zfs snapshot/destroy/rollback refuse every "
            "dataset (the predecessor allowed any dataset). List the datasets agents may "
            'change, e.g. [zfs] allowed_datasets = ["tank/media", "tank/media/*"]'
        )
    for command in exec_.allowed_commands:
        if command.name not in ROOT_EQUIVALENT_COMMANDS:
            continue
        patterns = exec_.argument_patterns.get(command, ())
        chosen = [p for p in patterns if _REGEX_SYNTAX.search(p)]
        if chosen:
            reader.warn(
                f"exec.allowed_commands: {command} is ROOT-EQUIVALENT with argument patterns "
                f"{chosen}: it runs as root and the caller chooses those arguments (a script, "
                "a file, an option). Pin each argument to one fixed value or remove it"
            )


# --- checks -----------------------------------------------------------------

Check = Callable[[Any], str | None]


def _non_empty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


def _between(low: float, high: float) -> Check:
    def check(value: float) -> str | None:
        return None if low <= value <= high else f"must be between {low} and {high}"

    return check


def _one_of(*choices: str) -> Check:
    def check(value: str) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"

    return check


def _check_entropy(value: int) -> str | None:
    # Tokens are 16 characters of a 32-symbol alphabet: exactly 80 bits.
    return None if value == 80 else "must be 80 (16-character tokens)"


def _check_bind(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        return "must be HOST:PORT, e.g. 127.0.0.1:18443"
    return None


def _check_url(value: str) -> str | None:
    return None if re.fullmatch(r"https?://[^\s]+", value) else "must be an http(s) URL"


def _check_identity_plugin(value: str) -> str | None:
    if value.startswith("command:"):
        path = value.removeprefix("command:")
        if not path.startswith("/") or "\0" in path:
            return "command: needs an absolute path (no PATH lookup)"
        return None
    if _check_url(value) is None:
        return None
    return 'must be "command:/absolute/path" or an http(s) URL'


def _check_phone(value: str) -> str | None:
    return None if re.fullmatch(r"\+[1-9][0-9]{6,14}", value) else "must be an E.164 number (+...)"


def _check_secret(value: str) -> str | None:
    return None if len(value) >= 32 else "must be at least 32 characters"


def _check_unix_name(value: str) -> str | None:
    if re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", value):
        return None
    return "must be a Unix account name (lower case, digits, _ and -)"


# What the wrappers' config file can carry on one line, and what a path may hold.
_PLAIN_TEXT = re.compile(r"[\x21-\x7e]+")


def _check_absolute_path(value: str) -> str | None:
    if not _PLAIN_TEXT.fullmatch(value) or not value.startswith("/"):
        return f"{value!r} is not an absolute path (printable ASCII, no spaces)"
    if "/../" in f"{value}/" or "/./" in f"{value}/":
        return f"{value!r} must not contain '.' or '..' components"
    return None


def _check_absolute_paths(values: list[str]) -> str | None:
    return next((m for v in values if (m := _check_absolute_path(v)) is not None), None)


def _check_argument_patterns(values: list[str]) -> str | None:
    # The wrapper re-checks with bash's POSIX ERE, so allow only the syntax
    # both engines read the same way: no escapes of letters/digits, no (?...).
    for value in values:
        if not _PLAIN_TEXT.fullmatch(value):
            return f"pattern {value!r} must be printable ASCII without spaces"
        if re.search(r"\\[A-Za-z0-9]|\(\?", value):
            return f"pattern {value!r} uses syntax POSIX ERE lacks (\\d, \\w, (?...))"
        if "[:" in value or "[=" in value or "[." in value:
            return f"pattern {value!r} uses a POSIX class ([:digit:], ...) Python reads differently"
        if (message := _check_regex(value)) is not None:
            return message
    return None


# A unit or dataset pattern: the names' own characters and fnmatch's `*?[]!`.
_UNIT_PATTERN = re.compile(r"[A-Za-z0-9:_.@*?\[\]!-]+")
_DATASET_PATTERN = re.compile(r"[A-Za-z0-9:_./*?\[\]!-]+")


_VMID_PATTERN = re.compile(r"[0-9*?\[\]!-]+")


def _check_vmid_patterns(values: list[str]) -> str | None:
    bad = [v for v in values if not _VMID_PATTERN.fullmatch(v) or v.startswith("-")]
    return f"not VMID patterns: {bad}" if bad else None


def _check_unit_patterns(values: list[str]) -> str | None:
    bad = [v for v in values if not _UNIT_PATTERN.fullmatch(v)]
    return f"not unit name patterns: {bad}" if bad else None


def _check_dataset_patterns(values: list[str]) -> str | None:
    bad = [v for v in values if not _DATASET_PATTERN.fullmatch(v) or v.startswith("-")]
    return f"not dataset name patterns: {bad}" if bad else None


def _check_playbook_names(values: list[str]) -> str | None:
    for value in values:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.ya?ml", value):
            return f"{value!r} must be a file name ending in .yml or .yaml (no directories)"
    return None


def _check_inventory(value: str) -> str | None:
    return None if _PLAIN_TEXT.fullmatch(value) else "must be printable ASCII without spaces"


def _check_regex(value: str) -> str | None:
    try:
        re.compile(value)
    except re.error as exc:
        return f"not a valid regular expression: {exc}"
    return None


def _check_operation(value: str) -> str | None:
    if value in OPERATION_NAMES:
        return None
    return f"unknown operation {value!r} (known: {', '.join(sorted(OPERATION_NAMES))})"


def _check_operation_globs(values: list[str]) -> str | None:
    for value in values:
        if not fnmatch.filter(OPERATION_NAMES, value):
            return f"{value!r} matches no known operation"
    return None


# --- reading helpers ----------------------------------------------------------

_MISSING: Any = object()


def _warn_about_channels(approval: ApprovalConfig, reader: _Reader) -> None:
    """Approvals that nobody could decide, or Signal replies that could never arrive."""
    if not approval.enabled:
        return
    sends = approval.allowed_approvers and (approval.signal_url or approval.signal_webhook)
    if not sends and approval.admin_cn_pattern is None and approval.local_socket is None:
        reader.warn(
            "approval: enabled, but no channel can decide an approval (no Signal endpoint "
            "with allowed_approvers, no admin_cn_pattern, no local_socket): every operation "
            "that needs a human will wait until it expires"
        )
    hears = (
        approval.poll_interval_seconds > 0
        or approval.webhook_secret is not None
        or approval.bridge_cn is not None
    )
    if sends and not hears:
        reader.warn(
            "approval: tokens go out over Signal but no reply can come back: set "
            "poll_interval_seconds, or webhook_secret or bridge_cn for POST /webhook/signal"
        )


def _may_overlap(first: str, second: str) -> bool:
    """Whether two CN globs can plausibly match one CN: each read as a CN against the
    other. It catches the usual cases (equal, `*`, one a narrowing of the other), not
    every contrived one."""
    return fnmatch.fnmatchcase(first, second) or fnmatch.fnmatchcase(second, first)


class _Reader:
    """Collects problems and warnings for one file."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{key}: {message}")

    def warn(self, message: str) -> None:
        self.warnings.append(message)


class _Table:
    """One TOML table; every key read is ticked off so leftovers are reported."""

    def __init__(self, reader: _Reader, prefix: str, data: dict[str, Any]) -> None:
        self.reader = reader
        self.prefix = prefix
        self.data = data
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def _take(self, name: str) -> Any:
        self.seen.add(name)
        return self.data.get(name, _MISSING)

    def get(
        self,
        name: str,
        kind: type | tuple[type, ...],
        default: Any,
        *,
        required: bool = False,
        item: type | None = None,
        check: Check | None = None,
        convert: Callable[[Any], Any] | None = None,
    ) -> Any:
        value = self._take(name)
        if value is _MISSING:
            if required:
                self.reader.problem(self.key(name), "is required")
            value = default
        elif not _is_instance(value, kind):
            self.reader.problem(
                self.key(name), f"must be {_type_name(kind)}, got {_type_name(type(value))}"
            )
            value = default
        elif item is not None and not all(isinstance(v, item) for v in value):
            self.reader.problem(self.key(name), f"must be a list of {_type_name(item)}")
            value = default
        elif check is not None and (message := check(value)) is not None:
            self.reader.problem(self.key(name), message)
            value = default
        if convert is not None:
            try:
                return convert(value)
            except (ValueError, re.error):
                return convert(default)
        return value

    def optional(
        self,
        name: str,
        kind: type,
        *,
        check: Check | None = None,
        convert: Callable[[Any], Any] | None = None,
    ) -> Any:
        if name not in self.data:
            self.seen.add(name)
            return None
        value = self.get(name, kind, _MISSING, check=check)
        if value is _MISSING:
            return None
        return convert(value) if convert is not None else value

    def path(self, name: str, *, required: bool = False, default: str = "") -> Path:
        value = self.get(name, str, default, required=required)
        return self._resolve(value)

    def optional_path(self, name: str) -> Path | None:
        value = self.optional(name, str, check=_non_empty)
        return None if value is None else self._resolve(value)

    def _resolve(self, value: str) -> Path:
        path = Path(value)
        # Relative paths are relative to the config file, not the working directory.
        return path if path.is_absolute() else self.reader.source.parent.resolve() / path

    def table(self, name: str, *, required: bool = False) -> _Table:
        value = self._take(name)
        if value is _MISSING:
            if required:
                self.reader.problem(self.key(name), f"section [{self.key(name)}] is required")
            value = {}
        elif not isinstance(value, dict):
            self.reader.problem(self.key(name), "must be a table")
            value = {}
        return _Table(self.reader, self.key(name), dict(value))

    def array_of_tables(self, name: str) -> Iterator[_Table]:
        value = self._take(name)
        if value is _MISSING:
            return
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.reader.problem(self.key(name), f"must be an array of tables ([[{name}]])")
            return
        for index, entry in enumerate(value):
            yield _Table(self.reader, f"{self.key(name)}[{index}]", dict(entry))

    def finish(self) -> None:
        for name in sorted(set(self.data) - self.seen):
            self.reader.problem(self.key(name), "unknown key")


def _is_instance(value: Any, kind: type | tuple[type, ...]) -> bool:
    # TOML booleans are Python bools, which are also ints; never accept one for the other.
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)


def _type_name(kind: type | tuple[type, ...]) -> str:
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)
