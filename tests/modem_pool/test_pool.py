"""ModemPool against emulated modems over real pseudo-terminals."""

from __future__ import annotations

from contextlib import asynccontextmanager
from datetime import datetime, timezone

import pytest
import trio

from gateway.modem_pool.emulator import HandsetNetwork, ModemEmulator
from gateway.modem_pool.pdu import StatusClass
from gateway.modem_pool.pool import (
    ModemDown,
    ModemMo,
    ModemPool,
    ModemReport,
    ModemSpec,
    ModemUp,
    PartSent,
    SendFailed,
    cms_transient,
)
from tests.modem_pool.sends import HANDSET, request

DEADLINE = 20.0
CHINESE = "您好，这是一条很长的中文短信，用于测试长短信的拆分与重组功能是否正常。" * 3


@asynccontextmanager
async def running_pool(nursery, network, tmp_path, specs, **pool_options):
    """Emulators (one per spec: (name, number, operators, options)) and a pool over them."""
    emulators = {}
    modems = []
    for name, number, operators, options in specs:
        rate = options.pop("rate_per_minute", 600.0)
        quota = options.pop("daily_quota", 500)
        emulator = ModemEmulator(network, number, link_path=tmp_path / name, **options)
        await nursery.start(emulator.run)
        emulators[name] = emulator
        modems.append(ModemSpec(name=name, device=emulator.device, operators=frozenset(operators),
                                rate_per_minute=rate, daily_quota=quota))
    pool = ModemPool(modems, **pool_options)
    async with trio.open_nursery() as inner:
        await inner.start(pool.run)
        up = set()
        while len(up) < len(modems):
            event = await pool.events.receive()
            assert isinstance(event, ModemUp), event
            up.add(event.modem)
        yield pool, emulators
        inner.cancel_scope.cancel()


async def next_event(pool, *kinds):
    async for event in pool.events:
        if isinstance(event, kinds):
            return event
    raise AssertionError("pool events closed")


def test_cms_classification():
    assert cms_transient(500) and cms_transient(512) and cms_transient(331)
    assert not cms_transient(304) and not cms_transient(301) and not cms_transient(330)
    assert not cms_transient(1) and not cms_transient(21)
    assert cms_transient(38) and cms_transient(42)
    assert cms_transient(None)


async def test_single_and_long_chinese_reach_the_handset_with_reports(nursery, tmp_path):
    network = HandsetNetwork()
    with trio.fail_after(DEADLINE):
        async with running_pool(nursery, network, tmp_path,
                                [("m1", "+8618600000011", ["cucc"], {})]) as (pool, _):
            await pool.send(request(1, "Your code is 1234"))
            sent = await next_event(pool, PartSent)
            assert (sent.ref, sent.modem, sent.part, sent.destination) == (1, "m1", 1, HANDSET)
            report = await next_event(pool, ModemReport)
            assert (report.modem, report.tp_mr, report.recipient) == ("m1", sent.tp_mr, HANDSET)
            assert report.status is StatusClass.DELIVERED

            long = request(2, CHINESE)
            assert len(long.parts) > 1
            await pool.send(long)
            parts, reports = [], []
            while len(parts) < len(long.parts) or len(reports) < len(long.parts):
                event = await next_event(pool, PartSent, ModemReport)
                (parts if isinstance(event, PartSent) else reports).append(event)
            assert [p.part for p in parts] == list(range(1, len(long.parts) + 1))
            assert {r.tp_mr for r in reports} == {p.tp_mr for p in parts}
    inbox = network.inbox(HANDSET)
    assert [m.text for m in inbox] == ["Your code is 1234", CHINESE]
    assert inbox[1].parts == len(long.parts)
    assert pool.statistics()[0].sent_today == 1 + len(long.parts)


async def test_rate_per_minute_is_respected(nursery, tmp_path):
    # The real clock: under an autojump clock the time also jumps while the pool waits for
    # the modem's answer on the pty, so the gaps seen between PartSents were not the rate's.
    network = HandsetNetwork()
    async with running_pool(nursery, network, tmp_path,
                            [("m1", "+8618600000011", ["cucc"], {"rate_per_minute": 60.0})]) as (pool, _):
        times = []
        async with trio.open_nursery() as senders:
            async def producer():
                for ref in range(3):
                    await pool.send(request(ref, f"msg {ref}"))
            senders.start_soon(producer)
            while len(times) < 3:
                await next_event(pool, PartSent)
                times.append(trio.current_time())
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(gap >= 0.8 for gap in gaps), gaps  # one a second, less the answers' jitter


