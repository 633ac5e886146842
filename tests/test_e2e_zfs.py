"""End to end as root: mTLS client → agent → real sudo as an unprivileged account →
the zfs wrapper → a real zfs-fuse pool. Also the runner's limits through real sudo."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from host_agent.audit import verify
from host_agent.config import Config
from host_agent.errors import RunnerError
from host_agent.operations import Operation
from host_agent.runner import Runner
from tests.hostile import HOSTILE_NAMES
from tests.support import (
    Pki,
    RunningAgent,
    audit_records,
    client,
    client_context,
    config_text,
    listening_port,
    running_agent,
    serve_process,
)
from tests.support import write_config as write
from tests.system import PROBE, Pool, System, run

pytestmark = pytest.mark.root


@pytest.fixture
def e2e_config(system: System, pool: Pool, pki: Pki, tmp_path: Path) -> Config:
    config = write(
        tmp_path / "agent.toml",
        config_text(pki, tmp_path, service_user=system.user, wrapper_dir=system.wrappers.directory),
    )
    system.wrappers.configure(config)
    return config


@pytest.fixture
def live(e2e_config: Config) -> Iterator[RunningAgent]:
    with running_agent(e2e_config) as agent:
        yield agent


def test_snapshot_is_created_on_the_pool_and_audited(
    live: RunningAgent, pki: Pki, pool: Pool, e2e_config: Config
) -> None:
    dataset = f"{pool.name}/data"
    with client(live, pki, "librarian-1") as http:
        reply = http.post(
            "/host/op", json={"kind": "zfs", "resource": dataset, "args": ["snapshot", "e2e-1"]}
        )
    assert reply.status_code == 200, reply.text
    assert reply.json()["data"] == {"snapshot": f"{dataset}@e2e-1"}
    assert reply.json()["exit_code"] == 0
    assert f"{dataset}@e2e-1" in pool.datasets("snapshot")
    decision, result = audit_records(e2e_config.audit.log_path)
    assert (decision["event"], decision["decision"]) == ("decision", "allow")
    assert decision["argv"][-2:] == ["snapshot", f"{dataset}@e2e-1"]
    assert (result["event"], result["outcome"], result["exit_code"]) == ("result", "ok", 0)
    assert result["request_id"] == decision["request_id"]
    assert verify([e2e_config.audit.log_path]).ok


def test_list_returns_parsed_entries_filtered_by_type(
    live: RunningAgent, pki: Pki, pool: Pool
) -> None:
    run("zfs", "snapshot", f"{pool.name}/data@listed")
    with client(live, pki, "librarian-1") as http:
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
    live: RunningAgent, pki: Pki, pool: Pool, body: dict[str, object], status: int, code: str
) -> None:
    run("zfs", "snapshot", f"{pool.name}/data@twice", check=False)
    request = {"kind": "zfs", **body, "resource": str(body["resource"]).format(pool=pool.name)}
    with client(live, pki, "librarian-1") as http:
        reply = http.post("/host/op", json=request)
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["code"] == code
    assert reply.json()["result"]["exit_code"] != 0


@pytest.mark.parametrize("value", HOSTILE_NAMES)
def test_hostile_names_change_nothing(
    live: RunningAgent, pki: Pki, pool: Pool, e2e_config: Config, value: str
) -> None:
    before = pool.datasets()
    with client(live, pki, "librarian-1") as http:
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
    events = [r["event"] for r in audit_records(e2e_config.audit.log_path)]
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
    ):
        done = run("sudo", "-n", wrapper, *argv, user=user, check=False)
        assert done.returncode == 64, (argv, done.stdout, done.stderr)
        assert "refused" in done.stderr
    assert pool.datasets() == before


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(("/usr/sbin/zfs", "list"), id="zfs"),
        pytest.param(("/usr/sbin/zpool", "list"), id="zpool"),
        pytest.param(("/bin/sh", "-c", "id"), id="shell"),
        pytest.param(("/bin/bash",), id="bash"),
        pytest.param(("/usr/bin/git", "--version"), id="git"),
        pytest.param(("/bin/systemctl", "status"), id="systemctl"),
        pytest.param(("-u", "root", "/usr/bin/id"), id="other-command"),
    ],
)
def test_service_account_can_run_only_the_wrappers(system: System, argv: tuple[str, ...]) -> None:
    user = system.user
    done = run("sudo", "-n", *argv, user=user, check=False)
    assert done.returncode != 0
    assert "password is required" in done.stderr or "not allowed" in done.stderr


def test_installed_sudoers_passes_visudo(system: System) -> None:
    wrappers = system.wrappers
    assert run("visudo", "-cf", str(wrappers.sudoers)).returncode == 0
    listing = run("sudo", "-l", "-U", system.user).stdout
    assert str(wrappers.directory / "host-agent-zfs") in listing


def test_unwritable_audit_runs_nothing(
    system: System, pool: Pool, pki: Pki, tmp_path: Path
) -> None:
    user, wrappers = system.user, system.wrappers
    config = write(
        tmp_path / "full.toml",
        config_text(
            pki,
            tmp_path,
            service_user=user,
            wrapper_dir=wrappers.directory,
            audit_log=Path("/dev/full"),
        ),
    )
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
    user, wrappers = system.user, system.wrappers
    request = {"kind": "zfs", "resource": f"{pool.name}/data", "args": ["snapshot", "limit"]}

    def configured(name: str) -> Config:
        return write(
            tmp_path / f"{name}.toml",
            config_text(
                pki,
                tmp_path,
                service_user=user,
                wrapper_dir=wrappers.directory,
                audit_log=tmp_path / f"{name}.jsonl",
            ),
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


# --- the runner's limits, through real sudo and a test-only probe wrapper -----------


def _probe(runner: Runner, *argv: str) -> Operation:
    return Operation(
        kind="test",
        command=argv[0],
        resource="",
        args=argv,
        wrapper=PROBE.name,
        wrapper_argv=argv,
        mutating=False,
    )


@pytest.fixture
def runner(e2e_config: Config) -> Runner:
    return Runner(
        dataclasses.replace(e2e_config.runner, timeout_seconds=1.0, max_output_bytes=4096)
    )


def test_runner_kills_a_runaway_child(runner: Runner) -> None:
    marker = "7.31"  # an unusual sleep length to find the process by
    with pytest.raises(RunnerError) as caught:
        asyncio.run(runner.run(_probe(runner, "sleep", marker)))
    assert caught.value.timed_out and caught.value.status == 504
    assert run("pgrep", "-f", f"sleep {marker}", check=False).returncode == 1


def test_runner_caps_output_and_drains_the_rest(runner: Runner) -> None:
    result = asyncio.run(runner.run(_probe(runner, "flood", "1000000")))
    assert result.exit_code == 0
    assert result.truncated
    assert len(result.stdout) == 4096
    assert result.stderr == "done\n"


def test_runner_child_gets_a_clean_environment(
    runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LD_PRELOAD", "/tmp/evil.so")
    monkeypatch.setenv("HOST_AGENT_SECRET", "leak")
    result = asyncio.run(runner.run(_probe(runner, "env")))
    assert "LD_PRELOAD" not in result.stdout and "leak" not in result.stdout
    assert "SUDO_USER=" in result.stdout and "SUDO_UID=0" not in result.stdout
