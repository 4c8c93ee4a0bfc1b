"""Inbound messages (MOs): stored as they arrive, claimed by MO dispatch under a lease and
finished with their MO callbacks queued; and upstream apps' subscriptions to them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from .core import StoreCore
from .records import InboundMo, MoFinish, MoSubscription

log = logging.getLogger(__name__)


class MoStore(StoreCore):
    """Stored MOs, their dispatch, and MO subscriptions."""

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

    async def inbound(self, mo_id: int) -> asyncpg.Record | None:
        """An inbound message with its dispatch columns (for operators and tests)."""
        return await self.fetchrow(
            "SELECT id, channel, sender, service_number, body, received_at, merchant_id, command, outcome,"
            " dispatched_at, attempts FROM inbound_messages WHERE id = $1", mo_id)

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
