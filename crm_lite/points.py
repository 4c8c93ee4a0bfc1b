"""The points ledger: earn, redeem, adjust and expire, each idempotent by key.

``crm_points_ledger`` is append-only (the database refuses UPDATE and DELETE on it); a
member's balance is kept beside it in ``crm_points_balances``, and every transaction on a
member first locks that row (``SELECT ... FOR UPDATE``), so transactions on one member run
one after another: a redemption sees every earlier one and can refuse cleanly
(:class:`~crm_lite.errors.InsufficientPoints`) instead of taking the balance below zero.

Keys are unique per merchant; repeating a key returns the original transaction (with
``duplicate=True``) and changes nothing, whatever the repeat asked.

Expiry is first in, first out: every debit (redemption, deduction, earlier expiry) uses up the
oldest credits first, so of the credits earned before the cut-off, ``max(0, old credits - all
debits)`` points are still unspent; that is what expires. Running it again expires nothing
more, since the expiry itself is a debit.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

import msgspec

from gateway.errors import StoreConflict
from gateway.store import Store

from .errors import InsufficientPoints, InvalidInput

Kind = Literal["earn", "redeem", "adjust", "expire"]
MAX_POINTS = 100_000_000
"""Points one transaction may move."""
MAX_KEY_LENGTH = 128


class PointsTx(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    member_id: int
    kind: Kind
    points: int
    """Signed: positive credits, negative debits."""
    balance: int
    """The member's balance right after this transaction."""
    key: str
    amount_fen: int | None = None
    note: str = ""
    created_at: datetime
    duplicate: bool = False
    """True when the key had been used: this is the original transaction, nothing changed."""


_COLUMNS = "id, member_id, kind, points, balance, key, amount_fen, note, created_at"


def _tx(row, duplicate: bool = False) -> PointsTx:
    return PointsTx(**dict(row), duplicate=duplicate)


