"""Accounts and their API keys."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from datetime import datetime

from .core import StoreCore
from .records import Account

API_KEY_PREFIX = "smsgw_"

ACCEPTED_SINCE = "SELECT count(*) FROM messages WHERE account_id = $1 AND created_at >= $2"
"""An account's messages since a time; run with plain index scans off (:meth:`accepted_since`)."""


def hash_api_key(key: str) -> bytes:
    """Keys are 256-bit random tokens, so one SHA-256 is the right hash (not a password KDF)."""
    return hashlib.sha256(key.encode()).digest()


class AccountStore(StoreCore):
    """Accounts (created or found by name, found by API key), their keys, and what the intake
    asks about an account (a client_ref already taken, messages accepted for its quota)."""

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

    async def account_by_name(self, name: str) -> Account | None:
        row = await self.fetchrow("SELECT id, name, webhook_secret FROM accounts WHERE name = $1", name)
        return None if row is None else Account(row["id"], row["name"], row["webhook_secret"])

    async def client_ref_taken(self, account_id: int, client_ref: str) -> bool:
        return bool(await self.fetchval(
            "SELECT 1 FROM client_refs WHERE account_id = $1 AND client_ref = $2", account_id, client_ref))

    async def accepted_since(self, account_id: int, since: datetime) -> int:
        """Messages the account had accepted since ``since`` (for its daily quota): read
        through ``messages_created_brin``, the ranges of the table written since then."""
        async with self.transaction() as tx:
            # Left to itself the planner may read all of messages_dest instead (its estimate
            # of a BRIN scan grows with the table's pages, which fillfactor 50 doubled): the
            # count of a day would then cost a walk over every message ever stored.
            await tx.execute("SET LOCAL enable_indexscan = off")
            return await tx.fetchval(ACCEPTED_SINCE, account_id, since)

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

    async def account_ids(self) -> dict[str, int]:
        """Every account's id by name (to resolve routing rules)."""
        return {r["name"]: r["id"] for r in await self.fetch("SELECT id, name FROM accounts")}

    async def account_names(self, ids: Sequence[int]) -> dict[int, str]:
        """Account names by id, for the admin views."""
        rows = await self.fetch("SELECT id, name FROM accounts WHERE id = ANY($1::bigint[])", list(ids))
        return {r["id"]: r["name"] for r in rows}
