"""The approval state machine over the real SQLite store and the real audit log."""

from __future__ import annotations

import asyncio
import functools
import json
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from host_agent.approvals import tokens
from host_agent.approvals.manager import ApprovalManager
from host_agent.approvals.model import Approver, Status
from host_agent.approvals.pg_store import PostgresStore
from host_agent.approvals.store import ApprovalStore, SqliteStore
from host_agent.audit import AuditLog, verify
from host_agent.config import ApprovalConfig, Person, Secret
from host_agent.errors import ApprovalError, AuditUnavailable
from host_agent.operations import Operation
from host_agent.policy import Decision, Effect
from host_agent.request import HostOpRequest
from tests.postgres import fleet_database
from tests.support import audit_records, open_zfs

REQUESTER = {"request_id": "r1", "cn": "librarian-1", "fingerprint": "ab" * 32, "serial": 7}
SIGNAL_ONE = Approver("signal", "+15555550001")
SIGNAL_TWO = Approver("signal", "+15555550002")
ADMIN = Approver("admin", "admin-1")


def operation(resource: str = "tank/a@old", *args: str) -> Operation:
    return open_zfs().parse(HostOpRequest("zfs", resource, ("destroy", *args)), "librarian")


def decision(*, admin_only: bool = False, quorum: int = 1) -> Decision:
    return Decision(
        Effect.APPROVAL, "approval_required", "needs a human", "rule", admin_only, quorum
    )


@dataclass
class Clock:
    # Real time when the test starts: the fleet's database decides a consume's expiry
    # on its own clock, so the test's time must not drift from it.
    now: float = field(default_factory=time.time)

    def __call__(self) -> float:
        return self.now


@dataclass
class Outbox:
    """Where notifications go in these tests: the real Signal path is tested elsewhere."""

    sent: list[tuple[str, list[str]]] = field(default_factory=list)
    failing: bool = False

    async def __call__(self, text: str, recipients: Sequence[str]) -> None:
        if self.failing:
            raise OSError("bridge down")
        self.sent.append((text, list(recipients)))

    def token(self) -> str:
        """The token of the last request sent (follow-ups telling an outcome have none)."""
        requests = [text for text, _ in self.sent if "\nReply APPROVE " in text]
        return requests[-1].rsplit("APPROVE ", 1)[1].split()[0]


@dataclass
class World:
    manager: ApprovalManager
    clock: Clock
    outbox: Outbox
    audit_path: Path
    backend: Backend

    def events(self) -> list[str]:
        return [record["event"] for record in audit_records(self.audit_path)]


def approval_config(**overrides: Any) -> ApprovalConfig:
    values: dict[str, Any] = {
        "enabled": True,
        "ttl_seconds": 300,
        "token_entropy_bits": 80,
        "signal_webhook": None,
        "allowed_approvers": ("+15555550001", "+15555550002"),
        "token_secret": Secret("pepper"),
        "admin_cn_pattern": "admin-*",
        "store_path": Path("unused"),
        **overrides,
    }
    return ApprovalConfig(**values)