async def test_quota_exhausted_modem_is_not_chosen(nursery, tmp_path):
    network = HandsetNetwork()
    specs = [("m1", "+8618600000011", ["cucc"], {"daily_quota": 1}),
             ("m2", "+8618600000012", ["cucc"], {})]
    with trio.fail_after(DEADLINE):
        async with running_pool(nursery, network, tmp_path, specs) as (pool, _):
            modems = []
            for ref in range(4):
                await pool.send(request(ref, f"msg {ref}"))
                modems.append((await next_event(pool, PartSent)).modem)
            assert modems.count("m1") == 1
            assert modems.count("m2") == 3
            stats = {s.name: s for s in pool.statistics()}
            assert stats["m1"].sent_today == 1


async def test_operator_is_respected(nursery, tmp_path):
    network = HandsetNetwork()
    specs = [("u", "+8618600000011", ["cucc"], {}), ("t", "+8618900000011", ["ctcc"], {})]
    with trio.fail_after(DEADLINE):
        async with running_pool(nursery, network, tmp_path, specs) as (pool, _):
            for ref in range(3):
                await pool.send(request(ref, "hi", dest="18900000001", operator="ctcc"))
                assert (await next_event(pool, PartSent)).modem == "t"
            assert pool.operators == {"cucc", "ctcc"}
            await pool.send(request(9, "hi", dest="13800138000", operator="cmcc"))
            failed = await next_event(pool, SendFailed)
            assert (failed.ref, failed.transient) == (9, True) and "cmcc" in failed.reason


@pytest.mark.parametrize(("code", "transient"), [(500, True), (304, False), (1, False)])
async def test_cms_error_is_reported_with_its_class(nursery, tmp_path, code, transient):
    network = HandsetNetwork()
    specs = [("m1", "+8618600000011", ["cucc"], {"send_error": code, "send_error_count": 1})]
    with trio.fail_after(DEADLINE):
        async with running_pool(nursery, network, tmp_path, specs) as (pool, _):
            await pool.send(request(7, "hello"))
            failed = await next_event(pool, SendFailed)
            assert (failed.ref, failed.transient, failed.cms_code) == (7, transient, code)
            await pool.send(request(8, "hello again"))
            assert (await next_event(pool, PartSent)).ref == 8


async def test_unplug_fails_over_and_device_rejoins(nursery, tmp_path):
    network = HandsetNetwork()
    specs = [("m1", "+8618600000011", ["cucc"], {"answer_delay": 0.5}),
             ("m2", "+8618600000012", ["cucc"], {"answer_delay": 0.5})]
    with trio.fail_after(DEADLINE):
        async with running_pool(nursery, network, tmp_path, specs) as (pool, emulators):
            await pool.send(request(1, "failover me"))
            await trio.sleep(0.2)  # the send is in flight on one modem
            busy = next(s.name for s in pool.statistics() if s.queued)
            emulators[busy].unplug()
            down = await next_event(pool, ModemDown)
            assert down.modem == busy
            sent = await next_event(pool, PartSent)
            assert sent.ref == 1 and sent.modem != busy
            emulators[busy].replug()
            up = await next_event(pool, ModemUp)
            assert up.modem == busy
            await trio.sleep(1.0)  # the network delivers what it took
    texts = [m.text for m in network.inbox(HANDSET)]
    assert 1 <= texts.count("failover me") <= 2


async def test_mo_is_reassembled_and_deleted_only_after_ack(nursery, tmp_path):
    network = HandsetNetwork()
    with trio.fail_after(DEADLINE):
        async with running_pool(nursery, network, tmp_path,
                                [("m1", "+8618600000011", ["cucc"], {})]) as (pool, emulators):
            parts = network.send_from_handset("13900000001", "18600000011", CHINESE)
            assert parts > 1
            mo = await next_event(pool, ModemMo)
            assert (mo.modem, mo.sender, mo.text) == ("m1", "13900000001", CHINESE)
            assert mo.own_number == "+8618600000011"
            await trio.sleep(0.3)
            assert emulators["m1"].stored == parts
            mo.ack()
            while emulators["m1"].stored:
                await trio.sleep(0.05)


async def test_messages_stored_before_start_are_picked_up(nursery, tmp_path):
    network = HandsetNetwork()
    emulator = ModemEmulator(network, "+8618600000011", link_path=tmp_path / "m1")
    await nursery.start(emulator.run)
    network.send_from_handset("13900000002", "18600000011", "sent while down")
    assert emulator.stored == 1
    pool = ModemPool([ModemSpec(name="m1", device=emulator.device, operators=frozenset({"cucc"}))])
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as inner:
            await inner.start(pool.run)
            mo = await next_event(pool, ModemMo)
            assert (mo.sender, mo.text) == ("13900000002", "sent while down")
            mo.ack()
            while emulator.stored:
                await trio.sleep(0.05)
            inner.cancel_scope.cancel()


