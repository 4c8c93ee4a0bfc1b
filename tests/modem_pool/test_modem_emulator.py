"""Modem driver + serial stream against the modem emulator, over real pseudo-terminals."""

from __future__ import annotations

import os
from contextlib import asynccontextmanager

import pytest
import trio

from gateway.modem_pool.at import (
    AckMessage,
    Done,
    FinalResult,
    IncomingDeliver,
    IncomingStatusReport,
    NewMessage,
    NewStatusReport,
    QuerySignal,
    RawCommand,
    RawResponse,
    SetIndications,
    SignalQuality,
    VendorNotice,
)
from gateway.modem_pool.emulator import HandsetNetwork, ModemEmulator, _DteReader, national
from gateway.modem_pool.errors import CommandError, ModemError, ModemUnavailable
from gateway.modem_pool.modem import Modem
from gateway.modem_pool.pdu import Alphabet, StatusClass, decode_deliver, decode_status_report
from gateway.modem_pool.serial_stream import SerialStream

MODEM_A = "+8613100000001"
MODEM_B = "+8613100000002"
HANDSET = "13900000001"
DEADLINE = 10.0


@asynccontextmanager
async def plugged(nursery, network, number=MODEM_A, *, modem_pin=None, **faults):
    emulator = ModemEmulator(network, number, **faults)
    device = await nursery.start(emulator.run)
    stream = SerialStream.open(device)
    modem = Modem(stream, name=number[-4:], pin=modem_pin)
    async with trio.open_nursery() as inner:
        await inner.start(modem.run)
        try:
            yield emulator, modem
        finally:
            inner.cancel_scope.cancel()
            await stream.aclose()


async def next_unsolicited(modem, kind):
    async for event in modem.unsolicited:
        if isinstance(event, kind):
            return event
    raise AssertionError("unsolicited channel closed")


async def test_initialize_reports_sim_number_signal_and_storage(nursery):
    network = HandsetNetwork()
    with trio.fail_after(DEADLINE):
        async with plugged(nursery, network, rssi=17) as (emulator, modem):
            status = await modem.initialize()
            assert status.own_number == MODEM_A
            assert status.signal == SignalQuality(17, 99)
            assert status.registration.registered
            assert [a.total for a in status.storage.areas] == [20, 20, 20]
            # Echo was on at power-up and is off now: a raw command still parses cleanly.
            assert await modem.command(RawCommand("AT+CGSN")) == RawResponse((emulator.imei,))


async def test_send_to_handset_with_status_report(nursery):
    network = HandsetNetwork()
    with trio.fail_after(DEADLINE):
        async with plugged(nursery, network) as (_, modem):
            await modem.initialize()
            (mr,) = await modem.send_text(HANDSET, "Your code is 1234")
            event = await next_unsolicited(modem, IncomingStatusReport)
            report = decode_status_report(event.pdu)
            assert report.mr == mr
            assert national(report.recipient.number) == HANDSET
            assert report.status_class is StatusClass.DELIVERED
    (message,) = network.inbox(HANDSET)
    assert (message.sender, message.text, message.parts) == (MODEM_A, "Your code is 1234", 1)


async def test_long_unicode_text_is_concatenated_and_reassembled(nursery):
    network = HandsetNetwork()
    text = "会员积分查询：" * 20  # 140 UCS2 units -> 3 parts of up to 67
    with trio.fail_after(DEADLINE):
        async with plugged(nursery, network) as (_, modem):
            await modem.initialize()
            mrs = await modem.send_text(HANDSET, text, status_report=False)
    assert mrs == [0, 1, 2]
    (message,) = network.inbox(HANDSET)
    assert message.text == text and message.parts == 3


