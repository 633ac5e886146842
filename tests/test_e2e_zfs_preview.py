"""Approval previews end to end, as root: a zfs destroy or rollback over mTLS waits for a
human, and the message the Signal stand-in receives says what it would remove, found by the
wrapper's read-only `tree` through real sudo on a real zfs-fuse pool, which it leaves as is."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from host_agent.adapters.zfs import parse_tree
from host_agent.config import Config
from tests.approval_flow import post, wait_for
from tests.hostile import HOSTILE_NAMES
from tests.signal_bridge import BRIDGE_NUMBER, SignalBridge
from tests.support import (
    Pki,
    RunningAgent,
    audit_records,
    client,
    config_text,
    running_agent,
    write_config,
)
from tests.system import Pool, System, install_standin, run

pytestmark = pytest.mark.root

# The librarian may ask for destroy and rollback, recursive too, but only with a human.
PROFILES = """
[[agents]]
cn_pattern = "librarian-*"
agent_type = "librarian"
unix_user = "librarian"
autonomy = "supervised"
allowed_operations = ["zfs-list"]
requires_approval_for = ["zfs-destroy", "zfs-rollback"]
allow_recursive = true
"""
REFUSED_ROLLBACK = (
    "nothing: zfs refuses without recursive, because newer snapshots exist "
    "(a recursive rollback destroys them):"
)


def _config_text(system: System, pki: Pki, tmp_path: Path, bridge: SignalBridge, **kw: Any) -> str:
    return config_text(
        pki,
        tmp_path,
        service_user=system.user,
        wrapper_dir=system.wrappers.directory,
        profiles=PROFILES,
        approval=f'signal_url = "{bridge.url}"\nsignal_number = "{BRIDGE_NUMBER}"',
        **kw,
    )


def _configured(system: System, tmp_path: Path, name: str, text: str) -> Config:
    config = write_config(tmp_path / f"{name}.toml", text)
    system.wrappers.configure(config)
    return config


@pytest.fixture
def config(system: System, pool: Pool, pki: Pki, tmp_path: Path, bridge: SignalBridge) -> Config:
    return _configured(system, tmp_path, "agent", _config_text(system, pki, tmp_path, bridge))


@pytest.fixture
def live(config: Config) -> Iterator[RunningAgent]:
    with running_agent(config) as agent:
        yield agent


@pytest.fixture
def dataset(pool: Pool) -> Iterator[str]:
    """A fresh dataset for one test, removed with everything under it afterwards."""
    name = f"{pool.name}/preview{time.monotonic_ns()}"
    run("zfs", "create", name)
    yield name
    run("zfs", "destroy", "-r", name, check=False)


def ask(agent: RunningAgent, pki: Pki, resource: str, *args: str) -> str:
    """Request the operation; it must wait for a human. Returns its approval id."""
    body = {"kind": "zfs", "resource": resource, "args": list(args)}
    reply = post(agent, pki, "librarian-1", "/host/op", body)
    assert reply.status_code == 202, reply.text
    return str(reply.json()["approval_id"])


def affected(bridge: SignalBridge) -> list[str]:
    """The "Would affect:" lines of the one message the approvers were sent."""
    (sent,) = wait_for(lambda: bridge.sent)
    section = sent["message"].split("\n\nWould affect:\n", 1)[1].split("\n\n", 1)[0]
    return [line.removeprefix("  ") for line in section.splitlines()]


def preview_records(config: Config) -> list[dict[str, Any]]:
    return [r for r in audit_records(config.audit.log_path) if r["event"] == "preview"]


def snapshots(dataset: str, *names: str) -> None:
    for name in names:
        run("zfs", "snapshot", f"{dataset}@{name}")


def test_destroying_a_snapshot_previews_only_that_snapshot_and_runs_it_once(
    live: RunningAgent, pki: Pki, pool: Pool, bridge: SignalBridge, config: Config, dataset: str
) -> None:
    run("zfs", "create", f"{dataset}/child")
    snapshots(dataset, "a", "b")
    snapshots(f"{dataset}/child", "b")
    before = pool.datasets()

    approval_id = ask(live, pki, f"{dataset}@b", "destroy")
    assert affected(bridge) == [f"{dataset}@b"]
    assert pool.datasets() == before

    events = [r["event"] for r in audit_records(config.audit.log_path)]
    assert events[:3] == ["decision", "preview", "approval_created"]
    decision, preview, created = audit_records(config.audit.log_path)[:3]
    assert preview["request_id"] == decision["request_id"] == created["request_id"]
    assert preview["operation"] == "zfs-destroy"
    assert preview["argv"][:2] == ["/usr/bin/sudo", "-n"]
    wrapper = str(config.runner.wrapper_dir / "host-agent-zfs")
    assert preview["argv"][-3:] == [wrapper, "tree", dataset]
    assert (preview["outcome"], preview["exit_code"], preview["code"]) == ("ok", 0, None)

    token = bridge.sent[0]["message"].rsplit("APPROVE ", 1)[1].split()[0]
    assert post(live, pki, "admin-1", "/approve", {"token": token}).status_code == 200
    resubmit = {"kind": "zfs", "resource": f"{dataset}@b", "args": ["destroy"]}
    done = post(live, pki, "librarian-1", "/host/op", {**resubmit, "approval_id": approval_id})
    assert done.status_code == 200, done.text
    assert set(before) - set(pool.datasets()) == {f"{dataset}@b"}
    assert len(preview_records(config)) == 1  # a resubmission is not previewed again


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(
            ("destroy", "recursive"),
            [
                "{d}",
                "{d}@s1",
                "{d}@s2",
                "{d}/c1",
                "{d}/c1@s1",
                "{d}/c1/g",
                "{d}/c1/g@s1",
                "{d}/c2",
                "{d}/c2@s1",
            ],
            id="recursive-everything-below",
        ),
        pytest.param(
            ("destroy",),
            [
                "nothing: zfs refuses to destroy {d} without recursive; "
                "it has 3 datasets and 5 snapshots under it"
            ],
            id="plain-refused",
        ),
    ],
)
def test_destroying_a_dataset_with_children_and_snapshots(
    live: RunningAgent,
    pki: Pki,
    pool: Pool,
    bridge: SignalBridge,
    dataset: str,
    args: tuple[str, ...],
    expected: list[str],
) -> None:
    for child in ("c1", "c1/g", "c2"):
        run("zfs", "create", f"{dataset}/{child}")
    run("zfs", "snapshot", "-r", f"{dataset}@s1")
    snapshots(dataset, "s2")
    before = pool.datasets()

    ask(live, pki, dataset, *args)
    assert affected(bridge) == [line.format(d=dataset) for line in expected]
    assert pool.datasets() == before


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(("rollback",), [REFUSED_ROLLBACK, "{d}@c", "{d}@b"], id="plain-refused"),
        pytest.param(
            ("rollback", "recursive"),
            [
                "{d}: every change since {d}@a is discarded",
                "and the newer snapshots are destroyed:",
                "{d}@c",
                "{d}@b",
            ],
            id="recursive-destroys-newer",
        ),
    ],
)
def test_rollback_names_the_newer_snapshots(
    live: RunningAgent,
    pki: Pki,
    pool: Pool,
    bridge: SignalBridge,
    dataset: str,
    args: tuple[str, ...],
    expected: list[str],
) -> None:
    """Newer by creation (c before b), and only the dataset's own: not its child's."""
    snapshots(dataset, "zero", "a", "c")
    run("zfs", "create", f"{dataset}/child")
    snapshots(f"{dataset}/child", "late")
    snapshots(dataset, "b")
    before = pool.datasets()

    ask(live, pki, f"{dataset}@a", *args)
    assert affected(bridge) == [line.format(d=dataset) for line in expected]
    assert pool.datasets() == before


def test_a_failing_preview_still_asks_and_says_unavailable(
    live: RunningAgent, pki: Pki, pool: Pool, bridge: SignalBridge, config: Config
) -> None:
    missing = f"{pool.name}/missing{time.monotonic_ns()}"
    approval_id = ask(live, pki, missing, "destroy")
    assert affected(bridge) == ["preview unavailable: dataset or snapshot does not exist"]
    with client(live, pki, "librarian-1") as http:
        assert http.get(f"/approvals/{approval_id}").json()["status"] == "pending"
    (preview,) = preview_records(config)
    assert (preview["outcome"], preview["code"]) == ("failed", "not_found")
    assert preview["exit_code"] != 0 and "does not exist" in preview["stderr_tail"]


def test_a_preview_that_times_out_is_killed_and_the_approval_still_asked(
    system: System, pool: Pool, pki: Pki, tmp_path: Path, bridge: SignalBridge, dataset: str
) -> None:
    slow = tmp_path / "zfs-slow"
    # A zfs that hangs; it leaves its pid in its state directory (see install_standin).
    slow.write_text('#!/bin/sh\necho $$ > "$0.state/pid"\nexec sleep 60\n')
    standin = install_standin(system, slow)
    text = _config_text(system, pki, tmp_path, bridge, extra=f'[binaries]\nzfs = "{standin}"\n')
    assert "timeout_seconds = 30" in text
    text = text.replace("timeout_seconds = 30", "timeout_seconds = 1")
    config = _configured(system, tmp_path, "slow", text)
    snapshots(dataset, "kept")
    started = time.monotonic()
    with running_agent(config) as agent:
        approval_id = ask(agent, pki, f"{dataset}@kept", "destroy")
        assert time.monotonic() - started < 20
        assert affected(bridge) == [
            "preview unavailable: operation timed out after 1s and was killed as root (SIGTERM)"
        ]
        with client(agent, pki, "librarian-1") as http:
            assert http.get(f"/approvals/{approval_id}").json()["status"] == "pending"
    (preview,) = preview_records(config)
    assert preview["outcome"] == "operation_timeout"
    # The wrapper's root-side timeout ended it: coreutils timeout's status after SIGTERM.
    assert (preview["killed_as_root"], preview["exit_code"]) == (True, 124)
    assert f"{dataset}@kept" in pool.datasets("snapshot")
    pid = Path(f"{standin}.state/pid").read_text().strip()
    wait_for(lambda: not running(pid))  # killed, not left behind


def running(pid: str) -> bool:
    """Whether the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# --- the wrapper's `tree` on its own -------------------------------------------------


