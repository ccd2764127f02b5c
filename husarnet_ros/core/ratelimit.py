"""The handshake rate limiter: a token bucket per source host, in a bounded table (least recently used
evicted), checked before any parsing or cryptography."""

from __future__ import annotations

import collections

from .constants import HANDSHAKE_INIT_BURST, HANDSHAKE_INITS_PER_SECOND, RATE_LIMIT_TABLE_SIZE


class TokenBucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, now: float) -> None:
        self.tokens = HANDSHAKE_INIT_BURST
        self.updated = now

    def take(self, now: float) -> bool:
        refill = (now - self.updated) * HANDSHAKE_INITS_PER_SECOND
        self.tokens = min(HANDSHAKE_INIT_BURST, self.tokens + refill)
        self.updated = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class RateLimiter:
    """``allow(host, now)``: may this source host start (or retransmit) a handshake now?"""

    def __init__(self, table_size: int = RATE_LIMIT_TABLE_SIZE) -> None:
        self._table_size = table_size
        self._buckets: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()

    def allow(self, host: str, now: float) -> bool:
        bucket = self._buckets.get(host)
        if bucket is None:
            if len(self._buckets) >= self._table_size:
                self._buckets.popitem(last=False)
            bucket = self._buckets[host] = TokenBucket(now)
        else:
            self._buckets.move_to_end(host)
        return bucket.take(now)
