"""MO dispatch against the real database: exactly once across crashes, handlers, help, callbacks."""

from __future__ import annotations

from datetime import datetime, timezone

import trio

from gateway.compliance import MerchantDirectory
from gateway.config import CmppConfig, IntakeConfig, MerchantConfig
from gateway.intake import Intake
from gateway.metrics import Metrics
from gateway.mo_dispatch import MAX_ATTEMPTS, MoDispatcher, ReplyOutbox
from gateway.router.commands import InboundCommand, Outbox
from gateway.router.mo_dispatch import default_help, unsubscribe_confirmation
from gateway.store import Merchant
from tests.channels import ScriptedChannel
from tests.conftest import start_gateway

MALL_NUMBER = "10658888001"
CONSUMER = "13900000001"


async def setup(store) -> Merchant:
    account = await store.ensure_account("mall")
    return await store.ensure_merchant("mall", account.id, MALL_NUMBER, "【某某商场】")


async def store_mo(store, text: str, to: str = MALL_NUMBER, sender: str = CONSUMER) -> int:
    (mo_id,) = await store.record_mo([("cmcc-1", sender, to, text, datetime.now(timezone.utc))])
    return mo_id


async def sent_to(store, phone: str) -> list[tuple[str, str, str | None]]:
    return [(r["body"], r["sender"], r["client_ref"]) for r in await store.fetch(
        "SELECT body, sender, client_ref FROM messages WHERE dest = $1 ORDER BY id", phone)]


async def wait_for(predicate, timeout: float = 10.0, step: float = 0.02):
    with trio.fail_after(timeout):
        while not (result := await predicate()):
            await trio.sleep(step)
    return result


async def start_mo(nursery, store, *, handlers=(), lease: float = 60.0, poll: float = 0.05) -> MoDispatcher:
    metrics = Metrics()
    intake = Intake(store, IntakeConfig(), metrics)
    await nursery.start(intake.run)
    mo = MoDispatcher(store, intake, metrics, MerchantDirectory(store), handlers=handlers,
                      base_numbers=["10658888"], lease=lease, poll=poll)
    await nursery.start(mo.run)
    return mo


class PointsDesk:
    """A small real command handler: answers ``2`` with the points, knows nothing else."""

    def __init__(self, fail_times: int = 0) -> None:
        self.seen: list[InboundCommand] = []
        self.fail_times = fail_times

    async def handle(self, command: InboundCommand, outbox: Outbox) -> bool:
        self.seen.append(command)
        if self.fail_times:
            self.fail_times -= 1
            raise RuntimeError("points ledger not reachable")
        if command.keyword != "2":
            return False
        await outbox.send(account_id=command.merchant.account_id, to=command.phone, text="您的积分：120")
        return True

    async def help_text(self, merchant: Merchant) -> str:
        return f"{merchant.signature}回复2查积分，回复TD退订"


async def test_unknown_text_gets_the_default_help_from_the_merchants_number(store, nursery):
    merchant = await setup(store)
    mo_id = await store_mo(store, "你好")
    await start_mo(nursery, store)
    row = await wait_for(lambda: _dispatched(store, mo_id))
    assert row["outcome"] == "help" and row["merchant_id"] == merchant.id and row["command"] == "你好"
    assert await sent_to(store, CONSUMER) == [(default_help(merchant), "001", f"mo-{mo_id}-1")]


async def test_td_unsubscribes_and_confirms(store, nursery):
    merchant = await setup(store)
    mo_id = await store_mo(store, " ｔｄ ")
    await start_mo(nursery, store)
    row = await wait_for(lambda: _dispatched(store, mo_id))
    assert row["outcome"] == "unsubscribed" and row["command"] == "TD"
    assert await store.is_unsubscribed(merchant.id, CONSUMER)
    assert [b for b, _, _ in await sent_to(store, CONSUMER)] == [unsubscribe_confirmation(merchant)]
    assert await store.resubscribe(merchant.id, CONSUMER)
    assert not await store.is_unsubscribed(merchant.id, CONSUMER)
    assert not await store.resubscribe(merchant.id, CONSUMER)


async def test_handlers_answer_their_commands_and_give_the_help(store, nursery):
    merchant = await setup(store)
    desk = PointsDesk()
    first = await store_mo(store, "代码２")
    second = await store_mo(store, "CJ")
    await start_mo(nursery, store, handlers=[desk])
    await wait_for(lambda: _dispatched(store, second))
    assert (await store.inbound(first))["outcome"] == "handled"
    assert (await store.inbound(second))["outcome"] == "help"
    assert [c.keyword for c in desk.seen] == ["2", "CJ"]  # one sender: in order
    command = desk.seen[0]
    assert command.mo_id == first and command.phone == CONSUMER and command.merchant == merchant
    bodies = await sent_to(store, CONSUMER)
    assert bodies == [("您的积分：120", "001", f"mo-{first}-1"),
                      ("【某某商场】回复2查积分，回复TD退订", "001", f"mo-{second}-1")]


