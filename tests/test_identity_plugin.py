"""[approval] identity_plugin: a real command and a loopback HTTP server must also say yes
before an approval counts, on the admin and Signal channels; anything but a clear yes
refuses the approval (fail closed), audited with the plugin's reason."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

from host_agent.approvals.signal import SIGNATURE_HEADER, sign
from tests.approval_flow import destroy, post, status, token_sent
from tests.signal_bridge import BRIDGE_NUMBER, SignalBridge, envelope, jsonrpc_receive
from tests.support import (
    Pki,
    RunningAgent,
    audit_records,
    client,
    config_text,
    reachable_directory,
    running_agent,
    write_config,
)

SNAPSHOT = "tank/data@old"
SECRET = "s" * 40
APPROVER = "+15555550001"
YES = '{"allowed": true, "reason": "on call"}'


class Plugin(Protocol):
    spec: str

    def answer(self, status: int, body: str) -> None: ...

    def questions(self) -> list[dict[str, Any]]: ...


class CommandPlugin:
    """A real program: records its stdin, then prints the body and exits 0 for HTTP 200,
    else 1 (a failing plugin)."""

    def __init__(self, directory: Path) -> None:
        self._spool = directory / "spool"
        self._spool.mkdir()
        self._spool.chmod(0o1777)  # the runner starts it as the unprivileged account
        self._script = directory / "answer.sh"
        program = directory / "plugin"
        program.write_text(f'#!/bin/sh\ncat > "$(mktemp -p {self._spool})"\n. {self._script}\n')
        program.chmod(0o755)
        self.spec = f"command:{program}"
        self.answer(200, YES)

    def answer(self, status: int, body: str) -> None:
        code = 0 if status == 200 else 1
        self._script.write_text(f"cat <<'EOF'\n{body}\nEOF\nexit {code}\n")
        self._script.chmod(0o644)

    def script(self, text: str) -> None:
        self._script.write_text(text)

    def questions(self) -> list[dict[str, Any]]:
        files = sorted(self._spool.iterdir(), key=lambda path: path.stat().st_mtime_ns)
        return [json.loads(path.read_text()) for path in files]


class UrlPlugin:
    """A loopback HTTP endpoint answering what the test sets."""

    def __init__(self) -> None:
        plugin = self
        self._asked: list[dict[str, Any]] = []
        self._status, self._body = 200, YES

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                plugin._asked.append(json.loads(body))
                reply = plugin._body.encode()
                self.send_response(plugin._status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.spec = f"http://127.0.0.1:{self._server.server_address[1]}/validate"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def answer(self, status: int, body: str) -> None:
        self._status, self._body = status, body

    def questions(self) -> list[dict[str, Any]]:
        return list(self._asked)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def workdir() -> Iterator[Path]:
    """World-readable, unlike pytest's tmp_path: the unprivileged account runs the plugin."""
    with reachable_directory("ha-plugin-") as directory:
        yield directory


@pytest.fixture(params=["command", "url"])
def plugin(request: pytest.FixtureRequest, workdir: Path) -> Iterator[Plugin]:
    if request.param == "command":
        yield CommandPlugin(workdir)
        return
    served = UrlPlugin()
    try:
        yield served
    finally:
        served.close()


def agent_with(
    plugin: Plugin, pki: Pki, tmp_path: Path, bridge: SignalBridge
) -> AbstractContextManager[RunningAgent]:
    approval = "\n".join(
        (
            f'signal_url = "{bridge.url}"',
            f'signal_number = "{BRIDGE_NUMBER}"',
            f'webhook_secret = "{SECRET}"',
            'bridge_cn = "stranger"',
            f'identity_plugin = "{plugin.spec}"',
        )
    )
    config = write_config(tmp_path / "agent.toml", config_text(pki, tmp_path, approval=approval))
    return running_agent(config)


@pytest.fixture
def live(plugin: Plugin, pki: Pki, tmp_path: Path, bridge: SignalBridge) -> Iterator[RunningAgent]:
    with agent_with(plugin, pki, tmp_path, bridge) as agent:
        yield agent


def ask(live: RunningAgent, pki: Pki) -> str:
    reply = post(live, pki, "librarian-1", "/host/op", destroy(SNAPSHOT))
    assert reply.status_code == 202, reply.text
    return str(reply.json()["approval_id"])


def approve(live: RunningAgent, pki: Pki, bridge: SignalBridge, **extra: str) -> httpx.Response:
    return post(live, pki, "admin-1", "/approve", {"token": token_sent(bridge), **extra})


def refusals(tmp_path: Path) -> list[dict[str, Any]]:
    records = audit_records(tmp_path / "audit.jsonl")
    return [record for record in records if record["event"] == "approval_refused"]


