"""Merchants (the businesses a deployment serves) and compliance: the accounts a merchant
sends through, consumers' unsubscribes, and the blocklist."""

from __future__ import annotations

from collections.abc import Sequence

from .core import StoreCore
from .records import BlockedNumber, Merchant


class MerchantStore(StoreCore):
    """Merchants and who may be texted."""

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