async def test_modem_to_modem_arrives_as_cmti_and_is_read_and_deleted(nursery):
    network = HandsetNetwork()
    with trio.fail_after(DEADLINE):
        async with plugged(nursery, network, MODEM_A) as (_, a), plugged(
            nursery, network, MODEM_B
        ) as (emulator_b, b):
            await a.initialize()
            await b.initialize()
            await a.send_text(MODEM_B, "ping {}", status_report=False)
            indication = await next_unsolicited(b, NewMessage)
            stored = await b.read_message(indication.index)
            deliver = decode_deliver(stored.pdu)
            assert deliver.text == "ping {}"
            assert str(deliver.originator) == MODEM_A
            listed = await b.list_messages()
            assert [m.index for m in listed.messages] == [indication.index]
            await b.delete_message(indication.index)
            assert emulator_b.stored == 0
            with pytest.raises(CommandError) as info:
                await b.read_message(indication.index)
            assert info.value.code == 321


async def test_handset_mo_and_full_storage(nursery):
    network = HandsetNetwork()
    with trio.fail_after(DEADLINE):
        async with plugged(nursery, network, storage_slots=1) as (emulator, modem):
            await modem.initialize()
            network.send_from_handset(HANDSET, MODEM_A, "1")
            network.send_from_handset(HANDSET, MODEM_A, "2")
            first = await next_unsolicited(modem, NewMessage)
            assert decode_deliver((await modem.read_message(first.index)).pdu).text == "1"
            assert emulator.stored == 1
            # The SIM is full: the second message waits in the network, no indication yet.
            await modem.delete_message(first.index)
            second = await next_unsolicited(modem, NewMessage)
            assert decode_deliver((await modem.read_message(second.index)).pdu).text == "2"


async def test_cms_error_on_send(nursery):
    network = HandsetNetwork()
    with trio.fail_after(DEADLINE):
        async with plugged(nursery, network, send_error=331) as (_, modem):
            await modem.initialize()
            with pytest.raises(CommandError) as info:
                await modem.send_text(HANDSET, "hello")
            assert info.value.result is FinalResult.CMS_ERROR and info.value.code == 331
            # The modem is still usable afterwards.
            assert await modem.command(QuerySignal()) == SignalQuality(20, 99)
    assert network.inbox(HANDSET) == []


async def test_unreachable_number_gets_a_permanent_failure_report(nursery):
    network = HandsetNetwork(unreachable=frozenset({HANDSET}))
    with trio.fail_after(DEADLINE):
        async with plugged(nursery, network) as (_, modem):
            await modem.initialize()
            await modem.send_text(HANDSET, "hello")
            report = decode_status_report((await next_unsolicited(modem, IncomingStatusReport)).pdu)
            assert report.status_class is StatusClass.PERMANENT


async def test_garbage_and_slow_byte_by_byte_answers(nursery):
    network = HandsetNetwork()
    with trio.fail_after(DEADLINE):
        async with plugged(
            nursery, network, garbage=b"\xff\x00\xfe", byte_delay=0.0005, boot_banner=b"\r\nRDY\r\n"
        ) as (_, modem):
            status = await modem.initialize()
            assert status.own_number == MODEM_A
            await modem.send_text(HANDSET, "slow", status_report=False)
            assert modem.statistics().garbage > 0
    assert network.inbox(HANDSET)[0].text == "slow"


async def test_no_answer_times_out_and_modem_reports_unavailable(nursery):
    network = HandsetNetwork()
    with trio.fail_after(DEADLINE):
        async with plugged(nursery, network, no_answer=True) as (_, modem):
            with trio.move_on_after(0.2) as scope:
                await modem.command(QuerySignal())
            assert scope.cancelled_caught
            assert modem.statistics().commands_abandoned == 1
            with pytest.raises(ModemUnavailable):
                await modem.initialize(sync_attempts=2, sync_timeout=0.1)


async def test_pin_is_entered_when_configured(nursery):
    network = HandsetNetwork()
    with trio.fail_after(DEADLINE):
        async with plugged(nursery, network, pin="1234", modem_pin="1234") as (_, modem):
            status = await modem.initialize()
            assert status.registration.registered


