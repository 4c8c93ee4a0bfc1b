"""Quiet hours: the local span of the day in which marketing messages wait.

Chinese rules and good manners both keep promotional SMS out of the night; one-time codes
and other transactional messages are never held. The span may cross midnight
("21:00-08:00"); start equal to end, or an empty span, means no quiet hours.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from datetime import datetime, time, timedelta


@dataclass(frozen=True, slots=True)
class QuietHours:
    start: time | None
    end: time | None
    zone: zoneinfo.ZoneInfo

    @classmethod
    def parse(cls, span: str, zone: str) -> QuietHours:
        tz = zoneinfo.ZoneInfo(zone)
        if not span:
            return cls(None, None, tz)
        a, b = span.split("-")
        start, end = time.fromisoformat(a), time.fromisoformat(b)
        return cls(start, end, tz) if start != end else cls(None, None, tz)

    def active(self, at: datetime) -> bool:
        """Whether ``at`` (an aware datetime) falls in the quiet span, read in the zone."""
        if self.start is None or self.end is None:
            return False
        local = at.astimezone(self.zone).time()
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def remaining(self, at: datetime) -> float:
        """Seconds from ``at`` until the quiet span ends (0.0 when it is not active)."""
        if not self.active(at) or self.end is None:
            return 0.0
        local = at.astimezone(self.zone)
        end = local.replace(hour=self.end.hour, minute=self.end.minute, second=0, microsecond=0)
        if end <= local:
            end += timedelta(days=1)
        return (end - local).total_seconds()
