"""Status writes: the channels' submitted parts, delivery reports, and any other transition.

Each batch is one statement (one round trip, atomic on its own): the messages, their history,
their webhooks (``webhook_outbox``) and, for final states, their removal from the queue.
Final states are final. Every transition committed is published on the event bus as an
:class:`~gateway.events.MtEvent`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import asyncpg
import msgspec

from ..channel import FINAL_STATUSES, Status
from ..events import MtEvent
from ..events import now as events_now
from .core import StoreCore
from .records import ReportOutcome

_FINAL = [s.value for s in FINAL_STATUSES]

_SET_STATUS = """
WITH t AS (SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[])
                       AS t(id, status, channel, error_code, detail)),
u AS (
    UPDATE messages m
    SET status = t.status, channel = coalesce(t.channel, m.channel),
        error_code = coalesce(t.error_code, m.error_code), updated_at = now()
    FROM t WHERE m.id = t.id AND m.status <> ALL($6::text[])
    RETURNING m.id, m.status, m.callback_url, m.dlr_url, m.dlr_mask, m.updated_at,
              m.account_id, m.dest, m.channel, m.parts, m.class, m.error_code
),
w AS (
    INSERT INTO webhook_outbox (message_id, url, kind, event_status, event_at)
    SELECT u.id, u.callback_url, 'webhook', u.status, u.updated_at FROM u
    WHERE u.callback_url IS NOT NULL AND u.status = ANY($6::text[])
),
k AS (
    -- Kannel's dlr-mask bits: 1 delivered, 2 failed, 4 queued, 8 submitted, 16 rejected by the SMSC.
    INSERT INTO webhook_outbox (message_id, url, kind, dlr_type, event_status, event_at)
    SELECT u.id, u.dlr_url, 'kannel', d.bit, u.status, u.updated_at
    FROM u CROSS JOIN LATERAL (SELECT CASE u.status WHEN 'delivered' THEN 1 WHEN 'queued' THEN 4
                                                    WHEN 'submitted' THEN 8 WHEN 'rejected' THEN 16
                                                    WHEN 'accepted' THEN 0 ELSE 2 END AS bit) d
    WHERE u.dlr_url IS NOT NULL AND d.bit > 0 AND (u.dlr_mask & d.bit) <> 0
),
e AS (
    INSERT INTO message_events (message_id, status, detail)
    SELECT t.id, t.status, t.detail FROM t JOIN u ON u.id = t.id
),
q AS (
    -- A final state takes the message out of the queue, in the same statement.
    DELETE FROM outbound_queue WHERE message_id IN (SELECT u.id FROM u WHERE u.status = ANY($6::text[]))
)
SELECT u.id, u.status, u.account_id, u.dest, u.channel, u.parts, u.class, u.error_code, t.detail
FROM u JOIN t ON t.id = u.id
"""


async def _aio_set_status(
    conn: asyncpg.Connection, rows: Sequence[tuple[int, str, str | None, str | None, str]],
    sink: list[MtEvent] | None = None,
) -> set[int]:
    """Move messages to a status (never out of a final one); returns the ids that moved.

    One statement (atomic on its own, so ``conn`` may be a pool): the messages, their history,
    their webhooks and, for final states, their queue rows. With a ``sink``, each transition
    that happened is appended to it as an :class:`MtEvent`."""
    if not rows:
        return set()
    cols = list(zip(*rows))
    moved = await conn.fetch(_SET_STATUS, *[list(c) for c in cols], _FINAL)
    _sink_rows(sink, moved)
    return {r[0] for r in moved}


def _sink_rows(sink: list[MtEvent] | None, moved: Sequence[Any]) -> None:
    """Transitions returned as (id, status, account_id, dest, channel, parts, class,
    error_code, detail) rows, as :class:`MtEvent` values into ``sink`` (when there is one)."""
    if sink is not None and moved:
        at = events_now()
        sink.extend(MtEvent(id=r[0], status=r[1], account_id=r[2], to=r[3], channel=r[4] or "", parts=r[5],
                            msg_class=r[6], error_code=r[7] or "", detail=r[8], at=at) for r in moved)


_json_encode = msgspec.json.Encoder().encode

EXPIRY_PAGE = 2000
"""Messages read per statement by the expiry sweep."""

_EXPIRY_PAGE = """
-- The cursor as two scalar subqueries: constants to the planner, so the row comparison bounds
-- the index scan of messages_expiry (a join would filter the index from its start).
SELECT m.id, m.expires_at, m.status <> ALL($2::text[]) AS open
FROM messages m
WHERE (m.expires_at, m.id) > ((SELECT swept_at FROM expiry_sweep WHERE id = 1),
                              (SELECT swept_id FROM expiry_sweep WHERE id = 1))
  AND m.expires_at < now()
