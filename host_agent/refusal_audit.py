"""Refusals made before any decision reach the audit log at a bounded rate per source.

A malformed body, a rate-limited request, an approver turned away: each is audited.
Unbounded, any certificate the CA ever signed could fill the disk and cost an fsync
per request, and a full log stops every operation. So each source (a CN, a Signal
number, a local approver) has a bucket, `[rate_limit.refusals]`. Past it a refusal is
counted instead of written: the first of a run writes a `refusals_suppressed` marker,
and the count goes into the source's next written refusal as `suppressed_before` (or
into a marker at shutdown). What the client is answered does not change, and the
metrics count every refusal. Decisions are never counted instead of written: an
unknown CN's deny decisions are bounded by its read limit (then 429, a refusal).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from host_agent.audit import AuditLog
from host_agent.config import RateLimitConfig
from host_agent.metrics import Metrics
from host_agent.ratelimit import RateLimited, RateLimiter


class RefusalAudit:
    def __init__(
        self,
        audit: AuditLog,
        config: RateLimitConfig,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.audit = audit
        self.metrics = metrics
        self.limiter = RateLimiter(config, clock=clock)
        # Refusals counted but not yet written, by source; bounded like the buckets.
        self._suppressed: OrderedDict[str, int] = OrderedDict()

    def reconfigure(self, config: RateLimitConfig) -> None:
        self.limiter.config = config

    async def write(self, source: str, record: dict[str, Any]) -> None:
        """Audit `record`, a refusal of `source`'s, unless `source` is over its budget."""
        try:
            self.limiter.check(source, "refusals")
        except RateLimited as exc:
            self.metrics.refusals_suppressed.inc()
            earlier = self._count(source)
            if earlier == 1:  # the first of a run says so, once
                await self.audit.write(
                    {
                        "event": "refusals_suppressed",
                        "source": source,
                        "code": record.get("code"),
                        "resumes_in_seconds": exc.retry_after,
                    }
                )
            return
        earlier = self._suppressed.pop(source, 0)
        await self.audit.write({**record, "suppressed_before": earlier} if earlier else record)

    async def flush(self) -> None:
        """At shutdown: write the counts that no later refusal carried."""
        while self._suppressed:
            source, count = self._suppressed.popitem(last=False)
            await self.audit.write(
                {"event": "refusals_suppressed", "source": source, "count": count}
            )

    def _count(self, source: str) -> int:
        count = self._suppressed.pop(source, 0) + 1
        self._suppressed[source] = count
        while len(self._suppressed) > self.limiter.config.max_tracked:
            self._suppressed.popitem(last=False)  # the metric still counted them
        return count