async def test_missing_device_is_retried_until_it_appears(nursery, tmp_path, autojump_clock):
    pool = ModemPool([ModemSpec(name="m1", device=str(tmp_path / "nothing"),
                                operators=frozenset({"cucc"}))])
    async with trio.open_nursery() as inner:
        await inner.start(pool.run)
        await trio.sleep(10)
        assert pool.usable == 0 and pool.capacity() == 0
        assert pool.statistics()[0].state == "down"
        await pool.send(request(1, "nowhere"))  # not held while no modem can take it
        failed = await next_event(pool, SendFailed)
        assert (failed.ref, failed.transient) == (1, True)
        inner.cancel_scope.cancel()


async def test_hung_modem_is_reset_and_its_send_fails_over(nursery, tmp_path):
    network = HandsetNetwork()
    specs = [("m1", "+8618600000011", ["cucc"], {}), ("m2", "+8618600000012", ["cucc"], {})]
    with trio.fail_after(DEADLINE):
        async with running_pool(nursery, network, tmp_path, specs,
                                command_timeout=0.5, send_timeout=0.5) as (pool, emulators):
            emulators["m1"].no_answer = True  # the firmware hangs: nothing comes back
            await pool.send(request(1, "hung then resent"))  # the first of two idle modems: m1
            seen = {}
            while len(seen) < 2:
                event = await next_event(pool, ModemDown, PartSent)
                seen[type(event)] = event
            assert seen[ModemDown].modem == "m1" and seen[ModemDown].reason.startswith("hung")
            assert (seen[PartSent].ref, seen[PartSent].modem) == (1, "m2")
            assert {s.name: s.state for s in pool.statistics()}["m1"] != "up"

            emulators["m1"].no_answer = False  # the reset: the port reopened, start-up run again
            up = await next_event(pool, ModemUp)
            assert up.modem == "m1" and up.own_number == "+8618600000011"
            await pool.send(request(2, "after the reset"))
            assert (await next_event(pool, PartSent)).modem == "m1"
            assert emulators["m1"].sent_count == 1 and emulators["m2"].sent_count == 1
    assert sorted(m.text for m in network.inbox(HANDSET)) == ["after the reset", "hung then resent"]


async def test_lost_send_with_no_other_modem_goes_back_to_the_caller(nursery, tmp_path):
    network = HandsetNetwork()
    specs = [("m1", "+8618600000011", ["cucc"], {"send_delay": 1.0}),
             ("t1", "+8618900000011", ["ctcc"], {})]
    with trio.fail_after(DEADLINE):
        async with running_pool(nursery, network, tmp_path, specs) as (pool, emulators):
            await pool.send(request(1, "only one unicom modem"))
            await trio.sleep(0.3)  # AT+CMGS is in flight
            emulators["m1"].unplug()
            failed = await next_event(pool, SendFailed)
            assert (failed.ref, failed.transient) == (1, True)
            assert "cucc" in failed.reason
            assert pool.capacity() == 2  # the Telecom modem only


async def test_failover_goes_to_the_first_modem_that_is_free(nursery, tmp_path):
    """Every modem busy: the lost send does not queue behind one modem's backlog."""
    network = HandsetNetwork()
    specs = [(f"m{i}", f"+861860000001{i}", ["cucc"], {"send_delay": 0.6}) for i in range(3)]
    with trio.fail_after(DEADLINE):
        async with running_pool(nursery, network, tmp_path, specs) as (pool, emulators):
            for ref in range(6):  # two each: one in flight, one queued
                await pool.send(request(ref, f"msg {ref}"))
            await trio.sleep(0.3)
            busy = {s.name: s.queued for s in pool.statistics()}
            assert busy == {"m0": 2, "m1": 2, "m2": 2}
            lost = pool._slots["m0"].in_flight.ref
            emulators["m0"].unplug()
            unplugged = trio.current_time()
            while True:
                event = await next_event(pool, PartSent)
                if event.ref == lost:
                    break
            # Taken by the first modem done with its send (~0.3 s), then one send (0.6 s);
            # queued behind a backlog it would take two more sends.
            assert trio.current_time() - unplugged < 1.5
            assert event.modem != "m0"


