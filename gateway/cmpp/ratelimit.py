"""A token bucket, sans-IO: the caller passes the time (``trio.current_time()`` in drivers).

Used for the per-link submit rate of the SP side and the per-connection limit of the ISMG
simulator (cmpp.md "Timing and flow": operators limit each SP to a contracted rate).
"""

from __future__ import annotations

from gateway.cmpp.errors import LocalProtocolError

__all__ = ["TokenBucket"]

#: Float slack: after sleeping exactly delay() the token must be there, rounding or not.
_EPSILON = 1e-9
#: Relative float slack: ``now + delay`` rounds to the resolution of ``now`` (about 2.2e-16
#: of it), which is ``rate`` times as much in tokens; this covers it with room to spare.
_RELATIVE_EPSILON = 1e-15


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst`` (default: one second's worth)."""

    def __init__(self, rate: float, burst: float | None = None, *, now: float = 0.0) -> None:
        if rate <= 0:
            raise LocalProtocolError(f"rate must be > 0, not {rate}")
        self.rate = float(rate)
        self.burst = float(burst) if burst is not None else max(1.0, self.rate)
        if self.burst < 1:
            raise LocalProtocolError(f"burst must be >= 1, not {burst}")
        self._tokens = self.burst
        self._stamp = now

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def tokens(self, now: float) -> float:
        self._refill(now)
        return self._tokens

    def _slack(self, now: float) -> float:
        return _EPSILON + abs(now) * self.rate * _RELATIVE_EPSILON

    def delay(self, now: float) -> float:
        """Seconds until one token is available (0.0 if one is available now)."""
        self._refill(now)
        if self._tokens >= 1 - self._slack(now):
            return 0.0
        return (1 - self._tokens) / self.rate

    def try_take(self, now: float) -> bool:
        """Take one token if available."""
        self._refill(now)
        if self._tokens >= 1 - self._slack(now):
            self._tokens = max(0.0, self._tokens - 1)
            return True
        return False
