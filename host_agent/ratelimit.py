"""Per-CN request limits: token buckets, bounded in memory.

Three classes of request, each with its own bucket per CN: `read` (read-only
operations), `mutating` (operations that change the host) and `approval`
(the approval routes). The predecessor's `[rate_limit] endpoints` keep their
meaning too: `max_requests` per `window_seconds` per CN on each listed path.
At most `max_tracked` buckets are kept; the least recently used go first
(a CN that comes back starts with a full bucket, which errs on serving).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from host_agent.config import Limit, RateLimitConfig
from host_agent.errors import RequestError


class RateLimited(RequestError):
    """Too many requests of this class from this CN; retry after `retry_after` seconds."""

    status = 429
    code = "rate_limited"

    def __init__(self, limit: str, retry_after: int) -> None:
        super().__init__(f"too many {limit} requests from this client; retry in {retry_after}s")
        self.limit = limit
        self.retry_after = retry_after


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(
        self, config: RateLimitConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self.clock = clock
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, cn: str, limit: str, path: str | None = None) -> None:
        """Take one request from `cn`'s `limit` bucket (and `path`'s, if a listed endpoint)."""
        if not self.config.enabled:
            return
        self._take(cn, limit, self._limit(limit))
        if path is not None and path in self.config.endpoints:
            endpoint = Limit(self.config.max_requests, self.config.window_seconds)
            self._take(cn, f"endpoint {path}", endpoint, counted_as="endpoint")

    def _limit(self, name: str) -> Limit:
        limits = {
            "read": self.config.read,
            "mutating": self.config.mutating,
            "approval": self.config.approval,
            "refusals": self.config.refusals,
        }
        return limits[name]

    def _take(self, cn: str, key: str, limit: Limit, counted_as: str | None = None) -> None:
        rate = limit.requests / limit.per_seconds
        now = self.clock()
        with self._lock:
            bucket = self._buckets.pop((cn, key), None) or _Bucket(limit.requests, now)
            bucket.tokens = min(limit.requests, bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
            self._buckets[(cn, key)] = bucket
            while len(self._buckets) > self.config.max_tracked:
                self._buckets.popitem(last=False)
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return
            wait = (1 - bucket.tokens) / rate
        raise RateLimited(counted_as or key, max(1, math.ceil(wait)))

    @property
    def tracked(self) -> int:
        return len(self._buckets)
