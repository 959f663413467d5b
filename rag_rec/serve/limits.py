"""Admission control for the API: per-client token buckets and an in-flight counter that sheds load."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class RateLimiter:
    """Token bucket per client key: `per_minute` requests a minute, bursts up to `per_minute`.

    Memory is bounded: the least recently seen clients are forgotten past `max_clients`.
    """

    per_minute: int
    max_clients: int = 10_000
    clock: Callable[[], float] = time.monotonic
    _buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict, repr=False)

    def acquire(self, key: str) -> float | None:
        """Take one token for `key`; None when allowed, else the seconds to wait before retrying."""
        now = self.clock()
        rate = self.per_minute / 60.0
        bucket = self._buckets.pop(key, None) or _Bucket(tokens=float(self.per_minute), updated=now)
        bucket.tokens = min(float(self.per_minute), bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        self._buckets[key] = bucket
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / rate if rate > 0 else math.inf


@dataclass
class ConcurrencyLimiter:
    """Counts requests in flight on one event loop; `try_enter` refuses past `limit`."""

    limit: int
    in_flight: int = 0

    def try_enter(self) -> bool:
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
