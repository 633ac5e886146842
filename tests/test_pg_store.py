"""The PostgreSQL approval store on a real cluster: the schema the operator installs,
the rights the agents' role gets, and several hosts sharing one database.

The approval state machine itself runs on both stores in tests/test_approvals.py."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from host_agent.approvals import inbox as inbox_module
from host_agent.approvals import manager as manager_module
from host_agent.approvals import pg_schema
from host_agent.approvals.inbox import SignalInbox
from host_agent.approvals.manager import ApprovalManager
from host_agent.approvals.model import Approver, Status
from host_agent.approvals.pg_schema import AGENT_GRANTS, SCHEMA_VERSION
from host_agent.approvals.pg_store import (
    CONNECT_TIMEOUT_SECONDS,
    RECONNECT_SECONDS,
    PostgresStore,
)
from host_agent.approvals.signal import IncomingReply
from host_agent.approvals.store import SqliteStore, StoreError
from host_agent.audit import AuditLog
from host_agent.cli import main
from host_agent.config import Config
from host_agent.errors import ApprovalError
from tests.approval_flow import destroy as destroy_request
from tests.approval_flow import get, post, request_approval, status, token_sent, wait_for
from tests.postgres import FleetDatabase, Postgres, fleet_database
from tests.signal_bridge import BRIDGE_NUMBER, SignalBridge
from tests.support import (
    Pki,
    RunningAgent,
    client,
    client_context,
    listening_port,
    running_agent,
    serve_process,
)
from tests.system import Pool, System, run
from tests.test_approvals import REQUESTER, SIGNAL_ONE, Clock, Outbox, approval_config, decision
from tests.test_approvals import operation as destroy
from tests.test_e2e_approvals import APPROVER, configured, signed_reply, webhook

pytestmark = pytest.mark.root


def agent_connection(cluster: Postgres, database: FleetDatabase) -> psycopg.Connection[tuple]:
    return psycopg.connect(database.url, password=database.password, autocommit=True)


def config_file(tmp_path: Path, store_url: str, password_file: Path | None = None) -> Path:
    extra = f'store_password_file = "{password_file}"\n' if password_file else ""
    path = tmp_path / "agent.toml"
    path.write_text(
        f"""
[server]
cert = "server.crt"
key = "server.key"
client_ca = "ca.crt"

[audit]
log_path = "audit.jsonl"

