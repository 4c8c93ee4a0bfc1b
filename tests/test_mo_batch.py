"""MO dispatch by the batch, on the real database: one merchant look-up, one CRM preparation
and one finishing statement per claim, with the same answers as one MO at a time; and MOs
stored beside (not behind) the MT bookkeeping of the same channel events."""

from __future__ import annotations

from datetime import datetime, timezone

import trio

from crm_lite.handler import members_handler
from crm_lite.members import join
from crm_lite.points import record
from crm_lite.settings import update_settings
from gateway.channel import MoReceived, Status, Submitted
from gateway.compliance import MerchantDirectory
from gateway.config import DispatcherConfig, IntakeConfig
from gateway.dispatcher import Dispatcher
from gateway.intake import Intake
from gateway.metrics import Metrics
from gateway.mo_dispatch import MoDispatcher
from gateway.store import AcceptRequest, MoFinish, MoSubscription, NewMessage

MALL = "10658888001"


async def _mall(store):
    account = await store.ensure_account("mall")
    return await store.ensure_merchant("mall", account.id, MALL, "【商场】")


async def _mo(store, sender: str, text: str, to: str = MALL) -> int:
    (mo_id,) = await store.record_mo([("cmcc", sender, to, text, datetime.now(timezone.utc))])
    return mo_id


async def _dispatcher(nursery, store, handlers=()) -> MoDispatcher:
    metrics = Metrics()
    intake = Intake(store, IntakeConfig(), metrics)
    await nursery.start(intake.run)
    return MoDispatcher(store, intake, metrics, MerchantDirectory(store), handlers=handlers,
                        base_numbers=["10658888"])


async def _replies(store, phone: str) -> list[tuple[str, str]]:
    return [(r["body"], r["client_ref"]) for r in await store.fetch(
        "SELECT body, client_ref FROM messages WHERE dest = $1 ORDER BY id", phone)]


async def test_merchants_for_numbers_takes_the_longest_service_number(store):
    account = await store.ensure_account("mall")
    base = await store.ensure_merchant("base", account.id, "10658888", "【总店】")
    mall = await store.ensure_merchant("mall", account.id, MALL, "【商场】")
    found = await store.merchants_for_numbers([MALL, MALL + "23", "106588889", "10659999", MALL])
    assert found == {MALL: mall, MALL + "23": mall, "106588889": base}
    for number in (MALL, MALL + "23", "106588889", "10659999"):
        assert found.get(number) == await store.merchant_for_number(number)
    assert await store.merchants_for_numbers([]) == {}


async def test_finish_mos_marks_a_batch_once_and_queues_callbacks_only_for_those_marked(store):
    merchant = await _mall(store)
    first, second, third = [await _mo(store, "13900000001", t) for t in ("a", "b", "c")]
    sub = MoSubscription(id=1, account_id=merchant.account_id, service_number=MALL, keyword="", url="http://127.0.0.1:9/mo")
    assert await store.finish_mo(third, merchant_id=merchant.id, command="C", outcome="help")  # done elsewhere
    done = await store.finish_mos([
        MoFinish(mo_id=first, merchant_id=merchant.id, command="A", outcome="handled"),
        MoFinish(mo_id=second, merchant_id=None, command="B", outcome="callback", callbacks=(sub, sub)),
        MoFinish(mo_id=third, merchant_id=merchant.id, command="C", outcome="callback", callbacks=(sub,)),
    ])
    assert done == {first, second}
    rows = {r["id"]: r for r in await store.fetch(
        "SELECT id, merchant_id, command, outcome, dispatched_at, lease_until FROM inbound_messages")}
    assert (rows[first]["command"], rows[first]["outcome"], rows[first]["merchant_id"]) == ("A", "handled", merchant.id)
    assert (rows[second]["outcome"], rows[second]["merchant_id"]) == ("callback", None)
    assert rows[third]["outcome"] == "help"  # the earlier dispatch stands
    assert all(r["dispatched_at"] is not None and r["lease_until"] is None for r in rows.values())
    queued = await store.fetch("SELECT mo_id, url FROM webhook_outbox WHERE kind = 'mo' ORDER BY id")
    assert [r["mo_id"] for r in queued] == [second, second]
    assert await store.finish_mos([MoFinish(mo_id=first, merchant_id=None, command="", outcome="help")]) == set()


