"""ModemChannel: pool events as gateway channel events, and under the real dispatcher."""

from __future__ import annotations

import functools
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import trio

from gateway.channel import (
    DeliveryReport,
    MoReceived,
    OutboundMessage,
    Status,
    Submitted,
    SubmitFailed,
)
from gateway.config import ModemConfig
from gateway.modem_channel import ModemChannel, part_ref
from gateway.modem_pool.emulator import HandsetNetwork
from gateway.modem_pool.pdu import StatusClass
from gateway.modem_pool.policy import local_day
from gateway.modem_pool.pool import ModemMo, ModemReport, PartSent, SendFailed
from gateway.sim_modems import serve_sim_modems
from gateway.text import Encoding
from tests.conftest import start_gateway

CHINESE = "您好，这是一条很长的中文短信，用于测试长短信的拆分与重组功能是否正常。" * 3
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc)


def channel(service_number=""):
    return ModemChannel([ModemConfig(name="u1", device="/dev/null-modem", operators=["cucc"],
                                     service_number=service_number)])


def test_translation_of_pool_events():
    ch = channel()
    (sub,) = ch._translate(PartSent(ref=5, modem="u1", part=2, tp_mr=17, destination="18600000001"))
    assert sub == Submitted(channel="modems", message_id=5, part=2, ref="u1:17:18600000001")
    (fail,) = ch._translate(SendFailed(ref=5, transient=True, reason="x", cms_code=500))
    assert fail == SubmitFailed(channel="modems", message_id=5, transient=True, reason="x",
                                error_code="CMS 500")
    report = ModemReport(modem="u1", tp_mr=17, recipient="18600000001", status=StatusClass.DELIVERED,
                         tp_status=0, at=NOW)
    (dr,) = ch._translate(report)
    assert (dr.ref, dr.status) == (part_ref("u1", 17, "18600000001"), Status.DELIVERED)
    (bad,) = ch._translate(ModemReport(modem="u1", tp_mr=1, recipient="1", status=StatusClass.PERMANENT,
                                       tp_status=0x41, at=NOW))
    assert isinstance(bad, DeliveryReport) and bad.status is Status.UNDELIVERABLE
    assert ch._translate(ModemReport(modem="u1", tp_mr=1, recipient="1", status=StatusClass.TEMPORARY,
                                     tp_status=0x20, at=NOW)) == []
    mo = ModemMo(modem="u1", sender="13900000001", text="hi", received_at=NOW, own_number="+8618600000011")
    (m,) = ch._translate(mo)
    assert isinstance(m, MoReceived) and m.service_number == "+8618600000011"
    (m2,) = channel("10655").__class__._translate(channel("10655"), mo)
    assert m2.service_number == "10655"
    assert ch.operators == {"cucc"} and not ch.up and ch.capacity() == 0


async def test_sim_modems_report_devices_and_numbers(nursery):
    modems = await nursery.start(serve_sim_modems, 4)
    assert [m.operator for m in modems] == ["cucc", "ctcc", "cucc", "ctcc"]
    assert [m.number for m in modems] == ["18610000000", "18910000000", "18610000001", "18910000001"]
    assert all(m.device.startswith("/dev/") for m in modems)


async def wait_status(store, message_id, status):
    with trio.fail_after(20):
        while await store.fetchval("SELECT status FROM messages WHERE id = $1", message_id) != status:
            await trio.sleep(0.05)


async def test_dispatcher_delivers_through_modems_and_stores_mo(nursery, database_url):
    network = HandsetNetwork()
    sims = await nursery.start(lambda task_status: serve_sim_modems(
        2, numbers=["18600000011", "18600000012"], operators=["cucc", "cucc"], network=network,
        task_status=task_status))
    ch = ModemChannel([ModemConfig(name=f"u{i}", device=s.device, operators=["cucc"], rate_per_minute=600)
                       for i, s in enumerate(sims)])
    gw = await start_gateway(nursery, database_url, channels=[ch])
    async with gw.client() as c:
        ids = []
        for text in ("hello from the pool", CHINESE):
            r = await c.post("/v1/messages", json={"to": "18600000001", "text": text})
            assert r.status_code == 202, r.text
            ids.append(int(r.json()["messages"][0]["id"]))
    for mid in ids:
        await wait_status(gw.store, mid, "delivered")
    assert sorted(m.text for m in network.inbox("18600000001")) == sorted(["hello from the pool", CHINESE])
    network.send_from_handset("13900000001", "18600000011", CHINESE)
    with trio.fail_after(20):
        while not await gw.store.fetchval("SELECT count(*) FROM inbound_messages"):
            await trio.sleep(0.05)
    row = await gw.store.fetchrow("SELECT channel, sender, service_number, body FROM inbound_messages")
    assert tuple(row) == ("modems", "13900000001", "18600000011", CHINESE)


async def test_store_adds_modem_counts_per_day(store):
    day, other = date(2026, 11, 23), date(2026, 11, 24)
    assert await store.modem_sent_counts(day) == {}
    await store.add_modem_sent([("u1", day, 2), ("u2", day, 1), ("u1", other, 5)])
    await store.add_modem_sent([("u1", day, 3)])
    assert await store.modem_sent_counts(day) == {"u1": 5, "u2": 1}
    assert await store.modem_sent_counts(other) == {"u1": 5}
    await store.add_modem_sent([])


def outbound(message_id, text="quota"):
    return OutboundMessage(id=message_id, account_id=1, dest="18600000001", operator="cucc",
                           encoding=Encoding.GSM7, parts=(text,), priority=0, msg_class="transactional",
                           sender="", expires_at=datetime.now(timezone.utc) + timedelta(hours=1))