[approval]
store_url = "{store_url}"
{extra}
[[agents]]
cn_pattern = "librarian-*"
agent_type = "librarian"
unix_user = "librarian"
"""
    )
    return path


def test_db_upgrade_installs_the_schema_once_and_grants_the_agents_role(
    postgres: Postgres,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name, role = "fleet_cli", "agent_cli"
    postgres.create_database(name, role)
    path = config_file(tmp_path, f"postgresql://{role}@127.0.0.1:{postgres.port}/{name}")
    monkeypatch.setenv("PGPASSWORD", postgres.password)  # the owner's, from libpq's environment
    assert main(["db", "upgrade", "--config", str(path), "--owner", "postgres"]) == 0
    assert main(["db", "upgrade", "--config", str(path), "--owner", "postgres"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"approval schema at version {SCHEMA_VERSION} (applied "
        + ", ".join(str(n) for n in range(1, SCHEMA_VERSION + 1))
        + f"); role {role} granted",
        f"approval schema at version {SCHEMA_VERSION} (nothing to apply); role {role} granted",
    ]
    granted = postgres.psql(
        "SELECT table_name, privilege_type FROM information_schema.role_table_grants"
        f" WHERE grantee = '{role}' ORDER BY 1, 2",
        database=name,
    ).split()
    expected = sorted(
        f"{table}|{right.strip()}"
        for table, rights in AGENT_GRANTS.items()
        for right in rights.split(",")
    )
    assert granted == expected


@pytest.mark.parametrize(
    "statement",
    [
        pytest.param("DELETE FROM approvals", id="delete-history"),
        pytest.param("TRUNCATE approvals", id="truncate-history"),
        pytest.param("DROP TABLE approvals", id="drop"),
        pytest.param("CREATE TABLE mine (x int)", id="create"),
        pytest.param("ALTER TABLE approvals ADD COLUMN x int", id="alter"),
        pytest.param("UPDATE host_agent_schema SET version = 99", id="forge-version"),
    ],
)
def test_the_agents_role_can_neither_change_the_schema_nor_delete_history(
    postgres: Postgres, statement: str
) -> None:
    """An agent taken over keeps its role's rights only: it can write approvals, not
    erase who approved what, nor alter the schema under the other hosts."""
    database = fleet_database(postgres)
    with agent_connection(postgres, database) as db, pytest.raises(psycopg.Error) as refused:
        db.execute(statement)
    assert isinstance(refused.value, psycopg.errors.InsufficientPrivilege), refused.value


@pytest.mark.parametrize(
    ("version", "message"),
    [
        pytest.param(None, "has no host-agent schema: run `host-agent db upgrade", id="none"),
        pytest.param(99, "has schema version 99, this host-agent needs", id="newer"),
    ],
)
def test_an_agent_refuses_a_schema_it_does_not_know(
    postgres: Postgres, version: int | None, message: str
) -> None:
    database = fleet_database(postgres)
    if version is None:
        postgres.psql("DROP TABLE host_agent_schema", database=database.name)
    else:
        postgres.psql(
            f"INSERT INTO host_agent_schema (version) VALUES ({version})", database=database.name
        )
    with pytest.raises(StoreError, match=message.replace("(", r"\(").replace("`", "`")):
        PostgresStore(database.url, database.password)


def test_an_unreachable_database_is_a_store_error_without_the_password(
    postgres: Postgres,
) -> None:
    database = fleet_database(postgres)
    with pytest.raises(StoreError) as failed:
        PostgresStore(database.url, "wrong-" + database.password)
    assert failed.value.code == "approval_store_unavailable"
    assert database.password not in str(failed.value)


@contextlib.contextmanager
def fleet_hosts(
    database: FleetDatabase, tmp_path: Path, *hosts: str
) -> Iterator[tuple[list[ApprovalManager], list[PostgresStore], Outbox]]:
    """One manager per host, each over its own pool on the shared database, all telling
    the same outbox (one Signal inbox) and writing one audit log."""
    outbox = Outbox()
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.open()
    stores = [PostgresStore(database.url, database.password) for _ in hosts]
    managers = [
        ApprovalManager(approval_config(), store, audit, notify=outbox, clock=Clock(), host=host)
        for store, host in zip(stores, hosts, strict=True)
    ]
    try:
        yield managers, stores, outbox
    finally:
        for store in stores:
            store.close()
        audit.close()


def test_an_approval_is_consumed_once_across_three_hosts(
    postgres: Postgres, tmp_path: Path
) -> None:
    """Three agents share one database: an approval granted through one is consumed by
    exactly one of fifty resubmits spread over all three."""
    database = fleet_database(postgres)
    with fleet_hosts(database, tmp_path, "host-0", "host-1", "host-2") as (managers, _, outbox):

        async def scenario() -> list[object]:
            first, second = managers[:2]
            approval = await first.create(
                REQUESTER, destroy(), decision(), "free space", "librarian"
            )
            await first.drain()
            await second.decide(outbox.token(), True, SIGNAL_ONE)  # another host hears it
            attempts = [
                managers[n % 3].consume(approval.id, REQUESTER, destroy()) for n in range(50)
            ]
            return await asyncio.gather(*attempts, return_exceptions=True)

        outcomes = asyncio.run(scenario())
    wins = [o for o in outcomes if not isinstance(o, BaseException)]
    losses = [o for o in outcomes if isinstance(o, ApprovalError)]
    assert (len(wins), len(losses)) == (1, 49), outcomes
    assert {loss.code for loss in losses} == {"approval_consumed"}
    hosts = postgres.psql("SELECT host, status FROM approvals", database=database.name).split()
    assert hosts == ["host-0|consumed"]


def test_a_deny_from_one_host_beats_an_approve_from_another(
    postgres: Postgres, tmp_path: Path
) -> None:
    database = fleet_database(postgres)
    with fleet_hosts(database, tmp_path, "pve-1", "pve-2") as ((one, two), _, outbox):

        async def scenario() -> None:
            approval = await one.create(
                REQUESTER, destroy(), decision(quorum=2), "free space", "librarian"
            )
            await one.drain()
            token = outbox.token()
            await one.decide(token, False, SIGNAL_ONE)
            with pytest.raises(ApprovalError) as late:
                await two.decide(token, True, Approver("signal", "+15555550002"))
            assert late.value.code == "approval_denied"
            assert (await two.visible(approval.id, "librarian-1")).status is Status.DENIED

        asyncio.run(scenario())


def test_the_database_clock_decides_whether_a_grant_has_expired(
    postgres: Postgres, tmp_path: Path
) -> None:
    """A host whose clock runs an hour slow (or is set back by whoever controls it)
    cannot use an approval the database's clock says has expired: the consume is one
    conditional statement on the database's time, and the refusal says why."""
    database = fleet_database(postgres)
    store = PostgresStore(database.url, database.password)
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.open()
    outbox, slow = Outbox(), Clock(time.time() - 3600)
    manager = ApprovalManager(approval_config(), store, audit, notify=outbox, clock=slow)
    try:

        async def scenario() -> None:
            approval = await manager.create(
                REQUESTER, destroy(), decision(), "free space", "librarian"
            )
            await manager.drain()
            await manager.decide(outbox.token(), True, SIGNAL_ONE)  # in time, on its clock
            with pytest.raises(ApprovalError) as late:
                await manager.consume(approval.id, REQUESTER, destroy())
            assert (late.value.status, late.value.code) == (410, "approval_expired")

        asyncio.run(scenario())
    finally:
        store.close()
        audit.close()
    state = postgres.psql("SELECT status, consumed_at FROM approvals", database=database.name)
    assert state.strip() == "approved|"