async def test_a_batch_answers_as_one_mo_at_a_time_would(store, nursery):
    merchant = await _mall(store)
    member, _ = await join(store, merchant.id, "13900000001")
    await record(store, merchant.id, member.id, "earn", 75, "pos-1")
    mos = await _dispatcher(nursery, store, handlers=[members_handler(store)])
    asks = await _mo(store, "13900000001", "2")          # a member: the balance, looked up for the batch
    stranger = await _mo(store, "13900000002", "２")     # not a member: the invitation
    joins = await _mo(store, "13900000003", "1")         # joins ...
    then_asks = await _mo(store, "13900000003", "2")     # ... and asks in the same batch: a member now
    unknown = await _mo(store, "13900000004", "你好")    # the help
    batch = await store.claim_mo("node", 100, 30.0)
    assert [m.id for m in batch] == [asks, stranger, joins, then_asks, unknown]
    outcomes = await mos._dispatch_batch(batch)
    assert outcomes == {asks: "handled", stranger: "handled", joins: "handled", then_asks: "handled", unknown: "help"}
    assert await _replies(store, "13900000001") == [("【商场】会员 M000001，您的积分余额为 75 分。", f"mo-{asks}-1")]
    assert await _replies(store, "13900000002") == [
        ("【商场】您还不是会员，回复1即可免费加入并累积积分。", f"mo-{stranger}-1")]
    assert await _replies(store, "13900000003") == [
        ("【商场】欢迎加入会员！您的会员号 M000002，回复2查询积分。", f"mo-{joins}-1"),
        ("【商场】会员 M000002，您的积分余额为 0 分。", f"mo-{then_asks}-1")]
    (help_text, _), = await _replies(store, "13900000004")
    assert help_text.startswith("【商场】回复：1 加入会员，2 查询积分")
    assert await store.fetchval("SELECT count(*) FROM inbound_messages WHERE dispatched_at IS NULL") == 0
    assert mos.dispatched == 5
    # The same claim dispatched again (a node whose lease ran out) sends and marks nothing.
    assert await mos._dispatch_batch(batch) == dict.fromkeys(outcomes)
    assert await store.fetchval("SELECT count(*) FROM messages") == 5 and mos.dispatched == 5


async def test_the_batch_uses_the_merchants_own_keywords(store, nursery):
    merchant = await _mall(store)
    await update_settings(store, merchant.id, join_keyword="JOIN", points_keyword="JF")
    mos = await _dispatcher(nursery, store, handlers=[members_handler(store)])
    asks = await _mo(store, "13900000001", "jf")
    old_keyword = await _mo(store, "13900000002", "2")
    assert await mos._dispatch_batch(await store.claim_mo("node", 100, 30.0)) == {asks: "handled", old_keyword: "help"}
    assert (await _replies(store, "13900000001"))[0][0] == "【商场】您还不是会员，回复JOIN即可免费加入并累积积分。"
    assert "JF 查询积分" in (await _replies(store, "13900000002"))[0][0]


class _BrokenPreparation:
    """A handler whose batch look-up fails: its MOs are still answered, one at a time."""

    def __init__(self, store) -> None:
        self.inner = members_handler(store)
        self.prepared = 0

    async def prepare(self, commands) -> None:
        self.prepared += 1
        raise RuntimeError("look-up service away")

    async def handle(self, command, outbox) -> bool:
        return await self.inner.handle(command, outbox)

    async def help_text(self, merchant) -> str:
        return await self.inner.help_text(merchant)


async def test_a_failing_preparation_only_costs_the_batch_its_shortcut(store, nursery):
    await _mall(store)
    handler = _BrokenPreparation(store)
    mos = await _dispatcher(nursery, store, handlers=[handler])
    mo_id = await _mo(store, "13900000001", "2")
    assert await mos._dispatch_batch(await store.claim_mo("node", 100, 30.0)) == {mo_id: "handled"}
    assert handler.prepared == 1
    assert (await _replies(store, "13900000001"))[0][0].startswith("【商场】您还不是会员")


async def _wait_for_lock_wait(store) -> None:
    with trio.fail_after(10):
        while not await store.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database()"):
            await trio.sleep(0.01)


async def test_mos_are_stored_while_the_mt_bookkeeping_waits(store, nursery):
    account = await store.ensure_account("shop")
    (res,) = await store.accept([AcceptRequest(account_id=account.id, messages=(
        NewMessage(dest="13800138000", operator="cmcc", body="x", encoding="gsm7", parts=1),))])
    (message,) = res.messages
    await store.set_status([(message.id, Status.QUEUED, "cmcc", None, "")])
    dispatcher = Dispatcher(store, [], DispatcherConfig(), Metrics())
    events_in, events = trio.open_memory_channel(10)
    mt_in, mt = trio.open_memory_channel(10)
    mo_in, mo = trio.open_memory_channel(10)
    notices_in, notices = trio.open_memory_channel(10)
    dispatcher.mo_listeners.append(notices_in)
    nursery.start_soon(dispatcher._route_events, events, mt_in, mo_in)
    nursery.start_soon(dispatcher._event_loop, mt)
    nursery.start_soon(dispatcher._event_loop, mo)
    async with store.transaction() as tx:
        await tx.fetch("SELECT 1 FROM messages WHERE id = $1 FOR UPDATE", message.id)
        # A submit whose write waits on the locked row; then, while it waits, an MO.
        await events_in.send(Submitted(channel="cmcc", message_id=message.id, part=1, ref="r1"))
        await _wait_for_lock_wait(store)
        await events_in.send(MoReceived(channel="cmcc", sender="13900000001", service_number=MALL, text="2",
                                        received_at=datetime.now(timezone.utc)))
        with trio.fail_after(10):
            mo_id, event = await notices.receive()
        assert event.sender == "13900000001"
        assert (await store.inbound(mo_id))["body"] == "2"
        assert await store.fetchval("SELECT count(*) FROM message_refs") == 0  # still waiting
    with trio.fail_after(10):
        while await store.fetchval("SELECT status FROM messages WHERE id = $1", message.id) != "submitted":
            await trio.sleep(0.01)
    assert await store.fetchval("SELECT count(*) FROM inbound_messages") == 1
