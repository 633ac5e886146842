"""End to end as root: mTLS client → agent → real sudo as an unprivileged account →
the zfs wrapper → a real zfs-fuse pool. Also the runner's limits through real sudo."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from host_agent.audit import verify
from host_agent.config import Config
from tests.hostile import HOSTILE_NAMES
from tests.support import (
    Pki,
    RunningAgent,
    audit_records,
    client,
    client_context,
    listening_port,
    running_agent,
    serve_process,
)
from tests.system import Pool, System, run

pytestmark = pytest.mark.root


def test_snapshot_is_created_on_the_pool_and_audited(
    system_agent: RunningAgent, pki: Pki, pool: Pool, system_config: Config
) -> None:
    dataset = f"{pool.name}/data"
    with client(system_agent, pki, "librarian-1") as http:
        reply = http.post(
            "/host/op", json={"kind": "zfs", "resource": dataset, "args": ["snapshot", "e2e-1"]}
        )
    assert reply.status_code == 200, reply.text
    assert reply.json()["data"] == {"snapshot": f"{dataset}@e2e-1"}
    assert reply.json()["exit_code"] == 0
    assert f"{dataset}@e2e-1" in pool.datasets("snapshot")
    decision, result = audit_records(system_config.audit.log_path)
    assert (decision["event"], decision["decision"]) == ("decision", "allow")
    assert decision["argv"][-2:] == ["snapshot", f"{dataset}@e2e-1"]
    assert (result["event"], result["outcome"], result["exit_code"]) == ("result", "ok", 0)
    assert result["request_id"] == decision["request_id"]
    assert verify([system_config.audit.log_path]).ok


def test_list_returns_parsed_entries_filtered_by_type(
    system_agent: RunningAgent, pki: Pki, pool: Pool
) -> None:
    run("zfs", "snapshot", f"{pool.name}/data@listed")
    with client(system_agent, pki, "librarian-1") as http:
        default = http.post(
            "/host/op", json={"kind": "zfs", "resource": pool.name, "args": ["list"]}
        )
        snapshots = http.post(
            "/host/op", json={"kind": "zfs", "resource": pool.name, "args": ["list", "snapshot"]}
        )
    assert default.status_code == 200, default.text
    names = [d["name"] for d in default.json()["data"]["datasets"]]
    assert names == [pool.name, f"{pool.name}/data"]
    entries = {d["name"]: d for d in snapshots.json()["data"]["datasets"]}
    snap = entries[f"{pool.name}/data@listed"]
    assert snap["type"] == "snapshot"
    assert isinstance(snap["used"], int) and isinstance(snap["referenced"], int)
    assert all(d["type"] == "snapshot" for d in entries.values())


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        pytest.param(
            {"resource": "{pool}/data", "args": ["snapshot", "twice"]},
            409,
            "already_exists",
            id="snapshot-exists",
        ),
        pytest.param(
            {"resource": "{pool}/missing", "args": ["snapshot", "s"]},
            404,
            "not_found",
            id="dataset-missing",
        ),
        pytest.param(
            {"resource": "{pool}/missing", "args": ["list"]}, 404, "not_found", id="list-missing"
        ),
    ],
)
def test_tool_failures_map_to_status_and_code(
    system_agent: RunningAgent,
    pki: Pki,
    pool: Pool,
    body: dict[str, object],
    status: int,
    code: str,
) -> None:
    run("zfs", "snapshot", f"{pool.name}/data@twice", check=False)
    request = {"kind": "zfs", **body, "resource": str(body["resource"]).format(pool=pool.name)}
    with client(system_agent, pki, "librarian-1") as http:
        reply = http.post("/host/op", json=request)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["code"] == code
    assert reply.json()["result"]["exit_code"] != 0


@pytest.mark.parametrize("value", HOSTILE_NAMES)
def test_hostile_names_change_nothing(
    system_agent: RunningAgent, pki: Pki, pool: Pool, system_config: Config, value: str
) -> None:
    before = pool.datasets()
    with client(system_agent, pki, "librarian-1") as http:
        as_resource = http.post(
            "/host/op", json={"kind": "zfs", "resource": value, "args": ["snapshot", "s"]}
        )
        as_snapshot = http.post(
            "/host/op",
            json={"kind": "zfs", "resource": f"{pool.name}/data", "args": ["snapshot", value]},
        )
    for reply, field in ((as_resource, "resource"), (as_snapshot, "args[1]")):
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["field"] == field
    assert pool.datasets() == before
    events = [r["event"] for r in audit_records(system_config.audit.log_path)]
    assert events == ["rejected", "rejected"]


# argv cannot carry NUL at all: execve refuses it before any wrapper runs.
ARGV_HOSTILE_NAMES = [case for case in HOSTILE_NAMES if "\x00" not in case.values[0]]


@pytest.mark.parametrize("value", ARGV_HOSTILE_NAMES)
def test_wrapper_rejects_hostile_names_on_its_own(system: System, pool: Pool, value: str) -> None:
    user, wrappers = system.user, system.wrappers
    before = pool.datasets()
    wrapper = str(wrappers.directory / "host-agent-zfs")
    for argv in (
        ("snapshot", f"{value}@s"),
        ("snapshot", f"{pool.name}/data@{value}"),
        ("list", value),
        ("get", "used", value),
        ("destroy", value),
        ("destroy", f"{pool.name}/data@{value}"),
        ("rollback", f"{value}@s"),
    ):
        done = run("sudo", "-n", wrapper, *argv, user=user, check=False)
        assert done.returncode == 64, (argv, done.stdout, done.stderr)
        assert "refused" in done.stderr
    assert pool.datasets() == before


def test_unwritable_audit_runs_nothing(
    system: System, pool: Pool, pki: Pki, tmp_path: Path
) -> None:
    config = system.agent_config(pki, tmp_path, name="full", audit_log=Path("/dev/full"))
    with running_agent(config) as agent, client(agent, pki, "librarian-1") as http:
        reply = http.post(
            "/host/op",
            json={
                "kind": "zfs",
                "resource": f"{pool.name}/data",
                "args": ["snapshot", "unaudited"],
            },
        )
    assert reply.status_code == 503
    assert reply.json()["error"]["code"] == "audit_unavailable"
    assert f"{pool.name}/data@unaudited" not in pool.datasets("snapshot")


def test_result_that_cannot_be_audited_is_reported_as_ran(
    system: System, pool: Pool, pki: Pki, tmp_path: Path
) -> None:
    """The decision record fits under a real file-size limit, the result record does not."""
    request = {"kind": "zfs", "resource": f"{pool.name}/data", "args": ["snapshot", "limit"]}

    def configured(name: str) -> Config:
        # Approvals off: the store's SQLite file would also meet the size limit.
        return system.agent_config(
            pki, tmp_path, name=name, audit_log=tmp_path / f"{name}.jsonl", approvals=False
        )

    probe = configured("probe")
    with running_agent(probe) as agent, client(agent, pki, "librarian-1") as http:
        assert http.post("/host/op", json={**request, "dry_run": True}).status_code == 200
    # The real decision record differs from the dry run's only in "dry_run":false (+1 byte).
    decision_size = probe.audit.log_path.stat().st_size + 1
    limited = configured("limited")
    process = serve_process(
        limited.source, prefix=("prlimit", f"--fsize={decision_size + 16}", "--")
    )
    try:
        port = listening_port(process)
        cert, key = pki.client("librarian-1")
        with httpx.Client(verify=client_context(pki.ca, cert, key), timeout=60) as http:
            reply = http.post(f"https://127.0.0.1:{port}/host/op", json=request)
    finally:
        process.terminate()
        process.communicate(timeout=30)
    assert reply.status_code == 503
    assert reply.json()["error"]["code"] == "result_unaudited"
    assert "zfs-snapshot ran (outcome ok)" in reply.json()["error"]["message"]
    assert f"{pool.name}/data@limit" in pool.datasets("snapshot")
    (decision,) = audit_records(limited.audit.log_path)
    assert (decision["event"], decision["decision"]) == ("decision", "allow")


# --- get, destroy, rollback -------------------------------------------------------


def _op(agent: RunningAgent, pki: Pki, cn: str, resource: str, *args: str) -> httpx.Response:
    with client(agent, pki, cn) as http:
        return http.post("/host/op", json={"kind": "zfs", "resource": resource, "args": list(args)})


def test_get_returns_allowlisted_properties_with_sources(
    operator_agent: RunningAgent, pki: Pki, pool: Pool
) -> None:
    reply = _op(operator_agent, pki, "admin-1", f"{pool.name}/data", "get", "used", "compression")
    assert reply.status_code == 200, reply.text
    data = reply.json()["data"]
    assert data["name"] == f"{pool.name}/data"
    assert set(data["properties"]) == {"used", "compression"}
    assert isinstance(data["properties"]["used"]["value"], int)
    assert data["properties"]["compression"]["source"] in {"default", "local", "inherited"}


def test_destroy_removes_a_snapshot_and_refuses_children_unless_recursive(
    operator_agent: RunningAgent, pki: Pki, pool: Pool
) -> None:
    parent = f"{pool.name}/doomed"
    run("zfs", "create", parent)
    run("zfs", "create", f"{parent}/child")
    run("zfs", "snapshot", f"{parent}@old")

    reply = _op(operator_agent, pki, "admin-1", f"{parent}@old", "destroy")
    assert reply.status_code == 200, reply.text
    assert reply.json()["data"] == {"destroyed": f"{parent}@old", "recursive": False}
    assert f"{parent}@old" not in pool.datasets("snapshot")

    refused = _op(operator_agent, pki, "admin-1", parent, "destroy")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "has_dependents"
    assert f"{parent}/child" in pool.datasets()

    recursive = _op(operator_agent, pki, "admin-1", parent, "destroy", "recursive")
    assert recursive.status_code == 200, recursive.text
    assert not [name for name in pool.datasets() if name.startswith(parent)]


def test_recursive_destroy_needs_allow_recursive(
    system_agent: RunningAgent, pki: Pki, pool: Pool
) -> None:
    """The standard admin profile may destroy, but has no allow_recursive."""
    run("zfs", "create", f"{pool.name}/kept")
    reply = _op(system_agent, pki, "admin-1", f"{pool.name}/kept", "destroy", "recursive")
    assert reply.status_code == 403
    assert reply.json()["error"]["code"] == "recursive_not_allowed"
    assert f"{pool.name}/kept" in pool.datasets()
    run("zfs", "destroy", f"{pool.name}/kept")


def test_destroy_needs_approval_for_the_librarian(
    system_agent: RunningAgent, pki: Pki, pool: Pool
) -> None:
    run("zfs", "snapshot", f"{pool.name}/data@guarded")
    reply = _op(system_agent, pki, "librarian-1", f"{pool.name}/data@guarded", "destroy")
    assert reply.status_code == 202
    assert reply.json()["status"] == "pending"
    assert f"{pool.name}/data@guarded" in pool.datasets("snapshot")


def test_rollback_restores_file_content(
    operator_agent: RunningAgent, pki: Pki, pool: Pool, tmp_path: Path
) -> None:
    mountpoint = tmp_path / "mnt"
    dataset = f"{pool.name}/files"
    run("zfs", "create", "-o", f"mountpoint={mountpoint}", dataset)
    try:
        (mountpoint / "state.txt").write_text("before\n")
        assert _op(operator_agent, pki, "admin-1", dataset, "snapshot", "good").status_code == 200
        (mountpoint / "state.txt").write_text("after\n")
        run("zfs", "snapshot", f"{dataset}@newer")

        blocked = _op(operator_agent, pki, "admin-1", f"{dataset}@good", "rollback")
        assert blocked.status_code == 409
        assert blocked.json()["error"]["code"] == "newer_snapshots_exist"
        assert (mountpoint / "state.txt").read_text() == "after\n"

        reply = _op(operator_agent, pki, "admin-1", f"{dataset}@good", "rollback", "recursive")
        assert reply.status_code == 200, reply.text
        assert reply.json()["data"] == {"rolled_back_to": f"{dataset}@good", "recursive": True}
        assert (mountpoint / "state.txt").read_text() == "before\n"
        assert f"{dataset}@newer" not in pool.datasets("snapshot")
    finally:
        run("zfs", "destroy", "-r", dataset, check=False)


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(("destroy", "{pool}"), id="pool-root"),
        pytest.param(("destroy", "{pool}/data", "-r"), id="flag-instead-of-word"),
        pytest.param(("destroy", "{pool}/data", "recursive", "x"), id="extra-argument"),
        pytest.param(("rollback", "{pool}/data"), id="rollback-to-dataset"),
        pytest.param(("get", "all", "{pool}/data"), id="get-all"),
        pytest.param(("get", "used,-o", "{pool}/data"), id="get-option-in-list"),
        pytest.param(("get", "used"), id="get-without-name"),
        pytest.param(("clone", "{pool}/data@s", "{pool}/c"), id="unknown-command"),
    ],
)
def test_wrapper_refuses_what_the_adapter_would(
    system: System, pool: Pool, argv: tuple[str, ...]
) -> None:
    before = pool.datasets()
    wrapper = str(system.wrappers.directory / "host-agent-zfs")
    filled = [part.format(pool=pool.name) for part in argv]
    done = run("sudo", "-n", wrapper, *filled, user=system.user, check=False)
    assert done.returncode == 64, (done.stdout, done.stderr)
    assert pool.datasets() == before
