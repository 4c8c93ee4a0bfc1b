"""The outbound queue: the claim, leases, messages given back, and the queue's statistics.

Dispatchers on any node claim due messages with one statement (``FOR UPDATE SKIP LOCKED``
under a lease; :func:`claim_statement`). A message leaves the queue in the statement that
takes it to a final state (:mod:`gateway.store.status`).
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import trio

from ..channel import OutboundMessage
from ..text import plan
from .core import StoreCore
from .status import _aio_set_status

QUEUE_STATS_SHARE = 0.05
"""The largest share of the time the queue's statistics may keep one database connection busy:
a reading is reused for 1/share times as long as it took (with a deep queue the count takes a
while, and /metrics may be scraped every second)."""
QUEUE_STATS_MIN_AGE = 1.0
"""Seconds a reading of the queue's statistics is reused however fast it was."""

CLAIM_PRIORITIES = (3, 2, 1, 0)
"""The message priorities (``messages.priority`` is checked to 0..3), in the claim's order."""
CLAIM_CLASSES = ("transactional", "marketing")
"""The message classes, in the claim's order within a priority."""

_CLAIM_TEMPLATE = """
WITH free AS (
    SELECT f.message_id, f.priority, f.class, f.not_before
    FROM (VALUES {lanes}) AS lane(priority, class)
    CROSS JOIN LATERAL (
        SELECT q.message_id, q.priority, q.class, q.not_before FROM outbound_queue q
        WHERE q.leased_by IS NULL AND q.priority = lane.priority AND q.class = lane.class
          AND q.not_before <= now()
        ORDER BY q.not_before, q.message_id
        LIMIT $1
        FOR UPDATE SKIP LOCKED
    ) f
    LIMIT $1
),
lapsed AS (
    SELECT q.message_id, q.priority, q.class, q.not_before FROM outbound_queue q
    WHERE q.leased_by IS NOT NULL AND q.lease_until < now() {only}
    ORDER BY q.priority DESC, q.class DESC, q.not_before, q.message_id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
),
c AS (
    SELECT message_id FROM (SELECT * FROM free UNION ALL SELECT * FROM lapsed) x
    ORDER BY priority DESC, class DESC, not_before, message_id
    LIMIT $1
),
u AS (
    UPDATE outbound_queue q
    SET leased_by = $2, lease_until = now() + make_interval(secs => $3), attempts = q.attempts + 1
    WHERE q.message_id = ANY(ARRAY(SELECT message_id FROM c))
    RETURNING q.message_id, q.attempts, q.last_channel, q.class, q.not_before
)
SELECT m.id, m.account_id, m.dest, m.operator, m.body, m.encoding, m.parts, m.priority,
       m.class, m.sender, m.expires_at, u.attempts, u.last_channel
FROM u CROSS JOIN LATERAL (SELECT * FROM messages m WHERE m.id = u.message_id OFFSET 0) m
ORDER BY m.priority DESC, u.class DESC, u.not_before, u.message_id
"""
# Free rows come from the partial index ``outbound_queue_due`` (migration 0014), one lane
# (priority, class) after the other: a nested loop over the lanes that stops once it has
# enough. Each lane's scan starts at its oldest due row and ends at ``not_before <= now()``,
# an index bound, so rows waiting for a later time are never read, and rows leased by a
# dispatcher (in flight) are not in that index at all. During quiet hours the marketing lanes
# are left out, so the marketing rows are not read either. Leases that ran out (a node died)
# come from ``outbound_queue_leased``, normally empty. The claimed rows and their messages are
# then fetched by primary key (``= ANY(ARRAY(...))`` and a LATERAL lookup that the planner
# cannot turn into a hash join over the whole table), whatever the queue's depth.
# The order: priority, then transactional before marketing ('transactional' > 'marketing'),
# then the order the messages became due (``not_before``, then id).
_CLAIM_ROUTABLE = _CLAIM_TEMPLATE.format(
    lanes=", ".join(f"({p}, '{c}')" for p in CLAIM_PRIORITIES for c in CLAIM_CLASSES), only="")
"""The claim (highest priority first), returning each message's ``last_channel`` too."""
_CLAIM_ROUTABLE_TRANSACTIONAL = _CLAIM_TEMPLATE.format(
    lanes=", ".join(f"({p}, 'transactional')" for p in CLAIM_PRIORITIES), only="AND q.class <> 'marketing'")
"""The same during quiet hours: marketing messages stay in the queue, unread."""


def claim_statement(marketing: bool = True) -> str:
    """The claim statement (``$1`` limit, ``$2`` node, ``$3`` lease seconds), for operators'
    ``EXPLAIN`` and the claim benchmark; without ``marketing``, the quiet-hours one."""
    return _CLAIM_ROUTABLE if marketing else _CLAIM_ROUTABLE_TRANSACTIONAL

_RETRY_LATER = """
UPDATE outbound_queue q SET leased_by = NULL, lease_until = NULL, last_channel = t.channel,
    not_before = now() + make_interval(secs => CASE WHEN cardinality($3::float8[]) = 0 THEN 0
        ELSE ($3::float8[])[least(greatest(q.attempts, 1), cardinality($3::float8[]))] END)
FROM unnest($1::bigint[], $2::text[]) AS t(id, channel)
WHERE q.message_id = t.id
"""


