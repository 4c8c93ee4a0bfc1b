"""The store: PostgreSQL through asyncpg, behind Trio-flavoured functions.

asyncpg is an asyncio library and the gateway runs on Trio: the root opens one
``trio_asyncio`` loop and every crossing into asyncio happens here, marked ``aio_as_trio``.
Each unit of work (a batch of accepted messages, a batch of channel events) is one asyncio
coroutine in one transaction, so it crosses once. Nothing outside this module sees asyncpg:
its errors become :class:`~gateway.errors.StoreUnavailable` (cannot reach the database) or
:class:`~gateway.errors.StoreError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.resources
import logging
import math
import re
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import date, datetime, timezone
from typing import Any

import asyncpg
import msgspec
import trio
import trio_asyncio
from trio_asyncio import aio_as_trio

from .channel import FINAL_STATUSES, OutboundMessage, Status
from .errors import StoreConflict, StoreError, StoreUnavailable
from .events import EventBus, MtEvent
from .events import now as events_now
from .text import plan

log = logging.getLogger(__name__)

API_KEY_PREFIX = "smsgw_"
ROLLBACK_TIMEOUT = 10.0
"""Seconds a rollback or connection release may take when a transaction block is left."""
_FINAL = [s.value for s in FINAL_STATUSES]
QUEUE_STATS_SHARE = 0.05
"""The largest share of the time the queue's statistics may keep one database connection busy:
a reading is reused for 1/share times as long as it took (with a deep queue the count takes a
while, and /metrics may be scraped every second)."""
QUEUE_STATS_MIN_AGE = 1.0
"""Seconds a reading of the queue's statistics is reused however fast it was."""


class Account(msgspec.Struct, frozen=True):
    id: int
    name: str
    webhook_secret: str


class Merchant(msgspec.Struct, frozen=True, kw_only=True):
    """A business served by the deployment: it sends as ``account_id`` and is texted at
    ``service_number``."""

    id: int
    name: str
    account_id: int
    service_number: str
    signature: str = ""


class NewMessage(msgspec.Struct, frozen=True, kw_only=True):
    """One recipient of an accepted request, ready to store."""

    dest: str
    operator: str
    body: str
    encoding: str
    parts: int


class AcceptRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A send request as the intake stores it: one or more recipients, one transaction."""

    account_id: int
    messages: tuple[NewMessage, ...]
    client_ref: str | None = None
    priority: int = 0
    msg_class: str = "transactional"
    validity_s: int = 86400
    callback_url: str | None = None
    sender: str = ""
    dlr_url: str | None = None
    """A Kannel dlr-url template, called for the events in ``dlr_mask``."""
    dlr_mask: int = 0


class StoredMessage(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    dest: str
    status: str
    parts: int


class AcceptResult(msgspec.Struct, frozen=True, kw_only=True):
    messages: tuple[StoredMessage, ...]
    duplicate: bool = False


class MessageEvent(msgspec.Struct, frozen=True):
    status: str
    at: datetime
    detail: str


class MessageView(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    account_id: int
    dest: str
    body: str
    status: str
    channel: str | None
    parts: int
    created_at: datetime
    callback_url: str | None
    error_code: str | None
    events: tuple[MessageEvent, ...]


class ReportOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What a delivery report did: the message it closed (if final), or nothing matched."""

    matched: bool
    message_id: int | None = None
    status: str | None = None


def hash_api_key(key: str) -> bytes:
    """Keys are 256-bit random tokens, so one SHA-256 is the right hash (not a password KDF)."""
    return hashlib.sha256(key.encode()).digest()


def _translate(exc: BaseException) -> StoreError:
    if isinstance(
        exc,
        (
            OSError,
            asyncpg.exceptions.PostgresConnectionError,
            asyncpg.exceptions.CannotConnectNowError,
            asyncpg.exceptions.TooManyConnectionsError,
            asyncpg.exceptions.AdminShutdownError,
            asyncpg.exceptions.InterfaceError,
            asyncpg.exceptions.ConnectionDoesNotExistError,
            TimeoutError,
        ),
    ):
        return StoreUnavailable(f"database unreachable: {type(exc).__name__}: {exc}")
    if isinstance(exc, asyncpg.exceptions.IntegrityConstraintViolationError):
        return StoreConflict(f"{type(exc).__name__}: {exc}", getattr(exc, "constraint_name", "") or "")
    return StoreError(f"{type(exc).__name__}: {exc}")


