"""The scheduled points expiry: the schedule on trio's MockClock, the ledger on the real
database (balance after expiry, a repeated run changes nothing, two services at once expire once)."""

from __future__ import annotations

import functools
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import trio
import trio.testing

from crm_lite.expiry import PointsExpiry, cutoff_for, expire_all, run_key
from crm_lite.members import join
from crm_lite.points import balance_of, history, record
from crm_lite.settings import update_settings
from gateway.config import CrmConfig, default_config
from gateway.metrics import Metrics

TZ = ZoneInfo("Asia/Shanghai")


@pytest.fixture
def manual_clock():
    """Trio time moves only when the test jumps it (no autojump: database round trips take
    real time, and the pool's own timeouts must not fire while they do)."""
    return trio.testing.MockClock()


async def _shop(store, name: str = "mall", number: str = "10658888001", *, days: int | None = 30):
    acct = await store.ensure_account(name)
    merchant = await store.ensure_merchant(name, acct.id, number, "【演示商场】")
    if days is not None:
        await update_settings(store, merchant.id, points_expire_days=days)
    return merchant


async def _earner(store, merchant, phone: str, points: int):
    member, _ = await join(store, merchant.id, phone)
    await record(store, merchant.id, member.id, "earn", points, f"pos-{phone}")
    return member


def _today() -> date:
    return datetime.now(TZ).date()


def test_the_rule_keeps_points_through_the_nth_day_after_the_day_earned():
    day = date(2026, 3, 31)
    assert cutoff_for(day, 30, TZ) == datetime(2026, 3, 1, tzinfo=TZ)
    assert run_key(day, 30) == "auto-2026-03-31-30d"
    # earned at 23:59 on 1 March: still valid on 31 March, gone on 1 April
    earned = datetime(2026, 3, 1, 23, 59, tzinfo=TZ)
    assert not earned < cutoff_for(day, 30, TZ)
    assert earned < cutoff_for(day + timedelta(days=1), 30, TZ)


def test_expiry_interval_is_a_crm_key_defaulting_to_a_day():
    assert default_config().crm.expiry_interval == 86_400.0
    assert default_config(crm=CrmConfig(expiry_interval=3600)).crm.expiry_interval == 3600.0


async def test_expire_all_expires_old_points_and_a_second_run_is_a_no_op(store):
    shop = await _shop(store, days=30)
    never = await _shop(store, "cafe", "10658888002", days=None)
    a = await _earner(store, shop, "13900000001", 120)
    b = await _earner(store, shop, "13900000002", 40)
    await record(store, shop.id, b.id, "redeem", -15, "gift-b")
    c = await _earner(store, never, "13900000003", 80)
    day = _today() + timedelta(days=31)  # everything earned today is past its 30 days

    runs, failed = await expire_all(store, day=day, tz=TZ)
    assert failed == 0
    assert [(r.run, r.members, r.points) for r in runs] == [(run_key(day, 30), 2, 120 + 25)]
    assert (await balance_of(store, a.id), await balance_of(store, b.id)) == (0, 0)
    assert await balance_of(store, c.id) == 80  # that merchant's points never expire
    tx = (await history(store, shop.id, a.id))[0]
    assert (tx.kind, tx.points, tx.key) == ("expire", -120, f"expire:{run_key(day, 30)}:{a.id}")

    again, _ = await expire_all(store, day=day, tz=TZ)
    assert [(r.members, r.points) for r in again] == [(0, 0)]
    assert len(await history(store, shop.id, a.id)) == 2


async def test_points_within_their_days_stay(store):
    shop = await _shop(store, days=30)
    member = await _earner(store, shop, "13900000001", 50)
    runs, _ = await expire_all(store, day=_today() + timedelta(days=30), tz=TZ)
    assert runs[0].points == 0 and await balance_of(store, member.id) == 50


async def test_two_services_running_at_once_expire_each_point_once(store):
    shop = await _shop(store, days=7)
    members = [await _earner(store, shop, f"1390000{i:04d}", 10 + i) for i in range(12)]
    later = datetime.now(TZ) + timedelta(days=9)
    one = PointsExpiry(store, timezone="Asia/Shanghai", now=lambda: later)
    two = PointsExpiry(store, timezone="Asia/Shanghai", now=lambda: later)
    results: dict[str, list] = {}

    async def go(name, service):
        results[name] = await service.run_once()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(go, "one", one)
        nursery.start_soon(go, "two", two)
    total = sum(10 + i for i in range(12))
    assert sum(r.points for rs in results.values() for r in rs) == total
    assert sum(r.members for rs in results.values() for r in rs) == 12
    for member in members:
        assert await balance_of(store, member.id) == 0
        assert [t.kind for t in await history(store, shop.id, member.id)] == ["expire", "earn"]
    assert one.statistics()["points"] + two.statistics()["points"] == total


async def test_the_service_runs_at_start_then_once_a_day(store, manual_clock):
    shop = await _shop(store, days=2)
    member = await _earner(store, shop, "13900000001", 100)
    start = datetime.now(TZ)
    metrics = Metrics()
    service = PointsExpiry(store, timezone="Asia/Shanghai", metrics=metrics,
                           now=lambda: start + timedelta(seconds=trio.current_time()))
    day = 86_400.0
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await service.wait_rounds(1)
        # days 0, 1 and 2: the points are within their two days
        for n in (2, 3):
            manual_clock.jump(day)
            await service.wait_rounds(n)
            assert await balance_of(store, member.id) == 100
        manual_clock.jump(day - 1)
        await trio.testing.wait_all_tasks_blocked()
        assert service.statistics()["rounds"] == 3  # not before the day is over
        manual_clock.jump(1)
        await service.wait_rounds(4)
        assert service.statistics() == {"rounds": 4, "points": 100}
        assert await balance_of(store, member.id) == 0
        key = run_key(start.date() + timedelta(days=3), 2)
        assert (await history(store, shop.id, member.id))[0].key == f"expire:{key}:{member.id}"
        text = metrics.exposition().decode()
        assert "smsgw_crm_points_expired_total 100.0" in text
        assert 'smsgw_crm_points_expiry_rounds_total{result="ok"} 4.0' in text
        nursery.cancel_scope.cancel()


async def test_serve_crm_starts_the_expiry(store, manual_clock):
    from crm_lite.assembly import serve_crm

    shop = await _shop(store, days=1)
    member = await _earner(store, shop, "13900000001", 10)
    # Today's points are not due today: the first round at start leaves them
    metrics = Metrics()
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(serve_crm, store, _NoOutbox(), metrics=metrics))
        while "smsgw_crm_points_expiry_rounds_total{" not in metrics.exposition().decode():
            await trio.sleep(0)
        nursery.cancel_scope.cancel()
    assert await balance_of(store, member.id) == 10


class _NoOutbox:
    """An outbox for a test in which nothing is due to be sent; sending fails the test."""

    async def send(self, **kwargs):
        raise AssertionError(f"nothing should be sent here: {kwargs}")