async def test_a_failing_handler_is_retried_then_bypassed(store, nursery, monkeypatch):
    monkeypatch.setattr("gateway.mo_dispatch.RETRY_DELAY", 0.05)
    await setup(store)
    desk = PointsDesk(fail_times=1)
    mo_id = await store_mo(store, "2")
    await start_mo(nursery, store, handlers=[desk])
    row = await wait_for(lambda: _dispatched(store, mo_id))
    assert row["outcome"] == "handled" and row["attempts"] == 2
    assert [b for b, _, _ in await sent_to(store, CONSUMER)] == ["您的积分：120"]


async def test_a_handler_that_always_fails_does_not_leave_the_consumer_unanswered(store, nursery, monkeypatch):
    monkeypatch.setattr("gateway.mo_dispatch.RETRY_DELAY", 0.05)
    merchant = await setup(store)
    mo_id = await store_mo(store, "2")
    await start_mo(nursery, store, handlers=[PointsDesk(fail_times=10**6)])
    row = await wait_for(lambda: _dispatched(store, mo_id))
    assert row["outcome"] == "failed" and row["attempts"] == MAX_ATTEMPTS
    assert [b for b, _, _ in await sent_to(store, CONSUMER)] == [default_help(merchant)]


async def test_mo_stored_before_a_crash_is_dispatched_once_after_the_lease(store, nursery):
    merchant = await setup(store)
    mo_id = await store_mo(store, "hello")
    # A node claims the MO, sends its reply, and dies before marking it dispatched.
    (claimed,) = await store.claim_mo("dead-node", 10, 0.5)
    assert claimed.id == mo_id
    metrics = Metrics()
    intake = Intake(store, IntakeConfig(), metrics)
    await nursery.start(intake.run)
    dead = ReplyOutbox(intake, MerchantDirectory(store), mo_id=mo_id, sender="001")
    await dead.send(account_id=merchant.account_id, to=CONSUMER, text=default_help(merchant))
    # The survivor cannot take it while the lease holds, then does, and sends nothing twice.
    mo = MoDispatcher(store, intake, metrics, MerchantDirectory(store), base_numbers=["10658888"], poll=0.05)
    await nursery.start(mo.run)
    await trio.sleep(0.2)
    assert (await store.inbound(mo_id))["dispatched_at"] is None
    row = await wait_for(lambda: _dispatched(store, mo_id))
    assert row["outcome"] == "help" and row["attempts"] == 2
    assert len(await sent_to(store, CONSUMER)) == 1
    # Dispatching the same MO again (a late node) changes nothing.
    assert await mo.dispatch(claimed) is None
    assert len(await sent_to(store, CONSUMER)) == 1


async def test_mo_for_no_merchant_is_recorded_or_called_back(store, nursery):
    shop = await store.ensure_account("shop")
    await store.add_mo_subscription(shop.id, "1069", "", "http://127.0.0.1:9/mo")
    lonely = await store_mo(store, "1", to="10690000")
    subscribed = await store_mo(store, "1", to="106900001")
    noone = await store_mo(store, "TD", to="10700000")
    await start_mo(nursery, store)
    await wait_for(lambda: _dispatched(store, noone))
    assert (await store.inbound(lonely))["outcome"] == "callback"
    assert (await store.inbound(subscribed))["outcome"] == "callback"
    row = await store.inbound(noone)
    assert row["outcome"] == "no_merchant" and row["merchant_id"] is None
    assert await store.fetchval("SELECT count(*) FROM webhook_outbox WHERE kind = 'mo'") == 2
    assert await sent_to(store, CONSUMER) == []


async def test_keyword_subscription_takes_what_no_handler_answers(store, nursery):
    merchant = await setup(store)
    await store.add_mo_subscription(merchant.account_id, MALL_NUMBER, "CJ", "http://127.0.0.1:9/cj")
    desk = PointsDesk()
    points = await store_mo(store, "2")
    lottery = await store_mo(store, "cj 抽奖")
    await start_mo(nursery, store, handlers=[desk])
    await wait_for(lambda: _dispatched(store, lottery))
    assert (await store.inbound(points))["outcome"] == "handled"
    assert (await store.inbound(lottery))["outcome"] == "callback"
    row = await store.fetchrow("SELECT url, account_id, mo_id FROM webhook_outbox WHERE kind = 'mo'")
    assert dict(row) == {"url": "http://127.0.0.1:9/cj", "account_id": merchant.account_id, "mo_id": lottery}
    assert len(await sent_to(store, CONSUMER)) == 1  # only the points reply; the app answers the lottery