def points_for_purchase(amount_fen: int, points_per_yuan: int) -> int:
    """Whole yuan times the merchant's rate (pure)."""
    return (amount_fen // 100) * points_per_yuan


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise InvalidInput("key", f"key is 1 to {MAX_KEY_LENGTH} characters")


async def transaction_by_key(store, merchant_id: int, key: str) -> PointsTx | None:
    row = await store.fetchrow(f"SELECT {_COLUMNS} FROM crm_points_ledger WHERE merchant_id = $1 AND key = $2",
                               merchant_id, key)
    return None if row is None else _tx(row, duplicate=True)


async def record(store: Store, merchant_id: int, member_id: int, kind: Kind, points: int, key: str, *,
                 amount_fen: int | None = None, note: str = "", staff_id: int | None = None) -> PointsTx:
    """Append one transaction of signed ``points`` to the member's ledger.

    Raises :class:`InsufficientPoints` when a debit exceeds the balance (nothing recorded, so
    the key may be used again). A key seen before returns the original transaction.
    """
    _check_key(key)
    if not isinstance(points, int) or points == 0 or abs(points) > MAX_POINTS:
        raise InvalidInput("points", f"points must be a non-zero whole number of at most {MAX_POINTS}")
    if len(note) > 200:
        raise InvalidInput("note", "a note is at most 200 characters")
    original = await transaction_by_key(store, merchant_id, key)
    if original is not None:
        return original
    return await _locked(store, merchant_id, member_id, key,
                         lambda tx, balance: _append(tx, merchant_id, member_id, kind, points, balance, key,
                                                     amount_fen=amount_fen, note=note, staff_id=staff_id))


async def _locked(store: Store, merchant_id: int, member_id: int, key: str, body) -> PointsTx | None:
    """Run ``await body(tx, balance)`` in a transaction holding the member's balance row lock,
    unless ``key`` has been used (then the original is returned)."""
    try:
        async with store.transaction() as tx:
            await tx.execute("INSERT INTO crm_points_balances (member_id, merchant_id) VALUES ($1, $2)"
                             " ON CONFLICT DO NOTHING", member_id, merchant_id)
            balance = await tx.fetchval("SELECT balance FROM crm_points_balances WHERE member_id = $1 FOR UPDATE",
                                        member_id)
            # Under the lock: a concurrent call with the same key on this member has committed.
            seen = await transaction_by_key(tx, merchant_id, key)
            if seen is not None:
                return seen
            return await body(tx, balance)
    except StoreConflict as exc:
        # The same key used at the same moment for another member: theirs is the original.
        if exc.constraint != "crm_points_ledger_merchant_id_key_key":
            raise
        original = await transaction_by_key(store, merchant_id, key)
        assert original is not None
        return original


async def _append(tx, merchant_id: int, member_id: int, kind: Kind, points: int, balance: int, key: str, *,
                  amount_fen: int | None, note: str, staff_id: int | None) -> PointsTx:
    if balance + points < 0:
        raise InsufficientPoints(balance, -points)
    row = await tx.fetchrow(
        "INSERT INTO crm_points_ledger (merchant_id, member_id, kind, points, balance, key, amount_fen,"
        f" note, staff_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {_COLUMNS}",
        merchant_id, member_id, kind, points, balance + points, key, amount_fen, note, staff_id or None)
    await tx.execute("UPDATE crm_points_balances SET balance = $2 WHERE member_id = $1", member_id, balance + points)
    return _tx(row)


async def balance_of(store, member_id: int) -> int:
    return await store.fetchval("SELECT coalesce((SELECT balance FROM crm_points_balances WHERE member_id = $1), 0)",
                                member_id)


async def history(store, merchant_id: int, member_id: int, *, limit: int = 50) -> list[PointsTx]:
    rows = await store.fetch(f"SELECT {_COLUMNS} FROM crm_points_ledger WHERE merchant_id = $1 AND member_id = $2"
                             " ORDER BY id DESC LIMIT $3", merchant_id, member_id, max(1, min(limit, 500)))
    return [_tx(r) for r in rows]


_EXPIRABLE = """
SELECT member_id,
       sum(points) FILTER (WHERE points > 0 AND created_at < $2) AS old_credits,
       -sum(points) FILTER (WHERE points < 0) AS debits
FROM crm_points_ledger WHERE merchant_id = $1 AND ($3::bigint IS NULL OR member_id = $3)
GROUP BY member_id
HAVING coalesce(sum(points) FILTER (WHERE points > 0 AND created_at < $2), 0)
       > coalesce(-sum(points) FILTER (WHERE points < 0), 0)
ORDER BY member_id
"""


class ExpiryRun(msgspec.Struct, frozen=True, kw_only=True):
    run: str
    cutoff: datetime
    members: int
    points: int


async def expire(store: Store, merchant_id: int, *, cutoff: datetime, run: str,
                 member_id: int | None = None) -> ExpiryRun:
    """Expire, first in first out, the points earned before ``cutoff`` and not yet spent.

    Each member's expiry is one ``expire`` transaction keyed ``expire:<run>:<member id>``, so
    repeating a run (after a crash, say) changes nothing; a later run expires only what was
    earned before its own cut-off and is still unspent.
    """
    if not 1 <= len(run) <= 64:
        raise InvalidInput("run", "run is 1 to 64 characters")
    members = points = 0
    note = f"{cutoff.date().isoformat()} 前获得的积分到期"
    for row in await store.fetch(_EXPIRABLE, merchant_id, cutoff, member_id):
        member = row["member_id"]

        async def expire_member(tx, balance: int, member: int = member) -> PointsTx | None:
            # Recomputed under the member's lock, so a debit that raced in is counted.
            due = await tx.fetchval(_DUE, member, cutoff)
            due = min(due, balance)
            if due <= 0:
                return None
            return await _append(tx, merchant_id, member, "expire", -due, balance, f"expire:{run}:{member}",
                                 amount_fen=None, note=note, staff_id=None)

        tx = await _locked(store, merchant_id, member, f"expire:{run}:{member}", expire_member)
        if tx is not None and not tx.duplicate:
            members += 1
            points += -tx.points
    return ExpiryRun(run=run, cutoff=cutoff, members=members, points=points)


_DUE = """
SELECT coalesce(sum(points) FILTER (WHERE points > 0 AND created_at < $2), 0)
       - coalesce(-sum(points) FILTER (WHERE points < 0), 0)
FROM crm_points_ledger WHERE member_id = $1
"""


def expiry_cutoff(now: datetime, days: int) -> datetime:
    return now - timedelta(days=days)