def test_an_agent_on_the_shared_store_runs_an_approval_end_to_end(
    postgres: Postgres,
    system: System,
    pool: Pool,
    pki: Pki,
    tmp_path: Path,
    bridge: SignalBridge,
    snapshot: str,
) -> None:
    """The real server with store_url: the password comes from its file, the token
    goes out over Signal, the signed reply grants it, the destroy runs once."""
    database = fleet_database(postgres)
    secret = tmp_path / "store-password"
    secret.write_text(database.password + "\n")
    config = configured(
        system,
        pki,
        tmp_path,
        bridge,
        store_url=f'"{database.url}"',
        store_password_file=f'"{secret}"',
    )
    with running_agent(config) as agent:
        approval_id = request_approval(agent, pki, snapshot)
        token = token_sent(bridge)
        assert webhook(agent, pki, signed_reply(f"APPROVE {token}")).status_code == 200
        done = post(
            agent,
            pki,
            "librarian-1",
            "/host/op",
            destroy_request(snapshot, approval_id=approval_id),
        )
        assert done.status_code == 200, done.text
    assert snapshot not in pool.datasets("snapshot")
    rows = postgres.psql("SELECT id, status FROM approvals", database=database.name).split()
    assert rows == [f"{approval_id}|consumed"]
    assert database.password not in config.audit.log_path.read_text()