async def test_gateway_restart_dispatches_what_was_stored_and_publishes_the_event(nursery, database_url):
    # Stored by a gateway that stopped before dispatching it:
    import trio_asyncio

    from gateway.store import open_store

    async with trio_asyncio.open_loop():
        async with open_store(database_url, pool_size=2) as s:
            merchant = await setup(s)
            waiting = await store_mo(s, "早上好")
    channel = ScriptedChannel()
    gw = await start_gateway(nursery, database_url, channels=[channel],
                             cmpp=[CmppConfig(name="cmcc-1", sp_id="901234", secret="s", service_number="10658888")],
                             merchants=[MerchantConfig(name="mall", account="mall", service_number=MALL_NUMBER,
                                                       signature="【某某商场】")])
    with gw.running.bus.subscribe() as events:
        row = await wait_for(lambda: _dispatched(gw.store, waiting))
        assert row["outcome"] == "help"
        # A new MO through a channel: stored by the dispatcher, dispatched on its notice.
        await channel.mo(CONSUMER, "TD", service_number=MALL_NUMBER)
        await wait_for(lambda: _count(gw.store, "SELECT count(*) FROM inbound_messages WHERE outcome = 'unsubscribed'"))
        with trio.fail_after(10):
            while not [m for m in channel.submitted if m.dest == CONSUMER]:
                await trio.sleep(0.02)
        dispatched = []
        with trio.fail_after(10):
            while not dispatched:
                batch, _ = await events.receive()
                dispatched += [e for e in batch if getattr(e, "command", "") == "TD"]
    assert dispatched[0].merchant_id == merchant.id
    submitted = [m for m in channel.submitted if m.dest == CONSUMER]
    assert submitted[0].sender == "001"  # the reply comes from the merchant's number under the link
    metrics = gw.running.metrics.exposition().decode()
    assert 'smsgw_mo_dispatched_total{command="TD",outcome="unsubscribed"} 1.0' in metrics
    assert 'smsgw_mo_dispatched_total{command="other",outcome="help"} 1.0' in metrics


async def _dispatched(store, mo_id: int):
    row = await store.inbound(mo_id)
    return row if row is not None and row["dispatched_at"] is not None else None


async def _count(store, sql: str) -> int:
    return await store.fetchval(sql)


class Stuck:
    """A handler that never returns (a hung dependency)."""

    def __init__(self) -> None:
        self.entered = trio.Event()

    async def handle(self, command: InboundCommand, outbox: Outbox) -> bool:
        self.entered.set()
        await trio.sleep_forever()
        return False

    async def help_text(self, merchant: Merchant) -> str:
        return "help"


async def test_a_stopping_service_gives_its_claims_back_at_once(store, nursery):
    await setup(store)
    mo_id = await store_mo(store, "2")
    stuck = Stuck()
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as inner:
            await start_mo(inner, store, handlers=[stuck])
            with trio.fail_after(10):
                await stuck.entered.wait()
            row = await store.fetchrow("SELECT lease_until > now() AS held FROM inbound_messages WHERE id = $1", mo_id)
            assert row["held"]
            scope.cancel()
    row = await store.fetchrow("SELECT lease_until, dispatched_at FROM inbound_messages WHERE id = $1", mo_id)
    assert row["lease_until"] is None and row["dispatched_at"] is None
    # The next service takes it at once (no lease to wait out).
    desk = PointsDesk()
    await start_mo(nursery, store, handlers=[desk])
    row = await wait_for(lambda: _dispatched(store, mo_id), timeout=3)
    assert row["outcome"] == "handled"


async def test_the_dispatchers_notice_wakes_the_service_at_once(store, nursery):
    await setup(store)
    mo = await start_mo(nursery, store, poll=60.0)
    await trio.sleep(0.1)  # the first claim found nothing; the next poll is a minute away
    mo_id = await store_mo(store, "你好")
    await mo.listener.send((mo_id, None))
    row = await wait_for(lambda: _dispatched(store, mo_id), timeout=3)
    assert row["outcome"] == "help"


async def test_two_nodes_dispatch_every_mo_exactly_once(store, nursery, monkeypatch):
    monkeypatch.setattr("gateway.mo_dispatch.CLAIM_BATCH", 4)  # small claims: the nodes take turns
    await setup(store)
    senders = [f"139000000{i:02d}" for i in range(30)]
    ids = [await store_mo(store, "hello", sender=s) for s in senders]
    first = await start_mo(nursery, store)
    second = await start_mo(nursery, store)

    async def both_done() -> bool:
        return first.dispatched + second.dispatched >= 30

    await wait_for(both_done)
    await trio.sleep(0.2)  # a second dispatch of any MO would show now
    assert first.dispatched + second.dispatched == 30
    assert await store.fetchval("SELECT count(*) FROM inbound_messages WHERE dispatched_at IS NOT NULL") == 30
    replies = await store.fetch("SELECT dest, client_ref FROM messages ORDER BY dest")
    assert [r["dest"] for r in replies] == senders
    assert sorted(r["client_ref"] for r in replies) == sorted(f"mo-{i}-1" for i in ids)