async def test_missing_pin_is_an_error(nursery):
    network = HandsetNetwork()
    emulator = ModemEmulator(network, MODEM_A, pin="1234")
    with trio.fail_after(DEADLINE):
        device = await nursery.start(emulator.run)
        stream = SerialStream.open(device)
        modem = Modem(stream)
        async with trio.open_nursery() as inner:
            await inner.start(modem.run)
            with pytest.raises(ModemError, match="SIM PIN"):
                await modem.initialize()
            inner.cancel_scope.cancel()
        await stream.aclose()


async def test_unplug_breaks_the_driver_and_replug_works_again(nursery, tmp_path):
    network = HandsetNetwork()
    link = tmp_path / "ttyUSB0"
    emulator = ModemEmulator(network, MODEM_A, link_path=link)
    with trio.fail_after(DEADLINE):
        device = await nursery.start(emulator.run)
        assert device == str(link) and os.path.realpath(link).startswith("/dev/pts/")
        stream = SerialStream.open(device)
        modem = Modem(stream)
        with pytest.RaisesGroup(ModemUnavailable):
            async with trio.open_nursery() as inner:
                await inner.start(modem.run)
                await modem.initialize()
                emulator.unplug()
                await trio.sleep_forever()
        await stream.aclose()

        emulator.replug()
        while True:  # the symlink moves to the new pty once it is plugged
            try:
                stream = SerialStream.open(str(link))
                break
            except ModemUnavailable:
                await trio.sleep(0.01)
        modem = Modem(stream)
        async with trio.open_nursery() as inner:
            await inner.start(modem.run)
            status = await modem.initialize()
            assert status.own_number == MODEM_A
            inner.cancel_scope.cancel()
        await stream.aclose()


def test_open_missing_device_is_modem_unavailable(tmp_path):
    with pytest.raises(ModemUnavailable):
        SerialStream.open(str(tmp_path / "nope"))


def test_dte_reader_splits_lines_and_bodies():
    reader = _DteReader()
    assert reader.feed(b"AT\r\nATE0\r") == [("line", "AT"), ("line", "ATE0")]
    reader.body_mode = True
    assert reader.feed(b"0011\r\n00\x1a") == [("body", "001100")]
    reader.body_mode = True
    assert reader.feed(b"00\x1b") == [("cancel", "")]
    assert reader.feed(b"A" * 5000 + b"\r") == [("error", "A" * 1024)]


def test_national_number_forms():
    assert national("+8613800138000") == national("8613800138000") == "13800138000"
    assert national("10086") == "10086"


async def test_vendor_noise_before_every_answer_reaches_the_unsolicited_channel(nursery):
    network = HandsetNetwork()
    with trio.fail_after(DEADLINE):
        async with plugged(nursery, network, garbage=b"\r\n^RSSI:12\r\n") as (_, modem):
            assert await modem.command(QuerySignal()) == SignalQuality(20, 99)
            notice = await next_unsolicited(modem, VendorNotice)
            assert notice == VendorNotice("^RSSI", "12")


async def test_send_cancelled_at_the_prompt_is_escaped_and_the_modem_resyncs(nursery):
    network = HandsetNetwork()
    with trio.fail_after(DEADLINE):
        async with plugged(nursery, network) as (emulator, modem):
            await modem.initialize()
            emulator.answer_delay = 0.3  # the prompt comes late: the caller gives up first
            with trio.move_on_after(0.03) as scope:
                await modem.send_text(HANDSET, "never")
            assert scope.cancelled_caught
            # The late prompt and the OK for the ESC drain away; the next command is clean.
            assert await modem.command(QuerySignal()) == SignalQuality(20, 99)
            assert modem.statistics().garbage >= 1  # the late OK to the ESC
            assert list(emulator.sent) == [] and emulator.sent_count == 0
    assert network.inbox(HANDSET) == []


async def test_send_error_for_the_first_sends_only(nursery):
    network = HandsetNetwork()
    with trio.fail_after(DEADLINE):
        async with plugged(nursery, network, send_error=332, send_error_count=1) as (_, modem):
            await modem.initialize()
            with pytest.raises(CommandError) as info:
                await modem.send_text(HANDSET, "first", status_report=False)
            assert info.value.code == 332
            assert await modem.send_text(HANDSET, "second", status_report=False) == [0]
    assert [m.text for m in network.inbox(HANDSET)] == ["second"]


