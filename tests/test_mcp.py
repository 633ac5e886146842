"""`host-agent mcp` over real stdio: an MCP ClientSession from the mcp package drives the
process, which calls a live agent over mutual TLS. The tools are the caller's manifest plus
check_approval; answers and refusals are tool results and the process keeps serving;
approvals are followed by id, never waited on."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError

from host_agent.approvals.model import APPROVAL_ID
from host_agent.client import Client, InvalidRequest
from host_agent.client.tools import manifest_tools, request_for
from host_agent.mcp_server import CHECK_APPROVAL
from tests.approval_flow import approvals_config, post, token_sent
from tests.served import DENY_DESTROY, Served
from tests.signal_bridge import SignalBridge, running_bridge
from tests.support import (
    Pki,
    RunningAgent,
    audit_records,
    running_agent,
)
from tests.system import REPO
from tests.test_client import settings

MCP = (sys.executable, "-m", "host_agent", "mcp")


def tls_options(url: str, pki: Pki, cn: str) -> list[str]:
    cert, key = pki.client(cn)
    return ["--server", url, "--cert", str(cert), "--key", str(key), "--ca", str(pki.ca)]


def tls_environment(url: str, pki: Pki, cn: str) -> dict[str, str]:
    cert, key = pki.client(cn)
    return {
        "HOST_AGENT_SERVER": url,
        "HOST_AGENT_CERT": str(cert),
        "HOST_AGENT_KEY": str(key),
        "HOST_AGENT_CA": str(pki.ca),
    }


class McpSession:
    """A `host-agent mcp` process and an MCP ClientSession on its stdio, for plain tests.

    The session lives in an event loop on its own thread, so one process can serve a
    whole module; its stderr is kept in `errlog`. HOME is a directory of its own so no
    client config file of this machine is read.
    """

    def __init__(
        self, workdir: Path, options: list[str], env: dict[str, str] | None = None
    ) -> None:
        self.errlog = workdir / "mcp.stderr"
        self.parameters = StdioServerParameters(
            command=MCP[0],
            args=[*MCP[1:], *options],
            env={"HOME": str(workdir), **(env or {})},
            cwd=REPO,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._session: ClientSession | None = None
        self.initialized: types.InitializeResult | None = None
        self._ready: Future[None] = Future()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            with self.errlog.open("w") as errlog:
                async with (
                    stdio_client(self.parameters, errlog=errlog) as (read, write),
                    ClientSession(read, write) as session,
                ):
                    self.initialized = await session.initialize()
                    self._session = session
                    self._ready.set_result(None)
                    await self._stop.wait()
        except BaseException as exc:
            if self._ready.done():
                raise  # the session broke down after it started: the test must hear of it
            self._ready.set_exception(exc)

    def __enter__(self) -> McpSession:
        self._thread.start()
        try:
            self._ready.result(timeout=30)
        except BaseException:
            raise AssertionError(f"no MCP session:\n{self.errlog.read_text()}") from None
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert "Traceback" not in self.errlog.read_text(), self.errlog.read_text()

    def _await(self, coroutine: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=60)

    def tools(self) -> dict[str, types.Tool]:
        assert self._session is not None
        listed: types.ListToolsResult = self._await(self._session.list_tools())
        return {tool.name: tool for tool in listed.tools}

    def call(self, name: str, arguments: dict[str, Any] | None = None) -> types.CallToolResult:
        assert self._session is not None
        result: types.CallToolResult = self._await(self._session.call_tool(name, arguments))
        return result


def payload(result: types.CallToolResult) -> dict[str, Any]:
    """The structured content, checked to be the JSON the text shows after its summary."""
    (content,) = result.content
    assert isinstance(content, types.TextContent)
    summary, shown = content.text.split("\n", 1)
    assert summary and "Traceback" not in content.text
    assert json.loads(shown) == result.structured_content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


def text(result: types.CallToolResult) -> str:
    (content,) = result.content
    assert isinstance(content, types.TextContent)
    return content.text


def error(result: types.CallToolResult) -> tuple[str, str | None]:
    """The code and field of an error result."""
    assert result.is_error, text(result)
    found = payload(result)["error"]
    assert found["code"] in text(result) and found["message"]
    return found["code"], found["field"]


# --- a live agent and a librarian's session, shared by the module --------------------


@pytest.fixture(scope="module")
def signal_bridge() -> Iterator[SignalBridge]:
    with running_bridge() as bridge:
        yield bridge


@pytest.fixture(scope="module")
def live(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory, signal_bridge: SignalBridge
) -> Iterator[RunningAgent]:
    """The standard test agent, sending approval tokens to the Signal stand-in."""
    with running_agent(
        approvals_config(pki, tmp_path_factory.mktemp("agent"), signal_bridge)
    ) as agent:
        yield agent


@pytest.fixture(scope="module")
def librarian(
    live: RunningAgent, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[McpSession]:
    """librarian-1's MCP session, its settings given as command-line options."""
    workdir = tmp_path_factory.mktemp("mcp-librarian")
    with McpSession(workdir, tls_options(live.url, pki, "librarian-1")) as session:
        yield session