@dataclass
class Backend:
    # Opens the same store again, as a restarted agent (or another host) would.
    open: Callable[[], ApprovalStore]
    # Everything the store holds, as bytes: where a token must never be.
    contents: Callable[[], bytes]
    file: Path | None = None


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Every state rule holds on both stores: this host's SQLite file, and a fleet's
    PostgreSQL database (a real cluster)."""
    if request.param == "sqlite":
        path = tmp_path / "state" / "approvals.sqlite3"
        # WAL mode: recent writes are in the -wal file until a checkpoint.
        files = (path, path.with_name(path.name + "-wal"))
        return Backend(
            functools.partial(SqliteStore, path),
            lambda: b"".join(f.read_bytes() for f in files if f.exists()),
            path,
        )
    cluster = request.getfixturevalue("postgres")
    database = fleet_database(cluster)
    return Backend(
        functools.partial(PostgresStore, database.url, database.password),
        lambda: cluster.psql(
            "SELECT row_to_json(a) FROM approvals a", database=database.name
        ).encode(),
    )


@pytest.fixture
def world(tmp_path: Path, backend: Backend) -> Iterator[World]:
    clock, outbox = Clock(), Outbox()
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.open()
    store = backend.open()
    manager = ApprovalManager(
        approval_config(), store, audit, notify=outbox, clock=clock, host="host-1"
    )
    yield World(manager, clock, outbox, tmp_path / "audit.jsonl", backend)
    store.close()
    audit.close()


async def created(world: World, op: Operation | None = None, **decided: Any) -> tuple[str, str]:
    approval = await world.manager.create(
        REQUESTER, op or operation(), decision(**decided), "free space", "librarian"
    )
    await world.manager.drain()
    return approval.id, world.outbox.token()


def test_message_tells_the_approver_everything_and_the_store_only_a_hash(world: World) -> None:
    async def scenario() -> None:
        approval_id, token = await created(world)
        text, recipients = world.outbox.sent[0]
        assert recipients == ["+15555550001", "+15555550002"]
        op = operation()
        for part in ("host-1", "librarian-1", "zfs-destroy", "tank/a@old", "free space"):
            assert part in text
        assert op.digest() in text and f"APPROVE {token}" in text and f"DENY {token}" in text
        assert len(token) == 16 and set(token) <= set(tokens.TOKEN_ALPHABET)
        stored = world.backend.contents()
        assert token.encode() not in stored
        assert tokens.hash_token(token, Secret("pepper")).encode() in stored
        log = world.audit_path.read_text()
        assert token not in log
        assert world.events() == ["approval_created", "approval_notified"]
        assert (await world.manager.visible(approval_id, "librarian-1")).status is Status.PENDING

    asyncio.run(scenario())
    if world.backend.file is not None:  # a database's rights are tested in test_pg_store
        assert stat.S_IMODE(world.backend.file.stat().st_mode) == 0o600


def test_granted_approval_is_consumed_once_for_the_same_operation(world: World) -> None:
    async def scenario() -> None:
        approval_id, token = await created(world)
        granted = await world.manager.decide(token.lower(), True, SIGNAL_ONE)
        assert granted.status is Status.APPROVED and granted.approvers == ("signal:+15555550001",)
        consumed = await world.manager.consume(approval_id, REQUESTER, operation())
        assert consumed.status is Status.CONSUMED
        with pytest.raises(ApprovalError) as again:
            await world.manager.consume(approval_id, REQUESTER, operation())
        assert (again.value.status, again.value.code) == (409, "approval_consumed")

    asyncio.run(scenario())
    assert world.events()[-3:] == ["approval_granted", "approval_consumed", "approval_refused"]
    assert verify([world.audit_path]).ok


@pytest.mark.parametrize(
    ("approver", "code"),
    [
        pytest.param(Approver("signal", "+15550000000"), "approver_not_allowed", id="stranger"),
        pytest.param(Approver("admin", "librarian-1"), "approver_not_allowed", id="non-admin-cn"),
        pytest.param(Approver("pam", "librarian"), "self_approval", id="requester-unix-user"),
    ],
)
def test_only_an_allowed_other_person_may_approve(
    world: World, approver: Approver, code: str
) -> None:
    async def scenario() -> None:
        approval_id, token = await created(world)
        with pytest.raises(ApprovalError) as refused:
            await world.manager.decide(token, True, approver)
        assert refused.value.code == code
        assert (await world.manager.visible(approval_id, "librarian-1")).status is Status.PENDING

    asyncio.run(scenario())
    assert world.events()[-1] == "approval_refused"


def test_admin_requester_cannot_approve_its_own_request(world: World) -> None:
    async def scenario() -> None:
        approval = await world.manager.create(
            {**REQUESTER, "cn": "admin-1"}, operation(), decision(), None, "root-helper"
        )
        await world.manager.drain()
        with pytest.raises(ApprovalError) as refused:
            await world.manager.decide(world.outbox.token(), True, ADMIN)
        assert refused.value.code == "self_approval"
        assert (await world.manager.visible(approval.id, "admin-1")).status is Status.PENDING

    asyncio.run(scenario())


def test_an_approval_for_an_agent_names_both_and_neither_may_approve_it(world: World) -> None:
    """A proxy (admin-2's certificate, say) acting for admin-1: the message names both,
    and admin-1 may not approve what was asked in its name."""

    async def scenario() -> None:
        requester = {**REQUESTER, "cn": "llm-proxy", "on_behalf_of": "admin-1"}
        approval = await world.manager.create(requester, operation(), decision(), None, "proxy")
        await world.manager.drain()
        assert "Requester: llm-proxy on behalf of admin-1" in world.outbox.sent[0][0]
        with pytest.raises(ApprovalError) as refused:
            await world.manager.decide(world.outbox.token(), True, ADMIN)
        assert refused.value.code == "self_approval"
        pending = await world.manager.visible(approval.id, "llm-proxy")
        assert (pending.status, pending.on_behalf_of) == (Status.PENDING, "admin-1")
        granted = await world.manager.decide(world.outbox.token(), True, SIGNAL_ONE)
        assert granted.status is Status.APPROVED
        # Only a resubmit for the same agent uses it.
        with pytest.raises(ApprovalError) as mismatch:
            await world.manager.consume(approval.id, REQUESTER | {"cn": "llm-proxy"}, operation())
        assert mismatch.value.code == "approval_mismatch"
        consumed = await world.manager.consume(approval.id, requester, operation())
        assert consumed.status is Status.CONSUMED

    asyncio.run(scenario())


def test_admin_only_approvals_refuse_signal_and_take_an_admin(world: World) -> None:
    async def scenario() -> None:
        _, token = await created(world, admin_only=True)
        with pytest.raises(ApprovalError) as refused:
            await world.manager.decide(token, True, SIGNAL_ONE)
        assert refused.value.code == "admin_only"
        assert (await world.manager.decide(token, True, ADMIN)).status is Status.APPROVED

    asyncio.run(scenario())


def test_the_requester_learns_who_can_decide_but_not_their_numbers(
    world: World, tmp_path: Path
) -> None:
    async def scenario() -> None:
        await created(world)
        (approval,) = await world.manager.open_approvals()
        assert world.manager.asked(approval) == [
            {"channel": "signal", "who": "Signal approvers …0001, …0002"},
            {
                "channel": "admin",
                "who": "an admin client (CN matching 'admin-*') with POST /approve "
                f'{{"approval_id": "{approval.id}"}}',
            },
        ]
        assert "+15555550001" not in json.dumps(world.manager.view(approval, "librarian-1"))

        # An admin-only approval cannot be decided over Signal; the host's approvers can.
        world.manager.reconfigure(
            approval_config(local_socket=tmp_path / "approve.sock", approvers_group="approvers")
        )
        world.manager.notify = world.outbox
        await created(world, admin_only=True)
        admin_only = next(a for a in await world.manager.open_approvals() if a.admin_only)
        assert [channel["channel"] for channel in world.manager.asked(admin_only)] == [
            "admin",
            "host",
        ]
        assert world.manager.asked(admin_only)[1]["who"] == (
            "members of group 'approvers' on host-1 with `host-agent approve`"
        )

    asyncio.run(scenario())


def test_two_approvers_means_two_different_people(world: World) -> None:
    async def scenario() -> None:
        _, token = await created(world, quorum=2)
        first = await world.manager.decide(token, True, SIGNAL_ONE)
        assert first.status is Status.PENDING and len(first.approvers) == 1
        with pytest.raises(ApprovalError) as twice:
            await world.manager.decide(token, True, SIGNAL_ONE)
        assert twice.value.code == "already_voted"
        second = await world.manager.decide(token, True, SIGNAL_TWO)
        assert second.status is Status.APPROVED
        assert second.approvers == ("signal:+15555550001", "signal:+15555550002")

    asyncio.run(scenario())
    assert world.events()[-2:] == ["approval_refused", "approval_granted"]


def test_a_quorum_counts_people_not_their_channels(world: World) -> None:
    """One person with a phone and an admin certificate is one approver."""
    ops = Person("ops-a", frozenset({"signal:+15555550001", "admin:admin-1"}))
    world.manager.reconfigure(approval_config(people=(ops,)))
    world.manager.notify = world.outbox

    async def scenario() -> None:
        _, token = await created(world, quorum=2)
        assert (await world.manager.decide(token, True, SIGNAL_ONE)).status is Status.PENDING
        with pytest.raises(ApprovalError) as again:
            await world.manager.decide(token, True, ADMIN)  # the same person, another channel
        assert again.value.code == "already_voted"
        granted = await world.manager.decide(token, True, SIGNAL_TWO)
        assert granted.status is Status.APPROVED
        assert granted.approvers == ("signal:+15555550001", "signal:+15555550002")

    asyncio.run(scenario())


UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


def test_a_signal_uuid_counts_for_the_person_whose_number_is_allowed(world: World) -> None:
    """signal-cli reports only the UUID when a sender hides their number: listed under
    the same person as an allowed number, it approves as that person, once."""
    ops = Person("ops-a", frozenset({"signal:+15555550001", f"signal:{UUID}"}))
    world.manager.reconfigure(approval_config(people=(ops,)))
    world.manager.notify = world.outbox
    stranger = Approver("signal", "9e8d7c6b-5a49-3827-1605-f4e3d2c1b0a9")

    async def scenario() -> None:
        _, token = await created(world, quorum=2)
        with pytest.raises(ApprovalError) as unknown:
            await world.manager.decide(token, True, stranger)
        assert unknown.value.code == "approver_not_allowed"
        voted = await world.manager.decide(token, True, Approver("signal", UUID))
        assert (voted.status, voted.approvers) == (Status.PENDING, (f"signal:{UUID}",))
        with pytest.raises(ApprovalError) as again:
            await world.manager.decide(token, True, SIGNAL_ONE)  # the same person's number
        assert again.value.code == "already_voted"

    asyncio.run(scenario())


def test_a_requester_cannot_approve_through_another_of_its_identities(world: World) -> None:
    # The person behind the requesting CN also holds an allowlisted phone.
    world.manager.reconfigure(
        approval_config(
            people=(Person("ops-a", frozenset({"admin:librarian-1", "signal:+15555550001"})),)
        )
    )
    world.manager.notify = world.outbox

    async def scenario() -> None:
        _, token = await created(world)
        with pytest.raises(ApprovalError) as refused:
            await world.manager.decide(token, True, SIGNAL_ONE)
        assert refused.value.code == "self_approval"
        assert (await world.manager.decide(token, True, SIGNAL_TWO)).status is Status.APPROVED

    asyncio.run(scenario())


def test_deny_ends_it(world: World) -> None:
    async def scenario() -> None:
        approval_id, token = await created(world)
        assert (await world.manager.decide(token, False, SIGNAL_ONE)).status is Status.DENIED
        with pytest.raises(ApprovalError) as late:
            await world.manager.decide(token, True, SIGNAL_TWO)
        assert late.value.code == "approval_denied"
        with pytest.raises(ApprovalError) as used:
            await world.manager.consume(approval_id, REQUESTER, operation())
        assert (used.value.status, used.value.code) == (403, "approval_denied")

    asyncio.run(scenario())


def test_a_deny_withdraws_a_grant_not_yet_used(world: World) -> None:
    """A deny beats an approve: one approver's late DENY still stops the operation if it
    has not run; once it has, the deny is too late and says so."""

    async def scenario() -> None:
        approval_id, token = await created(world)
        await world.manager.decide(token, True, SIGNAL_ONE)
        withdrawn = await world.manager.decide(token, False, SIGNAL_TWO)
        assert (withdrawn.status, withdrawn.decided_by) == (Status.DENIED, str(SIGNAL_TWO))
        with pytest.raises(ApprovalError) as used:
            await world.manager.consume(approval_id, REQUESTER, operation())
        assert (used.value.status, used.value.code) == (403, "approval_denied")
        with pytest.raises(ApprovalError) as vote:
            await world.manager.decide(token, True, SIGNAL_ONE)
        assert vote.value.code == "approval_denied"

        ran_id, ran_token = await created(world, operation("tank/b@old"))
        await world.manager.decide(ran_token, True, SIGNAL_ONE)
        await world.manager.consume(ran_id, REQUESTER, operation("tank/b@old"))
        with pytest.raises(ApprovalError) as late:
            await world.manager.decide(ran_token, False, SIGNAL_TWO)
        assert (late.value.status, late.value.code) == (409, "approval_consumed")

    asyncio.run(scenario())
    assert world.events().count("approval_denied") == 1


def test_expiry_ends_pending_and_unused_approvals(world: World) -> None:
    async def scenario() -> None:
        pending_id, pending_token = await created(world)
        granted_id, granted_token = await created(world, operation("tank/b@old"))
        await world.manager.decide(granted_token, True, SIGNAL_ONE)
        world.clock.now += 301
        with pytest.raises(ApprovalError) as late:
            await world.manager.decide(pending_token, True, SIGNAL_ONE)
        assert (late.value.status, late.value.code) == (410, "approval_expired")
        with pytest.raises(ApprovalError) as unused:
            await world.manager.consume(granted_id, REQUESTER, operation("tank/b@old"))
        assert unused.value.code == "approval_expired"
        expired = await world.manager.sweep()
        assert {a.id for a in expired} == {pending_id, granted_id}
        assert await world.manager.open_approvals() == []

    asyncio.run(scenario())
    assert world.events().count("approval_expired") == 2


@pytest.mark.parametrize(
    ("caller", "op", "code"),
    [
        pytest.param({"cn": "librarian-2"}, operation(), "approval_not_found", id="other-caller"),
        pytest.param(
            {"fingerprint": "cd" * 32},
            operation(),
            "approval_certificate_mismatch",
            id="same-cn-other-certificate",
        ),
        pytest.param({}, operation("tank/a@new"), "approval_mismatch", id="other-target"),
        pytest.param({}, operation("tank/a@old", "recursive"), "approval_mismatch", id="more-args"),
    ],
)
def test_approval_binds_caller_and_operation(
    world: World, caller: dict[str, str], op: Operation, code: str
) -> None:
    async def scenario() -> None:
        approval_id, token = await created(world)
        await world.manager.decide(token, True, SIGNAL_ONE)
        with pytest.raises(ApprovalError) as refused:
            await world.manager.consume(approval_id, {**REQUESTER, **caller}, op)
        assert refused.value.code == code
        still = await world.manager.visible(approval_id, "librarian-1")
        assert still.status is Status.APPROVED

    asyncio.run(scenario())


def test_fifty_concurrent_consumes_succeed_exactly_once(world: World) -> None:
    async def scenario() -> list[object]:
        approval_id, token = await created(world)
        await world.manager.decide(token, True, SIGNAL_ONE)
        attempts = [world.manager.consume(approval_id, REQUESTER, operation()) for _ in range(50)]
        return await asyncio.gather(*attempts, return_exceptions=True)

    outcomes = asyncio.run(scenario())
    wins = [o for o in outcomes if not isinstance(o, BaseException)]
    losses = [o for o in outcomes if isinstance(o, ApprovalError)]
    assert len(wins) == 1 and len(losses) == 49
    assert {loss.code for loss in losses} == {"approval_consumed"}


def test_approvals_survive_a_restart(world: World, tmp_path: Path) -> None:
    async def before() -> tuple[str, str, str]:
        pending_id, _ = await created(world)
        granted_id, token = await created(world, operation("tank/b@old"))
        await world.manager.decide(token, True, SIGNAL_ONE)
        return pending_id, granted_id, token

    pending_id, granted_id, _ = asyncio.run(before())
    world.manager.store.close()

    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.open()
    reopened = world.backend.open()
    manager = ApprovalManager(approval_config(), reopened, audit, clock=world.clock)

    async def after() -> None:
        assert {a.id for a in await manager.open_approvals("librarian-1")} == {
            pending_id,
            granted_id,
        }
        used = await manager.consume(granted_id, REQUESTER, operation("tank/b@old"))
        assert used.status is Status.CONSUMED

    asyncio.run(after())
    reopened.close()
    audit.close()
    assert verify([tmp_path / "audit.jsonl"]).ok


def test_a_failed_notification_is_audited_and_loses_nothing(world: World) -> None:
    world.outbox.failing = True

    async def scenario() -> None:
        approval = await world.manager.create(REQUESTER, operation(), decision(), None, "librarian")
        await world.manager.drain()
        assert (await world.manager.visible(approval.id, "admin-7")).status is Status.PENDING

    asyncio.run(scenario())
    assert world.events() == ["approval_created", "approval_notify_failed"]


def test_unknown_and_malformed_tokens_are_refused_and_audited(world: World) -> None:
    async def scenario() -> None:
        await created(world)
        for text in ("0" * 16, "short", "ÄBCDEFGHJKMNPQRS", ""):
            with pytest.raises(ApprovalError) as refused:
                await world.manager.decide(text, True, SIGNAL_ONE)
            assert (refused.value.status, refused.value.code) == (404, "unknown_token")

    asyncio.run(scenario())
    assert world.events().count("approval_refused") == 4


def test_token_normalisation_forgives_case_and_look_alikes() -> None:
    token = tokens.new_token()
    assert tokens.normalize(f"  {token.lower()} ") == token
    assert tokens.normalize("IL0O" * 4) == "1100" * 4
    assert tokens.normalize("U" * 16) is None
    assert tokens.normalize(token + "0") is None
    assert len({tokens.new_token() for _ in range(1000)}) == 1000


def test_reads_expire_what_is_due_and_audit_it_once(world: World) -> None:
    async def scenario() -> None:
        approval_id, _ = await created(world)
        world.clock.now += 301
        seen = await asyncio.gather(
            *(world.manager.visible(approval_id, "librarian-1") for _ in range(5))
        )
        assert {a.status for a in seen} == {Status.EXPIRED}
        assert await world.manager.open_approvals("librarian-1") == []
        assert await world.manager.sweep() == []

    asyncio.run(scenario())
    assert world.events().count("approval_expired") == 1


def test_nothing_is_stored_when_its_creation_cannot_be_audited(tmp_path: Path) -> None:
    audit = AuditLog(Path("/dev/full"))
    audit.open()
    store = SqliteStore(tmp_path / "approvals.sqlite3")
    outbox = Outbox()
    manager = ApprovalManager(approval_config(), store, audit, notify=outbox)

    async def scenario() -> None:
        with pytest.raises(AuditUnavailable):
            await manager.create(REQUESTER, operation(), decision(), None, "librarian")
        await manager.drain()

    try:
        asyncio.run(scenario())
    finally:
        audit.close()
    assert store.listing(list(Status)) == []
    assert outbox.sent == []
    store.close()


def test_a_reloaded_config_changes_who_may_approve_and_where_tokens_go(world: World) -> None:
    """After SIGHUP: a number dropped from allowed_approvers no longer counts, and with no
    Signal endpoint configured any more, new tokens are not sent anywhere."""

    async def scenario() -> None:
        approval_id, token = await created(world)
        world.manager.reconfigure(approval_config(allowed_approvers=("+15555550002",)))
        with pytest.raises(ApprovalError) as refused:
            await world.manager.decide(token, True, SIGNAL_ONE)
        assert refused.value.code == "approver_not_allowed"
        granted = await world.manager.decide(token, True, SIGNAL_TWO)
        assert (granted.id, granted.status) == (approval_id, Status.APPROVED)
        sent = len(world.outbox.sent)
        await world.manager.create(REQUESTER, operation(), decision(), None, "librarian")
        await world.manager.drain()
        assert len(world.outbox.sent) == sent

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("reference", "approver", "named"),
    [
        pytest.param("ap-{id}", Approver("pam", "alice"), True, id="on-the-host"),
        pytest.param("ap-{id}", ADMIN, True, id="admin-certificate"),
        pytest.param("AP-{id}", ADMIN, False, id="upper-case-is-no-id"),
        pytest.param("AP-{id}", Approver("pam", "alice"), False, id="upper-case-on-the-host"),
    ],
)
def test_only_people_authenticated_apart_from_the_message_may_name_the_approval_id(
    world: World, reference: str, approver: Approver, named: bool
) -> None:
    """The id is the requester's to know; a Signal reply must carry the token. A login
    on the host or an admin certificate may name the approval by its id."""

    async def scenario() -> None:
        approval_id, _ = await created(world)
        text = reference.format(id=approval_id.removeprefix("ap-"))
        with pytest.raises(ApprovalError) as refused:
            await world.manager.decide(text, True, SIGNAL_ONE)
        assert refused.value.code == "unknown_token"
        if named:
            approved = await world.manager.decide(text, True, approver)
            assert approved.status is Status.APPROVED
        else:  # not an id, so read as a token: none matches
            with pytest.raises(ApprovalError) as refused:
                await world.manager.decide(text, True, approver)
            assert refused.value.code == "unknown_token"

    asyncio.run(scenario())


def test_the_predecessors_approval_id_must_name_the_tokens_approval(world: World) -> None:
    """POST /approve with {"approval_id", "token"}: both must point at the same approval."""

    async def scenario() -> None:
        first_id, first_token = await created(world)
        second_id, _ = await created(world)
        with pytest.raises(ApprovalError) as refused:
            await world.manager.decide(first_token, True, ADMIN, approval_id=second_id)
        assert (refused.value.code, refused.value.field) == ("approval_id_mismatch", "approval_id")
        assert (await world.manager.visible(first_id, "librarian-1")).status is Status.PENDING
        approved = await world.manager.decide(first_token, True, ADMIN, approval_id=first_id)
        assert approved.status is Status.APPROVED

    asyncio.run(scenario())
    assert "approval_refused" in world.events()


def follow_ups(world: World) -> list[str]:
    """The messages after the request itself: what approvers heard of its outcome."""
    return [text for text, _ in world.outbox.sent[1:]]


def test_the_approvers_asked_hear_who_decided_and_when_it_ran(world: World) -> None:
    ops = Person("ops-a", frozenset({"signal:+15555550001"}))
    world.manager.reconfigure(approval_config(people=(ops,)))
    world.manager.notify = world.outbox

    async def scenario() -> str:
        approval_id, token = await created(world)
        await world.manager.decide(token, True, SIGNAL_ONE)
        await world.manager.consume(approval_id, REQUESTER, operation())
        await world.manager.drain()
        return token

    token = asyncio.run(scenario())
    granted, used = follow_ups(world)
    assert granted.splitlines()[0].endswith(": APPROVED")
    assert "zfs-destroy on tank/a@old, asked by librarian-1: by person:ops-a at " in granted
    assert used.splitlines()[0].endswith(": USED") and "librarian-1 ran it at " in used
    # To the same people as the request, and never with a token.
    assert {tuple(recipients) for _, recipients in world.outbox.sent} == {
        ("+15555550001", "+15555550002")
    }
    assert not any(token in text or "Reply" in text for text in (granted, used))


@pytest.mark.parametrize("ending", ["denied", "expired"])
def test_the_approvers_asked_hear_when_a_request_is_over_unapproved(
    world: World, ending: str
) -> None:
    async def scenario() -> None:
        await created(world)
        if ending == "denied":
            await world.manager.decide(world.outbox.token(), False, SIGNAL_TWO)
        else:
            world.clock.now += 301
            await world.manager.sweep()
        await world.manager.drain()

    asyncio.run(scenario())
    [told] = follow_ups(world)
    if ending == "denied":
        assert told.splitlines()[0].endswith(": DENIED") and "by signal:…0002 at " in told
    else:
        assert told.splitlines()[0].endswith(": EXPIRED") and "it will not run" in told


def test_a_vote_short_of_the_quorum_tells_no_one_and_outcomes_can_be_turned_off(
    world: World,
) -> None:
    async def scenario() -> None:
        await created(world, quorum=2)
        await world.manager.decide(world.outbox.token(), True, SIGNAL_ONE)
        await world.manager.drain()
        assert follow_ups(world) == []
        world.manager.reconfigure(approval_config(notify_outcomes=False))
        world.manager.notify = world.outbox
        await world.manager.decide(world.outbox.token(), True, SIGNAL_TWO)
        await world.manager.drain()

    asyncio.run(scenario())
    assert follow_ups(world) == []
    assert world.events()[-1] == "approval_granted"


def test_a_follow_up_that_cannot_be_sent_changes_nothing(world: World) -> None:
    async def scenario() -> None:
        approval_id, token = await created(world)
        world.outbox.failing = True
        granted = await world.manager.decide(token, True, SIGNAL_ONE)
        await world.manager.drain()
        assert granted.status is Status.APPROVED
        consumed = await world.manager.consume(approval_id, REQUESTER, operation())
        await world.manager.drain()
        assert consumed.status is Status.CONSUMED

    asyncio.run(scenario())
    assert world.events()[-2:] == ["approval_granted", "approval_consumed"]
