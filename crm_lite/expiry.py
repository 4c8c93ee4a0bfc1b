"""Scheduled points expiry: every merchant whose points expire (``points_expire_days`` in its
settings) has its old points expired once a day, with nobody calling the REST endpoint.

The rule a shop's loyalty programme states as "points are valid for N days": points earned
on a local day D (``dispatcher.timezone``) stay valid through day D + N and are gone when day
D + N + 1 starts. A run on local day T therefore expires, first in first out
(:func:`crm_lite.points.expire`), what was earned before midnight starting day T − N and is
still unspent.

A run is keyed by the local day and the rule, ``auto-<T>-<N>d``, and each member's expiry by
``expire:<run>:<member id>`` in the ledger, whose keys are unique per merchant. A second run
the same day (a restart, a shorter ``expiry_interval``, another node running the same service)
finds every key used and changes nothing; two nodes running at the same moment serialize on
each member's balance lock, and the second sees the first's transaction. Changing the rule
mid-day starts a new run key, and the FIFO arithmetic (the earlier expiry counts as a debit)
still never takes a point twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import trio

from gateway.errors import GatewayError
from gateway.store import Store

from .points import ExpiryRun, expire

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 86_400.0
"""Seconds between two expiry rounds: once a day."""
RUN_PREFIX = "auto"


def run_key(day: date, days: int) -> str:
    """The key of the scheduled run on local ``day`` under an ``days``-day rule."""
    return f"{RUN_PREFIX}-{day.isoformat()}-{days}d"


def cutoff_for(day: date, days: int, tz: ZoneInfo) -> datetime:
    """Points earned before this instant expire in the run on local ``day`` (midnight starting
    day ``day - days``, in ``tz``)."""
    return datetime.combine(day - timedelta(days=days), time(), tzinfo=tz)


async def expire_all(store: Store, *, day: date, tz: ZoneInfo) -> tuple[list[ExpiryRun], int]:
    """Run the expiry of local ``day`` for every merchant whose points expire.

    Returns the runs done and the number of merchants whose run failed (logged; the next
    round tries them again under the same key)."""
    rows = await store.fetch("SELECT merchant_id, points_expire_days FROM crm_settings"
                             " WHERE points_expire_days IS NOT NULL ORDER BY merchant_id")
    runs: list[ExpiryRun] = []
    failed = 0
    for row in rows:
        merchant_id, days = row["merchant_id"], row["points_expire_days"]
        run = run_key(day, days)
        try:
            result = await expire(store, merchant_id, cutoff=cutoff_for(day, days, tz), run=run)
        except GatewayError as exc:
            failed += 1
            log.warning("points expiry failed merchant_id=%d run=%s error=%s: %s", merchant_id, run,
                        type(exc).__name__, exc)
            continue
        runs.append(result)
        if result.points:
            log.info("points expired merchant_id=%d run=%s members=%d points=%d", merchant_id, run,
                     result.members, result.points)
    return runs, failed


class PointsExpiry:
    """The service: a round at start, then one every ``interval`` seconds (trio's clock).

    ``now`` gives the wall-clock time whose local date names the run (default: the real one);
    ``metrics``, when given, counts points expired and rounds by result."""

    def __init__(self, store: Store, *, interval: float = DEFAULT_INTERVAL_S, timezone: str = "Asia/Shanghai",
                 metrics=None, now: Callable[[], datetime] | None = None) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._store = store
        self._interval = interval
        self._tz = ZoneInfo(timezone)
        self._metrics = metrics
        self._now = now or (lambda: datetime.now(self._tz))
        self._rounds = 0
        self._expired = 0
        self._round_done = trio.Event()

    def statistics(self) -> dict[str, int]:
        """``rounds`` finished (failed or not) and ``points`` expired since start."""
        return {"rounds": self._rounds, "points": self._expired}

    async def wait_rounds(self, n: int) -> None:
        """Return once ``n`` rounds have finished since start."""
        while self._rounds < n:
            await self._round_done.wait()

    async def run_once(self) -> list[ExpiryRun]:
        """One round for today's local date; never raises for a database failure."""
        day = self._now().astimezone(self._tz).date()
        try:
            runs, failed = await expire_all(self._store, day=day, tz=self._tz)
        except GatewayError as exc:
            runs, failed = [], 1
            log.warning("points expiry round failed day=%s error=%s: %s", day, type(exc).__name__, exc)
        points = sum(r.points for r in runs)
        self._expired += points
        if self._metrics is not None:
            self._metrics.count_points_expiry(points, failed=bool(failed))
        self._rounds += 1
        self._round_done.set()
        self._round_done = trio.Event()
        return runs

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self.run_once()
            await trio.sleep(self._interval)