async def test_daily_counts_survive_a_restart_through_the_store(nursery, store):
    sims = await nursery.start(functools.partial(serve_sim_modems, 1, numbers=["18600000011"],
                                                 operators=["cucc"]))
    today = local_day(datetime.now(timezone.utc), ZoneInfo("Asia/Shanghai"))
    await store.add_modem_sent([("u1", date.fromisoformat(today), 1)])  # sent before the restart
    config = [ModemConfig(name="u1", device=sims[0].device, operators=["cucc"], daily_quota=3,
                          rate_per_minute=600)]

    async def run_channel(body):
        ch = ModemChannel(config, timezone="Asia/Shanghai")
        ch.attach_quota_store(store)
        send, receive = trio.open_memory_channel(100)
        with trio.fail_after(20):
            async with trio.open_nursery() as inner:
                await inner.start(ch.run, send)
                while not ch.up:
                    await receive.receive()
                await body(ch, receive)
                inner.cancel_scope.cancel()
        return ch

    async def first_life(ch, receive):
        assert ch.pool.statistics()[0].sent_today == 1 and ch.capacity() == 2
        await ch.submit(outbound(1))
        while not isinstance(await receive.receive(), Submitted):
            pass
        assert ch.pool.statistics()[0].sent_today == 2

    await run_channel(first_life)
    assert await store.modem_sent_counts(date.fromisoformat(today)) == {"u1": 2}  # saved at stop

    async def second_life(ch, receive):
        assert ch.pool.statistics()[0].sent_today == 2 and ch.capacity() == 1
        await ch.submit(outbound(2))
        while not isinstance(await receive.receive(), Submitted):
            pass
        assert ch.capacity() == 0  # the quota of 3 is spent across both lives
        with trio.move_on_after(1.5):  # saved while running, not only at stop
            while await store.modem_sent_counts(date.fromisoformat(today)) != {"u1": 3}:
                await trio.sleep(0.1)
        assert await store.modem_sent_counts(date.fromisoformat(today)) == {"u1": 3}

    await run_channel(second_life)


async def test_direct_routing_from_the_modem_config(nursery, database_url, tmp_path):
    """``direct_routing = true`` in a ``[[modems]]`` table: the modem is set to AT+CSMS=1, MOs
    come as +CMT and are acknowledged with AT+CNMA once stored, nothing touches the SIM; the
    other modem keeps the default (stored on the SIM, +CMTI)."""
    from gateway.modem_pool.emulator import ModemEmulator

    network = HandsetNetwork()
    direct = ModemEmulator(network, "18600000011", link_path=tmp_path / "u1")
    stored = ModemEmulator(network, "18600000012", link_path=tmp_path / "u2")
    await nursery.start(direct.run)
    await nursery.start(stored.run)
    ch = ModemChannel([
        ModemConfig(name="u1", device=direct.device, operators=["cucc"], direct_routing=True),
        ModemConfig(name="u2", device=stored.device, operators=["cucc"]),
    ])
    gw = await start_gateway(nursery, database_url, channels=[ch])
    with trio.fail_after(20):  # both set up (AT+CSMS=1 on u1) before the handsets text
        while ch.pool.usable < 2:
            await trio.sleep(0.02)
    network.send_from_handset("13900000001", "18600000011", "direct")
    network.send_from_handset("13900000002", "18600000012", "via the SIM")
    with trio.fail_after(20):
        while await gw.store.fetchval("SELECT count(*) FROM inbound_messages") < 2 or not direct.commands["+CNMA"]:
            await trio.sleep(0.05)
    rows = await gw.store.fetch("SELECT service_number, body FROM inbound_messages ORDER BY body")
    assert [tuple(r) for r in rows] == [("18600000011", "direct"), ("18600000012", "via the SIM")]
    assert direct.commands["+CSMS"] == 1 and direct.commands["+CNMA"] == 1 and direct.commands["+CMGR"] == 0
    assert stored.commands["+CSMS"] == 0 and stored.commands["+CNMA"] == 0 and stored.commands["+CMGR"] >= 1
    assert direct.redelivered == 0


async def test_an_mo_arriving_while_the_modem_starts_is_taken_once(nursery, database_url, tmp_path):
    """Stored on the SIM while the pool starts, it is both listed (AT+CMGL) and announced
    (+CMTI): one inbound message, one AT+CMGD, and the modem stays up."""
    from gateway.modem_pool.emulator import ModemEmulator

    network = HandsetNetwork()
    modem = ModemEmulator(network, "18600000013", link_path=tmp_path / "u3")
    await nursery.start(modem.run)
    ch = ModemChannel([ModemConfig(name="u3", device=modem.device, operators=["cucc"])])
    network.send_from_handset("13900000003", "18600000013", "early")
    gw = await start_gateway(nursery, database_url, channels=[ch])
    network.send_from_handset("13900000004", "18600000013", "while starting")
    with trio.fail_after(20):
        while await gw.store.fetchval("SELECT count(*) FROM inbound_messages") < 2 or modem.commands["+CMGD"] < 2:
            await trio.sleep(0.05)
    await trio.sleep(0.5)  # a second read of either would show up by now
    rows = await gw.store.fetch("SELECT body FROM inbound_messages ORDER BY body")
    assert [r["body"] for r in rows] == ["early", "while starting"]
    assert modem.commands["+CMGD"] == 2
    assert ch.pool.usable == 1