def _migrations() -> list[tuple[int, str, str]]:
    found = []
    for entry in (importlib.resources.files("gateway") / "migrations").iterdir():
        m = re.match(r"^(\d{4})_(\w+)\.sql$", entry.name)
        if m:
            found.append((int(m[1]), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


# ---------------------------------------------------------------------------------------------
# asyncio side: each function below runs inside the asyncio loop, in one crossing.


async def _aio_migrate(pool: asyncpg.Pool) -> list[int]:
    applied: list[int] = []
    async with pool.acquire() as conn:
        async with conn.transaction():
            # One migrator at a time across every node sharing the database.
            await conn.execute("SELECT pg_advisory_xact_lock(7346001)")
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, name, sql in _migrations():
                if version in done:
                    continue
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
                applied.append(version)
    return applied


_CLAIM_REFS = """
INSERT INTO client_refs (account_id, client_ref)
SELECT * FROM unnest($1::bigint[], $2::text[])
ON CONFLICT DO NOTHING
RETURNING account_id, client_ref
"""

_ORIGINALS = """
SELECT m.client_ref, m.account_id, m.id, m.dest, m.status, m.parts
FROM messages m JOIN unnest($1::bigint[], $2::text[]) AS r(account_id, client_ref)
  ON m.account_id = r.account_id AND m.client_ref = r.client_ref
ORDER BY m.id
"""

ID_BLOCK = 1000
"""Ids one ``nextval`` of ``message_id_blocks`` hands out; block b holds b*1000 .. b*1000+999."""

_INSERT_ACCEPTED = """
WITH r AS (
    SELECT * FROM unnest($6::bigint[], $7::text[], $8::smallint[], $9::text[], $10::int[], $11::text[],
                         $12::text[], $13::text[], $14::smallint[])
         WITH ORDINALITY AS r(account_id, client_ref, priority, class, validity_s, callback_url, sender,
                              dlr_url, dlr_mask, n)
),
x AS (
    SELECT * FROM unnest($15::text[], $16::text[], $17::smallint[]) WITH ORDINALITY AS x(body, encoding, parts, n)
),
m AS (
    INSERT INTO messages (id, account_id, client_ref, dest, operator, body, encoding, parts, priority,
                          class, expires_at, callback_url, sender, dlr_url, dlr_mask, status, created_at, updated_at)
    SELECT t.id, r.account_id, r.client_ref, t.dest, t.operator, x.body, x.encoding, x.parts, r.priority,
           r.class, $18::timestamptz + make_interval(secs => r.validity_s), r.callback_url, r.sender, r.dlr_url,
           r.dlr_mask, 'accepted', $18::timestamptz, $18::timestamptz
    FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::int[]) AS t(id, dest, operator, r, x)
    JOIN r ON r.n = t.r
    JOIN x ON x.n = t.x
    RETURNING id, priority, class
),
q AS (
    INSERT INTO outbound_queue (message_id, priority, class, not_before) SELECT id, priority, class, $18 FROM m
)
SELECT count(*) FROM m
"""
"""The group commit's one statement. A message's own columns come in arrays of one element a
message ($1-$5); what it shares with other messages comes once: its request's fields
(account, client_ref, class, ...; $6-$14, ``r``) and its text ($15-$17, ``x``), each numbered
by its ordinality and referred to by number. A request of 100 recipients sends its text once,
and asyncpg encodes 5 array elements a message instead of 15. The queue rows are ``q``."""


async def _aio_accept(pool: asyncpg.Pool, batch: Sequence[AcceptRequest],
                      allocate: Callable[[asyncpg.Connection, int], Any]) -> list[AcceptResult]:
    """Store a batch of requests in one transaction (the group commit): the messages and
    their queue rows (the history's ``accepted`` entry is the message row's ``created_at``).

    Without idempotency keys in the batch this is one statement (its own transaction): one
    round trip for hundreds of messages.
    """
    results: list[AcceptResult | None] = [None] * len(batch)
    keyed = any(req.client_ref is not None for req in batch)
    async with pool.acquire() as conn:
        # One statement is atomic on its own; BEGIN/COMMIT only when refs are claimed first.
        async with conn.transaction() if keyed else contextlib.nullcontext():
            # Idempotency: the first request of a (account, client_ref) in this batch claims
            # the ref; a ref already claimed (now or by a concurrent transaction, which we wait
            # for on the unique index) makes the request a duplicate of the original.
            leaders: dict[tuple[int, str], int] = {}
            followers: list[tuple[int, tuple[int, str]]] = []
            for i, req in enumerate(batch):
                if req.client_ref is not None:
                    key = (req.account_id, req.client_ref)
                    if key in leaders:
                        followers.append((i, key))
                    else:
                        leaders[key] = i
            duplicates: set[tuple[int, str]] = set()
            if leaders:
                keys = list(leaders)
                won = await conn.fetch(_CLAIM_REFS, [k[0] for k in keys], [k[1] for k in keys])
                won_keys = {(r["account_id"], r["client_ref"]) for r in won}
                duplicates = set(keys) - won_keys
            fresh = [
                i for i, req in enumerate(batch)
                if req.client_ref is None or (leaders.get((req.account_id, req.client_ref)) == i
                                              and (req.account_id, req.client_ref) not in duplicates)
            ]
            count = sum(len(batch[i].messages) for i in fresh)
            if count:
                ids = await allocate(conn, count)
                # Columns shared by several messages, once each: request fields and texts.
                shared: dict[tuple[Any, ...], int] = {}
                texts: dict[tuple[str, str, int], int] = {}
                dests: list[str] = []
                operators: list[str] = []
                rs: list[int] = []
                xs: list[int] = []
                at = 0
                for i in fresh:
                    req = batch[i]
                    msgs = req.messages
                    fields = (req.account_id, req.client_ref, req.priority, req.msg_class, req.validity_s,
                              req.callback_url, req.sender, req.dlr_url, req.dlr_mask)
                    ri = shared.setdefault(fields, len(shared) + 1)
                    last: tuple[str, str, int] | None = None
                    xi = 0
                    for m in msgs:
                        text = (m.body, m.encoding, m.parts)
                        if text != last:  # a request's messages nearly always share one text
                            last = text
                            xi = texts.setdefault(text, len(texts) + 1)
                        dests.append(m.dest)
                        operators.append(m.operator)
                        xs.append(xi)
                    rs.extend([ri] * len(msgs))
                    mids = ids[at:at + len(msgs)]
                    at += len(msgs)
                    results[i] = AcceptResult(messages=tuple([
                        StoredMessage(id=mid, dest=m.dest, status="accepted", parts=m.parts)
                        for mid, m in zip(mids, msgs)]))
                await conn.fetchval(_INSERT_ACCEPTED, ids, dests, operators, rs, xs, *map(list, zip(*shared)),
                                    *map(list, zip(*texts)), datetime.now(timezone.utc))
            # Duplicates across transactions: the originals are committed (we waited on the
            # index). Duplicates inside this batch follow their leader's fresh rows.
            if duplicates:
                dup = list(duplicates)
                found: dict[tuple[int, str], list[StoredMessage]] = {}
                for r in await conn.fetch(_ORIGINALS, [k[0] for k in dup], [k[1] for k in dup]):
                    found.setdefault((r["account_id"], r["client_ref"]), []).append(
                        StoredMessage(id=r["id"], dest=r["dest"], status=r["status"], parts=r["parts"]))
                for key in dup:
                    results[leaders[key]] = AcceptResult(messages=tuple(found.get(key, ())), duplicate=True)
            for i, key in followers:
                lead = results[leaders[key]]
                assert lead is not None
                results[i] = AcceptResult(messages=lead.messages, duplicate=True)
    return results  # type: ignore[return-value]


# -- routing (migration 0005) -----------------------------------------------------------------

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

RECIPIENT_LOCK_CLASS = 7346005
"""First key of the advisory locks that serialize counting per recipient across nodes."""


async def _aio_recipient_check(conn: asyncpg.Connection, recipients: Sequence[tuple[int, str]],
                               decide: Callable[..., tuple[Sequence[int], dict[int, float]]]) -> dict[int, float]:
    """Lock the numbers, read their sends of the last day, let ``decide`` admit, count the
    admitted and hold the rest (asyncio side, inside the caller's transaction)."""
    dests = sorted({d for _, d in recipients})
    # Sorted, so two nodes locking overlapping numbers take the locks in the same order.
    await conn.execute(
        "SELECT pg_advisory_xact_lock($2::int, hashtext(d)) FROM (SELECT unnest($1::text[]) AS d ORDER BY 1) s",
        dests, RECIPIENT_LOCK_CLASS)
    rows = await conn.fetch(
        "SELECT message_id, dest, extract(epoch FROM at)::float8 AS t, extract(epoch FROM clock_timestamp())::float8"
        " AS now FROM recipient_sends WHERE dest = ANY($1::text[]) AND at > clock_timestamp() - interval '1 day'"
        " UNION ALL SELECT NULL, NULL, NULL, extract(epoch FROM clock_timestamp())::float8", dests)
    now = max(r["now"] for r in rows)
    counted = {r["message_id"] for r in rows if r["message_id"] is not None}
    history: dict[str, list[float]] = {}
    for r in rows:
        if r["dest"] is not None:
            history.setdefault(r["dest"], []).append(r["t"])
    fresh = [(mid, d) for mid, d in recipients if mid not in counted]
    allowed, waits = decide(fresh, history, now)
    if allowed:
        dest_of = dict(fresh)
        await conn.execute(
            "INSERT INTO recipient_sends (message_id, dest, at)"
            " SELECT id, dest, to_timestamp($3) FROM unnest($1::bigint[], $2::text[]) AS t(id, dest)"
            " ON CONFLICT (message_id) DO NOTHING",
            list(allowed), [dest_of[m] for m in allowed], now)
    if waits:
        await conn.execute(
            "UPDATE outbound_queue q SET leased_by = NULL, lease_until = NULL,"
            " not_before = to_timestamp($3) + make_interval(secs => t.wait)"
            " FROM unnest($1::bigint[], $2::float8[]) AS t(id, wait) WHERE q.message_id = t.id",
            list(waits), list(waits.values()), now)
    return dict(waits)


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
           CASE WHEN c.total > 0 THEN c.total ELSE m.parts END AS parts
    FROM messages m JOIN unnest($5::bigint[], $6::int[], $7::text[], $8::smallint[]) AS c(id, n, channel, total)
         ON c.id = m.id
    WHERE m.id = ANY($5::bigint[]) ORDER BY m.id FOR UPDATE OF m
),
u AS (
    UPDATE messages m SET
        parts = c.parts,
        parts_submitted = least(c.parts, m.parts_submitted + c.n),
        status = CASE WHEN c.was IN ('accepted', 'queued') AND m.parts_submitted + c.n >= c.parts
                      THEN 'submitted' ELSE m.status END,
        channel = CASE WHEN c.was IN ('accepted', 'queued') AND m.parts_submitted + c.n >= c.parts
                       THEN c.channel ELSE m.channel END,
        updated_at = now()
    FROM o c
    WHERE m.id = c.id
    RETURNING m.id, m.status, c.was, m.dlr_url, m.dlr_mask, m.updated_at, m.account_id, m.dest, m.channel,
              m.parts, m.class, m.error_code
),
v AS (SELECT * FROM u WHERE u.was IN ('accepted', 'queued') AND u.status = 'submitted'),
k AS (
    -- Kannel's dlr-mask bit 8: submitted to the SMSC.
    INSERT INTO webhook_outbox (message_id, url, kind, dlr_type, event_status, event_at)
    SELECT v.id, v.dlr_url, 'kannel', 8, v.status, v.updated_at FROM v
    WHERE v.dlr_url IS NOT NULL AND (v.dlr_mask & 8) <> 0
),
e AS (INSERT INTO message_events (message_id, status, detail) SELECT v.id, 'submitted', 'channel=' || v.channel FROM v),
q AS (DELETE FROM outbound_queue WHERE message_id IN (SELECT v.id FROM v))
SELECT v.id, v.status, v.account_id, v.dest, v.channel, v.parts, v.class, v.error_code, 'channel=' || v.channel
FROM v ORDER BY v.id
"""


async def _aio_submitted(
    pool: asyncpg.Pool, items: Sequence[tuple[str, int, int, str] | tuple[str, int, int, str, int]],
    sink: list[MtEvent] | None = None,
) -> list[int]:
    """Record submitted parts (channel, message_id, part, ref[, total]); returns fully
    submitted ids.

    One statement, so one round trip and atomic: the parts' refs (a ref seen again points at
    its latest part), the messages' part counts, and for each message now fully submitted its
    ``submitted`` status on the channel of its last part, history row, Kannel DLR and removal
    from the queue. Final states stay final (their parts are still counted). ``total``, when
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
        [c[2] for c in counts.values()])
    _sink_rows(sink, rows)
    return [r[0] for r in rows]


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
known AS (
    -- Refs reported before: a duplicate report. Read in the statement's snapshot, the one the
    -- UPDATE above used: a ref committed after it began is in neither, so its report stays
    -- unmatched (held and retried), never taken for a duplicate.
    SELECT k.channel, k.ref, k.message_id FROM message_refs k
    WHERE (k.channel, k.ref) IN (SELECT * FROM unnest($1::text[], $2::text[])) AND k.status <> 'submitted'
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
SELECT 'known', k.channel, k.ref, k.message_id, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM known k
UNION ALL
SELECT 'moved', v.channel, NULL, v.id, v.status, v.account_id, v.dest, v.parts, v.class, v.error_code, v.detail
FROM v
"""


async def _aio_reports(
    pool: asyncpg.Pool, reports: Sequence[tuple[str, str, str, str]], sink: list[MtEvent] | None = None,
) -> list[ReportOutcome]:
    """Apply delivery reports (channel, ref, status, error_code) in one statement (one round
    trip, atomic): the refs, the messages' delivered parts, and each message's final state
    (the first failure reported, or ``delivered`` once every part is) with its history,
    webhooks and removal from the queue. Returns one outcome per report, in order."""
    first: dict[str, tuple[str, str, int]] = {}
    for n, (channel, ref, status, error_code) in enumerate(reports, start=1):
        first.setdefault(f"{channel} {ref}", (status, error_code, n))  # channel names hold no space
    keys = [k.split(" ", 1) for k in first]
    rows = await pool.fetch(_REPORTS, [k[0] for k in keys], [k[1] for k in keys],
                            _json_encode(first).decode(), _FINAL)
    by_ref: dict[tuple[str, str], int] = {}
    known_refs: dict[tuple[str, str], int] = {}
    moved = []
    for row in rows:
        kind = row[0]
        if kind == "applied":
            by_ref[(row[1], row[2])] = row[3]
        elif kind == "known":
            known_refs[(row[1], row[2])] = row[3]
        else:
            moved.append((row[3], row[4], row[5], row[6], row[1], row[7], row[8], row[9], row[10]))
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


# ---------------------------------------------------------------------------------------------
# Trio side.


class Store:
    """Trio-flavoured access to the database. Create with :func:`open_store`."""

    def __init__(self, pool: asyncpg.Pool, loop: Any) -> None:
        self._pool = pool
        self._ids: list[int] = []
        # The loop is held here so that any Trio task may use the store, not only those
        # started inside ``trio_asyncio.open_loop()`` (the loop is found by context variable).
        self._loop = loop
        self.events: EventBus | None = None
        """Where status transitions go once committed, as :class:`MtEvent` (when anyone listens)."""
        self._queue_stats: dict[str, tuple[int, float]] = {}
        self._queue_stats_until = -math.inf
        self._queue_stats_reading: trio.Event | None = None

    def _sink(self) -> list[MtEvent] | None:
        return [] if self.events is not None and self.events.active else None

    def _emit(self, sink: list[MtEvent] | None) -> None:
        if sink and self.events is not None:
            self.events.publish_many(sink)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await aio_as_trio(fn, loop=self._loop)(*args)
        except (StoreError,):
            raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise _translate(exc) from exc

    async def execute(self, sql: str, *args: Any) -> str:
        return await self._call(self._pool.execute, sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await self._call(self._pool.fetch, sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        return await self._call(self._pool.fetchrow, sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._call(self._pool.fetchval, sql, *args)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """One connection, one transaction: committed when the block ends, rolled back when it
        raises (or is cancelled)."""
        try:
            conn = await aio_as_trio(self._pool.acquire, loop=self._loop)()
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise _translate(exc) from exc
        try:
            tx = conn.transaction()
            await self._call(tx.start)
            try:
                yield Transaction(self, conn)
            except BaseException:
                with trio.move_on_after(ROLLBACK_TIMEOUT) as scope:
                    scope.shield = True
                    await self._call(tx.rollback)
                raise
            else:
                await self._call(tx.commit)
        finally:
            with trio.move_on_after(ROLLBACK_TIMEOUT) as scope:
                scope.shield = True
                await aio_as_trio(self._pool.release, loop=self._loop)(conn)

    async def ping(self) -> bool:
        try:
            return await self.fetchval("SELECT 1") == 1
        except StoreError:
            return False

    # -- schema -----------------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        """Apply the migrations not yet applied; safe to run twice and from several nodes."""
        applied = await self._call(_aio_migrate, self._pool)
        if applied:
            log.info("migrations applied versions=%s", applied)
        return applied

    # -- accounts and keys -------------------------------------------------------------------

    async def ensure_account(self, name: str) -> Account:
        """The account of that name, created (with a new webhook secret) if missing."""
        row = await self.fetchrow(
            "INSERT INTO accounts (name, webhook_secret) VALUES ($1, $2)"
            " ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name"
            " RETURNING id, name, webhook_secret",
            name, secrets.token_hex(32),
        )
        assert row is not None
        return Account(row["id"], row["name"], row["webhook_secret"])

    # -- merchants ---------------------------------------------------------------------------

    async def ensure_merchant(self, name: str, account_id: int, service_number: str,
                              signature: str = "") -> Merchant:
        """The merchant of that name, created or updated to these values."""
        row = await self.fetchrow(
            "INSERT INTO merchants (name, account_id, service_number, signature) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (name) DO UPDATE SET account_id = EXCLUDED.account_id,"
            " service_number = EXCLUDED.service_number, signature = EXCLUDED.signature"
            " RETURNING id, name, account_id, service_number, signature",
            name, account_id, service_number, signature)
        assert row is not None
        return Merchant(**dict(row))

    async def merchants(self) -> list[Merchant]:
        return [Merchant(**dict(r)) for r in await self.fetch(
            "SELECT id, name, account_id, service_number, signature FROM merchants ORDER BY id")]

    async def merchant_for_number(self, number: str) -> Merchant | None:
        """The merchant a consumer reaches at ``number``: the longest service number that
        ``number`` starts with (a service number may carry an extension after it)."""
        row = await self.fetchrow(
            "SELECT id, name, account_id, service_number, signature FROM merchants"
            " WHERE $1 LIKE service_number || '%' ORDER BY length(service_number) DESC LIMIT 1", number)
        return None if row is None else Merchant(**dict(row))

    async def account_by_name(self, name: str) -> Account | None:
        row = await self.fetchrow("SELECT id, name, webhook_secret FROM accounts WHERE name = $1", name)
        return None if row is None else Account(row["id"], row["name"], row["webhook_secret"])

    async def client_ref_taken(self, account_id: int, client_ref: str) -> bool:
        return bool(await self.fetchval(
            "SELECT 1 FROM client_refs WHERE account_id = $1 AND client_ref = $2", account_id, client_ref))

    async def accepted_since(self, account_id: int, since: datetime) -> int:
        """Messages the account had accepted since ``since`` (for its daily quota)."""
        return await self.fetchval(
            "SELECT count(*) FROM messages WHERE account_id = $1 AND created_at >= $2", account_id, since)

    async def create_api_key(self, account_id: int) -> str:
        """A new key for the account: returned once, stored only as a hash."""
        key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        await self.execute(
            "INSERT INTO api_keys (account_id, key_hash, prefix) VALUES ($1, $2, $3)",
            account_id, hash_api_key(key), key[: len(API_KEY_PREFIX) + 6],
        )
        return key

    async def account_for_key(self, key: str) -> Account | None:
        row = await self.fetchrow(
            "SELECT a.id, a.name, a.webhook_secret FROM api_keys k JOIN accounts a ON a.id = k.account_id"
            " WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
            hash_api_key(key),
        )
        return None if row is None else Account(row["id"], row["name"], row["webhook_secret"])

    # -- intake ------------------------------------------------------------------------------

    async def accept(self, batch: Sequence[AcceptRequest]) -> list[AcceptResult]:
        """Store a batch of send requests durably, in one transaction (group commit)."""
        results = await self._call(_aio_accept, self._pool, batch, self._allocate_ids)
        if self.events is not None and self.events.active:
            at = events_now()
            self._emit([MtEvent(id=m.id, account_id=req.account_id, to=m.dest, status="accepted", parts=m.parts,
                                msg_class=req.msg_class, at=at)
                        for req, res in zip(batch, results) if not res.duplicate for m in res.messages])
        return results

    async def _allocate_ids(self, conn: asyncpg.Connection, count: int) -> list[int]:
        """``count`` unused message ids (asyncio side): from this process's blocks, each
        fetched with one ``nextval`` and never handed to another node."""
        while len(self._ids) < count:
            need = (count - len(self._ids) + ID_BLOCK - 1) // ID_BLOCK
            for (block,) in await conn.fetch(
                    "SELECT nextval('message_id_blocks') FROM generate_series(1, $1)", need):
                self._ids.extend(range(block * ID_BLOCK, (block + 1) * ID_BLOCK))
        out, self._ids = self._ids[:count], self._ids[count:]
        out.sort()  # blocks fetched concurrently may land out of order; a request's ids ascend
        return out

    async def message(self, message_id: int, account_id: int | None = None) -> MessageView | None:
        row = await self.fetchrow(
            "SELECT id, account_id, dest, body, status, channel, parts, created_at, callback_url, error_code"
            " FROM messages WHERE id = $1",
            message_id,
        )
        if row is None or (account_id is not None and row["account_id"] != account_id):
            return None
        # The acceptance is the message row itself (created_at): no history row is written
        # for it, which saves a quarter of the rows an accepted message costs.
        events = [MessageEvent("accepted", row["created_at"], "")] + [
            MessageEvent(e["status"], e["at"], e["detail"]) for e in await self.fetch(
                "SELECT status, at, detail FROM message_events WHERE message_id = $1 ORDER BY at, ctid",
                message_id)]
        return MessageView(
            id=row["id"], account_id=row["account_id"], dest=row["dest"], body=row["body"],
            status=row["status"], channel=row["channel"], parts=row["parts"],
            created_at=row["created_at"], callback_url=row["callback_url"], error_code=row["error_code"],
            events=tuple(events),
        )

    # -- the outbound queue ------------------------------------------------------------------

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

    async def set_status(self, rows: Sequence[tuple[int, Status, str | None, str | None, str]]) -> set[int]:
        """(message_id, status, channel, error_code, detail) each; final states are final."""
        sink = self._sink()
        # One statement: atomic without a transaction block around it.
        moved = await self._call(_aio_set_status, self._pool, [(r[0], str(r[1]), r[2], r[3], r[4]) for r in rows], sink)
        self._emit(sink)
        return moved

    async def record_submitted(
        self, items: Sequence[tuple[str, int, int, str] | tuple[str, int, int, str, int]],
    ) -> list[int]:
        """Persist (channel, message_id, part, ref[, total]) mappings; returns ids now fully
        submitted (``total``: see :func:`_aio_submitted`)."""
        if not items:
            return []
        sink = self._sink()
        done = await self._call(_aio_submitted, self._pool, items, sink)
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

    async def expire_overdue(self, limit: int = 1000) -> int:
        """Messages past their validity with no final state end ``expired``."""
        ids = [r[0] for r in await self.fetch(
            "SELECT id FROM messages WHERE status IN ('accepted', 'queued', 'submitted') AND expires_at < now()"
            " LIMIT $1", limit)]
        if not ids:
            return 0
        moved = await self.set_status([(i, Status.EXPIRED, None, None, "no final report within the validity period")
                                       for i in ids])
        return len(moved)

    # -- routing ---------------------------------------------------------------------------
    # The routing table shared by every node, claims that carry the channel a retried message
    # last failed on, and the per-recipient send log (migration 0005).

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

    async def commit_routing(
        self, rows: Sequence[tuple[int, Status, str | None, str | None, str]], *,
        unroutable: Sequence[int] = (), unroutable_delay: float = 1.0,
        recipients: Sequence[tuple[int, str]] = (),
        decide: Callable[[Sequence[tuple[int, str]], dict[str, list[float]], float],
                         tuple[Sequence[int], dict[int, float]]] | None = None,
    ) -> tuple[set[int], dict[int, float]]:
        """One claim batch's bookkeeping in one transaction.

        ``recipients`` (message id, number) are the routed messages subject to per-recipient
        limits: their numbers are locked (so nodes count one at a time), ``decide(candidates,
        history, now)`` gets the send times counted for each number in the last day (epoch
        seconds) and returns the ids allowed and the waits of the others. Allowed ones are
        counted; held ones go back to the queue due after their wait, and their rows in
        ``rows`` are skipped. A message counted before (a retry) is allowed without counting
        twice. Then ``rows`` are applied (:meth:`set_status`) and ``unroutable`` ids released
        after ``unroutable_delay``. Returns (ids moved by ``rows``, held id → wait seconds).
        """
        sink = self._sink()
        if not unroutable and not (recipients and decide is not None):
            # The common case, one statement: atomic without a transaction block around it.
            moved = await self._call(_aio_set_status, self._pool,
                                     [(r[0], str(r[1]), r[2], r[3], r[4]) for r in rows], sink)
            self._emit(sink)
            return moved, {}

        async def run(pool: asyncpg.Pool) -> tuple[set[int], dict[int, float]]:
            async with pool.acquire() as conn:
                async with conn.transaction():
                    held: dict[int, float] = {}
                    if recipients and decide is not None:
                        held = await _aio_recipient_check(conn, recipients, decide)
                    moved = await _aio_set_status(
                        conn, [(r[0], str(r[1]), r[2], r[3], r[4]) for r in rows if r[0] not in held], sink)
                    if unroutable:
                        await conn.execute(
                            "UPDATE outbound_queue SET leased_by = NULL, lease_until = NULL,"
                            " not_before = now() + make_interval(secs => $2) WHERE message_id = ANY($1::bigint[])",
                            list(unroutable), unroutable_delay)
                    return moved, held

        moved, held = await self._call(run, self._pool)
        self._emit(sink)
        return moved, held

    async def prune_recipient_sends(self) -> int:
        """Forget sends older than the longest recipient window (a day)."""
        done = await self.execute("DELETE FROM recipient_sends WHERE at < now() - interval '25 hours'")
        return int(done.rsplit(" ", 1)[-1])

    async def account_ids(self) -> dict[str, int]:
        """Every account's id by name (to resolve routing rules)."""
        return {r["name"]: r["id"] for r in await self.fetch("SELECT id, name FROM accounts")}

    async def routing_table(self) -> tuple[bytes, int, str] | None:
        """The stored rules (a JSON array), their version and source (``config``/``api``)."""
        row = await self.fetchrow("SELECT rules::text AS rules, version, source FROM routing_table WHERE id = 1")
        return None if row is None else (row["rules"].encode(), row["version"], row["source"])

    async def routing_version(self) -> int:
        return await self.fetchval("SELECT coalesce((SELECT version FROM routing_table WHERE id = 1), 0)")

    async def seed_routing_table(self, rules: bytes) -> tuple[bytes, int, str]:
        """At start: the configuration's rules become the table unless the table was last
        changed through the admin API (that one wins). Returns the table in force."""
        row = await self.fetchrow(
            """
            INSERT INTO routing_table AS r (id, rules, version, source) VALUES (1, $1::text::jsonb, 1, 'config')
            ON CONFLICT (id) DO UPDATE SET rules = EXCLUDED.rules, version = r.version + 1, updated_at = now()
              WHERE r.source = 'config' AND r.rules <> EXCLUDED.rules
            RETURNING rules::text AS rules, version, source
            """, rules.decode())
        if row is None:  # kept: changed through the API, or the configuration's rules already
            stored = await self.routing_table()
            assert stored is not None
            return stored
        return row["rules"].encode(), row["version"], row["source"]

    async def save_routing_table(self, rules: bytes, source: str = "api") -> int:
        """Replace the table (every node picks it up); returns its new version."""
        return await self.fetchval(
            """
            INSERT INTO routing_table AS r (id, rules, version, source) VALUES (1, $1::text::jsonb, 1, $2)
            ON CONFLICT (id) DO UPDATE SET rules = EXCLUDED.rules, source = EXCLUDED.source,
              version = r.version + 1, updated_at = now()
            RETURNING version
            """, rules.decode(), source)

    async def record_mo(self, items: Sequence[tuple[str, str, str, str, datetime]]) -> list[int]:
        """Store inbound messages (channel, sender, service_number, body, received_at)."""
        if not items:
            return []
        rows = await self.fetch(
            "INSERT INTO inbound_messages (channel, sender, service_number, body, received_at)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])"
            " RETURNING id",
            *[list(c) for c in zip(*items)],
        )
        return [r["id"] for r in rows]

    # -- modem quotas --

    async def modem_sent_counts(self, day: date) -> dict[str, int]:
        """Parts each modem (by name) sent on ``day`` (a local day), as recorded."""
        rows = await self.fetch("SELECT modem, sent FROM modem_quota WHERE day = $1", day)
        return {r["modem"]: r["sent"] for r in rows}

    async def add_modem_sent(self, counts: Sequence[tuple[str, date, int]]) -> None:
        """Add (modem, day, parts) to the recorded counts, in one statement."""
        if not counts:
            return
        await self.execute(
            "INSERT INTO modem_quota (modem, day, sent)"
            " SELECT * FROM unnest($1::text[], $2::date[], $3::integer[])"
            " ON CONFLICT (modem, day) DO UPDATE"
            " SET sent = modem_quota.sent + EXCLUDED.sent, updated_at = now()",
            *[list(c) for c in zip(*counts)],
        )

    # -- MO and compliance --------------------------------------------------------------------

    async def claim_mo(self, node: str, limit: int, lease: float) -> list[InboundMo]:
        """Claim up to ``limit`` stored MOs not yet dispatched, oldest first, for ``lease``
        seconds (``FOR UPDATE SKIP LOCKED``): a claim not finished in time (the node died)
        makes the MO claimable again, so every MO is dispatched even across crashes."""
        rows = await self.fetch(
            "WITH c AS (SELECT id FROM inbound_messages"
            "           WHERE dispatched_at IS NULL AND (lease_until IS NULL OR lease_until < now())"
            "           ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)"
            " UPDATE inbound_messages i SET lease_until = now() + make_interval(secs => $2),"
            "        attempts = i.attempts + 1"
            " FROM c WHERE i.id = c.id"
            " RETURNING i.id, i.channel, i.sender, i.service_number, i.body, i.received_at, i.attempts",
            limit, lease)
        log.debug("claimed inbound messages node=%s count=%d", node, len(rows))
        return sorted((InboundMo(**dict(r)) for r in rows), key=lambda m: m.id)

    async def finish_mo(self, mo_id: int, *, merchant_id: int | None, command: str, outcome: str,
                        callbacks: Sequence[MoSubscription] = ()) -> bool:
        """Mark an MO dispatched and queue its MO callbacks, in one transaction; ``False``
        (and nothing queued) when it was dispatched already (by a node whose lease ran out)."""
        async with self.transaction() as tx:
            done = await tx.execute(
                "UPDATE inbound_messages SET dispatched_at = now(), lease_until = NULL, merchant_id = $2,"
                " command = $3, outcome = $4 WHERE id = $1 AND dispatched_at IS NULL",
                mo_id, merchant_id, command, outcome)
            if done != "UPDATE 1":
                return False
            if callbacks:
                await tx.execute(
                    "INSERT INTO webhook_outbox (kind, mo_id, account_id, url, event_status)"
                    " SELECT 'mo', $1, t.account_id, t.url, 'received'"
                    " FROM unnest($2::bigint[], $3::text[]) WITH ORDINALITY AS t(account_id, url, n) ORDER BY t.n",
                    mo_id, [c.account_id for c in callbacks], [c.url for c in callbacks])
        return True

    async def retry_mo_later(self, mo_id: int, delay: float) -> None:
        """Give a claimed MO back, to be claimed again after ``delay`` seconds."""
        await self.execute(
            "UPDATE inbound_messages SET lease_until = now() + make_interval(secs => $2)"
            " WHERE id = $1 AND dispatched_at IS NULL", mo_id, delay)

    async def release_mo(self, mo_ids: Sequence[int]) -> None:
        """Give claimed MOs back at once (a node stopping cleanly)."""
        await self.execute("UPDATE inbound_messages SET lease_until = NULL"
                           " WHERE id = ANY($1::bigint[]) AND dispatched_at IS NULL", list(mo_ids))

    async def finish_mos(self, items: Sequence[MoFinish]) -> set[int]:
        """:meth:`finish_mo` for a batch, in one statement (so in one transaction): marks each
        MO dispatched and queues its MO callbacks; returns the ids marked now (the others were
        dispatched already, by a node whose lease ran out, and get no callbacks)."""
        if not items:
            return set()
        cb = [(f.mo_id, c.account_id, c.url) for f in items for c in f.callbacks]
        rows = await self.fetch(
            "WITH done AS ("
            " UPDATE inbound_messages i SET dispatched_at = now(), lease_until = NULL, merchant_id = t.merchant_id,"
            "        command = t.command, outcome = t.outcome"
            " FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[]) AS t(id, merchant_id, command, outcome)"
            " WHERE i.id = t.id AND i.dispatched_at IS NULL RETURNING i.id),"
            " queued AS ("
            " INSERT INTO webhook_outbox (kind, mo_id, account_id, url, event_status)"
            " SELECT 'mo', c.mo_id, c.account_id, c.url, 'received'"
            " FROM unnest($5::bigint[], $6::bigint[], $7::text[]) WITH ORDINALITY AS c(mo_id, account_id, url, n)"
            " JOIN done ON done.id = c.mo_id ORDER BY c.n)"
            " SELECT id FROM done",
            [f.mo_id for f in items], [f.merchant_id for f in items], [f.command for f in items],
            [f.outcome for f in items], [c[0] for c in cb], [c[1] for c in cb], [c[2] for c in cb])
        return {r["id"] for r in rows}

    async def retry_mos_later(self, mo_ids: Sequence[int], delay: float) -> None:
        """:meth:`retry_mo_later` for several MOs, in one statement."""
        await self.execute(
            "UPDATE inbound_messages SET lease_until = now() + make_interval(secs => $2)"
            " WHERE id = ANY($1::bigint[]) AND dispatched_at IS NULL", list(mo_ids), delay)

    async def merchants_for_numbers(self, numbers: Sequence[str]) -> dict[str, Merchant]:
        """:meth:`merchant_for_number` for several numbers in one query: the merchant each
        number reaches (numbers that reach none are left out)."""
        wanted = sorted(set(numbers))
        if not wanted:
            return {}
        rows = await self.fetch(
            "SELECT DISTINCT ON (n.number) n.number, m.id, m.name, m.account_id, m.service_number, m.signature"
            " FROM unnest($1::text[]) AS n(number)"
            " JOIN merchants m ON n.number LIKE m.service_number || '%'"
            " ORDER BY n.number, length(m.service_number) DESC", wanted)
        return {r["number"]: Merchant(id=r["id"], name=r["name"], account_id=r["account_id"],
                                      service_number=r["service_number"], signature=r["signature"]) for r in rows}

    async def inbound(self, mo_id: int) -> asyncpg.Record | None:
        """An inbound message with its dispatch columns (for operators and tests)."""
        return await self.fetchrow(
            "SELECT id, channel, sender, service_number, body, received_at, merchant_id, command, outcome,"
            " dispatched_at, attempts FROM inbound_messages WHERE id = $1", mo_id)

    async def unsubscribe(self, merchant_id: int, phone: str, mo_id: int | None = None) -> bool:
        """No more marketing from the merchant (through any of its accounts) to ``phone``;
        ``False`` if it was so already."""
        return await self.fetchval(
            "INSERT INTO mo_unsubscribes (merchant_id, phone, mo_id) VALUES ($1, $2, $3)"
            " ON CONFLICT (merchant_id, phone) DO NOTHING RETURNING true", merchant_id, phone, mo_id) is not None

    async def resubscribe(self, merchant_id: int, phone: str) -> bool:
        """Undo :meth:`unsubscribe` (the consumer joined again); ``False`` if not unsubscribed."""
        return await self.execute(
            "DELETE FROM mo_unsubscribes WHERE merchant_id = $1 AND phone = $2", merchant_id, phone) == "DELETE 1"

    async def is_unsubscribed(self, merchant_id: int, phone: str) -> bool:
        return bool(await self.fetchval(
            "SELECT 1 FROM mo_unsubscribes WHERE merchant_id = $1 AND phone = $2", merchant_id, phone))

    async def compliance_flags(self, messages: Sequence[tuple[int, str, int, bool]]) -> dict[int, tuple[bool, bool]]:
        """For (message_id, dest, account_id, marketing) each, in one query: the messages whose
        destination is blocklisted or (for marketing) unsubscribed from a merchant that sends
        through the account (its own account, or one of its ``merchant_accounts``), as
        ``{id: (blocklisted, unsubscribed)}``; the others are left out. An account no merchant
        sends through has no unsubscribes."""
        if not messages:
            return {}
        cols = list(zip(*messages))
        rows = await self.fetch(
            "SELECT id, blocked, unsubscribed FROM ("
            " SELECT t.id, b.phone IS NOT NULL AS blocked,"
            "        t.marketing AND EXISTS (SELECT 1 FROM mo_unsubscribes u WHERE u.phone = t.dest AND u.merchant_id IN ("
            "            SELECT m.id FROM merchants m WHERE m.account_id = t.account_id"
            "            UNION ALL SELECT ma.merchant_id FROM merchant_accounts ma WHERE ma.account_id = t.account_id"
            "        )) AS unsubscribed"
            " FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bool[]) AS t(id, dest, account_id, marketing)"
            " LEFT JOIN blocklist b ON b.phone = t.dest) f"
            " WHERE blocked OR unsubscribed",
            list(cols[0]), list(cols[1]), list(cols[2]), list(cols[3]))
        return {r["id"]: (r["blocked"], r["unsubscribed"]) for r in rows}

    async def set_merchant_accounts(self, merchant_id: int, account_ids: Sequence[int]) -> None:
        """The accounts the merchant sends through besides its own become exactly ``account_ids``
        (its own, ``merchants.account_id``, is implied and skipped if listed)."""
        async with self.transaction() as tx:
            await tx.execute(
                "DELETE FROM merchant_accounts ma USING merchants m WHERE ma.merchant_id = $1 AND m.id = $1"
                " AND (ma.account_id <> ALL($2::bigint[]) OR ma.account_id = m.account_id)",
                merchant_id, list(account_ids))
            await tx.execute(
                "INSERT INTO merchant_accounts (merchant_id, account_id)"
                " SELECT m.id, a FROM merchants m, unnest($2::bigint[]) AS a WHERE m.id = $1 AND a <> m.account_id"
                " ON CONFLICT DO NOTHING", merchant_id, list(account_ids))

    async def merchant_accounts(self) -> list[tuple[int, int]]:
        """Every (merchant_id, account_id) a merchant sends through besides its own account."""
        return [(r["merchant_id"], r["account_id"]) for r in await self.fetch(
            "SELECT merchant_id, account_id FROM merchant_accounts ORDER BY merchant_id, account_id")]

    async def block(self, phone: str, reason: str = "", source: str = "admin") -> tuple[BlockedNumber, bool]:
        """Put ``phone`` (11-digit form) on the blocklist; returns the entry and whether it is new.
        An admin entry over a configured one takes it over (it then survives a config change)."""
        row = await self.fetchrow(
            "INSERT INTO blocklist (phone, reason, source) VALUES ($1, $2, $3)"
            " ON CONFLICT (phone) DO UPDATE SET reason = CASE WHEN EXCLUDED.reason = '' THEN blocklist.reason"
            "   ELSE EXCLUDED.reason END, source = EXCLUDED.source"
            " RETURNING phone, reason, source, created_at, xmax = 0 AS created", phone, reason, source)
        assert row is not None
        return BlockedNumber(phone=row["phone"], reason=row["reason"], source=row["source"],
                             created_at=row["created_at"]), row["created"]

    async def unblock(self, phone: str) -> bool:
        return await self.execute("DELETE FROM blocklist WHERE phone = $1", phone) == "DELETE 1"

    async def blocklist(self) -> list[BlockedNumber]:
        return [BlockedNumber(**dict(r)) for r in await self.fetch(
            "SELECT phone, reason, source, created_at FROM blocklist ORDER BY created_at, phone")]

    async def seed_blocklist(self, phones: Sequence[str]) -> None:
        """Make the configured entries (``[compliance] blocklist``) exactly ``phones``: new ones
        added, ones no longer configured removed; entries added by an admin are kept."""
        async with self.transaction() as tx:
            await tx.execute("DELETE FROM blocklist WHERE source = 'config' AND phone <> ALL($1::text[])",
                             list(phones))
            await tx.execute("INSERT INTO blocklist (phone, reason, source)"
                             " SELECT p, 'configured', 'config' FROM unnest($1::text[]) AS p"
                             " ON CONFLICT (phone) DO NOTHING", list(phones))

    async def add_mo_subscription(self, account_id: int, service_number: str, keyword: str,
                                  url: str) -> tuple[MoSubscription, bool]:
        """Subscribe the account to MOs; the same subscription twice is one (``False``: existed)."""
        row = await self.fetchrow(
            "WITH i AS (INSERT INTO mo_subscriptions (account_id, service_number, keyword, url)"
            "           VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING"
            "           RETURNING id, account_id, service_number, keyword, url, created_at)"
            " SELECT *, true AS created FROM i UNION ALL"
            " SELECT id, account_id, service_number, keyword, url, created_at, false FROM mo_subscriptions"
            " WHERE account_id = $1 AND service_number = $2 AND keyword = $3 AND url = $4"
            " AND NOT EXISTS (SELECT 1 FROM i)",
            account_id, service_number, keyword, url)
        assert row is not None
        created = row["created"]
        return MoSubscription(**{k: row[k] for k in MoSubscription.__struct_fields__}), created

    async def mo_subscriptions(self, account_id: int) -> list[MoSubscription]:
        return [MoSubscription(**dict(r)) for r in await self.fetch(
            "SELECT id, account_id, service_number, keyword, url, created_at FROM mo_subscriptions"
            " WHERE account_id = $1 ORDER BY id", account_id)]

    async def delete_mo_subscription(self, account_id: int, subscription_id: int) -> bool:
        return await self.execute("DELETE FROM mo_subscriptions WHERE id = $1 AND account_id = $2",
                                  subscription_id, account_id) == "DELETE 1"

    async def mo_subscriptions_for(self, number: str) -> list[MoSubscription]:
        """Subscriptions whose service number ``number`` starts with (any account, any keyword)."""
        return [MoSubscription(**dict(r)) for r in await self.fetch(
            "SELECT id, account_id, service_number, keyword, url, created_at FROM mo_subscriptions"
            " WHERE $1 LIKE service_number || '%' ORDER BY id", number)]

    # -- admin --------------------------------------------------------------------------------
    # Read-only look-ups for the admin page and stream: queue health, messages by number.

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

    async def messages_to(self, dest: str, limit: int = 20) -> list[MessageView]:
        """The latest ``limit`` messages to ``dest`` (11-digit form), newest first, with history."""
        ids = [r["id"] for r in await self.fetch(
            "SELECT id FROM messages WHERE dest = $1 ORDER BY created_at DESC, id DESC LIMIT $2", dest, limit)]
        views = [await self.message(i) for i in ids]
        return [v for v in views if v is not None]

    async def account_names(self, ids: Sequence[int]) -> dict[int, str]:
        """Account names by id, for the admin views."""
        rows = await self.fetch("SELECT id, name FROM accounts WHERE id = ANY($1::bigint[])", list(ids))
        return {r["id"]: r["name"] for r in rows}

    # -- LISTEN/NOTIFY: wake-ups between processes sharing the database -------------------------

    async def notify(self, channel: str, payload: str = "") -> None:
        """``NOTIFY channel`` (delivered to every session listening on it, in any process)."""
        await self.execute("SELECT pg_notify($1, $2)", channel, payload)

    async def serve_notifications(self, url: str, channel: str, on_notify: Callable[[], None], *,
                                  connect_timeout: float = 10.0, check_interval: float | None = None,
                                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """``LISTEN channel`` on a connection of its own (not the pool's) to ``url``; call
        ``on_notify`` in Trio for each notification, until cancelled.

        The connection is checked every ``check_interval`` seconds (default
        :data:`LISTEN_CHECK_INTERVAL`); raises :class:`StoreUnavailable` once it is lost (the
        caller listens again)."""
        interval = LISTEN_CHECK_INTERVAL if check_interval is None else check_interval
        token = trio.lowlevel.current_trio_token()
        lost = trio.Event()

        def notified(*_: object) -> None:  # on the asyncio side: hand over to Trio
            token.run_sync_soon(on_notify)

        def terminated(*_: object) -> None:
            token.run_sync_soon(lost.set)

        conn = await self._call(_aio_listen, url, channel, notified, terminated, connect_timeout)
        try:
            task_status.started()
            while True:
                with trio.move_on_after(interval):
                    await lost.wait()
                    raise StoreUnavailable(f"the connection listening on {channel} was lost")
                with trio.move_on_after(connect_timeout) as scope:
                    await self._call(conn.fetchval, "SELECT 1")
                if scope.cancelled_caught:
                    raise StoreUnavailable(f"the connection listening on {channel} does not answer")
        finally:
            with trio.move_on_after(ROLLBACK_TIMEOUT) as scope:
                scope.shield = True
                try:
                    await aio_as_trio(conn.close, loop=self._loop)(timeout=ROLLBACK_TIMEOUT)
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                    log.debug("closing the listening connection failed channel=%s error=%r", channel, exc)


# -- MO and compliance: stored shapes ------------------------------------------------------------


class MoFinish(msgspec.Struct, frozen=True, kw_only=True):
    """How one dispatched MO is recorded (:meth:`Store.finish_mos`)."""

    mo_id: int
    merchant_id: int | None
    command: str
    outcome: str
    callbacks: tuple[MoSubscription, ...] = ()


class InboundMo(msgspec.Struct, frozen=True, kw_only=True):
    """A stored inbound message, as MO dispatch claims it."""

    id: int
    channel: str
    sender: str
    service_number: str
    body: str
    received_at: datetime
    attempts: int = 1


class MoSubscription(msgspec.Struct, frozen=True, kw_only=True):
    """An upstream app's subscription to the MOs of a service number (and its extensions),
    optionally only those whose first word is ``keyword``."""

    id: int
    account_id: int
    service_number: str
    keyword: str
    url: str
    created_at: datetime | None = None


class BlockedNumber(msgspec.Struct, frozen=True, kw_only=True):
    phone: str
    reason: str
    source: str
    created_at: datetime

def _parts(body: str, parts: int) -> tuple[str, ...]:
    """The parts a claimed text goes out in. A text stored as one part is its own plan (the
    intake planned it so: :func:`~gateway.text.plan` returns a fitting text whole); only a
    long text is cut again, with the same rules as at acceptance."""
    if parts == 1:
        return (body,)
    return plan(body, max_parts=255).parts


class Transaction:
    """Statements on one connection inside :meth:`Store.transaction`."""

    def __init__(self, store: Store, conn: asyncpg.Connection) -> None:
        self._store = store
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> str:
        return await self._store._call(self._conn.execute, sql, *args)

    async def executemany(self, sql: str, args: Sequence[Sequence[Any]]) -> None:
        await self._store._call(self._conn.executemany, sql, args)

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await self._store._call(self._conn.fetch, sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        return await self._store._call(self._conn.fetchrow, sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._store._call(self._conn.fetchval, sql, *args)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A connection going back to the pool keeps its session as it is.

    asyncpg has already ended any transaction left open (``ROLLBACK``) and dropped its
    listeners; its default reset would add a round trip per use of the pool (advisory
    unlock, ``CLOSE ALL``, ``UNLISTEN *``, ``RESET ALL``) for session state the store never
    creates: it takes only transaction-scoped advisory locks, declares no cursor outside a
    transaction, listens to nothing and sets no session variable.
    """


@asynccontextmanager
async def open_store(url: str, *, pool_size: int = 8, connect_timeout: float = 10.0) -> AsyncIterator[Store]:
    """A connection pool to ``url``; the caller has entered ``trio_asyncio.open_loop()``."""
    try:
        pool = await aio_as_trio(asyncpg.create_pool)(
            dsn=url, min_size=min(2, pool_size), max_size=pool_size, timeout=connect_timeout,
            command_timeout=60, server_settings={"application_name": "smsgw"}, reset=_keep_session,
        )
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
        raise _translate(exc) from exc
    try:
        yield Store(pool, trio_asyncio.current_loop.get())
    finally:
        try:
            await aio_as_trio(pool.close)()
        except Exception as exc:  # closing must not mask the error that got us here
            log.warning("closing the database pool failed: %s", exc)


# -- LISTEN/NOTIFY (asyncio side) -------------------------------------------------------------

LISTEN_CHECK_INTERVAL = 30.0
"""Seconds between two checks that a listening connection still answers."""


async def _aio_listen(url: str, channel: str, notified: Callable[..., None], terminated: Callable[..., None],
                      timeout: float) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn=url, timeout=timeout, server_settings={"application_name": "smsgw-listen"})
    try:
        conn.add_termination_listener(terminated)
        await conn.add_listener(channel, notified)
    except BaseException:
        conn.terminate()
        raise
    return conn
