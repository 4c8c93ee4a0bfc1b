"""Routing policy: pure rules the dispatcher applies (no I/O)."""

from .limits import AccountLimiter, DailyQuota, TokenBucket
from .quiet_hours import QuietHours
from .recipients import Admission, RecipientLimit
from .routing import RouteRule, RouteTable, RoutingError

__all__ = ["AccountLimiter", "Admission", "DailyQuota", "QuietHours", "RecipientLimit", "RouteRule",
           "RouteTable", "RoutingError", "TokenBucket"]
