"""[approval]: tokens, channels (Signal, admin CN, the host), people and the identity plugin."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

from host_agent.config.fields import (
    Reader,
    Table,
    between,
    check_phone,
    check_secret,
    check_unix_name,
    check_url,
    non_empty,
)


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
    # A fleet's shared store (docs/fleet.md): a libpq URL or key=value string without
    # the password, which comes from this file or libpq's own (PGPASSFILE, ~/.pgpass).
    store_url: str | None = None
    store_password_file: Path | None = None
    # Tell the approvers who were asked when an approval is decided, expires or is used.
    notify_outcomes: bool = True

    def is_admin(self, cn: str) -> bool:
        return self.admin_cn_pattern is not None and fnmatch.fnmatchcase(cn, self.admin_cn_pattern)

    def may_approve_on_signal(self, sender: str) -> bool:
        """An allowed number, or another identity (a UUID) of a person who has one."""
        if sender in self.allowed_approvers:
            return True
        person = self.person_of(f"signal:{sender}")
        if not person.startswith("person:"):
            return False
        return any(self.person_of(f"signal:{n}") == person for n in self.allowed_approvers)

    def person_of(self, identity: str) -> str:
        """`person:<name>` for an identity listed under [[approval.people]], else itself."""
        for person in self.people:
            if identity in person.identities:
                return f"person:{person.name}"
        return identity


def read_approval(t: Table) -> ApprovalConfig:
    secret = t.optional("token_secret", str)
    config = ApprovalConfig(
        enabled=t.get("enabled", bool, True),
        ttl_seconds=t.get("ttl_seconds", int, 300, check=between(10, 7 * 86400)),
        token_entropy_bits=t.get("token_entropy_bits", int, 80, check=_check_entropy),
        signal_webhook=t.optional("signal_webhook", str, check=check_url),
        allowed_approvers=tuple(t.get("allowed_approvers", list, [], item=str)),
        token_secret=Secret(secret) if secret is not None else None,
        admin_cn_pattern=t.optional("admin_cn_pattern", str, check=non_empty),
        store_path=t.path("store_path", default="/var/lib/host-agent/approvals.sqlite3"),
        signal_url=t.optional("signal_url", str, check=check_url),
        signal_number=t.optional("signal_number", str, check=check_phone),
        webhook_secret=t.optional("webhook_secret", str, check=check_secret, convert=Secret),
        bridge_cn=t.optional("bridge_cn", str, check=non_empty),
        poll_interval_seconds=float(
            t.get("poll_interval_seconds", (int, float), 0, check=between(0, 3600))
        ),
        local_socket=t.optional_path("local_socket"),
        approvers_group=t.optional("approvers_group", str, check=check_unix_name),
        people=_people(t),
        identity_plugin=t.optional("identity_plugin", str, check=_check_identity_plugin),
        store_url=t.optional("store_url", str, check=_check_store_url),
        store_password_file=t.optional_path("store_password_file"),
        notify_outcomes=t.get("notify_outcomes", bool, True),
    )
    if config.signal_url is not None and config.signal_number is None:
        t.reader.problem(t.key("signal_number"), "is required with signal_url")
    if config.store_password_file is not None and config.store_url is None:
        t.reader.problem(t.key("store_password_file"), "is only used with store_url")
    if config.local_socket is not None and config.approvers_group is None:
        t.reader.problem(t.key("approvers_group"), "is required with local_socket")
    for number in config.allowed_approvers:
        if (message := check_phone(number)) is not None:
            t.reader.problem(t.key("allowed_approvers"), f"{number!r}: {message}")
    t.finish()
    return config


def _people(approval: Table) -> tuple[Person, ...]:
    # Each key of [[approval.people]], the channel it names identities on, and its check.
    channels = {
        "signal": ("signal", _check_signal_identity),
        "admin_cn": ("admin", non_empty),
        "login": ("pam", check_unix_name),
    }
    people: list[Person] = []
    owner: dict[str, str] = {}
    for t in approval.array_of_tables("people"):
        name = t.get("name", str, "", required=True, check=non_empty)
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


# Signal's account id (ACI), what signal-cli reports when a sender hides their number.
SIGNAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _check_signal_identity(value: str) -> str | None:
    if SIGNAL_UUID.fullmatch(value):
        return None
    return None if check_phone(value) is None else "must be an E.164 number or a Signal UUID"


def _check_entropy(value: int) -> str | None:
    # Tokens are 16 characters of a 32-symbol alphabet: exactly 80 bits.
    return None if value == 80 else "must be 80 (16-character tokens)"


def _check_store_url(value: str) -> str | None:
    try:
        from psycopg import ProgrammingError  # only a fleet host needs it
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return "needs psycopg: pip install 'host-agent[fleet]'"
    try:
        parameters = conninfo_to_dict(value)
    except ProgrammingError:
        # The parser's message may quote the string, password and all: never repeat it.
        return "is not a libpq connection string (postgresql://USER@HOST/DB or key=value ...)"
    if "password" in parameters:
        return "must not hold the password: use store_password_file, PGPASSFILE or ~/.pgpass"
    return None


def _check_identity_plugin(value: str) -> str | None:
    if value.startswith("command:"):
        path = value.removeprefix("command:")
        if not path.startswith("/") or "\0" in path:
            return "command: needs an absolute path (no PATH lookup)"
        return None
    if check_url(value) is None:
        return None
    return 'must be "command:/absolute/path" or an http(s) URL'


def warn_about_channels(approval: ApprovalConfig, reader: Reader) -> None:
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
