"""The pool's choice policy, pure: which modem takes a send, SIM rates, daily quotas.

No clock of its own: every function takes ``now`` (seconds, the pool's
:func:`trio.current_time`) or a wall-clock :class:`~datetime.datetime`. No trio, no logging,
so the policy is tested exhaustively with plain inputs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, tzinfo

__all__ = [
    "RATE_BURST",
    "Candidate",
    "DailyCount",
    "TokenBucket",
    "choose",
    "local_day",
]

#: Sends a SIM may make back to back after a quiet spell (the token bucket's depth).
RATE_BURST = 1.0
# Float slack: after waiting exactly what :meth:`TokenBucket.wait` said, a token is there.
_EPSILON = 1e-9


class TokenBucket:
    """A SIM's send rate: ``rate_per_minute`` tokens a minute, at most ``burst`` saved up.

    Over any window of ``w`` seconds at most ``burst + w * rate_per_minute / 60`` sends take a
    token. Time only moves forward: an earlier ``now`` than the last one counts as the last.
    """

    __slots__ = ("rate_per_minute", "burst", "_tokens", "_updated")

    def __init__(self, rate_per_minute: float, *, burst: float = RATE_BURST, now: float | None = None) -> None:
        if rate_per_minute <= 0:
            raise ValueError("rate_per_minute must be positive")
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate_per_minute = rate_per_minute
        self.burst = burst
        self._tokens = burst
        self._updated = now

    def _refill(self, now: float) -> None:
        if self._updated is None or now <= self._updated:
            self._updated = now if self._updated is None else self._updated
            return
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate_per_minute / 60.0)
        self._updated = now

    def tokens(self, now: float) -> float:
        self._refill(now)
        return self._tokens

    def wait(self, now: float) -> float:
        """Seconds from ``now`` until a token is there (0 when one is)."""
        self._refill(now)
        if self._tokens >= 1.0 - _EPSILON:
            return 0.0
        return (1.0 - self._tokens) * 60.0 / self.rate_per_minute

    def take(self, now: float) -> bool:
        """Take a token if one is there; returns whether it was."""
        self._refill(now)
        if self._tokens < 1.0 - _EPSILON:
            return False
        self._tokens -= 1.0
        return True


def local_day(now: datetime, zone: tzinfo) -> str:
    """The calendar day of ``now`` (an aware datetime) in ``zone``, ISO format."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(zone).date().isoformat()


@dataclass(slots=True)
class DailyCount:
    """Parts a SIM sent on ``day`` (a local day, :func:`local_day`); a new day starts at 0."""

    day: str = ""
    sent: int = 0

    def roll(self, day: str) -> None:
        if day != self.day:
            self.day = day
            self.sent = 0

    def seed(self, day: str, sent: int) -> None:
        """Counts found elsewhere (the database at start) for ``day``: the larger wins.

        A day older than the one counted is ignored (ISO dates order as strings)."""
        if self.day and day < self.day:
            return
        self.roll(day)
        self.sent = max(self.sent, sent)


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """What the policy needs to know of one modem at the moment of choice."""

    name: str
    operators: frozenset[str]
    healthy: bool
    load: int
    """Sends queued on the modem plus the one in flight."""
    quota_room: int
    """Parts the SIM may still send today, queued ones already deducted."""
    token_wait: float
    """Seconds until the SIM's rate allows its next send."""


def choose(candidates: Iterable[Candidate], operator: str, parts: int, *, max_load: int) -> str | None:
    """The modem that takes a send of ``parts`` parts to ``operator``, or ``None``.

    Only healthy modems serving the operator, with ``load < max_load`` and quota for every
    part, qualify. Among them the least loaded wins; then the one whose rate allows a send
    soonest; then the one with the most quota left; then the first given (stable).
    """
    best: tuple[int, float, int] | None = None
    chosen = None
    for c in candidates:
        if not c.healthy or operator not in c.operators:
            continue
        if c.load >= max_load or c.quota_room < parts:
            continue
        key = (c.load, c.token_wait, -c.quota_room)
        if best is None or key < best:
            best, chosen = key, c.name
    return chosen
