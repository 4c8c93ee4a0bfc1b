"""Rate limits as pure policy: token buckets and daily quotas, fed the time by the caller.

A send request of n recipients takes n tokens. A request larger than the bucket's burst may
go when the bucket is full and leaves it in debt, so the average rate holds exactly and a
big batch is never refused for its size alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date


@dataclass(slots=True)
class TokenBucket:
    rate: float
    """Tokens per second."""
    burst: float
    tokens: float = math.nan
    stamp: float = 0.0

    def __post_init__(self) -> None:
        if not self.rate > 0 or not self.burst >= 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        if math.isnan(self.tokens):
            self.tokens = self.burst

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, n: float, now: float) -> float:
        """Take ``n`` tokens and return 0.0, or return the seconds until they could be taken."""
        self._refill(now)
        need = min(n, self.burst)
        if self.tokens + 1e-9 >= need:
            self.tokens -= n
            return 0.0
        return (need - self.tokens) / self.rate

    def delay(self, now: float) -> float:
        """Seconds until one token is available (0.0 if one is available now)."""
        self._refill(now)
        return 0.0 if self.tokens + 1e-9 >= 1 else (1 - self.tokens) / self.rate

    def give_back(self, n: float) -> None:
        """Return tokens taken for work that did not happen."""
        self.tokens = min(self.burst, self.tokens + n)


@dataclass(slots=True)
class DailyQuota:
    limit: int
    day: date | None = None
    used: int = 0
    """Messages counted against ``day``, including those reserved by requests in flight."""

    def needs_seed(self, day: date) -> bool:
        return self.day != day

    def seed(self, day: date, used: int) -> None:
        self.day, self.used = day, used

    def reserve(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        self.used += n
        return True

    def release(self, n: int) -> None:
        self.used = max(0, self.used - n)


@dataclass(slots=True)
class AccountLimiter:
    """One account's limits on this node."""

    bucket: TokenBucket | None = None
    quota: DailyQuota | None = None
