"""An external policy check in clashd's wire format, consulted after host-agent's own
decision: `[policy] external_url`.

    POST {external_url}/evaluate
    {"tool": "zfs-destroy", "args": {"kind", "resource", "args"},
     "context": {"agent_id": CN, "agent_type", "caller": CN, "host"}}
    -> {"verdict": "allow" | "review" | "deny", "reason": "..."}

It can only tighten: `deny` refuses, `review` turns an allowed operation into one a
human must approve, `allow` changes nothing. No answer in time, an error status or an
answer that is not one of the three verdicts is a deny (fail closed). Whatever it
said goes into the decision's audit record. `agent_id` is the agent a proxy acts for
(or the caller itself), `caller` the certificate's CN.
"""

from __future__ import annotations

import dataclasses
import socket
from dataclasses import dataclass

import httpx

from host_agent.config.policy import ExternalPolicyConfig
from host_agent.operations import Operation
from host_agent.policy import Decision, Effect

VERDICTS = ("allow", "review", "deny")
# What of a reason from outside goes into the audit log and the reply.
MAX_REASON = 500


@dataclass(frozen=True)
class Verdict:
    verdict: str  # allow, review, deny; or "unavailable" when there was no usable answer
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"verdict": self.verdict, "reason": self.reason}


class ExternalPolicy:
    def __init__(self, config: ExternalPolicyConfig) -> None:
        self.config = config
        self.url = config.url.rstrip("/") + "/evaluate"
        self.host = socket.gethostname()

    async def consult(self, cn: str, agent: str, agent_type: str, operation: Operation) -> Verdict:
        """What the service says of `operation` for `agent` (the caller's CN, or the
        agent a proxy acts for), asked by the certificate `cn`."""
        body = {
            "tool": operation.name,
            "args": {
                "kind": operation.kind,
                "resource": operation.resource,
                "args": list(operation.args),
            },
            "context": {
                "agent_id": agent,
                "agent_type": agent_type,
                "caller": cn,
                "host": self.host,
            },
        }
        try:
            async with httpx.AsyncClient(
                timeout=self.config.timeout_seconds,
                verify=str(self.config.ca) if self.config.ca else True,
                follow_redirects=False,
            ) as http:
                reply = await http.post(self.url, json=body)
        except httpx.HTTPError as exc:
            return Verdict("unavailable", f"no answer from {self.url}: {type(exc).__name__}")
        if reply.status_code != 200:
            return Verdict("unavailable", f"{self.url} answered HTTP {reply.status_code}")
        try:
            answer = reply.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or answer.get("verdict") not in VERDICTS:
            return Verdict("unavailable", f"{self.url} gave no allow, review or deny verdict")
        reason = answer.get("reason")
        return Verdict(answer["verdict"], str(reason)[:MAX_REASON] if reason else "")


def tightened(decision: Decision, verdict: Verdict) -> Decision:
    """`decision` as the external verdict leaves it: never looser."""
    why = f"external policy: {verdict.reason or verdict.verdict}"
    if decision.effect is Effect.DENY or verdict.verdict == "allow":
        return decision
    if verdict.verdict == "deny":
        return Decision(Effect.DENY, "external_policy_denied", why, "policy.external_url")
    if verdict.verdict == "review":
        if decision.effect is Effect.APPROVAL:
            return decision
        return dataclasses.replace(
            decision,
            effect=Effect.APPROVAL,
            code="external_policy_review",
            reason=why,
            rule="policy.external_url",
        )
    return Decision(Effect.DENY, "external_policy_unavailable", why, "policy.external_url")
