"""Open-loop arrival schedules: when each request is meant to start, whatever came before.

A :class:`RateProfile` is a piecewise-linear rate over time (a constant rate, a ramp, or a
day-shaped curve); :func:`arrivals` turns it into intended start times, offsets in seconds
from the run's start. The generator starts request *i* at ``t0 + arrivals[i]`` and measures
its latency from that instant, not from when a connection came free, so a stalled server
shows up in the latency instead of slowing the schedule down (coordinated omission, as wrk2
corrects it). Pure: no clock, no I/O.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["MIN_RATE", "RateProfile", "arrivals", "constant", "ramp", "day_shape"]

_EPSILON = 1e-9
MIN_RATE = 0.01
"""Requests per second below which a profile is treated as silent until its rate rises."""

#: A day compressed into a run: (fraction of the run, fraction of the peak rate). Quiet night,
#: a morning rise, a lunchtime peak, an afternoon lull, the evening promotion peak, late calm.
DAY_SHAPE: tuple[tuple[float, float], ...] = (
    (0.00, 0.05), (0.25, 0.05), (0.35, 0.60), (0.45, 1.00), (0.55, 0.55),
    (0.70, 0.65), (0.80, 1.00), (0.90, 0.35), (1.00, 0.05),
)


@dataclass(frozen=True, slots=True)
class RateProfile:
    """Rate (per second) at given times (seconds from the start), linear in between and
    constant after the last point; ``duration`` ends the schedule."""

    points: tuple[tuple[float, float], ...]
    duration: float

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("a rate profile needs at least one point")
        times = [t for t, _ in self.points]
        if times != sorted(times) or times[0] != 0.0:
            raise ValueError("profile points must start at 0 and be in time order")
        if any(r < 0 for _, r in self.points):
            raise ValueError("rates cannot be negative")
        if self.duration <= 0:
            raise ValueError("a schedule needs a positive duration")

    def rate(self, t: float) -> float:
        pts = self.points
        i = bisect.bisect_right([p[0] for p in pts], t) - 1
        if i >= len(pts) - 1:
            return pts[-1][1]
        (t0, r0), (t1, r1) = pts[i], pts[i + 1]
        if t1 == t0:
            return r1
        return r0 + (r1 - r0) * (t - t0) / (t1 - t0)

    @property
    def peak(self) -> float:
        return max(r for _, r in self.points)

    def expected(self) -> float:
        """How many arrivals the profile holds over its duration (the rate's integral)."""
        pts = list(self.points)
        if pts[-1][0] < self.duration:
            pts.append((self.duration, pts[-1][1]))
        total = 0.0
        for (t0, r0), (t1, r1) in zip(pts, pts[1:]):
            if t0 >= self.duration:
                break
            end = min(t1, self.duration)
            r_end = r0 + (r1 - r0) * ((end - t0) / (t1 - t0)) if t1 > t0 else r1
            total += (r0 + r_end) / 2 * (end - t0)
        return total


def constant(rate: float, duration: float) -> RateProfile:
    return RateProfile(((0.0, rate),), duration)


def ramp(rate: float, duration: float, ramp_s: float) -> RateProfile:
    """From nothing to ``rate`` over ``ramp_s`` seconds, then steady."""
    if ramp_s <= 0:
        return constant(rate, duration)
    return RateProfile(((0.0, 0.0), (ramp_s, rate)), duration)


def day_shape(peak: float, duration: float) -> RateProfile:
    """A day's traffic (:data:`DAY_SHAPE`) compressed into ``duration`` seconds."""
    return RateProfile(tuple((f * duration, s * peak) for f, s in DAY_SHAPE), duration)


def arrivals(profile: RateProfile, count: int | None = None) -> Iterator[float]:
    """Intended start offsets: the i-th arrival comes when the integral of the rate reaches i
    (to first order: each gap is the reciprocal of the rate at its start). Stops after
    ``count`` arrivals or at the profile's duration, whichever is first."""
    t = 0.0
    n = 0
    rate_at = profile.rate
    duration = profile.duration - _EPSILON  # sums of 1/rate drift: 10 x 0.1 is 0.99999...
    step_silent = 0.01
    while count is None or n < count:
        r = rate_at(t)
        if r < MIN_RATE:
            t += step_silent  # silent stretch: look again a little later
            if t >= duration:
                return
            continue
        if t >= duration:
            return
        yield t
        n += 1
        t += 1.0 / r