def test_without_its_database_the_agent_holds_what_needs_a_human_and_recovers(
    postgres: Postgres,
    system: System,
    pool: Pool,
    pki: Pki,
    tmp_path: Path,
    bridge: SignalBridge,
    snapshot: str,
) -> None:
    """The database stops under a running agent: what needs a human gets 503 and runs
    nothing, what policy allows alone still runs, /health and a metric say why; the
    database comes back and so does the agent, without a restart, pending approvals
    intact."""
    database = fleet_database(postgres)
    secret = tmp_path / "store-password"
    secret.write_text(database.password)
    config = configured(
        system, pki, tmp_path, bridge,
        store_url=f'"{database.url}"', store_password_file=f'"{secret}"',
    )  # fmt: skip
    second = f"{snapshot}-2"
    run("zfs", "snapshot", second)
    try:
        with running_agent(config) as agent:
            pending = request_approval(agent, pki, snapshot)
            postgres.stop()
            try:
                held = post(agent, pki, "librarian-1", "/host/op", destroy_request(second))
                assert held.status_code == 503, held.text
                assert held.json()["error"]["code"] == "approval_store_unavailable"
                listed = post(agent, pki, "librarian-1", "/host/op", LIST)
                assert listed.status_code == 200, listed.text
                health = get(agent, pki, "admin-1", "/health").json()
                assert health["status"] == "degraded"
                assert "approval_store_unavailable" in health["problems"]
                assert health["approval_store"]["state"] == "unavailable"
                assert database.password not in json.dumps(health)
                metrics = get(agent, pki, "admin-1", "/metrics").text
                assert metric_value(metrics, "host_agent_approval_store_failures_total") >= 1
            finally:
                postgres.start()
            # Back within the pool's reconnection bound (RECONNECT_SECONDS) and a retry.
            deadline = time.monotonic() + 2 * RECONNECT_SECONDS + CONNECT_TIMEOUT_SECONDS
            again = post(agent, pki, "librarian-1", "/host/op", destroy_request(second))
            while again.status_code == 503 and time.monotonic() < deadline:
                again = post(agent, pki, "librarian-1", "/host/op", destroy_request(second))
            assert again.status_code == 202, again.text
            assert status(agent, pki, pending) == "pending"
            assert get(agent, pki, "admin-1", "/health").json()["approval_store"] == {"state": "ok"}
        assert snapshot in pool.datasets("snapshot") and second in pool.datasets("snapshot")
    finally:
        run("zfs", "destroy", second, check=False)


LIST = {"kind": "zfs", "resource": "", "args": ["list"]}


def metric_value(exposition: str, name: str) -> float:
    line = next(line for line in exposition.splitlines() if line.startswith(f"{name} "))
    return float(line.split()[1])


def test_every_host_lists_the_whole_fleets_approvals_each_naming_its_host(
    postgres: Postgres, tmp_path: Path
) -> None:
    database = fleet_database(postgres)
    with fleet_hosts(database, tmp_path, "pve-1", "pve-2") as ((first, second), _, outbox):

        async def scenario() -> None:
            mine = await first.create(REQUESTER, destroy(), decision(), "why", "librarian")
            await first.drain()
            theirs = await second.create(
                REQUESTER, destroy("tank/b@old"), decision(), "why", "librarian"
            )
            await second.drain()
            assert "host-agent approval on pve-2" in outbox.sent[-1][0]
            for manager in (first, second):
                listed = await manager.open_approvals()
                hosts = [(a.id, a.host) for a in listed]
                assert hosts == [(mine.id, "pve-1"), (theirs.id, "pve-2")]
                assert manager.view(listed[1], "admin-1")["host"] == "pve-2"
            # An approver on the host of one agent decides the other's request.
            decided = await first.decide(theirs.id, True, Approver("pam", "alice"))
            assert (decided.status, decided.host) == (Status.APPROVED, "pve-2")

        asyncio.run(scenario())


