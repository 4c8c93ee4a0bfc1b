"""Routing policy: pure rules the dispatcher applies (no I/O)."""

from .limits import AccountLimiter, DailyQuota, TokenBucket
from .quiet_hours import QuietHours

__all__ = ["AccountLimiter", "DailyQuota", "QuietHours", "TokenBucket"]
