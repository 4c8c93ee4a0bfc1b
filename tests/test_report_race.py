"""Delivery reports racing their own submit record, on a real PostgreSQL.

A report that reaches the gateway before its Msg_Id mapping is stored waits in the grace
buffer and is retried while the event loop goes on recording submits. If the mapping commits
between the retry's UPDATE (which could not see it yet) and the look-up that tells a
duplicate report from an unknown one (which can), the report must come back *unmatched*, to
be retried, and never *matched* without having been applied: that was a message left
``submitted`` forever with its report acknowledged.
"""

from __future__ import annotations

import trio

from gateway.channel import Status, Submitted
from gateway.config import DispatcherConfig
from gateway.dispatcher import Dispatcher
from gateway.metrics import Metrics
from gateway.store import AcceptRequest, NewMessage

CHANNEL = "cmpp-a"


async def _two_queued(store) -> tuple[int, int]:
    account = await store.ensure_account("shop")
    (res,) = await store.accept([AcceptRequest(account_id=account.id, messages=tuple(
        NewMessage(dest=f"1380013000{i}", operator="cmcc", body="x", encoding="gsm7", parts=1)
        for i in range(2)))])
    a, b = (m.id for m in res.messages)
    await store.set_status([(a, Status.QUEUED, CHANNEL, None, ""), (b, Status.QUEUED, CHANNEL, None, "")])
    return a, b


async def _wait_for_lock_wait(store) -> None:
    """Until some backend waits on a row lock (the report batch's UPDATE)."""
    with trio.fail_after(10):
        while not await store.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()"):
            await trio.sleep(0.01)


async def test_a_mapping_committed_during_a_report_batch_is_not_taken_for_a_duplicate(store):
    a, b = await _two_queued(store)
    await store.record_submitted([(CHANNEL, a, 1, "ref-a")])
    outcomes = []

    async def reports() -> None:
        outcomes.extend(await store.record_reports(
            [(CHANNEL, "ref-a", str(Status.DELIVERED), "DELIVRD"),
             (CHANNEL, "ref-b", str(Status.DELIVERED), "DELIVRD")]))

    async with trio.open_nursery() as nursery:
        # Hold ref-a's row so that the batch's UPDATE starts (its snapshot taken) and waits.
        async with store.transaction() as tx:
            await tx.fetch("SELECT 1 FROM message_refs WHERE ref = 'ref-a' FOR UPDATE")
            nursery.start_soon(reports)
            await _wait_for_lock_wait(store)
            # ref-b's submit commits while the batch is in flight, after its UPDATE's snapshot.
            await store.record_submitted([(CHANNEL, b, 1, "ref-b")])
    # ref-a was applied; ref-b's report was not, so it must say so, to be held and retried.
    assert outcomes[0].matched and outcomes[0].message_id == a and outcomes[0].status == "delivered"
    assert not outcomes[1].matched
    assert await store.fetchval("SELECT status FROM messages WHERE id = $1", a) == "delivered"
    # The retry (what the grace buffer does) now applies it.
    (again,) = await store.record_reports([(CHANNEL, "ref-b", str(Status.DELIVERED), "DELIVRD")])
    assert again.matched and again.message_id == b and again.status == "delivered"
    assert await store.fetchval("SELECT status FROM messages WHERE id = $1", b) == "delivered"
    assert await store.fetchval("SELECT parts_delivered FROM messages WHERE id = $1", b) == 1


async def test_a_true_duplicate_report_still_matches_and_changes_nothing(store):
    a, _ = await _two_queued(store)
    await store.record_submitted([(CHANNEL, a, 1, "ref-a")])
    (first,) = await store.record_reports([(CHANNEL, "ref-a", str(Status.DELIVERED), "DELIVRD")])
    (dup,) = await store.record_reports([(CHANNEL, "ref-a", str(Status.DELIVERED), "DELIVRD")])
    assert first.matched and first.status == "delivered"
    assert dup.matched and dup.message_id == a and dup.status is None
    assert await store.fetchval("SELECT parts_delivered FROM messages WHERE id = $1", a) == 1


async def test_submitted_transitions_are_counted_on_their_own_channel(store):
    """``smsgw_messages_total{status="submitted"}`` labels each message by its channel."""
    account = await store.ensure_account("shop")
    (res,) = await store.accept([AcceptRequest(account_id=account.id, messages=tuple(
        NewMessage(dest=f"1380013000{i}", operator="cmcc", body="x", encoding="gsm7", parts=1)
        for i in range(3)))])
    ids = [m.id for m in res.messages]
    await store.set_status([(i, Status.QUEUED, None, None, "") for i in ids])
    metrics = Metrics()
    dispatcher = Dispatcher(store, [], DispatcherConfig(), metrics)
    await dispatcher._apply([Submitted(channel="cmpp-a", message_id=ids[0], part=1, ref="r0"),
                             Submitted(channel="modem-1", message_id=ids[1], part=1, ref="r1"),
                             Submitted(channel="modem-1", message_id=ids[2], part=1, ref="r2")])
    def submitted_on(channel: str) -> float | None:
        return metrics.registry.get_sample_value(
            "smsgw_messages_total", {"status": "submitted", "channel": channel})

    assert submitted_on("cmpp-a") == 1
    assert submitted_on("modem-1") == 2


async def test_the_same_ref_twice_in_one_batch_counts_once(store):
    account = await store.ensure_account("shop")
    (res,) = await store.accept([AcceptRequest(account_id=account.id, messages=(
        NewMessage(dest="13800130000", operator="cmcc", body="x" * 200, encoding="gsm7", parts=2),))])
    mid = res.messages[0].id
    await store.set_status([(mid, Status.QUEUED, CHANNEL, None, "")])
    await store.record_submitted([(CHANNEL, mid, 1, "ref-1"), (CHANNEL, mid, 2, "ref-2")])
    first, second = await store.record_reports([(CHANNEL, "ref-1", str(Status.DELIVERED), "DELIVRD"),
                                                (CHANNEL, "ref-1", str(Status.DELIVERED), "DELIVRD")])
    assert first.matched and second.matched and second.status is None
    # One part of two delivered: not yet final.
    assert await store.fetchval("SELECT parts_delivered FROM messages WHERE id = $1", mid) == 1
    assert await store.fetchval("SELECT status FROM messages WHERE id = $1", mid) == "submitted"
