"""Retention (``[retention] days``): finished messages go, with everything recorded of them,
some days after their validity ended; nothing else goes."""

from __future__ import annotations

import trio

from gateway.channel import Status
from gateway.config import RetentionConfig
from gateway.metrics import Metrics
from gateway.retention import purge_once, serve_retention
from gateway.store import AcceptRequest, NewMessage


async def accept(store, count: int, *, callback_url: str | None = None) -> list[int]:
    account = await store.ensure_account("shop")
    (res,) = await store.accept([AcceptRequest(
        account_id=account.id, callback_url=callback_url,
        messages=tuple(NewMessage(dest=f"1380013{i:04d}", operator="cmcc", body="x", encoding="gsm7", parts=1)
                       for i in range(count)))])
    return [m.id for m in res.messages]


async def delivered(store, ids: list[int]) -> None:
    await store.set_status([(i, Status.QUEUED, "cmpp-a", None, "channel=cmpp-a") for i in ids])
    await store.record_submitted([("cmpp-a", i, 1, f"r{i}") for i in ids])
    await store.record_reports([("cmpp-a", f"r{i}", "delivered", "") for i in ids])


async def ended_days_ago(store, ids: list[int], days: float) -> None:
    await store.execute("UPDATE messages SET expires_at = now() - make_interval(secs => $2 * 86400)"
                        " WHERE id = ANY($1::bigint[])", ids, days)


async def left(store, table: str, column: str, ids: list[int]) -> list[int]:
    rows = await store.fetch(f"SELECT DISTINCT {column} FROM {table} WHERE {column} = ANY($1::bigint[])"
                             f" ORDER BY 1", ids)
    return [r[0] for r in rows]


async def test_finished_messages_past_retention_go_with_their_history_refs_and_callbacks(store):
    old = await accept(store, 5, callback_url="http://127.0.0.1:9/cb")
    recent = await accept(store, 2)
    stuck = await accept(store, 1)  # never reached a final state
    await delivered(store, old + recent)
    await store.set_status([(stuck[0], Status.SUBMITTED, "cmpp-a", None, "channel=cmpp-a")])
    await ended_days_ago(store, old + stuck, 40)
    await ended_days_ago(store, recent, 10)
    everything = old + recent + stuck
    assert await left(store, "webhook_outbox", "message_id", old) == old

    assert await purge_once(store, 30, page=2, pause=0) == 5  # three pages
    assert await left(store, "messages", "id", everything) == recent + stuck
    assert await left(store, "message_events", "message_id", everything) == recent + stuck
    assert await left(store, "message_refs", "message_id", everything) == recent
    assert await left(store, "webhook_outbox", "message_id", everything) == []
    assert await purge_once(store, 30, page=2, pause=0) == 0
    # A shorter retention takes the recent ones too; the unfinished one stays.
    assert await purge_once(store, 7, page=2, pause=0) == 2
    assert await left(store, "messages", "id", everything) == stuck


async def test_the_service_purges_on_its_interval_and_counts_it(store):
    ids = await accept(store, 3)
    await delivered(store, ids)
    await ended_days_ago(store, ids, 2)
    metrics = Metrics()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_retention, store, RetentionConfig(days=1, interval=0.05), metrics)
        with trio.fail_after(10):
            while await left(store, "messages", "id", ids):
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert metrics.registry.get_sample_value("smsgw_messages_purged_total") == 3


async def test_days_zero_keeps_everything(store):
    ids = await accept(store, 2)
    await delivered(store, ids)
    await ended_days_ago(store, ids, 3650)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_retention, store, RetentionConfig(), Metrics())
        await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    assert await left(store, "messages", "id", ids) == ids