def test_the_plugin_is_asked_and_its_yes_lets_the_approval_count(
    live: RunningAgent, pki: Pki, bridge: SignalBridge, plugin: Plugin, tmp_path: Path
) -> None:
    approval_id = ask(live, pki)
    approved = approve(live, pki, bridge)
    assert approved.status_code == 200, approved.text
    assert status(live, pki, approval_id) == "approved"
    assert plugin.questions() == [
        {
            "approver_cn": "admin-1",
            "approval_id": approval_id,
            "operation": "zfs-destroy",
            "target": SNAPSHOT,
            "channel": "admin",
        }
    ]
    [granted] = [
        r for r in audit_records(tmp_path / "audit.jsonl") if r["event"] == "approval_granted"
    ]
    assert granted["identity_plugin"] == "allowed"


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        pytest.param((200, '{"allowed": false, "reason": "not on call"}'), "not on call", id="no"),
        pytest.param((200, '{"allowed": "yes"}'), 'no boolean "allowed"', id="not-boolean"),
        pytest.param((200, "allowed"), "not JSON", id="not-json"),
        pytest.param((200, "[true]"), 'no boolean "allowed"', id="not-an-object"),
        pytest.param((500, YES), "", id="failed"),
    ],
)
def test_anything_but_a_clear_yes_refuses_the_approval_and_is_audited(
    live: RunningAgent,
    pki: Pki,
    bridge: SignalBridge,
    plugin: Plugin,
    tmp_path: Path,
    answer: tuple[int, str],
    reason: str,
) -> None:
    approval_id = ask(live, pki)
    plugin.answer(*answer)
    refused = approve(live, pki, bridge)
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "identity_plugin_denied"
    assert status(live, pki, approval_id) == "pending"
    [record] = refusals(tmp_path)
    assert (record["code"], record["approval_id"]) == ("identity_plugin_denied", approval_id)
    assert reason in record["plugin_reason"]
    if answer[0] != 200:
        assert record["plugin_reason"] in (
            "plugin exited with status 1",
            "plugin answered HTTP 500",
        )


def test_a_plugin_that_hangs_is_a_no_within_its_time_limit(
    workdir: Path, pki: Pki, tmp_path: Path, bridge: SignalBridge
) -> None:
    plugin = CommandPlugin(workdir)
    plugin.script("sleep 30\n")
    with agent_with(plugin, pki, tmp_path, bridge) as live:
        approval_id = ask(live, pki)
        started = time.monotonic()
        refused = approve(live, pki, bridge)
        assert time.monotonic() - started < 15
        assert refused.json()["error"]["code"] == "identity_plugin_denied"
        assert status(live, pki, approval_id) == "pending"
    [record] = refusals(tmp_path)
    assert "timed out after 5s" in record["plugin_reason"]


def test_a_deny_never_needs_the_plugin(
    live: RunningAgent, pki: Pki, bridge: SignalBridge, plugin: Plugin
) -> None:
    approval_id = ask(live, pki)
    plugin.answer(200, '{"allowed": false}')
    denied = approve(live, pki, bridge, decision="deny")
    assert denied.status_code == 200, denied.text
    assert status(live, pki, approval_id) == "denied"
    assert plugin.questions() == []


def test_a_signal_approver_is_asked_about_by_number(
    live: RunningAgent, pki: Pki, bridge: SignalBridge, plugin: Plugin
) -> None:
    approval_id = ask(live, pki)
    plugin.answer(200, '{"allowed": false, "reason": "phone reported lost"}')
    body = json.dumps(
        jsonrpc_receive(
            envelope(APPROVER, f"APPROVE {token_sent(bridge)}", int(time.time() * 1000)),
            BRIDGE_NUMBER,
        )
    ).encode()
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(SECRET.encode(), body)}
    with client(live, pki, "stranger") as http:
        answer = http.post("/webhook/signal", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"][0]["code"] == "identity_plugin_denied"
    assert status(live, pki, approval_id) == "pending"
    [question] = plugin.questions()
    assert (question["approver_cn"], question["channel"]) == (APPROVER, "signal")


def test_an_admin_naming_the_approval_by_id_is_asked_about_too(
    live: RunningAgent, pki: Pki, plugin: Plugin, tmp_path: Path
) -> None:
    approval_id = ask(live, pki)
    plugin.answer(200, '{"allowed": false, "reason": "not on call"}')
    refused = post(live, pki, "admin-1", "/approve", {"approval_id": approval_id})
    assert (refused.status_code, refused.json()["error"]["code"]) == (
        403,
        "identity_plugin_denied",
    )
    assert status(live, pki, approval_id) == "pending"
    [record] = refusals(tmp_path)
    assert (record["named_by"], record["plugin_reason"]) == ("approval_id", "not on call")
    assert plugin.questions()[-1]["approval_id"] == approval_id
