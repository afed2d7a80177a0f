"""Rate limits at the gateway: a token bucket per chat user of an agent."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

MAX_BUCKETS = 100_000  # oldest forgotten first: a forgotten bucket starts full again


@dataclass
class _Bucket:
    tokens: float
    at: float


class UserRateLimiter:
    """`burst` requests at once, then `per_minute` a minute, per (agent, chat user)."""

    def __init__(
        self, *, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._clock = clock
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()

    def allow(self, agent_id: str, user: str) -> float:
        """0 if allowed now (and counted); else seconds until the next request may pass."""
        now = self._clock()
        key = (agent_id, user)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self._burst, now)
            while len(self._buckets) > MAX_BUCKETS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.at) * self._rate)
            bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self._rate