async def test_direct_routing_with_cmt_and_cdsi(nursery):
    network = HandsetNetwork()
    with trio.fail_after(DEADLINE):
        async with plugged(nursery, network) as (_, modem):
            await modem.initialize()
            await modem.command(SetIndications(mode=2, mt=2, ds=2))
            network.send_from_handset(HANDSET, MODEM_A, "direct")
            event = await next_unsolicited(modem, IncomingDeliver)
            assert decode_deliver(event.pdu).text == "direct"
            # Phase 2 (AT+CSMS=0): the modem acknowledges by itself; AT+CNMA is not expected.
            with pytest.raises(CommandError) as info:
                await modem.command(AckMessage())
            assert info.value.code == 340
            (mr,) = await modem.send_text(HANDSET, "report me")
            stored = await next_unsolicited(modem, NewStatusReport)
            report = decode_status_report((await modem.read_message(stored.index)).pdu)
            assert report.mr == mr and report.delivered


async def test_unplug_during_a_command_surfaces_as_modem_unavailable(nursery):
    network = HandsetNetwork()
    emulator = ModemEmulator(network, MODEM_A, answer_delay=0.5)
    with trio.fail_after(DEADLINE):
        device = await nursery.start(emulator.run)
        stream = SerialStream.open(device)
        modem = Modem(stream)
        # Both the reader and the waiting command report it.
        with pytest.RaisesGroup(ModemUnavailable, ModemUnavailable):
            async with trio.open_nursery() as inner:
                await inner.start(modem.run)
                inner.start_soon(modem.command, QuerySignal())
                await trio.sleep(0.1)
                emulator.unplug()
        await stream.aclose()


async def test_send_parts_cut_elsewhere(nursery):
    network = HandsetNetwork()
    parts = ("a" * 153, "b" * 10)
    with trio.fail_after(DEADLINE):
        async with plugged(nursery, network) as (_, modem):
            await modem.initialize()
            mrs = await modem.send_parts(
                HANDSET, parts, alphabet=Alphabet.GSM7, status_report=False
            )
    assert mrs == [0, 1]
    (message,) = network.inbox(HANDSET)
    assert message.text == "".join(parts) and message.parts == 2


async def test_phase_2_plus_direct_routing_needs_cnma_or_is_delivered_again(nursery):
    network = HandsetNetwork()
    with trio.fail_after(DEADLINE):
        async with plugged(nursery, network, cnma_timeout=0.3) as (emulator, modem):
            await modem.initialize()
            assert await modem.command(RawCommand("AT+CSMS=1", "+CSMS")) == RawResponse(("+CSMS: 1,1,1",))
            await modem.command(SetIndications(mode=2, mt=2, ds=1))
            network.send_from_handset(HANDSET, MODEM_A, "first")
            network.send_from_handset(HANDSET, MODEM_A, "second")
            event = await next_unsolicited(modem, IncomingDeliver)
            assert decode_deliver(event.pdu).text == "first"
            # Not acknowledged: the same message comes again, and "second" waits behind it.
            again = await next_unsolicited(modem, IncomingDeliver)
            assert decode_deliver(again.pdu).text == "first" and emulator.redelivered == 1
            assert await modem.command(AckMessage()) == Done()
            event = await next_unsolicited(modem, IncomingDeliver)
            assert decode_deliver(event.pdu).text == "second"
            assert await modem.command(AckMessage()) == Done()
            (mr,) = await modem.send_text(HANDSET, "report me")
            report = await next_unsolicited(modem, IncomingStatusReport)
            assert decode_status_report(report.pdu).mr == mr
            assert await modem.command(AckMessage()) == Done()
            with pytest.raises(CommandError) as info:
                await modem.command(AckMessage())
            assert info.value.code == 340
            assert emulator.redelivered == 1
