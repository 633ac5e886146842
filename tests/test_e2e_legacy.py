"""The predecessor's /zfs/* routes: same bodies as before, same pipeline as /host/op."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from host_agent.config import Config
from tests.support import Pki, RunningAgent, audit_records, client
from tests.system import Pool, run

pytestmark = pytest.mark.root


def _post(agent: RunningAgent, pki: Pki, cn: str, path: str, body: Any) -> httpx.Response:
    with client(agent, pki, cn) as http:
        return http.post(path, json=body)


def test_list_keeps_the_predecessor_entry_shape(
    system_agent: RunningAgent, pki: Pki, pool: Pool
) -> None:
    run("zfs", "snapshot", f"{pool.name}/data@legacy-list")
    everything = _post(system_agent, pki, "librarian-1", "/zfs/list", {})
    snapshots = _post(
        system_agent, pki, "librarian-1", "/zfs/list", {"dataset": pool.name, "type": "snapshot"}
    )
    assert everything.status_code == 200, everything.text
    body = everything.json()
    assert body["success"] is True and body["audit_id"] == body["request_id"]
    entry = next(e for e in body["entries"] if e["name"] == f"{pool.name}/data")
    assert set(entry) == {"name", "type", "used", "available", "refer", "mountpoint"}
    # Strings, as the predecessor's clients decode them; sizes as exact byte counts.
    assert entry["type"] == "filesystem" and entry["refer"].isdigit()
    names = [e["name"] for e in snapshots.json()["entries"]]
    assert f"{pool.name}/data@legacy-list" in names
    assert all("@" in name for name in names)


def test_snapshot_creates_it_through_the_same_pipeline(
    system_agent: RunningAgent, pki: Pki, pool: Pool, system_config: Config
) -> None:
    body = {"dataset": f"{pool.name}/data", "snapname": "legacy-1"}
    reply = _post(system_agent, pki, "librarian-1", "/zfs/snapshot", body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["snapshot"] == f"{pool.name}/data@legacy-1"
    assert reply.json()["success"] is True
    assert f"{pool.name}/data@legacy-1" in pool.datasets("snapshot")
    decision, result = audit_records(system_config.audit.log_path)
    assert (decision["operation"], decision["decision"]) == ("zfs-snapshot", "allow")
    assert decision["request_id"] == result["request_id"] == reply.json()["audit_id"]


def test_policy_applies_to_the_shims_as_to_host_op(
    system_agent: RunningAgent, pki: Pki, pool: Pool
) -> None:
    body = {"dataset": f"{pool.name}/data", "snapname": "by-reader"}
    reply = _post(system_agent, pki, "reader-1", "/zfs/snapshot", body)
    assert reply.status_code == 403
    assert reply.json() == {
        "success": False,
        "error": reply.json()["error"],
        "code": "read_only",
        "request_id": reply.json()["request_id"],
    }
    assert isinstance(reply.json()["error"], str) and "read_only" in reply.json()["error"]
    run("zfs", "snapshot", f"{pool.name}/data@legacy-guarded")
    # The predecessor's first request: "approval_token": null, answered 200 when pending.
    destroy = {"dataset": f"{pool.name}/data@legacy-guarded", "approval_token": None}
    guarded = _post(system_agent, pki, "librarian-1", "/zfs/destroy", destroy)
    assert guarded.status_code == 200, guarded.text
    assert guarded.json()["pending_approval"] is True and guarded.json()["success"] is False
    assert guarded.json()["approval_id"].startswith("ap-")
    assert guarded.json()["message"].startswith("Approval required for zfs-destroy on ")
    assert f"{pool.name}/data@legacy-guarded" in pool.datasets("snapshot")
    assert "by-reader" not in " ".join(pool.datasets("snapshot"))


def test_destroy_removes_the_snapshot(operator_agent: RunningAgent, pki: Pki, pool: Pool) -> None:
    run("zfs", "snapshot", f"{pool.name}/data@legacy-doomed")
    body = {"dataset": f"{pool.name}/data@legacy-doomed"}
    reply = _post(operator_agent, pki, "admin-1", "/zfs/destroy", body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["message"] == f"Destroyed {pool.name}/data@legacy-doomed"
    assert f"{pool.name}/data@legacy-doomed" not in pool.datasets("snapshot")


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "field"),
    [
        pytest.param(
            "/zfs/snapshot",
            {"dataset": "tank; rm -rf /", "snapname": "s"},
            400,
            "invalid_characters",
            "dataset",
            id="hostile-dataset",
        ),
        pytest.param(
            "/zfs/snapshot",
            {"dataset": "{pool}/data", "snapname": "$(id)"},
            400,
            "invalid_name",
            "snapname",
            id="hostile-snapname",
        ),
        pytest.param(
            "/zfs/snapshot",
            {"dataset": "{pool}/data"},
            400,
            "invalid_type",
            "snapname",
            id="missing-snapname",
        ),
        pytest.param(
            "/zfs/snapshot",
            {"dataset": 7, "snapname": "s"},
            400,
            "invalid_type",
            "dataset",
            id="dataset-not-a-string",
        ),
        pytest.param(
            "/zfs/list", {"type": "bookmark"}, 400, "invalid_argument", "type", id="bad-type"
        ),
        pytest.param(
            "/zfs/list", {"kind": "exec"}, 400, "unknown_field", "kind", id="host-op-field"
        ),
        pytest.param(
            "/zfs/destroy",
            {"dataset": "{pool}/data@s", "approval_token": "ABCDEFGHJKMNPQRS"},
            400,
            "approval_token_not_accepted",
            "approval_token",
            id="requester-token",
        ),
        pytest.param(
            "/zfs/destroy", {"dataset": "{pool}"}, 400, "pool_root", "dataset", id="pool-root"
        ),
        pytest.param("/zfs/list", ["tank"], 400, "invalid_body", "body", id="not-an-object"),
    ],
)
def test_bad_bodies_are_refused_audited_and_change_nothing(
    operator_agent: RunningAgent,
    pki: Pki,
    pool: Pool,
    path: str,
    body: Any,
    status: int,
    code: str,
    field: str,
) -> None:
    if isinstance(body, dict):
        body = {k: v.format(pool=pool.name) if isinstance(v, str) else v for k, v in body.items()}
    before = pool.datasets()
    reply = _post(operator_agent, pki, "admin-1", path, body)
    assert reply.status_code == status, reply.text
    answer = reply.json()
    # The predecessor's error shape, our code and field beside it.
    assert (answer["success"], answer["code"], answer["field"]) == (False, code, field)
    assert isinstance(answer["error"], str) and answer["error"]
    assert pool.datasets() == before
    (record,) = audit_records(operator_agent.config.audit.log_path)
    assert (record["event"], record["code"]) == ("rejected", code)
