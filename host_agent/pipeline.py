"""The request path of `/host/op`: parse → decide → audit → run → audit.

Nothing runs before its decision record is durable; every refusal, including
malformed input, is audited too. An operation that needs a human first gets its
adapter's read-only preview run (audited), so approvers see what it would change.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from host_agent.adapters import Registry
from host_agent.adapters.base import Failure
from host_agent.approvals.manager import ApprovalManager
from host_agent.approvals.model import Approval, timestamp
from host_agent.audit import AuditLog
from host_agent.audit.checkpoints import Checkpoints, WitnessBehind
from host_agent.config import AgentProfile, Config
from host_agent.errors import (
    AuditUnavailable,
    HostAgentError,
    OperationFailed,
    PolicyDenied,
    RequestError,
    ResultUnaudited,
    RunnerError,
    TargetRefused,
)
from host_agent.external_policy import ExternalPolicy, tightened
from host_agent.identity import CertificateCheck, CertificateRefused, Identity
from host_agent.metrics import Metrics
from host_agent.operations import Operation
from host_agent.policy import Decision, Effect, decide, find_profile, unknown_caller
from host_agent.ratelimit import RateLimited, RateLimiter
from host_agent.refusal_audit import RefusalAudit
from host_agent.request import HostOpRequest, decode_json, parse_host_op
from host_agent.runner import Runner, RunResult

_STDERR_TAIL = 2000
_UNAVAILABLE = "preview unavailable"


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]


class Pipeline:
    """Everything between a verified identity plus JSON body and the reply."""

    def __init__(
        self,
        config: Config,
        registry: Registry,
        audit: AuditLog,
        runner: Runner,
        approvals: ApprovalManager | None = None,
        metrics: Metrics | None = None,
        refusals: RefusalAudit | None = None,
        checkpoints: Checkpoints | None = None,
    ) -> None:
        self.config = config
        # Signed checkpoints of the audit log and their witnesses (None: not kept).
        self.checkpoints = checkpoints
        self.registry = registry
        self.audit = audit
        self.runner = runner
        self.metrics = metrics or Metrics()
        self.limiter = RateLimiter(config.rate_limit)
        self.refusals = refusals or RefusalAudit(audit, config.rate_limit, self.metrics)
        # None when [approval] enabled = false: operations needing a human are refused.
        self.approvals = approvals
        # No connection predates the start, so the handshake's CRL is all there is to
        # hold; a reload puts its CRL's revocations here for connections already open.
        self.certificates = CertificateCheck()
        self.external = _external(config)

    def reconfigure(self, config: Config, registry: Registry) -> None:
        """A reloaded config: requests from now on see the new policy, adapters and limits."""
        self.config = config
        self.registry = registry
        self.runner.config = config.runner
        self.limiter.config = config.rate_limit
        self.refusals.reconfigure(config.rate_limit)
        self.external = _external(config)
        if self.approvals is not None:
            self.approvals.reconfigure(config.approval)

    async def identify(self, scope: Mapping[str, Any]) -> Identity:
        """The caller of one request, its certificate re-checked now; a refusal is audited."""
        try:
            return self.certificates.identify(scope)
        except CertificateRefused as exc:
            await self.reject(exc.identity, exc)
            raise

    async def host_op(self, identity: Identity, body: bytes, path: str = "/host/op") -> Reply:
        """One `/host/op` body (or a predecessor route's, at `path`) from a verified caller."""
        who = _who(identity)
        document: Any = None
        try:
            found = await self._profile_of(identity, who, path)
            document = decode_json(body)
            request = parse_host_op(document)
            adapter = self.registry.adapter_for(request.kind)
            operation = adapter.parse(request, found[1].unix_user)
            limit = "mutating" if operation.mutating else "read"
            self._check_limit(identity.cn, limit, path)
            if request.on_behalf_of is not None:
                who["on_behalf_of"] = request.on_behalf_of  # in every record from here on
                await self._acting_for(who, found[1], request.on_behalf_of)
                self._check_limit(request.on_behalf_of, limit, path)
        except PolicyDenied as exc:
            self.metrics.request(None, exc.code)
            raise
        except RequestError as exc:
            self.metrics.request(None, exc.code)
            await self._rejected(who, exc, document)
            raise
        try:
            reply = await self._decide_and_run(who, request, operation, found[1].unix_user)
        except HostAgentError as exc:
            self.metrics.request(operation.name, exc.code)
            raise
        outcome = "approval_pending" if reply.status == 202 else "ok"
        self.metrics.request(operation.name, outcome)
        return reply

    async def acting_for(self, identity: Identity, agent: str, path: str) -> AgentProfile:
        """For a read naming `on_behalf_of` (the manifest): the agent's profile, or the
        refusal, audited as on /host/op. The caller's own profile is checked first, and
        its read limit: every decision is audited, so each must be bounded."""
        await self.limit(identity, "read", path)
        who = {**_who(identity), "on_behalf_of": agent}
        found = find_profile(self.config, identity.cn)
        if found is None:
            decision = unknown_caller(identity.cn)
            await self._decision(who, {}, decision)
            raise _denied(decision, who["request_id"])
        return await self._acting_for(who, found[1], agent)

    async def _acting_for(
        self, who: dict[str, Any], profile: AgentProfile, agent: str
    ) -> AgentProfile:
        """A proxy naming the agent behind it: allowed only for an agent its profile's
        `acts_for` lists and that has a profile of its own (refusals are decisions,
        audited); the agent's profile. Identity still comes from the certificate alone:
        the agent's rights can only narrow the caller's (see `_decide`)."""
        found = find_profile(self.config, agent)
        if not profile.may_act_for(agent):
            decision = Decision(
                Effect.DENY,
                "on_behalf_of_not_allowed",
                f"this caller may not act for {agent!r}: its profile's acts_for does not list it",
                "agents.acts_for",
            )
        elif found is None:
            decision = Decision(
                Effect.DENY,
                "on_behalf_of_unknown",
                f"no [[agents]] profile matches {agent!r}",
                "agents",
            )
        else:
            self.metrics.on_behalf.labels(agent_type=found[1].agent_type).inc()
            return found[1]
        await self._decision(who, {}, decision)
        raise _denied(decision, who["request_id"])

    def _decide(self, who: dict[str, Any], operation: Operation) -> Decision:
        """Policy for the caller, and for the agent it acts for if it names one: of the
        two, what gives less."""
        decision = decide(self.config, who["cn"], operation)
        agent = who.get("on_behalf_of")
        if agent is None:
            return decision
        return _stricter(decision, decide(self.config, agent, operation))

    async def refuse_unknown_caller(self, identity: Identity, path: str) -> None:
        """Refuse (audited) a caller no profile matches, before anything of its request
        is read."""
        who = _who(identity)
        try:
            await self._profile_of(identity, who, path)
        except PolicyDenied as exc:
            self.metrics.request(None, exc.code)
            raise
        except RequestError as exc:  # past its read limit: a refusal, bounded
            self.metrics.request(None, exc.code)
            await self._rejected(who, exc, None)
            raise

    async def _profile_of(
        self, identity: Identity, who: dict[str, Any], path: str
    ) -> tuple[int, AgentProfile]:
        found = find_profile(self.config, identity.cn)
        if found is None:
            # Every decision is audited, so an unknown CN's are bounded by its read
            # limit: past it the caller gets 429 before anything is decided.
            self._check_limit(identity.cn, "read", path)
            decision = unknown_caller(identity.cn)
            await self._decision(who, {}, decision)
            raise _denied(decision, who["request_id"])
        return found

    async def limit(self, identity: Identity, limit: str, path: str) -> None:
        """Rate-limit a non-operation route (the approval routes); refusals are audited."""
        try:
            self._check_limit(identity.cn, limit, path)
        except RateLimited as exc:
            await self.reject(identity, exc)
            raise

    def _check_limit(self, cn: str, limit: str, path: str) -> None:
        try:
            self.limiter.check(cn, limit, path)
        except RateLimited as exc:
            self.metrics.rate_limited.labels(limit=exc.limit).inc()
            raise

    async def reject(self, identity: Identity, error: RequestError) -> None:
        """Audit a request refused before its body could be read (e.g. too large)."""
        await self._rejected(_who(identity), error, None)

    async def _rejected(self, who: dict[str, Any], error: RequestError, document: Any) -> None:
        error.request_id = who["request_id"]
        await self.refusals.write(
            who["cn"],
            {
                **who,
                "event": "rejected",
                **_raw_summary(document),
                "code": error.code,
                "field": error.field,
                "message": error.message,
            },
        )

    async def _decide_and_run(
        self, who: dict[str, Any], request: HostOpRequest, operation: Operation, unix_user: str
    ) -> Reply:
        decision = self._decide(who, operation)
        if decision.effect is not Effect.DENY:
            operation = await self._resolve(who, operation)
            if operation.canonical_resource not in (None, operation.resource):
                canonical = dataclasses.replace(operation, resource=operation.canonical_resource)
                decision = _stricter(decision, self._decide(who, canonical))
        argv = self.runner.argv_for(operation)
        summary = _operation_summary(operation, argv, request)
        if decision.effect is not Effect.DENY and self.external is not None:
            agent = who.get("on_behalf_of") or who["cn"]
            found = find_profile(self.config, agent)
            agent_type = found[1].agent_type if found else ""
            verdict = await self.external.consult(who["cn"], agent, agent_type, operation)
            decision = tightened(decision, verdict)
            summary["external_policy"] = verdict.as_dict()
        await self._decision(who, summary, decision)
        described = {
            "request_id": who["request_id"],
            "operation": operation.name,
            "resource": operation.resource,
        }
        if request.dry_run:
            return Reply(
                200,
                {
                    **described,
                    "dry_run": True,
                    "decision": decision.as_dict(),
                    # Where sudo and the wrappers live is for admins; a caller sees the
                    # wrapper's name and what it would be given.
                    "argv": list(argv)
                    if self.config.approval.is_admin(who["cn"])
                    else [operation.wrapper, *operation.wrapper_argv],
                    "digest": operation.digest(),
                },
            )
        if decision.effect is Effect.DENY:
            raise _denied(decision, who["request_id"])
        if operation.mutating and self.checkpoints is not None:
            await self._check_witnesses(who, operation)
        if decision.effect is Effect.APPROVAL:
            if self.approvals is None:
                raise _denied(decision, who["request_id"], "; approvals are disabled on this agent")
            if request.approval_id is None:
                preview = await self._preview(who, operation)
                approval = await self.approvals.create(
                    who,
                    operation,
                    decision,
                    request.reason,
                    unix_user,
                    preview=preview,
                    metadata=request.metadata,
                )
                return Reply(
                    202, {**described, **_pending(approval, self.approvals.asked(approval))}
                )
            try:
                await self.approvals.consume(request.approval_id, who, operation)
            except RequestError as exc:
                exc.request_id = who["request_id"]
                raise

        adapter = self.registry[operation.kind]
        try:
            result = await self.runner.run(operation)
        except RunnerError as exc:
            await self._result(
                who, operation, {"outcome": exc.code, "message": str(exc), **exc.audit_fields()}
            )
            exc.request_id = who["request_id"]
            raise
        self.metrics.operation_duration.labels(operation=operation.name).observe(
            result.duration_seconds
        )
        failure = adapter.outcome(operation, result)
        await self._result(who, operation, _run_fields(result, failure))
        body = {**described, **_result_body(result)}
        if failure is not None:
            error = OperationFailed(failure.status, failure.code, failure.message, body)
            error.request_id = who["request_id"]
            raise error
        return Reply(200, {**body, "data": adapter.interpret(operation, result)})

    async def _resolve(self, who: dict[str, Any], operation: Operation) -> Operation:
        """`operation` with the host's canonical name for its target, from the adapter's
        read-only resolution run (audited before it runs, and after), so policy and the
        adapter's refusals apply to an alias's real unit too. Fails closed."""
        adapter = self.registry[operation.kind]
        resolution = adapter.resolution(operation)
        if resolution is None:
            return operation
        record = {
            **who,
            "event": "resolve",
            "operation": operation.name,
            "resource": operation.resource,
            "argv": list(self.runner.argv_for(resolution)),
        }
        await self.audit.write({**record, "outcome": "started"})
        try:
            result = await self.runner.run(resolution)
        except RunnerError as exc:
            await self.audit.write({**record, "outcome": exc.code, "message": str(exc)})
            exc.request_id = who["request_id"]
            raise
        failure = adapter.outcome(resolution, result)
        if failure is not None:
            await self.audit.write({**record, **_run_fields(result, failure)})
            error = OperationFailed(
                failure.status,
                failure.code,
                f"cannot name {operation.resource} canonically: {failure.message}",
                _result_body(result),
            )
            error.request_id = who["request_id"]
            raise error
        try:
            resolved = adapter.resolved(operation, result)
        except TargetRefused as exc:
            await self.audit.write(
                {
                    **record,
                    **_run_fields(result, None),
                    "canonical_resource": result.stdout.strip()[:256],
                    "refused": exc.code,
                    "message": exc.message,
                }
            )
            exc.request_id = who["request_id"]
            raise
        await self.audit.write(
            {
                **record,
                **_run_fields(result, None),
                "canonical_resource": resolved.canonical_resource,
            }
        )
        return resolved

    async def _preview(self, who: dict[str, Any], operation: Operation) -> list[str]:
        """What approvers should know `operation` would change, from the adapter's read-only
        preview run (audited like any run). A preview that fails or times out becomes one
        "unavailable" line: it must never keep the approval from being asked for."""
        adapter = self.registry[operation.kind]
        preview = adapter.preview(operation)
        if preview is None:
            return []
        record = {
            **who,
            "event": "preview",
            "operation": operation.name,
            "argv": list(self.runner.argv_for(preview)),
        }
        try:
            result = await self.runner.run(preview)
        except RunnerError as exc:
            await self.audit.write(
                {**record, "outcome": exc.code, "message": str(exc), **exc.audit_fields()}
            )
            return [f"{_UNAVAILABLE}: {exc}"]
        failure = adapter.outcome(preview, result)
        await self.audit.write({**record, **_run_fields(result, failure)})
        if failure is not None:
            return [f"{_UNAVAILABLE}: {failure.message}"]
        if result.truncated:
            return [f"{_UNAVAILABLE}: its output was cut at the output cap"]
        return adapter.describe_preview(operation, result)

    async def _result(
        self, who: dict[str, Any], operation: Operation, fields: dict[str, Any]
    ) -> None:
        """Audit what happened; if that fails, say so: unlike a decision, it already ran."""
        try:
            await self.audit.write(
                {**who, "event": "result", "operation": operation.name, **fields}
            )
        except AuditUnavailable as exc:
            error = ResultUnaudited(
                f"{operation.name} ran (outcome {fields['outcome']}) but its result could not "
                f"be audited: {exc}"
            )
            error.request_id = who["request_id"]
            raise error from exc

    async def _check_witnesses(self, who: dict[str, Any], operation: Operation) -> None:
        """[audit.checkpoints] fail_closed_after_seconds: hold mutating operations while
        a witness is too far behind (audited; nothing runs, no approval is used)."""
        if self.checkpoints is None:
            return
        try:
            self.checkpoints.check_mutating(time.time())
        except WitnessBehind as exc:
            exc.request_id = who["request_id"]
            await self.audit.write(
                {**who, "event": "held", "operation": operation.name, "code": exc.code}
            )
            raise

    async def _decision(
        self, who: dict[str, Any], what: dict[str, Any], decision: Decision
    ) -> None:
        self.metrics.policy_decisions.labels(effect=decision.effect.value).inc()
        await self.audit.write(
            {
                **who,
                "event": "decision",
                **what,
                "decision": decision.effect.value,
                "code": decision.code,
                "reason": decision.reason,
                "rule": decision.rule,
                "admin_only": decision.admin_only,
            }
        )


def _who(identity: Identity) -> dict[str, Any]:
    return {
        "request_id": secrets.token_hex(8),
        "cn": identity.cn,
        "fingerprint": identity.fingerprint,
        "serial": identity.serial,
    }


_SEVERITY = {Effect.ALLOW: 0, Effect.APPROVAL: 1, Effect.DENY: 2}


def _external(config: Config) -> ExternalPolicy | None:
    """[policy] external_url's check, when one is configured."""
    wanted = config.policy.external
    return None if wanted is None else ExternalPolicy(wanted)


def _stricter(first: Decision, second: Decision) -> Decision:
    """Of two decisions on one operation (a resource's two names, or a proxy's and its
    agent's), the one that gives less; when both need a human, each one's demands."""
    if first.effect is Effect.APPROVAL and second.effect is Effect.APPROVAL:
        return dataclasses.replace(
            first,
            admin_only=first.admin_only or second.admin_only,
            approvals_required=max(first.approvals_required, second.approvals_required),
        )
    return second if _SEVERITY[second.effect] > _SEVERITY[first.effect] else first


def _denied(decision: Decision, request_id: str, suffix: str = "") -> PolicyDenied:
    error = PolicyDenied(decision.code, decision.reason + suffix)
    error.request_id = request_id
    return error


def _operation_summary(
    operation: Operation, argv: tuple[str, ...], request: HostOpRequest
) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "operation": operation.name,
        "kind": operation.kind,
        "resource": operation.resource,
        "args": list(operation.args),
        "argv": list(argv),
        **(
            {"canonical_resource": operation.canonical_resource}
            if operation.canonical_resource is not None
            else {}
        ),
        "digest": operation.digest(),
        "mutating": operation.mutating,
        "dry_run": request.dry_run,
    }
    if request.reason:
        summary["reason_text"] = request.reason
    if request.metadata:
        summary["metadata"] = dict(request.metadata)
    if request.approval_id:
        summary["approval_id"] = request.approval_id
    return summary