def audited(agent: RunningAgent) -> list[dict[str, Any]]:
    return audit_records(agent.config.audit.log_path)


# --- tools ---------------------------------------------------------------------------


def test_the_tools_are_the_callers_manifest_and_check_approval(
    live: RunningAgent, pki: Pki, librarian: McpSession, tmp_path: Path
) -> None:
    # reader-1's settings come from the environment instead of options.
    with McpSession(tmp_path, [], tls_environment(live.url, pki, "reader-1")) as reader:
        listed = {"librarian-1": librarian.tools(), "reader-1": reader.tools()}
    for cn, tools in listed.items():
        with Client(settings(live, pki, cn)) as client:
            manifest = {tool["function"]["name"]: tool for tool in client.manifest()["tools"]}
        assert set(tools) == {*manifest, CHECK_APPROVAL}
        for name, tool in manifest.items():
            assert tools[name].input_schema == tool["function"]["parameters"]
            assert tools[name].description == tool["function"]["description"]
            hints = tools[name].annotations
            assert hints is not None
            assert hints.read_only_hint is not tool["x-host-agent"]["mutating"]
            assert "-" in name  # "<kind>-<command>": never check_approval
    assert {"zfs-destroy", "zfs-list", "zfs-snapshot"} <= set(listed["librarian-1"])
    assert "zfs-list" in listed["reader-1"] and "zfs-destroy" not in listed["reader-1"]
    read_only = [tool for name, tool in listed["reader-1"].items() if name != CHECK_APPROVAL]
    assert all(tool.annotations and tool.annotations.read_only_hint for tool in read_only)
    assert librarian.initialized is not None
    assert CHECK_APPROVAL in (librarian.initialized.instructions or "")
    check = listed["reader-1"][CHECK_APPROVAL].input_schema
    assert check["required"] == ["approval_id"]
    assert check["properties"]["approval_id"]["pattern"] == "^ap-[0-9a-f]{16}$"


def test_a_policy_reload_shows_in_the_next_listing_and_call(served: Served, tmp_path: Path) -> None:
    with McpSession(tmp_path, tls_options(served.url, served.pki, "librarian-1")) as session:
        assert "zfs-destroy" in session.tools()
        served.config.write_text(served.config.read_text() + DENY_DESTROY)
        served.sighup("reloaded")
        assert "zfs-destroy" not in session.tools()
        refused = session.call("zfs-destroy", {"resource": "tank/data@old"})
        assert error(refused) == ("unknown_tool", "name")


def test_an_agent_gone_after_the_start_is_an_error_listing_and_the_server_stays(
    served: Served, tmp_path: Path
) -> None:
    with McpSession(tmp_path, tls_options(served.url, served.pki, "librarian-1")) as session:
        assert "zfs-list" in session.tools()
        served.process.send_signal(signal.SIGTERM)
        assert served.process.wait(30) == 0
        with pytest.raises(MCPError, match="host-agent manifest: connect_failed"):
            session.tools()
        gone = session.call("zfs-list", {"resource": "tank"})  # still serving, says why
        assert error(gone)[0] == "connect_failed"


# --- calls ---------------------------------------------------------------------------


def test_a_call_reaches_the_agent_and_a_failed_run_is_a_result(
    live: RunningAgent, librarian: McpSession
) -> None:
    """Without root the agent's sudo refuses to run zfs: the run's output still comes back."""
    result = librarian.call("zfs-list", {"resource": "tank", "reason": "how full"})
    assert error(result) == ("sudo_refused", None)
    ran = payload(result)["result"]
    assert (ran["operation"], ran["resource"]) == ("zfs-list", "tank")
    assert ran["exit_code"] != 0 and ran["stderr"]
    decision = [r for r in audited(live) if r["request_id"] == payload(result)["request_id"]]
    assert [r["event"] for r in decision] == ["decision", "result"]
    assert decision[0]["args"] == ["list"] and decision[0]["reason_text"] == "how full"


