"""Helpers for end-to-end approval tests: ask for a destroy, read the token the
Signal stand-in received, poll the approval. Fixtures (`bridge`, `snapshot`) are
in conftest.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from host_agent.config import Config
from tests.signal_bridge import BRIDGE_NUMBER, SignalBridge
from tests.support import Pki, RunningAgent, client, config_text, write_config


def destroy(snapshot: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "zfs", "resource": snapshot, "args": ["destroy"], **extra}


def post(agent: RunningAgent, pki: Pki, cn: str, path: str, body: Any, **kw: Any) -> httpx.Response:
    with client(agent, pki, cn) as http:
        return http.post(path, json=body, **kw)


def get(agent: RunningAgent, pki: Pki, cn: str, path: str) -> httpx.Response:
    with client(agent, pki, cn) as http:
        return http.get(path)


def wait_for(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def token_sent(bridge: SignalBridge, resource: str | None = None) -> str:
    """The token from the last request the agent sent to the approvers, or from the last
    one about `resource`: the message of an earlier approval is sent first and may be
    the last one seen when a bridge is shared."""

    def messages() -> list[str]:
        # Requests only: the follow-ups telling approvers an outcome carry no token.
        texts = [str(sent["message"]) for sent in bridge.sent if "Reply APPROVE" in sent["message"]]
        if resource is None:
            return texts
        return [text for text in texts if f"\nResource: {resource}\n" in text]

    message = wait_for(messages)[-1]
    return message.rsplit("APPROVE ", 1)[1].split()[0]


def request_approval(agent: RunningAgent, pki: Pki, snapshot: str) -> str:
    reply = post(agent, pki, "librarian-1", "/host/op", destroy(snapshot, reason="free space"))
    assert reply.status_code == 202, reply.text
    return str(reply.json()["approval_id"])


def status(agent: RunningAgent, pki: Pki, approval_id: str, cn: str = "librarian-1") -> str:
    return str(get(agent, pki, cn, f"/approvals/{approval_id}").json()["status"])


def approvals_config(pki: Pki, tmp_path: Path, bridge: SignalBridge, ttl: int = 300) -> Config:
    """The standard test config, sending approval tokens to the Signal stand-in."""
    signal = f'signal_url = "{bridge.url}"\nsignal_number = "{BRIDGE_NUMBER}"'
    text = config_text(pki, tmp_path, approval=signal, approval_ttl=ttl)
    return write_config(tmp_path / "agent.toml", text)
