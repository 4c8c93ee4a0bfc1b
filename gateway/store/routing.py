"""Routing: the routing table shared by every node, a claim batch's bookkeeping in one
transaction, and the per-recipient send log (migration 0005)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import asyncpg

from ..channel import Status
from .core import StoreCore
from .status import _aio_set_status

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


class RoutingStore(StoreCore):
    """The routing table, routed batches and per-recipient counting."""

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
        counted = bool(recipients) and decide is not None
        if not rows and not unroutable and not counted:
            return set(), {}  # the usual batch: every message routed, none over a limit
        sink = self._sink()
        if not unroutable and not counted:
            # One statement: atomic without a transaction block around it.
            moved = await self._call(_aio_set_status, self._pool,
                                     [(r[0], str(r[1]), r[2], r[3], r[4]) for r in rows], sink)
            self._emit(sink)
            return moved, {}

        async def run(pool: asyncpg.Pool) -> tuple[set[int], dict[int, float]]:
            async with pool.acquire() as conn:
                async with conn.transaction():
                    held: dict[int, float] = {}
                    if counted:
                        assert decide is not None
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
