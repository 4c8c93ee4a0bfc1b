"""Quiet hours: marketing waits at night, transactional messages go."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import trio

from gateway.config import DispatcherConfig, parse_config
from gateway.errors import ConfigError
from gateway.router import QuietHours
from gateway.store import AcceptRequest, NewMessage
from tests.channels import ScriptedChannel
from tests.conftest import start_gateway
from tests.test_dispatcher import send

SHANGHAI = timezone(timedelta(hours=8))


def at(hh: int, mm: int = 0) -> datetime:
    return datetime(2026, 11, 23, hh, mm, tzinfo=SHANGHAI)


def test_a_span_across_midnight():
    q = QuietHours.parse("21:00-08:00", "Asia/Shanghai")
    assert [q.active(at(h)) for h in (20, 21, 23, 0, 7)] == [False, True, True, True, True]
    assert not q.active(at(8)) and not q.active(at(12))
    assert q.active(at(7, 59)) and not q.active(at(20, 59))
    # The zone matters: 13:30 UTC is 21:30 in Shanghai.
    assert q.active(datetime(2026, 11, 23, 13, 30, tzinfo=timezone.utc))


def test_a_daytime_span_and_none():
    q = QuietHours.parse("12:00-14:00", "Asia/Shanghai")
    assert q.active(at(12)) and q.active(at(13, 59)) and not q.active(at(14)) and not q.active(at(11))
    assert not QuietHours.parse("", "Asia/Shanghai").active(at(23))
    assert not QuietHours.parse("08:00-08:00", "Asia/Shanghai").active(at(8))


def test_config_checks_the_span_and_zone():
    assert parse_config('[dispatcher]\nquiet_hours = ""').dispatcher.quiet_hours == ""
    with pytest.raises(ConfigError, match="quiet_hours"):
        parse_config('[dispatcher]\nquiet_hours = "9pm-8am"')
    with pytest.raises(ConfigError, match="timezone"):
        parse_config('[dispatcher]\ntimezone = "Mars/Olympus"')


async def test_the_claim_leaves_marketing_in_the_queue(store):
    account = await store.ensure_account("shop")
    m = (NewMessage(dest="13800138000", operator="cmcc", body="x", encoding="gsm7", parts=1),)
    await store.accept([AcceptRequest(account_id=account.id, messages=m, msg_class="marketing"),
                        AcceptRequest(account_id=account.id, messages=m, msg_class="transactional")])
    quiet = await store.claim("a", 10, 60.0, marketing=False)
    assert [x.msg_class for x in quiet] == ["transactional"]
    assert [x.msg_class for x in await store.claim("a", 10, 60.0)] == ["marketing"]


async def test_at_night_the_gateway_sends_codes_and_holds_promotions(nursery, database_url):
    channel = ScriptedChannel()
    # A quiet span covering the whole day but one minute ago, so it is quiet now.
    now = datetime.now(timezone.utc)
    span = f"{(now - timedelta(minutes=1)).strftime('%H:%M')}-{(now - timedelta(minutes=2)).strftime('%H:%M')}"
    gw = await start_gateway(nursery, database_url, channels=[channel],
                             dispatcher=DispatcherConfig(quiet_hours=span, timezone="UTC"))
    (promo,) = await send(gw, {"to": "13800138000", "text": "50% off tonight", "class": "marketing"})
    (code,) = await send(gw, {"to": "13800138001", "text": "code 4321"})
    with trio.fail_after(10):
        await channel.got_message.wait()
    await trio.sleep(0.3)
    assert [m.id for m in channel.submitted] == [int(code["id"])]
    assert await gw.store.fetchval("SELECT status FROM messages WHERE id = $1", int(promo["id"])) == "accepted"


async def test_marketing_waits_for_the_end_of_quiet_hours_on_the_dispatchers_clock(store):
    """The dispatcher reads quiet hours on its wall clock: at 23:00 in Shanghai only the code
    goes; once the clock reads 08:00 the promotions follow, in order."""
    from gateway.dispatcher import Dispatcher
    from gateway.metrics import Metrics

    wall = [at(23).timestamp()]
    channel = ScriptedChannel()
    dispatcher = Dispatcher(store, [channel], DispatcherConfig(quiet_hours="21:00-08:00", timezone="Asia/Shanghai",
                                                               idle_poll=0.02),
                            Metrics(), wall_clock=lambda: wall[0])
    account = await store.ensure_account("shop")
    promos = [AcceptRequest(account_id=account.id, msg_class="marketing", messages=(
        NewMessage(dest=f"1380013800{i}", operator="cmcc", body="sale", encoding="gsm7", parts=1),)) for i in range(3)]
    results = await store.accept(promos + [AcceptRequest(account_id=account.id, messages=(
        NewMessage(dest="13900139000", operator="cmcc", body="code 1234", encoding="gsm7", parts=1),))])
    promo_ids = [r.messages[0].id for r in results[:3]]
    code_id = results[3].messages[0].id
    async with trio.open_nursery() as nursery:
        await nursery.start(dispatcher.run)
        with trio.fail_after(10):
            await channel.got_message.wait()
        await trio.sleep(0.3)  # many claims at night
        assert [m.id for m in channel.submitted] == [code_id]
        assert await store.fetchval("SELECT count(*) FROM outbound_queue WHERE class = 'marketing'"
                                    " AND leased_by IS NULL") == 3
        wall[0] = at(8).timestamp()
        dispatcher.wake()
        with trio.fail_after(10):
            while len(channel.submitted) < 4:
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert [m.id for m in channel.submitted] == [code_id] + promo_ids