def tree(system: System, *argv: str) -> Any:
    wrapper = str(system.wrappers.directory / "host-agent-zfs")
    return run("sudo", "-n", wrapper, "tree", *argv, user=system.user, check=False)


# These take `config` so the wrappers' file names the real zfs again.


def test_tree_lists_names_types_and_creation_order_and_changes_nothing(
    system: System, pool: Pool, config: Config, dataset: str
) -> None:
    run("zfs", "create", f"{dataset}/child")
    snapshots(dataset, "b", "a")
    before = pool.datasets()
    done = tree(system, dataset)
    assert done.returncode == 0, done.stderr
    rows = [line.split("\t") for line in done.stdout.splitlines()]
    # Exact numbers: zfs list would print a busy pool's txgs as 4.68K.
    assert all(value.isdigit() for _, prop, value in rows if prop == "createtxg")
    entries = parse_tree(done.stdout)
    assert [(entry.name, entry.type) for entry in entries] == [
        (dataset, "filesystem"),
        (f"{dataset}@b", "snapshot"),
        (f"{dataset}@a", "snapshot"),
        (f"{dataset}/child", "filesystem"),
    ]
    assert entries[1].createtxg < entries[2].createtxg
    assert len(rows) == 2 * len(entries)
    assert pool.datasets() == before


# argv cannot carry NUL at all: execve refuses it before any wrapper runs.
ARGV_HOSTILE_NAMES = [case for case in HOSTILE_NAMES if "\x00" not in str(case.values[0])]


@pytest.mark.parametrize("value", ARGV_HOSTILE_NAMES)
def test_tree_rejects_hostile_names_on_its_own(
    system: System, pool: Pool, config: Config, value: str
) -> None:
    done = tree(system, value)
    assert done.returncode == 64, (done.stdout, done.stderr)
    assert "refused" in done.stderr and done.stdout == ""


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param((), id="no-dataset"),
        pytest.param(("{pool}/data@s",), id="snapshot"),
        pytest.param(("{pool}/data", "{pool}"), id="two-datasets"),
        pytest.param(("-r", "{pool}"), id="option-first"),
        pytest.param(("{pool}/data", "-o"), id="option-after"),
    ],
)
def test_tree_refuses_anything_but_one_dataset(
    system: System, pool: Pool, config: Config, argv: tuple[str, ...]
) -> None:
    done = tree(system, *(part.format(pool=pool.name) for part in argv))
    assert done.returncode == 64, (done.stdout, done.stderr)
    assert done.stdout == ""
