"""The predecessor's approver identity hook: an operator's program that must also say yes.

`[approval] identity_plugin` names a command (`command:/abs/path`, run as the
service account with the question on stdin) or an http(s) URL (POSTed the
question as JSON). Before any approver's approval counts, on every channel, the
plugin gets `{"approver_cn", "approval_id", "operation", "target", "channel"}`
and must answer `{"allowed": true}`. Anything else (a false, a non-zero exit, a
non-2xx answer, a body that is not that JSON, no answer within 5 s) is a no:
the plugin fails closed. A deny never asks the plugin: refusing is always safe.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from host_agent import strict_json
from host_agent.approvals.model import Approval, Approver
from host_agent.errors import RunnerError
from host_agent.runner import Runner

TIMEOUT_SECONDS = 5.0
# A verdict is a few bytes; a reason longer than this is cut for the audit log.
MAX_REASON = 200
_COMMAND = "command:"


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str


class IdentityPlugin:
    """Asks the configured plugin about one approver and one approval."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    async def check(self, spec: str, approver: Approver, approval: Approval) -> Verdict:
        question = {
            "approver_cn": approver.name,
            "approval_id": approval.id,
            "operation": approval.operation,
            "target": approval.resource,
            "channel": approver.channel,
        }
        if spec.startswith(_COMMAND):
            return await self._ask_command(spec.removeprefix(_COMMAND), question)
        return await _ask_url(spec, question)

    async def _ask_command(self, path: str, question: dict[str, Any]) -> Verdict:
        try:
            result = await self.runner.run_program(
                (path,), json.dumps(question).encode(), TIMEOUT_SECONDS
            )
        except RunnerError as exc:
            return Verdict(False, f"plugin failed: {exc}")
        if result.exit_code != 0:
            return Verdict(False, f"plugin exited with status {result.exit_code}")
        return parse_answer(result.stdout)


async def _ask_url(url: str, question: dict[str, Any]) -> Verdict:
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT_SECONDS, follow_redirects=False) as http:
            reply = await http.post(url, json=question)
    except httpx.HTTPError as exc:
        return Verdict(False, f"plugin unreachable: {type(exc).__name__}")
    if not reply.is_success:
        return Verdict(False, f"plugin answered HTTP {reply.status_code}")
    return parse_answer(reply.text)


def parse_answer(text: str) -> Verdict:
    """`{"allowed": true|false, "reason"?: str}`; anything else is a no."""
    try:
        answer = strict_json.loads(text)
    except strict_json.NotJson:
        return Verdict(False, "plugin answer is not JSON")
    if not isinstance(answer, dict) or not isinstance(answer.get("allowed"), bool):
        return Verdict(False, 'plugin answer has no boolean "allowed"')
    reason = answer.get("reason")
    reason = reason[:MAX_REASON] if isinstance(reason, str) else ""
    if answer["allowed"]:
        return Verdict(True, reason)
    return Verdict(False, reason or "plugin said no")
