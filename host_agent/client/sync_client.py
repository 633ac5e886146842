"""The blocking client: `protocol` over one pooled httpx.Client."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import httpx

from host_agent.client import protocol, transport
from host_agent.client.config import ClientConfig
from host_agent.client.request import OpRequest
from host_agent.client.results import (
    ApprovalStatus,
    ApprovalTicket,
    DryRun,
    Health,
    OperationResult,
)

T = TypeVar("T")


class Client:
    """Calls one agent over mutual TLS, reusing its connection; a context manager.

    Without `config`, settings come from the environment and the client config file
    (see `ClientConfig.load`).
    """

    def __init__(self, config: ClientConfig | None = None) -> None:
        self.config = config or ClientConfig.load()
        self._http = httpx.Client(**transport.http_settings(self.config))

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def run(
        self,
        kind: str,
        resource: str | None,
        args: Sequence[str],
        reason: str | None = None,
        *,
        dry_run: bool = False,
        approval_id: str | None = None,
    ) -> OperationResult | DryRun | PendingApproval:
        """Ask for one operation: its result, the dry run, or a handle on the approval it needs."""
        request = OpRequest.of(
            kind, resource, args, reason, dry_run=dry_run, approval_id=approval_id
        )
        return self._send(
            protocol.run_call(request, functools.partial(PendingApproval, client=self))
        )

    def approval(self, approval_id: str, wait: float = 0.0) -> ApprovalStatus:
        """The approval now; with `wait`, once it is no longer pending or after `wait`
        seconds (the agent holds the request, so a decision is heard at once)."""
        return self._send(protocol.approval_call(approval_id, wait))

    def follow(self, approval_id: str) -> PendingApproval:
        """A handle on an approval asked for earlier (by another run, say), to `wait()` on."""
        return self._send(
            protocol.follow_call(approval_id, functools.partial(PendingApproval, client=self))
        )

    def pending(self) -> list[ApprovalStatus]:
        """This caller's open (pending or approved, unused) approvals."""
        return self._send(protocol.pending_call())

    def health(self) -> Health:
        return self._send(protocol.health_call())

    def manifest(self) -> dict[str, Any]:
        """The tools this caller may request, as the agent describes them."""
        return self._send(protocol.manifest_call())

    def _send(self, call: protocol.Call[T]) -> T:
        try:
            response = self._http.request(call.method, call.path, json=call.body)
        except httpx.HTTPError as exc:
            raise transport.converted(exc, self.config) from exc
        return call.parse(protocol.decode(response))


@dataclass(frozen=True, kw_only=True)
class PendingApproval(ApprovalTicket):
    """An operation waiting for a human; `wait()` follows it and runs it once approved."""

    client: Client = field(repr=False, compare=False)

    def wait(
        self,
        timeout: float | None = None,
        poll_interval: float = 2.0,
        on_status: Callable[[ApprovalStatus], object] | None = None,
    ) -> OperationResult:
        """Poll until decided; once approved, resubmit the same request and return its result.

        Raises ApprovalDenied, ApprovalExpired, or StillPending after `timeout` seconds
        (the approval stays usable: call `wait()` again). `on_status` sees every poll.
        """
        patience = protocol.Patience(timeout, poll_interval)
        hold = 0.0
        while True:
            asked = time.monotonic()
            status = self.client.approval(self.approval_id, wait=hold)
            if on_status is not None:
                on_status(status)
            delay = patience.next_poll(status)
            if delay is None:
                return self.client._send(protocol.resubmit_call(self.request, self.approval_id))
            # An agent that held the request answered as it ended; one that does not hold
            # (an older one) answered at once: wait out the rest here.
            time.sleep(max(0.0, hold - (time.monotonic() - asked)))
            hold = delay
