"""The audit log's filesystem runs full under a real agent: every operation is refused with
503 and none runs (no snapshot appears on the pool), and once space returns the agent
serves again with the chain intact, without a restart."""

from __future__ import annotations

import errno
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from host_agent.audit import verify
from tests.support import Pki, RunningAgent, audit_records, client, running_agent
from tests.system import Pool, System, run

pytestmark = pytest.mark.root

REFUSED_REQUESTS = 40


@contextmanager
def small_filesystem(directory: Path, size: str = "512k") -> Iterator[Path]:
    """A tmpfs of its own, so filling it fills nothing else."""
    directory.mkdir()
    run("mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory))
    try:
        yield directory
    finally:
        run("umount", "-l", str(directory), check=False)


def fill(directory: Path) -> Path:
    """Write until the filesystem refuses another byte."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    with filler.open("ab", buffering=0) as out:  # the last, partial block too
        try:
            while True:
                out.write(b"\0")
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def snapshot(agent: RunningAgent, pki: Pki, dataset: str, name: str) -> tuple[int, str]:
    body = {"kind": "zfs", "resource": dataset, "args": ["snapshot", name]}
    with client(agent, pki, "librarian-1") as http:
        reply = http.post("/host/op", json=body)
    return reply.status_code, reply.json()["error"]["code"] if reply.status_code != 200 else ""


def settle(agent: RunningAgent, pki: Pki, dataset: str) -> list[tuple[int, str]]:
    """Requests until the log is really full. The log's own last page still has room when
    the filler has taken every free one, so a few records fit; one whose decision fits but
    whose result does not ran and says so (503 result_unaudited). What ran is on the pool
    and its decision in the log: checked with the rest at the end."""
    answers: list[tuple[int, str]] = []
    while answers[-3:] != [(503, "audit_unavailable")] * 3:
        assert len(answers) < 100, answers
        answers.append(snapshot(agent, pki, dataset, f"full-settle-{secrets.token_hex(3)}"))
    assert set(answers) <= {(200, ""), (503, "result_unaudited"), (503, "audit_unavailable")}
    return answers


def test_a_full_audit_filesystem_refuses_everything_then_recovers(
    system: System, pool: Pool, pki: Pki, tmp_path: Path
) -> None:
    dataset = f"{pool.name}/data"
    with small_filesystem(tmp_path / "audit") as directory:
        log = directory / "audit.jsonl"
        config = system.agent_config(pki, tmp_path, audit_log=log)
        with running_agent(config) as agent:
            assert snapshot(agent, pki, dataset, f"full-before-{secrets.token_hex(3)}")[0] == 200
            filler = fill(directory)
            transition = settle(agent, pki, dataset)

            names = [f"full-{n}-{secrets.token_hex(3)}" for n in range(REFUSED_REQUESTS)]
            answers = [snapshot(agent, pki, dataset, name) for name in names]
            assert set(answers) == {(503, "audit_unavailable")}
            made = set(pool.datasets("snapshot"))
            assert not made & {f"{dataset}@{name}" for name in names}  # none of them ran
            with client(agent, pki, "librarian-1") as http:
                health = http.get("/health").json()
            assert health["status"] == "degraded" and "audit_unwritable" in health["problems"]
            # Why (and the log's path) is for admins.
            assert health["audit"] == {"state": "unwritable"}
            with client(agent, pki, "admin-1") as http:
                assert "No space left on device" in http.get("/health").json()["audit"]["error"]

            filler.unlink()
            after = f"full-after-{secrets.token_hex(3)}"
            assert snapshot(agent, pki, dataset, after) == (200, "")
            assert f"{dataset}@{after}" in pool.datasets("snapshot")
            with client(agent, pki, "librarian-1") as http:
                assert http.get("/health").json()["audit"] == {"state": "ok"}
        checked = verify([log])
        assert checked.ok, checked.error
        records = audit_records(log)
    # Whatever ran while the space ran out has its decision on record.
    decided = {r["args"][1] for r in records if r["event"] == "decision"}
    ran = {name.split("@")[1] for name in pool.datasets("snapshot") if "@full-" in name}
    assert ran <= decided
    print(
        f"\naudit filesystem full: {len(transition)} requests while the last page filled "
        f"({transition.count((503, 'result_unaudited'))} ran unaudited, each with its "
        f"decision on record); then {REFUSED_REQUESTS} operations refused with 503 "
        f"audit_unavailable, 0 ran; recovered without a restart; {checked.records} records verify"
    )