def test_a_decision_on_one_host_wakes_the_request_held_on_another(
    postgres: Postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LISTEN/NOTIFY: host A holds a client's request for its approval; an approver's
    reply lands on host B. A hears it from the database, not from its own look every
    FOLLOW_POLL_SECONDS (made longer than the test's bound here)."""
    monkeypatch.setattr(manager_module, "FOLLOW_POLL_SECONDS", 60.0)
    database = fleet_database(postgres)
    with fleet_hosts(database, tmp_path, "pve-1", "pve-2") as ((here, there), stores, outbox):

        async def scenario() -> float:
            loop = asyncio.get_running_loop()
            stores[0].listen(lambda approval: loop.call_soon_threadsafe(here.changed, approval))
            approval = await here.create(REQUESTER, destroy(), decision(), "why", "librarian")
            await here.drain()
            held = asyncio.create_task(here.follow(approval.id, "librarian-1", 30.0))
            await asyncio.sleep(0.5)  # held, and the listener connected
            started = loop.time()
            await there.decide(outbox.token(), True, SIGNAL_ONE)
            followed = await asyncio.wait_for(held, 30)
            assert followed.status is Status.APPROVED
            return loop.time() - started

        assert asyncio.run(scenario()) < 10


def test_an_agent_on_an_older_schema_is_told_to_upgrade_it(
    postgres: Postgres, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database an earlier release installed (schema 1): the agent refuses it, and
    `db upgrade` brings it to the current version, keeping what it holds."""
    name, role = "fleet_old", "agent_old"
    postgres.create_database(name, role)
    with monkeypatch.context() as older:
        older.setattr(pg_schema, "MIGRATIONS", pg_schema.MIGRATIONS[:1])
        older.setattr(pg_schema, "SCHEMA_VERSION", 1)
        first = pg_schema.MIGRATIONS[0]
        grants = {
            table: rights
            for table, rights in pg_schema.AGENT_GRANTS.items()
            if f"CREATE TABLE {table} " in first or table == "host_agent_schema"
        }
        older.setattr(pg_schema, "AGENT_GRANTS", grants)
        with psycopg.connect(postgres.url(database=name), autocommit=True) as owner:
            assert pg_schema.upgrade(owner, role) == [1]
    url = f"postgresql://{role}@127.0.0.1:{postgres.port}/{name}"
    needs = f"has schema version 1, this host-agent needs {SCHEMA_VERSION}"
    with pytest.raises(StoreError, match=needs):
        PostgresStore(url, postgres.password)
    with psycopg.connect(postgres.url(database=name), autocommit=True) as owner:
        assert pg_schema.upgrade(owner, role) == list(range(2, SCHEMA_VERSION + 1))
    PostgresStore(url, postgres.password).close()


def inboxes(database: FleetDatabase, count: int) -> list[SignalInbox]:
    return [
        SignalInbox(PostgresStore(database.url, database.password), "+15555550000", f"pve-{n}")
        for n in range(count)
    ]


def test_one_agent_reads_the_bridge_and_another_takes_over_when_it_dies(
    postgres: Postgres,
) -> None:
    database = fleet_database(postgres)
    first, second, third = inboxes(database, 3)
    assert first.lead() and first.lead()  # leading, and still leading
    assert not second.lead() and not third.lead()
    # The leader dies: its connection goes, and with it the lock; one other takes over.
    assert first._leader is not None
    pid = first._leader.info.backend_pid
    postgres.psql(f"SELECT pg_terminate_backend({pid})", database=database.name)
    assert [second.lead(), third.lead()] == [True, False]
    assert not first.lead()  # back, it finds its connection dead and the lock taken
    for inbox in (first, second, third):
        inbox.resign()
        inbox.store.close()


def test_a_reply_kept_by_a_reader_that_dies_is_applied_by_another_agent(
    postgres: Postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader keeps the reply, then dies before applying it (and another agent that
    claimed it dies too): an agent still alive applies it once, and the approval runs."""
    monkeypatch.setattr(inbox_module, "CLAIM_SECONDS", 0.5)
    database = fleet_database(postgres)
    reader, crasher, survivor = inboxes(database, 3)
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.open()
    outbox = Outbox()
    manager = ApprovalManager(
        approval_config(), survivor.store, audit, notify=outbox, clock=time.time, host="pve-2"
    )

    async def scenario() -> None:
        approval = await manager.create(REQUESTER, destroy(), decision(), "why", "librarian")
        await manager.drain()
        reply = IncomingReply("+15555550001", f"APPROVE {outbox.token()}", now_ms(), "poll")
        parsed = manager.parse_reply(reply)
        assert parsed is not None
        assert reader.lead()
        assert reader.keep([parsed, parsed]) == 1  # deduplicated by sender and time
        reader.resign()  # dies between receive and apply
        assert crasher.claim() == [parsed]  # claims it, then dies too
        assert survivor.claim() == []  # a live claim is left alone...
        await asyncio.sleep(0.6)
        [taken] = survivor.claim()  # ...until it is stale
        result = await manager.apply_reply(taken, deduplicated=True)
        survivor.applied(taken, result["outcome"])
        assert result["outcome"] == "approved"
        assert (await manager.visible(approval.id, "librarian-1")).status is Status.APPROVED
        await asyncio.sleep(0.6)
        assert survivor.claim() == []  # applied: never again
        rows = postgres.psql(
            "SELECT received_by, claimed_by, outcome FROM inbox", database=database.name
        ).split()
        assert rows == ["pve-0|pve-2|approved"]

    asyncio.run(scenario())
    stored = postgres.psql("SELECT row_to_json(i) FROM inbox i", database=database.name)
    assert outbox.token() not in stored  # the token itself is never kept
    for inbox in (reader, crasher, survivor):
        inbox.store.close()
    audit.close()


def now_ms() -> int:
    return int(time.time() * 1000)


def polling_fleet(database: FleetDatabase, bridge: SignalBridge, tmp_path: Path) -> str:
    """[approval] keys of an agent of a fleet that polls the bridge, on `database`."""
    secret = tmp_path / "store-password"
    secret.write_text(database.password)
    return "\n".join(
        (
            f'signal_url = "{bridge.url}"',
            f'signal_number = "{BRIDGE_NUMBER}"',
            "poll_interval_seconds = 0.2",
            f'store_url = "{database.url}"',
            f'store_password_file = "{secret}"',
        )
    )


def fleet_configs(
    system: System, pki: Pki, tmp_path: Path, approval: str, count: int, **options: Any
) -> list[Config]:
    """`count` agents of one fleet on this machine, each with its own audit log."""
    return [
        system.agent_config(
            pki,
            tmp_path,
            name=f"agent{n}",
            approval=approval,
            audit_log=tmp_path / f"audit{n}.jsonl",
            **options,
        )
        for n in range(count)
    ]


def test_three_agents_one_inbox_one_reply_one_run(
    postgres: Postgres,
    system: System,
    pool: Pool,
    pki: Pki,
    tmp_path: Path,
    bridge: SignalBridge,
    snapshot: str,
) -> None:
    """Three agents share a database and a Signal number, all polling: the reply to an
    approval asked for on the first reaches the fleet through whichever agent reads,
    and of 50 resubmits spread over the three, one destroys the snapshot."""
    database = fleet_database(postgres)
    approval = polling_fleet(database, bridge, tmp_path)
    configs = fleet_configs(system, pki, tmp_path, approval, 3)
    with contextlib.ExitStack() as running:
        agents = [running.enter_context(running_agent(config)) for config in configs]
        approval_id = request_approval(agents[0], pki, snapshot)
        bridge.queue_reply(APPROVER, f"APPROVE {token_sent(bridge)}")
        wait_for(lambda: status(agents[2], pki, approval_id) == "approved", timeout=20)
        resent = destroy_request(snapshot, approval_id=approval_id)
        with concurrent.futures.ThreadPoolExecutor(max_workers=10) as threads:
            answers = list(
                threads.map(
                    lambda n: post(agents[n % 3], pki, "librarian-1", "/host/op", resent),
                    range(50),
                )
            )
    codes = sorted(answer.status_code for answer in answers)
    assert codes.count(200) == 1, [a.text for a in answers if a.status_code != 409][:3]
    assert snapshot not in pool.datasets("snapshot")
    kept = postgres.psql("SELECT count(*), count(applied_at) FROM inbox", database=database.name)
    assert kept.split() == ["1|1"]


def test_db_import_moves_a_single_hosts_open_approvals_into_the_fleet(
    postgres: Postgres, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = fleet_database(postgres)
    sqlite = tmp_path / "state" / "approvals.sqlite3"
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.open()
    outbox = Outbox()
    local = ApprovalManager(
        approval_config(), SqliteStore(sqlite), audit, notify=outbox, clock=time.time
    )

    async def before() -> tuple[str, str, str]:
        pending = await local.create(REQUESTER, destroy(), decision(), "why", "librarian")
        granted = await local.create(
            REQUESTER, destroy("tank/b@old"), decision(), "why", "librarian"
        )
        await local.drain()
        await local.decide(outbox.token(), True, SIGNAL_ONE)
        denied = await local.create(REQUESTER, destroy("tank/c@old"), decision(), "", "u")
        await local.drain()
        await local.decide(outbox.token(), False, SIGNAL_ONE)
        return pending.id, granted.id, denied.id

    pending, granted, denied = asyncio.run(before())
    local.store.close()
    audit.close()
    secret = tmp_path / "password"
    secret.write_text(database.password)
    path = config_file(tmp_path, database.url, secret)
    path.write_text(
        path.read_text().replace("[approval]\n", f'[approval]\nstore_path = "{sqlite}"\n')
    )
    assert main(["db", "import", "--config", str(path)]) == 0
    assert main(["db", "import", "--config", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"imported 2 open approval(s) from {sqlite}; 0 already there",
        f"imported 0 open approval(s) from {sqlite}; 2 already there",
    ]
    rows = postgres.psql("SELECT id, status FROM approvals ORDER BY id", database=database.name)
    assert sorted(rows.split()) == sorted([f"{pending}|pending", f"{granted}|approved"])
    assert denied not in rows


def test_when_the_reading_agent_is_killed_another_reads_and_no_reply_is_lost(
    postgres: Postgres,
    system: System,
    pool: Pool,
    pki: Pki,
    tmp_path: Path,
    bridge: SignalBridge,
    snapshot: str,
) -> None:
    """Two agent processes poll one bridge through one database. The one reading is
    killed with SIGKILL; the reply the approver sends afterwards is read by the other,
    within a few polls, and the approval is granted."""
    database = fleet_database(postgres)
    approval = polling_fleet(database, bridge, tmp_path)
    fleet_configs(system, pki, tmp_path, approval, 2)
    paths = [tmp_path / f"agent{n}.toml" for n in range(2)]

    def reader_pid() -> list[str]:
        return postgres.psql(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted",
            database=database.name,
        ).split()

    processes: list[subprocess.Popen[str]] = []
    try:
        first = serve_process(paths[0])
        processes.append(first)
        listening_port(first)
        threading.Thread(target=first.communicate, daemon=True).start()
        wait_for(lambda: len(reader_pid()) == 1, timeout=20)  # the first agent reads
        second = serve_process(paths[1])
        processes.append(second)
        port = listening_port(second)
        threading.Thread(target=second.communicate, daemon=True).start()
        cert, key = pki.client("librarian-1")
        context = client_context(pki.ca, cert, key)
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=context) as http:
            asked = http.post("/host/op", json=destroy_request(snapshot, reason="cleanup"))
            assert asked.status_code == 202, asked.text
            approval_id = asked.json()["approval_id"]
            token = token_sent(bridge)
            held = reader_pid()
            first.kill()  # SIGKILL: no goodbye to the database
            first.wait(10)
            bridge.queue_reply(APPROVER, f"APPROVE {token}")

            def granted() -> bool:
                reply = http.get(f"/approvals/{approval_id}")
                return bool(reply.json()["status"] == "approved")

            wait_for(granted, timeout=30)
        assert reader_pid() not in ([], held)  # the second agent reads now
        kept = postgres.psql("SELECT received_by, outcome FROM inbox", database=database.name)
        assert kept.split() == [f"{socket.gethostname()}|approved"]
    finally:
        for process in processes:
            process.kill()
            process.wait(10)


@dataclasses.dataclass(frozen=True)
class Answer:
    """One request of the load: what it asked for, while the database was in which
    state from its start to its end, and what came back."""

    agent: int  # its port
    kind: str
    during: tuple[str, str]
    status: int
    code: str | None
    approval_id: str | None


def test_three_agents_ride_out_a_database_restart_under_load(
    postgres: Postgres,
    system: System,
    pool: Pool,
    pki: Pki,
    tmp_path: Path,
    bridge: SignalBridge,
    snapshot: str,
) -> None:
    """Six clients keep three agents of one fleet busy (a list, which policy allows, and
    a destroy, which needs a human) while the database stops and starts again. While it
    is down every destroy gets 503 `approval_store_unavailable` and nothing runs, every
    list still runs, and /health says degraded; afterwards each agent creates approvals
    again without a restart of its own, the approvals made before the stop are still
    pending, and the fleet's one Signal reader is back: a reply grants a new approval."""
    database = fleet_database(postgres)
    approval = polling_fleet(database, bridge, tmp_path)
    configs = fleet_configs(system, pki, tmp_path, approval, 3, extra=NO_RATE_LIMIT)
    state = ["up"]
    answers: list[Answer] = []
    stop = threading.Event()

    def load(agent: RunningAgent) -> None:
        with client(agent, pki, "librarian-1") as http:
            while not stop.is_set():
                for kind, body in (("list", LIST), ("destroy", destroy_request(snapshot))):
                    before = state[0]
                    reply = http.post("/host/op", json=body)
                    document = reply.json()
                    answers.append(
                        Answer(
                            agent.port,
                            kind,
                            (before, state[0]),
                            reply.status_code,
                            document.get("error", {}).get("code"),
                            document.get("approval_id"),
                        )
                    )

    with contextlib.ExitStack() as running:
        agents = [running.enter_context(running_agent(config)) for config in configs]
        with concurrent.futures.ThreadPoolExecutor(max_workers=6) as threads:
            loads = [threads.submit(load, agents[n % 3]) for n in range(6)]
            try:
                time.sleep(1.0)
                postgres.stop()
                state[0] = "down"
                try:
                    # A request waits up to CONNECT_TIMEOUT_SECONDS for the database
                    # before its 503; by then every agent has met the outage.
                    time.sleep(CONNECT_TIMEOUT_SECONDS + 1.5)
                    for agent in agents:
                        health = get(agent, pki, "admin-1", "/health").json()
                        assert health["status"] == "degraded", health
                        assert health["approval_store"]["state"] == "unavailable", health
                finally:
                    state[0] = "starting"
                    postgres.start()
                    state[0] = "back"
                deadline = time.monotonic() + 2 * RECONNECT_SECONDS + CONNECT_TIMEOUT_SECONDS

                def all_creating() -> bool:
                    back = {a.agent for a in answers if a.status == 202 and a.during[0] == "back"}
                    return back == {agent.port for agent in agents}

                wait_for(all_creating, timeout=deadline - time.monotonic())
                time.sleep(1.0)
            finally:
                stop.set()
                for future in loads:
                    future.result()
        recovered = {
            agent.port: post(agent, pki, "librarian-1", "/host/op", destroy_request(snapshot))
            for agent in agents
        }
        assert {reply.status_code for reply in recovered.values()} == {202}, recovered
        second = f"{snapshot}-fleet"
        run("zfs", "snapshot", second)
        try:
            asked = post(agents[1], pki, "librarian-1", "/host/op", destroy_request(second))
            assert asked.status_code == 202, asked.text
            bridge.queue_reply(APPROVER, f"APPROVE {token_sent(bridge, resource=second)}")
            new_id = asked.json()["approval_id"]
            wait_for(lambda: status(agents[2], pki, new_id) == "approved", timeout=30)
        finally:
            run("zfs", "destroy", second, check=False)
        for agent in agents:
            assert get(agent, pki, "admin-1", "/health").json()["approval_store"] == {"state": "ok"}

    destroys = [a for a in answers if a.kind == "destroy"]
    lists = [a for a in answers if a.kind == "list"]
    assert {a.status for a in lists} == {200}, Counter((a.status, a.code) for a in lists)
    assert {(a.status, a.code) for a in destroys} <= {
        (202, None),
        (503, "approval_store_unavailable"),
    }, Counter((a.status, a.code) for a in destroys)
    down = [a for a in destroys if a.during == ("down", "down")]
    assert down and {a.status for a in down} == {503}
    assert any(a.during == ("up", "up") and a.status == 202 for a in destroys)
    before_stop = {a.approval_id for a in destroys if a.during == ("up", "up")} - {None}
    listed = postgres.psql("SELECT id, status FROM approvals", database=database.name)
    statuses = dict(line.split("|") for line in listed.split())
    assert {statuses[approval_id] for approval_id in before_stop} == {"pending"}
    assert snapshot in pool.datasets("snapshot")


NO_RATE_LIMIT = "[rate_limit]\nenabled = false\n"