@pytest.mark.parametrize(
    ("name", "arguments", "code", "field", "sent"),
    [
        pytest.param(
            "zfs-list",
            {"resource": "tank;rm -rf /"},
            "invalid_characters",
            "resource",
            True,
            id="shell-metachar",
        ),
        pytest.param(
            "zfs-list", {"resource": "../x"}, "invalid_name", "resource", True, id="dotdot-path"
        ),
        pytest.param(
            "zfs-list",
            {"resource": "tank\x00x"},
            "invalid_characters",
            "resource",
            True,
            id="nul-byte",
        ),
        pytest.param(
            "zfs-list", {"resource": "-rf"}, "option_injection", "resource", True, id="leading-dash"
        ),
        pytest.param(
            "zfs-list",
            {"resource": "tank", "args": ["bogus"]},
            "invalid_argument",
            "args[1]",
            True,
            id="bad-arg",
        ),
        pytest.param(
            "zfs-list",
            {"reason": "one\nline"},
            "invalid_characters",
            "reason",
            True,
            id="two-line-reason",
        ),
        pytest.param(
            "zfs-destroy", {}, "missing_argument", "resource", False, id="required-missing"
        ),
        pytest.param(
            "zfs-list",
            {"recursive": True},
            "unknown_field",
            "recursive",
            False,
            id="unknown-argument",
        ),
        pytest.param(
            "zfs-list", {"args": "snapshot"}, "invalid_type", "args", False, id="args-not-a-list"
        ),
        pytest.param(
            "zfs-rollback",
            {"resource": "tank/data@old"},
            "unknown_tool",
            "name",
            False,
            id="not-offered-to-this-caller",
        ),
        pytest.param("rm-rf", {}, "unknown_tool", "name", False, id="unknown-tool"),
        pytest.param(
            CHECK_APPROVAL,
            {"approval_id": "../health"},
            "invalid_type",
            "approval_id",
            False,
            id="malformed-approval-id",
        ),
        pytest.param(
            CHECK_APPROVAL,
            {"approval_id": "ap-0000000000000000"},
            "approval_not_found",
            "approval_id",
            False,
            id="unknown-approval-id",
        ),
    ],
)
def test_bad_calls_are_error_results_and_the_server_keeps_serving(
    live: RunningAgent,
    librarian: McpSession,
    name: str,
    arguments: dict[str, Any],
    code: str,
    field: str,
    sent: bool,
) -> None:
    before = len(audited(live))
    result = librarian.call(name, arguments)
    assert error(result) == (code, field)
    records = audited(live)[before:]
    if sent:  # refused by the agent, which audited it
        assert [r["event"] for r in records] == ["rejected"]
        assert payload(result)["request_id"] == records[0]["request_id"]
    else:  # refused before anything reached /host/op
        assert records == []
    assert "zfs-list" in librarian.tools()


def test_request_for_translates_a_call_into_a_host_op_request(live: RunningAgent, pki: Pki) -> None:
    with Client(settings(live, pki, "librarian-1")) as client:
        tools = manifest_tools(client.manifest())
    request = request_for(tools["zfs-list"], {"resource": "tank", "args": ["snapshot"]})
    assert request.body() == {"kind": "zfs", "resource": "tank", "args": ["list", "snapshot"]}
    assert request_for(tools["zfs-list"], None).body() == {
        "kind": "zfs",
        "resource": None,
        "args": ["list"],
    }
    with pytest.raises(InvalidRequest) as raised:
        request_for(tools["zfs-list"], ["tank"])
    assert (raised.value.code, raised.value.field) == ("invalid_type", "arguments")


# --- approvals -----------------------------------------------------------------------


def ask_for_destroy(session: McpSession, snapshot: str) -> dict[str, Any]:
    pending = session.call("zfs-destroy", {"resource": snapshot, "reason": "free space"})
    assert not pending.is_error, text(pending)
    return payload(pending)


