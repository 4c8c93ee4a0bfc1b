"""A log-linear latency histogram in the manner of HdrHistogram: fixed relative precision.

Values are non-negative integers (the load tester records microseconds). Values below
``2 * SUB_BUCKETS`` are counted exactly; above, each power of two is split into
``SUB_BUCKETS`` equal buckets, so any value is known to within ``1 / SUB_BUCKETS`` of itself
(0.8 % with 128). Counts are kept sparse, so a histogram per second of a long run stays small,
and histograms merge by adding counts (per-interval into the total, or across generator
processes).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

__all__ = ["SUB_BUCKETS", "Histogram"]

SUB_BUCKETS = 128
"""Buckets per power of two; the relative error of a percentile is at most 1/SUB_BUCKETS."""

_SHIFT = SUB_BUCKETS.bit_length()  # 8: values below 2**_SHIFT (= 2 * SUB_BUCKETS) are exact
_EXACT = 1 << _SHIFT


def bucket_index(value: int) -> int:
    """The bucket ``value`` falls in; exact below ``2 * SUB_BUCKETS``."""
    if value < _EXACT:
        return value
    e = value.bit_length() - _SHIFT
    return SUB_BUCKETS * e + (value >> e)


def bucket_bounds(index: int) -> tuple[int, int]:
    """The smallest and the largest value counted in bucket ``index``."""
    if index < _EXACT:
        return index, index
    e = index // SUB_BUCKETS - 1
    mantissa = index - SUB_BUCKETS * e
    low = mantissa << e
    return low, low + (1 << e) - 1


class Histogram:
    """Counts of non-negative integer values with bounded relative error."""

    __slots__ = ("counts", "count", "total", "min", "max")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.total = 0
        self.min: int | None = None
        self.max = 0

    def record(self, value: int) -> None:
        if value < 0:
            raise ValueError(f"a histogram counts non-negative values, not {value}")
        i = value if value < _EXACT else SUB_BUCKETS * (value.bit_length() - _SHIFT) + (
            value >> (value.bit_length() - _SHIFT))
        counts = self.counts
        counts[i] = counts.get(i, 0) + 1
        self.count += 1
        self.total += value
        if value > self.max:
            self.max = value
        if self.min is None or value < self.min:
            self.min = value

    def merge(self, other: Histogram) -> None:
        counts = self.counts
        for i, n in other.counts.items():
            counts[i] = counts.get(i, 0) + n
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)
        if other.min is not None and (self.min is None or other.min < self.min):
            self.min = other.min

    def percentile(self, p: float) -> int:
        """The nearest-rank ``p``-th percentile (0 < p <= 100): the smallest recorded value with
        at least ``p`` % of the values at or below it, to within 1/SUB_BUCKETS. 0 when empty."""
        if not 0 < p <= 100:
            raise ValueError(f"percentile must be in (0, 100], not {p}")
        if not self.count:
            return 0
        rank = max(1, math.ceil(p / 100 * self.count))
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                low, high = bucket_bounds(i)
                # The bucket's middle, clamped to what was actually recorded.
                assert self.min is not None
                return min(max((low + high) // 2, self.min), self.max)
        return self.max

    def percentiles(self, ps: Iterable[float]) -> dict[float, int]:
        return {p: self.percentile(p) for p in ps}

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready form (bucket index → count) that :meth:`from_dict` reads back."""
        return {"count": self.count, "total": self.total, "min": self.min, "max": self.max,
                "counts": {str(i): n for i, n in sorted(self.counts.items())}}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Histogram:
        h = cls()
        h.counts = {int(i): int(n) for i, n in dict(data["counts"]).items()}  # type: ignore[arg-type]
        h.count = int(data["count"])  # type: ignore[arg-type]
        h.total = int(data["total"])  # type: ignore[arg-type]
        h.min = None if data["min"] is None else int(data["min"])  # type: ignore[arg-type]
        h.max = int(data["max"])  # type: ignore[arg-type]
        return h