ORDER BY m.expires_at, m.id LIMIT $1
"""

_PURGE = """
-- The oldest finished messages past retention, a page at a time, locked so that two nodes
-- purging at once take different ones; their history rows here, their refs, queue rows and
-- callbacks by trigger and cascade (migrations 0015, 0017; webhook_outbox's foreign key).
WITH doomed AS (
    SELECT id FROM messages
    WHERE expires_at < now() - make_interval(days => $1) AND status = ANY($2::text[])
    ORDER BY expires_at, id LIMIT $3
    FOR UPDATE SKIP LOCKED
),
e AS (DELETE FROM message_events WHERE message_id IN (SELECT id FROM doomed))
DELETE FROM messages WHERE id IN (SELECT id FROM doomed)
"""

_EXPIRY_ADVANCE = """
UPDATE expiry_sweep SET swept_at = $1, swept_id = $2 WHERE id = 1 AND (swept_at, swept_id) < ($1, $2)
"""

_SUBMITTED = """
WITH r AS (
    INSERT INTO message_refs (channel, ref, message_id, part)
    SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::smallint[])
    ON CONFLICT (channel, ref) DO UPDATE SET message_id = EXCLUDED.message_id,
        part = EXCLUDED.part, status = 'submitted', created_at = now()
),
o AS MATERIALIZED (
    -- Each message's status before this statement, its row locked (in id order) until commit,
    -- with its parts acknowledged now and the channel of the last.
    -- ``parts`` becomes the number the channel sends it in, when it says (c.total > 0).
    SELECT m.id, m.status AS was, c.n, c.channel,
           CASE WHEN c.total > 0 THEN c.total ELSE m.parts END AS parts,
           m.status IN ('accepted', 'queued') AND m.id = ANY($9::bigint[]) AS routed
    FROM messages m JOIN unnest($5::bigint[], $6::int[], $7::text[], $8::smallint[]) AS c(id, n, channel, total)
         ON c.id = m.id
    WHERE m.id = ANY($5::bigint[]) ORDER BY m.id FOR UPDATE OF m
),
u AS (
    -- A ``routed`` message ($9) was routed to this channel by the dispatcher, which records
    -- that move (``queued`` on the channel) with the message's first part, not on its own.
    UPDATE messages m SET
        parts = c.parts,
        parts_submitted = least(c.parts, m.parts_submitted + c.n),
        status = CASE WHEN c.was IN ('accepted', 'queued') AND m.parts_submitted + c.n >= c.parts THEN 'submitted'
                      WHEN c.routed THEN 'queued'
                      ELSE m.status END,
        channel = CASE WHEN c.routed OR (c.was IN ('accepted', 'queued') AND m.parts_submitted + c.n >= c.parts)
                       THEN c.channel ELSE m.channel END,
        updated_at = now()
    FROM o c
    WHERE m.id = c.id
    RETURNING m.id, m.status, c.was, c.routed, m.dlr_url, m.dlr_mask, m.updated_at, m.account_id, m.dest,
              m.channel, m.parts, m.class, m.error_code
),
moves AS (
    -- The transitions, in order: ``queued`` on the channel for the routed ones, then
    -- ``submitted`` for those now fully submitted.
    SELECT u.*, 'queued' AS moved_to, 1 AS step FROM u WHERE u.routed
    UNION ALL
    SELECT u.*, 'submitted', 2 FROM u WHERE u.was IN ('accepted', 'queued') AND u.status = 'submitted'
),
k AS (
    -- Kannel's dlr-mask bits 4 (queued) and 8 (submitted to the SMSC), in that order.
    INSERT INTO webhook_outbox (message_id, url, kind, dlr_type, event_status, event_at)
    SELECT x.id, x.dlr_url, 'kannel', CASE x.step WHEN 1 THEN 4 ELSE 8 END, x.moved_to, x.updated_at
    FROM moves x
    WHERE x.dlr_url IS NOT NULL AND (x.dlr_mask & CASE x.step WHEN 1 THEN 4 ELSE 8 END) <> 0
    ORDER BY x.step, x.id
),
e AS (
    INSERT INTO message_events (message_id, status, detail)
    SELECT x.id, x.moved_to, 'channel=' || x.channel FROM moves x ORDER BY x.step, x.id
),
q AS (DELETE FROM outbound_queue WHERE message_id IN (SELECT x.id FROM moves x WHERE x.step = 2))
SELECT x.id, x.moved_to, x.account_id, x.dest, x.channel, x.parts, x.class, x.error_code, 'channel=' || x.channel
FROM moves x ORDER BY x.step, x.id
"""


async def _aio_submitted(
    pool: asyncpg.Pool, items: Sequence[tuple[str, int, int, str] | tuple[str, int, int, str, int]],
    sink: list[MtEvent] | None = None, routed: Collection[int] = (),
) -> list[int]:
    """Record submitted parts (channel, message_id, part, ref[, total]); returns fully
    submitted ids.

    One statement, so one round trip and atomic: the parts' refs (a ref seen again points at
    its latest part), the messages' part counts; for each message in ``routed`` (not final),
    its move to ``queued`` on that channel (the dispatcher's routing, recorded with the first
    part it submits); and for each message now fully submitted its ``submitted`` status on the
    channel of its last part. Each move has its history row and Kannel DLR; ``submitted`` takes the message out of
    the queue. Final states stay final (their parts are still counted). ``total``, when
    given and not 0, is the number of parts the channel sends the message in; it replaces the
    planned count (see :attr:`gateway.channel.Submitted.total`)."""
    refs: dict[tuple[str, str], tuple[int, int]] = {}
    counts: dict[int, list[Any]] = {}
    for item in items:
        channel, message_id, part, ref = item[:4]
        total = item[4] if len(item) > 4 else 0
        refs[(channel, ref)] = (message_id, part)
        entry = counts.get(message_id)
        if entry is None:
            counts[message_id] = [1, channel, total]
        else:
            entry[0] += 1
            entry[1] = channel
            entry[2] = total or entry[2]
    keys = list(refs)
    values = list(refs.values())
    rows = await pool.fetch(
        _SUBMITTED, [k[0] for k in keys], [k[1] for k in keys], [v[0] for v in values], [v[1] for v in values],
        list(counts), [c[0] for c in counts.values()], [c[1] for c in counts.values()],
        [c[2] for c in counts.values()], list(routed))
    _sink_rows(sink, rows)
    return [r[0] for r in rows if r[1] == "submitted"]


_REPORTS = """
WITH r AS (
    -- Each ref reported for the first time. The refs are looked up by primary key, one index
    -- probe each (the IN over the batch's distinct refs); the batch's reports are a JSON
    -- object keyed "<channel> <ref>" (a ref's first report in the batch: [status,
    -- error_code, n]), read by key, so no join of the batch with itself.
    UPDATE message_refs r SET status = $3::jsonb -> (r.channel || ' ' || r.ref) ->> 0
    WHERE (r.channel, r.ref) IN (SELECT * FROM unnest($1::text[], $2::text[])) AND r.status = 'submitted'
    RETURNING r.channel, r.ref, r.message_id, r.status,
              $3::jsonb -> (r.channel || ' ' || r.ref) ->> 1 AS error_code,
              ($3::jsonb -> (r.channel || ' ' || r.ref) ->> 2)::int AS n
),
d AS (
    -- Per message: parts delivered now, and the first failure reported (in batch order).
    SELECT r.message_id AS id, count(*) FILTER (WHERE r.status = 'delivered') AS delivered,
           (array_agg(r.status ORDER BY r.n) FILTER (WHERE r.status <> 'delivered'))[1] AS failed,
           (array_agg(r.error_code ORDER BY r.n) FILTER (WHERE r.status <> 'delivered'))[1] AS code
    FROM r GROUP BY r.message_id
),
o AS MATERIALIZED (
    -- Each message's status before this statement, its row locked (in id order) until commit.
    SELECT m.id, m.status AS was, d.delivered, d.failed, d.code
    FROM messages m JOIN d ON d.id = m.id ORDER BY m.id FOR UPDATE OF m
),
u AS (
    UPDATE messages m SET
        parts_delivered = least(m.parts, m.parts_delivered + d.delivered),
        status = CASE WHEN d.was = ANY($4::text[]) THEN m.status
                      WHEN d.failed IS NOT NULL THEN d.failed
                      WHEN m.parts_delivered + d.delivered >= m.parts THEN 'delivered'
                      ELSE m.status END,
        error_code = CASE WHEN d.was <> ALL($4::text[]) AND d.failed IS NOT NULL
                          THEN coalesce(nullif(d.code, ''), m.error_code) ELSE m.error_code END,
        updated_at = CASE WHEN d.was <> ALL($4::text[])
                               AND (d.failed IS NOT NULL OR m.parts_delivered + d.delivered >= m.parts)
                          THEN now() ELSE m.updated_at END
    FROM o d
    WHERE m.id = d.id
    RETURNING m.id, m.status, d.was, d.failed, d.code, m.callback_url, m.dlr_url, m.dlr_mask, m.updated_at,
              m.account_id, m.dest, m.channel, m.parts, m.class, m.error_code
),
v AS (
    SELECT u.*, CASE WHEN u.failed IS NULL THEN 'all parts delivered'
                     ELSE 'report stat=' || coalesce(nullif(u.code, ''), u.failed) END AS detail
    FROM u WHERE u.was <> ALL($4::text[]) AND u.status = ANY($4::text[])
),
w AS (
    INSERT INTO webhook_outbox (message_id, url, kind, event_status, event_at)
    SELECT v.id, v.callback_url, 'webhook', v.status, v.updated_at FROM v WHERE v.callback_url IS NOT NULL
),
k AS (
    -- Kannel's dlr-mask bits: 1 delivered, 2 failed, 16 rejected by the SMSC.
    INSERT INTO webhook_outbox (message_id, url, kind, dlr_type, event_status, event_at)
    SELECT v.id, v.dlr_url, 'kannel', b.bit, v.status, v.updated_at
    FROM v CROSS JOIN LATERAL (SELECT CASE v.status WHEN 'delivered' THEN 1 WHEN 'rejected' THEN 16
                                                    ELSE 2 END AS bit) b
    WHERE v.dlr_url IS NOT NULL AND (v.dlr_mask & b.bit) <> 0
),
e AS (INSERT INTO message_events (message_id, status, detail) SELECT v.id, v.status, v.detail FROM v),
q AS (DELETE FROM outbound_queue WHERE message_id IN (SELECT v.id FROM v))
SELECT 'applied' AS kind, r.channel, r.ref, r.message_id AS id, r.status, NULL::bigint AS account_id,
       NULL::text AS dest, NULL::smallint AS parts, NULL::text AS class, NULL::text AS error_code,
       NULL::text AS detail FROM r