def test_a_destroy_waits_for_a_human_then_check_approval_runs_it_once(
    live: RunningAgent, pki: Pki, librarian: McpSession, signal_bridge: SignalBridge
) -> None:
    snapshot = "tank/data@mcp-approved"
    pending = ask_for_destroy(librarian, snapshot)
    approval_id = pending["approval_id"]
    assert APPROVAL_ID.fullmatch(approval_id)
    assert pending["status"] == "pending"
    assert (pending["operation"], pending["resource"]) == ("zfs-destroy", snapshot)
    assert (pending["approvals"], pending["approvals_required"]) == (0, 1)
    assert pending["admin_only"] is False and 250 < pending["seconds_left"] <= 300
    assert {asked["channel"] for asked in pending["asked"]} == {"signal", "admin"}
    assert f"{CHECK_APPROVAL} with approval_id {approval_id}" in pending["next_step"]
    assert "do not call zfs-destroy again" in pending["next_step"]

    still = librarian.call(CHECK_APPROVAL, {"approval_id": approval_id})
    assert not still.is_error
    assert payload(still)["status"] == "pending" and payload(still)["approval_id"] == approval_id

    approve = {"token": token_sent(signal_bridge, snapshot)}
    assert post(live, pki, "admin-1", "/approve", approve).status_code == 200
    ran = librarian.call(CHECK_APPROVAL, {"approval_id": approval_id})
    # Resubmitted under the approval; without root, sudo refuses to run zfs.
    assert error(ran) == ("sudo_refused", None)
    result = payload(ran)["result"]
    assert (result["operation"], result["resource"]) == ("zfs-destroy", snapshot)
    runs = [
        r
        for r in audited(live)
        if r["event"] == "result" and r["request_id"] == payload(ran)["request_id"]
    ]
    assert len(runs) == 1

    again = librarian.call(CHECK_APPROVAL, {"approval_id": approval_id})
    assert error(again) == ("approval_consumed", None)
    assert payload(again)["approval"]["status"] == "consumed"


def test_a_denied_approval_is_an_error_result(
    live: RunningAgent, pki: Pki, librarian: McpSession, signal_bridge: SignalBridge
) -> None:
    approval_id = ask_for_destroy(librarian, "tank/data@mcp-denied")["approval_id"]
    deny = {"token": token_sent(signal_bridge, "tank/data@mcp-denied"), "decision": "deny"}
    assert post(live, pki, "admin-1", "/approve", deny).status_code == 200
    denied = librarian.call(CHECK_APPROVAL, {"approval_id": approval_id})
    assert error(denied) == ("approval_denied", None)
    assert payload(denied)["approval"]["decided_by"] == "admin"
    assert approval_id in text(denied)


# --- the process ---------------------------------------------------------------------


def test_a_missing_setting_exits_2_naming_it(live: RunningAgent, pki: Pki, tmp_path: Path) -> None:
    options = tls_options(live.url, pki, "librarian-1")
    without_cert = options[:2] + options[4:]
    done = subprocess.run(
        [*MCP, *without_cert],
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("host-agent: host-agent client configuration:\n")
    assert "cert is not set" in done.stderr and "HOST_AGENT_CERT" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("cn", "reachable", "status", "says"),
    [
        pytest.param("stranger", True, 4, "refused: unknown_cn", id="refused-by-the-agent"),
        pytest.param(
            "librarian-1", False, 3, "unavailable: connect_failed", id="agent-unreachable"
        ),
    ],
)
def test_an_agent_that_cannot_be_used_at_start_ends_the_process(
    live: RunningAgent, pki: Pki, tmp_path: Path, cn: str, reachable: bool, status: int, says: str
) -> None:
    url = live.url
    if not reachable:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            url = f"https://127.0.0.1:{probe.getsockname()[1]}"
    done = subprocess.run(
        [*MCP, *tls_options(url, pki, cn)],
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == status and done.stdout == ""
    assert f"host-agent mcp: {says}: " in done.stderr and "Traceback" not in done.stderr


def test_the_mcp_package_is_optional() -> None:
    other_commands = "import sys, host_agent.cli; print('mcp' in sys.modules)"
    imported = subprocess.run(
        [sys.executable, "-c", other_commands], cwd=REPO, capture_output=True, text=True
    )
    assert imported.stdout.strip() == "False", imported.stderr
    without = (
        "import sys; sys.modules['mcp'] = None\n"
        "from host_agent.cli import main; raise SystemExit(main(['mcp']))"
    )
    done = subprocess.run([sys.executable, "-c", without], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "host-agent mcp: the mcp package is not installed: pip install 'host-agent[mcp]'"
    ]
