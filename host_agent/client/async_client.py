"""The asyncio client: `protocol` over one pooled httpx.AsyncClient."""

from __future__ import annotations

import asyncio
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


class AsyncClient:
    """`Client` for asyncio: the same calls, awaited; use with `async with`."""

    def __init__(self, config: ClientConfig | None = None) -> None:
        self.config = config or ClientConfig.load()
        self._http = httpx.AsyncClient(**transport.http_settings(self.config))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def run(
        self,
        kind: str,
        resource: str | None,
        args: Sequence[str],
        reason: str | None = None,
        *,
        dry_run: bool = False,
        approval_id: str | None = None,
    ) -> OperationResult | DryRun | AsyncPendingApproval:
        """Ask for one operation: its result, the dry run, or a handle on the approval it needs."""
        request = OpRequest.of(
            kind, resource, args, reason, dry_run=dry_run, approval_id=approval_id
        )
        return await self._send(
            protocol.run_call(request, functools.partial(AsyncPendingApproval, client=self))
        )

    async def approval(self, approval_id: str, wait: float = 0.0) -> ApprovalStatus:
        """The approval now; with `wait`, once it is no longer pending or after `wait`
        seconds (the agent holds the request, so a decision is heard at once)."""
        return await self._send(protocol.approval_call(approval_id, wait))

    async def follow(self, approval_id: str) -> AsyncPendingApproval:
        """A handle on an approval asked for earlier (by another run, say), to `wait()` on."""
        return await self._send(
            protocol.follow_call(approval_id, functools.partial(AsyncPendingApproval, client=self))
        )

    async def pending(self) -> list[ApprovalStatus]:
        """This caller's open (pending or approved, unused) approvals."""
        return await self._send(protocol.pending_call())

    async def health(self) -> Health:
        return await self._send(protocol.health_call())

    async def manifest(self) -> dict[str, Any]:
        """The tools this caller may request, as the agent describes them."""
        return await self._send(protocol.manifest_call())

    async def _send(self, call: protocol.Call[T]) -> T:
        try:
            response = await self._http.request(call.method, call.path, json=call.body)
        except httpx.HTTPError as exc:
            raise transport.converted(exc, self.config) from exc
        return call.parse(protocol.decode(response))


@dataclass(frozen=True, kw_only=True)
class AsyncPendingApproval(ApprovalTicket):
    """`PendingApproval` for asyncio: `await wait(...)`."""

    client: AsyncClient = field(repr=False, compare=False)

    async def wait(
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
            status = await self.client.approval(self.approval_id, wait=hold)
            if on_status is not None:
                on_status(status)
            delay = patience.next_poll(status)
            if delay is None:
                call = protocol.resubmit_call(self.request, self.approval_id)
                return await self.client._send(call)
            # An agent that held the request answered as it ended; one that does not hold
            # (an older one) answered at once: wait out the rest here.
            await asyncio.sleep(max(0.0, hold - (time.monotonic() - asked)))
            hold = delay