UNION ALL
SELECT 'moved', v.channel, NULL, v.id, v.status, v.account_id, v.dest, v.parts, v.class, v.error_code, v.detail
FROM v
"""


_KNOWN_REFS = """
-- Refs of reports the batch's statement left unmatched that were reported before: duplicates.
-- A ref still 'submitted' here was committed after that statement began: its report stays
-- unmatched (held and retried), never taken for a duplicate.
SELECT channel, ref, message_id FROM message_refs
WHERE (channel, ref) IN (SELECT * FROM unnest($1::text[], $2::text[])) AND status <> 'submitted'
"""


async def _aio_reports(
    pool: asyncpg.Pool, reports: Sequence[tuple[str, str, str, str]], sink: list[MtEvent] | None = None,
) -> list[ReportOutcome]:
    """Apply delivery reports (channel, ref, status, error_code) in one statement (one round
    trip, atomic): the refs, the messages' delivered parts, and each message's final state
    (the first failure reported, or ``delivered`` once every part is) with its history,
    webhooks and removal from the queue. Only when some report matched no ref waiting for one
    does a second, read-only statement tell duplicates from reports that came too early.
    Returns one outcome per report, in order."""
    first: dict[str, tuple[str, str, int]] = {}
    for n, (channel, ref, status, error_code) in enumerate(reports, start=1):
        first.setdefault(f"{channel} {ref}", (status, error_code, n))  # channel names hold no space
    keys = [k.split(" ", 1) for k in first]
    rows = await pool.fetch(_REPORTS, [k[0] for k in keys], [k[1] for k in keys],
                            _json_encode(first).decode(), _FINAL)
    by_ref: dict[tuple[str, str], int] = {}
    moved = []
    for row in rows:
        if row[0] == "applied":
            by_ref[(row[1], row[2])] = row[3]
        else:
            moved.append((row[3], row[4], row[5], row[6], row[1], row[7], row[8], row[9], row[10]))
    known_refs: dict[tuple[str, str], int] = {}
    unmatched = [k for k in keys if (k[0], k[1]) not in by_ref]
    if unmatched:  # rare: a duplicate, or a report ahead of its submit being recorded
        known_refs = {(r[0], r[1]): r[2] for r in await pool.fetch(
            _KNOWN_REFS, [k[0] for k in unmatched], [k[1] for k in unmatched])}
    moved.sort()
    _sink_rows(sink, moved)
    outcomes: list[ReportOutcome] = []
    applied: set[tuple[str, str]] = set()
    for channel, ref, status, _code in reports:
        key = (channel, ref)
        mid = by_ref.get(key)
        if mid is None:
            outcomes.append(ReportOutcome(matched=key in known_refs, message_id=known_refs.get(key)))
        elif key in applied:
            # The same ref twice in one batch: its row was updated once; count it once.
            outcomes.append(ReportOutcome(matched=True, message_id=mid))
        else:
            applied.add(key)
            outcomes.append(ReportOutcome(matched=True, message_id=mid, status=status))
    return outcomes


class StatusStore(StoreCore):
    """Status transitions of stored messages, in batches."""

    async def set_status(self, rows: Sequence[tuple[int, Status, str | None, str | None, str]]) -> set[int]:
        """(message_id, status, channel, error_code, detail) each; final states are final."""
        sink = self._sink()
        # One statement: atomic without a transaction block around it.
        moved = await self._call(_aio_set_status, self._pool, [(r[0], str(r[1]), r[2], r[3], r[4]) for r in rows], sink)
        self._emit(sink)
        return moved

    async def record_submitted(
        self, items: Sequence[tuple[str, int, int, str] | tuple[str, int, int, str, int]],
        routed: Collection[int] = (),
    ) -> list[int]:
        """Persist (channel, message_id, part, ref[, total]) mappings; returns ids now fully
        submitted (``total``, ``routed``: see :func:`_aio_submitted`)."""
        if not items:
            return []
        sink = self._sink()
        done = await self._call(_aio_submitted, self._pool, items, sink, routed)
        self._emit(sink)
        return done

    async def record_reports(self, reports: Sequence[tuple[str, str, str, str]]) -> list[ReportOutcome]:
        """Apply (channel, ref, status, error_code) reports; unmatched ones say so."""
        if not reports:
            return []
        sink = self._sink()
        outcomes = await self._call(_aio_reports, self._pool, reports, sink)
        self._emit(sink)
        return outcomes

    async def purge_finished(self, days: int, page: int) -> int:
        """Delete up to ``page`` messages in a final state whose validity ended more than
        ``days`` days ago, oldest first, with everything recorded of them; returns how many."""
        done = await self.execute(_PURGE, days, _FINAL, page)
        return int(done.rsplit(" ", 1)[-1])

    async def expire_overdue(self, page: int = EXPIRY_PAGE) -> int:
        """Messages past their validity with no final state end ``expired``; returns how many.

        Walks the messages whose validity ran out since the last sweep, in (expires_at, id)
        order, ``page`` at a time, from the cursor in ``expiry_sweep`` (migration 0016), and
        moves the cursor past each page once its open messages are ``expired``: each message
        is read once, whatever the size of the table. Nodes may sweep at once: a status write
        never leaves a final state, and the cursor only moves forward."""
        expired = 0
        while True:
            rows = await self.fetch(_EXPIRY_PAGE, page, _FINAL)
            if not rows:
                return expired
            open_ids = [r[0] for r in rows if r[2]]
            if open_ids:
                expired += len(await self.set_status(
                    [(i, Status.EXPIRED, None, None, "no final report within the validity period") for i in open_ids]))
            last = rows[-1]
            await self.execute(_EXPIRY_ADVANCE, last[1], last[0])
            if len(rows) < page:
                return expired