async def test_daily_quota_counts_in_the_local_day_and_survives_a_seed(nursery, tmp_path):
    network = HandsetNetwork()
    now = [datetime(2026, 11, 23, 15, 30, tzinfo=timezone.utc)]  # 23:30 in Shanghai
    specs = [("m1", "+8618600000011", ["cucc"], {"daily_quota": 3})]
    with trio.fail_after(DEADLINE):
        async with running_pool(nursery, network, tmp_path, specs, timezone="Asia/Shanghai",
                                wall_clock=lambda: now[0]) as (pool, _):
            assert pool.today() == "2026-11-23"
            pool.seed_counts("2026-11-23", {"m1": 2, "elsewhere": 9})  # sent before a restart
            pool.seed_counts("2026-11-22", {"m1": 3})  # yesterday's count does not matter
            assert pool.statistics()[0].sent_today == 2 and pool.capacity() == 1
            await pool.send(request(1, "the last one today"))
            sent = await next_event(pool, PartSent)
            assert sent.day == "2026-11-23"
            assert pool.capacity() == 0
            await pool.send(request(2, "tomorrow"))  # quota spent: given back, not held
            failed = await next_event(pool, SendFailed)
            assert (failed.ref, failed.transient) == (2, True) and "quota" in failed.reason
            now[0] = datetime(2026, 11, 23, 16, 0, tzinfo=timezone.utc)  # midnight in Shanghai, not in UTC
            await pool.send(request(2, "tomorrow"))
            sent = await next_event(pool, PartSent)
            assert (sent.ref, sent.day) == (2, "2026-11-24")
            assert pool.statistics()[0].sent_today == 1


async def test_direct_routing_acknowledges_cmt_and_cds_with_cnma(nursery, tmp_path):
    network = HandsetNetwork()
    specs = [("m1", "+8618600000011", ["cucc"], {"cnma_timeout": 0.5})]
    with trio.fail_after(DEADLINE):
        async with running_pool(nursery, network, tmp_path, specs,
                                direct_routing=True) as (pool, emulators):
            await pool.send(request(1, "report me"))
            sent = await next_event(pool, PartSent)
            report = await next_event(pool, ModemReport)
            assert report.tp_mr == sent.tp_mr and report.status is StatusClass.DELIVERED
            network.send_from_handset("13900000001", "18600000011", CHINESE)
            mo = await next_event(pool, ModemMo)
            assert mo.text == CHINESE
            mo.ack()
            network.send_from_handset("13900000001", "18600000011", "second")
            mo2 = await next_event(pool, ModemMo)
            assert mo2.text == "second"
            mo2.ack()
            await trio.sleep(0.8)  # longer than the modem waits for an acknowledgement
            assert emulators["m1"].redelivered == 0
            assert emulators["m1"].stored == 0  # nothing went to the SIM
            with trio.move_on_after(0.2):
                extra = await next_event(pool, ModemMo, ModemReport)
                raise AssertionError(f"delivered twice: {extra}")


async def test_unacknowledged_direct_mo_is_left_for_redelivery(nursery, tmp_path, monkeypatch):
    monkeypatch.setattr("gateway.modem_pool.pool.CNMA_WAIT", 0.2)
    network = HandsetNetwork()
    specs = [("m1", "+8618600000011", ["cucc"], {"cnma_timeout": 0.5})]
    with trio.fail_after(DEADLINE):
        async with running_pool(nursery, network, tmp_path, specs,
                                direct_routing=True) as (pool, emulators):
            network.send_from_handset("13900000001", "18600000011", "keep me")
            first = await next_event(pool, ModemMo)  # the consumer never acknowledges it
            again = await next_event(pool, ModemMo)
            assert first.text == again.text == "keep me"
            assert emulators["m1"].redelivered == 1
            again.ack()


async def test_health_is_polled_only_while_no_send_proves_it(nursery, tmp_path):
    network = HandsetNetwork()
    with trio.fail_after(DEADLINE):
        async with running_pool(nursery, network, tmp_path, [("m1", "+8618600000011", ["cucc"], {})],
                                health_interval=0.5) as (pool, emulators):
            commands = emulators["m1"].commands
            polls = commands["+CSQ"]
            assert polls == 1  # the start-up sequence
            end = trio.current_time() + 1.6
            ref = 0
            while trio.current_time() < end:  # busy: a send every 0.1 s
                ref += 1
                await pool.send(request(ref, f"busy {ref}"))
                await next_event(pool, PartSent)
                await trio.sleep(0.1)
            assert commands["+CSQ"] == polls and commands["+CMGS"] == ref
            await trio.sleep(1.3)  # idle: polled again
            assert commands["+CSQ"] >= polls + 1 and commands["+CREG?"] >= 2
