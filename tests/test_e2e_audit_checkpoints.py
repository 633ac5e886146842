"""Checkpoints on a real agent: `audit checkpoint-init`, a checkpoint a second shipped
to a real rsyslog over TLS, the collector stopped (the backlog shows in /health and
the metrics, and with fail_closed_after_seconds mutating operations are held while
reads go on), the collector back (everything flows again), and the log checked
against what the collector kept."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from host_agent.audit.checkpoint import Verifier, open_note
from host_agent.cli import main
from host_agent.config import Config
from tests.approval_flow import get, post, wait_for
from tests.postgres import Postgres, fleet_database
from tests.signal_bridge import BRIDGE_NUMBER, SignalBridge
from tests.support import Pki, client, config_text, running_agent, write_config
from tests.syslog_collector import Collector, running_collector
from tests.system import Pool, System, run

LIST = {"kind": "zfs", "resource": "", "args": ["list"]}


def checkpoint_config(system: System, pki: Pki, tmp_path: Path, collector: Collector) -> Config:
    witness = f'syslog = "{collector.address}"\nsyslog_ca = "{pki.ca}"\n'
    witness += "fail_closed_after_seconds = 2"
    return checkpointing(system, pki, tmp_path, witness)


def checkpointing(system: System, pki: Pki, tmp_path: Path, witness: str) -> Config:
    """A test agent taking a checkpoint every second, shipped to `witness` (its keys)."""
    return system.agent_config(
        pki,
        tmp_path,
        audit=f"""
[audit.checkpoints]
key_file = "{tmp_path / "checkpoint.key"}"
name = "host-agent/test-host/audit"
every_seconds = 1
{witness}
""",
    )


def checkpoint_init(config: Config) -> Verifier:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["audit", "checkpoint-init", "--config", str(config.source)]) == 0
    [key] = re.findall(r"^    (\S+\+[0-9a-f]{8}\+\S+)$", printed.getvalue(), re.M)
    return Verifier.parse(key)


def behind_seconds(metrics: str) -> float:
    pattern = r'^host_agent_audit_checkpoint_behind_seconds\{witness="syslog"\} (\S+)$'
    return float(re.findall(pattern, metrics, re.M)[0])


@pytest.mark.root
def test_checkpoints_reach_rsyslog_and_a_stopped_collector_holds_mutations(
    system: System, pool: Pool, pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snapshot = f"{pool.name}/data@held"
    snap = {"kind": "zfs", "resource": f"{pool.name}/data", "args": ["snapshot", "held"]}
    with running_collector(pki, tmp_path / "rsyslog") as collector:
        config = checkpoint_config(system, pki, tmp_path, collector)
        verifier = checkpoint_init(config)
        try:
            with running_agent(config) as agent:
                assert post(agent, pki, "librarian-1", "/host/op", LIST).status_code == 200
                wait_for(lambda: collector.messages(), timeout=15)
                health = get(agent, pki, "admin-1", "/health").json()
                assert health["audit_checkpoints"]["state"] == "ok", health

                collector.stop()
                time.sleep(3.5)  # past fail_closed_after_seconds, checkpoints unshipped
                held = post(agent, pki, "librarian-1", "/host/op", snap)
                assert held.status_code == 503, held.text
                assert held.json()["error"]["code"] == "audit_witness_behind"
                assert post(agent, pki, "librarian-1", "/host/op", LIST).status_code == 200
                health = get(agent, pki, "admin-1", "/health").json()
                assert "audit_checkpoints_behind" in health["problems"]
                assert health["audit_checkpoints"]["witnesses"]["syslog"]["behind_seconds"] > 2
                assert behind_seconds(get(agent, pki, "admin-1", "/metrics").text) > 2

                collector.start()
                with client(agent, pki, "admin-1") as admin:  # one connection, polled

                    def caught_up() -> bool:
                        time.sleep(0.2)
                        health = admin.get("/health").json()
                        return bool(health["audit_checkpoints"]["state"] == "ok")

                    wait_for(caught_up, timeout=60)
                assert snapshot not in pool.datasets("snapshot")  # nothing ran while held
                assert post(agent, pki, "librarian-1", "/host/op", snap).status_code == 200
        finally:
            run("zfs", "destroy", snapshot, check=False)
        log = config.audit.log_path
        records = [json.loads(line) for line in log.read_text().splitlines()]
        assert any(r["event"] == "held" and r["code"] == "audit_witness_behind" for r in records)
        assert records[-1]["event"] == "audit_checkpoint"  # the last one, at shutdown
        kept = tmp_path / "collected.log"
        kept.write_text(collector.received.read_text())
    code = main(
        ["audit", "verify", "--checkpoints", str(kept), "--checkpoint-key", str(verifier), str(log)]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert re.search(r"([1-9]\d*) of \1 checkpoints checked", out), out


@pytest.mark.root
def test_the_approvers_get_the_latest_checkpoint_as_a_signal_digest(
    system: System, pki: Pki, tmp_path: Path, bridge: SignalBridge
) -> None:
    """A witness on the approvers' phones: the signed note itself, which their copy
    lets them check against the host's log later."""
    config = system.agent_config(
        pki,
        tmp_path,
        approval=f'signal_url = "{bridge.url}"\nsignal_number = "{BRIDGE_NUMBER}"',
        audit=f"""
[audit.checkpoints]
key_file = "{tmp_path / "checkpoint.key"}"
name = "host-agent/test-host/audit"
every_seconds = 1
signal_digest_seconds = 1
""",
    )
    verifier = checkpoint_init(config)
    with running_agent(config) as agent:
        assert post(agent, pki, "librarian-1", "/host/op", LIST).status_code == 200
        sent = wait_for(
            lambda: [m for m in bridge.sent if "audit checkpoint of" in str(m["message"])],
            timeout=15,
        )
    message = str(sent[0]["message"])
    assert sent[0]["recipients"] == ["+15555550001", "+15555550002"]
    note = message[message.index("host-agent/test-host/audit\n") :]
    checkpoint = open_note(note, verifier)
    assert f"{checkpoint.size} records" in message