def _pending(approval: Approval, asked: list[dict[str, str]]) -> dict[str, Any]:
    """The 202 body: how to follow the approval and who can decide it, never its token."""
    return {
        "status": "pending",
        "approval_id": approval.id,
        "digest": approval.digest,
        "expires_at": timestamp(approval.expires_at),
        "approvals_required": approval.approvals_required,
        "admin_only": approval.admin_only,
        "asked": asked,
        "message": (
            f"{approval.operation} needs human approval. Poll "
            f"GET /approvals/{approval.id}, then resubmit the same request with "
            f'"approval_id": "{approval.id}".'
        ),
    }


def _raw_summary(document: Any) -> dict[str, Any]:
    """A bounded picture of a request that failed validation, for the audit log."""
    if document is None:
        return {}
    if not isinstance(document, dict):
        return {"body_type": type(document).__name__}
    parts: dict[str, Any] = {}
    for key in ("kind", "resource"):
        value = document.get(key)
        parts[key] = value[:256] if isinstance(value, str) else repr(value)[:256]
    args = document.get("args")
    if isinstance(args, list):
        parts["args"] = [a[:256] if isinstance(a, str) else repr(a)[:256] for a in args[:32]]
    return parts


def _run_fields(result: RunResult, failure: Failure | None) -> dict[str, Any]:
    """How a finished run is audited."""
    return {
        "outcome": "ok" if failure is None else "failed",
        "code": None if failure is None else failure.code,
        "exit_code": result.exit_code,
        "duration_ms": round(result.duration_seconds * 1000, 3),
        "truncated": result.truncated,
        "stderr_tail": result.stderr[-_STDERR_TAIL:],
    }


def _result_body(result: RunResult) -> dict[str, Any]:
    return {
        "exit_code": result.exit_code,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "truncated": result.truncated,
        "duration_ms": round(result.duration_seconds * 1000, 3),
    }
