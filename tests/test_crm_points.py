"""The points ledger on the real database: idempotent keys, no negative balance under
concurrency, append-only rows, FIFO expiry."""

from __future__ import annotations

from datetime import timedelta

import pytest
import trio

from crm_lite.errors import InsufficientPoints
from crm_lite.members import join
from crm_lite.points import balance_of, expire, history, record
from gateway.errors import StoreConflict


async def _member(store, phone="13900000001"):
    acct = await store.ensure_account("mall")
    merchant = await store.ensure_merchant("mall", acct.id, "10658888001", "【演示商场】")
    member, _ = await join(store, merchant.id, phone)
    return merchant, member


async def test_earn_and_redeem_are_idempotent_by_key(store):
    merchant, member = await _member(store)
    first = await record(store, merchant.id, member.id, "earn", 120, "pos-1", amount_fen=12_000)
    again = await record(store, merchant.id, member.id, "earn", 999, "pos-1", amount_fen=99_900)
    assert not first.duplicate and again.duplicate and again.id == first.id and again.points == 120
    spent = await record(store, merchant.id, member.id, "redeem", -50, "gift-1")
    assert (await record(store, merchant.id, member.id, "redeem", -50, "gift-1")).id == spent.id
    assert spent.balance == 70 and await balance_of(store, member.id) == 70
    assert [t.key for t in await history(store, merchant.id, member.id)] == ["gift-1", "pos-1"]


async def test_redeem_beyond_balance_fails_cleanly_and_key_stays_free(store):
    merchant, member = await _member(store)
    await record(store, merchant.id, member.id, "earn", 30, "pos-1")
    with pytest.raises(InsufficientPoints) as info:
        await record(store, merchant.id, member.id, "redeem", -31, "gift-1")
    assert (info.value.balance, info.value.wanted, info.value.code) == (30, 31, "insufficient_points")
    assert await balance_of(store, member.id) == 30
    assert (await record(store, merchant.id, member.id, "redeem", -30, "gift-1")).balance == 0


async def test_concurrent_redemptions_never_take_the_balance_below_zero(store):
    merchant, member = await _member(store)
    await record(store, merchant.id, member.id, "earn", 100, "pos-1")
    results: list[object] = []

    async def redeem(i: int) -> None:
        try:
            results.append(await record(store, merchant.id, member.id, "redeem", -15, f"gift-{i}"))
        except InsufficientPoints as exc:
            results.append(exc)

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(redeem, i)
    done = [r for r in results if not isinstance(r, InsufficientPoints)]
    assert len(done) == 6 and len(results) == 20  # 6 x 15 = 90 <= 100 < 7 x 15
    assert await balance_of(store, member.id) == 10
    total = await store.fetchval("SELECT sum(points) FROM crm_points_ledger WHERE member_id = $1", member.id)
    assert total == 10
    assert sorted(t.balance for t in done) == [10, 25, 40, 55, 70, 85]


async def test_the_same_key_at_once_records_one_transaction(store):
    merchant, member = await _member(store)
    got = []

    async def earn() -> None:
        got.append(await record(store, merchant.id, member.id, "earn", 10, "pos-same"))

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(earn)
    assert len({t.id for t in got}) == 1 and sum(not t.duplicate for t in got) == 1
    assert await balance_of(store, member.id) == 10


async def test_the_ledger_is_append_only(store):
    merchant, member = await _member(store)
    tx = await record(store, merchant.id, member.id, "earn", 10, "pos-1")
    with pytest.raises(StoreConflict, match="append-only"):
        await store.execute("UPDATE crm_points_ledger SET points = 1000 WHERE id = $1", tx.id)
    with pytest.raises(StoreConflict, match="append-only"):
        await store.execute("DELETE FROM crm_points_ledger WHERE id = $1", tx.id)
    with pytest.raises(StoreConflict):  # the balance row cannot go negative even by hand
        await store.execute("UPDATE crm_points_balances SET balance = -1 WHERE member_id = $1", member.id)


async def test_expiry_is_first_in_first_out_and_idempotent(store):
    merchant, member = await _member(store)
    old = await record(store, merchant.id, member.id, "earn", 100, "pos-1")
    await record(store, merchant.id, member.id, "redeem", -30, "gift-1")
    await trio.sleep(0.01)
    recent = await record(store, merchant.id, member.id, "earn", 50, "pos-2")
    assert recent.created_at > old.created_at
    cutoff = recent.created_at - timedelta(microseconds=1)  # the first earn is "old", the second not
    run = await expire(store, merchant.id, cutoff=cutoff, run="r1")
    # 100 old points, 30 of them spent first (FIFO): 70 expire, the 50 recent ones stay
    assert (run.members, run.points) == (1, 70)
    assert await balance_of(store, member.id) == 50
    assert (await expire(store, merchant.id, cutoff=cutoff, run="r1")).points == 0  # the same run again
    assert (await expire(store, merchant.id, cutoff=cutoff, run="r2")).points == 0  # nothing old is left
    # Later, the recent points age too; a redemption in between is taken from them first
    await record(store, merchant.id, member.id, "redeem", -20, "gift-2")
    later = await expire(store, merchant.id, cutoff=recent.created_at + timedelta(seconds=1), run="r3")
    assert later.points == 30 and await balance_of(store, member.id) == 0
    kinds = [(t.kind, t.points) for t in reversed(await history(store, merchant.id, member.id))]
    assert kinds == [("earn", 100), ("redeem", -30), ("earn", 50), ("expire", -70), ("redeem", -20), ("expire", -30)]


async def test_adjustments_count_as_credits_and_debits(store):
    merchant, member = await _member(store)
    await record(store, merchant.id, member.id, "adjust", 40, "fix-1", note="补录")
    with pytest.raises(InsufficientPoints):
        await record(store, merchant.id, member.id, "adjust", -41, "fix-2")
    assert (await record(store, merchant.id, member.id, "adjust", -40, "fix-2")).balance == 0
