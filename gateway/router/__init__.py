"""Routing policy: pure rules the dispatcher applies (no I/O)."""

from .quiet_hours import QuietHours

__all__ = ["QuietHours"]