def _parts(body: str, parts: int) -> tuple[str, ...]:
    """The parts a claimed text goes out in. A text stored as one part is its own plan (the
    intake planned it so: :func:`~gateway.text.plan` returns a fitting text whole); only a
    long text is cut again, with the same rules as at acceptance."""
    if parts == 1:
        return (body,)
    return plan(body, max_parts=255).parts


class QueueStore(StoreCore):
    """Claims, leases and retries of queued messages; the queue's depth and age."""

    async def claim(self, node: str, limit: int, lease: float, *, marketing: bool = True) -> list[OutboundMessage]:
        """Claim up to ``limit`` due messages for ``node`` for ``lease`` seconds.

        Rows locked by another node's claim are skipped (``FOR UPDATE SKIP LOCKED``); a lease
        that runs out makes the message claimable again, so a node that dies loses nothing.
        With ``marketing=False`` (quiet hours) marketing messages are left in the queue.
        """
        return [m for m, _ in await self.claim_routable(node, limit, lease, marketing=marketing)]

    async def release(self, message_ids: Sequence[int], delay: float = 0.0, *,
                      backoff: Sequence[float] = ()) -> None:
        """Give claimed messages back to the queue, due again after ``delay`` seconds, or,
        with ``backoff``, after ``backoff[attempts - 1]`` (the last entry once past the end)."""
        if message_ids:
            await self.execute(
                "UPDATE outbound_queue SET leased_by = NULL, lease_until = NULL,"
                " not_before = now() + make_interval(secs => CASE WHEN cardinality($3::float8[]) = 0 THEN $2"
                "   ELSE ($3::float8[])[least(greatest(attempts, 1), cardinality($3::float8[]))] END)"
                " WHERE message_id = ANY($1::bigint[])",
                list(message_ids), delay, list(backoff),
            )

    async def queue_depth(self) -> int:
        return await self.fetchval("SELECT count(*) FROM outbound_queue")

    async def claim_routable(self, node: str, limit: int, lease: float, *,
                             marketing: bool = True) -> list[tuple[OutboundMessage, str | None]]:
        """:meth:`claim`, with each message's ``last_channel`` (the channel whose transient
        failure sent it back to the queue, or None)."""
        # In the claim's order: priority, transactional before marketing, then when due.
        rows = await self.fetch(_CLAIM_ROUTABLE if marketing else _CLAIM_ROUTABLE_TRANSACTIONAL, limit, node, lease)
        return [(OutboundMessage(
            id=mid, account_id=account_id, dest=dest, operator=operator, encoding=encoding,
            parts=_parts(body, parts), priority=priority, msg_class=msg_class, sender=sender,
            expires_at=expires_at, attempts=attempts,
        ), last_channel) for (mid, account_id, dest, operator, body, encoding, parts, priority, msg_class, sender,
                              expires_at, attempts, last_channel) in rows]

    async def retry_later(self, failures: Sequence[tuple[int, str, str | None, str]],
                          backoff: Sequence[float]) -> set[int]:
        """Transient failures (message_id, channel, error_code, reason): a ``queued`` history
        row ``retry: <reason>``, then back to the queue after ``backoff[attempts - 1]`` seconds
        with the failing channel remembered; one transaction."""
        if not failures:
            return set()
        sink = self._sink()

        async def run(pool: asyncpg.Pool) -> set[int]:
            async with pool.acquire() as conn:
                async with conn.transaction():
                    moved = await _aio_set_status(
                        conn, [(mid, "queued", ch, code, f"retry: {reason}") for mid, ch, code, reason in failures],
                        sink)
                    await conn.execute(_RETRY_LATER, [f[0] for f in failures], [f[1] for f in failures],
                                       list(backoff))
                    return moved

        moved = await self._call(run, self._pool)
        self._emit(sink)
        return moved

    async def queue_stats(self) -> dict[str, tuple[int, float]]:
        """Per class (``transactional``, ``marketing``): messages in the outbound queue and the
        age in seconds of the oldest of them.

        Counting a deep queue takes time (a quarter of a million queued messages: about a
        second), so a reading is shared: callers arriving while one is read wait for it, and it
        is reused for :data:`QUEUE_STATS_MIN_AGE` or 1/:data:`QUEUE_STATS_SHARE` times as long
        as it took, whichever is longer. Scrapes and the admin board cost the database a
        bounded share however often they come."""
        while (reading := self._queue_stats_reading) is not None:
            await reading.wait()
        if trio.current_time() < self._queue_stats_until:
            return dict(self._queue_stats)
        reading = self._queue_stats_reading = trio.Event()
        try:
            started = trio.current_time()
            # The queue row carries the class; the oldest is the lowest id's (ids are handed out
            # in increasing blocks), looked up by primary key rather than joined per row.
            rows = await self.fetch(
                "WITH c AS (SELECT class, count(*) AS depth, min(message_id) AS first"
                "           FROM outbound_queue GROUP BY class)"
                " SELECT c.class, c.depth, extract(epoch FROM now() - m.created_at)::float8 AS oldest"
                " FROM c JOIN messages m ON m.id = c.first")
            took = trio.current_time() - started
            self._queue_stats = {r["class"]: (r["depth"], max(0.0, r["oldest"] or 0.0)) for r in rows}
            self._queue_stats_until = trio.current_time() + max(QUEUE_STATS_MIN_AGE, took / QUEUE_STATS_SHARE)
        finally:
            self._queue_stats_reading = None
            reading.set()
        return dict(self._queue_stats)