@pytest.mark.root
def test_the_fleet_database_takes_each_checkpoint_and_gives_none_back(
    system: System, pki: Pki, tmp_path: Path, postgres: Postgres, capsys: pytest.CaptureFixture[str]
) -> None:
    """The agent's role INSERTs its checkpoints into the fleet's database; the operator
    reads them back (as the owner) to check the log."""
    database = fleet_database(postgres)
    secret = tmp_path / "db-password"
    secret.write_text(database.password)
    witness = f'postgres_url = "{database.url}"\npostgres_password_file = "{secret}"'
    config = checkpointing(system, pki, tmp_path, witness)
    verifier = checkpoint_init(config)
    count = "SELECT count(*) FROM audit_checkpoints"
    with running_agent(config) as agent:
        assert post(agent, pki, "librarian-1", "/host/op", LIST).status_code == 200
        wait_for(lambda: int(postgres.psql(count, database=database.name)) >= 2, timeout=15)
    owner = postgres.url(database=database.name)
    log = config.audit.log_path
    code = main(
        ["audit", "verify", "--checkpoints", owner, "--checkpoint-key", str(verifier), str(log)]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert re.search(r"([2-9]|\d\d+) of \1 checkpoints checked", out), out


def test_seal_init_shows_the_key_as_a_qr_code_on_a_terminal(pki: Pki, tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    write_config(
        config, config_text(pki, tmp_path, audit=f'seal_key_file = "{tmp_path / "seal.key"}"')
    )
    primary, secondary = pty.openpty()
    with subprocess.Popen(
        [sys.executable, "-m", "host_agent", "audit", "seal-init", "--config", str(config)],
        stdout=secondary,
        stderr=subprocess.DEVNULL,
    ) as process:
        os.close(secondary)
        shown = b""
        with contextlib.suppress(OSError):  # EIO once the terminal's last writer is gone
            while chunk := os.read(primary, 65536):
                shown += chunk
        assert process.wait(30) == 0
    os.close(primary)
    text = shown.decode()
    assert re.search(r"^    [0-9a-f-]{71}/[0-9a-f]+-[0-9a-f]+\r?$", text, re.M), text
    assert text.count("\u2588") > 50  # the QR code's full blocks
