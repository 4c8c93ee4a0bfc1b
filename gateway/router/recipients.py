"""Per-recipient limits: at most N messages to one number in any hour and M in any day (pure).

The windows slide: "an hour" is any 60 minutes, "a day" any 24 hours, so no burst at the turn
of a clock hour doubles the limit. The caller (the dispatcher, through the store) passes the
times of the sends already counted for each number, across every gateway node, and the time
now; :meth:`RecipientLimit.admit` says which candidates may go and how long the others wait.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence

import msgspec

__all__ = ["HOUR", "DAY", "Admission", "RecipientLimit"]

HOUR = 3600.0
DAY = 86400.0


class Admission(msgspec.Struct, frozen=True):
    allowed: list[int]
    """Candidate ids that may be sent now (count them as sent)."""
    waits: dict[int, float]
    """Candidate ids that must wait, with the seconds until their window allows one more."""


class RecipientLimit(msgspec.Struct, frozen=True, kw_only=True):
    per_hour: int = 0
    """0 means no hourly limit."""
    per_day: int = 0
    """0 means no daily limit."""

    @property
    def enabled(self) -> bool:
        return self.per_hour > 0 or self.per_day > 0

    def admit(self, candidates: Sequence[tuple[int, str]], history: Mapping[str, Sequence[float]],
              now: float) -> Admission:
        """``candidates``: (message id, number) in the order they would be sent; ``history``:
        per number, the times (seconds) of sends counted within the last day; ``now`` in the
        same clock. Earlier candidates take the room first."""
        times = {dest: sorted(t for t in ts if t > now - DAY) for dest, ts in history.items()}
        allowed: list[int] = []
        waits: dict[int, float] = {}
        for message_id, dest in candidates:
            sent = times.setdefault(dest, [])
            wait = max(self._wait(sent, now, self.per_hour, HOUR), self._wait(sent, now, self.per_day, DAY))
            if wait > 0:
                waits[message_id] = wait
            else:
                allowed.append(message_id)
                bisect.insort(sent, now)
        return Admission(allowed=allowed, waits=waits)

    @staticmethod
    def _wait(sent: list[float], now: float, limit: int, span: float) -> float:
        """Seconds until fewer than ``limit`` of ``sent`` fall within ``span`` before the time."""
        if limit <= 0:
            return 0.0
        window = sent[bisect.bisect_right(sent, now - span):]
        if len(window) < limit:
            return 0.0
        # The send that must leave the window for one more to fit.
        return max(window[len(window) - limit] + span - now, 1e-3)
